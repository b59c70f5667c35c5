//! [`HeapCache`]: an opt-in, process-local magazine of free small blocks.
//!
//! The shared path costs four atomic read-modify-writes per alloc + free
//! pair (pop CAS, meta-word claim, meta-word release, push CAS). A cache
//! keeps up to [`CACHE_BLOCKS`] freed blocks per small class in process
//! memory and hands them out again, so a pair costs only the two meta-word
//! CASes, which still detect a double free or a block taken twice, across
//! processes.
//!
//! A cache serves untyped blocks ([`alloc`](HeapCache::alloc) and the
//! `unsafe` [`free`](HeapCache::free)), like [`SharedHeap::alloc`].
//!
//! # What the cache holds
//! Blocks in a cache are **held by this process**: free in their meta
//! word, on no shared list, so no other process can get them. Dropping the
//! cache (or [`flush`](HeapCache::flush)) returns them to the shared lists.
//! If the process dies first, they are lost like any block it held, and
//! [`SharedHeap::check`] counts them as leaked; a process that exits with
//! `_exit` without dropping its cache leaks them the same way.
//!
//! # Fork
//! A forked child gets a copy of its parent's caches, that is of blocks its
//! parent holds. Every cache records the process's fork generation (bumped
//! by a `pthread_atfork` child handler); a cache used (or dropped) in a
//! child forgets the copied blocks instead of using or returning them.

use std::alloc::Layout;
use std::sync::atomic::Ordering;

use super::class::{class_of, NSMALL};
use super::meta::{self, RAW};
use super::{current_shard, move_shard, stack, Block, SharedHeap};
use crate::error::Result;
use crate::process::fork_generation;
use crate::ptr::RelPtr;

/// Blocks a cache keeps per size class.
pub const CACHE_BLOCKS: usize = 32;

#[derive(Clone, Copy)]
struct Magazine {
    len: usize,
    blocks: [Block; CACHE_BLOCKS],
}

const NO_BLOCK: Block = Block {
    class: 0,
    start: 0,
    span_page: 0,
    index: 0,
};

/// A process-local magazine of free small blocks of one heap (see the
/// module docs). Made by [`SharedHeap::cache`]; holds up to
/// [`CACHE_BLOCKS`] free blocks per small class until it is dropped.
pub struct HeapCache<'s> {
    heap: SharedHeap<'s>,
    generation: u64,
    magazines: Box<[Magazine; NSMALL]>,
}

impl<'s> HeapCache<'s> {
    /// An empty cache for `heap`.
    pub(crate) fn new(heap: SharedHeap<'s>) -> HeapCache<'s> {
        HeapCache {
            heap,
            generation: fork_generation(),
            magazines: Box::new(
                [Magazine {
                    len: 0,
                    blocks: [NO_BLOCK; CACHE_BLOCKS],
                }; NSMALL],
            ),
        }
    }

    /// The heap the cache serves.
    pub fn heap(&self) -> SharedHeap<'s> {
        self.heap
    }

    /// False (and the magazines emptied) in a forked copy of the cache.
    #[inline]
    fn own(&mut self) -> bool {
        let generation = fork_generation();
        if generation != self.generation {
            self.generation = generation;
            for m in self.magazines.iter_mut() {
                m.len = 0;
            }
            return false;
        }
        true
    }

