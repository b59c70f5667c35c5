//! [`GenericLock<T, R>`]: a raw lock and the data it protects, side by
//! side in shared memory, with a guard that unlocks on drop. [`Lock<T>`]
//! and [`RLock<T>`] are its two kinds.

use std::cell::UnsafeCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use super::raw::{RawLock, RawMutex, RawMutexExclusive, RawRLock};
use super::{LockError, LockResult};
use crate::process::fork_generation;
use crate::shared::{Fingerprint, Shared};

/// A process-shared lock that owns its data (`#[repr(C)]`: the raw lock,
/// then the value), generic over its raw lock `R`: lock_api's
/// `Mutex<R, T>`. Use it through its aliases, [`Lock<T>`] (exclusive,
/// guards give `&mut T`) and [`RLock<T>`] (recursive, guards give `&T`).
///
/// (The aliases are what make `Lock::new(0u64)` and `RLock::new(0u64)`
/// both infer their raw lock: a defaulted type parameter is not used for
/// inference in expressions.)
#[repr(C)]
pub struct GenericLock<T, R = RawLock> {
    raw: R,
    data: UnsafeCell<T>,
}

/// A process-shared mutex that owns its data.
///
/// Place it in a mapping with [`MappedMemory::init`](crate::MappedMemory::init)
/// or a heap, and reach it from other processes with
/// [`MappedMemory::get`](crate::MappedMemory::get). If a holder in another
/// process dies, the next `lock` returns [`LockError::OwnerDied`] with the
/// guard; see the [module docs](super).
///
/// ```
/// use shmutils::{Lock, LockError};
/// let l = Lock::new(5u64);
/// *l.lock()? += 1;
/// let g = l.lock()?;
/// assert!(matches!(l.try_lock(), Err(LockError::WouldDeadlock)));
/// assert_eq!(*g, 6);
/// # Ok::<(), shmutils::Error>(())
/// ```
pub type Lock<T> = GenericLock<T, RawLock>;

/// A process-shared recursive lock that owns its data: the holding thread
/// may lock again, and guards give only `&T` (two guards of one thread may
/// coexist). Use atomics or a [`Lock`] inside for mutation.
///
/// ```
/// use shmutils::RLock;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// let l = RLock::new(AtomicU32::new(0));
/// let outer = l.lock()?;
/// let inner = l.lock()?;
/// inner.fetch_add(1, Ordering::Relaxed);
/// assert_eq!(outer.load(Ordering::Relaxed), 1);
/// assert_eq!(l.depth(), 2);
/// # Ok::<(), shmutils::Error>(())
/// ```
pub type RLock<T> = GenericLock<T, RawRLock>;

// SAFETY: the lock hands out access to `T` to one thread at a time (a
// recursive lock: possibly several `&T` guards, all of that one thread),
// so it may be shared between threads whenever `T` may be sent between
// them (lock_api's bound for both kinds).
unsafe impl<T: Send, R: RawMutex> Sync for GenericLock<T, R> {}
// SAFETY: moving the lock moves the value; the raw lock is Send (Shared).
unsafe impl<T: Send, R: RawMutex> Send for GenericLock<T, R> {}

impl<T, R: RawMutex> GenericLock<T, R> {
    /// An unlocked lock holding `value`.
    pub const fn new(value: T) -> Self {
        GenericLock {
            raw: R::INIT,
            data: UnsafeCell::new(value),
        }
    }

    #[inline(always)]
    fn guard(&self) -> GenericLockGuard<'_, T, R> {
        GenericLockGuard {
            lock: self,
            generation: fork_generation(),
            _not_send: PhantomData,
        }
    }

    #[inline(always)]
    fn wrap(&self, r: Result<(), LockError<()>>) -> LockResult<GenericLockGuard<'_, T, R>> {
        match r {
            Ok(()) => Ok(self.guard()),
            Err(e) => Err(e.map(|()| self.guard())),
        }
    }

    /// Blocks until the calling thread holds the lock (a recursive lock:
    /// at once if it already does).
    ///
    /// # Errors
    /// - [`LockError::OwnerDied`] with the guard: a thread of another
    ///   process died holding the lock (or a repairer released it without
    ///   repairing). Repair, then [`GenericLockGuard::mark_consistent`].
    /// - [`LockError::Abandoned`], no guard: a thread of *this* process
    ///   exited holding it; this process cannot use the lock any more.
    /// - [`LockError::NotRecoverable`]: a holder gave up.
    /// - [`LockError::WouldDeadlock`]: this thread holds it already
    ///   ([`Lock`] only); [`LockError::RecursionLimit`] ([`RLock`] only).
    #[inline(always)]
    pub fn lock(&self) -> LockResult<GenericLockGuard<'_, T, R>> {
        self.wrap(self.raw.lock())
    }

    /// Takes the lock if no live thread holds it (checking a holder's
    /// liveness at once).
    ///
    /// # Errors
    /// [`LockError::WouldBlock`]; otherwise as [`lock`](Self::lock).
    #[inline]
    pub fn try_lock(&self) -> LockResult<GenericLockGuard<'_, T, R>> {
        self.wrap(self.raw.try_lock())
    }

    /// As [`lock`](Self::lock), giving up after `timeout`.
    ///
    /// # Errors
    /// [`LockError::TimedOut`]; otherwise as [`lock`](Self::lock).
    pub fn lock_timeout(&self, timeout: Duration) -> LockResult<GenericLockGuard<'_, T, R>> {
        self.wrap(self.raw.lock_timeout(timeout))
    }

    /// Whether any thread holds the lock right now (a hint).
    pub fn is_locked(&self) -> bool {
        self.raw.is_locked()
    }

    /// The value, through exclusive access (no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Consumes the lock, returning the value.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }

    /// The underlying raw lock.
    pub fn raw(&self) -> &R {
        &self.raw
    }
}

