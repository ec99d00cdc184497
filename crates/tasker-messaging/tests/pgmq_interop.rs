//! Interoperability with plain pgmq SQL, both ways, and payload fidelity.

mod support;

use std::time::Duration;

use sqlx::Row;
use tasker_messaging::{
    CorrelationId, DeadLetterReason, MessageId, MessagingService, OutgoingMessage, QueueOptions,
};
use uuid::Uuid;

const VT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn plain_sql_send_is_received_with_its_json_and_a_stable_derived_id() {
    let Some(svc) = support::service().await else {
        return;
    };
    let pool = support::raw_pool().await;
    let queue = support::queue("interop_in");
    svc.create_queue_with(&queue, &QueueOptions::with_max_receive_count(1))
        .await
        .unwrap();

    let msg_id: i64 = sqlx::query_scalar("SELECT * FROM pgmq.send($1, $2::jsonb)")
        .bind(queue.as_str())
        .bind(r#"{"b":2,"a":[1,2]}"#)
        .fetch_one(&pool)
        .await
        .unwrap();

    let got = svc.receive(&queue, 10, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    // jsonb's own text form: what any pgmq client would read.
    assert_eq!(&m.payload[..], br#"{"a": [1, 2], "b": 2}"#);
    let expected_id = MessageId::derived(queue.as_str(), &msg_id.to_string());
    assert_eq!(m.metadata.message_id, expected_id);
    assert_eq!(m.metadata.correlation_id, None);
    assert_eq!(m.metadata.receive_count, 1);
    assert!(m.decode::<serde_json::Value>().is_ok());

    // Received once already with max_receive_count 1: the next receive dead-letters it, and
    // the derived id survives the move and the redrive back.
    assert!(svc.receive(&queue, 10, VT).await.unwrap().is_empty());
    let dlq = queue.dead_letter("_dlq").unwrap();
    let dead = svc.receive(&dlq, 10, VT).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].metadata.message_id, expected_id);
    let info = dead[0]
        .metadata
        .dead_letter
        .as_ref()
        .expect("dead-letter info");
    assert_eq!(info.source_queue, queue);
    assert_eq!(info.receive_count, 1);
    assert_eq!(
        info.reason,
        DeadLetterReason::MaxReceiveCountExceeded {
            max_receive_count: 1
        }
    );
    assert_eq!(info.original_enqueued_at, m.metadata.enqueued_at);
    svc.change_message_visibility(&dlq, dead[0].receipt(), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(svc.redrive_dead_letters(&queue, 10).await.unwrap(), 1);
    let back = svc.receive(&queue, 10, VT).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].metadata.message_id, expected_id);
    assert_eq!(back[0].metadata.receive_count, 1);
    assert!(back[0].metadata.dead_letter.is_none());
    assert_eq!(&back[0].payload[..], br#"{"a": [1, 2], "b": 2}"#);
    svc.delete_queue(&queue).await.unwrap();
}

#[tokio::test]
async fn our_messages_are_readable_with_plain_pgmq_read() {
    let Some(svc) = support::service().await else {
        return;
    };
    let pool = support::raw_pool().await;
    let queue = support::queue("interop_out");
    svc.create_queue(&queue).await.unwrap();
    let cid = CorrelationId::new();
    let out = OutgoingMessage::new(r#"{"task":"t1","step":2}"#).with_correlation_id(cid);
    let id = svc.send(&queue, out).await.unwrap();

    let row = sqlx::query("SELECT msg_id, read_ct, message, headers FROM pgmq.read($1, 30, 10)")
        .bind(queue.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
    let message: serde_json::Value = row.get("message");
    assert_eq!(message, serde_json::json!({"task": "t1", "step": 2}));
    // Compact JSON is stored once, with no headers: the ids and the key order jsonb forgot
    // are columns of ours, which pgmq's functions do not return but plain SQL can select.
    let headers: Option<serde_json::Value> = row.get("headers");
    assert!(headers.is_none(), "{headers:?}");
    let msg_id: i64 = row.get("msg_id");
    let (message_id, correlation_id, key_order): (Uuid, Uuid, String) = sqlx::query_as(&format!(
        "SELECT tasker_message_id, tasker_correlation_id, tasker_key_order
         FROM pgmq.q_{queue} WHERE msg_id = $1"
    ))
    .bind(msg_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(message_id, id.0);
    assert_eq!(correlation_id, cid.0);
    assert_eq!(key_order, "[[1,0]]");
    let read_ct: i32 = row.get("read_ct");
    assert_eq!(read_ct, 1);
    // Plain pgmq.delete works on our rows too.
    let deleted: bool = sqlx::query_scalar("SELECT pgmq.delete($1, $2)")
        .bind(queue.as_str())
        .bind(msg_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(deleted);
    svc.delete_queue(&queue).await.unwrap();
}

#[tokio::test]
async fn payload_bytes_round_trip_exactly_in_every_form() {
    let Some(svc) = support::service().await else {
        return;
    };
    let queue = support::queue("fidelity");
    svc.create_queue(&queue).await.unwrap();
    let payloads: Vec<Vec<u8>> = vec![
        br#"{"task_uuid":"a","step_uuid":"b"}"#.to_vec(), // compact: jsonb would add spaces
        // Compact documents stored once and rebuilt from jsonb's text and the key order.
        br#"{"b":{"zz":1,"a":[{"y":2,"x":3},{}]},"a":null,"ccc":[true,false,1.5,-2,0.1]}"#.to_vec(),
        "{\"é\":\"ü🚀\",\"e\":\"\\n\\\"\\\\\\t\",\"n\":1e-7}"
            .as_bytes()
            .to_vec(),
        br#"{"x":-0.0,"big":18446744073709551615,"neg":-9223372036854775808}"#.to_vec(),
        br#"[{"k2":1,"k1":2},"s",[]]"#.to_vec(),
        serde_json::to_vec(&tasker_messaging::StepMessage::random()).unwrap(),
        br#"{"a": 1}"#.to_vec(),             // already jsonb's form
        br#"{"z":1,"a":2,"a":3}"#.to_vec(),  // key order and duplicates
        br#"  [1.50, 1e3, -0]  "#.to_vec(),  // number forms and whitespace
        br#""\u00e9\ud83d\ude80""#.to_vec(), // escapes jsonb would decode
        br#"{"nul":"\u0000"}"#.to_vec(),     // valid JSON jsonb refuses
        b"not json at all".to_vec(),
        "ünïcödé text 🚀".as_bytes().to_vec(),
        vec![0, 159, 146, 150, 255, 0], // binary
        b"nul\0inside".to_vec(),
        Vec::new(),
    ];
    let outgoing: Vec<_> = payloads
        .iter()
        .map(|p| OutgoingMessage::new(p.clone()))
        .collect();
    let ids = svc.send_batch(&queue, outgoing).await.unwrap();
    let got = svc.receive(&queue, 100, VT).await.unwrap();
    assert_eq!(got.len(), payloads.len());
    for ((m, expected), id) in got.iter().zip(&payloads).zip(&ids) {
        assert_eq!(
            &m.payload[..],
            &expected[..],
            "{:?}",
            String::from_utf8_lossy(expected)
        );
        assert_eq!(m.metadata.message_id, *id);
    }
    svc.delete_queue(&queue).await.unwrap();
}

#[tokio::test]
async fn an_undecodable_foreign_row_is_dead_lettered_not_lost_or_panicking() {
    let Some(svc) = support::service().await else {
        return;
    };
    let pool = support::raw_pool().await;
    let queue = support::queue("undecodable");
    svc.create_queue(&queue).await.unwrap();
    // Claims a base64 payload that is not base64.
    sqlx::query("SELECT * FROM pgmq.send($1, to_jsonb('%%% not base64'::text), $2::jsonb)")
        .bind(queue.as_str())
        .bind(r#"{"tasker_payload_encoding":"base64"}"#)
        .execute(&pool)
        .await
        .unwrap();
    // And headers that are not even an object, which must not disturb decoding.
    sqlx::query("SELECT * FROM pgmq.send($1, '{\"ok\":true}'::jsonb, '[1,2]'::jsonb)")
        .bind(queue.as_str())
        .execute(&pool)
        .await
        .unwrap();
    let got = svc.receive(&queue, 10, VT).await.unwrap();
    assert_eq!(got.len(), 1, "only the decodable message is returned");
    assert_eq!(&got[0].payload[..], br#"{"ok": true}"#);
    let dlq = queue.dead_letter("_dlq").unwrap();
    let dead = svc.receive(&dlq, 10, VT).await.unwrap();
    // Still undecodable there; a dead-letter queue has no further queue, so it stays put.
    assert_eq!(dead.len(), 0);
    let headers: serde_json::Value =
        sqlx::query_scalar(&format!("SELECT headers FROM pgmq.q_{dlq}"))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        headers["tasker_dead_letter"]["reason"]["kind"],
        "undecodable"
    );
    assert_eq!(
        headers["tasker_dead_letter"]["source_queue"],
        queue.as_str()
    );
    let stats = svc.get_queue_stats(&queue).await.unwrap();
    assert_eq!(stats.dead_letter_count, Some(1));
    svc.delete_queue(&queue).await.unwrap();
}

/// A queue another client created (plain `pgmq.create`, none of our columns) holding a row
/// written the way earlier versions of this provider wrote them (ids and key order as
/// headers): first use adds our columns, and the old row keeps its ids and exact bytes.
#[tokio::test]
async fn a_foreign_queue_is_adopted_and_rows_with_header_ids_keep_them() {
    let Some(svc) = support::service().await else {
        return;
    };
    let pool = support::raw_pool().await;
    let queue = support::queue("adopt");
    sqlx::query("SELECT pgmq.create($1)")
        .bind(queue.as_str())
        .execute(&pool)
        .await
        .unwrap();
    let (id, cid) = (Uuid::now_v7(), Uuid::now_v7());
    let headers = serde_json::json!({
        "tasker_message_id": id,
        "tasker_correlation_id": cid,
        "tasker_key_order": "[[1,0]]",
    });
    sqlx::query("SELECT * FROM pgmq.send($1, '{\"task\":\"t\",\"step\":1}'::jsonb, $2)")
        .bind(queue.as_str())
        .bind(&headers)
        .execute(&pool)
        .await
        .unwrap();

    let new_id = svc
        .send(&queue, OutgoingMessage::new(r#"{"x":1}"#))
        .await
        .unwrap();
    let got = svc.receive(&queue, 10, VT).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].metadata.message_id, MessageId(id));
    assert_eq!(got[0].metadata.correlation_id, Some(CorrelationId(cid)));
    assert_eq!(&got[0].payload[..], br#"{"task":"t","step":1}"#);
    assert_eq!(got[1].metadata.message_id, new_id);
    assert_eq!(&got[1].payload[..], br#"{"x":1}"#);
    let columns: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_attribute
         WHERE attrelid IN (to_regclass($1), to_regclass($2)) AND attname LIKE 'tasker\\_%'",
    )
    .bind(format!("pgmq.q_{queue}"))
    .bind(format!("pgmq.a_{queue}"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        columns, 6,
        "three columns on the queue table and three on its archive"
    );
    svc.delete_queue(&queue).await.unwrap();
}
