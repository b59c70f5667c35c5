//! The placement table: which typed values this process has placed in a
//! mapping, so that [`get`](super::MappedMemory::get) never hands out two
//! overlapping references of different types, and byte copies never touch
//! bytes a typed reference may be storing to.
//!
//! The table is process memory, guarded by a small futex lock of its own.
//! Two things make it survive `fork`:
//!
//! - **The lock word holds the holder's process id.** A child forked while
//!   another thread of the parent held the lock inherits a word naming the
//!   parent; that thread does not exist in the child, so the first locker
//!   there takes the word over instead of waiting forever.
//! - **The table is kept twice.** A change is made to the inactive copy,
//!   the copies are swapped with one atomic store, then the change is made
//!   to the other copy. A child forked in the middle therefore always has
//!   one complete copy, the active one; on take-over it discards the other
//!   (leaking it: it may be half-changed, so it is never touched again) and
//!   rebuilds it from the active one. An unfinished `get` in the parent
//!   handed out no reference in the child, so losing or keeping its entry
//!   is equally sound.
//!
//! This relies on the child's memory being a snapshot in which the parent's
//! stores appear in their Release order: `fork` copies the address space
//! after the kernel has stopped the other CPUs' use of the old mappings
//! (TLB shootdown), which drains their store buffers first.

use std::any::TypeId;
use std::cell::UnsafeCell;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::error::{Error, Result};
use crate::shared::Shared;
use crate::sys;

/// A typed value placed at some offset of a mapping.
#[derive(Clone, Copy, Debug)]
pub(super) struct Placement {
    /// Bytes it covers; never 0 in the table.
    pub(super) size: usize,
    type_id: TypeId,
    name: &'static str,
    align: usize,
    fingerprint: u64,
}

impl Placement {
    /// The placement of a `T`.
    pub(super) fn of<T: Shared>() -> Placement {
        Placement {
            size: std::mem::size_of::<T>(),
            type_id: TypeId::of::<T>(),
            name: std::any::type_name::<T>(),
            align: std::mem::align_of::<T>(),
            fingerprint: T::FINGERPRINT,
        }
    }

    /// Whether it places the same type as `other`.
    pub(super) fn same_type(&self, other: &Placement) -> bool {
        self.type_id == other.type_id
    }

    /// The type, as error messages show it.
    pub(super) fn describe(&self) -> String {
        format!(
            "{} (size {}, align {}, fingerprint {:#018x})",
            self.name, self.size, self.align, self.fingerprint
        )
    }

    /// The type and the bytes it covers, starting at `start`.
    pub(super) fn describe_at(&self, start: usize) -> String {
        format!(
            "{} placed at bytes {start}..{}",
            self.describe(),
            start + self.size
        )
    }
}

/// The `object` of a [`Error::TypeMismatch`] about bytes of a mapping.
pub(super) fn bytes_object(range: &Range<usize>) -> String {
    format!("bytes {}..{} of the mapping", range.start, range.end)
}

/// Placements by offset. They never overlap one another.
type Map = BTreeMap<usize, Placement>;

/// The lock word's waiters bit; process ids stay below it (Linux caps them
/// at 2^22).
const WAITERS: u32 = 1 << 31;
const PID: u32 = !WAITERS;
const FREE: u32 = 0;

/// A mapping's placement table and its lock.
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
pub(super) struct Placements {
    word: AtomicU32,
    /// Which of `maps` is complete (0 or 1); changed only under the lock.
    active: AtomicUsize,
    /// Two copies of the table, equal whenever the lock is free.
    maps: UnsafeCell<[Map; 2]>,
}

// SAFETY: `maps` is only reached through a `Guard` (which holds the lock
// word, so one thread at a time) or through `&mut Placements`; everything
// else is atomic. Its contents are plain data (`TypeId`, `&'static str`).
unsafe impl Sync for Placements {}

impl fmt::Debug for Placements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not locked: Debug must not wait for a thread that is copying.
        f.debug_struct("Placements").finish_non_exhaustive()
    }
}

impl Placements {
    /// An empty table.
    pub(super) fn new() -> Placements {
        Placements {
            word: AtomicU32::new(FREE),
            active: AtomicUsize::new(0),
            maps: UnsafeCell::new([Map::new(), Map::new()]),
        }
    }

    /// Locks the table; waits (sleeping) while another thread of this
    /// process holds it.
    pub(super) fn lock(&self) -> Guard<'_> {
        let me = sys::getpid() & PID;
        // Acquire: pairs with the Release swap in `Guard::drop`, so the
        // previous holder's changes to `maps` are visible.
        if self
            .word
            .compare_exchange(FREE, me, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_slow(me);
        }
        Guard { table: self }
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
    /// writes `maps`.
    unsafe fn repair(&self) {
        // Acquire: pairs with the Release store in `Guard::change`.
        let active = self.active.load(Ordering::Acquire) & 1;
        // SAFETY: the caller holds the lock, so this is the only reference
        // to `maps`; the active copy is complete (module docs).
        let maps = unsafe { &mut *self.maps.get() };
        let good = maps[active].clone();
        // The inactive copy may be half-changed: move it out untouched and
        // never drop it.
        std::mem::forget(std::mem::replace(&mut maps[1 - active], good));
    }

