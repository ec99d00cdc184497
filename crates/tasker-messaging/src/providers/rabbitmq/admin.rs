//! Queues: declaring one with its dead-letter exchange, queue and binding (recorded for
//! re-declaring after a reconnect), and purge, stats, delete and redrive.

use bytes::Bytes;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::protocol::AMQPSoftError;
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;

use super::codec::{self, long_string};
use super::connection::{Declaration, Link};
use super::errors::is_soft;
use super::version::{quorum_limit_args, BrokerVersion};
use super::{Inner, RabbitMqMessageService};
use crate::config::RabbitMqQueueType;
use crate::error::{MessagingError, Result};
use crate::queue_name::QueueName;
use crate::service::QueueStats;

/// The exchange quorum queues dead-letter through; the DLQ is bound with `<queue>.<max>`.
pub(super) const DEAD_LETTER_EXCHANGE: &str = "tasker.dead_letter";

pub(super) fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

pub(super) fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    }
}

impl Inner {
    /// `QueueNotFound` when `queue` is missing. Only asked once a receipt was refused (or a
    /// delete repeated), so the hot path never pays the round trip; other errors say nothing
    /// about the queue and are not reported here.
    pub(super) async fn exists(&self, queue: &QueueName) -> Result<()> {
        let Ok(link) = self.link().await else {
            return Ok(());
        };
        match self.ready_count(&link, queue).await {
            Err(e @ MessagingError::QueueNotFound { .. }) => Err(e),
            _ => Ok(()),
        }
    }

    /// The number of ready messages, or `QueueNotFound`.
    pub(super) async fn ready_count(&self, link: &Link, queue: &QueueName) -> Result<u32> {
        let ch = link.admin(self.errors()).await?;
        let r = ch
            .queue_declare(queue.as_str().into(), passive(), FieldTable::default())
            .await;
        link.give_back(ch);
        r.map(|q| q.message_count())
            .map_err(|e| self.map("queue.declare(passive)", Some(queue), e))
    }

    pub(super) fn dead_letter_queue(&self, queue: &QueueName) -> Result<QueueName> {
        queue.dead_letter(&self.settings.dead_letter_suffix)
    }

    pub(super) fn queue_type_arg(&self) -> AMQPValue {
        long_string(match self.settings.queue_type {
            RabbitMqQueueType::Quorum => "quorum",
            RabbitMqQueueType::Classic => "classic",
        })
    }

    /// A DLQ's arguments: of the configured type, and without a delivery limit (on a quorum
    /// queue of RabbitMQ 4.0+, whose default limit would drop a dead letter received 20 times).
    pub(super) fn dead_letter_queue_args(&self, broker: Option<BrokerVersion>) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), self.queue_type_arg());
        if self.settings.queue_type == RabbitMqQueueType::Quorum {
            quorum_limit_args(&mut args, 0, broker);
        }
        args
    }

    /// Declares the dead-letter exchange, the DLQ and its binding, then the queue. Returns
    /// whether `max_receive_count` applies: false when the queue already existed with other
    /// options (the broker refuses the declaration; the first creation's options stay).
    /// Declaring directly, rather than checking with a passive declare first, keeps the
    /// common case (a new or identical queue) free of channel errors.
    pub(super) async fn create_queue(
        &self,
        queue: &QueueName,
        max_receive_count: u32,
    ) -> Result<bool> {
        let link = self.link().await?;
        let dlq = self.dead_letter_queue(queue)?;
        let ch = link.admin(self.errors()).await?;
        let mut declared = Vec::new();
        let result = async {
            ch.exchange_declare(
                DEAD_LETTER_EXCHANGE.into(),
                lapin::ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
            declared.push(Declaration::Exchange {
                name: DEAD_LETTER_EXCHANGE.into(),
                kind: lapin::ExchangeKind::Direct,
                durable: true,
            });
            let dlq_args = self.dead_letter_queue_args(link.broker);
            ch.queue_declare(dlq.as_str().into(), durable(), dlq_args.clone())
                .await?;
            declared.push(Declaration::Queue {
                name: dlq.as_str().into(),
                args: dlq_args,
            });
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), self.queue_type_arg());
            if max_receive_count > 0 {
                let key = format!("{queue}.{max_receive_count}");
                ch.queue_bind(
                    dlq.as_str().into(),
                    DEAD_LETTER_EXCHANGE.into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
                declared.push(Declaration::Binding {
                    queue: dlq.as_str().into(),
                    exchange: DEAD_LETTER_EXCHANGE.into(),
                    key: key.clone(),
                });
                args.insert(
                    "x-dead-letter-exchange".into(),
                    long_string(DEAD_LETTER_EXCHANGE),
                );
                args.insert("x-dead-letter-routing-key".into(), long_string(&key));
            }
            if self.settings.queue_type == RabbitMqQueueType::Quorum {
                quorum_limit_args(&mut args, max_receive_count, link.broker);
            }
            ch.queue_declare(queue.as_str().into(), durable(), args.clone())
                .await?;
            declared.push(Declaration::Queue {
                name: queue.as_str().into(),
                args,
            });
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                link.give_back(ch);
                // Declared again on every new connection (see `connection.rs`).
                for d in declared {
                    self.connector.record(d);
                }
                Ok(true)
            }
            // It exists with other options: the first creation's stay.
            Err(e) if is_soft(&e, AMQPSoftError::PRECONDITIONFAILED) => Ok(false),
            Err(e) => Err(self.map("queue.declare", Some(queue), e)),
        }
    }

    /// `basic.get`s up to `max` messages from `queue` on an exclusive admin channel.
    async fn drain(
        &self,
        ch: &Channel,
        queue: &QueueName,
        max: usize,
    ) -> lapin::Result<Vec<lapin::message::Delivery>> {
        let gets = (0..max)
            .map(|_| ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }));
        let mut out = Vec::new();
        for r in futures::future::join_all(gets).await {
            if let Some(m) = r? {
                out.push(m.delivery);
            }
        }
        Ok(out)
    }

    pub(super) async fn redrive(&self, queue: &QueueName, max: usize) -> Result<u64> {
        let link = self.link().await?;
        self.ready_count(&link, queue).await?;
        let dlq = self.dead_letter_queue(queue)?;
        let mut moved = 0u64;
        while (moved as usize) < max {
            let ch = link.admin(self.errors()).await?;
            let step = (max - moved as usize).min(100);
            let got = match self.drain(&ch, &dlq, step).await {
                Ok(got) => got,
                Err(e) if is_soft(&e, AMQPSoftError::NOTFOUND) => return Ok(moved),
                Err(e) => return Err(self.map("basic.get", Some(&dlq), e)),
            };
            let Some(last_tag) = got.last().map(|d| d.delivery_tag) else {
                link.give_back(ch);
                break;
            };
            let n = got.len();
            let items = got
                .into_iter()
                .map(|d| {
                    (
                        Bytes::from(d.data),
                        codec::moved_properties(&d.properties, []),
                    )
                })
                .collect();
            if let Err(e) = self
                .publish_confirmed("", queue.as_str(), true, items, Some(queue))
                .await
            {
                let _ = ch
                    .basic_nack(
                        last_tag,
                        BasicNackOptions {
                            multiple: true,
                            requeue: true,
                        },
                    )
                    .await;
                return Err(e);
            }
            // Everything got on this exclusive channel is ours: one ack covers it.
            ch.basic_ack(last_tag, BasicAckOptions { multiple: true })
                .await
                .map_err(|e| self.map("basic.ack", Some(&dlq), e))?;
            link.give_back(ch);
            moved += n as u64;
            if n < step {
                break;
            }
        }
        Ok(moved)
    }
}

