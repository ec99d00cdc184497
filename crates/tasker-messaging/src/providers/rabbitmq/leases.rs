//! Leases on AMQP: a received message stays unacknowledged on the channel that received it
//! (so no other receiver gets it) until it is acked (delete), or its visibility timeout ends
//! and the lease reaper nacks it with requeue (so it comes back, counted by the queue).
//!
//! A receipt is `(service nonce, lease id)`: lease ids are never reused, so a receipt whose
//! lease ended can never touch a later delivery of the same message (receipt fencing). Acks
//! and nacks on one channel are serialized under the channel's settle lock (`channel.rs`),
//! which is what makes a `multiple` ack safe: it only covers tags this service holds in that
//! batch.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use lapin::BasicProperties;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::channel::LeaseChannel;
use crate::message::ReceiptHandle;
use crate::queue_name::QueueName;

/// The leases' delivery tags, grouped by the channel that holds them.
fn by_channel(leases: Vec<Lease>) -> impl Iterator<Item = (Arc<LeaseChannel>, Vec<u64>)> {
    let mut groups: HashMap<u64, (Arc<LeaseChannel>, Vec<u64>)> = HashMap::new();
    for lease in leases {
        groups
            .entry(lease.channel.id)
            .or_insert_with(|| (lease.channel.clone(), Vec::new()))
            .1
            .push(lease.tag);
    }
    groups.into_values()
}

/// Nacks the leases with requeue, grouped by channel. A broken channel needs nothing: the
/// broker requeued what it held.
pub(super) async fn nack_all(leases: Vec<Lease>) {
    for (channel, tags) in by_channel(leases) {
        if channel.connected() {
            if let Err(e) = channel.release(tags).await {
                tracing::debug!(error = %e, "lease release nack failed");
            }
        }
    }
}

/// Acks the leases, grouped by channel (best effort).
pub(super) async fn ack_all(leases: Vec<Lease>) {
    for (channel, tags) in by_channel(leases) {
        if channel.connected() {
            if let Err(e) = channel.ack(tags).await {
                tracing::debug!(error = %e, "ack of a deleted queue's leases failed");
            }
        }
    }
}

/// One held message.
pub(super) struct Lease {
    pub queue: QueueName,
    pub channel: Arc<LeaseChannel>,
    pub tag: u64,
    pub deadline: Instant,
    /// Kept to move the message (explicit dead-letter) without another read.
    pub payload: Bytes,
    pub properties: BasicProperties,
    pub receive_count: u32,
    /// False while no caller has the message (a wait keeps it for the next receive): such a
    /// lease that ends gives the message back without counting the delivery.
    pub seen: bool,
    /// Its visibility timeout ended, but the message is still held (see [`EXPIRED_HOLD`]):
    /// invisible to nobody in this service, settleable by its receipt until it is released.
    pub expired: bool,
}

/// How long a message whose lease ended stays held on its channel before it goes back to
/// the broker, unless this service receives from its queue first (then at once). Meanwhile
/// the old receipt still deletes it: AMQP cannot delete a message once it was handed back.
pub(super) const EXPIRED_HOLD: std::time::Duration = std::time::Duration::from_secs(1);

/// How a lease that is no longer held ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ended {
    Deleted,
    Released,
    DeadLettered,
    /// Its channel or connection closed: the broker requeued the message.
    Lost,
    /// Its queue was deleted (with the message).
    QueueDeleted,
}

/// Why a receipt could not be used.
pub(super) enum ReceiptProblem {
    Malformed,
    OtherQueue,
    Ended(Ended),
    Unknown,
}

#[derive(Default)]
struct Table {
    /// Keyed by lease id (a counter, so the cheap Fx hash spreads it well).
    live: FxHashMap<u64, Lease>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    ended: EndedMemory,
}

/// Remembered outcomes, so a repeated delete stays idempotent and a stale receipt is refused.
const ENDED_MEMORY: usize = 200_000;

