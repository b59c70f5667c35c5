//! The raw lock trait, [`RawMutex`], and its two implementations:
//! [`RawLock`] and [`RawRLock`], lock words without data, usable over any
//! suitably sized and aligned bytes of a mapping.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::word::{Deadline, Word};
use super::LockError;
use crate::error::{Error, Result};
use crate::mmap::MappedMemory;
use crate::process::current_identity;
use crate::shared::{Fingerprint, Shared};

/// The version of the lock word's protocol and layout, part of every lock
/// fingerprint: 2 is the 64-bit state naming the owner by tag and tid, and
/// the owner record beside it.
const PROTOCOL: u64 = 2;

/// A raw process-shared lock: what [`GenericLock`](super::GenericLock)
/// is built on (lock_api's `RawMutex`, with owner-death results).
///
/// `lock`, `try_lock` and `lock_timeout` return `Ok(())` or
/// `Err(OwnerDied(()))` when the calling thread **holds** the lock
/// afterwards, any other `Err` when it does not.
///
/// # Safety
/// Implementations must guarantee mutual exclusion: while a thread holds
/// the lock (from a holding acquisition until its matching `unlock` or
/// `make_not_recoverable`), no other thread, in any process that follows
/// the protocol, completes a holding acquisition. `INIT` must be an
/// unlocked lock. A holder that is a thread of this process and exited
/// without unlocking must never let another thread of this process hold
/// the lock (it may have leaked references to the data).
pub unsafe trait RawMutex: Shared {
    /// An unlocked lock.
    const INIT: Self;
    /// The name of the typed lock over this raw lock (`"Lock"`,
    /// `"RLock"`), used in its fingerprint.
    const TYPED_NAME: &'static str;

    /// Blocks until the calling thread holds the lock.
    ///
    /// # Errors
    /// [`LockError::OwnerDied`] (the caller holds the lock, inconsistent),
    /// [`LockError::Abandoned`], [`LockError::NotRecoverable`],
    /// [`LockError::WouldDeadlock`], [`LockError::RecursionLimit`].
    fn lock(&self) -> Result<(), LockError<()>>;

    /// Takes the lock if no live thread holds it; never sleeps.
    ///
    /// # Errors
    /// [`LockError::WouldBlock`]; otherwise as [`lock`](Self::lock).
    fn try_lock(&self) -> Result<(), LockError<()>>;

    /// As [`lock`](Self::lock), giving up after `timeout`.
    ///
    /// # Errors
    /// [`LockError::TimedOut`]; otherwise as [`lock`](Self::lock).
    fn lock_timeout(&self, timeout: Duration) -> Result<(), LockError<()>>;

    /// Releases one acquisition. A lock still marked inconsistent stays
    /// so: the next locker gets [`LockError::OwnerDied`].
    ///
    /// # Safety
    /// The calling thread must hold the lock (a holding acquisition not
    /// yet released). Releasing another thread's lock breaks the mutual
    /// exclusion its data relies on.
    unsafe fn unlock(&self);

    /// Declares the protected data repaired after `OwnerDied`.
    ///
    /// # Safety
    /// The calling thread must hold the lock.
    unsafe fn mark_consistent(&self);

    /// Gives up: releases the lock and makes it
    /// [`NotRecoverable`](LockError::NotRecoverable) for every process,
    /// for good. For a recursive lock this releases every level.
    ///
    /// # Safety
    /// The calling thread must hold the lock.
    unsafe fn make_not_recoverable(&self);

    /// Whether any thread (live or dead) holds the lock right now; only a
    /// hint, the answer may change at once.
    fn is_locked(&self) -> bool;

    /// Whether the calling thread holds the lock.
    fn is_held_by_current_thread(&self) -> bool;

    /// Whether the lock is marked inconsistent (an owner died and nobody
    /// repaired the data since). A hint, except for the holder.
    fn is_inconsistent(&self) -> bool;
}

/// A [`RawMutex`] whose holder is the only thread with access, and which
/// the holding thread cannot acquire again: its guards may hand out
/// `&mut T`.
///
/// # Safety
/// A thread that holds the lock never completes a second holding
/// acquisition of it (it gets [`LockError::WouldDeadlock`] or waits).
pub unsafe trait RawMutexExclusive: RawMutex {}

