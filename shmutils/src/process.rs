//! The calling thread and process as the locks and the heap see them: the
//! thread's kernel id, cached, and a fork generation that tells a forked
//! child from its parent.
//!
//! One `pthread_atfork` child handler serves the whole crate: in the child
//! it forgets the cached thread id (the child's only thread has a new one)
//! and bumps the generation (so process-local caches know that what they
//! hold belongs to the parent). It is registered without ever blocking —
//! not with `Once`: a child forked while another thread was inside
//! `call_once` would wait for that thread forever — and nothing is cached
//! until it is registered.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::sys;

thread_local! {
    /// This thread's kernel id, or 0 until known (and in a forked child).
    static TID: Cell<u32> = const { Cell::new(0) };
}

/// Bumped in the child after every `fork`.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Whether [`after_fork_in_child`] is registered: `UNREGISTERED`,
/// `REGISTERING` (one thread is calling `pthread_atfork`), `REGISTERED`,
/// or `FAILED`.
static ATFORK: AtomicU8 = AtomicU8::new(UNREGISTERED);
const UNREGISTERED: u8 = 0;
const REGISTERING: u8 = 1;
const REGISTERED: u8 = 2;
const FAILED: u8 = 3;

/// Runs in the child after `fork`, in the thread that forked.
unsafe extern "C" fn after_fork_in_child() {
    let _ = TID.try_with(|t| t.set(0));
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Registers [`after_fork_in_child`] if no thread has yet, without waiting
/// for a thread that is registering it. Returns whether it is registered.
fn fork_handler_registered() -> bool {
    // Acquire: pairs with the Release store below, so whoever sees
    // REGISTERED caches only after the handler that resets it exists.
    let state = ATFORK.load(Ordering::Acquire);
    if state != UNREGISTERED {
        return state == REGISTERED;
    }
    if ATFORK
        .compare_exchange(
            UNREGISTERED,
            REGISTERING,
            Ordering::Relaxed,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return false; // another thread is registering: do not cache yet
    }
    let state = if sys::atfork_child(after_fork_in_child).is_ok() {
        REGISTERED
    } else {
        FAILED
    };
    // Release: publishes the registration to the Acquire load above.
    ATFORK.store(state, Ordering::Release);
    state == REGISTERED
}

/// The calling thread's kernel id, cached: one system call per thread,
/// and one per forked child.
#[inline]
pub(crate) fn current_tid() -> u32 {
    let tid = TID.with(Cell::get);
    if tid != 0 {
        return tid;
    }
    fetch_tid()
}

#[cold]
fn fetch_tid() -> u32 {
    let tid = sys::gettid();
    // Without the handler a forked child would keep its parent's id, so
    // cache only once it is registered (until then, one syscall a call).
    if fork_handler_registered() {
        TID.with(|t| t.set(tid));
    }
    tid
}

/// The process's fork generation: different in a forked child than in its
/// parent at the time of the fork.
#[inline]
pub(crate) fn fork_generation() -> u64 {
    if fork_handler_registered() {
        GENERATION.load(Ordering::Relaxed)
    } else {
        // No handler: the process id tells a child from its parent, at the
        // cost of a system call.
        u64::from(sys::getpid()) | 1 << 63
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tid_is_cached_and_per_thread() {
        let me = current_tid();
        assert_eq!(me, sys::gettid());
        assert_eq!(current_tid(), me);
        let other = std::thread::spawn(current_tid).join().unwrap();
        assert_ne!(other, me);
    }

    #[test]
    fn a_forked_child_has_its_own_tid_and_generation() {
        let (tid, generation) = (current_tid(), fork_generation());
        // SAFETY: the child only calls async-signal-safe code paths of this
        // module (a cached read, gettid, getpid) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = current_tid() != tid
                && current_tid() == sys::gettid()
                && fork_generation() != generation;
            // SAFETY: ends the child without running the harness's code.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(fork_generation(), generation, "the parent's is unchanged");
    }
}