/// How the most recent leases ended, by lease id. Lease ids are handed out in order and most
/// leases end soon after they start, so the outcomes of the last [`ENDED_MEMORY`] ids live in
/// a window indexed by id (one byte each, written at its end, where it stays in cache) instead
/// of a hash map. A lease older than the window that ends (a long lease among many short
/// ones) is remembered in a small map beside it, for the next [`ENDED_MEMORY`] such ends.
#[derive(Default)]
struct EndedMemory {
    /// The id of `window[0]`.
    base: u64,
    window: VecDeque<Option<Ended>>,
    late: FxHashMap<u64, Ended>,
    late_order: VecDeque<u64>,
}

impl EndedMemory {
    fn record(&mut self, id: u64, how: Ended) {
        if id < self.base {
            if self.late.insert(id, how).is_none() {
                self.late_order.push_back(id);
            }
            while self.late_order.len() > ENDED_MEMORY {
                if let Some(old) = self.late_order.pop_front() {
                    self.late.remove(&old);
                }
            }
            return;
        }
        // Slide the window so that `id` fits: older outcomes are forgotten.
        let limit = ENDED_MEMORY as u64;
        if id - self.base >= limit {
            let new_base = id + 1 - limit;
            let drop = usize::try_from(new_base - self.base)
                .unwrap_or(usize::MAX)
                .min(self.window.len());
            self.window.drain(..drop);
            self.base = new_base;
        }
        let i = (id - self.base) as usize;
        if i == self.window.len() {
            // The common case: leases end in about the order they started.
            self.window.push_back(Some(how));
            return;
        }
        if i > self.window.len() {
            self.window.resize(i + 1, None);
        }
        self.window[i] = Some(how);
    }

    fn get(&self, id: u64) -> Option<Ended> {
        if id < self.base {
            return self.late.get(&id).copied();
        }
        let i = usize::try_from(id - self.base).ok()?;
        self.window.get(i).copied().flatten()
    }
}

impl Table {
    /// Drops timer entries of settled or extended leases once they outnumber live ones, so
    /// the heap stays bounded while the reaper sleeps until a far deadline.
    fn compact(&mut self) {
        if self.timers.len() > 1024 && self.timers.len() > 4 * self.live.len() {
            let live = &self.live;
            self.timers
                .retain(|Reverse((d, id))| live.get(id).is_some_and(|l| l.deadline == *d));
        }
    }

    fn record(&mut self, id: u64, how: Ended) {
        self.ended.record(id, how);
    }

    /// Removes the live lease `id` (to settle it), or says why there is none.
    fn take(&mut self, queue: &QueueName, id: u64) -> Result<Lease, ReceiptProblem> {
        // One lookup on the common path: removed, and put back if it may not be settled.
        let Some(lease) = self.live.remove(&id) else {
            return Err(match self.ended.get(id) {
                Some(how) => ReceiptProblem::Ended(how),
                None => ReceiptProblem::Unknown,
            });
        };
        if &lease.queue != queue {
            self.live.insert(id, lease);
            return Err(ReceiptProblem::OtherQueue);
        }
        if !lease.channel.connected() {
            self.record(id, Ended::Lost);
            return Err(ReceiptProblem::Ended(Ended::Lost));
        }
        Ok(lease)
    }
}

/// The lease table of one service.
pub(super) struct Leases {
    nonce: u64,
    next_id: AtomicU64,
    table: Mutex<Table>,
    /// Live leases whose time is up, held until released (`Lease::expired`).
    expired_held: std::sync::atomic::AtomicUsize,
    pub wake: Notify,
    /// The service was dropped: the reaper runs until the last lease ends, then stops (its
    /// channels, and with them the connection, close then).
    orphaned: std::sync::atomic::AtomicBool,
}

