//! `TaskerCore::Native::Service`: one `Arc<dyn MessagingService>` built by the library's
//! factory (the same stack the CLI gets), with flat methods the Ruby layer
//! (lib/tasker_core/services/message_service.rb) turns into the idiomatic API.
//!
//! **Fork.** The service records the pid it was built in. The first call in a forked child
//! builds the service again from the same configuration, on the child's own runtime (new
//! connections); the parent's is leaked in the child, never used nor closed there, so the
//! parent's connections are untouched. An in-memory service in the child starts empty: its
//! queues lived in the parent's memory.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use magnus::{
    prelude::*, typed_data::Obj, value::ReprValue, Error, RArray, RHash, RString, Ruby, Value,
};
use parking_lot::Mutex;
use tasker_messaging::{
    build_service, CorrelationId, MessageId, MessagingConfig, MessagingHealth, MessagingService,
    OutgoingMessage, QueueName, QueueOptions, ReceiptHandle, ReceivedMessage,
};

use crate::config::ConfigSources;
use crate::errors::{arg_error, to_ruby};
use crate::message::RbReceivedMessage;
use crate::runtime::block_on;

struct Built {
    pid: u32,
    service: Arc<dyn MessagingService>,
}

#[magnus::wrap(class = "TaskerCore::Native::Service", free_immediately, size)]
pub struct RbService {
    config: MessagingConfig,
    built: Mutex<Built>,
}

type Outcome<T> = Result<T, Error>;

fn queue(ruby: &Ruby, name: String) -> Outcome<QueueName> {
    QueueName::new(name).map_err(|e| to_ruby(ruby, e))
}

fn seconds(ruby: &Ruby, what: &str, secs: f64) -> Outcome<Duration> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| arg_error(ruby, format!("{what} must be a number of seconds >= 0")))
}

/// A receipt from Ruby: a received message, or the receipt's text form.
fn receipt(ruby: &Ruby, value: Value) -> Outcome<ReceiptHandle> {
    if let Ok(message) = Obj::<RbReceivedMessage>::try_convert(value) {
        return Ok(message.receipt().clone());
    }
    let Some(text) = RString::from_value(value) else {
        return Err(arg_error(
            ruby,
            "a receipt is a received message or its receipt_handle String",
        ));
    };
    let text = text.to_string()?;
    ReceiptHandle::parse(&text).ok_or_else(|| arg_error(ruby, "empty receipt handle"))
}

fn health_hash(ruby: &Ruby, health: MessagingHealth) -> Outcome<RHash> {
    let hash = ruby.hash_new();
    match health {
        MessagingHealth::Healthy {
            queue_depth,
            in_flight,
        } => {
            hash.aset(ruby.to_symbol("state"), ruby.to_symbol("healthy"))?;
            hash.aset(ruby.to_symbol("queue_depth"), queue_depth)?;
            hash.aset(ruby.to_symbol("in_flight"), in_flight)?;
        }
        MessagingHealth::Degraded { reason } => {
            hash.aset(ruby.to_symbol("state"), ruby.to_symbol("degraded"))?;
            hash.aset(ruby.to_symbol("reason"), reason)?;
        }
        MessagingHealth::Unhealthy { error } => {
            hash.aset(ruby.to_symbol("state"), ruby.to_symbol("unhealthy"))?;
            hash.aset(ruby.to_symbol("error"), error)?;
        }
    }
    Ok(hash)
}

impl RbService {
    /// `Service.open(config_json, config_file, use_env, provider)`: builds and initializes.
    fn open(
        ruby: &Ruby,
        json: Option<String>,
        file: Option<String>,
        env: bool,
        provider: Option<String>,
    ) -> Outcome<Self> {
        let sources = ConfigSources {
            json,
            file,
            env,
            provider,
        };
        let config = sources.load().map_err(|e| to_ruby(ruby, e))?;
        let service = block_on(ruby, build_service(&config))?.map_err(|e| to_ruby(ruby, e))?;
        Ok(RbService {
            config,
            built: Mutex::new(Built {
                pid: std::process::id(),
                service,
            }),
        })
    }

    /// The service for this process: built again after a fork (see the module docs).
    fn service(&self, ruby: &Ruby) -> Outcome<Arc<dyn MessagingService>> {
        let pid = std::process::id();
        {
            let built = self.built.lock();
            if built.pid == pid {
                return Ok(built.service.clone());
            }
        }
        let fresh = block_on(ruby, build_service(&self.config))?.map_err(|e| to_ruby(ruby, e))?;
        let mut built = self.built.lock();
        if built.pid != pid {
            let parents = std::mem::replace(&mut built.service, fresh);
            std::mem::forget(parents);
            built.pid = pid;
        }
        Ok(built.service.clone())
    }

