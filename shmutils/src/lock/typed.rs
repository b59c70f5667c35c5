//! [`Lock<T>`] and [`RLock<T>`]: a raw lock and the data it protects, side
//! by side in shared memory, with guards that unlock on drop.

use std::cell::UnsafeCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use super::raw::{RawLock, RawRLock};
use super::{LockError, LockResult};
use crate::shared::{Fingerprint, Shared};

/// A process-shared mutex that owns its data (`#[repr(C)]`: the lock word,
/// then the value).
///
/// Place it in a mapping with [`MappedMemory::init`](crate::MappedMemory::init)
/// and reach it from other processes with
/// [`MappedMemory::get`](crate::MappedMemory::get). If a holder dies, the
/// next `lock` returns [`LockError::OwnerDied`] with the guard; see the
/// [module docs](super).
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
#[repr(C)]
pub struct Lock<T> {
    raw: RawLock,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `T` to one thread at a time, so it
// may be shared between threads whenever `T` may be sent between them.
unsafe impl<T: Send> Sync for Lock<T> {}
// SAFETY: moving the lock moves the value.
unsafe impl<T: Send> Send for Lock<T> {}

impl<T> Lock<T> {
    /// An unlocked lock holding `value`.
    pub const fn new(value: T) -> Lock<T> {
        Lock {
            raw: RawLock::new(),
            data: UnsafeCell::new(value),
        }
    }

    fn guard(&self) -> LockGuard<'_, T> {
        LockGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }

    fn wrap(&self, r: Result<(), LockError<()>>) -> LockResult<LockGuard<'_, T>> {
        match r {
            Ok(()) => Ok(self.guard()),
            Err(e) => Err(e.map(|()| self.guard())),
        }
    }

    /// Blocks until the calling thread holds the lock.
    ///
    /// # Errors
    /// [`LockError::OwnerDied`] with the guard (repair, then
    /// [`LockGuard::mark_consistent`]), [`LockError::NotRecoverable`],
    /// [`LockError::WouldDeadlock`] if this thread holds it already.
    #[inline]
    pub fn lock(&self) -> LockResult<LockGuard<'_, T>> {
        self.wrap(self.raw.lock())
    }

    /// Takes the lock if no live thread holds it.
    ///
    /// # Errors
    /// [`LockError::WouldBlock`]; otherwise as [`lock`](Self::lock).
    #[inline]
    pub fn try_lock(&self) -> LockResult<LockGuard<'_, T>> {
        self.wrap(self.raw.try_lock())
    }

    /// As [`lock`](Self::lock), giving up after `timeout`.
    ///
    /// # Errors
    /// [`LockError::TimedOut`]; otherwise as [`lock`](Self::lock).
    pub fn lock_timeout(&self, timeout: Duration) -> LockResult<LockGuard<'_, T>> {
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
    pub fn raw(&self) -> &RawLock {
        &self.raw
    }
}

impl<T: Default> Default for Lock<T> {
    fn default() -> Self {
        Lock::new(T::default())
    }
}

impl<T> fmt::Debug for Lock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("locked", &self.is_locked())
            .finish_non_exhaustive()
    }
}

// SAFETY: a RawLock (every bit pattern valid) followed by a `T: Shared`
// (every bit pattern valid, no addresses) and padding; all mutation goes
// through the atomic word or under the lock.
unsafe impl<T: Shared> Shared for Lock<T> {
    const NAME: &'static str = "Lock";
    const FINGERPRINT: u64 = Fingerprint::new("Lock")
        .u64(RawLock::FINGERPRINT)
        .u64(T::FINGERPRINT)
        .finish();
}

/// Access to a [`Lock`]'s value; unlocks when dropped. Not `Send`: the
/// thread that locked must unlock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a, T> {
    pub(super) lock: &'a Lock<T>,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: sharing the guard between threads shares `&T` only.
unsafe impl<T: Sync> Sync for LockGuard<'_, T> {}

impl<T> LockGuard<'_, T> {
    /// Declares the data repaired after [`LockError::OwnerDied`]; without
    /// it, dropping the guard makes the lock not recoverable. A no-op on a
    /// consistent lock.
    pub fn mark_consistent(&self) {
        self.lock.raw.word().mark_consistent();
    }

    /// Whether the lock still needs `mark_consistent` (it was taken from a
    /// dead owner).
    pub fn is_inconsistent(&self) -> bool {
        self.lock.raw.word().is_inconsistent()
    }
}

impl<T> Deref for LockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves this thread holds the lock, so no other
        // reference to the value is in use.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for LockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only one.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for LockGuard<'_, T> {
    /// Unlocks. A copy of the guard inherited by a forked child does not
    /// hold the lock there (the child's thread has another id), so
    /// dropping it in the child leaves the parent's lock alone.
    #[inline]
    fn drop(&mut self) {
        self.lock.raw.unlock_if_held();
    }
}

impl<T: fmt::Debug> fmt::Debug for LockGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: fmt::Display> fmt::Display for LockGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}

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
/// # Ok::<(), shmutils::Error>(())
/// ```
#[repr(C)]
pub struct RLock<T> {
    raw: RawRLock,
    data: UnsafeCell<T>,
}