/// Views the start of an exclusively borrowed buffer as a lock.
fn from_mut_bytes<L: Shared>(bytes: &mut [u8]) -> Result<&L> {
    let size = std::mem::size_of::<L>();
    let align = std::mem::align_of::<L>();
    if bytes.len() < size {
        return Err(Error::OutOfBounds {
            offset: 0,
            len: size,
            size: bytes.len(),
        });
    }
    let p = bytes.as_mut_ptr();
    if p as usize % align != 0 {
        return Err(Error::Misaligned {
            offset: p as usize,
            align,
        });
    }
    // SAFETY: validity: every bit pattern is a valid L (`Shared`), and `p`
    // is valid for `size` bytes and aligned for L (checked above).
    // Aliasing and lifetime: the bytes are exclusively borrowed for the
    // returned lifetime, so nothing else reads or writes them meanwhile; the
    // provenance of `as_mut_ptr` allows the writes the atomics make. Type:
    // the caller asks for these bytes to be an L, which they are from now on.
    Ok(unsafe { &*p.cast::<L>() })
}

/// A process-shared mutual exclusion lock without data: a 64-bit futex
/// state and its owner record (32 bytes, aligned to 8).
///
/// The raw API leaves pairing `lock` with `unlock` to the caller; prefer
/// [`Lock<T>`](super::Lock), whose guards do it. Its methods come from
/// [`RawMutex`]; see the [module docs](super) for owner death.
///
/// ```
/// use shmutils::{MapFlags, MapProtections, MappedMemory, RawLock, RawMutex};
/// let m = MappedMemory::new(None, 4096, MapProtections::READ_WRITE, MapFlags::SHARED, None)?;
/// let lock = RawLock::from_mapping(&m, 64)?;   // zeroed bytes are an unlocked lock
/// lock.lock()?;
/// assert!(lock.try_lock().is_err());
/// // SAFETY: this thread holds the lock.
/// unsafe { lock.unlock() };
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
#[repr(C)]
pub struct RawLock {
    word: Word,
}

impl RawLock {
    /// An unlocked lock (all zero bytes are one too).
    pub const fn new() -> RawLock {
        RawLock { word: Word::new() }
    }

    /// The lock at `offset` of a mapping: the seed's "RawLock over a
    /// buffer". Same as `m.get::<RawLock>(offset)`.
    ///
    /// Why not `from_bytes(&[u8])`: a `&[u8]` promises that the bytes do not
    /// change while it lives, and a lock changes them; turning one into a
    /// lock would be undefined behaviour. A mapping hands out only checked
    /// `Shared` references, which are allowed to change.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`] (32 bytes, aligned to
    /// 8), [`Error::ReadOnly`] for a mapping that is not read-write,
    /// [`Error::TypeMismatch`] when the mapping placed another type on those
    /// bytes (see [`MappedMemory::get`]).
    pub fn from_mapping(m: &MappedMemory, offset: usize) -> Result<&RawLock> {
        m.get(offset)
    }

    /// The lock in the first bytes of an exclusively borrowed buffer (for
    /// memory that is not a [`MappedMemory`]). The bytes are used as they
    /// are: zero is unlocked.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if the buffer is shorter than 32 bytes,
    /// [`Error::Misaligned`] if it is not aligned to 8.
    pub fn from_mut_bytes(bytes: &mut [u8]) -> Result<&RawLock> {
        from_mut_bytes(bytes)
    }

    #[cfg(test)]
    pub(crate) fn word(&self) -> &Word {
        &self.word
    }
}

// SAFETY: mutual exclusion is the word's protocol (`word.rs`): a holding
// acquisition is a CAS from an unlocked state or from the exact state of a
// dead owner of another process, and every thread writes its own locked
// value (tag and tid), so a CAS from an examined state fails once another
// thread took the lock; a dead owner of this process yields `Abandoned`
// without taking the word; INIT is zero.
unsafe impl RawMutex for RawLock {
    const INIT: Self = RawLock::new();
    const TYPED_NAME: &'static str = "Lock";

    #[inline(always)]
    fn lock(&self) -> Result<(), LockError<()>> {
        self.word.lock(Deadline::Never)
    }

    #[inline]
    fn try_lock(&self) -> Result<(), LockError<()>> {
        self.word.lock(Deadline::Now)
    }

    fn lock_timeout(&self, timeout: Duration) -> Result<(), LockError<()>> {
        self.word.lock(Deadline::after(timeout))
    }

    #[inline(always)]
    unsafe fn unlock(&self) {
        self.word.unlock();
    }

    unsafe fn mark_consistent(&self) {
        self.word.mark_consistent();
    }

    unsafe fn make_not_recoverable(&self) {
        self.word.give_up();
    }