impl Leases {
    pub fn new() -> Self {
        Leases {
            nonce: rand::random::<u64>() | 1,
            next_id: AtomicU64::new(1),
            table: Mutex::new(Table::default()),
            expired_held: std::sync::atomic::AtomicUsize::new(0),
            wake: Notify::new(),
            orphaned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Called when the service is dropped: leases already handed out keep their full
    /// visibility timeout (a dropped handle does not end a lease early).
    pub fn orphan(&self) {
        self.orphaned.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Registers a lease; returns its receipt.
    pub fn register(&self, lease: Lease) -> ReceiptHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let deadline = lease.deadline;
        lease.channel.hold(lease.tag);
        let earliest = {
            let mut t = self.table.lock();
            let before = t.timers.peek().map(|Reverse((d, _))| *d);
            t.timers.push(Reverse((deadline, id)));
            t.live.insert(id, lease);
            t.compact();
            before.is_none_or(|b| deadline < b)
        };
        if earliest {
            self.wake.notify_one();
        }
        ReceiptHandle::from_pair(self.nonce, id)
    }

    fn id_of(&self, receipt: &ReceiptHandle) -> Result<u64, ReceiptProblem> {
        match receipt.as_pair() {
            Some((nonce, id)) if nonce == self.nonce => Ok(id),
            Some(_) => Err(ReceiptProblem::Unknown),
            None => Err(ReceiptProblem::Malformed),
        }
    }

    /// Removes the live lease named by `receipt` (to settle it); the caller records how it
    /// ended with [`Leases::ended`].
    pub fn take(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
    ) -> Result<(u64, Lease), ReceiptProblem> {
        let id = self.id_of(receipt)?;
        let taken = self.table.lock().take(queue, id);
        taken.map(|l| (id, self.settled(l)))
    }

    /// Keeps the count of held expired leases right when `lease` leaves the table.
    #[inline]
    fn settled(&self, lease: Lease) -> Lease {
        if lease.expired {
            self.expired_held.fetch_sub(1, Ordering::Relaxed);
        }
        lease
    }

    /// [`Leases::take`] for many receipts under one lock, in order.
    #[allow(clippy::type_complexity)]
    pub fn take_many(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Vec<Result<(u64, Lease), ReceiptProblem>> {
        let ids: Vec<_> = receipts.iter().map(|r| self.id_of(r)).collect();
        let mut t = self.table.lock();
        ids.into_iter()
            .map(|id| {
                let id = id?;
                t.take(queue, id).map(|l| (id, self.settled(l)))
            })
            .collect()
    }

    pub fn ended(&self, id: u64, how: Ended) {
        self.table.lock().record(id, how);
    }

    /// Records many outcomes under one lock.
    pub fn ended_many(&self, ids: impl IntoIterator<Item = u64>, how: Ended) {
        let mut t = self.table.lock();
        for id in ids {
            t.record(id, how);
        }
    }

    /// Moves the end of a live lease.
    pub fn extend(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        deadline: Instant,
    ) -> Result<(), ReceiptProblem> {
        let id = self.id_of(receipt)?;
        let mut t = self.table.lock();
        match t.live.get_mut(&id) {
            Some(l) if &l.queue != queue => Err(ReceiptProblem::OtherQueue),
            // Ended already (held only until it goes back): it cannot be extended.
            Some(l) if l.expired => Err(ReceiptProblem::Ended(Ended::Released)),
            Some(l) if l.channel.connected() => {
                l.deadline = deadline;
                t.timers.push(Reverse((deadline, id)));
                drop(t);
                self.wake.notify_one();
                Ok(())
            }
            Some(_) => {
                t.live.remove(&id);
                t.record(id, Ended::Lost);
                Err(ReceiptProblem::Ended(Ended::Lost))
            }
            None => Err(match t.ended.get(id) {
                Some(how) => ReceiptProblem::Ended(how),
                None => ReceiptProblem::Unknown,
            }),
        }
    }

    /// Gives a kept (unseen) lease to a receiver: it is seen from now and runs to `deadline`.
    pub fn claim(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        deadline: Instant,
    ) -> Result<(), ReceiptProblem> {
        self.extend(queue, receipt, deadline)?;
        let id = self.id_of(receipt)?;
        if let Some(l) = self.table.lock().live.get_mut(&id) {
            l.seen = true;
        }
        Ok(())
    }

    /// Ends every live lease of a deleted queue; returns them (to clear their tags).
    pub fn take_queue(&self, queue: &QueueName) -> Vec<Lease> {
        let mut t = self.table.lock();
        let ids: Vec<u64> = t
            .live
            .iter()
            .filter(|(_, l)| &l.queue == queue)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(l) = t.live.remove(&id) {
                t.record(id, Ended::QueueDeleted);
                out.push(self.settled(l));
            }
        }
        out
    }

    /// Removes the held leases of `queue` whose time is up, to release them now: this
    /// service is about to receive from the queue. Free when none is held.
    pub fn take_expired(&self, queue: &QueueName) -> Vec<Lease> {
        if self.expired_held.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let mut t = self.table.lock();
        let ids: Vec<u64> = t
            .live
            .iter()
            .filter(|(_, l)| l.expired && &l.queue == queue)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(l) = t.live.remove(&id) {
                t.record(id, Ended::Released);
                self.expired_held.fetch_sub(1, Ordering::Relaxed);
                out.push(l);
            }
        }
        out
    }

    /// Removes every live lease nobody has seen (kept by waits), to give them back.
    pub fn take_unseen(&self) -> Vec<Lease> {
        let mut t = self.table.lock();
        let ids: Vec<u64> = t
            .live
            .iter()
            .filter(|(_, l)| !l.seen)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(l) = t.live.remove(&id) {
                t.record(id, Ended::Released);
                out.push(l);
            }
        }
        out
    }

