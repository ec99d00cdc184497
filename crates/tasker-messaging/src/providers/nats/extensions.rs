//! None, by design: JetStream's own features (streams, subjects, key-value) are reached with
//! a plain async-nats client; the trait's `pgmq()` and `amqp()` return `None`.