impl<T> GenericLock<T, RawRLock> {
    /// How many guards the calling thread holds.
    pub fn depth(&self) -> u32 {
        self.raw.depth()
    }
}

impl<T: Default, R: RawMutex> Default for GenericLock<T, R> {
    fn default() -> Self {
        GenericLock::new(T::default())
    }
}

impl<T, R: RawMutex> fmt::Debug for GenericLock<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(R::TYPED_NAME)
            .field("locked", &self.is_locked())
            .finish_non_exhaustive()
    }
}

// SAFETY: a raw lock (`Shared`: every bit pattern valid) followed by a
// `T: Shared` (every bit pattern valid, no addresses) and padding; all
// mutation goes through the raw lock's atomics or under the lock. Send and
// Sync hold for `T: Shared` (which is Send + Sync).
unsafe impl<T: Shared, R: RawMutex> Shared for GenericLock<T, R> {
    const NAME: &'static str = R::TYPED_NAME;
    const FINGERPRINT: u64 = Fingerprint::new(R::TYPED_NAME)
        .u64(R::FINGERPRINT)
        .u64(T::FINGERPRINT)
        .finish();
}

/// Access to a [`GenericLock`]'s value; releases one acquisition when
/// dropped. Use it through its aliases [`LockGuard`] (`Deref` and
/// `DerefMut`) and [`RLockGuard`] (`Deref` only).
///
/// Not `Send`: the thread that locked must unlock. A copy inherited by a
/// forked child gives no access there: its `deref` panics, and dropping it
/// leaves the parent's lock alone.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct GenericLockGuard<'a, T, R: RawMutex = RawLock> {
    lock: &'a GenericLock<T, R>,
    /// The process's fork generation when the lock was taken.
    generation: u64,
    _not_send: PhantomData<*const ()>,
}

/// Exclusive access to a [`Lock`]'s value.
pub type LockGuard<'a, T> = GenericLockGuard<'a, T, RawLock>;

/// Shared access to an [`RLock`]'s value (one of possibly several guards
/// of the holding thread).
pub type RLockGuard<'a, T> = GenericLockGuard<'a, T, RawRLock>;

// SAFETY: sharing the guard between threads shares `&T` only.
unsafe impl<T: Sync, R: RawMutex> Sync for GenericLockGuard<'_, T, R> {}

/// Why a guard refuses access: it was taken by the parent process.
#[cold]
#[inline(never)]
#[track_caller]
fn inherited_across_fork() -> ! {
    panic!(
        "a lock guard inherited across fork() gives no access: the lock is held by \
         the parent process's thread, not by this process"
    )
}

impl<'a, T, R: RawMutex> GenericLockGuard<'a, T, R> {
    /// Whether this process took the guard's lock (false in a forked
    /// child that inherited the guard).
    #[inline(always)]
    fn taken_here(&self) -> bool {
        self.generation == fork_generation()
    }

    /// Panics unless this process took the guard's lock.
    #[inline]
    #[track_caller]
    fn check(&self) {
        if !self.taken_here() {
            inherited_across_fork();
        }
    }

