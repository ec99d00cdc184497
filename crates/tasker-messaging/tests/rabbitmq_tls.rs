//! `amqps://` against the machine's broker, through a TLS-terminating proxy this test runs in
//! front of it (the broker itself listens without TLS): a private CA, a client certificate the
//! proxy requires, and the ways a TLS set-up goes wrong, each a typed error without secrets.

mod rabbitmq_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tasker_messaging::{
    MessagingError, MessagingService, OutgoingMessage, QueueName, RabbitMqMessageService,
    RabbitMqSettings, RabbitMqTls,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

const PASSWORD: &str = "guest";

/// A CA, a server certificate for 127.0.0.1 and a client certificate, written as PEM files
/// to a directory removed on drop.
struct Pki {
    dir: PathBuf,
    ca_file: PathBuf,
    client_cert_file: PathBuf,
    client_key_file: PathBuf,
    /// Another CA's certificate: trusting only it must fail the handshake.
    other_ca_file: PathBuf,
    server_config: Arc<ServerConfig>,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

fn pki() -> Pki {
    let ca = new_ca("tasker test CA");
    let other = new_ca("some other CA");
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&server_key, &ca)
        .expect("server certificate");
    let client_key = KeyPair::generate().expect("key");
    let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    client_params
        .distinguished_name
        .push(DnType::CommonName, "tasker test client");
    let client = client_params
        .signed_by(&client_key, &ca)
        .expect("client certificate");

    let dir = std::env::temp_dir().join(format!("tasker-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write PEM");
        path
    };
    let ca_file = write("ca.pem", ca.pem());
    let other_ca_file = write("other-ca.pem", other.pem());
    let client_cert_file = write("client.pem", client.pem());
    let client_key_file = write("client-key.pem", client_key.serialize_pem());

