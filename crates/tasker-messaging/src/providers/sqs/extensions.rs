//! None, by design: SQS's operations are all reached through `MessagingService` (the trait's
//! `pgmq()` and `amqp()` accessors keep their `None` defaults). Plain SQS clients interoperate
//! through the message attributes described in `codec.rs`.
