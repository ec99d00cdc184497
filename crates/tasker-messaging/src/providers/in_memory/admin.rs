//! Queues: looking one up, creating it with its dead-letter queue, and delete, purge, stats
//! and redrive.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::Instant;

use super::queue::NewMessage;
use super::{codec, InMemoryMessageService, MemQueue};
use crate::error::{MessagingError, Result};
use crate::queue_name::QueueName;
use crate::service::{QueueOptions, QueueStats};

impl InMemoryMessageService {
    #[inline]
    pub(super) fn queue(&self, name: &QueueName) -> Result<Arc<MemQueue>> {
        self.check_open()?;
        self.queues
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| MessagingError::queue_not_found(name.as_str()))
    }

    pub(super) fn get_or_create(
        &self,
        name: &QueueName,
        max_receive_count: u32,
    ) -> Result<Arc<MemQueue>> {
        if let Some(q) = self.queues.read().get(name) {
            return Ok(q.clone());
        }
        let dead_letter_queue = if max_receive_count > 0 {
            Some(name.dead_letter(&self.settings.dead_letter_suffix)?)
        } else {
            None
        };
        let mut queues = self.queues.write();
        Ok(queues
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(MemQueue::new(
                    name.clone(),
                    max_receive_count,
                    dead_letter_queue,
                ))
            })
            .clone())
    }

    pub(super) fn create_with(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
        self.check_open()?;
        let max = options
            .max_receive_count
            .unwrap_or(self.settings.default_max_receive_count);
        let q = self.get_or_create(queue, max)?;
        if let Some(dlq) = &q.dead_letter_queue {
            self.get_or_create(dlq, 0)?;
        }
        Ok(())
    }

    pub(super) fn redrive(&self, queue: &QueueName, max_messages: usize) -> Result<u64> {
        let target = self.queue(queue)?;
        let dlq_name = match &target.dead_letter_queue {
            Some(name) => name.clone(),
            None => queue.dead_letter(&self.settings.dead_letter_suffix)?,
        };
        let Ok(dlq) = self.queue(&dlq_name) else {
            return Ok(0);
        };
        let taken = dlq.state.lock().take_ready(max_messages, Instant::now());
        let n = taken.len() as u64;
        let back: Vec<NewMessage> = taken.iter().map(codec::redriven).collect();
        if let Err(e) = self.insert(&target, back) {
            // The target vanished meanwhile: put the dead letters back where they were.
            let restore = taken.into_iter().map(codec::restored);
            self.insert(&dlq, restore)?;
            return Err(e);
        }
        Ok(n)
    }

    pub(super) fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        let q = self.queue(queue)?;
        let now = Instant::now();
        let counts = q.state.lock().counts(now);
        let dead_letter_count = match &q.dead_letter_queue {
            Some(dlq) => match self.queues.read().get(dlq).cloned() {
                Some(d) => {
                    let c = d.state.lock().counts(now);
                    Some(c.visible + c.in_flight + c.delayed)
                }
                None => Some(0),
            },
            None => None,
        };
        Ok(QueueStats {
            queue_name: queue.clone(),
            message_count: counts.visible,
            in_flight_count: Some(counts.in_flight),
            delayed_count: Some(counts.delayed),
            oldest_message_age_seconds: counts
                .oldest
                .map(|t| now.saturating_duration_since(t).as_secs_f64()),
            dead_letter_count,
        })
    }

    pub(super) fn purge(&self, queue: &QueueName) -> Result<u64> {
        let q = self.queue(queue)?;
        let n = q.state.lock().purge();
        Ok(n)
    }

    pub(super) fn remove_queue(&self, queue: &QueueName) -> Result<()> {
        self.check_open()?;
        let removed = {
            let mut queues = self.queues.write();
            let q = queues
                .remove(queue)
                .ok_or_else(|| MessagingError::queue_not_found(queue.as_str()))?;
            let dlq = q.dead_letter_queue.as_ref().and_then(|d| queues.remove(d));
            [Some(q), dlq]
        };
        for q in removed.into_iter().flatten() {
            let _guard = q.state.lock();
            q.deleted.store(true, Ordering::Release);
            drop(_guard);
            q.notify.notify_waiters();
        }
        Ok(())
    }
}
