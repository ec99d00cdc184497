//! The SQL this provider runs, one set of statements per queue.
//!
//! Statements address pgmq's tables (`pgmq.q_<queue>`) directly instead of going through
//! pgmq's PL/pgSQL wrappers: the wrappers build their SQL with `format()` and `EXECUTE` on
//! every call (no cached plan), and cannot check a receipt's lease or move a message to a
//! dead-letter queue in the same statement. The table layout is pgmq's own (msg_id, read_ct,
//! enqueued_at, last_read_at, vt, message, headers), the same for the extension and the SQL
//! install, plus three nullable columns of ours ([`OUR_COLUMNS`]: message id, correlation id,
//! key order), so every row we write is a normal pgmq message and plain `pgmq.*` calls keep
//! working on our queues (pgmq's functions name their columns and never see ours).
//!
//! Why columns and not pgmq headers: under concurrent batch sends WAL is the limit, so row
//! size is throughput. Two UUIDs and the key order as jsonb headers made a `StepMessage` row
//! 395 bytes against pgmq's 228; as binary columns it is 278, and the INSERT builds no jsonb.
//!
//! The only text spliced into SQL is a [`QueueName`], validated to `[a-z][a-z0-9_]{0,46}`
//! before any statement is built; every value travels as a bind parameter.

use crate::queue_name::QueueName;

/// Bumped when [`SCHEMA_SQL`] changes, so initialize re-applies it once.
pub(super) const SCHEMA_VERSION: i32 = 4;
/// The one channel every queue notifies on; the payload is the queue name.
pub(super) const CHANNEL: &str = "tasker_messaging";

/// Idempotent DDL for our schema. Run under an advisory lock by `initialize`.
pub(super) const SCHEMA_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS tasker_messaging;

CREATE TABLE IF NOT EXISTS tasker_messaging.schema_version (version integer NOT NULL);

-- Per-queue options that pgmq has no place for.
CREATE TABLE IF NOT EXISTS tasker_messaging.queues (
    queue_name        text PRIMARY KEY,
    max_receive_count integer NOT NULL,
    dead_letter_queue text,
    default_vt_secs   integer,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- Wakeups for idle consumers, on one channel for all queues (payload: the queue name), so one
-- listener connection serves every queue.
--
-- Our own statements notify from inside the statement (see QueueSql), and only when it may
-- end a consumer's idle wait: when nothing of the queue was receivable before it. NOTIFY makes
-- every notifying commit hold one global lock across its WAL flush, which serializes
-- concurrent senders (4 clients sending one message each: 3x fewer sends/s with a NOTIFY per
-- send); while a backlog is receivable no consumer is idle (the stream receives again at once
-- after a non-empty receive), so sends then pay one index probe and nothing else.
--
-- This trigger covers everyone else (plain pgmq.send from other clients): one notification
-- per INSERT statement. It skips our own connections (application_name tasker_messaging*),
-- which notify for themselves. pgmq's enable_notify_insert notifies per row and updates a
-- shared throttle row on every insert, serializing senders even more.
CREATE OR REPLACE FUNCTION tasker_messaging.notify_insert() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify('tasker_messaging', substr(TG_TABLE_NAME, 3));
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION tasker_messaging.ensure_notify(queue_name text) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    qtable text := 'q_' || queue_name;
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_trigger
        WHERE tgrelid = format('pgmq.%I', qtable)::regclass AND tgname = 'tasker_notify'
    ) THEN
        EXECUTE format(
            'CREATE TRIGGER tasker_notify AFTER INSERT ON pgmq.%I FOR EACH STATEMENT '
            'WHEN (current_setting(''application_name'') NOT LIKE ''tasker\_messaging%%'') '
            'EXECUTE FUNCTION tasker_messaging.notify_insert()',
            qtable);
    END IF;
END
$fn$;