    fn is_locked(&self) -> bool {
        self.word.load() & super::word::TID_MASK != 0
    }

    fn is_held_by_current_thread(&self) -> bool {
        self.word.held_by_current_thread()
    }

    fn is_inconsistent(&self) -> bool {
        self.word.is_inconsistent()
    }
}

// SAFETY: the word refuses a second acquisition by its holder
// (`WouldDeadlock`), whose identity it records exactly (tid, pid, start
// time, serial).
unsafe impl RawMutexExclusive for RawLock {}

// SAFETY: four AtomicU64, valid for every bit pattern (garbage reads as a
// dead owner, a live one, or "not recoverable"), no addresses, mutated
// atomically.
unsafe impl Shared for RawLock {
    const NAME: &'static str = "RawLock";
    const FINGERPRINT: u64 = Fingerprint::new("RawLock")
        .u64(PROTOCOL)
        .u64(std::mem::size_of::<RawLock>() as u64)
        .finish();
}

/// A process-shared recursive lock without data: the owning thread may
/// take it again; it is released when every `lock` has had its `unlock`.
///
/// 40 bytes: the lock word and the recursion count, which only the owner
/// touches and which is trusted only when the word names the caller, by
/// its full identity (a thread that inherited a dead owner's tid is not
/// the owner).
///
/// ```
/// use shmutils::{RawMutex, RawRLock};
/// let lock = RawRLock::new();
/// lock.lock()?;
/// lock.lock()?;
/// assert_eq!(lock.depth(), 2);
/// // SAFETY: this thread holds the lock twice.
/// unsafe { lock.unlock(); lock.unlock() };
/// assert!(!lock.is_locked());
/// # Ok::<(), shmutils::LockError<()>>(())
/// ```
#[derive(Debug, Default)]
#[repr(C)]
pub struct RawRLock {
    word: Word,
    count: AtomicU32,
    _pad: u32,
}

impl RawRLock {
    /// An unlocked lock (all zero bytes are one too).
    pub const fn new() -> RawRLock {
        RawRLock {
            word: Word::new(),
            count: AtomicU32::new(0),
            _pad: 0,
        }
    }

    /// The lock at `offset` of a mapping; see [`RawLock::from_mapping`].
    ///
    /// # Errors
    /// As [`RawLock::from_mapping`] (40 bytes, aligned to 8).
    pub fn from_mapping(m: &MappedMemory, offset: usize) -> Result<&RawRLock> {
        m.get(offset)
    }

    /// The lock in the first bytes of an exclusively borrowed buffer; see
    /// [`RawLock::from_mut_bytes`].
    ///
    /// # Errors
    /// As [`RawLock::from_mut_bytes`] (40 bytes, aligned to 8).
    pub fn from_mut_bytes(bytes: &mut [u8]) -> Result<&RawRLock> {
        from_mut_bytes(bytes)
    }

