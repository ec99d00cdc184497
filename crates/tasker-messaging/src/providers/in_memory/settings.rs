//! Settings of the in-memory provider, from `[queues]` (it has no connection section).

use crate::config::MessagingConfig;

/// Settings of the in-memory provider, from `[queues]`.
#[derive(Clone, Debug)]
pub struct InMemorySettings {
    pub default_max_receive_count: u32,
    pub dead_letter_suffix: String,
    pub max_payload_bytes: usize,
}

impl Default for InMemorySettings {
    fn default() -> Self {
        Self::from_config(&MessagingConfig::default())
    }
}

impl InMemorySettings {
    pub fn from_config(config: &MessagingConfig) -> Self {
        InMemorySettings {
            default_max_receive_count: config.queues.max_receive_count,
            dead_letter_suffix: config.queues.dead_letter_queue_suffix.clone(),
            max_payload_bytes: config.queues.max_payload_bytes,
        }
    }
}
