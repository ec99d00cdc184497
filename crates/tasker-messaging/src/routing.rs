//! Queue routing: which queue a namespace's steps and each executor's work live on.
//!
//! One naming rule: every queue is the configured pattern (default `{namespace}_queue`) applied
//! to a *stem*. A namespace is a stem (`fulfillment` -> `fulfillment_queue`); so is each
//! executor type's input (`task_requests` -> `task_requests_queue`). Executor stems are reserved,
//! so `extract_namespace` is the exact inverse of `route_to_queue` and never mistakes an
//! orchestration queue (or a dead-letter queue) for a namespace.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::QueueConfig;
use crate::error::MessagingError;
use crate::queue_name::QueueName;

/// The orchestration executors, each consuming its own queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExecutorType {
    /// Turns task requests into tasks.
    TaskRequestProcessor,
    /// Claims tasks that have ready steps.
    TaskClaimer,
    /// Enqueues the ready steps of claimed tasks onto namespace queues.
    StepEnqueuer,
    /// Applies step results and decides what is ready next.
    StepResultProcessor,
    /// Closes tasks whose steps are all done.
    TaskFinalizer,
}

impl ExecutorType {
    pub const ALL: [ExecutorType; 5] = [
        ExecutorType::TaskRequestProcessor,
        ExecutorType::TaskClaimer,
        ExecutorType::StepEnqueuer,
        ExecutorType::StepResultProcessor,
        ExecutorType::TaskFinalizer,
    ];

    /// The stem of the queue this executor consumes.
    pub fn queue_stem(self) -> &'static str {
        match self {
            ExecutorType::TaskRequestProcessor => "task_requests",
            ExecutorType::TaskClaimer => "ready_tasks",
            ExecutorType::StepEnqueuer => "claimed_tasks",
            ExecutorType::StepResultProcessor => "step_results",
            ExecutorType::TaskFinalizer => "task_finalizations",
        }
    }
}

