//! One queue's fetched records, their leases and the committed prefix of each partition.
//!
//! Kafka keeps one offset per partition for a consumer group; this table turns that into
//! per-message acks (the parallel-consumer idea): a record fetched from the topic becomes an
//! [`Entry`] that is ready, leased, delayed or done; acks mark entries done, and a partition's
//! commit point moves over the contiguous prefix of done entries only. A lease is a deadline
//! here, in the process; its receipt is (queue tag + local sequence, lease generation), so a
//! receipt whose lease ended and whose message was leased again is refused (fencing).
//! Timers are `tokio::time::Instant`s checked when the table is used (no background task).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::message::{
    CorrelationId, DeadLetterInfo, MessageId, QueuedMessageMetadata, ReceiptHandle, ReceivedMessage,
};

/// Sequence bits of a receipt's first number; the bits above them are the queue's tag.
pub(super) const SEQ_BITS: u32 = 40;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

/// A record as the table keeps it (decoded once, when fetched).
pub(super) struct Entry {
    pub partition: i32,
    pub offset: i64,
    pub payload: Bytes,
    pub message_id: MessageId,
    pub correlation_id: Option<CorrelationId>,
    pub enqueued_at: DateTime<Utc>,
    /// Receives counted before the record was last written (our header), 0 for a first copy.
    pub prior_receives: u32,
    /// Leases taken on this record by this table.
    pub deliveries: u32,
    /// The generation of the last lease (0 before the first).
    pub generation: u64,
    pub state: State,
    /// Set on records read from a dead-letter topic.
    pub dead_letter: Option<Box<DeadLetterInfo>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Delayed(Instant),
    Ready,
    Leased(Instant),
    /// Being copied to the dead-letter topic or back to its source (redrive).
    Moving,
    Done,
}

impl Entry {
    pub fn receive_count(&self) -> u32 {
        self.prior_receives.saturating_add(self.deliveries)
    }
}

/// Why a receipt was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// Not a receipt of this queue (another queue, an earlier queue of this name, malformed).
    NotThisQueue,
    /// The lease ended and the message was received again since.
    Stale,
    /// The message was moved to the dead-letter queue.
    DeadLettered,
    /// The message is being moved (dead-lettered by a receive, or redriven).
    Moving,
}

/// A partition's records in offset order and where its commit point is.
#[derive(Default)]
struct Partition {
    pending: VecDeque<(i64, u64)>,
    /// Records below this offset are skipped (purged): the commit point never goes back.
    skip_below: i64,
    /// The next offset the fetcher will hand us (one past the last record seen).
    next_fetch: Option<i64>,
}

/// Counts for stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub ready: u64,
    pub leased: u64,
    pub delayed: u64,
    pub oldest: Option<DateTime<Utc>>,
}

/// One queue's table. Held under a short lock by the fetcher, receive and the receipt paths.
pub(super) struct Leases {
    tag: u64,
    next_seq: u64,
    next_generation: u64,
    entries: HashMap<u64, Entry>,
    ready: BTreeSet<u64>,
    timers: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    partitions: HashMap<i32, Partition>,
    dead_lettered: HashSet<u64>,
    leased: u64,
    delayed: u64,
}

