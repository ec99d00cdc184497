//! No password in any output: runs the `tasker-mq` binary with bad configurations, bad URLs,
//! unreachable servers, wrong passwords and a server that quotes the password back, each with
//! and without `RUST_LOG=debug`, and greps stdout and stderr for the password in every form.
//!
//! Needs the machine's PostgreSQL and RabbitMQ for the wrong-password and pass-through cases;
//! run under `flock -s /tmp/tasker-services.lock`.

use std::process::{Command, Output};

/// The password as client libraries print it once they decoded the URL.
const RAW: &str = "Xq9#sEcr3t/p@ss";
/// The same password as written in a URL.
const ENC: &str = "Xq9%23sEcr3t%2Fp%40ss";
/// Its core, found in any half-encoded form too.
const CORE: &str = "sEcr3t";

/// The binary with the ambient provider settings removed.
fn tasker_mq() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tasker-mq"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TASKER_MQ_") {
            cmd.env_remove(key);
        }
    }
    for key in [
        "DATABASE_URL",
        "AMQP_URL",
        "REDIS_URL",
        "NATS_URL",
        "SQS_ENDPOINT_URL",
        "KAFKA_BROKERS",
        "RUST_LOG",
    ] {
        cmd.env_remove(key);
    }
    cmd
}

/// One way of running the binary: its arguments, environment and configuration file.
struct Case {
    name: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    config: Option<String>,
    /// Text stderr must show, so the case is known to have reached the path it tests.
    expect: &'static str,
}

impl Case {
    fn new(name: &'static str, args: &[&str], expect: &'static str) -> Self {
        Case {
            name,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            config: None,
            expect,
        }
    }

    fn env(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.env.push((key, value.into()));
        self
    }

    fn config(mut self, toml: impl Into<String>) -> Self {
        self.config = Some(toml.into());
        self
    }
}

/// Runs `case` quietly and with `RUST_LOG=debug`; fails on any output holding the password.
fn assert_no_password(case: &Case) {
    for log in [None, Some("debug")] {
        let mut cmd = tasker_mq();
        if let Some(toml) = &case.config {
            let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("secrets_{}.toml", case.name));
            std::fs::write(&path, toml).expect("write the case's configuration");
            cmd.arg("--config").arg(path);
        }
        cmd.args(&case.args);
        for (key, value) in &case.env {
            cmd.env(key, value);
        }
        if let Some(log) = log {
            cmd.env("RUST_LOG", log);
        }
        let out: Output = cmd.output().expect("the tasker-mq binary runs");
        let streams = [
            ("stdout", String::from_utf8_lossy(&out.stdout)),
            ("stderr", String::from_utf8_lossy(&out.stderr)),
        ];
        for (stream, text) in &streams {
            for secret in [RAW, ENC, CORE] {
                assert!(
                    !text.contains(secret),
                    "{} (RUST_LOG={log:?}): {stream} shows the password ({secret}):\n{text}",
                    case.name
                );
            }
        }
        assert!(
            streams[1].1.contains(case.expect),
            "{} (RUST_LOG={log:?}): stderr lacks {:?}:\n{}",
            case.name,
            case.expect,
            streams[1].1
        );
    }
}

/// A loopback port nothing listens on.
#[cfg(all(feature = "pgmq", feature = "rabbitmq"))]
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("its address").port()
}

#[cfg(feature = "pgmq")]
fn pg_url_with(password: &str, host_port: &str) -> String {
    format!("postgres://postgres:{password}@{host_port}/test")
}

