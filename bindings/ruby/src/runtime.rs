//! One tokio runtime per process, and running futures on it without Ruby's GVL.
//!
//! Every blocking call of the binding goes through [`block_on`]: the calling Ruby thread gives
//! up the GVL (`rb_thread_call_without_gvl`), drives the future on the shared multi-threaded
//! runtime, and takes the GVL back to build the Ruby result. Other Ruby threads run meanwhile.
//! An interrupt (`Thread#raise`, `Thread#kill`, Ctrl-C, `Timeout.timeout`) cancels the future
//! through the unblocking function, and Ruby then raises the pending interrupt.
//!
//! **Fork.** A forked child has only the forking thread: the parent's runtime threads do not
//! exist there. The runtime records the pid it was built in; the first call in a child (pid
//! changed) builds a new runtime and leaks the parent's (dropping it would wait for threads
//! that are not there). Services do the same with their connections (see `service.rs`).

use std::ffi::c_void;
use std::future::Future;
use std::sync::Arc;

use magnus::rb_sys::AsRawValue;
use magnus::{Error, Ruby};
use parking_lot::Mutex;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

use crate::errors::{interrupted_error, native_error};

struct Shared {
    pid: u32,
    runtime: Arc<Runtime>,
}

static RUNTIME: Mutex<Option<Shared>> = Mutex::new(None);

/// The process's runtime, built on first use and again after a fork.
pub fn runtime() -> std::io::Result<Arc<Runtime>> {
    let pid = std::process::id();
    let mut guard = RUNTIME.lock();
    if let Some(shared) = guard.as_ref() {
        if shared.pid == pid {
            return Ok(shared.runtime.clone());
        }
    }
    if let Some(stale) = guard.take() {
        // The parent's runtime: its worker threads do not exist in this process, so dropping
        // it would wait for them. Leak it.
        std::mem::forget(stale.runtime);
    }
    let workers = std::env::var("TASKER_MQ_RUBY_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get().min(4))
                .unwrap_or(2)
        });
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("tasker-mq-ruby")
            .enable_all()
            .build()?,
    );
    *guard = Some(Shared {
        pid,
        runtime: runtime.clone(),
    });
    Ok(runtime)
}

/// The pid the current runtime was built in (a forked child builds its own), for tests.
pub fn runtime_pid() -> Option<u32> {
    RUNTIME.lock().as_ref().map(|s| s.pid)
}

struct Call<F: Future> {
    runtime: Arc<Runtime>,
    future: Option<F>,
    cancel: CancellationToken,
    /// `None`: cancelled by an interrupt; `Some(Err)`: the future panicked.
    output: Option<std::thread::Result<F::Output>>,
}

unsafe extern "C" fn run_call<F: Future>(data: *mut c_void) -> *mut c_void {
    // SAFETY: `data` is the `Call<F>` `block_on` passed, alive for the whole call.
    let call = unsafe { &mut *(data as *mut Call<F>) };
    let Some(future) = call.future.take() else {
        return std::ptr::null_mut();
    };
    let runtime = call.runtime.clone();
    let cancel = call.cancel.clone();
    // A panic must not unwind through Ruby's C frames.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async move {
            tokio::select! {
                biased;
                out = future => Some(out),
                _ = cancel.cancelled() => None,
            }
        })
    }));
    call.output = match result {
        Ok(Some(out)) => Some(Ok(out)),
        Ok(None) => None,
        Err(panic) => Some(Err(panic)),
    };
    std::ptr::null_mut()
}

unsafe extern "C" fn unblock(data: *mut c_void) {
    // SAFETY: `data` is the token `block_on` passed, alive for the whole call.
    let cancel = unsafe { &*(data as *const CancellationToken) };
    cancel.cancel();
}

/// Runs `future` on the shared runtime with the GVL released. An interrupt cancels it and
/// raises Ruby's pending exception (or `Interrupted` if there is none).
///
/// `rb_thread_call_without_gvl2` is used because it never raises itself (the plain form checks
/// interrupts on the way out and may raise across this Rust frame); interrupts are checked
/// here, under `protect`, once the future is finished or dropped.
pub fn block_on<F>(ruby: &Ruby, future: F) -> Result<F::Output, Error>
where
    F: Future + Send,
    F::Output: Send,
{
    let runtime = runtime().map_err(|e| native_error(ruby, format!("tokio runtime: {e}")))?;
    let mut call = Call {
        runtime,
        future: Some(future),
        cancel: CancellationToken::new(),
        output: None,
    };
    loop {
        let cancel = call.cancel.clone();
        // SAFETY: both pointers outlive the call; `run_call` touches no Ruby object, and
        // `unblock` only cancels a token (thread-safe).
        unsafe {
            rb_sys::rb_thread_call_without_gvl2(
                Some(run_call::<F>),
                &mut call as *mut Call<F> as *mut c_void,
                Some(unblock),
                &cancel as *const CancellationToken as *mut c_void,
            );
        }
        match call.output.take() {
            Some(Ok(out)) => return Ok(out),
            Some(Err(_panic)) => return Err(native_error(ruby, "the native extension panicked")),
            None => {}
        }
        // Interrupted (the future was dropped), or not started because an interrupt was
        // pending: let Ruby raise it (Thread#raise, kill, a signal's exception).
        let nil = ruby.qnil().as_raw();
        magnus::rb_sys::protect(|| {
            // SAFETY: called with the GVL held; protect catches the raise.
            unsafe { rb_sys::rb_thread_check_ints() };
            nil
        })?;
        if call.future.is_none() {
            // Cancelled and nothing to raise (a trap handler ran): the work may be half done,
            // so it is not repeated.
            return Err(interrupted_error(ruby));
        }
        // Never started and the interrupt needed no exception: run it now.
        call.cancel = CancellationToken::new();
    }
}