    /// [`SharedHeap::alloc`], served from the cache when it holds a block
    /// of the class.
    ///
    /// # Errors
    /// As [`SharedHeap::alloc`].
    #[inline]
    pub fn alloc(&mut self, layout: Layout) -> Result<RelPtr<u8>> {
        if let Some(c) = class_of(layout).filter(|&c| c < NSMALL) {
            if self.own() {
                while let Some(b) = self.take(c) {
                    // Relaxed: as in SharedHeap::alloc_as; the block was
                    // held by this process, its word exactly "free, end".
                    let claimed = self.heap.meta_word(b).is_some_and(|w| {
                        w.compare_exchange(
                            meta::free(b.start, 0),
                            meta::allocated(RAW, b.start, false),
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                    });
                    if claimed {
                        return Ok(RelPtr::from_heap(b.start));
                    }
                    // Someone else changed it: only corruption can.
                    self.heap.note_corruption();
                }
            }
        }
        self.heap.alloc(layout)
    }

    #[inline]
    fn take(&mut self, c: usize) -> Option<Block> {
        let m = &mut self.magazines[c];
        if m.len == 0 {
            return None;
        }
        m.len -= 1;
        Some(m.blocks[m.len])
    }

    /// [`SharedHeap::free`], keeping the block in the cache when there is
    /// room (otherwise half the magazine goes back to the shared lists).
    ///
    /// # Safety
    /// As [`SharedHeap::free`].
    ///
    /// # Errors
    /// As [`SharedHeap::free`].
    #[inline]
    pub unsafe fn free(&mut self, ptr: RelPtr<u8>, layout: Layout) -> Result<()> {
        let b = self.heap.checked_block(ptr.offset(), layout)?;
        if b.class >= NSMALL || !self.own() {
            return self.heap.release(b, None);
        }
        self.heap.unclaim(b, None)?;
        if self.magazines[b.class].len == CACHE_BLOCKS {
            self.spill(b.class, CACHE_BLOCKS / 2);
        }
        let m = &mut self.magazines[b.class];
        m.blocks[m.len] = b;
        m.len += 1;
        Ok(())
    }

    /// Pushes the last `n` held blocks of class `c` onto a shared list as
    /// one chain.
    fn spill(&mut self, c: usize, n: usize) {
        let m = &mut self.magazines[c];
        let n = n.min(m.len);
        if n == 0 {
            return;
        }
        let chain = &m.blocks[m.len - n..m.len];
        let words: Option<Vec<_>> = chain.iter().map(|&b| self.heap.meta_word(b)).collect();
        if let Some(words) = words {
            for ((w, b), next) in words.iter().zip(chain).zip(&chain[1..]) {
                w.store(meta::free(b.start, next.start), Ordering::Relaxed);
            }
            let head = self.heap.head(current_shard(), c);
            if stack::push_chain(head, chain[0].start, chain[n - 1].start, words[n - 1]) {
                move_shard();
            }
        }
        m.len -= n;
    }

    /// Returns every held block to the shared lists.
    pub fn flush(&mut self) {
        if self.own() {
            for c in 0..NSMALL {
                self.spill(c, CACHE_BLOCKS);
            }
        }
    }

    /// How many free blocks the cache holds.
    pub fn held(&self) -> usize {
        self.magazines.iter().map(|m| m.len).sum()
    }
}

impl Drop for HeapCache<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::heap::testing::TestRegion;

    #[test]
    fn cached_blocks_are_reused_held_and_returned() {
        let region = TestRegion::new(1 << 20);
        let heap = region.heap();
        let l = Layout::from_size_align(64, 8).unwrap();
        let mut cache = heap.cache();
        let ps: Vec<_> = (0..CACHE_BLOCKS + 5)
            .map(|_| cache.alloc(l).unwrap())
            .collect();
        for &p in &ps {
            // SAFETY: the blocks are untyped and never read.
            unsafe { cache.free(p, l) }.unwrap();
        }
        assert!(cache.held() <= CACHE_BLOCKS && cache.held() > 0);
        // Double frees are still caught, also of a cached block.
        // SAFETY: untyped blocks, never read.
        let again = unsafe { cache.free(ps[0], l) };
        assert!(matches!(again, Err(Error::DoubleFree { .. })));
        // SAFETY: as above.
        let again = unsafe { heap.free(ps[0], l) };
        assert!(matches!(again, Err(Error::DoubleFree { .. })));
        // Held blocks are leaked until the cache lets them go.
        let r = heap.check();
        assert!(r.is_consistent(), "{r}");
        assert_eq!(r.leaked_blocks, cache.held() as u64);
        let again = cache.alloc(l).unwrap();
        assert!(ps.contains(&again));
        // SAFETY: as above.
        unsafe { cache.free(again, l) }.unwrap();
        // Wrong layouts and foreign pointers are refused as by the heap.
        // SAFETY: as above; the forged pointer is refused, never freed.
        unsafe {
            assert!(matches!(
                cache.free(ps[1], Layout::from_size_align(8, 8).unwrap()),
                Err(Error::WrongLayout { .. }) | Err(Error::DoubleFree { .. })
            ));
            assert!(cache.free(RelPtr::from_offset(64), l).is_err());
        }
        // Large blocks go straight to the heap.
        let big = Layout::from_size_align(10_000, 8).unwrap();
        let b = cache.alloc(big).unwrap();
        // SAFETY: as above.
        unsafe { cache.free(b, big) }.unwrap();
        drop(cache);
        let r = heap.check();
        assert!(r.is_clean(), "{r}");
        assert_eq!(heap.stats().in_use_bytes, 0);
    }

    #[test]
    fn a_cache_copied_into_a_forked_generation_forgets_its_blocks() {
        let region = TestRegion::new(1 << 20);
        let heap = region.heap();
        let l = Layout::from_size_align(32, 8).unwrap();
        let mut cache = heap.cache();
        let p = cache.alloc(l).unwrap();
        // SAFETY: untyped blocks, never read.
        unsafe { cache.free(p, l) }.unwrap();
        assert_eq!(cache.held(), 1);
        // Pretend we are the child of a fork.
        cache.generation = cache.generation.wrapping_sub(1);
        let q = cache.alloc(l).unwrap();
        assert_eq!(cache.held(), 0, "the copied blocks were forgotten");
        assert_ne!(q, p, "the parent's held block was not taken");
        // SAFETY: as above.
        unsafe { cache.free(q, l) }.unwrap();
    }
}
