//! [`RawLock`] and [`RawRLock`]: lock words without data, usable over any
//! suitably sized and aligned bytes of a mapping.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::word::{current_tid, Deadline, Word};
use super::LockError;
use crate::error::{Error, Result};
use crate::mmap::MappedMemory;
use crate::shared::{Fingerprint, Shared};

/// A process-shared mutual exclusion lock without data: one futex word.
///
/// The raw API leaves pairing `lock` with `unlock` to the caller; prefer
/// [`Lock<T>`](super::Lock), whose guards do it. `Err(OwnerDied(()))` from
/// any acquisition means the caller **holds** the lock (taken from a dead
/// owner); see the [module docs](super).
///
/// ```
/// use shmutils::{MapFlags, MapProtections, MappedMemory, RawLock};
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
    // SAFETY: `p` is valid for `size` bytes, aligned for L, and exclusively
    // borrowed for the returned lifetime (its provenance allows writes, which
    // the atomics need); every bit pattern is a valid L (Shared).
    Ok(unsafe { &*p.cast::<L>() })
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
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`] (4 bytes, aligned to 4),
    /// [`Error::ReadOnly`] for a mapping that is not read-write,
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
    /// [`Error::OutOfBounds`] if the buffer is shorter than 4 bytes,
    /// [`Error::Misaligned`] if it is not aligned to 4.
    pub fn from_mut_bytes(bytes: &mut [u8]) -> Result<&RawLock> {
        from_mut_bytes(bytes)
    }

    /// Blocks until the calling thread holds the lock.
    ///
    /// # Errors
    /// [`LockError::OwnerDied`] (the caller holds the lock),
    /// [`LockError::NotRecoverable`], [`LockError::WouldDeadlock`].
    #[inline]
    pub fn lock(&self) -> Result<(), LockError<()>> {
        self.word.lock(current_tid(), Deadline::Never)
    }

    /// Takes the lock if nobody holds it (or its holder died).
    ///
    /// # Errors
    /// [`LockError::WouldBlock`] if a live thread holds it; otherwise as
    /// [`lock`](Self::lock).
    #[inline]
    pub fn try_lock(&self) -> Result<(), LockError<()>> {
        self.word.lock(current_tid(), Deadline::Now)
    }

    /// As [`lock`](Self::lock), giving up after `timeout`.
    ///
    /// # Errors
    /// [`LockError::TimedOut`]; otherwise as [`lock`](Self::lock).
    pub fn lock_timeout(&self, timeout: Duration) -> Result<(), LockError<()>> {
        let deadline = Instant::now()
            .checked_add(timeout)
            .map_or(Deadline::Never, Deadline::At);
        self.word.lock(current_tid(), deadline)
    }

    /// Releases the lock. If it was taken from a dead owner and not marked
    /// consistent, it becomes not recoverable instead.
    ///
    /// # Safety
    /// The calling thread must hold the lock (a successful or `OwnerDied`
    /// acquisition not yet released). Releasing another thread's lock breaks
    /// the mutual exclusion its data relies on.
    #[inline]
    pub unsafe fn unlock(&self) {
        self.word.unlock();
    }

    /// Unlocks if the calling thread holds the lock, else does nothing
    /// (what a guard's drop needs: see `LockGuard`'s `Drop`).
    #[inline]
    pub(crate) fn unlock_if_held(&self) {
        self.word.unlock_if_held_by(current_tid());
    }

    /// Declares the data repaired after `OwnerDied`.
    ///
    /// # Safety
    /// The calling thread must hold the lock.
    pub unsafe fn mark_consistent(&self) {
        self.word.mark_consistent();
    }

    /// Whether any thread (live or dead) holds the lock right now; only a
    /// hint, the answer may change at once.
    pub fn is_locked(&self) -> bool {
        self.word.load() != 0
    }

    /// Whether the calling thread holds the lock.
    pub fn is_held_by_current_thread(&self) -> bool {
        self.word.held_by(current_tid())
    }

    pub(crate) fn word(&self) -> &Word {
        &self.word
    }
}

// SAFETY: one AtomicU32, valid for every bit pattern (garbage reads as a
// dead owner or "not recoverable"), no addresses, mutated atomically.
unsafe impl Shared for RawLock {
    const NAME: &'static str = "RawLock";
    const FINGERPRINT: u64 = Fingerprint::new("RawLock")
        .u64(1) // word protocol version
        .u64(std::mem::size_of::<RawLock>() as u64)
        .finish();
}

/// A process-shared recursive lock without data: the owning thread may
/// take it again; it is released when every `lock` has had its `unlock`.
///
/// 8 bytes: the lock word and the recursion count, which only the owner
/// touches and which is trusted only when the word names the caller.
///
/// ```
/// use shmutils::RawRLock;
/// let lock = RawRLock::new();
/// lock.lock()?;
/// lock.lock()?;
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
}

impl RawRLock {
    /// An unlocked lock (all zero bytes are one too).
    pub const fn new() -> RawRLock {
        RawRLock {
            word: Word::new(),
            count: AtomicU32::new(0),
        }
    }

    /// The lock at `offset` of a mapping; see [`RawLock::from_mapping`].
    ///
    /// # Errors
    /// As [`RawLock::from_mapping`] (8 bytes, aligned to 4).
    pub fn from_mapping(m: &MappedMemory, offset: usize) -> Result<&RawRLock> {
        m.get(offset)
    }