    /// The table, for a caller that has `&mut` (no guard can exist), after
    /// repairing a copy a fork left half-changed.
    fn settle(&mut self) -> &mut [Map; 2] {
        let word = self.word.get_mut();
        if *word != FREE {
            // Only an inherited word can be held here: a guard of this
            // process borrows the table, which `&mut self` rules out.
            *word = FREE;
            // SAFETY: `&mut self` is exclusive access.
            unsafe { self.repair() };
        }
        self.maps.get_mut()
    }

    /// Removes every placement that overlaps `range` (with `&mut` access,
    /// no reference to them can be alive).
    pub(super) fn forget(&mut self, range: Range<usize>) {
        for map in self.settle() {
            while let Some((start, _)) = overlapping(map, &range) {
                map.remove(&start);
            }
        }
    }

    /// Records `p` at `offset`, replacing every placement it overlaps.
    pub(super) fn replace(&mut self, offset: usize, p: Placement) {
        if p.size == 0 {
            return;
        }
        self.forget(offset..offset + p.size);
        for map in self.settle() {
            map.insert(offset, p);
        }
    }

    /// How many placements there are.
    #[cfg(test)]
    pub(super) fn len(&mut self) -> usize {
        self.settle()[0].len()
    }
}

impl Drop for Placements {
    fn drop(&mut self) {
        // A copy left half-changed by fork must be leaked, not dropped.
        self.settle();
    }
}

/// The placement in `map` that overlaps `range`, if any (the last one when
/// several do). Empty ranges overlap nothing.
fn overlapping(map: &Map, range: &Range<usize>) -> Option<(usize, Placement)> {
    if range.start >= range.end {
        return None;
    }
    // Placements do not overlap, so they are sorted by end as well as by
    // start: only the last one starting before `range.end` can reach past
    // `range.start`.
    let (&start, p) = map.range(..range.end).next_back()?;
    (start + p.size > range.start).then_some((start, *p))
}

/// The locked table. Unlocks on drop.
pub(super) struct Guard<'a> {
    table: &'a Placements,
}

