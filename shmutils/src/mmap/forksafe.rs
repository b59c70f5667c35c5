//! [`ForkSafe`]: a value in process memory behind a small lock of its own
//! that survives `fork`. The mmap module keeps two such values: each
//! placement table (`placements.rs`) and the process-wide registry of
//! mapped objects (`registry.rs`).
//!
//! Two things make it survive `fork`:
//!
//! - **The lock word holds the holder's process id.** A child forked while
//!   another thread of the parent held the lock inherits a word naming the
//!   parent; that thread does not exist in the child, so the first locker
//!   there takes the word over instead of waiting forever.
//! - **The value is kept twice.** A change is made to the inactive copy,
//!   the copies are swapped with one atomic store, then the change is made
//!   to the other copy. A child forked in the middle therefore always has
//!   one complete copy, the active one; on take-over it discards the other
//!   (leaking it: it may be half-changed, so it is never touched again) and
//!   rebuilds it from the active one. A change the parent had not finished
//!   handed nothing out in the child, so losing or keeping it is equally
//!   sound.
//!
//! This relies on the child's memory being a snapshot in which the parent's
//! stores appear in their Release order: `fork` copies the address space
//! after the kernel has stopped the other CPUs' use of the old mappings
//! (TLB shootdown), which drains their store buffers first.

use std::cell::UnsafeCell;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::sys;

/// The lock word's waiters bit; process ids stay below it (Linux caps them
/// at 2^22).
const WAITERS: u32 = 1 << 31;
const PID: u32 = !WAITERS;
const FREE: u32 = 0;

/// A value kept twice behind a fork-safe lock.
///
/// Lock word states:
///
/// | word                  | meaning                                                   |
/// |-----------------------|-----------------------------------------------------------|
/// | `0`                   | free                                                      |
/// | our pid               | held by a thread of this process, nobody sleeping         |
/// | our pid + `WAITERS`   | held; threads may sleep in `futex_wait` on the word       |
/// | another pid (± bit)   | copied by `fork`: the holder does not exist in this process |
///
/// A locker that had to wait takes the word with `WAITERS` set (it cannot
/// know whether others still sleep), so an unlock that finds the bit wakes
/// one sleeper.
pub(crate) struct ForkSafe<M: Clone> {
    word: AtomicU32,
    /// Which of `copies` is complete (0 or 1); changed only under the lock.
    active: AtomicUsize,
    /// Two copies of the value, equal whenever the lock is free.
    copies: UnsafeCell<[M; 2]>,
}

// SAFETY: `copies` is only reached through a `Guard` (which holds the lock
// word, so one thread at a time) or through `&mut ForkSafe`; everything
// else is atomic. Handing the value from thread to thread that way needs
// `M: Send`, as for `Mutex<M>`.
unsafe impl<M: Clone + Send> Sync for ForkSafe<M> {}

impl<M: Clone> fmt::Debug for ForkSafe<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not locked: Debug must not wait for a thread that is copying.
        f.debug_struct("ForkSafe").finish_non_exhaustive()
    }
}

impl<M: Clone> ForkSafe<M> {
    /// The value `a`, kept twice: `b` must equal `a` (`const`, so it can
    /// make a `static`, cannot clone).
    pub(crate) const fn new(a: M, b: M) -> ForkSafe<M> {
        ForkSafe {
            word: AtomicU32::new(FREE),
            active: AtomicUsize::new(0),
            copies: UnsafeCell::new([a, b]),
        }
    }

    /// Locks the value; waits (sleeping) while another thread of this
    /// process holds it.
    pub(crate) fn lock(&self) -> Guard<'_, M> {
        let me = sys::getpid() & PID;
        // Acquire: pairs with the Release swap in `Guard::drop`, so the
        // previous holder's changes to `copies` are visible.
        if self
            .word
            .compare_exchange(FREE, me, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_slow(me);
        }
        Guard { cell: self }
    }

    #[cold]
    fn lock_slow(&self, me: u32) {
        loop {
            let cur = self.word.load(Ordering::Relaxed);
            if cur == FREE {
                // Acquire: as in `lock`.
                if self
                    .word
                    .compare_exchange(FREE, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
            } else if cur & PID != me {
                // Copied by fork from a parent in which another thread held
                // the lock. No thread of this process can hold or wait on a
                // word naming another process, so this is the only path.
                // Acquire: orders our reads after the take-over.
                if self
                    .word
                    .compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    // SAFETY: we hold the lock from here on.
                    unsafe { self.repair() };
                    return;
                }
            } else if cur & WAITERS != 0
                || self
                    .word
                    .compare_exchange(cur, cur | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                // Any outcome (woken, value changed, signal) re-checks.
                let _ = sys::futex_wait(&self.word, cur | WAITERS, None);
            }
        }
    }

    /// Rebuilds the inactive copy from the active one, after a take-over.
    ///
    /// # Safety
    /// The caller holds the lock (or `&mut self`), so nothing else reads or
    /// writes `copies`.
    unsafe fn repair(&self) {
        // Acquire: pairs with the Release store in `Guard::change`.
        let active = self.active.load(Ordering::Acquire) & 1;
        // SAFETY: the caller holds the lock, so this is the only reference
        // to `copies`; the active copy is complete (module docs).
        let copies = unsafe { &mut *self.copies.get() };
        let good = copies[active].clone();
        // The inactive copy may be half-changed: move it out untouched and
        // never drop it.
        std::mem::forget(std::mem::replace(&mut copies[1 - active], good));
    }
}

