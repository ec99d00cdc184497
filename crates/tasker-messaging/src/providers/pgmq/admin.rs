//! Queues: their metadata (cached per service), creating and dropping them with their
//! dead-letter queue, purge, stats and redrive.

use std::sync::Arc;

use sqlx::Postgres;

use super::receipts::queue_tag;
use super::{PgmqMessageService, QueueMeta, QueueSql};
use crate::error::{MessagingError, Result};
use crate::queue_name::QueueName;
use crate::service::{QueueOptions, QueueStats};

/// Serializes creating and dropping one queue between processes, for the transaction.
async fn lock_queue_ddl(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    queue: &QueueName,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tasker_messaging.create'), hashtext($1))")
        .bind(queue.as_str())
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

/// A queue as the catalog has it (see [`PgmqMessageService::lookup`]).
struct Lookup {
    incarnation: i64,
    registered: bool,
    max_receive_count: u32,
    dead_letter_queue: Option<QueueName>,
    dlq_exists: bool,
}

impl PgmqMessageService {
    pub(super) fn dead_letter_name(&self, queue: &QueueName) -> Option<QueueName> {
        queue.dead_letter(&self.settings.dead_letter_suffix).ok()
    }

    /// The queue's metadata, from the cache or the database (one query on first use).
    pub(super) async fn meta(&self, queue: &QueueName) -> Result<Arc<QueueMeta>> {
        if let Some(meta) = self.queues.read().get(queue) {
            return Ok(meta.clone());
        }
        let pool = self.pool()?;
        let found = self.lookup(pool, queue).await?;
        // Our columns and wakeup trigger, on a queue another client created or an older
        // version of this provider did (a catalog check when they are there already).
        sqlx::query(
            "SELECT tasker_messaging.adopt_queue(n) FROM unnest(ARRAY[$1, $2]::text[]) n
             WHERE to_regclass('pgmq.q_' || n) IS NOT NULL",
        )
        .bind(queue.as_str())
        .bind(found.dead_letter_queue.as_ref().map(|d| d.as_str()))
        .execute(pool)
        .await
        .map_err(|e| self.err(e, "queue lookup", Some(queue)))?;
        let dead_letter_queue = match found.dead_letter_queue.clone() {
            Some(d) if found.dlq_exists => Some(d),
            Some(d) if found.max_receive_count > 0 => {
                // Ours, with its dead-letter queue dropped behind our back: recreate it.
                self.create_tables(&d, None).await?;
                Some(d)
            }
            _ => None,
        };
        Ok(self.cache(queue, found, dead_letter_queue))
    }

    /// [`meta`](Self::meta) for a send inside the caller's transaction: the lookup runs on
    /// the transaction's own connection, so a caller holding every pooled connection in
    /// transactions never waits for another one. Only a queue our `create_queue` made (it
    /// adopts the tables in the creating transaction) with its dead-letter queue in place is
    /// resolved there; anything that needs DDL (another client's queue, a dropped DLQ) takes
    /// the pool path, outside the caller's transaction, so a rollback cannot undo it.
    pub(super) async fn meta_in(
        &self,
        conn: &mut sqlx::PgConnection,
        queue: &QueueName,
    ) -> Result<Arc<QueueMeta>> {
        if let Some(meta) = self.queues.read().get(queue) {
            return Ok(meta.clone());
        }
        let found = self.lookup(&mut *conn, queue).await?;
        let needs_dlq = found.max_receive_count > 0;
        if !found.registered || (needs_dlq && !found.dlq_exists) {
            return self.meta(queue).await;
        }
        let dead_letter_queue = found.dead_letter_queue.clone().filter(|_| found.dlq_exists);
        Ok(self.cache(queue, found, dead_letter_queue))
    }

    /// What the catalog says of a queue: its table's OID (incarnation), our registration and
    /// whether its dead-letter table exists. One read-only statement.
    async fn lookup<'e, E>(&self, executor: E, queue: &QueueName) -> Result<Lookup>
    where
        E: sqlx::PgExecutor<'e>,
    {
        let dlq = self.dead_letter_name(queue);
        // The table's OID is the queue's incarnation (see `queue_tag`).
        let (incarnation, registered, dlq_exists): (Option<i64>, Option<i32>, bool) =
            sqlx::query_as(
                "SELECT to_regclass('pgmq.q_' || $1)::oid::int8,
                    (SELECT max_receive_count FROM tasker_messaging.queues WHERE queue_name = $1),
                    $2::text IS NOT NULL AND to_regclass('pgmq.q_' || $2) IS NOT NULL",
            )
            .bind(queue.as_str())
            .bind(dlq.as_ref().map(|d| d.as_str()))
            .fetch_one(executor)
            .await
            .map_err(|e| self.err(e, "queue lookup", Some(queue)))?;
        let Some(incarnation) = incarnation else {
            return Err(MessagingError::queue_not_found(queue.as_str()));
        };
        Ok(Lookup {
            incarnation,
            registered: registered.is_some(),
            // A queue created by another client (plain pgmq.create) has no limit of ours.
            max_receive_count: registered.map_or(0, |n| n.max(0) as u32),
            dead_letter_queue: dlq,
            dlq_exists,
        })
    }

    fn cache(
        &self,
        queue: &QueueName,
        found: Lookup,
        dead_letter_queue: Option<QueueName>,
    ) -> Arc<QueueMeta> {
        let meta = Arc::new(QueueMeta {
            sql: QueueSql::new(
                queue,
                dead_letter_queue.as_ref(),
                found.max_receive_count > 0,
            ),
            dead_letter_queue,
            max_receive_count: found.max_receive_count,
            tag: queue_tag(queue, found.incarnation),
        });
        self.queues.write().insert(queue.clone(), meta.clone());
        meta
    }

    /// Creates the pgmq queue (and registers it) in one transaction, with its trigger.
    async fn create_tables(
        &self,
        queue: &QueueName,
        register: Option<(u32, Option<&QueueName>)>,
    ) -> Result<()> {
        let pool = self.pool()?;
        let e = |e| self.err(e, "create queue", None);
        let mut tx = pool.begin().await.map_err(e)?;
        lock_queue_ddl(&mut tx, queue).await.map_err(e)?;
        sqlx::query("SELECT pgmq.create($1)")
            .bind(queue.as_str())
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        sqlx::query("SELECT tasker_messaging.adopt_queue($1)")
            .bind(queue.as_str())
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        if let Some((max_receive_count, dlq)) = register {
            sqlx::query(
                "INSERT INTO tasker_messaging.queues (queue_name, max_receive_count, dead_letter_queue)
                 VALUES ($1, $2, $3) ON CONFLICT (queue_name) DO NOTHING",
            )
            .bind(queue.as_str())
            .bind(i32::try_from(max_receive_count).unwrap_or(i32::MAX))
            .bind(dlq.map(|d| d.as_str()))
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        }
        tx.commit().await.map_err(e)
    }

    /// The dead-letter queue of `queue`, created if missing (explicit dead-lettering on a
    /// queue created without one, or by another client).
    pub(super) async fn ensure_dead_letter_queue(
        &self,
        queue: &QueueName,
        meta: Arc<QueueMeta>,
    ) -> Result<Arc<QueueMeta>> {
        if meta.dead_letter_queue.is_some() {
            return Ok(meta);
        }
        let dlq = queue.dead_letter(&self.settings.dead_letter_suffix)?;
        self.create_tables(&dlq, Some((0, None))).await?;
        self.queues.write().remove(queue);
        self.meta(queue).await
    }

    pub(super) async fn create_with(
        &self,
        queue: &QueueName,
        options: &QueueOptions,
    ) -> Result<()> {
        self.pool()?;
        let max = options
            .max_receive_count
            .unwrap_or(self.settings.default_max_receive_count);
        let dlq = if max > 0 {
            Some(queue.dead_letter(&self.settings.dead_letter_suffix)?)
        } else {
            self.dead_letter_name(queue)
        };
        if let Some(d) = &dlq {
            self.create_tables(d, Some((0, None))).await?;
        }
        self.create_tables(queue, Some((max, dlq.as_ref()))).await?;
        self.queues.write().remove(queue);
        Ok(())
    }

    pub(super) async fn redrive(&self, queue: &QueueName, max_messages: usize) -> Result<u64> {
        let meta = self.meta(queue).await?;
        let (Some(statement), Some(dlq)) = (meta.sql.redrive.as_deref(), &meta.dead_letter_queue)
        else {
            return Ok(0);
        };
        if max_messages == 0 {
            return Ok(0);
        }
        let (moved, _woke): (i64, i64) = sqlx::query_as(statement)
            .bind(max_messages.min(i64::MAX as usize) as i64)
            .bind(dlq.as_str())
            .bind(queue.as_str())
            .fetch_one(self.pool()?)
            .await
            .map_err(|e| self.err(e, "redrive", Some(queue)))?;
        Ok(moved.max(0) as u64)
    }

    pub(super) async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        let meta = self.meta(queue).await?;
        let (visible, in_flight, delayed, oldest, dead): (i64, i64, i64, Option<f64>, Option<i64>) =
            sqlx::query_as(&meta.sql.stats)
                .fetch_one(self.pool()?)
                .await
                .map_err(|e| self.err(e, "stats", Some(queue)))?;
        Ok(QueueStats {
            queue_name: queue.clone(),
            message_count: visible.max(0) as u64,
            in_flight_count: Some(in_flight.max(0) as u64),
            delayed_count: Some(delayed.max(0) as u64),
            oldest_message_age_seconds: oldest.map(|s| s.max(0.0)),
            dead_letter_count: dead.map(|n| n.max(0) as u64),
        })
    }

    pub(super) async fn purge(&self, queue: &QueueName) -> Result<u64> {
        self.meta(queue).await?;
        let n: i64 = sqlx::query_scalar("SELECT pgmq.purge_queue($1)::int8")
            .bind(queue.as_str())
            .fetch_one(self.pool()?)
            .await
            .map_err(|e| self.err(e, "purge", Some(queue)))?;
        Ok(n.max(0) as u64)
    }

    pub(super) async fn remove_queue(&self, queue: &QueueName) -> Result<()> {
        let pool = self.pool()?;
        let e = |e| self.err(e, "delete queue", Some(queue));
        let dlq = self.dead_letter_name(queue);
        let mut tx = pool.begin().await.map_err(e)?;
        lock_queue_ddl(&mut tx, queue).await.map_err(e)?;
        let existed: bool = sqlx::query_scalar(
            "SELECT CASE WHEN to_regclass('pgmq.q_' || $1) IS NULL THEN false
                         ELSE pgmq.drop_queue($1) END",
        )
        .bind(queue.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(e)?;
        if !existed {
            drop(tx);
            self.queues.write().remove(queue);
            return Err(MessagingError::queue_not_found(queue.as_str()));
        }
        if let Some(d) = &dlq {
            sqlx::query(
                "SELECT pgmq.drop_queue($1) WHERE to_regclass('pgmq.q_' || $1) IS NOT NULL",
            )
            .bind(d.as_str())
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        }
        sqlx::query("DELETE FROM tasker_messaging.queues WHERE queue_name = $1 OR queue_name = $2")
            .bind(queue.as_str())
            .bind(dlq.as_ref().map(|d| d.as_str()))
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        tx.commit().await.map_err(e)?;
        let mut queues = self.queues.write();
        queues.remove(queue);
        if let Some(d) = &dlq {
            queues.remove(d);
        }
        drop(queues);
        self.wakeups.forget(queue.as_str());
        Ok(())
    }
}