impl Guard<'_> {
    fn map(&self) -> &Map {
        let active = self.table.active.load(Ordering::Relaxed) & 1;
        // SAFETY: the guard holds the lock, and `change` (the only writer
        // under a guard) takes `&mut self`, so no `&mut` to `maps` is alive
        // while this borrow of the guard is.
        unsafe { &(*self.table.maps.get())[active] }
    }

    /// The placement at exactly `offset`, if any.
    pub(super) fn at(&self, offset: usize) -> Option<Placement> {
        self.map().get(&offset).copied()
    }

    /// A placement overlapping `range`, if any.
    pub(super) fn overlapping(&self, range: &Range<usize>) -> Option<(usize, Placement)> {
        overlapping(self.map(), range)
    }

    /// `Ok` if no placement overlaps `range`: its bytes may be copied
    /// without racing a store made through a typed reference.
    ///
    /// # Errors
    /// [`Error::TypeMismatch`] naming the placement found.
    pub(super) fn check_untyped(&self, range: &Range<usize>) -> Result<()> {
        match self.overlapping(range) {
            None => Ok(()),
            Some((start, p)) => Err(Error::TypeMismatch {
                object: bytes_object(range),
                expected: "raw bytes, with no typed value placed on them \
                           (a copy could race a store through that value)"
                    .to_owned(),
                found: p.describe_at(start),
            }),
        }
    }

    /// Records `p` at `offset`; the caller checked that nothing overlaps.
    pub(super) fn insert(&mut self, offset: usize, p: Placement) {
        if p.size != 0 {
            self.change(|map| {
                map.insert(offset, p);
            });
        }
    }

    /// Applies `f` to both copies, one at a time, swapping them in between
    /// (module docs).
    fn change(&mut self, f: impl Fn(&mut Map)) {
        let active = self.table.active.load(Ordering::Relaxed) & 1;
        // SAFETY: the guard holds the lock and `&mut self` rules out a
        // borrow from `map` being alive, so this is the only reference.
        let maps = unsafe { &mut *self.table.maps.get() };
        f(&mut maps[1 - active]);
        // Release: a child forked after this store sees the finished copy
        // behind the new index (Acquire load in `repair`).
        self.table.active.store(1 - active, Ordering::Release);
        f(&mut maps[active]);
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // Release: publishes our changes to `maps` to the next locker's
        // Acquire.
        if self.table.word.swap(FREE, Ordering::Release) & WAITERS != 0 {
            sys::futex_wake(&self.table.word, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn p<T: Shared>() -> Placement {
        Placement::of::<T>()
    }

    #[test]
    fn overlap_finds_the_one_placement_that_reaches_in() {
        let mut t = Placements::new();
        t.replace(0, p::<u64>());
        t.replace(16, p::<u32>());
        let g = t.lock();
        assert_eq!(g.overlapping(&(8..16)).map(|(s, _)| s), None);
        assert_eq!(g.overlapping(&(7..8)).map(|(s, _)| s), Some(0));
        assert_eq!(g.overlapping(&(0..100)).map(|(s, _)| s), Some(16));
        assert_eq!(g.overlapping(&(19..20)).map(|(s, _)| s), Some(16));
        assert_eq!(g.overlapping(&(20..24)).map(|(s, _)| s), None);
        assert_eq!(g.overlapping(&(4..4)).map(|(s, _)| s), None);
        assert!(g.check_untyped(&(8..16)).is_ok());
        match g.check_untyped(&(4..12)) {
            Err(Error::TypeMismatch { object, found, .. }) => {
                assert_eq!(object, "bytes 4..12 of the mapping");
                assert!(found.contains("u64 (size 8, align 8"), "{found}");
                assert!(found.ends_with("placed at bytes 0..8"), "{found}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn replace_removes_every_overlapped_placement() {
        let mut t = Placements::new();
        for off in (0..64).step_by(8) {
            t.replace(off, p::<u64>());
        }
        assert_eq!(t.len(), 8);
        t.replace(4, p::<[u64; 3]>());
        // 0..8, 8..16, 16..24 and 24..32 overlap 4..28.
        assert_eq!(t.len(), 5);
        let g = t.lock();
        assert!(g.at(4).is_some_and(|q| q.same_type(&p::<[u64; 3]>())));
        assert!(g.at(0).is_none());
        assert!(g.at(32).is_some());
        drop(g);
        t.forget(0..usize::MAX);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn both_copies_stay_equal() {
        let t = Placements::new();
        for off in (0..800).step_by(8) {
            t.lock().insert(off, p::<AtomicU64>());
        }
        // SAFETY: no guard is alive; this test is the only user.
        let maps = unsafe { &*t.maps.get() };
        assert_eq!(maps[0].len(), 100);
        assert!(maps[0].keys().eq(maps[1].keys()));
    }

    #[test]
    fn contended_lock_hands_over_between_threads() {
        let t = Placements::new();
        let counter = AtomicU64::new(0);
        std::thread::scope(|s| {
            for k in 0..4usize {
                let (t, counter) = (&t, &counter);
                s.spawn(move || {
                    for i in 0..2000usize {
                        let mut g = t.lock();
                        // A non-atomic read-modify-write made atomic by the lock.
                        let v = counter.load(Ordering::Relaxed);
                        g.insert((k * 2000 + i) * 8, p::<u64>());
                        counter.store(v + 1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(counter.load(Ordering::Relaxed), 8000);
        let mut t = t;
        assert_eq!(t.len(), 8000);
    }

    /// A child forked while another thread holds the lock, half-way through
    /// a change, takes the lock over and sees the last complete table.
    #[test]
    fn a_fork_in_the_middle_of_a_change_leaves_a_usable_table() {
        let t = Placements::new();
        t.lock().insert(0, p::<u64>());
        let (held, release) = (AtomicU32::new(0), AtomicU32::new(0));
        std::thread::scope(|s| {
            s.spawn(|| {
                let g = t.lock();
                // Half a change: the inactive copy only, as `change` does
                // first; the active copy still says "u64 at 0, nothing else".
                let active = t.active.load(Ordering::Relaxed);
                // SAFETY: `g` holds the lock; no other reference to `maps`.
                unsafe { (*t.maps.get())[1 - active].insert(8, p::<u32>()) };
                held.store(1, Ordering::SeqCst);
                while release.load(Ordering::SeqCst) == 0 {
                    std::thread::yield_now();
                }
                // Finish it the way `change` would, then unlock.
                t.active.store(1 - active, Ordering::Release);
                // SAFETY: as above.
                unsafe { (*t.maps.get())[active].insert(8, p::<u32>()) };
                drop(g);
            });
            while held.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
            // SAFETY: the child only uses this table and plain memory, then
            // leaves with _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                let ok = {
                    let mut g = t.lock(); // takes the inherited word over
                    let before = g.at(0).is_some() && g.at(8).is_none();
                    g.insert(16, p::<u16>());
                    before
                };
                // The next change went to a copy rebuilt from the complete
                // one, so the unfinished entry at 8 did not come back.
                let again = {
                    let g = t.lock();
                    g.at(16).is_some() && g.at(8).is_none()
                };
                // SAFETY: ends the child without running the harness.
                unsafe { libc::_exit(if ok && again { 0 } else { 1 }) };
            }
            release.store(1, Ordering::SeqCst);
            let mut status = 0;
            // SAFETY: `pid` is our child; `status` is a valid out-pointer.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status), "child status {status:#x}");
            assert_eq!(libc::WEXITSTATUS(status), 0, "child saw a bad table");
        });
        let g = t.lock();
        assert!(g.at(0).is_some() && g.at(8).is_some() && g.at(16).is_none());
    }
}
