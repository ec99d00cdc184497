//! Shared by the NATS test files: the server's URL, a reachability gate, and private
//! `nats-server` processes (a password-protected one, a three-node cluster) on this test's
//! own ports.
//!
//! Tests run against the machine's NATS with JetStream (`NATS_URL`, default 127.0.0.1:4222).
//! When it is unreachable they fail under CI (`CI=true`), and are skipped with a message
//! elsewhere; `scripts/services/nats.sh` starts it (and the shared cluster on 4231-4233).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tasker_messaging::{MessagingService, NatsMessageService, NatsSettings, QueueName, SecretUrl};

pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The shared three-node cluster `scripts/services/nats.sh` starts.
pub fn cluster_url() -> String {
    std::env::var("NATS_CLUSTER_URL").unwrap_or_else(|_| {
        "nats://127.0.0.1:4231,nats://127.0.0.1:4232,nats://127.0.0.1:4233".into()
    })
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

pub fn settings() -> NatsSettings {
    NatsSettings::new(nats_url()).with_connection_timeout(Duration::from_secs(3))
}

/// A connected service, or `None` (test skipped) when the server is unreachable outside CI.
pub async fn service_with(settings: NatsSettings) -> Option<NatsMessageService> {
    let url = settings.url.clone();
    let svc = NatsMessageService::new(settings).expect("valid settings");
    match svc.initialize().await {
        Ok(()) => Some(svc),
        Err(e) => {
            let msg = format!(
                "NATS JetStream is unreachable at {url}: {e} (start it with scripts/services/nats.sh)"
            );
            if in_ci() {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

pub async fn service() -> Option<NatsMessageService> {
    service_with(settings()).await
}

/// A fresh queue name, unique across concurrent tests and runs.
pub fn queue(prefix: &str) -> QueueName {
    QueueName::new(format!("n_{prefix}_{:08x}", rand::random::<u32>())).unwrap()
}

/// The machine's `nats-server`.
pub fn nats_server_bin() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into())
}

/// A `nats-server` this test started; killed (and its store removed) when dropped.
pub struct PrivateServer {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private single node with JetStream on `port`, started with `extra` arguments; waits
/// until it accepts connections. `None` when `nats-server` is not installed (outside CI).
pub fn start_server(port: u16, extra: &[&str]) -> Option<PrivateServer> {
    let dir = std::env::temp_dir().join(format!("tasker-nats-{port}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).ok()?;
    let child = Command::new(nats_server_bin())
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot start nats-server: {e}");
            if in_ci() {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            return None;
        }
    };
    let server = PrivateServer { child, port, dir };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(server);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("private nats-server on {port} did not start");
}

/// `url` shown redacted (for messages).
pub fn shown(url: &str) -> String {
    SecretUrl::new(url).redacted()
}