    /// Runs `f(service)` on the runtime without the GVL and maps its error.
    fn call<T, F, Fut>(&self, ruby: &Ruby, f: F) -> Outcome<T>
    where
        F: FnOnce(Arc<dyn MessagingService>) -> Fut,
        Fut: std::future::Future<Output = tasker_messaging::Result<T>> + Send,
        T: Send,
    {
        let service = self.service(ruby)?;
        block_on(ruby, f(service))?.map_err(|e| to_ruby(ruby, e))
    }

    fn provider(&self) -> String {
        self.config.provider.as_str().to_owned()
    }

    fn built_pid(&self) -> u32 {
        self.built.lock().pid
    }

    fn capabilities(ruby: &Ruby, rb_self: &Self) -> Outcome<RHash> {
        let service = rb_self.service(ruby)?;
        let caps = service.capabilities();
        let hash = ruby.hash_new();
        for (capability, supported) in caps.flags() {
            hash.aset(ruby.to_symbol(capability.to_string()), supported)?;
        }
        hash.aset(
            ruby.to_symbol("native_dead_letter"),
            caps.native_dead_letter,
        )?;
        hash.aset(ruby.to_symbol("max_payload_bytes"), caps.max_payload_bytes)?;
        hash.aset(ruby.to_symbol("max_batch_size"), caps.max_batch_size)?;
        hash.aset(
            ruby.to_symbol("timer_resolution"),
            caps.timer_resolution.as_secs_f64(),
        )?;
        Ok(hash)
    }

    fn max_receive_count(&self) -> u32 {
        self.config.queues.max_receive_count
    }

    fn default_visibility_timeout(&self) -> f64 {
        self.config
            .queues
            .default_visibility_timeout()
            .as_secs_f64()
    }

    fn dead_letter_queue_name(ruby: &Ruby, rb_self: &Self, name: String) -> Outcome<String> {
        let q = queue(ruby, name)?;
        let service = rb_self.service(ruby)?;
        service
            .dead_letter_queue_name(&q)
            .map(|d| d.as_str().to_owned())
            .map_err(|e| to_ruby(ruby, e))
    }

    fn health(ruby: &Ruby, rb_self: &Self) -> Outcome<RHash> {
        let health = rb_self.call(ruby, |s| async move { s.health_check().await })?;
        health_hash(ruby, health)
    }

    fn create_queue(
        ruby: &Ruby,
        rb_self: &Self,
        name: String,
        max_receive_count: Option<u32>,
    ) -> Outcome<()> {
        let q = queue(ruby, name)?;
        let options = QueueOptions { max_receive_count };
        rb_self.call(
            ruby,
            |s| async move { s.create_queue_with(&q, &options).await },
        )
    }

    /// `send_batch(queue, payloads, message_ids_or_nil, correlation_ids_or_nil, delay_secs)`:
    /// the message ids, in order. The id arrays hold Strings or nil (nil: assign one).
    fn send_batch(
        ruby: &Ruby,
        rb_self: &Self,
        name: String,
        payloads: RArray,
        message_ids: Option<RArray>,
        correlation_ids: Option<RArray>,
        delay: f64,
    ) -> Outcome<RArray> {
        let q = queue(ruby, name)?;
        let delay = seconds(ruby, "delay", delay)?;
        let n = payloads.len();
        for (what, ids) in [
            ("message_ids", &message_ids),
            ("correlation_ids", &correlation_ids),
        ] {
            if let Some(ids) = ids {
                if ids.len() != n {
                    return Err(arg_error(
                        ruby,
                        format!("{what} has {} entries for {n} payloads", ids.len()),
                    ));
                }
            }
        }
        let mut messages = Vec::with_capacity(n);
        for i in 0..n {
            let payload: RString = payloads.entry(i as isize)?;
            // SAFETY: the slice is copied at once, before any Ruby code runs.
            let bytes = Bytes::copy_from_slice(unsafe { payload.as_slice() });
            let mut message = OutgoingMessage::new(bytes).with_delay(delay);
            if let Some(ids) = &message_ids {
                if let Some(id) = ids.entry::<Option<String>>(i as isize)? {
                    let id = MessageId::from_str(&id)
                        .map_err(|_| arg_error(ruby, format!("message id {id:?} is not a UUID")))?;
                    message = message.with_message_id(id);
                }
            }
            if let Some(ids) = &correlation_ids {
                if let Some(id) = ids.entry::<Option<String>>(i as isize)? {
                    let id = CorrelationId::from_str(&id).map_err(|_| {
                        arg_error(ruby, format!("correlation id {id:?} is not a UUID"))
                    })?;
                    message = message.with_correlation_id(id);
                }
            }
            messages.push(message);
        }
        let ids = rb_self.call(ruby, |s| async move { s.send_batch(&q, messages).await })?;
        let out = ruby.ary_new_capa(ids.len());
        for id in ids {
            out.push(id.to_string())?;
        }
        Ok(out)
    }

