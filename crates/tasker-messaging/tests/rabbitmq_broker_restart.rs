//! Recovery after a full restart of the broker node (`rabbitmqctl stop`, then
//! `rabbitmq-server -detached`): the same service instance, in the same process, reconnects,
//! re-declares what it declared, resumes its push stream by itself, and every message is
//! delivered at least once and acked; none is lost.
//!
//! This is its own test binary so that no other RabbitMQ test runs while the broker is down
//! (cargo runs test binaries one after another). The broker is always started again, also
//! when the test fails. Needs `rabbitmqctl` and `rabbitmq-server` on this machine: under CI
//! (`CI=true`) their absence fails the test; elsewhere it is skipped with the reason.

mod rabbitmq_support;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tasker_messaging::{
    ConsumerExt, ConsumerOptions, ExchangeKind, MessageId, MessagingError, MessagingService,
    OutgoingMessage, QueueName,
};

const N: usize = 400;
/// Unacked leases the stream holds when the broker goes down.
const IN_FLIGHT: usize = 60;
/// How long the node may take to come back.
const RESTART_WITHIN: Duration = Duration::from_secs(60);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn run(program: &str, args: &[&str]) -> std::io::Result<Output> {
    Command::new(program).args(args).output()
}

/// Starts a server with every inherited descriptor above stderr closed: the broker outlives
/// the test and must not keep the `flock -x /tmp/tasker-services.lock` descriptor the test
/// was started under (it would hold the shared services' lock for as long as it runs).
fn run_server_start(program: &str, args: &[&str]) -> std::io::Result<Output> {
    let close_and_exec = r#"for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done 2>/dev/null; exec "$@""#;
    Command::new("bash")
        .arg("-c")
        .arg(close_and_exec)
        .arg("bash")
        .arg(program)
        .args(args)
        .output()
}