impl Leases {
    pub fn new(tag: u64) -> Self {
        Leases {
            tag,
            next_seq: 1,
            next_generation: 1,
            entries: HashMap::new(),
            ready: BTreeSet::new(),
            timers: BinaryHeap::new(),
            partitions: HashMap::new(),
            dead_lettered: HashSet::new(),
            leased: 0,
            delayed: 0,
        }
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Adds a fetched record; `false` when it lies below a purge point (skipped).
    pub fn ingest(&mut self, mut entry: Entry, not_before: Option<Instant>) -> bool {
        let part = self.partitions.entry(entry.partition).or_default();
        part.next_fetch = Some(entry.offset + 1);
        if entry.offset < part.skip_below {
            return false;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        part.pending.push_back((entry.offset, seq));
        match not_before {
            Some(t) if t > Instant::now() => {
                entry.state = State::Delayed(t);
                self.delayed += 1;
                self.timers.push(Reverse((t, seq, 0)));
            }
            _ => {
                entry.state = State::Ready;
                self.ready.insert(seq);
            }
        }
        self.entries.insert(seq, entry);
        true
    }

    /// Ends the leases and delays that are due; returns the earliest timer still pending.
    pub fn expire(&mut self, now: Instant) -> Option<Instant> {
        while let Some(Reverse((at, seq, generation))) = self.timers.peek().copied() {
            if at > now {
                return Some(at);
            }
            self.timers.pop();
            let Some(e) = self.entries.get_mut(&seq) else {
                continue;
            };
            match e.state {
                State::Leased(end)
                    if end <= now && e.generation == generation && generation > 0 =>
                {
                    e.state = State::Ready;
                    self.leased -= 1;
                    self.ready.insert(seq);
                }
                State::Delayed(t) if t <= now && generation == 0 => {
                    e.state = State::Ready;
                    self.delayed -= 1;
                    self.ready.insert(seq);
                }
                _ => {}
            }
        }
        None
    }

    /// Leases up to `max` ready records until `until`. Records at or over `limit` receives
    /// (when `limit` > 0) are not leased: they are marked moving and returned in `over`, for
    /// the caller to dead-letter.
    pub fn take(
        &mut self,
        max: usize,
        until: Instant,
        expires: DateTime<Utc>,
        limit: u32,
        out: &mut Vec<ReceivedMessage>,
        over: &mut Vec<(u64, Moved)>,
    ) {
        while out.len() < max {
            let Some(seq) = self.ready.pop_first() else {
                break;
            };
            let Some(e) = self.entries.get_mut(&seq) else {
                continue;
            };
            if limit > 0 && e.receive_count() >= limit {
                e.state = State::Moving;
                over.push((seq, Moved::of(e)));
                continue;
            }
            e.deliveries += 1;
            e.generation = self.next_generation;
            self.next_generation += 1;
            e.state = State::Leased(until);
            self.leased += 1;
            self.timers.push(Reverse((until, seq, e.generation)));
            out.push(ReceivedMessage {
                payload: e.payload.clone(),
                metadata: QueuedMessageMetadata {
                    message_id: e.message_id,
                    correlation_id: e.correlation_id,
                    receipt_handle: ReceiptHandle::from_pair(
                        (self.tag << SEQ_BITS) | seq,
                        e.generation,
                    ),
                    enqueued_at: e.enqueued_at,
                    receive_count: e.receive_count(),
                    visibility_timeout_expires: Some(expires),
                    dead_letter: e.dead_letter.clone(),
                },
            });
        }
    }

    /// The local sequence a receipt names, when it is one of this table's.
    pub fn receipt_seq(&self, receipt: &ReceiptHandle) -> Result<(u64, u64), Refused> {
        let (a, generation) = receipt.as_pair().ok_or(Refused::NotThisQueue)?;
        let seq = a & SEQ_MASK;
        if a >> SEQ_BITS != self.tag || seq == 0 || seq >= self.next_seq || generation == 0 {
            return Err(Refused::NotThisQueue);
        }
        Ok((seq, generation))
    }

    /// Checks that a receipt still names its record's lease: `Ok(None)` when the record is
    /// gone for good (acked, committed), `Ok(Some(state))` when it still holds.
    fn check(&self, receipt: &ReceiptHandle) -> Result<Option<(u64, State)>, Refused> {
        let (seq, generation) = self.receipt_seq(receipt)?;
        if self.dead_lettered.contains(&seq) {
            return Err(Refused::DeadLettered);
        }
        let Some(e) = self.entries.get(&seq) else {
            return Ok(None);
        };
        if e.generation != generation {
            return Err(Refused::Stale);
        }
        match e.state {
            State::Moving => Err(Refused::Moving),
            State::Done => Ok(None),
            state => Ok(Some((seq, state))),
        }
    }

    /// Acks: the record is done. Returns the partition's new commit point when it moved.
    pub fn ack(&mut self, receipt: &ReceiptHandle) -> Result<Option<(i32, i64)>, Refused> {
        match self.check(receipt)? {
            None => Ok(None),
            Some((seq, state)) => Ok(self.finish(seq, state)),
        }
    }

    /// Marks a record done (acked, dead-lettered or redriven) and advances its partition.
    pub fn finish(&mut self, seq: u64, state: State) -> Option<(i32, i64)> {
        let e = self.entries.get_mut(&seq)?;
        match state {
            State::Leased(_) => self.leased -= 1,
            State::Ready => {
                self.ready.remove(&seq);
            }
            State::Delayed(_) => self.delayed -= 1,
            State::Moving | State::Done => {}
        }
        e.state = State::Done;
        let partition = e.partition;
        self.advance(partition)
    }

    fn advance(&mut self, partition: i32) -> Option<(i32, i64)> {
        let part = self.partitions.get_mut(&partition)?;
        let mut moved = None;
        while let Some(&(offset, seq)) = part.pending.front() {
            let done = self
                .entries
                .get(&seq)
                .is_none_or(|e| e.state == State::Done);
            if !done {
                break;
            }
            part.pending.pop_front();
            self.entries.remove(&seq);
            moved = Some(offset + 1);
        }
        moved.map(|next| (partition, next.max(part.skip_below)))
    }

    /// Moves the end of a lease (`None` releases it now).
    pub fn set_visibility(
        &mut self,
        receipt: &ReceiptHandle,
        until: Option<Instant>,
    ) -> Result<bool, Refused> {
        let Some((seq, state)) = self.check(receipt)? else {
            return Ok(false);
        };
        let Some(e) = self.entries.get_mut(&seq) else {
            return Ok(false);
        };
        match (state, until) {
            (State::Leased(_), None) => {
                e.state = State::Ready;
                self.leased -= 1;
                self.ready.insert(seq);
            }
            (State::Leased(_), Some(t)) => {
                e.state = State::Leased(t);
                self.timers.push(Reverse((t, seq, e.generation)));
            }
            (State::Ready, Some(t)) => {
                self.ready.remove(&seq);
                e.state = State::Leased(t);
                self.leased += 1;
                self.timers.push(Reverse((t, seq, e.generation)));
            }
            _ => {}
        }
        Ok(true)
    }

    /// Marks a leased record as moving to the dead-letter topic; returns what to copy.
    pub fn start_move(&mut self, receipt: &ReceiptHandle) -> Result<Option<(u64, Moved)>, Refused> {
        let Some((seq, state)) = self.check(receipt)? else {
            return Ok(None);
        };
        let Some(e) = self.entries.get_mut(&seq) else {
            return Ok(None);
        };
        match state {
            State::Leased(_) => self.leased -= 1,
            State::Ready => {
                self.ready.remove(&seq);
            }
            _ => {}
        }
        e.state = State::Moving;
        Ok(Some((seq, Moved::of(e))))
    }

    /// Ends a move: done (copied) or back to ready (the copy failed).
    pub fn end_move(&mut self, seq: u64, copied: bool, dead_lettered: bool) -> Option<(i32, i64)> {
        if copied {
            if dead_lettered {
                self.dead_lettered.insert(seq);
            }
            self.finish(seq, State::Moving)
        } else {
            if let Some(e) = self.entries.get_mut(&seq) {
                if e.state == State::Moving {
                    e.state = State::Ready;
                    self.ready.insert(seq);
                }
            }
            None
        }
    }

    /// Ready records to move (redrive), marked moving.
    pub fn take_for_move(&mut self, max: usize) -> Vec<(u64, Moved)> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(seq) = self.ready.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.get_mut(&seq) {
                e.state = State::Moving;
                out.push((seq, Moved::of(e)));
            }
        }
        out
    }