    /// `receive(queue, max, visibility_timeout, wait)`: leases up to `max`; when none is there,
    /// waits up to `wait` seconds (0: return at once) for one to arrive.
    fn receive(
        ruby: &Ruby,
        rb_self: &Self,
        name: String,
        max: usize,
        visibility_timeout: f64,
        wait: f64,
    ) -> Outcome<RArray> {
        let q = queue(ruby, name)?;
        let vt = seconds(ruby, "visibility_timeout", visibility_timeout)?;
        let wait = seconds(ruby, "wait", wait)?;
        let messages = rb_self.call(ruby, |s| {
            let q = q.clone();
            async move { receive_waiting(s.as_ref(), &q, max, vt, wait).await }
        })?;
        let out = ruby.ary_new_capa(messages.len());
        for message in messages {
            out.push(ruby.obj_wrap(RbReceivedMessage {
                queue: q.as_str().to_owned(),
                message,
            }))?;
        }
        Ok(out)
    }

    fn delete(ruby: &Ruby, rb_self: &Self, name: String, r: Value) -> Outcome<()> {
        let q = queue(ruby, name)?;
        let r = receipt(ruby, r)?;
        rb_self.call(ruby, |s| async move { s.delete_message(&q, &r).await })
    }

    /// `delete_batch(queue, receipts)`: `[deleted, [[receipt_text, exception], ...]]`.
    fn delete_batch(
        ruby: &Ruby,
        rb_self: &Self,
        name: String,
        list: RArray,
    ) -> Outcome<(usize, RArray)> {
        let q = queue(ruby, name)?;
        let mut receipts = Vec::with_capacity(list.len());
        for i in 0..list.len() {
            receipts.push(receipt(ruby, list.entry(i as isize)?)?);
        }
        let outcome = rb_self.call(
            ruby,
            |s| async move { s.delete_messages(&q, &receipts).await },
        )?;
        let rejected = ruby.ary_new_capa(outcome.rejected.len());
        for (r, error) in outcome.rejected {
            let exception = to_ruby(ruby, error)
                .value()
                .unwrap_or_else(|| ruby.qnil().as_value());
            rejected.push((r.to_string(), exception))?;
        }
        Ok((outcome.deleted, rejected))
    }

    fn change_visibility(
        ruby: &Ruby,
        rb_self: &Self,
        name: String,
        r: Value,
        secs: f64,
    ) -> Outcome<()> {
        let q = queue(ruby, name)?;
        let r = receipt(ruby, r)?;
        let d = seconds(ruby, "visibility_timeout", secs)?;
        rb_self.call(ruby, |s| async move {
            s.change_message_visibility(&q, &r, d).await
        })
    }

    fn dead_letter(
        ruby: &Ruby,
        rb_self: &Self,
        name: String,
        r: Value,
        reason: String,
    ) -> Outcome<()> {
        let q = queue(ruby, name)?;
        let r = receipt(ruby, r)?;
        rb_self.call(ruby, |s| async move {
            s.dead_letter_message(&q, &r, &reason).await
        })
    }

    fn redrive(ruby: &Ruby, rb_self: &Self, name: String, max: usize) -> Outcome<u64> {
        let q = queue(ruby, name)?;
        rb_self.call(
            ruby,
            |s| async move { s.redrive_dead_letters(&q, max).await },
        )
    }

    fn stats(ruby: &Ruby, rb_self: &Self, name: String) -> Outcome<RHash> {
        let q = queue(ruby, name)?;
        let stats = rb_self.call(ruby, |s| async move { s.get_queue_stats(&q).await })?;
        let hash = ruby.hash_new();
        hash.aset(ruby.to_symbol("queue_name"), stats.queue_name.as_str())?;
        hash.aset(ruby.to_symbol("message_count"), stats.message_count)?;
        hash.aset(ruby.to_symbol("in_flight_count"), stats.in_flight_count)?;
        hash.aset(ruby.to_symbol("delayed_count"), stats.delayed_count)?;
        hash.aset(
            ruby.to_symbol("oldest_message_age_seconds"),
            stats.oldest_message_age_seconds,
        )?;
        hash.aset(ruby.to_symbol("dead_letter_count"), stats.dead_letter_count)?;
        Ok(hash)
    }