-- Triggers made by earlier schema versions notified on our own inserts too: make them again.
DO $do$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT c.relname FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'pgmq' AND t.tgname = 'tasker_notify'
          AND pg_get_triggerdef(t.oid) NOT LIKE '%application_name%'
    LOOP
        EXECUTE format('DROP TRIGGER tasker_notify ON pgmq.%I', r.relname);
        PERFORM tasker_messaging.ensure_notify(substr(r.relname, 3));
    END LOOP;
END
$do$;

-- Our columns on a pgmq queue table and its archive (nullable, no default: adding them only
-- changes the catalog). Checked first, so a queue that has them takes no ALTER TABLE lock.
CREATE OR REPLACE FUNCTION tasker_messaging.add_columns(tbl text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    IF to_regclass(format('pgmq.%I', tbl)) IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = format('pgmq.%I', tbl)::regclass
          AND attname = 'tasker_key_order' AND NOT attisdropped
    ) THEN
        EXECUTE format(
            'ALTER TABLE pgmq.%I ADD COLUMN IF NOT EXISTS tasker_message_id uuid, '
            'ADD COLUMN IF NOT EXISTS tasker_correlation_id uuid, '
            'ADD COLUMN IF NOT EXISTS tasker_key_order text',
            tbl);
    END IF;
END
$fn$;