    // The proxy trusts client certificates from the test CA only, and requires one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("client verifier");
    let server_config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(server.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .expect("server config");
    Pki {
        dir,
        ca_file,
        client_cert_file,
        client_key_file,
        other_ca_file,
        server_config: Arc::new(server_config),
    }
}

/// Terminates TLS on a loopback port and forwards to the broker. Counts completed handshakes,
/// so a test can tell the traffic really went through TLS.
struct TlsProxy {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tls_proxy(config: Arc<ServerConfig>) -> TlsProxy {
    let broker = lapin::uri::AMQPUri::from_str(&rabbitmq_support::amqp_url()).expect("AMQP_URL");
    let upstream = format!("{}:{}", broker.authority.host, broker.authority.port);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    let task = tokio::spawn(async move {
        let acceptor = TlsAcceptor::from(config);
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counted = counted.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let Ok(mut broker) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
    TlsProxy {
        addr,
        handshakes,
        task,
    }
}

fn amqps_settings(proxy: &TlsProxy, tls: RabbitMqTls) -> RabbitMqSettings {
    let mut s = RabbitMqSettings::new(format!(
        "amqps://guest:{PASSWORD}@127.0.0.1:{}/%2f",
        proxy.addr.port()
    ));
    s.connection_timeout = Duration::from_secs(5);
    s.tls = tls;
    s
}

/// The broker is reachable without TLS (else the test is skipped, or fails under CI).
async fn broker_up() -> bool {
    rabbitmq_support::service().await.is_some()
}

fn unique(tag: &str) -> QueueName {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
    QueueName::new(format!("tls_{tag}_{suffix}")).expect("name")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_private_ca_and_a_client_certificate_carries_the_contract() {
    if !broker_up().await {
        return;
    }
    let pki = pki();
    let proxy = tls_proxy(pki.server_config.clone()).await;
    let svc = RabbitMqMessageService::new(amqps_settings(
        &proxy,
        RabbitMqTls {
            ca_file: Some(pki.ca_file.clone()),
            client_cert_file: Some(pki.client_cert_file.clone()),
            client_key_file: Some(pki.client_key_file.clone()),
        },
    ))
    .expect("settings");
    svc.initialize().await.expect("amqps connects");
    assert!(proxy.handshakes.load(Ordering::SeqCst) >= 1);

    let q = unique("roundtrip");
    svc.create_queue(&q).await.expect("create");
    let sent = OutgoingMessage::new("over TLS");
    let id = sent.message_id;
    svc.send(&q, sent).await.expect("send");
    let got = svc
        .receive(&q, 10, Duration::from_secs(30))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].metadata.message_id, id);
    assert_eq!(&got[0].payload[..], b"over TLS");
    svc.delete_message(&q, got[0].receipt())
        .await
        .expect("delete");
    svc.delete_queue(&q).await.expect("delete queue");
}

/// Connects through a fresh proxy with the TLS settings `tls` picks, expects the handshake to
/// be refused with a connection error that says it is about a certificate, without the
/// password, and no handshake completed at the proxy. Skipped when the broker is unreachable
/// outside CI.
async fn refused(tls: impl Fn(&Pki) -> RabbitMqTls) {
    if !broker_up().await {
        return;
    }
    let pki = pki();
    let proxy = tls_proxy(pki.server_config.clone()).await;
    let svc = RabbitMqMessageService::new(amqps_settings(&proxy, tls(&pki))).expect("settings");
    let err = svc
        .initialize()
        .await
        .expect_err("the TLS set-up must be refused");
    eprintln!("refused as: {err}");
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains(&format!(":{PASSWORD}@")),
        "password shown: {shown}"
    );
    assert!(matches!(err, MessagingError::Connection { .. }), "{err:?}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "the error says why: {err}"
    );
    assert_eq!(proxy.handshakes.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_without_the_required_client_certificate_is_refused() {
    refused(|pki| RabbitMqTls {
        ca_file: Some(pki.ca_file.clone()),
        ..RabbitMqTls::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_to_a_server_signed_by_an_untrusted_ca_is_refused() {
    refused(|pki| RabbitMqTls {
        ca_file: Some(pki.other_ca_file.clone()),
        client_cert_file: Some(pki.client_cert_file.clone()),
        client_key_file: Some(pki.client_key_file.clone()),
    })
    .await;
}

/// Bad TLS configuration is refused when the service is built, before any connection.
#[test]
fn bad_tls_configuration_is_a_configuration_error_at_start() {
    let pki = pki();
    let build = |url: &str, tls: RabbitMqTls| {
        let mut s = RabbitMqSettings::new(url);
        s.tls = tls;
        RabbitMqMessageService::new(s).map(|_| ())
    };
    let amqps = "amqps://guest:guest@127.0.0.1:5671/%2f";
    let tls = |ca: Option<&PathBuf>, cert: Option<&PathBuf>, key: Option<&PathBuf>| RabbitMqTls {
        ca_file: ca.cloned(),
        client_cert_file: cert.cloned(),
        client_key_file: key.cloned(),
    };
    let missing = pki.dir.join("missing.pem");
    let cases = [
        // TLS files with a plain amqp:// URL would silently not be used.
        (
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            tls(Some(&pki.ca_file), None, None),
            "connection.rabbitmq.url",
        ),
        // A CA file that does not exist, or holds no certificate.
        (
            amqps,
            tls(Some(&missing), None, None),
            "connection.rabbitmq.tls_ca_file",
        ),
        (
            amqps,
            tls(Some(&pki.client_key_file), None, None),
            "connection.rabbitmq.tls_ca_file",
        ),
        // A certificate without its key, and a "key" file that holds a certificate.
        (
            amqps,
            tls(None, Some(&pki.client_cert_file), None),
            "connection.rabbitmq.tls_client_cert_file",
        ),
        (
            amqps,
            tls(
                None,
                Some(&pki.client_cert_file),
                Some(&pki.client_cert_file),
            ),
            "connection.rabbitmq.tls_client_key_file",
        ),
    ];
    for (url, tls, key) in cases {
        match build(url, tls.clone()) {
            Err(MessagingError::Configuration { key: got, message }) => {
                assert_eq!(got, key, "{tls:?}: {message}");
                assert!(!message.contains("PRIVATE KEY"), "{message}");
            }
            other => panic!("{tls:?}: expected a configuration error at {key}, got {other:?}"),
        }
    }
    // The good files pass.
    build(
        amqps,
        RabbitMqTls {
            ca_file: Some(pki.ca_file.clone()),
            client_cert_file: Some(pki.client_cert_file.clone()),
            client_key_file: Some(pki.client_key_file.clone()),
        },
    )
    .expect("valid TLS settings");
}
