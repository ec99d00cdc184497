//! Queue names: one rule for every provider, checked before any I/O.
//!
//! A queue name is 1 to 47 characters of lower-case ASCII letters, digits and `_`, starting with
//! a letter. 47 is PGMQ's limit (its tables are `pgmq.q_<name>` and `pgmq.a_<name>` within
//! PostgreSQL's 63-byte identifiers); the alphabet is valid unquoted in SQL and legal for
//! RabbitMQ, SQS, Redis keys, NATS stream and subject tokens and Kafka topics alike, so a name
//! never needs escaping and switching provider never renames a queue.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::MessagingError;

/// The longest queue name accepted (PGMQ's limit).
pub const MAX_QUEUE_NAME_LEN: usize = 47;

/// A validated queue name. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueName(Arc<str>);

impl QueueName {
    /// Validates `name` against the naming rule.
    pub fn new(name: impl AsRef<str>) -> Result<Self, MessagingError> {
        let name = name.as_ref();
        validate(name)?;
        Ok(QueueName(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string behind the name (a reference-count bump, no copy), for labels.
    pub fn as_shared(&self) -> Arc<str> {
        Arc::clone(&self.0)
    }

    /// The dead-letter queue of this queue: `<name><suffix>`, itself a valid queue name.
    pub fn dead_letter(&self, suffix: &str) -> Result<QueueName, MessagingError> {
        QueueName::new(format!("{}{}", self.0, suffix)).map_err(|e| match e {
            MessagingError::InvalidQueueName { name, reason } => MessagingError::InvalidQueueName {
                name,
                reason: format!("dead-letter queue of {:?}: {reason}", self.as_str()),
            },
            other => other,
        })
    }
}

fn validate(name: &str) -> Result<(), MessagingError> {
    let reject = |reason: &str| {
        Err(MessagingError::InvalidQueueName {
            // Bound what we echo back: hostile input may be huge.
            name: name.chars().take(64).collect(),
            reason: reason.to_owned(),
        })
    };
    if name.is_empty() {
        return reject("must not be empty");
    }
    if name.len() > MAX_QUEUE_NAME_LEN {
        return reject("longer than 47 characters");
    }
    let bytes = name.as_bytes();
    if !bytes[0].is_ascii_lowercase() {
        return reject("must start with a lower-case letter a-z");
    }
    if bytes
        .iter()
        .any(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_'))
    {
        return reject("only a-z, 0-9 and _ are allowed");
    }
    Ok(())
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for QueueName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for QueueName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for QueueName {
    type Err = MessagingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        QueueName::new(s)
    }
}

impl TryFrom<String> for QueueName {
    type Error = MessagingError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        validate(&s)?;
        Ok(QueueName(Arc::from(s)))
    }
}

impl TryFrom<&str> for QueueName {
    type Error = MessagingError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        QueueName::new(s)
    }
}

impl From<QueueName> for String {
    fn from(q: QueueName) -> String {
        q.0.to_string()
    }
}

/// Names that must always be rejected: injection attempts, path tricks, wrong alphabets,
/// boundary lengths. Shared by unit tests and provider tests (through the `conformance`
/// feature: nothing a user needs).
#[cfg(any(test, feature = "conformance"))]
pub fn hostile_queue_names() -> Vec<String> {
    vec![
        String::new(),
        " ".into(),
        "a".repeat(MAX_QUEUE_NAME_LEN + 1),
        "x'; DROP TABLE pgmq.meta; --".into(),
        "q\"; select pg_sleep(10); --".into(),
        "q_$$; select 1; $$".into(),
        "../etc/passwd".into(),
        "q/../../x".into(),
        "UPPER".into(),
        "Mixed_Case".into(),
        "1starts_with_digit".into(),
        "_leading_underscore".into(),
        "has space".into(),
        "has-hyphen".into(),
        "dot.ted".into(),
        "star*".into(),
        "gt>".into(),
        "nul\0byte".into(),
        "new\nline".into(),
        "tab\t".into(),
        "ünïcödé".into(),
        "日本語".into(),
        "emoji_🚀".into(),
        "semi;colon".into(),
        "percent%2f".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet_up_to_47() {
        for ok in ["a", "fulfillment_queue", "q1", "a_b_c_9", &"a".repeat(47)] {
            assert_eq!(QueueName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_every_hostile_name_with_a_typed_error() {
        for bad in hostile_queue_names() {
            match QueueName::new(&bad) {
                Err(MessagingError::InvalidQueueName { .. }) => {}
                other => panic!("{bad:?} was not rejected: {other:?}"),
            }
        }
    }

    #[test]
    fn dead_letter_name_must_also_fit() {
        let q = QueueName::new("a".repeat(43)).unwrap();
        assert_eq!(q.dead_letter("_dlq").unwrap().as_str().len(), 47);
        let long = QueueName::new("a".repeat(44)).unwrap();
        let err = long.dead_letter("_dlq").unwrap_err();
        assert!(err.to_string().contains("dead-letter"), "{err}");
    }

    #[test]
    fn serde_validates() {
        let q: QueueName = serde_json::from_str("\"orders_queue\"").unwrap();
        assert_eq!(q.as_str(), "orders_queue");
        assert!(serde_json::from_str::<QueueName>("\"Bad Name\"").is_err());
    }
}
