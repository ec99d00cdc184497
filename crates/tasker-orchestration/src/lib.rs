//! # tasker-orchestration
//!
//! Executors that pull work through any `tasker_messaging::MessagingService`, pools that scale
//! them, the coordinator that owns both, and a sample workflow (`tasker-mq demo`).
//!
//! * [`executor::process_with_messaging`]: one batch: receive, handle, ack / retry later /
//!   dead-letter.
//! * [`pool::ExecutorPool`]: workers on one queue, scaled between min and max, drained on
//!   shutdown with leases given back.
//! * [`coordinator::OrchestrationLoopCoordinator`]: owns pools and the service; scales pools
//!   from queue depth.
//! * [`workflow`]: the order-fulfilment sample and its state stores.

pub mod coordinator;
pub mod executor;
pub mod pool;
pub mod resilient;
pub mod workflow;

pub use coordinator::{
    CoordinatorConfig, CoordinatorStatus, OrchestrationLoopCoordinator, Resilience,
};
pub use executor::{
    process_with_messaging, ExecutorConfig, ExecutorType, Handled, HandlerError, MessageHandler,
    ProcessBatchResult,
};
pub use pool::{ExecutorPool, Pool, PoolConfig, ShutdownReport};
