//! The SQL this provider runs, one set of statements per queue.
//!
//! Statements address pgmq's tables (`pgmq.q_<queue>`) directly instead of going through
//! pgmq's PL/pgSQL wrappers: the wrappers build their SQL with `format()` and `EXECUTE` on
//! every call (no cached plan), and cannot check a receipt's lease or move a message to a
//! dead-letter queue in the same statement. The table layout is pgmq's own (msg_id, read_ct,
//! enqueued_at, last_read_at, vt, message, headers), the same for the extension and the SQL
//! install, so every row we write is a normal pgmq message and plain `pgmq.*` calls keep
//! working on our queues.
//!
//! The only text spliced into SQL is a [`QueueName`], validated to `[a-z][a-z0-9_]{0,46}`
//! before any statement is built; every value travels as a bind parameter.

use crate::queue_name::QueueName;

/// Bumped when [`SCHEMA_SQL`] changes, so initialize re-applies it once.
pub(super) const SCHEMA_VERSION: i32 = 3;
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
"#;

/// The columns every receive returns, from a CTE `r` of pgmq rows and `h`, its headers when
/// they are an object. The payload is our exact copy when we stored one, otherwise the jsonb
/// text (a plain `pgmq.send` message), or the string inside for text and base64 payloads.
const DECODE_COLUMNS: &str = r#"
    r.msg_id,
    r.read_ct,
    r.enqueued_at,
    r.vt,
    CASE WHEN h.h ->> 'tasker_payload_encoding' IN ('text', 'base64') THEN r.message #>> '{}'
         ELSE coalesce(h.h ->> 'tasker_payload', r.message::text) END AS body,
    h.h ->> 'tasker_payload_encoding' AS encoding,
    h.h ->> 'tasker_message_id' AS message_id,
    h.h ->> 'tasker_correlation_id' AS correlation_id,
    h.h -> 'tasker_origin' ->> 0 AS origin_queue,
    h.h -> 'tasker_origin' ->> 1 AS origin_msg_id,
    (h.h -> 'tasker_dead_letter')::text AS dead_letter,
    h.h ->> 'tasker_key_order' AS key_order
"#;

const HEADERS_LATERAL: &str = "LATERAL (SELECT CASE WHEN jsonb_typeof(r.headers) = 'object' \
                               THEN r.headers END AS h) h";

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
    /// $1 limit, $2 vt in ms, [$3 max_receive_count, $4 queue name, $5 dead-letter queue
    /// name]. Returns DECODE_COLUMNS.
    pub receive: String,
    /// $1 int8[] msg ids, $2 int4[] read counts. Returns (id, read_ct, current read_ct) of
    /// the receipts that did not delete.
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
}