impl fmt::Display for ExecutorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Routing strategy (the plan's `MessageRouter`).
pub trait MessageRouter: Send + Sync {
    /// The queue holding `namespace`'s steps.
    fn route_to_queue(&self, namespace: &str) -> Result<QueueName, MessagingError>;
    /// The namespace whose steps `queue` holds, if it is a namespace queue.
    fn extract_namespace(&self, queue: &QueueName) -> Option<String>;
    /// The queue `executor_type` consumes.
    fn get_executor_queue(&self, executor_type: ExecutorType) -> QueueName;
}

/// Routes by the `{namespace}` pattern (the plan's `NamespaceQueueRouter`).
#[derive(Clone, Debug)]
pub struct NamespaceQueueRouter {
    prefix: String,
    suffix: String,
    dead_letter_suffix: String,
    executor_queues: [QueueName; 5],
}

impl NamespaceQueueRouter {
    /// A router for `pattern`, which must contain `{namespace}` once and yield valid queue
    /// names for every executor stem. Namespaces ending in `dead_letter_suffix` are refused,
    /// so a dead-letter queue never reads as a namespace queue.
    pub fn new(pattern: &str, dead_letter_suffix: &str) -> Result<Self, MessagingError> {
        let (prefix, suffix) = pattern.split_once("{namespace}").ok_or_else(|| {
            MessagingError::config(
                "queues.namespace_pattern",
                format!("{pattern:?} lacks {{namespace}}"),
            )
        })?;
        if suffix.contains("{namespace}") {
            return Err(MessagingError::config(
                "queues.namespace_pattern",
                format!("{pattern:?} has {{namespace}} more than once"),
            ));
        }
        let make = |stem: &str| QueueName::new(format!("{prefix}{stem}{suffix}"));
        let executor_queues = [
            make(ExecutorType::TaskRequestProcessor.queue_stem())?,
            make(ExecutorType::TaskClaimer.queue_stem())?,
            make(ExecutorType::StepEnqueuer.queue_stem())?,
            make(ExecutorType::StepResultProcessor.queue_stem())?,
            make(ExecutorType::TaskFinalizer.queue_stem())?,
        ];
        Ok(NamespaceQueueRouter {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
            dead_letter_suffix: dead_letter_suffix.to_owned(),
            executor_queues,
        })
    }

    /// The router the configuration describes; also checks every configured namespace.
    pub fn from_config(config: &QueueConfig) -> Result<Self, MessagingError> {
        let router = Self::new(&config.namespace_pattern, &config.dead_letter_queue_suffix)?;
        for ns in &config.namespaces {
            router.route_to_queue(ns)?;
        }
        Ok(router)
    }

    fn is_reserved(&self, stem: &str) -> bool {
        ExecutorType::ALL.iter().any(|e| e.queue_stem() == stem)
            || (!self.dead_letter_suffix.is_empty() && stem.ends_with(&self.dead_letter_suffix))
    }
}

impl Default for NamespaceQueueRouter {
    fn default() -> Self {
        Self::new("{namespace}_queue", "_dlq").expect("the default pattern is valid")
    }
}

impl MessageRouter for NamespaceQueueRouter {
    fn route_to_queue(&self, namespace: &str) -> Result<QueueName, MessagingError> {
        if namespace.is_empty() {
            return Err(MessagingError::InvalidQueueName {
                name: String::new(),
                reason: "namespace must not be empty".into(),
            });
        }
        if self.is_reserved(namespace) {
            return Err(MessagingError::InvalidQueueName {
                name: namespace.to_owned(),
                reason: "namespace is reserved (an executor queue stem, or ends in the dead-letter suffix)"
                    .into(),
            });
        }
        QueueName::new(format!("{}{namespace}{}", self.prefix, self.suffix))
    }

    fn extract_namespace(&self, queue: &QueueName) -> Option<String> {
        let ns = queue
            .as_str()
            .strip_prefix(&self.prefix)?
            .strip_suffix(&self.suffix)?;
        if ns.is_empty() || self.is_reserved(ns) {
            return None;
        }
        // Only a name this router could have produced: the stem itself must be a valid start.
        self.route_to_queue(ns).ok().map(|_| ns.to_owned())
    }

    fn get_executor_queue(&self, executor_type: ExecutorType) -> QueueName {
        let index = ExecutorType::ALL
            .iter()
            .position(|e| *e == executor_type)
            .unwrap_or_default();
        self.executor_queues[index].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plans_examples_hold() {
        let router = NamespaceQueueRouter::default();
        assert_eq!(
            router.route_to_queue("fulfillment").unwrap().as_str(),
            "fulfillment_queue"
        );
        assert_eq!(
            router
                .get_executor_queue(ExecutorType::TaskRequestProcessor)
                .as_str(),
            "task_requests_queue"
        );
        assert_eq!(
            router
                .get_executor_queue(ExecutorType::StepResultProcessor)
                .as_str(),
            "step_results_queue"
        );
    }

    #[test]
    fn namespaces_round_trip_and_other_queues_do_not_parse_as_namespaces() {
        for pattern in [
            "{namespace}_queue",
            "tasker_{namespace}",
            "q_{namespace}_v2",
        ] {
            let router = NamespaceQueueRouter::new(pattern, "_dlq").unwrap();
            for ns in ["fulfillment", "inventory", "payments", "a", "ns_with_9"] {
                let q = router.route_to_queue(ns).unwrap();
                assert_eq!(
                    router.extract_namespace(&q).as_deref(),
                    Some(ns),
                    "{pattern}"
                );
                let dlq = q.dead_letter("_dlq").unwrap();
                assert_eq!(router.extract_namespace(&dlq), None, "{dlq}");
            }
            for e in ExecutorType::ALL {
                let q = router.get_executor_queue(e);
                assert_eq!(router.extract_namespace(&q), None, "{q}");
            }
        }
    }

    #[test]
    fn reserved_and_invalid_namespaces_are_rejected() {
        let router = NamespaceQueueRouter::default();
        assert!(router.route_to_queue("step_results").is_err());
        assert!(router.route_to_queue("orders_dlq").is_err());
        assert!(router.route_to_queue("Bad").is_err());
        assert!(router.route_to_queue("").is_err());
        assert!(NamespaceQueueRouter::new("no_placeholder", "_dlq").is_err());
        assert!(NamespaceQueueRouter::new("{namespace}_{namespace}", "_dlq").is_err());
        assert!(NamespaceQueueRouter::new("Upper_{namespace}", "_dlq").is_err());
    }
}
