//! The native half of the Ruby binding (`require "tasker_core"` loads it): the library's
//! `MessagingService` behind `TaskerCore::Native::Service`, received messages as
//! `TaskerCore::Messaging::ReceivedMessage`, and the library's errors as the exception
//! hierarchy of `TaskerCore::Messaging` (defined in Ruby). The idiomatic API
//! (`TaskerCore::Services::MessageService`) is Ruby code over these; see docs/ruby.md.

mod config;
mod errors;
mod message;
mod runtime;
mod service;
mod step;

use magnus::{function, prelude::*, Error, Ruby};

fn runtime_pid() -> Option<u32> {
    runtime::runtime_pid()
}

#[magnus::init(name = "tasker_messaging_native")]
fn init(ruby: &Ruby) -> Result<(), Error> {
    let core = ruby.define_module("TaskerCore")?;
    let native = core.define_module("Native")?;
    let messaging = core.define_module("Messaging")?;
    message::define(ruby, messaging)?;
    step::define(ruby)?;
    service::define(ruby, native)?;
    native.define_singleton_method("runtime_pid", function!(runtime_pid, 0))?;
    native.const_set("VERSION", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
