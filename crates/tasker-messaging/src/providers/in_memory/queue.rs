//! One in-memory queue: messages, leases and timers under one short-held lock.
//!
//! Every message is in exactly one state: ready, leased until an instant, or delayed until an
//! instant. Ready messages are taken in send order: fresh sends from `ready` (appended in
//! sequence order) and returning ones (expired leases, delays that passed, releases) from
//! `returned` (a min-heap by sequence), always the smaller head first. Leases and delays sit in
//! a timer heap that is checked lazily on each operation: no background task, no polling.
//! Entries invalidated by a delete or a lease change stay in the heaps and are skipped when
//! reached; the timer heap is compacted when stale entries outnumber live ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use rustc_hash::FxHasher;
use tokio::time::Instant;

use crate::message::{
    CorrelationId, DeadLetterInfo, MessageId, QueuedMessageMetadata, ReceiptHandle, ReceivedMessage,
};

type SeqMap<V> = HashMap<u64, V, BuildHasherDefault<FxHasher>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MessageState {
    Ready,
    Leased { until: Instant },
    Delayed { until: Instant },
}

pub(super) struct StoredMessage {
    pub payload: Bytes,
    pub message_id: MessageId,
    pub correlation_id: Option<CorrelationId>,
    pub enqueued_at: DateTime<Utc>,
    pub enqueued_instant: Instant,
    pub receive_count: u32,
    /// Incremented on every receive; a receipt is (sequence, generation).
    pub generation: u64,
    pub state: MessageState,
    pub dead_letter: Option<Box<DeadLetterInfo>>,
}

/// A message to insert (send, dead-letter move, redrive).
pub(super) struct NewMessage {
    pub payload: Bytes,
    pub message_id: MessageId,
    pub correlation_id: Option<CorrelationId>,
    pub delay: Duration,
    pub dead_letter: Option<Box<DeadLetterInfo>>,
    /// Keeps the original enqueue time when a message moves between queues.
    pub enqueued_at: Option<DateTime<Utc>>,
}

/// Why an operation on a receipt was refused.
pub(super) enum ReceiptError {
    /// The message was received again since: the receipt's lease is over.
    Stale,
    /// The message is gone (deleted or purged).
    Gone,
    /// The message was moved to the dead-letter queue: it lives on there, so a delete must
    /// not report it done (a redrive would run the work again).
    DeadLettered,
}

#[derive(Default)]
pub(super) struct QueueState {
    next_seq: u64,
    messages: SeqMap<StoredMessage>,
    ready: VecDeque<u64>,
    returned: BinaryHeap<Reverse<u64>>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    visible: u64,
    in_flight: u64,
    delayed: u64,
    /// Sequence numbers of messages moved to the dead-letter queue, so their receipts are
    /// refused rather than taken as "already deleted". One entry per dead letter ever made
    /// by this queue (kept across purge, which keeps dead letters too).
    dead_lettered: rustc_hash::FxHashSet<u64>,
}

impl QueueState {
    /// An empty queue whose first message gets sequence number `first_seq`.
    pub fn starting_at(first_seq: u64) -> Self {
        QueueState {
            next_seq: first_seq,
            ..QueueState::default()
        }
    }
}

pub(super) struct Counts {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
    pub oldest: Option<Instant>,
}

impl QueueState {
    pub fn insert(&mut self, message: NewMessage, now: Instant, now_utc: DateTime<Utc>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let state = if message.delay.is_zero() {
            self.ready.push_back(seq);
            self.visible += 1;
            MessageState::Ready
        } else {
            let until = now + message.delay;
            self.timers.push(Reverse((until, seq)));
            self.delayed += 1;
            MessageState::Delayed { until }
        };
        self.messages.insert(
            seq,
            StoredMessage {
                payload: message.payload,
                message_id: message.message_id,
                correlation_id: message.correlation_id,
                enqueued_at: message.enqueued_at.unwrap_or(now_utc),
                enqueued_instant: now,
                receive_count: 0,
                generation: 0,
                state,
                dead_letter: message.dead_letter,
            },
        );
    }

    /// Makes every lease and delay that has ended ready again.
    pub fn release_due(&mut self, now: Instant) {
        while let Some(Reverse((until, seq))) = self.timers.peek().copied() {
            if until > now {
                break;
            }
            self.timers.pop();
            let Some(message) = self.messages.get_mut(&seq) else {
                continue;
            };
            match message.state {
                MessageState::Leased { until: t } if t == until => self.in_flight -= 1,
                MessageState::Delayed { until: t } if t == until => self.delayed -= 1,
                _ => continue,
            }
            message.state = MessageState::Ready;
            self.returned.push(Reverse(seq));
            self.visible += 1;
        }
        self.compact_timers();
    }

    fn compact_timers(&mut self) {
        let live = (self.in_flight + self.delayed) as usize;
        if self.timers.len() > 1024 && self.timers.len() > 4 * live {
            let messages = &self.messages;
            self.timers.retain(|Reverse((until, seq))| {
                matches!(
                    messages.get(seq).map(|m| m.state),
                    Some(MessageState::Leased { until: t } | MessageState::Delayed { until: t }) if t == *until
                )
            });
        }
    }