impl RabbitMqMessageService {
    pub(super) async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        let inner = &self.inner;
        let link = inner.link().await?;
        let ready = inner.ready_count(&link, queue).await?;
        let dlq = inner.dead_letter_queue(queue)?;
        let dead = match inner.ready_count(&link, &dlq).await {
            Ok(n) => Some(u64::from(n)),
            Err(MessagingError::QueueNotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(QueueStats {
            queue_name: queue.clone(),
            message_count: u64::from(ready),
            // AMQP does not report unacked counts; these are the leases this service holds.
            in_flight_count: Some(inner.leases.live_count_for(queue)),
            delayed_count: None,
            oldest_message_age_seconds: None,
            dead_letter_count: dead,
        })
    }

    pub(super) async fn purge(&self, queue: &QueueName) -> Result<u64> {
        let inner = &self.inner;
        let link = inner.link().await?;
        let ch = link.admin(inner.errors()).await?;
        let r = ch
            .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
            .await;
        link.give_back(ch);
        let mut purged = r
            .map(u64::from)
            .map_err(|e| inner.map("queue.purge", Some(queue), e))?;
        // Delayed messages wait in delay queues; those this service declared are purged too.
        let prefix = format!("{queue}.delay.");
        let delay_queues: Vec<String> = inner
            .delay_queues
            .lock()
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for name in delay_queues {
            let ch = link.admin(inner.errors()).await?;
            // An expired delay queue is gone: nothing to purge there.
            if let Ok(n) = ch
                .queue_purge(name.as_str().into(), QueuePurgeOptions::default())
                .await
            {
                purged += u64::from(n);
                link.give_back(ch);
            }
        }
        Ok(purged)
    }

    pub(super) async fn remove_queue(&self, queue: &QueueName) -> Result<()> {
        let inner = &self.inner;
        let link = inner.link().await?;
        // queue.delete of a missing queue succeeds in AMQP; the contract says QueueNotFound.
        inner.ready_count(&link, queue).await?;
        let dlq = inner.dead_letter_queue(queue)?;
        let prefix = format!("{queue}.delay.");
        let delay_queues: Vec<String> = {
            let mut known = inner.delay_queues.lock();
            let names: Vec<String> = known
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            for n in &names {
                known.remove(n);
            }
            names
        };
        inner
            .connector
            .forget_queues(&[queue.as_str(), dlq.as_str()]);
        inner.waiters.forget(queue);
        inner.max_receive.lock().remove(queue);
        // Its leases end with it: a receipt of the deleted queue must not report success.
        let ended = inner.leases.take_queue(queue);
        let ch = link.admin(inner.errors()).await?;
        let mut result = ch
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| inner.map("queue.delete", Some(queue), e));
        for name in std::iter::once(dlq.as_str().to_owned()).chain(delay_queues) {
            if let Err(e) = ch
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await
            {
                if result.is_ok() {
                    result = Err(inner.map("queue.delete", None, e));
                }
            }
        }
        link.give_back(ch);
        // The broker forgot those deliveries with the queue; clear their tags on the channel.
        super::leases::ack_all(ended).await;
        result
    }
}
