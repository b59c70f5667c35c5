//! The futex lock word that [`RawLock`](super::RawLock) and
//! [`RawRLock`](super::RawRLock) are built on: one `AtomicU32` in shared
//! memory, and the calling thread's cached kernel id.
//!
//! # States
//!
//! ```text
//!  bit 31    bit 30        bits 0..=29
//! +--------+--------------+-------------------------------------------+
//! |WAITERS | INCONSISTENT | owner's kernel thread id (tid)            |
//! +--------+--------------+-------------------------------------------+
//!
//! value                        meaning                        who moves it on
//! ---------------------------  -----------------------------  ---------------------------
//! 0                            unlocked                       lock: CAS 0 -> tid
//! tid                          locked, nobody sleeps          unlock: swap -> 0 (no wake)
//!                                                             waiter: CAS -> tid|WAITERS
//! tid|WAITERS                  locked, waiters may sleep      unlock: swap -> 0, wake 1
//! tid|INCONSISTENT[|WAITERS]   locked by a thread that got    mark_consistent: clear bit
//!                              OwnerDied, not repaired yet    unlock: -> NOT_RECOVERABLE
//! NOT_RECOVERABLE[|WAITERS]    a repairer gave up; final      nothing (re-initialise)
//! anything else (tid of a      owner died, or garbage         a waiter: CAS from the exact
//! dead thread, tid 0 with                                     observed value ->
//! flags, tid > PID_MAX_LIMIT)                                 me|INCONSISTENT|(WAITERS)
//! ```
//!
//! `NOT_RECOVERABLE` is `0x3fff_ffff`: a tid field no kernel hands out
//! (tids are at most `PID_MAX_LIMIT` = 2^22).
//!
//! Uncontended `lock` is one CAS and `unlock` one load plus one swap; the
//! futex is woken only when the swapped-out value had `WAITERS`. A waiter
//! spins briefly (with a doubling gap between polls), then sets `WAITERS`
//! and sleeps in `futex_wait` for at most [`SLICE`]; after a slice that ended without a wake it checks that
//! the owner still exists, so a dead owner is noticed within one slice
//! whether or not anyone was waiting when it died. A waiter that has slept
//! takes the lock with `WAITERS` set (it cannot know whether others still
//! sleep), which at worst costs one spare wake.

use std::hint::spin_loop;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::LockError;
pub(crate) use crate::process::current_tid;
use crate::sys;

/// Some thread may sleep in `futex_wait` on the word.
pub(crate) const WAITERS: u32 = 1 << 31;
/// The owner took the lock from a dead owner and has not repaired it yet.
pub(crate) const INCONSISTENT: u32 = 1 << 30;
/// The owner's tid.
pub(crate) const TID_MASK: u32 = INCONSISTENT - 1;
/// A repairer unlocked without `mark_consistent`: the lock is unusable.
pub(crate) const NOT_RECOVERABLE: u32 = TID_MASK;
/// Linux never hands out a tid above this (`PID_MAX_LIMIT`, 2^22).
const PID_MAX_LIMIT: u32 = 1 << 22;

/// How long a blocked waiter sleeps before it checks that the owner lives.
pub(crate) const SLICE: Duration = Duration::from_millis(5);
/// How many times a contended `lock` polls the word before it sleeps
/// (about 8 µs in all; measured in `benches/locks.rs`: polling every
/// iteration halves contended throughput, not spinning at all triples the
/// ping-pong round trip).
const SPIN_ROUNDS: u32 = 12;
/// The longest gap between two polls, in `spin_loop` hints (~30 ns each).
const MAX_GAP: u32 = 32;

/// What a lock word says, read without trusting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Unlocked,
    NotRecoverable,
    /// Owned by `tid` (which may be dead, or garbage).
    Owned(u32),
}

pub(crate) fn classify(w: u32) -> State {
    if w == 0 {
        State::Unlocked
    } else if w & !WAITERS == NOT_RECOVERABLE {
        State::NotRecoverable
    } else {
        State::Owned(w & TID_MASK)
    }
}

/// Whether `tid` cannot name any thread (0, or above `PID_MAX_LIMIT`).
pub(crate) fn impossible_owner(tid: u32) -> bool {
    tid == 0 || tid > PID_MAX_LIMIT
}

