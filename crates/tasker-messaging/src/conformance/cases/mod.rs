//! The cases, numbered as in `docs/semantics.md`, one file per section of the contract. This
//! table lists them in the order the report prints them.

mod bad_input;
mod basics;
mod dead_letters;
mod delays;
mod leases;
mod ordering;
mod receipts;
mod secrets;
mod stats;
mod streams;

use futures::future::BoxFuture;

use super::{CaseResultInner, Ctx};
use crate::service::Capability;

pub(crate) struct Case {
    pub id: &'static str,
    pub title: &'static str,
    /// Capabilities the case exercises; absent ones skip it.
    pub needs: &'static [Capability],
    pub run: fn(Ctx) -> BoxFuture<'static, CaseResultInner>,
}

macro_rules! case {
    ($id:literal, $title:literal, [$($cap:ident),*], $f:path) => {
        Case {
            id: $id,
            title: $title,
            needs: &[$(Capability::$cap),*],
            run: |ctx| Box::pin($f(ctx)),
        }
    };
}

pub(crate) fn all() -> Vec<Case> {
    vec![
        case!(
            "C0",
            "declared capabilities match accessors; healthy; create is idempotent",
            [],
            basics::c0_declaration
        ),
        case!(
            "C1",
            "round trip keeps payload bytes, ids; first receive_count is 1",
            [],
            basics::c1_round_trip
        ),
        case!(
            "C2",
            "a lease hides the message from every receiver until it ends",
            [],
            leases::c2_leases
        ),
        case!(
            "C3.1",
            "delete is permanent and idempotent",
            [],
            receipts::c3_delete
        ),
        case!(
            "C3.2",
            "a stale receipt cannot touch the newer delivery",
            [ReceiptFencing],
            receipts::c3_stale_receipt
        ),
        case!(
            "C3.3",
            "an old receipt works until the message is received again",
            [],
            receipts::c3_old_receipt_until_received_again
        ),
        case!(
            "C3.4",
            "a stale receipt cannot extend nor dead-letter the newer delivery",
            [ReceiptFencing],
            receipts::c3_stale_receipt_cannot_extend
        ),
        case!(
            "C3.5",
            "a receipt used on another queue is InvalidReceipt",
            [],
            receipts::c3_receipt_on_another_queue
        ),
        case!(
            "C3.6",
            "a receipt from before delete_queue + create_queue touches nothing",
            [],
            receipts::c3_receipt_of_an_earlier_queue
        ),
        case!(
            "C4.1",
            "visibility 0 releases the message at once",
            [],
            leases::c4_release_now
        ),
        case!(
            "C4.2",
            "visibility d delays redelivery; extending keeps it hidden",
            [LeaseExtension],
            leases::c4_delay_and_extend
        ),
        case!(
            "C4.3",
            "releases racing receives on one queue: every call succeeds, nothing lost",
            [],
            leases::c4_release_while_receiving
        ),
        case!(
            "C5",
            "a delayed send is not receivable before its delay",
            [DelayedSend],
            delays::c5_delayed_send
        ),
        case!(
            "C6.1",
            "max_receive_count moves the message intact to the DLQ; redrive",
            [DeadLetterQueues],
            dead_letters::c6_max_receive
        ),
        case!(
            "C6.2",
            "an explicit dead-letter keeps the reason",
            [DeadLetterQueues],
            dead_letters::c6_explicit
        ),
        case!(
            "C6.3",
            "redrive moves at most max and skips leased dead letters",
            [DeadLetterQueues],
            dead_letters::c6_redrive_bounds
        ),
        case!(
            "C6.4",
            "purge keeps dead letters; delete_queue removes the DLQ",
            [DeadLetterQueues],
            dead_letters::c6_purge_and_delete_with_dlq
        ),
        case!(
            "C6.5",
            "a second create_queue_with keeps the first creation's options",
            [DeadLetterQueues],
            dead_letters::c6_first_options_stay
        ),
        case!(
            "C6.6",
            "a receipt whose message was dead-lettered does not delete it",
            [DeadLetterQueues, ReceiptFencing],
            dead_letters::c6_dead_lettered_receipt_refused
        ),
        case!(
            "C7",
            "batches: ids in order, receive <= max, no shared leases",
            [],
            ordering::c7_batches
        ),
        case!(
            "C7.2",
            "a batch over max_batch_size is sent whole or refused, never half",
            [],
            ordering::c7_oversize_batch
        ),
        case!(
            "C8",
            "one producer's messages come out in send order",
            [FifoOrder],
            ordering::c8_order
        ),
        case!(
            "C9",
            "stats count states; purge counts; missing queue is QueueNotFound",
            [],
            stats::c9_stats_admin
        ),
        case!(
            "C9.2",
            "every operation on a missing queue is QueueNotFound",
            [],
            stats::c9_missing_queue_everywhere
        ),
        case!(
            "C9.3",
            "initialize is idempotent",
            [],
            stats::c9_initialize_idempotent
        ),
        case!(
            "C10.1",
            "oversize payloads on every send path: typed errors, nothing sent",
            [],
            bad_input::c10_payload_sizes
        ),
        case!(
            "C10.2",
            "an undecodable payload is a typed error and keeps its lease",
            [],
            bad_input::c10_undecodable_kept
        ),
        case!(
            "C10.3",
            "typed receive dead-letters an undecodable payload",
            [DeadLetterQueues],
            dead_letters::c10_undecodable_dead_lettered
        ),
        case!(
            "C10.4",
            "malformed receipts are InvalidReceipt and lose nothing",
            [],
            receipts::c10_bad_receipts
        ),
        case!(
            "C11",
            "K producers and K consumers: every message once, none lost",
            [],
            ordering::c11_concurrency
        ),
        case!(
            "C12",
            "stream delivers continuously, waits without spinning, stops on drop",
            [],
            streams::c12_stream
        ),
        case!(
            "C12.2",
            "stream: a retryable error is yielded and it goes on; a permanent one ends it",
            [],
            streams::c12_stream_errors
        ),
        case!(
            "C13",
            "wait_for_messages wakes on a send from another connection",
            [WakeupNotifications],
            streams::c13_wakeup
        ),
        case!(
            "C14",
            "a message taken from a dropped stream keeps its lease, then returns counted",
            [],
            streams::c14_stream_lease_ends
        ),
        case!(
            "C15",
            "no error shows the password of a wrong-password connection",
            [],
            secrets::c15_no_password_in_errors
        ),
        case!(
            "C16",
            "a message no handler saw does not count as a receive",
            [],
            streams::c16_unseen_not_counted
        ),
        case!(
            "C17",
            "a receiver that disconnects keeps its lease until it ends",
            [DurableLeases],
            leases::c17_durable_leases
        ),
    ]
}