    /// The lock in the first bytes of an exclusively borrowed buffer; see
    /// [`RawLock::from_mut_bytes`].
    ///
    /// # Errors
    /// As [`RawLock::from_mut_bytes`] (8 bytes, aligned to 4).
    pub fn from_mut_bytes(bytes: &mut [u8]) -> Result<&RawRLock> {
        from_mut_bytes(bytes)
    }

    fn acquire(&self, deadline: Deadline) -> Result<(), LockError<()>> {
        let me = current_tid();
        if self.word.held_by(me) {
            return self.reenter();
        }
        let r = self.word.lock(me, deadline);
        if matches!(r, Ok(()) | Err(LockError::OwnerDied(()))) {
            // We hold the word: the count is ours to set, whatever it held.
            self.count.store(1, Ordering::Relaxed);
        }
        r
    }

    /// The word names the caller: count one more level.
    fn reenter(&self) -> Result<(), LockError<()>> {
        match self.count.load(Ordering::Relaxed) {
            0 => {
                // Held by our tid with no count: a dead thread with our
                // recycled tid, or garbage. Treat as a dead owner.
                self.count.store(1, Ordering::Relaxed);
                self.word.set_inconsistent();
                Err(LockError::OwnerDied(()))
            }
            u32::MAX => Err(LockError::RecursionLimit),
            n => {
                self.count.store(n + 1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Blocks until the calling thread holds the lock (at once if it
    /// already does). A re-entry while the lock is inconsistent succeeds:
    /// the thread already heard `OwnerDied`.
    ///
    /// # Errors
    /// [`LockError::OwnerDied`] (the caller holds the lock at depth 1),
    /// [`LockError::NotRecoverable`], [`LockError::RecursionLimit`].
    pub fn lock(&self) -> Result<(), LockError<()>> {
        self.acquire(Deadline::Never)
    }

    /// Takes the lock if it is free, already the caller's, or its holder
    /// died.
    ///
    /// # Errors
    /// [`LockError::WouldBlock`]; otherwise as [`lock`](Self::lock).
    pub fn try_lock(&self) -> Result<(), LockError<()>> {
        self.acquire(Deadline::Now)
    }

    /// As [`lock`](Self::lock), giving up after `timeout`.
    ///
    /// # Errors
    /// [`LockError::TimedOut`]; otherwise as [`lock`](Self::lock).
    pub fn lock_timeout(&self, timeout: Duration) -> Result<(), LockError<()>> {
        let deadline = Instant::now()
            .checked_add(timeout)
            .map_or(Deadline::Never, Deadline::At);
        self.acquire(deadline)
    }

    /// Undoes one `lock`; the last one releases the lock (making it not
    /// recoverable if it was taken from a dead owner and not repaired).
    ///
    /// # Safety
    /// The calling thread must hold the lock.
    pub unsafe fn unlock(&self) {
        let n = self.count.load(Ordering::Relaxed);
        if n > 1 {
            self.count.store(n - 1, Ordering::Relaxed);
        } else {
            self.count.store(0, Ordering::Relaxed);
            self.word.unlock();
        }
    }

    /// Declares the data repaired after `OwnerDied`.
    ///
    /// # Safety
    /// The calling thread must hold the lock.
    pub unsafe fn mark_consistent(&self) {
        self.word.mark_consistent();
    }

    /// Whether any thread holds the lock right now (a hint).
    pub fn is_locked(&self) -> bool {
        self.word.load() != 0
    }

    /// Whether the calling thread holds the lock.
    pub fn is_held_by_current_thread(&self) -> bool {
        self.word.held_by(current_tid())
    }

    /// How many times the calling thread holds the lock (0 if it does not).
    pub fn depth(&self) -> u32 {
        if self.is_held_by_current_thread() {
            self.count.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    pub(crate) fn word(&self) -> &Word {
        &self.word
    }
}

// SAFETY: two AtomicU32 (word and count), valid for every bit pattern (the
// count is trusted only when the word names the caller), no addresses.
unsafe impl Shared for RawRLock {
    const NAME: &'static str = "RawRLock";
    const FINGERPRINT: u64 = Fingerprint::new("RawRLock")
        .u64(1)
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
        assert!(RawLock::from_mapping(&m, 4092).is_ok());
        assert!(matches!(
            RawLock::from_mapping(&m, 4090),
            Err(Error::Misaligned { .. })
        ));
        assert!(matches!(
            RawRLock::from_mapping(&m, 4092),
            Err(Error::OutOfBounds { .. })
        ));
        let mut buf = [0u32; 4];
        // SAFETY: viewing a u32 array as bytes; u8 has no alignment needs.
        let bytes: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast(), 16) };
        assert!(matches!(
            RawLock::from_mut_bytes(&mut bytes[1..]),
            Err(Error::Misaligned { .. })
        ));
        assert!(matches!(
            RawRLock::from_mut_bytes(&mut bytes[12..]),
            Err(Error::OutOfBounds { .. })
        ));
        let l = RawLock::from_mut_bytes(&mut bytes[4..]).unwrap();
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
    fn rlock_owned_with_zero_count_is_an_owner_death() {
        let l = RawRLock::new();
        l.word.atomic().store(current_tid(), Ordering::Relaxed);
        assert_eq!(l.lock(), Err(LockError::OwnerDied(())));
        assert_eq!(l.depth(), 1);
        // SAFETY: held by this thread.
        unsafe {
            l.mark_consistent();
            l.unlock();
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
}
