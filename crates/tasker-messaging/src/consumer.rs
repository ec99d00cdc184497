//! The default consumer stream: receive in batches, wait while idle, never spin.
//!
//! While the queue is empty the stream calls `wait_for_messages` with a pause that doubles from
//! `min_idle_backoff` to `max_idle_backoff`. Providers with notifications return from that wait
//! as soon as a message arrives, so latency stays low without polling; providers without them
//! poll at most once per `max_idle_backoff`. A retryable error is yielded and followed by the
//! same bounded pause; a permanent one (the queue was deleted) is yielded and ends the stream.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::message::ReceivedMessage;
use crate::queue_name::QueueName;
use crate::service::{ConsumerOptions, MessageStream, MessagingService};

struct PollState<S: ?Sized> {
    service: Arc<S>,
    queue: QueueName,
    options: ConsumerOptions,
    buffer: VecDeque<ReceivedMessage>,
    backoff: Duration,
    pause_before_next: bool,
    finished: bool,
}

impl<S: ?Sized> PollState<S> {
    fn grow_backoff(&mut self) {
        self.backoff = (self.backoff * 2).min(self.options.max_idle_backoff);
    }
}

/// A stream over `receive` with idle backoff, for any service.
pub fn polling_stream<S: MessagingService + ?Sized>(
    service: Arc<S>,
    queue: QueueName,
    options: ConsumerOptions,
) -> MessageStream {
    let min = options.min_idle_backoff.max(Duration::from_micros(100));
    let state = PollState {
        service,
        queue,
        buffer: VecDeque::with_capacity(options.batch_size),
        options: ConsumerOptions {
            min_idle_backoff: min,
            max_idle_backoff: options.max_idle_backoff.max(min),
            batch_size: options.batch_size.max(1),
            ..options
        },
        backoff: min,
        pause_before_next: false,
        finished: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(message) = st.buffer.pop_front() {
                return Some((Ok(message), st));
            }
            if st.finished {
                return None;
            }
            if st.pause_before_next {
                st.pause_before_next = false;
                tokio::time::sleep(st.backoff).await;
                st.grow_backoff();
            }
            match st
                .service
                .receive(
                    &st.queue,
                    st.options.batch_size,
                    st.options.visibility_timeout,
                )
                .await
            {
                Ok(batch) if !batch.is_empty() => {
                    st.buffer.extend(batch);
                    st.backoff = st.options.min_idle_backoff;
                }
                Ok(_) => {
                    st.service.wait_for_messages(&st.queue, st.backoff).await;
                    st.grow_backoff();
                }
                Err(error) => {
                    if error.is_retryable() {
                        st.pause_before_next = true;
                    } else {
                        st.finished = true;
                    }
                    return Some((Err(error), st));
                }
            }
        }
    })
    .boxed()
}