// SAFETY: the lock gives `&T` to one thread at a time (possibly several
// guards of that thread), so `T` must be Send (it is used from whichever
// thread holds the lock) and Sync (several guards may share it).
unsafe impl<T: Send + Sync> Sync for RLock<T> {}
// SAFETY: moving the lock moves the value.
unsafe impl<T: Send> Send for RLock<T> {}

impl<T> RLock<T> {
    /// An unlocked lock holding `value`.
    pub const fn new(value: T) -> RLock<T> {
        RLock {
            raw: RawRLock::new(),
            data: UnsafeCell::new(value),
        }
    }

    fn guard(&self) -> RLockGuard<'_, T> {
        RLockGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }

    fn wrap(&self, r: Result<(), LockError<()>>) -> LockResult<RLockGuard<'_, T>> {
        match r {
            Ok(()) => Ok(self.guard()),
            Err(e) => Err(e.map(|()| self.guard())),
        }
    }

    /// Blocks until the calling thread holds the lock (at once if it
    /// already does).
    ///
    /// # Errors
    /// [`LockError::OwnerDied`] with the guard, [`LockError::NotRecoverable`],
    /// [`LockError::RecursionLimit`].
    pub fn lock(&self) -> LockResult<RLockGuard<'_, T>> {
        self.wrap(self.raw.lock())
    }

    /// Takes the lock if it is free or already the caller's.
    ///
    /// # Errors
    /// [`LockError::WouldBlock`]; otherwise as [`lock`](Self::lock).
    pub fn try_lock(&self) -> LockResult<RLockGuard<'_, T>> {
        self.wrap(self.raw.try_lock())
    }

    /// As [`lock`](Self::lock), giving up after `timeout`.
    ///
    /// # Errors
    /// [`LockError::TimedOut`]; otherwise as [`lock`](Self::lock).
    pub fn lock_timeout(&self, timeout: Duration) -> LockResult<RLockGuard<'_, T>> {
        self.wrap(self.raw.lock_timeout(timeout))
    }

    /// Whether any thread holds the lock right now (a hint).
    pub fn is_locked(&self) -> bool {
        self.raw.is_locked()
    }

    /// How many guards the calling thread holds.
    pub fn depth(&self) -> u32 {
        self.raw.depth()
    }

    /// The value, through exclusive access.
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Consumes the lock, returning the value.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }

    /// The underlying raw lock.
    pub fn raw(&self) -> &RawRLock {
        &self.raw
    }
}

impl<T: Default> Default for RLock<T> {
    fn default() -> Self {
        RLock::new(T::default())
    }
}

impl<T> fmt::Debug for RLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock")
            .field("locked", &self.is_locked())
            .finish_non_exhaustive()
    }
}

// SAFETY: as for Lock<T>: a RawRLock and a `T: Shared`, both valid for
// every bit pattern and free of addresses.
unsafe impl<T: Shared> Shared for RLock<T> {
    const NAME: &'static str = "RLock";
    const FINGERPRINT: u64 = Fingerprint::new("RLock")
        .u64(RawRLock::FINGERPRINT)
        .u64(T::FINGERPRINT)
        .finish();
}

/// Shared access to an [`RLock`]'s value; undoes one `lock` when dropped.
/// `Deref` only: the same thread may hold several.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RLockGuard<'a, T> {
    lock: &'a RLock<T>,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: sharing the guard between threads shares `&T` only.
unsafe impl<T: Sync> Sync for RLockGuard<'_, T> {}

impl<T> RLockGuard<'_, T> {
    /// Declares the data repaired after [`LockError::OwnerDied`]; without
    /// it, the last guard's drop makes the lock not recoverable.
    pub fn mark_consistent(&self) {
        self.lock.raw.word().mark_consistent();
    }

    /// Whether the lock still needs `mark_consistent`.
    pub fn is_inconsistent(&self) -> bool {
        self.lock.raw.word().is_inconsistent()
    }
}

impl<T> Deref for RLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this thread holds the lock; only shared references to the
        // value are handed out while it does.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Drop for RLockGuard<'_, T> {
    /// Releases one level. In a forked child that inherited the guard, the
    /// lock is the parent's: dropping the copy there changes nothing.
    fn drop(&mut self) {
        if self.lock.raw.is_held_by_current_thread() {
            // SAFETY: the guard stands for one `lock` by this thread, which
            // holds the lock (checked just above).
            unsafe { self.lock.raw.unlock() };
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for RLockGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
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
    fn thread_exit_while_holding_is_an_owner_death() {
        let l = Lock::new(7u32);
        std::thread::scope(|s| {
            s.spawn(|| std::mem::forget(l.lock().unwrap()));
        });
        let g = l.lock().unwrap_err().into_guard().unwrap();
        assert!(g.is_inconsistent());
        assert_eq!(*g, 7);
        g.mark_consistent();
        drop(g);
        assert_eq!(*l.lock().unwrap(), 7);
    }

    #[test]
    fn fingerprints_follow_the_value_type() {
        assert_ne!(Lock::<u32>::FINGERPRINT, Lock::<u64>::FINGERPRINT);
        assert_ne!(Lock::<u32>::FINGERPRINT, RLock::<u32>::FINGERPRINT);
    }
}