impl QueueSql {
    pub fn new(
        queue: &QueueName,
        dead_letter_queue: Option<&QueueName>,
        dead_lettering: bool,
    ) -> Self {
        let q = format!("pgmq.q_{}", queue.as_str());
        let send = format!(
            r#"WITH ins AS (
INSERT INTO {q} (vt, message, headers)
SELECT clock_timestamp() + u.delay_ms * interval '1 millisecond',
       CASE WHEN u.kind IN ({KIND_JSON}, {KIND_COMPACT}) THEN u.body::jsonb
            ELSE to_jsonb(u.body) END,
       jsonb_strip_nulls(jsonb_build_object(
           'tasker_message_id', u.id,
           'tasker_correlation_id', u.cid,
           -- CASE, not AND: the cast must only run on JSON bodies.
           'tasker_payload', CASE WHEN u.kind = {KIND_JSON} THEN
                                 CASE WHEN u.body::jsonb::text <> u.body THEN u.body END END,
           'tasker_payload_encoding', CASE u.kind WHEN {KIND_TEXT} THEN 'text'
                                                  WHEN {KIND_BASE64} THEN 'base64' END,
           -- Marks compact JSON; a string, not a jsonb array: rows are throughput.
           'tasker_key_order', CASE WHEN u.kind = {KIND_COMPACT} THEN u.key_order END))
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
        let receive = match (&dlq_table, dead_lettering) {
            (Some(d), true) => format!(
                r#"WITH cand AS (
    SELECT msg_id, read_ct FROM {q}
    WHERE vt <= clock_timestamp()
    ORDER BY msg_id LIMIT $1
    FOR UPDATE SKIP LOCKED
), dead AS (
    DELETE FROM {q} m USING cand
    WHERE m.msg_id = cand.msg_id AND $3 > 0 AND cand.read_ct >= $3
    RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.message, m.headers
), moved AS (
    INSERT INTO {d} (vt, enqueued_at, message, headers)
    SELECT clock_timestamp(), dead.enqueued_at, dead.message,
           tasker_messaging.dead_letter_headers(dead.headers, $4, dead.msg_id, dead.read_ct,
               dead.enqueued_at,
               jsonb_build_object('kind', 'max_receive_count_exceeded', 'max_receive_count', $3))
    FROM dead ORDER BY dead.msg_id
    RETURNING 1
), wake AS (
    SELECT pg_notify('{CHANNEL}', $5) WHERE EXISTS (SELECT 1 FROM moved)
), r AS (
    UPDATE {q} m
    SET vt = clock_timestamp() + $2 * interval '1 millisecond',
        read_ct = m.read_ct + 1,
        last_read_at = clock_timestamp()
    FROM cand
    WHERE m.msg_id = cand.msg_id AND NOT ($3 > 0 AND cand.read_ct >= $3)
    RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message, m.headers
)
SELECT {DECODE_COLUMNS}
FROM r, {HEADERS_LATERAL}, (SELECT count(*) AS n FROM wake) w
WHERE w.n >= 0
ORDER BY r.msg_id"#
            ),
            _ => format!(
                r#"WITH cand AS (
    SELECT msg_id FROM {q}
    WHERE vt <= clock_timestamp()
    ORDER BY msg_id LIMIT $1
    FOR UPDATE SKIP LOCKED
), r AS (
    UPDATE {q} m
    SET vt = clock_timestamp() + $2 * interval '1 millisecond',
        read_ct = m.read_ct + 1,
        last_read_at = clock_timestamp()
    FROM cand
    WHERE m.msg_id = cand.msg_id
    RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message, m.headers
)
SELECT {DECODE_COLUMNS}
FROM r, {HEADERS_LATERAL}
ORDER BY r.msg_id"#
            ),
        };

        // Only receipts that did not delete come back (usually none). The outer SELECT sees
        // the table as it was before the DELETE: a row still there has another read_ct (a
        // stale receipt); one not there was gone already.
        let delete = format!(
            r#"WITH rc AS (
    SELECT * FROM unnest($1::int8[], $2::int4[]) AS rc(id, ct)
), d AS (
    DELETE FROM {q} m USING rc
    WHERE m.msg_id = rc.id AND m.read_ct = rc.ct
    RETURNING m.msg_id
)
SELECT rc.id, rc.ct, (SELECT m.read_ct FROM {q} m WHERE m.msg_id = rc.id) AS current_ct
FROM rc WHERE NOT EXISTS (SELECT 1 FROM d WHERE d.msg_id = rc.id)"#
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
    RETURNING msg_id, read_ct, enqueued_at, message, headers
), moved AS (
    INSERT INTO {d} (vt, enqueued_at, message, headers)
    SELECT clock_timestamp(), enqueued_at, message,
           tasker_messaging.dead_letter_headers(headers, $3, msg_id, read_ct, enqueued_at, $4)
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
    DELETE FROM {d} m USING pick WHERE m.msg_id = pick.msg_id
    RETURNING m.msg_id, m.enqueued_at, m.message, m.headers
), back AS (
    INSERT INTO {q} (vt, enqueued_at, message, headers)
    SELECT clock_timestamp(), enqueued_at, message,
           tasker_messaging.redrive_headers(headers, $2, msg_id)
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

        QueueSql {
            send,
            receive,
            delete,
            set_vt,
            dead_letter,
            redrive,
            stats,
        }
    }
}
