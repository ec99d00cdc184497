//! No extensions, by design: the in-memory provider implements the portable contract only, so
//! `pgmq()` and `amqp()` keep the trait's `None` and `capabilities()` declares
//! `pgmq_extensions` and `exchange_routing` false. Code that needs a backend's own features
//! asks for them through those accessors and works without them here.