    /// The earliest instant at which a lease or delay may end.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((until, _))| *until)
    }

    #[cfg(test)]
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    pub fn visible(&self) -> u64 {
        self.visible
    }

    /// Pops the lowest ready sequence number, skipping entries made stale.
    fn pop_ready(&mut self) -> Option<u64> {
        loop {
            let from_ready = self.ready.front().copied();
            let from_returned = self.returned.peek().map(|Reverse(s)| *s);
            let seq = match (from_ready, from_returned) {
                (None, None) => return None,
                (Some(a), Some(b)) if b < a => {
                    self.returned.pop();
                    b
                }
                (Some(a), _) => {
                    self.ready.pop_front();
                    a
                }
                (None, Some(b)) => {
                    self.returned.pop();
                    b
                }
            };
            if matches!(
                self.messages.get(&seq).map(|m| m.state),
                Some(MessageState::Ready)
            ) {
                return Some(seq);
            }
        }
    }

    /// Leases up to `max` ready messages, in send order. Messages already received
    /// `max_receive_count` times are removed and returned in `dead_letters` instead.
    pub fn receive(
        &mut self,
        max: usize,
        visibility_timeout: Duration,
        max_receive_count: u32,
        (now, now_utc): (Instant, DateTime<Utc>),
        out: &mut Vec<ReceivedMessage>,
        dead_letters: &mut Vec<StoredMessage>,
    ) {
        self.release_due(now);
        let until = now + visibility_timeout;
        let expires_utc = now_utc
            + chrono::Duration::from_std(visibility_timeout).unwrap_or(chrono::Duration::MAX);
        while out.len() < max {
            let Some(seq) = self.pop_ready() else { break };
            self.visible -= 1;
            let Some(message) = self.messages.get_mut(&seq) else {
                continue;
            };
            if max_receive_count > 0 && message.receive_count >= max_receive_count {
                if let Some(message) = self.messages.remove(&seq) {
                    self.dead_lettered.insert(seq);
                    dead_letters.push(message);
                }
                continue;
            }
            message.receive_count += 1;
            message.generation += 1;
            message.state = MessageState::Leased { until };
            self.timers.push(Reverse((until, seq)));
            self.in_flight += 1;
            out.push(ReceivedMessage {
                payload: message.payload.clone(),
                metadata: QueuedMessageMetadata {
                    message_id: message.message_id,
                    correlation_id: message.correlation_id,
                    receipt_handle: ReceiptHandle::from_pair(seq, message.generation),
                    enqueued_at: message.enqueued_at,
                    receive_count: message.receive_count,
                    visibility_timeout_expires: Some(expires_utc),
                    dead_letter: message.dead_letter.clone(),
                },
            });
        }
    }

    fn check_receipt(&self, seq: u64, generation: u64) -> Result<(), ReceiptError> {
        match self.messages.get(&seq) {
            None if self.dead_lettered.contains(&seq) => Err(ReceiptError::DeadLettered),
            None => Err(ReceiptError::Gone),
            Some(m) if m.generation != generation || generation == 0 => Err(ReceiptError::Stale),
            Some(_) => Ok(()),
        }
    }

    fn take(&mut self, seq: u64) -> Option<StoredMessage> {
        let message = self.messages.remove(&seq)?;
        match message.state {
            MessageState::Ready => self.visible -= 1,
            MessageState::Leased { .. } => self.in_flight -= 1,
            MessageState::Delayed { .. } => self.delayed -= 1,
        }
        Some(message)
    }

    /// Deletes the message of this lease. A message already gone counts as deleted, unless it
    /// went to the dead-letter queue.
    pub fn delete(&mut self, seq: u64, generation: u64) -> Result<(), ReceiptError> {
        match self.check_receipt(seq, generation) {
            Ok(()) => {
                self.take(seq);
                Ok(())
            }
            Err(ReceiptError::Gone) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes the message of this lease for dead-lettering.
    pub fn take_leased(
        &mut self,
        seq: u64,
        generation: u64,
    ) -> Result<StoredMessage, ReceiptError> {
        self.check_receipt(seq, generation)?;
        let message = self.take(seq).ok_or(ReceiptError::Gone)?;
        self.dead_lettered.insert(seq);
        Ok(message)
    }

    /// Moves the end of this lease to `now + timeout` (zero: ready at once).
    pub fn change_visibility(
        &mut self,
        seq: u64,
        generation: u64,
        timeout: Duration,
        now: Instant,
    ) -> Result<(), ReceiptError> {
        self.check_receipt(seq, generation)?;
        let Some(message) = self.messages.get_mut(&seq) else {
            return Err(ReceiptError::Gone);
        };
        match message.state {
            MessageState::Leased { .. } => self.in_flight -= 1,
            MessageState::Ready => self.visible -= 1,
            MessageState::Delayed { .. } => self.delayed -= 1,
        }
        if timeout.is_zero() {
            message.state = MessageState::Ready;
            self.returned.push(Reverse(seq));
            self.visible += 1;
        } else {
            let until = now + timeout;
            message.state = MessageState::Leased { until };
            self.timers.push(Reverse((until, seq)));
            self.in_flight += 1;
        }
        Ok(())
    }

    /// Removes up to `max` ready messages in order (redrive).
    pub fn take_ready(&mut self, max: usize, now: Instant) -> Vec<StoredMessage> {
        self.release_due(now);
        let mut taken = Vec::new();
        while taken.len() < max {
            let Some(seq) = self.pop_ready() else { break };
            if let Some(message) = self.take(seq) {
                taken.push(message);
            }
        }
        taken
    }

    /// Removes every message; returns how many.
    pub fn purge(&mut self) -> u64 {
        let n = self.messages.len() as u64;
        *self = QueueState {
            next_seq: self.next_seq,
            dead_lettered: std::mem::take(&mut self.dead_lettered),
            ..QueueState::default()
        };
        n
    }

    pub fn counts(&mut self, now: Instant) -> Counts {
        self.release_due(now);
        Counts {
            visible: self.visible,
            in_flight: self.in_flight,
            delayed: self.delayed,
            oldest: self.messages.values().map(|m| m.enqueued_instant).min(),
        }
    }
}
