//! A channel that holds leases: one per queue for `receive`, one per push consumer. It knows
//! which delivery tags this service holds unacked on it, so an ack of a batch is one
//! `multiple` ack where that cannot cover a tag held by someone else.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;
use parking_lot::Mutex;

static NEXT_CHANNEL_ID: AtomicU64 = AtomicU64::new(1);

/// A channel that holds leases: one per queue for `receive`, one per push consumer.
pub(super) struct LeaseChannel {
    pub channel: Channel,
    pub id: u64,
    /// Delivery tags this service holds unacked on the channel.
    outstanding: Mutex<HeldTags>,
    /// Serializes acks and nacks, so a `multiple` ack never races a nack of a lower tag.
    settle: tokio::sync::Mutex<()>,
    /// Serializes receives, so tags are registered in delivery order.
    pub receive: tokio::sync::Mutex<()>,
    /// Held shared by every command sent outside a settle (basic.get, basic.qos,
    /// basic.consume, basic.cancel; see [`LeaseChannel::command_gate`]) and exclusively across
    /// a move's transaction: RabbitMQ closes the whole connection (504 CHANNEL_ERROR
    /// "unexpected command while processing 'tx.commit'") when any command reaches a channel
    /// while its commit waits for the queue to confirm a publish.
    commands: tokio::sync::RwLock<()>,
    /// The consumer prefetch last set on the channel (0: never).
    pub prefetch: std::sync::atomic::AtomicU16,
    /// In AMQP transaction mode (`tx.select`), since it first moved a message (see
    /// [`LeaseChannel::move_then_ack`]): from then on every settle is committed.
    transactional: std::sync::atomic::AtomicBool,
}