#[test]
fn configuration_errors_name_the_key_without_the_value() {
    let pg = format!("postgres://u:{ENC}@127.0.0.1:5432/db");
    let amqp = format!("amqp://u:{ENC}@127.0.0.1:5672/%2f");
    let cases = [
        Case::new("table_as_url", &["health"], "`connection.pgmq`")
            .config(format!("provider = 'pgmq'\n[connection]\npgmq = '{pg}'\n")),
        Case::new("table_as_url_env", &["health"], "`connection.pgmq`")
            .env("TASKER_MQ_PROVIDER", "pgmq")
            .env("TASKER_MQ_CONNECTION__PGMQ", &pg),
        Case::new(
            "rabbitmq_table_as_url",
            &["health"],
            "`connection.rabbitmq`",
        )
        .config(format!(
            "provider = 'rabbitmq'\n[connection]\nrabbitmq = '{amqp}'\n"
        )),
        Case::new("number_as_url", &["health"], "`connection.pgmq.pool_size`").config(format!(
            "provider = 'pgmq'\n[connection.pgmq]\ndatabase_url = 'postgres://u@h/db'\n\
             pool_size = '{pg}'\n"
        )),
        Case::new("provider_as_url", &["health"], "`provider`")
            .config(format!("provider = '{pg}'\n")),
        Case::new("list_as_url", &["health"], "`queues.namespaces`")
            .config(format!("[queues]\nnamespaces = '{pg}'\n")),
        Case::new("unknown_key", &["health"], "databse_url").config(format!(
            "provider = 'pgmq'\n[connection.pgmq]\ndatabse_url = '{pg}'\n"
        )),
        Case::new("syntax_error", &["health"], "TOML parse error")
            .config(format!("[connection.pgmq]\ndatabase_url = \"{pg}\n")),
    ];
    for case in &cases {
        assert_no_password(case);
    }
}

#[cfg(all(feature = "pgmq", feature = "rabbitmq"))]
#[test]
fn bad_urls_and_unreachable_servers_do_not_show_the_password() {
    let closed = format!("127.0.0.1:{}", closed_port());
    let cases = [
        Case::new("pgmq_bad_port", &["--provider", "pgmq", "health"], "error")
            .env("DATABASE_URL", pg_url_with(ENC, "127.0.0.1:notaport")),
        Case::new(
            "pgmq_secret_parameter",
            &["--provider", "pgmq", "health"],
            "error",
        )
        .env(
            "DATABASE_URL",
            format!("{}?sslpassword={ENC}", pg_url_with(ENC, &closed)),
        ),
        Case::new(
            "pgmq_closed_port",
            &["--provider", "pgmq", "health"],
            "pgmq",
        )
        .env("DATABASE_URL", pg_url_with(ENC, &closed)),
        Case::new("pgmq_status_closed_port", &["pgmq", "status"], "error")
            .env("DATABASE_URL", pg_url_with(ENC, &closed)),
        Case::new(
            "rabbitmq_bad_port",
            &["--provider", "rabbitmq", "health"],
            "error",
        )
        .env(
            "AMQP_URL",
            format!("amqp://guest:{ENC}@127.0.0.1:notaport/%2f"),
        ),
        Case::new(
            "rabbitmq_closed_port",
            &["--provider", "rabbitmq", "health"],
            "rabbitmq",
        )
        .env("AMQP_URL", format!("amqp://guest:{ENC}@{closed}/%2f")),
    ];
    for case in &cases {
        assert_no_password(case);
    }
}

#[cfg(all(feature = "pgmq", feature = "rabbitmq"))]
#[test]
fn a_wrong_password_on_the_real_servers_does_not_show_it() {
    let cases = [
        // The machine's PostgreSQL trusts loopback: the command works, and must still not
        // print the password it was given (debug logs included).
        Case::new(
            "pgmq_wrong_password",
            &[
                "--provider",
                "pgmq",
                "queue",
                "stats",
                "secrets_no_such_queue",
            ],
            "not found",
        )
        .env("DATABASE_URL", pg_url_with(ENC, "127.0.0.1:5432")),
        Case::new(
            "rabbitmq_wrong_password",
            &["--provider", "rabbitmq", "health"],
            "rabbitmq",
        )
        .env("AMQP_URL", format!("amqp://guest:{ENC}@127.0.0.1:5672/%2f")),
        Case::new(
            "rabbitmq_bench_wrong_password",
            &["--provider", "rabbitmq", "bench", "--messages", "10"],
            "rabbitmq",
        )
        .env("AMQP_URL", format!("amqp://guest:{ENC}@127.0.0.1:5672/%2f")),
    ];
    for case in &cases {
        assert_no_password(case);
    }
}