impl<M: Clone> Drop for ForkSafe<M> {
    fn drop(&mut self) {
        let word = self.word.get_mut();
        if *word != FREE {
            // Only an inherited word can be held here: a guard of this
            // process borrows the value, which `&mut self` rules out. A
            // copy left half-changed by that fork must be leaked, not
            // dropped.
            *word = FREE;
            // SAFETY: `&mut self` is exclusive access.
            unsafe { self.repair() };
        }
    }
}

/// The locked value. Unlocks on drop.
pub(crate) struct Guard<'a, M: Clone> {
    cell: &'a ForkSafe<M>,
}

impl<M: Clone> Guard<'_, M> {
    /// The value.
    pub(crate) fn get(&self) -> &M {
        let active = self.cell.active.load(Ordering::Relaxed) & 1;
        // SAFETY: the guard holds the lock, and `change` (the only writer
        // under a guard) takes `&mut self`, so no `&mut` to `copies` is
        // alive while this borrow of the guard is.
        unsafe { &(*self.cell.copies.get())[active] }
    }

    /// Applies `f` to both copies, one at a time, swapping them in between
    /// (module docs). `f` must make the same change to equal copies: it
    /// runs twice.
    pub(crate) fn change(&mut self, f: impl Fn(&mut M)) {
        let active = self.cell.active.load(Ordering::Relaxed) & 1;
        // SAFETY: the guard holds the lock and `&mut self` rules out a
        // borrow from `get` being alive, so this is the only reference.
        let copies = unsafe { &mut *self.cell.copies.get() };
        f(&mut copies[1 - active]);
        // Release: a child forked after this store sees the finished copy
        // behind the new index (Acquire load in `repair`).
        self.cell.active.store(1 - active, Ordering::Release);
        f(&mut copies[active]);
    }
}

impl<M: Clone> Drop for Guard<'_, M> {
    fn drop(&mut self) {
        // Release: publishes our changes to `copies` to the next locker's
        // Acquire.
        if self.cell.word.swap(FREE, Ordering::Release) & WAITERS != 0 {
            sys::futex_wake(&self.cell.word, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicU64;

    use super::*;

    type Map = BTreeMap<usize, u32>;

    fn table() -> ForkSafe<Map> {
        ForkSafe::new(Map::new(), Map::new())
    }

    #[test]
    fn both_copies_stay_equal() {
        let t = table();
        for k in 0..100 {
            t.lock().change(|m| {
                m.insert(k, 7);
            });
        }
        // SAFETY: no guard is alive; this test is the only user.
        let copies = unsafe { &*t.copies.get() };
        assert_eq!(copies[0].len(), 100);
        assert_eq!(copies[0], copies[1]);
    }

    #[test]
    fn contended_lock_hands_over_between_threads() {
        let t = table();
        let counter = AtomicU64::new(0);
        std::thread::scope(|s| {
            for k in 0..4usize {
                let (t, counter) = (&t, &counter);
                s.spawn(move || {
                    for i in 0..2000usize {
                        let mut g = t.lock();
                        // A non-atomic read-modify-write made atomic by the lock.
                        let v = counter.load(Ordering::Relaxed);
                        g.change(|m| {
                            m.insert(k * 2000 + i, 1);
                        });
                        counter.store(v + 1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(counter.load(Ordering::Relaxed), 8000);
        assert_eq!(t.lock().get().len(), 8000);
    }

    /// A child forked while another thread holds the lock, half-way through
    /// a change, takes the lock over and sees the last complete value.
    #[test]
    fn a_fork_in_the_middle_of_a_change_leaves_a_usable_value() {
        let t = table();
        t.lock().change(|m| {
            m.insert(0, 64);
        });
        let (held, release) = (AtomicU32::new(0), AtomicU32::new(0));
        std::thread::scope(|s| {
            s.spawn(|| {
                let g = t.lock();
                // Half a change: the inactive copy only, as `change` does
                // first; the active copy still says "0 -> 64, nothing else".
                let active = t.active.load(Ordering::Relaxed);
                // SAFETY: `g` holds the lock; no other reference to `copies`.
                unsafe { (*t.copies.get())[1 - active].insert(8, 32) };
                held.store(1, Ordering::SeqCst);
                while release.load(Ordering::SeqCst) == 0 {
                    std::thread::yield_now();
                }
                // Finish it the way `change` would, then unlock.
                t.active.store(1 - active, Ordering::Release);
                // SAFETY: as above.
                unsafe { (*t.copies.get())[active].insert(8, 32) };
                drop(g);
            });
            while held.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
            // SAFETY: the child only uses this value and plain memory, then
            // leaves with _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                let ok = {
                    let mut g = t.lock(); // takes the inherited word over
                    let before = g.get().get(&0) == Some(&64) && !g.get().contains_key(&8);
                    g.change(|m| {
                        m.insert(16, 16);
                    });
                    before
                };
                // The next change went to a copy rebuilt from the complete
                // one, so the unfinished entry at 8 did not come back.
                let again = {
                    let g = t.lock();
                    g.get().contains_key(&16) && !g.get().contains_key(&8)
                };
                // SAFETY: ends the child without running the harness.
                unsafe { libc::_exit(if ok && again { 0 } else { 1 }) };
            }
            release.store(1, Ordering::SeqCst);
            let mut status = 0;
            // SAFETY: `pid` is our child; `status` is a valid out-pointer.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status), "child status {status:#x}");
            assert_eq!(libc::WEXITSTATUS(status), 0, "child saw a bad value");
        });
        let g = t.lock();
        assert!(g.get().contains_key(&0) && g.get().contains_key(&8) && !g.get().contains_key(&16));
    }
}
