//! The key layout: every key of a queue, and of its dead-letter queue, in one hash slot.
//!
//! A queue `<name>` keeps its keys under the base `tmq:{<root>}:<name>:`, where `<root>` is
//! the name with the dead-letter suffix stripped (repeatedly), so `orders` and `orders_dlq`
//! share the hash tag `{orders}` and a Lua script can move a message between them on Redis
//! Cluster. Names are `[a-z0-9_]` (see `QueueName`), so no escaping is needed and the mapping
//! is one to one. The layout is documented in `mod.rs` and docs/semantics.md.

use crate::queue_name::QueueName;

/// Prefix of every key the provider writes.
pub(super) const PREFIX: &str = "tmq";

/// The keys of one queue (and its dead-letter queue's base, when it has one).
#[derive(Clone, Debug)]
pub(super) struct QueueKeys {
    /// `tmq:{root}:name:`; every other key is this plus a part.
    pub base: String,
    /// `<base>meta`: the queue exists while this hash does.
    pub meta: String,
}

impl QueueKeys {
    pub(super) fn new(queue: &QueueName, dead_letter_suffix: &str) -> Self {
        let name = queue.as_str();
        let root = root_of(name, dead_letter_suffix);
        let base = format!("{PREFIX}:{{{root}}}:{name}:");
        let meta = format!("{base}meta");
        QueueKeys { base, meta }
    }

    /// `<base><part>`, for tests and tools (scripts derive the same names).
    pub(super) fn part(&self, part: &str) -> String {
        format!("{}{part}", self.base)
    }
}

/// The name with `suffix` stripped as long as a non-empty name remains.
fn root_of<'a>(mut name: &'a str, suffix: &str) -> &'a str {
    if suffix.is_empty() {
        return name;
    }
    while let Some(stripped) = name.strip_suffix(suffix) {
        if stripped.is_empty() {
            break;
        }
        name = stripped;
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_and_its_dead_letter_queue_share_a_hash_tag() {
        let q = QueueName::new("orders").unwrap();
        let d = q.dead_letter("_dlq").unwrap();
        assert_eq!(QueueKeys::new(&q, "_dlq").base, "tmq:{orders}:orders:");
        assert_eq!(QueueKeys::new(&d, "_dlq").base, "tmq:{orders}:orders_dlq:");
        let dd = d.dead_letter("_dlq").unwrap();
        assert_eq!(
            QueueKeys::new(&dd, "_dlq").base,
            "tmq:{orders}:orders_dlq_dlq:"
        );
        assert_eq!(root_of("_dlq", "_dlq"), "_dlq");
        assert_eq!(
            QueueKeys::new(&q, "_dlq").part("ready"),
            "tmq:{orders}:orders:ready"
        );
    }
}