/// Whether the owner `tid` is gone: impossible, no such thread, or a
/// zombie that has exited but was not reaped yet.
fn owner_dead(tid: u32) -> bool {
    impossible_owner(tid) || !sys::thread_alive(tid) || sys::thread_is_zombie(tid)
}

/// When a contended acquisition gives up.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Deadline {
    /// `try_lock`: never sleep.
    Now,
    /// `lock`: never give up.
    Never,
    /// `lock_timeout`.
    At(Instant),
}

/// The lock word itself.
#[derive(Debug, Default)]
#[repr(transparent)]
pub(crate) struct Word(AtomicU32);

impl Word {
    pub(crate) const fn new() -> Word {
        Word(AtomicU32::new(0))
    }

    #[cfg(test)]
    pub(crate) fn atomic(&self) -> &AtomicU32 {
        &self.0
    }

    pub(crate) fn load(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// Whether `me` owns the word. Relaxed suffices: only `me` writes `me`
    /// into it, and a thread always sees its own latest write.
    pub(crate) fn held_by(&self, me: u32) -> bool {
        classify(self.load()) == State::Owned(me)
    }

    /// The uncontended path: one CAS.
    #[inline]
    pub(crate) fn try_fast(&self, me: u32) -> bool {
        // Acquire: pairs with the Release swap in `unlock`, so the previous
        // owner's critical section happens-before ours.
        self.0
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes the lock for `me`, or says why not. `Err(OwnerDied(()))` means
    /// `me` now holds it, marked inconsistent.
    #[inline]
    pub(crate) fn lock(&self, me: u32, deadline: Deadline) -> Result<(), LockError<()>> {
        if self.try_fast(me) {
            return Ok(());
        }
        self.lock_slow(me, deadline)
    }

    #[cold]
    fn lock_slow(&self, me: u32, deadline: Deadline) -> Result<(), LockError<()>> {
        if !matches!(deadline, Deadline::Now) {
            // Adaptive spin: the owner is probably running and about to
            // release; a futex sleep/wake round trip costs far more. The gap
            // between looks doubles (bounded), so a spinner steals the
            // owner's cache line only a few times.
            for round in 0..SPIN_ROUNDS {
                for _ in 0..(1u32 << round).min(MAX_GAP) {
                    spin_loop();
                }
                let w = self.load();
                if w == 0 && self.try_fast(me) {
                    return Ok(());
                }
                if w & WAITERS != 0 {
                    break; // others already sleep: join them
                }
            }
        }
        let mut slept = false;
        // try_lock looks at the owner at once; blocking calls after a slice.
        let mut check_owner = matches!(deadline, Deadline::Now);
        let mut attempts = 0u32;
        loop {
            attempts = attempts.wrapping_add(1);
            let w = self.load();
            let tid = match classify(w) {
                State::Unlocked => {
                    let new = if slept { me | WAITERS } else { me };
                    // Acquire: as in `try_fast`.
                    if self
                        .0
                        .compare_exchange(0, new, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        return Ok(());
                    }
                    if matches!(deadline, Deadline::Now) && attempts > 4 {
                        return Err(LockError::WouldBlock);
                    }
                    continue;
                }
                State::NotRecoverable => return Err(LockError::NotRecoverable),
                State::Owned(tid) => tid,
            };
            if tid == me {
                return Err(LockError::WouldDeadlock);
            }
            if impossible_owner(tid) || (check_owner && owner_dead(tid)) {
                if self.take_over(w, me) {
                    return Err(LockError::OwnerDied(()));
                }
                continue;
            }
            check_owner = attempts % 16 == 0; // also after many early wakes
            let timeout = match deadline {
                Deadline::Now => return Err(LockError::WouldBlock),
                Deadline::Never => SLICE,
                Deadline::At(at) => {
                    let now = Instant::now();
                    if now >= at {
                        if owner_dead(tid) && self.take_over(w, me) {
                            return Err(LockError::OwnerDied(()));
                        }
                        return Err(LockError::TimedOut);
                    }
                    SLICE.min(at - now)
                }
            };
            if w & WAITERS == 0
                && self
                    .0
                    .compare_exchange(w, w | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            slept = true;
            if sys::futex_wait(&self.0, w | WAITERS, Some(timeout)) == sys::FutexWait::TimedOut {
                check_owner = true;
            }
        }
    }

    /// Takes over from a dead owner: CAS from the exact value observed, so
    /// of several waiters that saw the same death only one wins. Keeps
    /// `WAITERS` so that our unlock wakes the others.
    fn take_over(&self, observed: u32, me: u32) -> bool {
        let new = me | INCONSISTENT | (observed & WAITERS);
        // Acquire: whatever the dead owner managed to publish is visible to
        // the repairer.
        self.0
            .compare_exchange(observed, new, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Marks the lock as taken over from a dead owner (the caller holds it).
    pub(crate) fn set_inconsistent(&self) {
        self.0.fetch_or(INCONSISTENT, Ordering::Relaxed);
    }

    /// Clears `INCONSISTENT` (the caller holds the lock). Relaxed: only the
    /// owner reads the bit, and `unlock`'s Release publishes it.
    pub(crate) fn mark_consistent(&self) {
        self.0.fetch_and(!INCONSISTENT, Ordering::Relaxed);
    }

    /// Whether the holder has not repaired the lock yet.
    pub(crate) fn is_inconsistent(&self) -> bool {
        let w = self.load();
        matches!(classify(w), State::Owned(_)) && w & INCONSISTENT != 0
    }

    /// Releases the lock if `me` holds it; does nothing otherwise (a guard
    /// inherited by a forked child, whose thread id differs). The same one
    /// load as `unlock`, plus a compare.
    #[inline]
    pub(crate) fn unlock_if_held_by(&self, me: u32) {
        let w = self.load();
        if classify(w) == State::Owned(me) {
            self.unlock_observed(w);
        }
    }

    /// Releases the lock held by the caller; an inconsistent lock becomes
    /// not recoverable instead.
    #[inline]
    pub(crate) fn unlock(&self) {
        self.unlock_observed(self.load());
    }

    /// `unlock`, given the word the owner just read.
    #[inline]
    fn unlock_observed(&self, w: u32) {
        // Only the owner sets or clears INCONSISTENT, and we own the word.
        if w & INCONSISTENT != 0 {
            return self.give_up();
        }
        // Release: publishes our critical section to the next Acquire CAS.
        if self.0.swap(0, Ordering::Release) & WAITERS != 0 {
            sys::futex_wake(&self.0, 1);
        }
    }

    /// The holder of an inconsistent lock released it without repairing:
    /// the lock is final, and every waiter must hear so.
    #[cold]
    fn give_up(&self) {
        // Release: orders our writes before the state every later `lock`
        // reads (they only report it, but keep it tidy).
        self.0.swap(NOT_RECOVERABLE, Ordering::Release);
        sys::futex_wake(&self.0, u32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(v: u32) -> Word {
        Word(AtomicU32::new(v))
    }

    #[test]
    fn classify_states() {
        assert_eq!(classify(0), State::Unlocked);
        assert_eq!(classify(42), State::Owned(42));
        assert_eq!(classify(42 | WAITERS | INCONSISTENT), State::Owned(42));
        assert_eq!(classify(NOT_RECOVERABLE), State::NotRecoverable);
        assert_eq!(classify(NOT_RECOVERABLE | WAITERS), State::NotRecoverable);
        // INCONSISTENT with an impossible tid is garbage, not "final".
        assert_eq!(
            classify(NOT_RECOVERABLE | INCONSISTENT),
            State::Owned(TID_MASK)
        );
        assert_eq!(classify(WAITERS), State::Owned(0));
        assert!(impossible_owner(0));
        assert!(impossible_owner(PID_MAX_LIMIT + 1));
        assert!(impossible_owner(NOT_RECOVERABLE));
        assert!(!impossible_owner(1));
    }

    #[test]
    fn tid_is_cached_and_matches_the_kernel() {
        let t = current_tid();
        assert_eq!(t, sys::gettid());
        assert_eq!(current_tid(), t);
        let other = std::thread::spawn(current_tid).join().unwrap();
        assert_ne!(other, t);
    }

    #[test]
    fn uncontended_lock_unlock() {
        let w = Word::new();
        let me = current_tid();
        w.lock(me, Deadline::Never).unwrap();
        assert_eq!(w.load(), me);
        assert!(w.held_by(me));
        assert_eq!(w.lock(me, Deadline::Now), Err(LockError::WouldDeadlock));
        w.unlock();
        assert_eq!(w.load(), 0);
    }

    #[test]
    fn waiters_bit_survives_until_unlock() {
        let w = word(current_tid() | WAITERS);
        w.unlock();
        assert_eq!(w.load(), 0);
    }

    #[test]
    fn garbage_owner_is_a_dead_owner() {
        let me = current_tid();
        for garbage in [WAITERS, INCONSISTENT, PID_MAX_LIMIT + 7, !WAITERS, u32::MAX] {
            let w = word(garbage);
            let r = w.lock(me, Deadline::Never);
            if classify(garbage) == State::NotRecoverable {
                assert_eq!(r, Err(LockError::NotRecoverable), "{garbage:#x}");
                continue;
            }
            assert_eq!(r, Err(LockError::OwnerDied(())), "{garbage:#x}");
            assert_eq!(w.load() & (TID_MASK | INCONSISTENT), me | INCONSISTENT);
            assert_eq!(w.load() & WAITERS, garbage & WAITERS, "waiters kept");
            w.mark_consistent();
            w.unlock();
            assert_eq!(w.load(), 0);
        }
    }

    #[test]
    fn dead_thread_owner_is_taken_over_by_try_lock() {
        let dead = std::thread::spawn(sys::gettid).join().unwrap();
        let w = word(dead);
        let me = current_tid();
        // `join` returns when the thread has cleared its tid word, a moment
        // before the kernel releases the tid; until then the owner still
        // exists and try_lock rightly says WouldBlock.
        let started = Instant::now();
        let r = loop {
            match w.lock(me, Deadline::Now) {
                Err(LockError::WouldBlock) if started.elapsed() < Duration::from_secs(2) => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                r => break r,
            }
        };
        assert_eq!(r, Err(LockError::OwnerDied(())));
        assert!(w.is_inconsistent());
        // Unlocking without repair is final.
        w.unlock();
        assert_eq!(w.load(), NOT_RECOVERABLE);
        assert_eq!(w.lock(me, Deadline::Never), Err(LockError::NotRecoverable));
        assert_eq!(w.lock(me, Deadline::Now), Err(LockError::NotRecoverable));
    }

    #[test]
    fn live_owner_blocks_try_and_times_out() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            tx.send(current_tid()).unwrap();
            done_rx.recv().unwrap();
        });
        let owner = rx.recv().unwrap();
        let w = word(owner);
        let me = current_tid();
        assert_eq!(w.lock(me, Deadline::Now), Err(LockError::WouldBlock));
        let t0 = Instant::now();
        let asked = Duration::from_millis(20);
        assert_eq!(
            w.lock(me, Deadline::At(t0 + asked)),
            Err(LockError::TimedOut)
        );
        assert!(t0.elapsed() >= asked);
        assert_eq!(w.load() & TID_MASK, owner, "the owner keeps the lock");
        done_tx.send(()).unwrap();
        h.join().unwrap();
        // Now the owner has exited: the next lock takes over.
        assert_eq!(w.lock(me, Deadline::Never), Err(LockError::OwnerDied(())));
    }

    #[test]
    fn forked_child_gets_its_own_tid() {
        let parent = current_tid();
        let mut fds = [0; 2];
        // SAFETY: test-only raw libc calls: a pipe, a fork whose child only
        // computes its tid, writes it and _exits.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                let t = current_tid();
                let ok = t == sys::gettid() && t != parent;
                libc::write(fds[1], [ok as u8].as_ptr().cast(), 1);
                libc::_exit(0);
            }
            let mut b = [0u8];
            assert_eq!(libc::read(fds[0], b.as_mut_ptr().cast(), 1), 1);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            libc::close(fds[0]);
            libc::close(fds[1]);
            assert_eq!(b[0], 1, "child's cached tid is its own");
        }
    }
}
