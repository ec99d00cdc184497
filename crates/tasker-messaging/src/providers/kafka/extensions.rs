//! No extensions, by design: the Kafka provider implements the portable contract only, so
//! `pgmq()` and `amqp()` keep the trait's `None` and `capabilities()` declares
//! `pgmq_extensions` and `exchange_routing` false. Plain Kafka clients interoperate through
//! the topics themselves (see `codec.rs` for the record layout).
