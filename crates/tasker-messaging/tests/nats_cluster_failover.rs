//! A node of a three-node JetStream cluster killed mid-stream loses nothing: on a private
//! cluster (client ports 4242-4244, routes 4245-4247), a queue with three replicas takes
//! messages before, while and after one node is killed (SIGKILL), and every one is then
//! received exactly as sent. Its own binary: it starts and kills its own servers only.

mod nats_support;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use nats_support::PrivateServer;
use tasker_messaging::{
    MessageId, MessagingService, NatsMessageService, NatsSettings, OutgoingMessage,
};

const CLIENT: [u16; 3] = [4242, 4243, 4244];
const ROUTE: [u16; 3] = [4245, 4246, 4247];

fn start_cluster() -> Option<Vec<PrivateServer>> {
    let routes = ROUTE
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for i in 0..3 {
        let dir = std::env::temp_dir().join(format!(
            "tasker-nats-failover-{}-{}",
            CLIENT[i],
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ok()?;
        let child = Command::new(nats_support::nats_server_bin())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &CLIENT[i].to_string(),
                "-js",
                "-sd",
            ])
            .arg(&dir)
            .args([
                "--server_name",
                &format!("f{}", i + 1),
                "--cluster_name",
                "failover",
            ])
            .args(["--cluster", &format!("nats://127.0.0.1:{}", ROUTE[i])])
            .args(["--routes", &routes])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                if nats_support::in_ci() {
                    panic!("cannot start nats-server: {e}");
                }
                eprintln!("SKIPPED: cannot start nats-server: {e}");
                return None;
            }
        };
        nodes.push(PrivateServer {
            child,
            port: CLIENT[i],
            dir,
        });
    }
    Some(nodes)
}

/// Sends `n` messages one batch of 10 at a time, retrying a batch that failed with a
/// retryable error (the cluster electing a new leader); returns the ids the server took.
async fn send_all(
    svc: &NatsMessageService,
    q: &tasker_messaging::QueueName,
    n: usize,
) -> Vec<MessageId> {
    let mut ids = Vec::new();
    for chunk in 0..n / 10 {
        let batch: Vec<_> = (0..10)
            .map(|i| OutgoingMessage::new(format!("m{}", chunk * 10 + i)))
            .collect();
        let mut tries = 0;
        loop {
            match svc.send_batch(q, batch.clone()).await {
                Ok(got) => {
                    ids.extend(got);
                    break;
                }
                Err(e) if e.is_retryable() && tries < 60 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("send failed for good: {e}"),
            }
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_nothing() {
    let Some(mut nodes) = start_cluster() else {
        return;
    };
    let url = CLIENT
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let settings = NatsSettings::new(url).with_replicas(3);
    let svc = NatsMessageService::new(settings).unwrap();
    // The cluster needs a meta leader before JetStream answers.
    let mut ready = false;
    for _ in 0..60 {
        if svc.initialize().await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(ready, "the private cluster never answered");
    let q = nats_support::queue("failover");
    let mut created = false;
    for _ in 0..60 {
        if svc.create_queue(&q).await.is_ok() {
            created = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(created, "could not create a replicated queue");

    let mut sent: Vec<MessageId> = send_all(&svc, &q, 200).await;
    // Kill one node (not necessarily the leader: whichever it is, nothing may be lost).
    let victim = nodes.remove(1);
    drop(victim);
    sent.extend(send_all(&svc, &q, 200).await);

    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < sent.len() && tokio::time::Instant::now() < deadline {
        match svc.receive(&q, 100, Duration::from_secs(30)).await {
            Ok(got) if got.is_empty() => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(got) => {
                let receipts: Vec<_> = got.iter().map(|m| m.receipt().clone()).collect();
                for m in got {
                    seen.insert(m.metadata.message_id);
                }
                let _ = svc.delete_messages(&q, &receipts).await;
            }
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(250)).await,
            Err(e) => panic!("receive failed for good: {e}"),
        }
    }
    let missing = sent.iter().filter(|id| !seen.contains(id)).count();
    assert_eq!(missing, 0, "{missing} of {} messages were lost", sent.len());
    let _ = svc.delete_queue(&q).await;
    let _ = svc.shutdown().await;
}