/// A server that quotes the password back in its error reaches every place that shows a
/// client library's error: the provider's start (`scrub` with the URL, which must remove the
/// decoded form the library sent) and the LISTEN connection's log lines (which hold no URL).
#[cfg(feature = "pgmq")]
#[test]
fn a_server_quoting_the_password_back_does_not_make_it_print() {
    let everyone = hostile::echoing_postgres(None);
    let listener_only = hostile::echoing_postgres(Some("tasker_messaging_listener"));
    let cases = [
        Case::new(
            "echo_on_start",
            &["--provider", "pgmq", "health"],
            "password authentication failed",
        )
        .env("DATABASE_URL", pg_url_with(ENC, &everyone)),
        Case::new(
            "echo_on_status",
            &["pgmq", "status"],
            "password authentication failed",
        )
        .env("DATABASE_URL", pg_url_with(ENC, &everyone)),
        // The service starts through to the real server; only its listener is refused, and
        // logs that (at warn) while it waits for it.
        Case::new(
            "echo_to_the_listener",
            &["--provider", "pgmq", "health"],
            "pgmq listener cannot connect",
        )
        .env("DATABASE_URL", pg_url_with(ENC, &listener_only)),
    ];
    for case in &cases {
        assert_no_password(case);
    }
}

#[cfg(feature = "pgmq")]
mod hostile {
    use std::collections::HashMap;
    use std::io::{self, Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::thread;

    /// A PostgreSQL front door on a loopback port that asks for the password in clear text and
    /// refuses the login quoting it back (as a careless proxy might). With `only_for`, just the
    /// connections whose `application_name` starts with it get that; the others are passed
    /// through to the machine's PostgreSQL. Returns `host:port`.
    pub fn echoing_postgres(only_for: Option<&'static str>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let address = listener.local_addr().expect("its address").to_string();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                thread::spawn(move || {
                    let _ = serve(client, only_for);
                });
            }
        });
        address
    }

    /// A startup-phase message: a length (itself included), then the body.
    fn read_body(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len)?;
        let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
        stream.read_exact(&mut body)?;
        Ok(body)
    }

    fn serve(mut client: TcpStream, only_for: Option<&str>) -> io::Result<()> {
        const SSL_REQUEST: u32 = 80_877_103;
        const GSSENC_REQUEST: u32 = 80_877_104;
        let startup = loop {
            let body = read_body(&mut client)?;
            let code = u32::from_be_bytes(body[..4].try_into().unwrap_or_default());
            if code == SSL_REQUEST || code == GSSENC_REQUEST {
                client.write_all(b"N")?; // no encryption: go on in clear text
                continue;
            }
            break body;
        };
        let fields: Vec<String> = startup[4..]
            .split(|b| *b == 0)
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        let params: HashMap<_, _> = fields
            .chunks(2)
            .filter(|kv| kv.len() == 2)
            .map(|kv| (kv[0].clone(), kv[1].clone()))
            .collect();
        let app = params.get("application_name").map_or("", String::as_str);
        if only_for.is_some_and(|prefix| !app.starts_with(prefix)) {
            let mut server = TcpStream::connect("127.0.0.1:5432")?;
            server.write_all(&(startup.len() as u32 + 4).to_be_bytes())?;
            server.write_all(&startup)?;
            let (mut from_server, mut to_client) = (server.try_clone()?, client.try_clone()?);
            thread::spawn(move || {
                let _ = io::copy(&mut from_server, &mut to_client);
                let _ = to_client.shutdown(Shutdown::Both);
            });
            let _ = io::copy(&mut client, &mut server);
            let _ = server.shutdown(Shutdown::Both);
            return Ok(());
        }
        // AuthenticationCleartextPassword, then the client's PasswordMessage ('p').
        client.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])?;
        let mut tag = [0u8; 1];
        client.read_exact(&mut tag)?;
        let body = read_body(&mut client)?;
        let password = String::from_utf8_lossy(body.split(|b| *b == 0).next().unwrap_or_default());
        let message = format!("password authentication failed: this server got \"{password}\"");
        let mut error = Vec::new();
        for (code, value) in [
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "28P01"),
            (b'M', message.as_str()),
        ] {
            error.push(code);
            error.extend_from_slice(value.as_bytes());
            error.push(0);
        }
        error.push(0);
        client.write_all(b"E")?;
        client.write_all(&(error.len() as u32 + 4).to_be_bytes())?;
        client.write_all(&error)?;
        client.flush()
    }
}
