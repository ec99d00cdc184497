//! The broker's version, and the queue arguments that depend on it.
//!
//! lapin does not expose the server properties of `connection.start`, so the first connection
//! of a process to a broker address, and every reconnect, is accompanied by a short probe: a second TCP (or TLS) connection that sends the AMQP
//! protocol header, reads the `connection.start` frame, parses its server-properties table
//! (`product`, `version`) with lapin's own field-table parser, and closes. It never
//! authenticates. A probe that fails leaves the version unknown, which is treated as a broker
//! before 4.0 (see [`quorum_limit_args`]) with a warning.
//!
//! Why it matters: RabbitMQ 4.0 gives every quorum queue a delivery limit of 20 by default and
//! then drops a message that reaches it when no dead-letter exchange is set, so a queue whose
//! `max_receive_count` is 0 ("disabled") would lose messages released 20 times. On 4.0 and
//! later such queues are declared with `x-delivery-limit: -1` (documented as "no limit");
//! before 4.0 there is no default limit and `-1` must never be sent (3.x dead-letters at once).

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use lapin::tcp::{AMQPUriTcpExt, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;

use super::codec::long_string;

/// A broker's release, from the `version` server property ("3.10.8", "4.0.5", "4.1.0-rc.1").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct BrokerVersion {
    pub major: u32,
    pub minor: u32,
}

impl BrokerVersion {
    pub fn parse(version: &str) -> Option<Self> {
        let mut parts = version.trim().split(['.', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        Some(BrokerVersion { major, minor })
    }

    /// Quorum queues have a default delivery limit (20) that `-1` lifts.
    fn has_default_delivery_limit(self) -> bool {
        self.major >= 4
    }

    /// Quorum queues can dead-letter at least once (`x-dead-letter-strategy`, 3.10+).
    fn has_at_least_once_dead_lettering(self) -> bool {
        (self.major, self.minor) >= (3, 10)
    }
}

impl std::fmt::Display for BrokerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The arguments of a quorum queue's delivery limit and dead-lettering.
///
/// * `max_receive_count` > 0: the broker dead-letters at the limit (`x-delivery-limit` is the
///   number of returns allowed, `max - 1`), at least once where the broker can (the dead
///   letter stays in the source queue until the DLQ confirms it; that needs
///   `x-overflow: reject-publish`, which without a length limit never rejects).
/// * `max_receive_count` = 0 (disabled, and every DLQ): no limit. Nothing to say before 4.0;
///   `-1` from 4.0 on, whose default limit would otherwise drop the message.
pub(crate) fn quorum_limit_args(
    args: &mut FieldTable,
    max_receive_count: u32,
    broker: Option<BrokerVersion>,
) {
    if max_receive_count > 0 {
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(max_receive_count) - 1),
        );
        if broker.is_some_and(BrokerVersion::has_at_least_once_dead_lettering) {
            args.insert(
                "x-dead-letter-strategy".into(),
                long_string("at-least-once"),
            );
            args.insert("x-overflow".into(), long_string("reject-publish"));
        }
    } else if broker.is_some_and(BrokerVersion::has_default_delivery_limit) {
        args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(-1));
    }
}

/// What the probe learned from `connection.start`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServerProperties {
    pub product: Option<String>,
    pub version: Option<BrokerVersion>,
}

