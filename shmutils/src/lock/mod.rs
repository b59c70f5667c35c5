//! Process-shared locks that survive a crashed holder: [`Lock<T>`],
//! [`RLock<T>`] (both [`GenericLock`] over a [`RawMutex`]), the raw
//! [`RawLock`] and [`RawRLock`], and [`Condvar`].
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
//! Every lock is a futex state in the memory it protects, with a record of
//! its owner beside it (see the state table in `word.rs`), so it works
//! between threads and between processes that map the same bytes, at any
//! address. Uncontended lock and unlock are one compare-and-swap and one
//! atomic subtraction, with no system call.
//!
//! # When the holder dies
//!
//! The owner record names the holding thread exactly: process id, thread
//! id, the thread's kernel start time and its serial in its process, so a
//! thread that the kernel later gives the same thread id is never taken
//! for the owner. A thread that cannot get the lock spins briefly (only
//! while its spins have been paying: on a CPU it shares with the holder it
//! yields to it instead), then sleeps in `futex_wait` for at most 5 ms at
//! a time; after each sleep that
//! no unlock ended, it asks whether the owner still runs (`/proc`, or for
//! its own process's threads a registry those threads leave when they
//! exit). `try_lock` and an expiring `lock_timeout` ask at once (a read of
//! `/proc`, a few microseconds). Where the owner is a thread of another
//! process that holds a *token* of the segment's registry (a robust
//! pthread mutex it keeps locked while it lives, `token.rs`), the waiter
//! does not poll: it sleeps until the lock is released or the kernel marks
//! the token at the owner's death, which it then confirms through `/proc`
//! (under a millisecond). What the caller gets, within 5–10 ms of the death
//! (a watched owner: within about a millisecond), whether or not anyone
//! was waiting when it happened:
//!
//! - **a thread of another process died holding the lock**:
//!   [`LockError::OwnerDied`] with the guard; the caller holds the lock.
//!   Of several waiters exactly one gets it (a compare-and-swap from the
//!   exact state observed).
//! - **a thread of this process exited holding the lock** (its guard was
//!   leaked with `mem::forget` or `Box::leak`): [`LockError::Abandoned`],
//!   without a guard, every time this process tries. A reference the
//!   dead thread handed out may still be in use here, so no second one is
//!   made; the lock cannot be used by this process any more.
//!
//! The `OwnerDied` holder repairs the data and calls `mark_consistent()`
//! on the guard. If it drops the guard without doing so (for instance
//! through `?`), the lock is released but stays inconsistent: the next
//! locker gets `OwnerDied` with its guard in turn (std's poisoning model).
//! A holder that cannot repair calls `make_not_recoverable()`: from then
//! on every process gets [`LockError::NotRecoverable`].
//!
//! A state holding garbage (a peer scribbled over it) whose owner cannot
//! be a live thread is treated as a dead owner; garbage that names a live
//! thread looks like a holder, so `lock` waits as it would for one (use
//! `lock_timeout` where that matters).
//!
//! No kernel robust list is used (glibc owns the thread's one), so:
//! - **PID namespaces**: ids are per namespace; every process using a lock
//!   must see the same pid namespace, or liveness answers are meaningless.
//! - The owner of a lock is a *thread*: a guard must be released by the
//!   thread that took it (guards are not `Send`).
//! - **fork**: a forked child does not inherit its parent's locks. A guard
//!   copied into the child gives no access there (`deref` panics) and its
//!   drop leaves the parent's lock alone.

mod atomic;
mod condvar;
mod raw;
mod spin;
pub(crate) mod token;
mod typed;
mod word;

pub use condvar::{Condvar, WaitTimeoutResult};
pub use raw::{RawLock, RawMutex, RawMutexExclusive, RawRLock};
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub use token::test_hooks as token_test_hooks;
pub use typed::{GenericLock, GenericLockGuard, Lock, LockGuard, RLock, RLockGuard};

use std::fmt;

use crate::error::{Error, LockErrorKind};

/// Why a lock was not (cleanly) acquired.
///
/// `OwnerDied` is the only variant where the caller holds the lock: it
/// carries the guard (`()` for the raw locks). `?` converts it into
/// [`crate::Error`], `Box<dyn Error>` or `Box<dyn Error + Send + Sync>`,
/// dropping the guard (which leaves the lock inconsistent, so the next
/// locker hears `OwnerDied` in turn).
pub enum LockError<G> {
    /// A thread of another process died while holding the lock (or the
    /// last holder released it without repairing); the caller holds it now.
    /// Repair the protected data, then call `mark_consistent()` on the
    /// guard.
    OwnerDied(G),
    /// A thread of this process exited while holding the lock (its guard
    /// leaked): data it borrowed may still be borrowed, so this process
    /// gets no guard, now or later. Other processes may still recover it.
    Abandoned,
    /// A holder gave up repairing (`make_not_recoverable`): the lock
    /// cannot be used any more.
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
            LockError::Abandoned => LockError::Abandoned,
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