-- Makes a pgmq queue (ours, or one another client created) usable by our statements.
CREATE OR REPLACE FUNCTION tasker_messaging.adopt_queue(queue_name text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM tasker_messaging.add_columns('q_' || queue_name);
    PERFORM tasker_messaging.add_columns('a_' || queue_name);
    PERFORM tasker_messaging.ensure_notify(queue_name);
END
$fn$;

-- Headers as an object: another client may have written NULL, an array or a scalar.
CREATE OR REPLACE FUNCTION tasker_messaging.object_headers(h jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT CASE
        WHEN h IS NULL THEN '{}'::jsonb
        WHEN jsonb_typeof(h) = 'object' THEN h
        ELSE jsonb_build_object('original_headers', h)
    END
$fn$;

-- Keeps a stable identity for a message that arrived without our id: where it was first seen.
CREATE OR REPLACE FUNCTION tasker_messaging.with_origin(h jsonb, queue_name text, msg_id bigint)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $fn$
    SELECT CASE
        WHEN h ? 'tasker_message_id' OR h ? 'tasker_origin' THEN h
        ELSE h || jsonb_build_object('tasker_origin', jsonb_build_array(queue_name, msg_id))
    END
$fn$;

-- Headers of a message moving to a dead-letter queue: everything kept, plus why.
CREATE OR REPLACE FUNCTION tasker_messaging.dead_letter_headers(
    h jsonb, source_queue text, msg_id bigint, read_ct integer, enqueued_at timestamptz,
    reason jsonb)
RETURNS jsonb LANGUAGE sql VOLATILE AS $fn$
    SELECT tasker_messaging.with_origin(tasker_messaging.object_headers(h), source_queue, msg_id)
        || jsonb_build_object('tasker_dead_letter', jsonb_build_object(
            'source_queue', source_queue,
            'reason', reason,
            'receive_count', read_ct,
            'dead_lettered_at', clock_timestamp(),
            'original_enqueued_at', enqueued_at))
$fn$;

-- Headers of a message redriven back: the dead-letter record is dropped, identity kept.
CREATE OR REPLACE FUNCTION tasker_messaging.redrive_headers(h jsonb, dlq text, msg_id bigint)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $fn$
    SELECT tasker_messaging.with_origin(tasker_messaging.object_headers(h), dlq, msg_id)
        - 'tasker_dead_letter'
$fn$;

-- The same two for rows with our id column: `has_id` says the row carries its identity
-- there, so no origin is recorded for it; rows written before the id columns (ids in
-- headers) are recognized by with_origin. The forms above, without has_id, stay for a
-- process of the previous version still running against this schema.
CREATE OR REPLACE FUNCTION tasker_messaging.dead_letter_headers(
    h jsonb, has_id boolean, source_queue text, msg_id bigint, read_ct integer,
    enqueued_at timestamptz, reason jsonb)
RETURNS jsonb LANGUAGE sql VOLATILE AS $fn$
    SELECT CASE WHEN has_id THEN tasker_messaging.object_headers(h)
                ELSE tasker_messaging.with_origin(tasker_messaging.object_headers(h),
                                                  source_queue, msg_id) END
        || jsonb_build_object('tasker_dead_letter', jsonb_build_object(
            'source_queue', source_queue,
            'reason', reason,
            'receive_count', read_ct,
            'dead_lettered_at', clock_timestamp(),
            'original_enqueued_at', enqueued_at))
$fn$;

CREATE OR REPLACE FUNCTION tasker_messaging.redrive_headers(
    h jsonb, has_id boolean, dlq text, msg_id bigint)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $fn$
    SELECT nullif(
        CASE WHEN has_id THEN tasker_messaging.object_headers(h)
             ELSE tasker_messaging.with_origin(tasker_messaging.object_headers(h), dlq, msg_id)
        END - 'tasker_dead_letter',
        '{}'::jsonb)
$fn$;
"#;

/// Our columns on every queue table we use, in the order statements list them.
pub(super) const OUR_COLUMNS: &str = "tasker_message_id, tasker_correlation_id, tasker_key_order";

/// Payload kinds, chosen by the client (see the module docs of the provider).
pub(super) const KIND_JSON: i16 = 0;
pub(super) const KIND_TEXT: i16 = 1;
pub(super) const KIND_BASE64: i16 = 2;
/// JSON that is serde's compact rendering of itself: stored once, rebuilt from the key order.
pub(super) const KIND_COMPACT: i16 = 3;

/// Statements for one queue (and its dead-letter queue, when it has one).
#[derive(Debug)]
pub(super) struct QueueSql {
    /// $1 text[] bodies, $2 int2[] kinds, $3 uuid[] ids, $4 uuid[] correlation ids,
    /// $5 int8[] delays in ms, $6 queue name, $7 text[] key orders. Returns msg_id per row.
    pub send: String,
    /// $1 limit, $2 vt in ms, $3 max_receive_count (0: no limit). Returns the leased rows in
    /// msg_id order as (msg_id, read_ct, enqueued_at, vt, message text, headers text, message
    /// id, correlation id, key order, over): `over` counts the candidates that were over the
    /// limit and left unleased for [`QueueSql::dead_letter_over`]. Always at least one row: a
    /// row with a NULL msg_id carries `over` when nothing was leased.
    pub receive: String,
    /// `receive` with the messages over their limit skipped by the scan (`over` is then 0).
    /// `None` without a limit.
    pub receive_receivable: Option<String>,
    /// $1 max_receive_count, $2 limit, $3 queue name, $4 dead-letter queue name: moves up to
    /// $2 receivable messages received $1 times or more to the dead-letter queue, in one
    /// statement (never lost, never duplicated). Returns (moved, woke). `None` without a
    /// dead-letter queue or limit.
    pub dead_letter_over: Option<String>,
    /// $1 int8[] msg ids, $2 int4[] read counts. Returns (id, read_ct, current read_ct,
    /// dead-lettered) of the receipts that did not delete.
    pub delete: String,
    /// $1 msg id, $2 read_ct, $3 vt in ms, $4 queue name. Returns (updated, current read_ct).
    pub set_vt: String,
    /// $1 msg id, $2 read_ct, $3 queue name, $4 reason jsonb, $5 dead-letter queue name.
    /// Returns (moved, woke, current).
    /// `None` without a dead-letter queue.
    pub dead_letter: Option<String>,
    /// $1 limit, $2 dead-letter queue name, $3 queue name. Returns (moved, woke).
    pub redrive: Option<String>,
    /// Returns (visible, in flight, delayed, oldest age in s, dead letters).
    pub stats: String,
    /// $1 int8[] msg ids. pgmq.archive's move, keeping our columns. Returns the count.
    pub archive: String,
}

impl QueueSql {
    pub fn new(
        queue: &QueueName,
        dead_letter_queue: Option<&QueueName>,
        dead_lettering: bool,
    ) -> Self {
        let q = format!("pgmq.q_{}", queue.as_str());
        // Headers only for what is rare (text and binary payloads, JSON whose text jsonb would
        // not reproduce): the common message is a document plus our three columns.
        let send = format!(
            r#"WITH ins AS (
INSERT INTO {q} (vt, message, headers, {OUR_COLUMNS})
SELECT clock_timestamp() + u.delay_ms * interval '1 millisecond',
       CASE WHEN u.kind IN ({KIND_JSON}, {KIND_COMPACT}) THEN u.body::jsonb
            ELSE to_jsonb(u.body) END,
       CASE u.kind
           WHEN {KIND_TEXT} THEN '{{"tasker_payload_encoding": "text"}}'::jsonb
           WHEN {KIND_BASE64} THEN '{{"tasker_payload_encoding": "base64"}}'::jsonb
           -- Nested CASE, not AND: the cast must only run on JSON bodies.
           WHEN {KIND_JSON} THEN CASE WHEN u.body::jsonb::text <> u.body
                                      THEN jsonb_build_object('tasker_payload', u.body) END
       END,
       u.id, u.cid, u.key_order
FROM unnest($1::text[], $2::int2[], $3::uuid[], $4::uuid[], $5::int8[], $7::text[])
     WITH ORDINALITY AS u(body, kind, id, cid, delay_ms, key_order, ord)
ORDER BY u.ord
RETURNING msg_id
), wake AS (
    -- The statement's snapshot does not include the rows inserted above: this asks whether
    -- anything was receivable before (see SCHEMA_SQL on why only then).
    SELECT pg_notify('{CHANNEL}', $6)
    WHERE NOT EXISTS (SELECT 1 FROM {q} WHERE vt <= clock_timestamp())
)
-- w.n is selected so the planner cannot drop the join (and with it the NOTIFY).
SELECT ins.msg_id, w.n FROM ins CROSS JOIN (SELECT count(*) AS n FROM wake) w"#
        );

        let dlq_table = dead_letter_queue.map(|d| format!("pgmq.q_{}", d.as_str()));
        // Messages over their receive limit are only counted here, not moved: the move (a
        // DELETE and an INSERT into the dead-letter queue) is a separate statement run when
        // the count is not zero, so the common receive pays for none of it.
        let receive = receive_sql(&q, "");
        // Only run after a receive found messages over their limit (rare): the same lease,
        // with those skipped by the scan, so they cannot take the batch's places while
        // their move to the dead-letter queue is pending or failing.
        let receive_receivable =
            dead_lettering.then(|| receive_sql(&q, "AND NOT ($3 > 0 AND read_ct >= $3)"));

        let dead_letter_over = match (&dlq_table, dead_lettering) {
            (Some(d), true) => Some(format!(
                r#"WITH pick AS (
    SELECT msg_id FROM {q}
    WHERE vt <= clock_timestamp() AND read_ct >= $1
    ORDER BY msg_id LIMIT $2
    FOR UPDATE SKIP LOCKED
), dead AS (
    DELETE FROM {q} m
    WHERE m.msg_id = ANY (ARRAY(SELECT msg_id FROM pick))
    RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.message, m.headers,
              m.tasker_message_id, m.tasker_correlation_id, m.tasker_key_order
), moved AS (
    INSERT INTO {d} (vt, enqueued_at, message, headers, {OUR_COLUMNS})
    SELECT clock_timestamp(), dead.enqueued_at, dead.message,
           jsonb_set(tasker_messaging.dead_letter_headers(dead.headers,
               dead.tasker_message_id IS NOT NULL, $3, dead.msg_id, dead.read_ct,
               dead.enqueued_at,
               jsonb_build_object('kind', 'max_receive_count_exceeded', 'max_receive_count', $1)),
               '{{tasker_dead_letter,source_msg_id}}', to_jsonb(dead.msg_id)),
           dead.tasker_message_id, dead.tasker_correlation_id, dead.tasker_key_order
    FROM dead ORDER BY dead.msg_id
    RETURNING 1
), wake AS (
    SELECT pg_notify('{CHANNEL}', $4) WHERE EXISTS (SELECT 1 FROM moved)
)
SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM wake)"#
            )),
            _ => None,
        };

        // Only receipts that did not delete come back (usually none). The outer SELECT sees
        // the table as it was before the DELETE: a row still there has another read_ct (a
        // stale receipt); one not there was gone already. Rows are found by primary key from
        // the id array (see `receive` on joins in generic plans); each row's receipt count is
        // the one at the id's first position, so the caller puts a repeated id's newest
        // receipt first.
        // A receipt that did not delete and whose message is gone: gone for good (deleted
        // before: idempotent), or moved to the dead-letter queue under this very lease (a
        // receive found it over its limit after the lease ended, or it was dead-lettered
        // explicitly). The second must not be reported as deleted: the message lives on.
        // The dead letter records its source msg id; the scan of the dead-letter queue runs
        // only for such receipts, never on a delete that deleted.
        let dead_lettered = match &dlq_table {
            Some(d) => format!(
                "EXISTS (SELECT 1 FROM {d} x \
                 WHERE x.headers -> 'tasker_dead_letter' -> 'source_msg_id' = to_jsonb(rc.id) \
                 AND x.headers -> 'tasker_dead_letter' -> 'receive_count' = to_jsonb(rc.ct) \
                 AND x.headers -> 'tasker_dead_letter' ->> 'source_queue' = '{name}')",
                name = queue.as_str()
            ),
            None => "false".to_owned(),
        };
        let delete = format!(
            r#"WITH d AS (
    DELETE FROM {q} m
    WHERE m.msg_id = ANY ($1::int8[])
      AND m.read_ct = ($2::int4[])[array_position($1::int8[], m.msg_id)]
    RETURNING m.msg_id
)
SELECT rc.id, rc.ct, (SELECT m.read_ct FROM {q} m WHERE m.msg_id = rc.id) AS current_ct,
       {dead_lettered} AS dead_lettered
FROM unnest($1::int8[], $2::int4[]) AS rc(id, ct)
WHERE NOT EXISTS (SELECT 1 FROM d WHERE d.msg_id = rc.id)"#
        );

        let set_vt = format!(
            r#"WITH u AS (
    UPDATE {q}
    SET vt = clock_timestamp() + $3 * interval '1 millisecond'
    WHERE msg_id = $1 AND read_ct = $2
    RETURNING msg_id
), n AS (
    SELECT pg_notify('{CHANNEL}', $4) FROM u WHERE $3 = 0
)
SELECT (SELECT count(*) FROM u) AS updated,
       (SELECT count(*) FROM n) AS notified,
       (SELECT read_ct FROM {q} WHERE msg_id = $1) AS current_ct"#
        );

        let dead_letter = dlq_table.as_ref().map(|d| {
            format!(
                r#"WITH dead AS (
    DELETE FROM {q} WHERE msg_id = $1 AND read_ct = $2
    RETURNING msg_id, read_ct, enqueued_at, message, headers, {OUR_COLUMNS}
), moved AS (
    INSERT INTO {d} (vt, enqueued_at, message, headers, {OUR_COLUMNS})
    SELECT clock_timestamp(), enqueued_at, message,
           jsonb_set(tasker_messaging.dead_letter_headers(headers, tasker_message_id IS NOT NULL,
               $3, msg_id, read_ct, enqueued_at, $4),
               '{{tasker_dead_letter,source_msg_id}}', to_jsonb(msg_id)),
           {OUR_COLUMNS}
    FROM dead
    RETURNING 1
), wake AS (
    SELECT pg_notify('{CHANNEL}', $5) WHERE EXISTS (SELECT 1 FROM moved)
)
SELECT (SELECT count(*) FROM moved) AS moved, (SELECT count(*) FROM wake) AS woke,
       (SELECT read_ct FROM {q} WHERE msg_id = $1) AS current_ct"#
            )
        });

        let redrive = dlq_table.as_ref().map(|d| {
            format!(
                r#"WITH pick AS (
    SELECT msg_id FROM {d}
    WHERE vt <= clock_timestamp()
    ORDER BY msg_id LIMIT $1
    FOR UPDATE SKIP LOCKED
), taken AS (
    DELETE FROM {d} m WHERE m.msg_id = ANY (ARRAY(SELECT msg_id FROM pick))
    RETURNING m.msg_id, m.enqueued_at, m.message, m.headers,
              m.tasker_message_id, m.tasker_correlation_id, m.tasker_key_order
), back AS (
    INSERT INTO {q} (vt, enqueued_at, message, headers, {OUR_COLUMNS})
    SELECT clock_timestamp(), enqueued_at, message,
           tasker_messaging.redrive_headers(headers, tasker_message_id IS NOT NULL, $2, msg_id),
           {OUR_COLUMNS}
    FROM taken ORDER BY msg_id
    RETURNING 1
), wake AS (
    SELECT pg_notify('{CHANNEL}', $3) WHERE EXISTS (SELECT 1 FROM back)
)
SELECT (SELECT count(*) FROM back), (SELECT count(*) FROM wake)"#
            )
        });

        let dead_letter_count = match &dlq_table {
            Some(d) => format!("(SELECT count(*) FROM {d})"),
            None => "NULL::int8".to_owned(),
        };
        let stats = format!(
            r#"SELECT count(*) FILTER (WHERE m.vt <= c.now) AS visible,
       count(*) FILTER (WHERE m.vt > c.now AND m.read_ct > 0) AS in_flight,
       count(*) FILTER (WHERE m.vt > c.now AND m.read_ct = 0) AS delayed,
       EXTRACT(epoch FROM c.now - min(m.enqueued_at))::float8 AS oldest_age,
       {dead_letter_count} AS dead_letters
FROM (SELECT clock_timestamp() AS now) c LEFT JOIN {q} m ON true
GROUP BY c.now"#
        );

        let a = format!("pgmq.a_{}", queue.as_str());
        let archive = format!(
            r#"WITH moved AS (
    DELETE FROM {q} WHERE msg_id = ANY($1)
    RETURNING msg_id, vt, read_ct, enqueued_at, last_read_at, message, headers, {OUR_COLUMNS}
), kept AS (
    INSERT INTO {a} (msg_id, vt, read_ct, enqueued_at, last_read_at, message, headers,
                     {OUR_COLUMNS})
    SELECT * FROM moved
    RETURNING 1
)
SELECT count(*) FROM kept"#
        );

        QueueSql {
            send,
            receive,
            receive_receivable,
            dead_letter_over,
            delete,
            set_vt,
            dead_letter,
            redrive,
            stats,
            archive,
        }
    }
}

