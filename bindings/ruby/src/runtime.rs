//! One tokio runtime per process, and running futures on it without Ruby's GVL.
//!
//! Every blocking call of the binding goes through [`block_on`]. It first polls the future once
//! with the GVL held (inside the runtime's context, with a no-op waker): a future that is ready
//! at once (the in-memory provider, stats, an empty receive) returns without giving up the GVL.
//! A future that is pending (it waits on I/O, a timer or another thread) is finished the
//! blocking way: the calling Ruby thread gives up the GVL (`rb_thread_call_without_gvl2`),
//! drives the future on the shared multi-threaded runtime, and takes the GVL back to build the
//! Ruby result. Other Ruby threads run meanwhile. An interrupt (`Thread#raise`, `Thread#kill`,
//! Ctrl-C, `Timeout.timeout`) cancels the future through the unblocking function, and Ruby then
//! raises the pending interrupt.
//!
//! Why the first poll: on Ruby 3.1 giving up and taking back the GVL costs 40-100 µs on the
//! loaded 2-core test machine even for an empty function (futex hand-offs and a wake-up of
//! Ruby's timer thread through its pipe, per `strace -c`), while the tokio side (`block_on` of a
//! ready future from this thread) costs under 1 µs. Paying the GVL hand-off only for futures
//! that really wait removes almost all of a ready call's cost (docs/benchmarks.md, Ruby binding).
//!
//! **Fork.** A forked child has only the forking thread: the parent's runtime threads do not
//! exist there. The runtime records the pid it was built in; the first call in a child (pid
//! changed) builds a new runtime and leaks the parent's (dropping it would wait for threads
//! that are not there). Services do the same with their connections (see `service.rs`).

use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

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
    /// Boxed: it was polled once already (pinned), and `run_call` moves it into `block_on`.
    future: Option<Pin<Box<F>>>,
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

/// What the first poll gave: the output, or the future to finish without the GVL.
enum FirstPoll<F: Future> {
    Ready(F::Output),
    Pending(Pin<Box<F>>),
}

/// Polls `future` once on this thread, inside the runtime's context (so it may spawn, make
/// timers, use tokio's I/O), with a waker that does nothing: if it is pending, the caller polls
/// it again (with a real waker) in `block_on`, which the `Future` contract allows. A panic is
/// caught (it must not unwind through Ruby's C frames) and the future is dropped with it.
fn poll_once<F: Future>(
    runtime: &Runtime,
    mut future: Pin<Box<F>>,
) -> std::thread::Result<FirstPoll<F>> {
    let _context = runtime.enter();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let mut cx = Context::from_waker(Waker::noop());
        match future.as_mut().poll(&mut cx) {
            // The finished future is dropped here, still inside the runtime's context.
            Poll::Ready(out) => FirstPoll::Ready(out),
            Poll::Pending => FirstPoll::Pending(future),
        }
    }))
}

/// Runs `future` on the shared runtime and returns its output. A future that is ready at its
/// first poll returns with the GVL held all along; otherwise the GVL is released until it is
/// done. An interrupt cancels a released future and raises Ruby's pending exception (or
/// `Interrupted` if there is none).
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
    let future = match poll_once(&runtime, Box::pin(future)) {
        Ok(FirstPoll::Ready(out)) => return Ok(out),
        Ok(FirstPoll::Pending(future)) => future,
        Err(_panic) => return Err(native_error(ruby, "the native extension panicked")),
    };
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
        let raised = magnus::rb_sys::protect(|| {
            // SAFETY: called with the GVL held; protect catches the raise.
            unsafe { rb_sys::rb_thread_check_ints() };
            nil
        });
        if let Err(raised) = raised {
            // A future polled once but not run again is dropped in the runtime's context, as
            // `run_call` drops a cancelled one (its timers and tasks belong to the runtime).
            if let Some(future) = call.future.take() {
                let _context = call.runtime.enter();
                let _ =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(future)));
            }
            return Err(raised);
        }
        if call.future.is_none() {
            // Cancelled and nothing to raise (a trap handler ran): the work may be half done,
            // so it is not repeated.
            return Err(interrupted_error(ruby));
        }
        // Not run again (an interrupt was pending) and the interrupt needed no exception: go
        // on with it now.
        call.cancel = CancellationToken::new();
    }
}
