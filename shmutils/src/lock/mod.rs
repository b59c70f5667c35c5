//! Process-shared locks that survive a crashed holder: [`RawLock`],
//! [`RawRLock`], [`Lock<T>`], [`RLock<T>`] and [`Condvar`].
//!
//! ```
//! use shmutils::{Lock, MapFlags, MapProtections, MappedMemory};
//! let mut m = MappedMemory::new(None, 4096, MapProtections::READ_WRITE, MapFlags::SHARED, None)?;
//! let counter = m.init(0, Lock::new(0u64))?;
//! *counter.lock()? += 1;
//! assert_eq!(*counter.lock()?, 1);
//! # Ok::<(), shmutils::Error>(())
//! ```
//!
//! Every lock is a futex word in the memory it protects (see the state
//! table in `word.rs`), so it works between threads and between processes
//! that map the same bytes, at any address. Uncontended lock and unlock are
//! one atomic operation each, with no system call.
//!
//! # When the holder dies
//!
//! A lock word records its owner's kernel thread id. A thread that cannot
//! get the lock spins briefly, then sleeps in `futex_wait` for at most 5 ms
//! at a time; after each sleep that no unlock ended, it asks the kernel
//! whether the owner still exists (`kill(tid, 0)`, plus `/proc/TID/stat` so
//! that an exited but unreaped process counts as dead). A dead owner's word
//! is taken over with a compare-and-swap from the exact value observed, so
//! of several waiters exactly one wins; it gets
//! [`LockError::OwnerDied`] carrying the guard, normally within 5–10 ms of
//! the death, whether or not anyone was waiting when it happened.
//! `try_lock` and an expiring `lock_timeout` check the owner at once (a
//! `kill` and a read of `/proc`, so a `try_lock` that fails costs a few
//! microseconds).
//!
//! The winner repairs the data and calls `mark_consistent()` on the guard.
//! If it drops the guard without doing so, the lock becomes
//! [`LockError::NotRecoverable`] for every process, for good (pthread's
//! robust-mutex contract). A word holding garbage (a peer scribbled over it)
//! whose owner cannot be a live thread is treated as a dead owner; garbage
//! that happens to name a live thread looks like a holder, so `lock` waits
//! as it would for one (use `lock_timeout` where that matters).
//!
//! No kernel robust list is used (glibc owns the thread's one), so:
//! - **tid reuse**: if the owner dies and the kernel hands its tid to a new
//!   thread before anyone checks, the lock looks held until that thread
//!   exits too (pid_max is 32768 by default, so this needs thousands of
//!   thread creations in a few milliseconds). A thread that finds its own
//!   tid in a word it does not hold gets [`LockError::WouldDeadlock`].
//! - **PID namespaces**: tids are per namespace; every process using a lock
//!   must see the same pid namespace, or liveness answers are meaningless.
//! - The owner of a lock is a *thread*: a guard must be released by the
//!   thread that took it (guards are not `Send`), and a thread that exits
//!   holding a lock makes it "owner died" for the others.
//! - A forked child does not inherit its parent's locks: it has its own tid.

mod condvar;
mod raw;
mod typed;
mod word;

pub use condvar::{Condvar, WaitTimeoutResult};
pub use raw::{RawLock, RawRLock};
pub use typed::{Lock, LockGuard, RLock, RLockGuard};

use std::fmt;

/// Why a lock was not (cleanly) acquired.
///
/// `OwnerDied` is the only variant where the caller holds the lock: it
/// carries the guard (`()` for the raw locks).
pub enum LockError<G> {
    /// The previous holder died while holding the lock; the caller holds it
    /// now. Repair the protected data, then call `mark_consistent()` on the
    /// guard; dropping it unrepaired makes the lock `NotRecoverable`.
    OwnerDied(G),
    /// An earlier repairer released the lock without `mark_consistent()`:
    /// the lock cannot be used any more.
    NotRecoverable,
    /// `try_lock`: another live thread holds the lock.
    WouldBlock,
    /// `lock_timeout`: the time ran out while another thread held the lock.
    TimedOut,
    /// The calling thread already holds this (non-recursive) lock; waiting
    /// would never end.
    WouldDeadlock,
    /// A recursive lock is already held `u32::MAX` times by this thread.
    RecursionLimit,
}

/// What lock acquisitions return: the guard, or why not.
pub type LockResult<G> = Result<G, LockError<G>>;

impl<G> LockError<G> {
    /// Converts the carried guard, e.g. to add data to it.
    pub fn map<H>(self, f: impl FnOnce(G) -> H) -> LockError<H> {
        match self {
            LockError::OwnerDied(g) => LockError::OwnerDied(f(g)),
            LockError::NotRecoverable => LockError::NotRecoverable,
            LockError::WouldBlock => LockError::WouldBlock,
            LockError::TimedOut => LockError::TimedOut,
            LockError::WouldDeadlock => LockError::WouldDeadlock,
            LockError::RecursionLimit => LockError::RecursionLimit,
        }
    }

    /// The guard, for `OwnerDied`.
    pub fn into_guard(self) -> Option<G> {
        match self {
            LockError::OwnerDied(g) => Some(g),
            _ => None,
        }
    }

    /// The error without its guard (dropping an `OwnerDied` guard without
    /// `mark_consistent()` makes the lock not recoverable).
    pub fn without_guard(self) -> LockError<()> {
        self.map(drop)
    }

    /// Whether this is `OwnerDied`.
    pub fn is_owner_died(&self) -> bool {
        matches!(self, LockError::OwnerDied(_))
    }

    fn name(&self) -> &'static str {
        match self {
            LockError::OwnerDied(_) => "OwnerDied",
            LockError::NotRecoverable => "NotRecoverable",
            LockError::WouldBlock => "WouldBlock",
            LockError::TimedOut => "TimedOut",
            LockError::WouldDeadlock => "WouldDeadlock",
            LockError::RecursionLimit => "RecursionLimit",
        }
    }
}

impl<G> fmt::Debug for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(_) => f.write_str("OwnerDied(..)"),
            other => f.write_str(other.name()),
        }
    }
}

impl<G> fmt::Display for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockError::OwnerDied(_) => {
                "the previous lock holder died while holding it; \
                 the data may be inconsistent and must be repaired, then marked consistent"
            }
            LockError::NotRecoverable => {
                "the lock is not recoverable: a holder that took it from a dead owner \
                 released it without marking it consistent"
            }
            LockError::WouldBlock => "the lock is held by another thread",
            LockError::TimedOut => "timed out waiting for the lock",
            LockError::WouldDeadlock => {
                "the calling thread already holds this lock; waiting for it would deadlock"
            }
            LockError::RecursionLimit => {
                "the recursive lock is already held u32::MAX times by this thread"
            }
        })
    }
}

impl<G> std::error::Error for LockError<G> {}

impl<G> PartialEq for LockError<G>
where
    G: PartialEq,
{
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (LockError::OwnerDied(a), LockError::OwnerDied(b)) => a == b,
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}