    /// Purges: every record not being moved is done, and records below `ends` (per
    /// partition, the high watermark) that were not fetched yet are skipped. Returns how many
    /// were removed and the commit points to store.
    pub fn purge(&mut self, ends: &[(i32, i64, i64)]) -> (u64, Vec<(i32, i64)>) {
        let mut removed = 0u64;
        let seqs: Vec<u64> = self.entries.keys().copied().collect();
        for seq in seqs {
            if let Some(e) = self.entries.get_mut(&seq) {
                match e.state {
                    State::Ready | State::Leased(_) | State::Delayed(_) => {
                        removed += 1;
                        e.state = State::Done;
                    }
                    State::Moving | State::Done => {}
                }
            }
        }
        self.ready.clear();
        self.leased = 0;
        self.delayed = 0;
        let mut commits = Vec::new();
        for &(partition, end, committed) in ends {
            let part = self.partitions.entry(partition).or_default();
            let from = part.next_fetch.unwrap_or(committed);
            removed += (end - from.max(part.skip_below)).max(0) as u64;
            part.skip_below = part.skip_below.max(end);
        }
        let parts: Vec<i32> = self.partitions.keys().copied().collect();
        for partition in parts {
            let advanced = self.advance(partition);
            let part = &self.partitions[&partition];
            let point = advanced.map(|(_, o)| o).unwrap_or(part.skip_below);
            if part.pending.is_empty() && point > 0 {
                commits.push((partition, point));
            } else if let Some(c) = advanced {
                commits.push(c);
            }
        }
        (removed, commits)
    }

    /// A partition was assigned with `committed` as its commit point and is read from before
    /// it (see `connection.rs`): records below it are skipped, and the commit point never goes
    /// back below it.
    pub fn skip_to(&mut self, partition: i32, committed: i64) {
        let part = self.partitions.entry(partition).or_default();
        part.skip_below = part.skip_below.max(committed);
    }

    /// Forgets a partition another consumer now owns: its leases end here (the new owner
    /// reads its records again from the last commit).
    pub fn revoke(&mut self, partition: i32) {
        let Some(part) = self.partitions.remove(&partition) else {
            return;
        };
        for (_, seq) in part.pending {
            if let Some(e) = self.entries.remove(&seq) {
                match e.state {
                    State::Leased(_) => self.leased -= 1,
                    State::Delayed(_) => self.delayed -= 1,
                    State::Ready => {
                        self.ready.remove(&seq);
                    }
                    _ => {}
                }
            }
        }
    }