fn string_property(table: &FieldTable, key: &str) -> Option<String> {
    match table.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The AMQP 0-9-1 protocol header a client opens with.
const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// A method frame, its end marker, and `connection.start`'s class and method ids.
const FRAME_METHOD: u8 = 1;
const FRAME_END: u8 = 0xCE;
const CONNECTION_START: (u16, u16) = (10, 10);
/// Far above any real `connection.start`; bounds what a misbehaving server can make us read.
const MAX_START_FRAME: usize = 64 * 1024;

/// Parses one `connection.start` frame (header, payload, end marker).
pub(crate) fn parse_connection_start(frame: &[u8]) -> Option<ServerProperties> {
    let (&kind, rest) = frame.split_first()?;
    if kind != FRAME_METHOD || rest.len() < 6 {
        return None;
    }
    let size = u32::from_be_bytes(rest[2..6].try_into().ok()?) as usize;
    let payload = rest.get(6..6 + size)?;
    if rest.get(6 + size) != Some(&FRAME_END) || payload.len() < 6 {
        return None;
    }
    let class = u16::from_be_bytes([payload[0], payload[1]]);
    let method = u16::from_be_bytes([payload[2], payload[3]]);
    if (class, method) != CONNECTION_START {
        return None;
    }
    // Then the protocol's major and minor version (one byte each), then server-properties.
    let (_, table) = lapin::types::parsing::parse_field_table(&payload[6..]).ok()?;
    Some(ServerProperties {
        product: string_property(&table, "product"),
        version: string_property(&table, "version").and_then(|v| BrokerVersion::parse(&v)),
    })
}

/// Versions this process read, by broker address.
static KNOWN: std::sync::Mutex<Vec<(String, u16, BrokerVersion)>> =
    std::sync::Mutex::new(Vec::new());

/// The version this process last read from the broker at `uri`'s address.
pub(crate) fn known(uri: &AMQPUri) -> Option<BrokerVersion> {
    let known = KNOWN.lock().ok()?;
    known
        .iter()
        .find(|(h, p, _)| *h == uri.authority.host && *p == uri.authority.port)
        .map(|(_, _, v)| *v)
}

fn remember(uri: &AMQPUri, version: BrokerVersion) {
    if let Ok(mut known) = KNOWN.lock() {
        let (host, port) = (&uri.authority.host, uri.authority.port);
        known.retain(|(h, p, _)| !(h == host && *p == port));
        known.push((host.clone(), port, version));
    }
}

/// Opens a connection to the broker, reads its `connection.start` and closes (see the module
/// docs). `None` when it cannot: the caller treats the version as unknown.
pub(crate) async fn probe(
    uri: &AMQPUri,
    tls: &OwnedTLSConfig,
    limit: Duration,
) -> Option<ServerProperties> {
    let attempt = async {
        let runtime = lapin::runtime::default_runtime().ok()?;
        let mut stream = uri
            .connect_with_config_async(tls.as_ref(), &runtime)
            .await
            .ok()?;
        stream.write_all(PROTOCOL_HEADER).await.ok()?;
        stream.flush().await.ok()?;
        let mut header = [0u8; 7];
        stream.read_exact(&mut header).await.ok()?;
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
        if size > MAX_START_FRAME {
            return None;
        }
        let mut frame = header.to_vec();
        frame.resize(7 + size + 1, 0);
        stream.read_exact(&mut frame[7..]).await.ok()?;
        // Closing without a handshake: the broker logs a short "handshake" notice.
        let _ = stream.close().await;
        parse_connection_start(&frame)
    };
    let server = tokio::time::timeout(limit, attempt).await.ok().flatten();
    if let Some(v) = server.as_ref().and_then(|s| s.version) {
        remember(uri, v);
    }
    server
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32) -> Option<BrokerVersion> {
        Some(BrokerVersion { major, minor })
    }

    #[test]
    fn versions_parse_from_the_server_property() {
        assert_eq!(BrokerVersion::parse("3.10.8"), v(3, 10));
        assert_eq!(BrokerVersion::parse("4.0.5"), v(4, 0));
        assert_eq!(BrokerVersion::parse("4.1.0-rc.1"), v(4, 1));
        assert_eq!(BrokerVersion::parse("4"), v(4, 0));
        assert_eq!(BrokerVersion::parse("rabbit"), None);
        assert!(v(3, 13) < v(4, 0) && v(3, 9) < v(3, 10));
    }

    fn limit_of(args: &FieldTable) -> Option<i64> {
        match args.inner().get("x-delivery-limit")? {
            AMQPValue::LongLongInt(n) => Some(*n),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn has(args: &FieldTable, key: &str, value: &str) -> bool {
        args.inner().get(key) == Some(&long_string(value))
    }

    #[test]
    fn disabled_means_no_limit_on_every_version() {
        for (broker, expected) in [
            (v(3, 10), None),
            (v(3, 13), None),
            (None, None),
            (v(4, 0), Some(-1)),
            (v(4, 2), Some(-1)),
        ] {
            let mut args = FieldTable::default();
            quorum_limit_args(&mut args, 0, broker);
            assert_eq!(limit_of(&args), expected, "{broker:?}");
            assert!(!args.inner().contains_key("x-dead-letter-strategy"));
        }
    }

    #[test]
    fn a_limit_dead_letters_at_least_once_where_the_broker_can() {
        for (broker, at_least_once) in [
            (v(3, 9), false),
            (None, false),
            (v(3, 10), true),
            (v(4, 0), true),
        ] {
            let mut args = FieldTable::default();
            quorum_limit_args(&mut args, 3, broker);
            assert_eq!(limit_of(&args), Some(2), "{broker:?}");
            assert_eq!(
                has(&args, "x-dead-letter-strategy", "at-least-once"),
                at_least_once
            );
            assert_eq!(has(&args, "x-overflow", "reject-publish"), at_least_once);
        }
    }

    #[test]
    fn connection_start_frame_gives_product_and_version() {
        // server-properties as the wire has it: a length, then (short key, 'S', long string).
        let mut entries = Vec::new();
        for (k, val) in [("product", "RabbitMQ"), ("version", "4.0.5")] {
            entries.push(k.len() as u8);
            entries.extend_from_slice(k.as_bytes());
            entries.push(b'S');
            entries.extend_from_slice(&(val.len() as u32).to_be_bytes());
            entries.extend_from_slice(val.as_bytes());
        }
        let mut payload = vec![0, 10, 0, 10, 0, 9];
        payload.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        payload.extend_from_slice(&entries);
        payload.extend_from_slice(&[0, 0, 0, 5]);
        payload.extend_from_slice(b"PLAIN");
        payload.extend_from_slice(&[0, 0, 0, 5]);
        payload.extend_from_slice(b"en_US");
        let mut frame = vec![FRAME_METHOD, 0, 0];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.push(FRAME_END);
        let parsed = parse_connection_start(&frame).unwrap();
        assert_eq!(parsed.product.as_deref(), Some("RabbitMQ"));
        assert_eq!(parsed.version, v(4, 0));
        // A truncated frame or another method is refused.
        assert!(parse_connection_start(&frame[..frame.len() - 1]).is_none());
        frame[10] = 11; // the method id: connection.start-ok, not start
        assert!(parse_connection_start(&frame).is_none());
    }
}
