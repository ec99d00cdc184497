//! The sample workflow: order fulfilment (validate order -> reserve inventory -> charge payment
//! -> ship) across the namespaces fulfillment, inventory and payments.

pub mod demo;
pub mod handlers;
pub mod model;
pub mod store;

pub use demo::{run_demo, DemoConfig, DemoError, DemoSummary};
pub use model::{TaskState, TaskStatus, WorkflowDef, WorkflowQueues, ORDER_FULFILLMENT};
pub use store::{InMemoryTaskStore, StoreError, TaskStore};
