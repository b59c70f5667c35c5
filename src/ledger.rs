//! What a churning child of the registry tests holds, kept where its
//! parent can read it after the child is killed: the named object
//! `"ledger"`, one region of [`STRIDE`] words per thread.
//!
//! Region of a thread: `[ready, pending, count, entries...]`. An entry is
//! `align_log2 << 60 | size << 40 | offset`. Before each operation the
//! thread writes `pending` (what it is about to do), so that after a kill
//! the parent knows which single block per thread may be in between.

use std::alloc::Layout;
use std::sync::atomic::{AtomicU64, Ordering};

/// Threads a ledger has room for.
pub const THREADS: usize = 8;
/// Words per thread.
pub const STRIDE: usize = 1024;
/// Entries per thread.
pub const CAP: usize = STRIDE - 3;
/// The ledger object.
pub type Ledger = [AtomicU64; THREADS * STRIDE];
/// `pending`: an allocation is under way (its block is not recorded yet).
pub const ALLOC_PENDING: u64 = 1 << 62;
/// `pending`: the free of the block at the offset in the low bits is under
/// way (its entry is already removed).
pub const FREE_PENDING: u64 = 2 << 62;

/// A new, zeroed ledger.
pub fn empty() -> Ledger {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// One thread's region.
pub struct Thread<'a> {
    w: &'a [AtomicU64],
}

impl<'a> Thread<'a> {
    /// Thread `t`'s region of `ledger`.
    pub fn new(ledger: &'a Ledger, t: usize) -> Thread<'a> {
        Thread {
            w: &ledger[t * STRIDE..(t + 1) * STRIDE],
        }
    }

    /// Says the thread has done its first operations.
    pub fn ready(&self) {
        self.w[0].store(1, Ordering::SeqCst);
    }

    /// Whether it has.
    pub fn is_ready(&self) -> bool {
        self.w[0].load(Ordering::SeqCst) != 0
    }

    /// Announces (or, with 0, ends) an operation.
    pub fn pending(&self, v: u64) {
        self.w[1].store(v, Ordering::SeqCst);
    }

    /// The operation under way.
    pub fn pending_op(&self) -> u64 {
        self.w[1].load(Ordering::SeqCst)
    }

    /// Blocks recorded.
    pub fn count(&self) -> usize {
        (self.w[2].load(Ordering::SeqCst) as usize).min(CAP)
    }

    /// Entry `i`: offset and layout.
    pub fn entry(&self, i: usize) -> (u64, u64) {
        let e = self.w[3 + i].load(Ordering::SeqCst);
        (e & ((1 << 40) - 1), e >> 40)
    }

    /// Records a block.
    pub fn push(&self, off: u64, layout: Layout) {
        let n = self.count();
        let l = (layout.align().trailing_zeros() as u64) << 20 | layout.size() as u64;
        self.w[3 + n].store(l << 40 | off, Ordering::SeqCst);
        self.w[2].store(n as u64 + 1, Ordering::SeqCst);
    }

    /// Removes entry `i` (the last one takes its place).
    pub fn remove(&self, i: usize) {
        let last = self.count() - 1;
        let moved = self.w[3 + last].load(Ordering::SeqCst);
        self.w[3 + i].store(moved, Ordering::SeqCst);
        self.w[2].store(last as u64, Ordering::SeqCst);
    }

    /// Empties the region.
    pub fn clear(&self) {
        for w in self.w {
            w.store(0, Ordering::SeqCst);
        }
    }
}

/// The layout of an entry's `size` field (as [`Thread::entry`] gives it).
pub fn layout_of(l: u64) -> Layout {
    Layout::from_size_align((l & ((1 << 20) - 1)) as usize, 1 << (l >> 20)).unwrap()
}

/// A layout from random bits, over every size class: mostly small blocks,
/// some pages, a few up to 1 MiB; now and then a large alignment.
pub fn random_layout(r: u64) -> Layout {
    let size = match r % 100 {
        0..=69 => 1 + (r >> 8) % 1024,
        70..=89 => 1025 + (r >> 8) % 3072,
        90..=97 => 4097 + (r >> 8) % (256 << 10),
        _ => (256 << 10) + (r >> 8) % (768 << 10),
    };
    let align = match (r >> 40) % 16 {
        0 => 64,
        1 => 4096,
        _ => 8,
    };
    Layout::from_size_align(size as usize, align).unwrap()
}
