//! Interop: what the provider writes is readable with plain Redis commands in the documented
//! layout (module docs of `providers::redis`, docs/semantics.md), and a message a plain client
//! writes in that layout is received by the provider.

mod redis_support;

use std::time::Duration;

use redis::AsyncCommands;
use tasker_messaging::{CorrelationId, MessagingService, OutgoingMessage, QueueName, QueueOptions};

fn unique(prefix: &str) -> QueueName {
    QueueName::new(format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    ))
    .unwrap()
}

#[tokio::test]
async fn a_provider_message_reads_with_plain_commands_and_back() {
    let Some(svc) = redis_support::service().await else {
        return;
    };
    let q = unique("interop");
    svc.create_queue_with(&q, &QueueOptions::with_max_receive_count(3))
        .await
        .unwrap();
    let cid = CorrelationId::new();
    let body: &[u8] = b"{\"task\": 1}\x00\xff";
    let sent = OutgoingMessage::new(body.to_vec()).with_correlation_id(cid);
    let id = svc.send(&q, sent).await.unwrap();

    let client = redis::Client::open(redis_support::redis_url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let base = format!("tmq:{{{q}}}:{q}:");

    // The queue's meta and its dead-letter queue's, under the same hash tag.
    let meta: std::collections::HashMap<String, String> =
        raw.hgetall(format!("{base}meta")).await.unwrap();
    assert_eq!(meta.get("mrc").map(String::as_str), Some("3"));
    assert_eq!(meta.get("dlq").map(String::as_str), Some("1"));
    assert_eq!(meta.get("seq").map(String::as_str), Some("1"));
    let dlq_meta: bool = raw
        .exists(format!("tmq:{{{q}}}:{q}_dlq:meta"))
        .await
        .unwrap();
    assert!(dlq_meta, "the dead-letter queue shares the hash tag");

    // The message: its sequence in the ready list, one hash with the documented fields.
    let ready: Vec<String> = raw.lrange(format!("{base}ready"), 0, -1).await.unwrap();
    assert_eq!(ready, vec!["1".to_owned()]);
    let m: std::collections::HashMap<String, Vec<u8>> =
        raw.hgetall(format!("{base}m:1")).await.unwrap();
    assert_eq!(m["id"], id.to_string().into_bytes());
    assert_eq!(m["cid"], cid.to_string().into_bytes());
    assert_eq!(m["rc"], b"0".to_vec());
    assert_eq!(m["body"], body.to_vec());
    let at: i64 = String::from_utf8(m["at"].clone()).unwrap().parse().unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    assert!(
        (now - at).abs() < 60_000,
        "enqueue time in ms since the epoch: {at}"
    );

    // Received: leased until its end, count and token on the hash.
    let got = svc.receive(&q, 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].metadata.message_id, id);
    let lease_end: Option<f64> = raw.zscore(format!("{base}leased"), "1").await.unwrap();
    assert!(
        lease_end.is_some_and(|end| end as i64 > now),
        "{lease_end:?}"
    );
    let rc: String = raw.hget(format!("{base}m:1"), "rc").await.unwrap();
    assert_eq!(rc, "1");
    let tok: Option<String> = raw.hget(format!("{base}m:1"), "tok").await.unwrap();
    assert!(tok.is_some());
    svc.delete_message(&q, got[0].receipt()).await.unwrap();
    let gone: bool = raw.exists(format!("{base}m:1")).await.unwrap();
    assert!(!gone, "a deleted message's hash is removed");

    // A plain client writes a message in the layout; the provider receives it.
    let seq: i64 = raw.hincr(format!("{base}meta"), "seq", 1).await.unwrap();
    let foreign = tasker_messaging::MessageId::new();
    let _: () = redis::pipe()
        .hset_multiple(
            format!("{base}m:{seq}"),
            &[
                ("id", foreign.to_string().into_bytes()),
                ("at", now.to_string().into_bytes()),
                ("rc", b"0".to_vec()),
                ("body", b"written by redis-cli".to_vec()),
            ],
        )
        .ignore()
        .rpush(format!("{base}ready"), seq)
        .ignore()
        .query_async(&mut raw)
        .await
        .unwrap();
    let got = svc.receive(&q, 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].metadata.message_id, foreign);
    assert_eq!(&got[0].payload[..], b"written by redis-cli");
    assert_eq!(got[0].metadata.receive_count, 1);
    svc.delete_queue(&q).await.unwrap();
    let left: Vec<String> = raw.keys(format!("tmq:{{{q}}}:*")).await.unwrap();
    assert!(left.is_empty(), "delete_queue leaves no keys: {left:?}");
}

#[tokio::test]
async fn health_reports_the_persistence_mode() {
    let Some(svc) = redis_support::service().await else {
        return;
    };
    let p = svc.persistence().await.unwrap();
    // The shared test server runs without AOF (SERVICES.md); whatever it runs, the mode is
    // read from the server and summarized.
    assert!(!p.summary().is_empty());
    assert!(svc.health_check().await.unwrap().is_healthy());
}