/// The receive statement (see [`QueueSql::receive`]); `skip_over` is an extra condition on
/// the candidates.
fn receive_sql(q: &str, skip_over: &str) -> String {
    format!(
        r#"WITH cand AS (
    SELECT msg_id, read_ct FROM {q}
    WHERE vt <= clock_timestamp() {skip_over}
    ORDER BY msg_id LIMIT $1
    FOR UPDATE SKIP LOCKED
), r AS (
    -- By primary key from an array, not a join: the plan is made once per connection
    -- (generic), and a join planned from stale statistics becomes a hash join over a
    -- sequential scan of the whole queue.
    UPDATE {q} m
    SET vt = clock_timestamp() + $2 * interval '1 millisecond',
        read_ct = m.read_ct + 1,
        last_read_at = clock_timestamp()
    WHERE m.msg_id = ANY (ARRAY(
        SELECT cand.msg_id FROM cand WHERE NOT ($3 > 0 AND cand.read_ct >= $3)))
    RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message, m.headers,
              m.tasker_message_id, m.tasker_correlation_id, m.tasker_key_order
)
SELECT r.msg_id, r.read_ct, r.enqueued_at, r.vt, r.message::text, r.headers::text,
       r.tasker_message_id, r.tasker_correlation_id, r.tasker_key_order, o.over
FROM (SELECT count(*) AS over FROM cand WHERE $3 > 0 AND cand.read_ct >= $3) o
LEFT JOIN r ON true
ORDER BY r.msg_id"#
    )
}