    /// The next offset to read per partition known here (for stats).
    pub fn next_fetch(&self, partition: i32) -> Option<i64> {
        self.partitions
            .get(&partition)
            .and_then(|p| p.next_fetch.map(|n| n.max(p.skip_below)))
    }

    pub fn counts(&self) -> Counts {
        let oldest = self
            .entries
            .values()
            .filter(|e| !matches!(e.state, State::Done))
            .map(|e| e.enqueued_at)
            .min();
        Counts {
            ready: self.ready.len() as u64,
            leased: self.leased,
            delayed: self.delayed,
            oldest,
        }
    }
}

/// What a move (dead-letter, redrive) copies of a record.
pub(super) struct Moved {
    pub payload: Bytes,
    pub message_id: MessageId,
    pub correlation_id: Option<CorrelationId>,
    pub enqueued_at: DateTime<Utc>,
    pub receive_count: u32,
}

impl Moved {
    fn of(e: &Entry) -> Self {
        Moved {
            payload: e.payload.clone(),
            message_id: e.message_id,
            correlation_id: e.correlation_id,
            enqueued_at: e.enqueued_at,
            receive_count: e.receive_count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(partition: i32, offset: i64) -> Entry {
        Entry {
            partition,
            offset,
            payload: Bytes::from_static(b"x"),
            message_id: MessageId::new(),
            correlation_id: None,
            enqueued_at: Utc::now(),
            prior_receives: 0,
            deliveries: 0,
            generation: 0,
            state: State::Ready,
            dead_letter: None,
        }
    }

    fn take(l: &mut Leases, max: usize, vt: Duration) -> Vec<ReceivedMessage> {
        let mut out = Vec::new();
        let mut over = Vec::new();
        l.take(max, Instant::now() + vt, Utc::now(), 0, &mut out, &mut over);
        out
    }

    #[tokio::test(start_paused = true)]
    async fn commits_only_the_contiguous_acked_prefix() {
        let mut l = Leases::new(3);
        for o in 0..3 {
            assert!(l.ingest(entry(0, o), None));
        }
        let got = take(&mut l, 3, Duration::from_secs(5));
        assert_eq!(l.ack(got[1].receipt()), Ok(None));
        assert_eq!(l.ack(got[2].receipt()), Ok(None));
        assert_eq!(l.ack(got[0].receipt()), Ok(Some((0, 3))));
        // Idempotent once gone.
        assert_eq!(l.ack(got[0].receipt()), Ok(None));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_lease_comes_back_and_fences_the_old_receipt() {
        let mut l = Leases::new(1);
        l.ingest(entry(0, 0), None);
        let first = take(&mut l, 1, Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(5)).await;
        l.expire(Instant::now());
        let second = take(&mut l, 1, Duration::from_secs(5));
        assert_eq!(second[0].metadata.receive_count, 2);
        assert_eq!(l.ack(first[0].receipt()), Err(Refused::Stale));
        assert_eq!(l.ack(second[0].receipt()), Ok(Some((0, 1))));
        let other = Leases::new(2);
        assert_eq!(
            other.receipt_seq(second[0].receipt()),
            Err(Refused::NotThisQueue)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rewound_partition_skips_what_lies_before_its_commit_point() {
        let mut l = Leases::new(1);
        l.skip_to(0, 5);
        for o in 3..5 {
            assert!(
                !l.ingest(entry(0, o), None),
                "offset {o} is before the commit point"
            );
        }
        assert!(l.ingest(entry(0, 5), None));
        assert!(l.ingest(entry(0, 6), None));
        let got = take(&mut l, 10, Duration::from_secs(5));
        assert_eq!(got.len(), 2);
        assert_eq!(l.ack(got[0].receipt()), Ok(Some((0, 6))));
        // Revoked and assigned again: the new commit point holds.
        l.revoke(0);
        l.skip_to(0, 6);
        assert!(!l.ingest(entry(0, 5), None));
    }

    #[tokio::test(start_paused = true)]
    async fn purge_skips_what_was_not_fetched() {
        let mut l = Leases::new(1);
        l.ingest(entry(0, 0), None);
        let (removed, commits) = l.purge(&[(0, 10, 0)]);
        assert_eq!(removed, 10);
        assert_eq!(commits, vec![(0, 10)]);
        assert!(!l.ingest(entry(0, 5), None));
        assert!(l.ingest(entry(0, 10), None));
    }
}