fn describe(out: &Output) -> String {
    format!(
        "{} {}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// Whether the local node answers `rabbitmqctl` (and so can be restarted from here).
fn controllable() -> Result<(), String> {
    match run("rabbitmqctl", &["-q", "status"]) {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!("rabbitmqctl status failed: {}", describe(&out))),
        Err(e) => Err(format!("rabbitmqctl cannot run: {e}")),
    }
}

/// Waits until the node has booted (`await_startup` fails at once while the node is not yet
/// registered, so it is retried).
fn await_node(within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let out = run("rabbitmqctl", &["-q", "await_startup", "--timeout", "30"])
            .map_err(|e| format!("rabbitmqctl cannot run: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the node did not start within {within:?}: {}",
                describe(&out)
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn start_node() -> Result<(), String> {
    let out = run_server_start("rabbitmq-server", &["-detached"])
        .map_err(|e| format!("rabbitmq-server cannot run: {e}"))?;
    if !out.status.success() {
        // Already running is fine; await_node tells.
        eprintln!("rabbitmq-server -detached: {}", describe(&out));
    }
    await_node(RESTART_WITHIN)
}

/// Stops the whole node (not only the app) and starts it again.
fn restart_node() -> Result<Duration, String> {
    let started = Instant::now();
    let out = run("rabbitmqctl", &["-q", "stop"]).map_err(|e| format!("rabbitmqctl: {e}"))?;
    if !out.status.success() {
        return Err(format!("rabbitmqctl stop failed: {}", describe(&out)));
    }
    start_node()?;
    Ok(started.elapsed())
}

/// Leaves the broker running whatever happens to the test (also on panic).
struct BrokerGuard;

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        if controllable().is_ok() {
            return;
        }
        eprintln!("broker guard: the node is down; starting it again");
        if let Err(e) = start_node() {
            eprintln!("broker guard: could not start the node: {e}");
        }
    }
}

fn unique(tag: &str) -> QueueName {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
    QueueName::new(format!("rt_{tag}_{suffix}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_recovers_from_a_full_broker_restart() {
    let Some(svc) = rabbitmq_support::service().await else {
        return;
    };
    if let Err(why) = controllable() {
        let msg = format!("cannot restart the local broker: {why}");
        if in_ci() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let _guard = BrokerGuard;
    let begun = Instant::now();

    // A durable (quorum) queue with N confirmed messages, and a transient exchange bound to
    // it: the exchange and its binding do not survive the restart, so routing through it
    // afterwards shows the service declared them again.
    let q = unique("restart");
    svc.create_queue(&q).await.unwrap();
    let amqp = svc.amqp().unwrap();
    let exchange = format!("tasker_restart_{}", uuid::Uuid::new_v4().simple());
    amqp.declare_exchange(&exchange, ExchangeKind::Direct, false)
        .await
        .unwrap();
    amqp.bind_queue(&q, &exchange, "again").await.unwrap();
    let mut sent: HashSet<MessageId> = HashSet::new();
    for chunk in 0..(N / 100) {
        let batch = (0..100)
            .map(|i| OutgoingMessage::new(format!("m{}", chunk * 100 + i)))
            .collect();
        sent.extend(svc.send_batch(&q, batch).await.unwrap());
    }
    assert_eq!(sent.len(), N);

    let options = ConsumerOptions {
        batch_size: 20,
        visibility_timeout: Duration::from_secs(120),
        ..ConsumerOptions::default()
    };
    let mut stream = svc.consume(&q, options);
    let mut deliveries: HashMap<MessageId, usize> = HashMap::new();
    let mut acked: HashSet<MessageId> = HashSet::new();

    // Before the restart: ack 100, then hold IN_FLIGHT unacked.
    let mut held = Vec::new();
    while acked.len() + held.len() < 100 + IN_FLIGHT {
        let m = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the stream delivers")
            .expect("the stream is open")
            .expect("no error before the restart");
        *deliveries.entry(m.metadata.message_id).or_default() += 1;
        held.push(m);
        if acked.len() < 100 && held.len() == 25 {
            let receipts: Vec<_> = held.iter().map(|m| m.receipt().clone()).collect();
            let outcome = svc.delete_messages(&q, &receipts).await.unwrap();
            assert_eq!(outcome.deleted, 25, "{:?}", outcome.rejected);
            acked.extend(held.drain(..).map(|m| m.metadata.message_id));
        }
    }
    assert_eq!(held.len(), IN_FLIGHT);

    // The node goes down and comes back while the consumer keeps polling its stream, as a
    // worker would: the stream reports the outage as retryable errors and carries on.
    let restart = tokio::task::spawn_blocking(restart_node);
    let mut retryable_errors = 0usize;
    let mut during = Vec::new();
    // No panic while the restart runs (the process would end with the node down).
    let mut problem = None;
    while !restart.is_finished() {
        if problem.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        match tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
            Err(_) => {}
            Ok(None) => problem = Some("the stream ended during the restart".to_owned()),
            Ok(Some(Ok(m))) => {
                *deliveries.entry(m.metadata.message_id).or_default() += 1;
                during.push(m);
            }
            Ok(Some(Err(e))) if e.is_retryable() => retryable_errors += 1,
            Ok(Some(Err(e))) => problem = Some(format!("permanent stream error: {e}")),
        }
    }
    let took = restart
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("restarting the broker: {e}"));
    if let Some(problem) = problem {
        panic!("during the restart: {problem}");
    }
    eprintln!(
        "broker node restarted in {took:?}; the stream said {retryable_errors} times that it \
         was reconnecting"
    );
    assert!(retryable_errors > 0, "the stream never reported the outage");

    // The leases held across the restart died with their connection: refused, never
    // silently counted as deleted (their messages come back).
    let receipts: Vec<_> = held.iter().map(|m| m.receipt().clone()).collect();
    let outcome = svc.delete_messages(&q, &receipts).await.unwrap();
    assert_eq!(outcome.deleted, 0, "a lease survived its connection");
    assert_eq!(outcome.rejected.len(), IN_FLIGHT);
    assert!(
        outcome
            .rejected
            .iter()
            .all(|(_, e)| matches!(e, MessagingError::InvalidReceipt { .. })),
        "{:?}",
        outcome.rejected
    );
    held.clear();
    // Delivered while the node went down or just as it came back: acked if its lease is on
    // the new connection, refused (and delivered again) if it was on the old one.
    let receipts: Vec<_> = during.iter().map(|m| m.receipt().clone()).collect();
    let outcome = svc.delete_messages(&q, &receipts).await.unwrap();
    let refused: HashSet<_> = outcome.rejected.iter().map(|(r, _)| r.clone()).collect();
    for m in &during {
        if !refused.contains(m.receipt()) {
            acked.insert(m.metadata.message_id);
        }
    }
    assert!(outcome
        .rejected
        .iter()
        .all(|(_, e)| matches!(e, MessagingError::InvalidReceipt { .. })));

    // The same service publishes again (reconnecting), also through the transient exchange.
    let extra = loop {
        let m = OutgoingMessage::new("after the restart");
        match amqp.publish_to_exchange(&exchange, "again", m).await {
            Ok(id) => break id,
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("publishing after the restart: {e}"),
        }
    };
    sent.insert(extra);

    // The same stream resumes by itself: everything not acked arrives, and is acked.
    let resumed_at = Instant::now();
    let mut redelivered = 0usize;
    while acked.len() < sent.len() {
        assert!(
            resumed_at.elapsed() < Duration::from_secs(45),
            "only {} of {} acked after the restart",
            acked.len(),
            sent.len()
        );
        // Whatever is held is acked when the stream goes quiet for a moment, or by 25.
        let item = match tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
            Ok(item) => item.expect("the stream stays open"),
            Err(_) => {
                ack(&svc, &q, &mut held, &mut acked).await;
                continue;
            }
        };
        let m = match item {
            Ok(m) => m,
            Err(e) => panic!("stream error after the restart: {e}"),
        };
        if m.metadata.receive_count > 1 {
            redelivered += 1;
        }
        *deliveries.entry(m.metadata.message_id).or_default() += 1;
        held.push(m);
        if held.len() >= 25 {
            ack(&svc, &q, &mut held, &mut acked).await;
        }
    }
    assert_eq!(acked, sent, "a message was lost across the broker restart");
    assert!(
        deliveries.keys().all(|id| sent.contains(id)),
        "a message nobody sent"
    );
    assert!(
        redelivered >= IN_FLIGHT,
        "the {IN_FLIGHT} unacked messages come back counted ({redelivered} redelivered)"
    );
    drop(stream);
    let stats = svc.get_queue_stats(&q).await.unwrap();
    assert_eq!(stats.message_count, 0, "{stats:?}");
    svc.delete_queue(&q).await.unwrap();
    rabbitmq_support::delete_exchange(&exchange).await;
    eprintln!(
        "{} sent, all acked; {redelivered} redelivered; whole test {:?}",
        sent.len(),
        begun.elapsed()
    );
}

async fn ack(
    svc: &tasker_messaging::RabbitMqMessageService,
    q: &QueueName,
    held: &mut Vec<tasker_messaging::ReceivedMessage>,
    acked: &mut HashSet<MessageId>,
) {
    if held.is_empty() {
        return;
    }
    let receipts: Vec<_> = held.iter().map(|m| m.receipt().clone()).collect();
    let outcome = svc.delete_messages(q, &receipts).await.unwrap();
    assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
    acked.extend(held.drain(..).map(|m| m.metadata.message_id));
}