    /// Removes the leases whose time is up; returns them and the next deadline.
    fn take_due(&self, now: Instant) -> (Vec<Lease>, Option<Instant>) {
        let mut t = self.table.lock();
        let mut due = Vec::new();
        while let Some(Reverse((deadline, id))) = t.timers.peek().copied() {
            if deadline > now {
                break;
            }
            t.timers.pop();
            // A stale timer entry (the lease was settled or extended) is skipped.
            if t.live.get(&id).is_some_and(|l| l.deadline == deadline) {
                // A lease a caller holds ends first by being held a little longer (its
                // receipt still deletes), unless nobody saw it.
                if let Some(l) = t.live.get_mut(&id).filter(|l| l.seen && !l.expired) {
                    l.expired = true;
                    l.deadline = now + EXPIRED_HOLD;
                    let at = l.deadline;
                    t.timers.push(Reverse((at, id)));
                    self.expired_held.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if let Some(lease) = t.live.remove(&id) {
                    if lease.expired {
                        self.expired_held.fetch_sub(1, Ordering::Relaxed);
                    }
                    t.record(id, Ended::Released);
                    due.push(lease);
                }
            }
        }
        t.compact();
        (due, t.timers.peek().map(|Reverse((d, _))| *d))
    }

    /// Leases held on channels that are still open.
    pub fn live_count(&self) -> u64 {
        self.table
            .lock()
            .live
            .values()
            .filter(|l| !l.expired && l.channel.connected())
            .count() as u64
    }

    pub fn live_count_for(&self, queue: &QueueName) -> u64 {
        self.table
            .lock()
            .live
            .values()
            .filter(|l| &l.queue == queue && !l.expired && l.channel.connected())
            .count() as u64
    }

    /// The reaper: hands leases whose visibility timeout ended to `release`, so their
    /// messages return.
    pub async fn run_reaper<F, Fut>(self: Arc<Self>, release: F)
    where
        F: Fn(Vec<Lease>) -> Fut + Send,
        Fut: std::future::Future<Output = ()> + Send,
    {
        loop {
            let (due, next) = self.take_due(Instant::now());
            if self.orphaned.load(Ordering::Acquire) && self.table.lock().live.is_empty() {
                return;
            }
            if !due.is_empty() {
                release(due).await;
                continue;
            }
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_memory_remembers_recent_ids_and_late_ends() {
        let mut m = EndedMemory::default();
        m.record(1, Ended::Deleted);
        m.record(3, Ended::Released);
        assert_eq!(m.get(1), Some(Ended::Deleted));
        assert_eq!(m.get(2), None);
        assert_eq!(m.get(3), Some(Ended::Released));
        // A later outcome of the same lease replaces the earlier one.
        m.record(3, Ended::Lost);
        assert_eq!(m.get(3), Some(Ended::Lost));
        // Far newer ids slide the window: the oldest outcomes are forgotten...
        let far = 10 + ENDED_MEMORY as u64;
        m.record(far, Ended::Deleted);
        assert_eq!(m.get(far), Some(Ended::Deleted));
        assert_eq!(m.get(1), None);
        assert!(m.window.len() <= ENDED_MEMORY);
        // ...but a long lease that ends now, below the window, is still remembered.
        m.record(2, Ended::DeadLettered);
        assert_eq!(m.get(2), Some(Ended::DeadLettered));
        assert_eq!(m.get(far - 1), None);
    }
}