    /// The error without its guard (an `OwnerDied` guard dropped without
    /// `mark_consistent()` leaves the lock inconsistent for the next
    /// locker).
    pub fn without_guard(self) -> LockError<()> {
        self.map(drop)
    }

    /// Whether this is `OwnerDied`.
    pub fn is_owner_died(&self) -> bool {
        matches!(self, LockError::OwnerDied(_))
    }

    /// The kind of error, without the guard.
    pub fn kind(&self) -> LockErrorKind {
        match self {
            LockError::OwnerDied(_) => LockErrorKind::OwnerDied,
            LockError::Abandoned => LockErrorKind::Abandoned,
            LockError::NotRecoverable => LockErrorKind::NotRecoverable,
            LockError::WouldBlock => LockErrorKind::WouldBlock,
            LockError::TimedOut => LockErrorKind::TimedOut,
            LockError::WouldDeadlock => LockErrorKind::WouldDeadlock,
            LockError::RecursionLimit => LockErrorKind::RecursionLimit,
        }
    }
}

impl<G> fmt::Debug for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(_) => f.write_str("OwnerDied(..)"),
            other => fmt::Debug::fmt(&other.kind(), f),
        }
    }
}

impl<G> fmt::Display for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.kind(), f)
    }
}

/// Only the guard-less error is a `std::error::Error` (one that carries a
/// guard borrows the lock, so it is not `'static`); `?` converts the others
/// through the `From` impls below.
impl std::error::Error for LockError<()> {}

impl<G> PartialEq for LockError<G>
where
    G: PartialEq,
{
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (LockError::OwnerDied(a), LockError::OwnerDied(b)) => a == b,
            (a, b) => a.kind() == b.kind(),
        }
    }
}

impl<G> From<LockError<G>> for Error {
    /// Drops any guard (see [`LockError`]).
    fn from(e: LockError<G>) -> Error {
        Error::Lock(e.kind())
    }
}

mod sealed {
    pub trait Sealed {}
}

/// What a [`LockError`] may carry: a lock guard, or a condition variable's
/// guard and timeout result. Sealed; it lets `?` turn a lock error into a
/// boxed `dyn Error` (dropping the guard).
pub trait LockGuardMarker: sealed::Sealed {}

impl<T, R: RawMutex> sealed::Sealed for GenericLockGuard<'_, T, R> {}
impl<T, R: RawMutex> LockGuardMarker for GenericLockGuard<'_, T, R> {}
impl<G: LockGuardMarker> sealed::Sealed for (G, WaitTimeoutResult) {}
impl<G: LockGuardMarker> LockGuardMarker for (G, WaitTimeoutResult) {}

impl<'a, G: LockGuardMarker> From<LockError<G>> for Box<dyn std::error::Error + Send + Sync + 'a> {
    /// Drops any guard (see [`LockError`]).
    fn from(e: LockError<G>) -> Self {
        Box::new(e.without_guard())
    }
}

impl<'a, G: LockGuardMarker> From<LockError<G>> for Box<dyn std::error::Error + 'a> {
    /// Drops any guard (see [`LockError`]).
    fn from(e: LockError<G>) -> Self {
        Box::new(e.without_guard())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync_static<T: Send + Sync + 'static>() {}

    #[test]
    fn errors_are_send_sync_static() {
        assert_send_sync_static::<Error>();
        assert_send_sync_static::<LockError<()>>();
        assert_send_sync_static::<LockErrorKind>();
    }

    #[test]
    fn question_mark_into_boxed_errors_drops_the_guard() {
        fn boxed(l: &Lock<u64>) -> Result<u64, Box<dyn std::error::Error>> {
            let g = l.lock()?;
            Ok(*g)
        }
        fn boxed_send(l: &Lock<u64>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let _g = l.lock()?;
            Ok(())
        }
        fn crate_error(l: &RLock<u64>) -> crate::Result<u64> {
            let g = l.lock()?;
            Ok(*g)
        }
        let l = Lock::new(3u64);
        assert_eq!(boxed(&l).unwrap(), 3);
        boxed_send(&l).unwrap();
        let g = l.lock().unwrap();
        let e = boxed(&l).unwrap_err();
        assert_eq!(e.to_string(), LockErrorKind::WouldDeadlock.to_string());
        let e = boxed_send(&l).unwrap_err();
        assert!(e.downcast_ref::<LockError<()>>().is_some());
        drop(g);
        assert_eq!(crate_error(&RLock::new(4)).unwrap(), 4);
    }

    #[test]
    fn messages_say_what_happened() {
        let abandoned = LockError::<()>::Abandoned.to_string();
        assert!(
            abandoned.contains("thread of this process exited"),
            "{abandoned}"
        );
        assert!(abandoned.contains("borrowed"), "{abandoned}");
        assert_eq!(format!("{:?}", LockError::OwnerDied(5)), "OwnerDied(..)");
        assert_eq!(format!("{:?}", LockError::<u8>::TimedOut), "TimedOut");
        assert!(matches!(
            Error::from(LockError::OwnerDied(7)),
            Error::Lock(LockErrorKind::OwnerDied)
        ));
    }
}