    /// The lock, for a condition variable's wait (checked like a deref).
    #[track_caller]
    pub(super) fn lock_ref(&self) -> &'a GenericLock<T, R> {
        self.check();
        self.lock
    }

    /// Declares the data repaired after [`LockError::OwnerDied`]. Without
    /// it, dropping the guard releases the lock still inconsistent, and the
    /// next locker gets `OwnerDied` again. A no-op on a consistent lock.
    ///
    /// # Panics
    /// In a forked child that inherited the guard.
    #[track_caller]
    pub fn mark_consistent(&self) {
        self.check();
        // SAFETY: the guard proves that this thread holds the lock (taken
        // in this process, checked just above; guards are not Send).
        unsafe { self.lock.raw.mark_consistent() };
    }

    /// Whether the lock still needs `mark_consistent` (it was taken after
    /// an owner died).
    pub fn is_inconsistent(&self) -> bool {
        self.lock.raw.is_inconsistent()
    }

    /// Gives up repairing: releases the lock and makes it
    /// [`NotRecoverable`](LockError::NotRecoverable) for every process,
    /// for good (for an [`RLock`], every level of this thread).
    ///
    /// # Panics
    /// In a forked child that inherited the guard.
    #[track_caller]
    pub fn make_not_recoverable(self) {
        self.check();
        // SAFETY: the guard proves that this thread holds the lock (checked
        // above); the guard is forgotten below, so it does not unlock again.
        unsafe { self.lock.raw.make_not_recoverable() };
        std::mem::forget(self);
    }
}

impl<T, R: RawMutex> Deref for GenericLockGuard<'_, T, R> {
    type Target = T;

    /// # Panics
    /// In a forked child that inherited the guard.
    #[inline]
    #[track_caller]
    fn deref(&self) -> &T {
        self.check();
        // SAFETY: validity and type: `data` is an initialised `T` owned by
        // the lock. Aliasing: this thread holds the lock (the guard exists
        // and was taken in this process), and while it does the lock hands
        // out no `&mut T` other than through a guard's `&mut self` (an
        // exclusive lock refuses a second acquisition, a recursive one
        // gives `&T` only). Lifetime: borrowed from `&self`, within 'a.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T, R: RawMutexExclusive> DerefMut for GenericLockGuard<'_, T, R> {
    /// # Panics
    /// In a forked child that inherited the guard.
    #[inline]
    #[track_caller]
    fn deref_mut(&mut self) -> &mut T {
        self.check();
        // SAFETY: as in `deref`; and the raw lock is exclusive, so this
        // guard is the only one, and `&mut self` makes this borrow of it
        // the only one.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T, R: RawMutex> Drop for GenericLockGuard<'_, T, R> {
    /// Releases one acquisition (an inconsistent lock stays inconsistent
    /// for the next locker). A copy of the guard inherited by a forked
    /// child does not hold the lock there: dropping it changes nothing.
    #[inline]
    fn drop(&mut self) {
        if self.taken_here() {
            // SAFETY: the guard stands for one holding acquisition by this
            // thread in this process, not yet released.
            unsafe { self.lock.raw.unlock() };
        }
    }
}

impl<T: fmt::Debug, R: RawMutex> fmt::Debug for GenericLockGuard<'_, T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: fmt::Display, R: RawMutex> fmt::Display for GenericLockGuard<'_, T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_exclude_each_other() {
        let l = Lock::new(0u64);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        let mut g = l.lock().unwrap();
                        let v = *g;
                        std::hint::black_box(&mut *g);
                        *g = v + 1;
                    }
                });
            }
        });
        assert_eq!(l.into_inner(), 40_000);
    }

    #[test]
    fn thread_exit_while_holding_is_abandoned_without_a_guard() {
        let l = std::sync::Arc::new(Lock::new(7u32));
        let l2 = l.clone();
        std::thread::spawn(move || std::mem::forget(l2.lock().unwrap()))
            .join()
            .unwrap();
        for _ in 0..3 {
            assert!(matches!(l.lock(), Err(LockError::Abandoned)));
            assert!(matches!(l.try_lock(), Err(LockError::Abandoned)));
        }
        assert!(l.is_locked(), "left to its dead owner");
    }

    #[test]
    fn an_unrepaired_owner_died_guard_passes_the_news_on() {
        let l = Lock::new(1u32);
        // Play the holder that died in another process.
        l.raw().word().state().store(
            super::super::word::INCONSISTENT,
            std::sync::atomic::Ordering::Relaxed,
        );
        let g = l.lock().unwrap_err().into_guard().unwrap();
        assert!(g.is_inconsistent());
        drop(g);
        let mut g = l.lock().unwrap_err().into_guard().expect("OwnerDied again");
        *g = 2;
        g.mark_consistent();
        drop(g);
        assert_eq!(*l.lock().unwrap(), 2);
        l.lock().unwrap().make_not_recoverable();
        assert!(matches!(l.lock(), Err(LockError::NotRecoverable)));
    }

    #[test]
    fn fingerprints_follow_the_value_type_and_kind() {
        assert_ne!(Lock::<u32>::FINGERPRINT, Lock::<u64>::FINGERPRINT);
        assert_ne!(Lock::<u32>::FINGERPRINT, RLock::<u32>::FINGERPRINT);
        assert_eq!(Lock::<u32>::NAME, "Lock");
        assert_eq!(RLock::<u32>::NAME, "RLock");
    }
}