    fn purge(ruby: &Ruby, rb_self: &Self, name: String) -> Outcome<u64> {
        let q = queue(ruby, name)?;
        rb_self.call(ruby, |s| async move { s.purge_queue(&q).await })
    }

    fn delete_queue(ruby: &Ruby, rb_self: &Self, name: String) -> Outcome<()> {
        let q = queue(ruby, name)?;
        rb_self.call(ruby, |s| async move { s.delete_queue(&q).await })
    }

    /// Waits until a message may be receivable, at most `secs` (no lease taken).
    fn wait(ruby: &Ruby, rb_self: &Self, name: String, secs: f64) -> Outcome<()> {
        let q = queue(ruby, name)?;
        let d = seconds(ruby, "wait", secs)?;
        rb_self.call(ruby, |s| async move {
            s.wait_for_messages(&q, d).await;
            Ok(())
        })
    }

    /// Sleeps `secs` without the GVL: the binding's own blocking path, for tests and for
    /// measuring the per-call overhead. `sleep(0)` yields once instead (pending at the first
    /// poll, ready at the next, no timer): the cost of a call that gives up the GVL, alone.
    fn native_sleep(ruby: &Ruby, secs: f64) -> Outcome<()> {
        let d = seconds(ruby, "sleep", secs)?;
        block_on(ruby, async move {
            if d.is_zero() {
                tokio::task::yield_now().await
            } else {
                tokio::time::sleep(d).await
            }
        })
    }

    fn shutdown(ruby: &Ruby, rb_self: &Self) -> Outcome<()> {
        rb_self.call(ruby, |s| async move { s.shutdown().await })
    }

    fn inspect(&self) -> String {
        format!(
            "#<TaskerCore::Native::Service provider={}>",
            self.config.provider
        )
    }
}

async fn receive_waiting(
    service: &dyn MessagingService,
    q: &QueueName,
    max: usize,
    vt: Duration,
    wait: Duration,
) -> tasker_messaging::Result<Vec<ReceivedMessage>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let messages = service.receive(q, max, vt).await?;
        let now = tokio::time::Instant::now();
        if !messages.is_empty() || max == 0 || now >= deadline {
            return Ok(messages);
        }
        service.wait_for_messages(q, deadline - now).await;
    }
}

pub fn define(ruby: &Ruby, native: magnus::RModule) -> Result<(), Error> {
    use magnus::{function, method};
    let class = native.define_class("Service", ruby.class_object())?;
    class.undef_default_alloc_func();
    class.define_singleton_method("open", function!(RbService::open, 4))?;
    class.define_singleton_method("sleep", function!(RbService::native_sleep, 1))?;
    class.define_method("provider", method!(RbService::provider, 0))?;
    class.define_method("built_pid", method!(RbService::built_pid, 0))?;
    class.define_method("capabilities", method!(RbService::capabilities, 0))?;
    class.define_method(
        "max_receive_count",
        method!(RbService::max_receive_count, 0),
    )?;
    class.define_method(
        "default_visibility_timeout",
        method!(RbService::default_visibility_timeout, 0),
    )?;
    class.define_method(
        "dead_letter_queue_name",
        method!(RbService::dead_letter_queue_name, 1),
    )?;
    class.define_method("health", method!(RbService::health, 0))?;
    class.define_method("create_queue", method!(RbService::create_queue, 2))?;
    class.define_method("send_batch", method!(RbService::send_batch, 5))?;
    class.define_method("receive", method!(RbService::receive, 4))?;
    class.define_method("delete", method!(RbService::delete, 2))?;
    class.define_method("delete_batch", method!(RbService::delete_batch, 2))?;
    class.define_method(
        "change_visibility",
        method!(RbService::change_visibility, 3),
    )?;
    class.define_method("dead_letter", method!(RbService::dead_letter, 3))?;
    class.define_method("redrive", method!(RbService::redrive, 2))?;
    class.define_method("stats", method!(RbService::stats, 1))?;
    class.define_method("purge", method!(RbService::purge, 1))?;
    class.define_method("delete_queue", method!(RbService::delete_queue, 1))?;
    class.define_method("wait", method!(RbService::wait, 2))?;
    class.define_method("shutdown", method!(RbService::shutdown, 0))?;
    class.define_method("inspect", method!(RbService::inspect, 0))?;
    Ok(())
}
