//! What the lock word's protocol is built from, behind two small traits so
//! that `loom` can stand in for each: the 64-bit atomic the state and the
//! owner record live in ([`Atom`], with the futex on the state's low half),
//! and the kernel's answers about threads ([`Oracle`]).
//!
//! The crate always instantiates the protocol with `std` atomics, the
//! futex and `/proc` ([`Kernel`]); with `--cfg loom` the tests in
//! `word.rs` instantiate the same code with `loom` atomics, a futex that
//! only yields, and a scripted oracle.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::token::{self, Watch};
use crate::process::{self, ThreadIdentity};
use crate::sync::Word;
use crate::sys;

/// A 64-bit atomic cell with a futex on its low 32 bits.
pub(crate) trait Atom: Word {
    /// Sleeps while the low 32 bits equal `low`, for at most `timeout`;
    /// returns whether the time ran out (`false` for a wake-up, a change,
    /// a signal or a spurious return: the caller re-reads in every case).
    fn wait_low(&self, low: u32, timeout: Duration) -> bool;
    /// Wakes up to `n` threads sleeping in [`Atom::wait_low`].
    fn wake(&self, n: u32);
    /// Lets other runnable threads go first (`sched_yield`; the model's
    /// scheduler under loom).
    fn yield_cpu();
    /// Sleeps like [`Atom::wait_low`] while `owner()`, a thread of another
    /// process, holds the lock, and also until its token reports its death
    /// (`token.rs`). `Some(true)`: judge the owner now; `Some(false)`: woken
    /// otherwise; `None`: no token watches the owner, sleep in slices. The
    /// model has no tokens.
    fn wait_low_watching(
        &self,
        _low: u32,
        _owner: impl FnOnce() -> Option<Owner>,
        _timeout: Duration,
        _watch: &mut Watch,
    ) -> Option<bool> {
        None
    }
}

impl Atom for AtomicU64 {
    fn wait_low(&self, low: u32, timeout: Duration) -> bool {
        sys::futex_wait_low(self, low, Some(timeout)) == sys::FutexWait::TimedOut
    }
    fn wake(&self, n: u32) {
        sys::futex_wake_low(self, n);
    }
    fn yield_cpu() {
        sys::sched_yield();
    }
    fn wait_low_watching(
        &self,
        low: u32,
        owner: impl FnOnce() -> Option<Owner>,
        timeout: Duration,
        watch: &mut Watch,
    ) -> Option<bool> {
        // The owner record is read only when a token could watch it.
        if !token::may_watch() {
            return None;
        }
        token::sleep_watching(self, low, owner()?, timeout, watch)
    }
}

/// A lock owner as its record names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) tid: u32,
    pub(crate) pid: u32,
    /// [`ThreadIdentity::detail`]: start time, serial, registered.
    pub(crate) detail: u64,
}

/// What the kernel says about a recorded owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// The very thread that took the lock still runs (or cannot be told
    /// from it).
    Alive,
    /// It is gone, and it was a thread of the calling process.
    DeadHere,
    /// It is gone, and it was a thread of another process.
    DeadElsewhere,
}

/// The kernel's answers the slow path needs.
pub(crate) trait Oracle {
    /// Whether `owner` (a complete, published record) still runs.
    fn owner(&self, owner: Owner, me: &ThreadIdentity) -> Liveness;
    /// Whether some thread has id `tid` and started no later than
    /// `seen_at` (a time from [`Oracle::now`]): a thread that could have
    /// taken a lock before that time. False when the id is free, belongs
    /// to a zombie, or was handed out since.
    fn tid_could_own(&self, tid: u32, seen_at: u64) -> bool;
    /// The current time on the clock of thread start times.
    fn now(&self) -> u64;
}

/// The real oracle: `/proc`, `kill(tid, 0)` and this process's registry.
pub(crate) struct Kernel;

impl Oracle for Kernel {
    fn owner(&self, owner: Owner, me: &ThreadIdentity) -> Liveness {
        let start = ThreadIdentity::start_ticks(owner.detail);
        let here_start = process::process_start_ticks() & ((1 << process::START_BITS) - 1);
        // A thread of this process started no earlier than the process;
        // an owner that started before it had our pid in an earlier life.
        let here = owner.pid == me.pid && (start == 0 || here_start == 0 || start >= here_start);
        let dead = if here && ThreadIdentity::registered(owner.detail) {
            // Exact: the entry goes when the thread exits, whoever gets
            // its tid next.
            !process::registered_thread_alive(owner.tid, ThreadIdentity::serial(owner.detail))
        } else {
            !sys::thread_runs(
                owner.pid,
                owner.tid,
                (start != 0).then_some((start, process::START_BITS)),
            )
        };
        match (dead, here) {
            (false, _) => Liveness::Alive,
            (true, true) => Liveness::DeadHere,
            (true, false) => Liveness::DeadElsewhere,
        }
    }

    fn tid_could_own(&self, tid: u32, seen_at: u64) -> bool {
        match sys::proc_any_thread(tid) {
            sys::ProcThread::Found(st) => !st.zombie && (seen_at == 0 || st.start_ticks <= seen_at),
            sys::ProcThread::Gone => false,
            sys::ProcThread::Unknown => sys::thread_alive(tid),
        }
    }

    fn now(&self) -> u64 {
        sys::boot_ticks_now()
    }
}

#[cfg(all(test, loom))]
mod loom_impl {
    use super::*;
    use std::sync::atomic::Ordering;

    /// The model's 64-bit atomic: the futex only yields (a sleeper returns
    /// at once and re-reads), so loom explores every interleaving of the
    /// state machine but not the kernel's wake-up bookkeeping.
    impl Atom for loom::sync::atomic::AtomicU64 {
        fn wait_low(&self, low: u32, _timeout: Duration) -> bool {
            if self.load(Ordering::Relaxed) as u32 == low {
                loom::thread::yield_now();
            }
            false
        }
        fn wake(&self, _n: u32) {}
        fn yield_cpu() {
            loom::thread::yield_now();
        }
    }
}