impl LeaseChannel {
    pub fn new(channel: Channel) -> Arc<Self> {
        Arc::new(LeaseChannel {
            channel,
            id: NEXT_CHANNEL_ID.fetch_add(1, Ordering::Relaxed),
            outstanding: Mutex::new(HeldTags::default()),
            settle: tokio::sync::Mutex::new(()),
            receive: tokio::sync::Mutex::new(()),
            commands: tokio::sync::RwLock::new(()),
            prefetch: std::sync::atomic::AtomicU16::new(0),
            transactional: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Hold across any command sent on the channel outside [`LeaseChannel::ack`],
    /// [`LeaseChannel::release`] and [`LeaseChannel::move_then_ack`] (those serialize among
    /// themselves): it waits while a move's transaction commits.
    pub async fn command_gate(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.commands.read().await
    }

    pub fn connected(&self) -> bool {
        self.channel.status().connected()
    }

    pub fn hold(&self, tag: u64) {
        self.outstanding.lock().insert(tag);
    }

    /// Acks `tags`: one `multiple` ack for the ones below every other tag still held, single
    /// acks for the rest. Nothing waits for the broker (acks have no reply).
    pub async fn ack(&self, mut tags: Vec<u64>) -> lapin::Result<()> {
        if tags.is_empty() {
            return Ok(());
        }
        tags.sort_unstable();
        let _settle = self.settle.lock().await;
        let (multiple_up_to, singles) = {
            let mut held = self.outstanding.lock();
            for t in &tags {
                held.remove(*t);
            }
            let lowest_other = held.lowest().unwrap_or(u64::MAX);
            let covered = tags.partition_point(|t| *t < lowest_other);
            if covered >= 2 {
                (Some(tags[covered - 1]), tags.split_off(covered))
            } else {
                (None, tags)
            }
        };
        let multiple = multiple_up_to.map(|tag| {
            self.channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
        });
        let singles = singles
            .iter()
            .map(|t| self.channel.basic_ack(*t, BasicAckOptions::default()));
        if let Some(m) = multiple {
            m.await?;
        }
        for r in futures::future::join_all(singles).await {
            r?;
        }
        self.commit_if_transactional().await
    }

    /// Commits what was just settled, on a channel in transaction mode (the settle lock is
    /// held, so the commit covers exactly this settle).
    async fn commit_if_transactional(&self) -> lapin::Result<()> {
        if self.transactional.load(Ordering::Acquire) {
            self.channel.tx_commit().await?;
        }
        Ok(())
    }

    /// Publishes `payload` to `routing_key` (default exchange) and acks `tag`, in one AMQP
    /// transaction on this channel: the broker applies both at the commit or neither (the
    /// channel closing before the commit rolls both back, and the delivery is requeued), so a
    /// moved message never exists twice, and the commit returns once the copy is on disk.
    /// Switches the channel to transaction mode the first time (a channel cannot switch
    /// back): its later acks each wait for a commit.
    pub async fn move_then_ack(
        &self,
        routing_key: &str,
        payload: &[u8],
        properties: lapin::BasicProperties,
        tag: u64,
    ) -> lapin::Result<()> {
        let _settle = self.settle.lock().await;
        // No other command may reach the channel until the commit is answered.
        let _alone = self.commands.write().await;
        if !self.transactional.load(Ordering::Acquire) {
            self.channel.tx_select().await?;
            self.transactional.store(true, Ordering::Release);
        }
        self.outstanding.lock().remove(tag);
        #[cfg(test)]
        let fault = tests::FAIL_BEFORE_COMMIT.swap(false, Ordering::AcqRel);
        let published = async {
            // Not awaited as a confirm: a channel in transaction mode has none; the commit
            // below is the broker's answer.
            self.channel
                .basic_publish(
                    "".into(),
                    routing_key.into(),
                    lapin::options::BasicPublishOptions::default(),
                    payload,
                    properties,
                )
                .await?;
            self.channel
                .basic_ack(tag, BasicAckOptions::default())
                .await
        }
        .await;
        #[cfg(test)]
        if fault {
            // The connection breaks between the ack and the commit (tests only).
            let _ = self
                .channel
                .close(200, "test: broken before commit".into())
                .await;
        }
        let result = match published {
            Ok(_) => self.channel.tx_commit().await,
            Err(e) => Err(e),
        };
        if result.is_err() && self.connected() {
            // Nothing was committed and the channel lives: hand the original back.
            let _ = self.channel.tx_rollback().await;
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            let _ = self.channel.basic_nack(tag, requeue).await;
            let _ = self.channel.tx_commit().await;
        }
        result
    }

    /// Whether the channel is in transaction mode (it moved a message).
    pub fn is_transactional(&self) -> bool {
        self.transactional.load(Ordering::Acquire)
    }

    /// Nacks `tags` with requeue: the messages are receivable again at once.
    pub async fn release(&self, tags: Vec<u64>) -> lapin::Result<()> {
        if tags.is_empty() {
            return Ok(());
        }
        let _settle = self.settle.lock().await;
        {
            let mut held = self.outstanding.lock();
            for t in &tags {
                held.remove(*t);
            }
        }
        let nacks = tags.iter().map(|t| {
            self.channel.basic_nack(
                *t,
                BasicNackOptions {
                    multiple: false,
                    requeue: true,
                },
            )
        });
        for r in futures::future::join_all(nacks).await {
            r?;
        }
        self.commit_if_transactional().await
    }
}

/// The delivery tags held unacked on one channel, as a bit window from the lowest held tag.
///
/// A channel numbers its deliveries 1, 2, 3, ... and most are settled soon after, in roughly
/// that order, so a window of bits starting at the lowest held tag stays small and makes
/// insert, remove and "lowest held" O(1); a `BTreeSet` cost a tree insert and remove per
/// message at stream rates. One long-held tag among many short ones costs one bit per
/// delivery since.
#[derive(Default)]
struct HeldTags {
    /// The tag of bit 0 of `words[0]` (a multiple of 64).
    base: u64,
    words: VecDeque<u64>,
    count: usize,
}

impl HeldTags {
    fn insert(&mut self, tag: u64) {
        if self.count == 0 {
            self.words.clear();
            self.base = tag & !63;
        }
        while tag < self.base {
            self.words.push_front(0);
            self.base -= 64;
        }
        let i = usize::try_from((tag - self.base) / 64).unwrap_or(usize::MAX);
        if i >= self.words.len() {
            self.words.resize(i + 1, 0);
        }
        let bit = 1u64 << (tag % 64);
        if self.words[i] & bit == 0 {
            self.words[i] |= bit;
            self.count += 1;
        }
    }

    fn remove(&mut self, tag: u64) {
        if tag < self.base {
            return;
        }
        let Ok(i) = usize::try_from((tag - self.base) / 64) else {
            return;
        };
        let Some(word) = self.words.get_mut(i) else {
            return;
        };
        let bit = 1u64 << (tag % 64);
        if *word & bit != 0 {
            *word &= !bit;
            self.count -= 1;
        }
        // Keep the lowest held tag in the first word.
        while self.words.front() == Some(&0) {
            self.words.pop_front();
            self.base += 64;
        }
    }

    fn lowest(&self) -> Option<u64> {
        let first = *self.words.front()?;
        (first != 0).then(|| self.base + u64::from(first.trailing_zeros()))
    }
}

#[cfg(test)]
pub(super) mod tests {
    /// Makes the next [`super::LeaseChannel::move_then_ack`] close its channel after the
    /// publish and the ack, before the commit, as a broken connection would.
    pub(in crate::providers::rabbitmq) static FAIL_BEFORE_COMMIT: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);

    use super::*;

    #[test]
    fn held_tags_agree_with_an_ordered_set() {
        use rand::{Rng, SeedableRng};
        use std::collections::BTreeSet;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut held = HeldTags::default();
        let mut model = BTreeSet::new();
        let mut next = 1u64;
        for _ in 0..20_000 {
            match rng.random_range(0..10) {
                // Mostly new deliveries in order, sometimes after a gap.
                0..=4 => {
                    next += if rng.random_bool(0.1) {
                        rng.random_range(1..300)
                    } else {
                        1
                    };
                    held.insert(next);
                    model.insert(next);
                }
                // Settle a held tag: usually an old one, sometimes any.
                5..=8 if !model.is_empty() => {
                    let tag = if rng.random_bool(0.7) {
                        *model.iter().next().unwrap_or(&0)
                    } else {
                        let lo = *model.iter().next().unwrap_or(&0);
                        rng.random_range(lo..=next)
                    };
                    held.remove(tag);
                    model.remove(&tag);
                }
                // An old tag again (a late insert below the window) or a stray remove.
                _ => {
                    let tag = rng.random_range(1..=next);
                    if rng.random_bool(0.5) {
                        held.insert(tag);
                        model.insert(tag);
                    } else {
                        held.remove(tag);
                        model.remove(&tag);
                    }
                }
            }
            assert_eq!(held.lowest(), model.first().copied());
            assert_eq!(held.count, model.len());
        }
        // The window shrinks back once the old tags are settled.
        for tag in model.clone() {
            held.remove(tag);
        }
        assert_eq!(held.lowest(), None);
        assert!(held.words.is_empty());
    }
}
