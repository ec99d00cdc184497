//! No extensions, by design: the Redis provider implements the portable contract only, so
//! `pgmq()` and `amqp()` keep the trait's `None` and `capabilities()` declares
//! `pgmq_extensions` and `exchange_routing` false. The key layout is documented (`mod.rs`,
//! docs/semantics.md) for tools that read the queues with plain Redis commands.