    /// How many times the calling thread holds the lock (0 if it does not).
    pub fn depth(&self) -> u32 {
        if self.word.held_by_current_thread() {
            self.count.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    fn acquire(&self, deadline: Deadline) -> Result<(), LockError<()>> {
        if self.word.held_by(&current_identity()) {
            // Ours (identity and all): count one more level. Relaxed: only
            // the holder touches the count.
            return match self.count.load(Ordering::Relaxed) {
                u32::MAX => Err(LockError::RecursionLimit),
                // 0 while held is scribbled garbage: count this level and
                // the one the scribble lost.
                n => {
                    self.count.store(n.max(1) + 1, Ordering::Relaxed);
                    Ok(())
                }
            };
        }
        let r = self.word.lock(deadline);
        if matches!(r, Ok(()) | Err(LockError::OwnerDied(()))) {
            // We hold the word: the count is ours to set, whatever it held.
            self.count.store(1, Ordering::Relaxed);
        }
        r
    }
}

// SAFETY: as for RawLock (the same word); re-entry happens only when the
// word names the caller by its full identity, so no other thread shares
// the holder's levels.
unsafe impl RawMutex for RawRLock {
    const INIT: Self = RawRLock::new();
    const TYPED_NAME: &'static str = "RLock";

    /// At once if the calling thread already holds the lock (also while it
    /// is inconsistent: the thread already heard `OwnerDied`).
    fn lock(&self) -> Result<(), LockError<()>> {
        self.acquire(Deadline::Never)
    }

    fn try_lock(&self) -> Result<(), LockError<()>> {
        self.acquire(Deadline::Now)
    }

    fn lock_timeout(&self, timeout: Duration) -> Result<(), LockError<()>> {
        self.acquire(Deadline::after(timeout))
    }

    /// Undoes one `lock`; the last one releases the lock. Does nothing if
    /// the lock is no longer held (an inner guard gave it up).
    unsafe fn unlock(&self) {
        if !self.word.held_by_current_thread() {
            return;
        }
        let n = self.count.load(Ordering::Relaxed);
        if n > 1 {
            self.count.store(n - 1, Ordering::Relaxed);
        } else {
            self.count.store(0, Ordering::Relaxed);
            self.word.unlock();
        }
    }

    unsafe fn mark_consistent(&self) {
        self.word.mark_consistent();
    }

    unsafe fn make_not_recoverable(&self) {
        self.count.store(0, Ordering::Relaxed);
        self.word.give_up();
    }

    fn is_locked(&self) -> bool {
        self.word.load() & super::word::TID_MASK != 0
    }

    fn is_held_by_current_thread(&self) -> bool {
        self.word.held_by_current_thread()
    }

    fn is_inconsistent(&self) -> bool {
        self.word.is_inconsistent()
    }
}

// SAFETY: a lock word, a count and padding, all integers valid for every
// bit pattern (the count is trusted only when the word names the caller),
// no addresses, mutated atomically.
unsafe impl Shared for RawRLock {
    const NAME: &'static str = "RawRLock";
    const FINGERPRINT: u64 = Fingerprint::new("RawRLock")
        .u64(PROTOCOL)
        .u64(std::mem::size_of::<RawRLock>() as u64)
        .finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmap::{MapFlags, MapProtections};

    #[test]
    fn placement_checks_size_and_alignment() {
        let m = MappedMemory::new(
            None,
            4096,
            MapProtections::READ_WRITE,
            MapFlags::SHARED,
            None,
        )
        .unwrap();
        assert!(RawLock::from_mapping(&m, 4096 - 32).is_ok());
        assert!(matches!(
            RawLock::from_mapping(&m, 4060),
            Err(Error::Misaligned { .. })
        ));
        assert!(matches!(
            RawRLock::from_mapping(&m, 4096 - 32),
            Err(Error::OutOfBounds { .. })
        ));
        let mut buf = [0u64; 8];
        // SAFETY: viewing a u64 array as bytes; u8 has no alignment needs,
        // and `buf` is not used otherwise while `bytes` lives.
        let bytes: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast(), 64) };
        assert!(matches!(
            RawLock::from_mut_bytes(&mut bytes[4..]),
            Err(Error::Misaligned { .. })
        ));
        assert!(matches!(
            RawRLock::from_mut_bytes(&mut bytes[40..]),
            Err(Error::OutOfBounds { .. })
        ));
        let l = RawLock::from_mut_bytes(&mut bytes[8..]).unwrap();
        l.lock().unwrap();
        assert!(l.is_held_by_current_thread());
        // SAFETY: held by this thread.
        unsafe { l.unlock() };
    }

    #[test]
    fn rlock_counts_depth() {
        let l = RawRLock::new();
        for d in 1..=100 {
            l.lock().unwrap();
            assert_eq!(l.depth(), d);
        }
        for d in (0..100).rev() {
            // SAFETY: held by this thread.
            unsafe { l.unlock() };
            assert_eq!(l.depth(), d);
        }
        assert!(!l.is_locked());
    }

    #[test]
    fn rlock_recursion_limit() {
        let l = RawRLock::new();
        l.lock().unwrap();
        l.count.store(u32::MAX, Ordering::Relaxed);
        assert_eq!(l.try_lock(), Err(LockError::RecursionLimit));
        l.count.store(1, Ordering::Relaxed);
        // SAFETY: held by this thread.
        unsafe { l.unlock() };
    }

    #[test]
    fn rlock_given_up_at_depth_2_ignores_the_outer_unlock() {
        let l = RawRLock::new();
        l.lock().unwrap();
        l.lock().unwrap();
        // SAFETY: held by this thread.
        unsafe { l.make_not_recoverable() };
        assert_eq!(l.depth(), 0);
        // SAFETY: the outer level's unlock, as its guard would do: a no-op.
        unsafe { l.unlock() };
        assert_eq!(l.lock(), Err(LockError::NotRecoverable));
    }

    #[test]
    fn sizes() {
        assert_eq!(std::mem::size_of::<RawLock>(), 32);
        assert_eq!(std::mem::size_of::<RawRLock>(), 40);
        assert_ne!(RawLock::FINGERPRINT, RawRLock::FINGERPRINT);
    }
}
