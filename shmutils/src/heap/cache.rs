//! [`HeapCache`]: an opt-in, process-local magazine of free small blocks.
//!
//! The shared path costs four atomic read-modify-writes per alloc + free
//! pair (pop CAS, bitmap `fetch_or`, bitmap `fetch_and`, push CAS). A cache
//! keeps up to [`CACHE_BLOCKS`] freed blocks per small class in process
//! memory and hands them out again, so a pair costs only the two bitmap
//! operations, which still detect a double free or a block taken twice,
//! across processes.
//!
//! # What the cache holds
//! Blocks in a cache are **held by this process**: free in the bitmap, on no
//! shared list, so no other process can get them. Dropping the cache (or
//! [`flush`](HeapCache::flush)) returns them to the shared lists. If the
//! process dies first, they are lost like any block it held, and
//! [`SharedHeap::check`] counts them as leaked; a process that exits with
//! `_exit` without dropping its cache leaks them the same way.
//!
//! # Fork
//! A forked child gets a copy of its parent's caches, that is of blocks its
//! parent holds. Every cache records the process's fork generation (bumped
//! by a `pthread_atfork` child handler); a cache used (or dropped) in a
//! child forgets the copied blocks instead of using or returning them.

use std::alloc::Layout;
use std::sync::atomic::{AtomicU64, Ordering};

use super::class::{class_of, GRANULE, NSMALL};
use super::{current_shard, move_shard, slice_layout, Block, SharedHeap};
use crate::error::{Error, Result};
use crate::process::fork_generation;
use crate::ptr::{RelPtr, RelSlice};
use crate::shared::Shared;

/// Blocks a cache holds at most per small class.
pub const CACHE_BLOCKS: usize = 32;

/// The held blocks of one class, as validated when they were freed (so
/// taking one back needs no page map lookup: process memory, not the
/// segment, remembers where it lies).
#[derive(Clone, Copy)]
struct Magazine {
    len: usize,
    blocks: [Block; CACHE_BLOCKS],
}

/// Fills empty magazine slots.
const NO_BLOCK: Block = Block {
    class: 0,
    start: 0,
    span_page: 0,
    index: 0,
};

/// A process-local cache of free blocks in front of a [`SharedHeap`]:
/// faster alloc/free for one thread, at the price of holding up to
/// [`CACHE_BLOCKS`] free blocks per small class until it is dropped.
///
/// An alloc + free pair through the cache costs two atomic operations
/// (the bitmap's `fetch_or` and `fetch_and`, which still catch a double
/// free or a block taken twice, across processes) instead of four.
///
/// Blocks in a cache are **held by this process**: free in the bitmap, on
/// no shared list, so no other process can get them. Dropping the cache (or
/// [`flush`](HeapCache::flush)) returns them. If the process dies first (or
/// leaves with `_exit` without dropping the cache) they are lost like any
/// block it held, and [`SharedHeap::check`] counts them as leaked.
///
/// After `fork` the child's copy of a cache forgets its blocks (they are the
/// parent's) instead of using or returning them: a `pthread_atfork` handler
/// bumps a fork generation that every cache checks.
///
/// ```
/// use std::alloc::Layout;
/// let seg = shmutils::Segment::anonymous(1 << 20)?;
/// let mut cache = seg.heap().cache();
/// let l = Layout::from_size_align(64, 8).unwrap();
/// let p = cache.alloc(l)?;
/// cache.free(p, l)?;
/// assert_eq!(cache.alloc(l)?, p); // served from the cache
/// cache.free(p, l)?;
/// drop(cache); // returns the held blocks
/// assert!(seg.heap().check().is_clean());
/// # Ok::<(), shmutils::Error>(())
/// ```
pub struct HeapCache<'s> {
    heap: SharedHeap<'s>,
    generation: u64,
    magazines: Box<[Magazine; NSMALL]>,
}

impl<'s> SharedHeap<'s> {
    /// A new, empty process-local cache in front of this heap.
    pub fn cache(&self) -> HeapCache<'s> {
        HeapCache {
            heap: *self,
            generation: fork_generation(),
            magazines: Box::new(
                [Magazine {
                    len: 0,
                    blocks: [NO_BLOCK; CACHE_BLOCKS],
                }; NSMALL],
            ),
        }
    }
}

impl<'s> HeapCache<'s> {
    /// The heap behind the cache.
    pub fn heap(&self) -> SharedHeap<'s> {
        self.heap
    }

    /// Whether the cached blocks are this process's: after a fork they are
    /// the parent's, so the child forgets them.
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

    /// As [`SharedHeap::alloc`], from the cache when it holds a block of the
    /// class.
    ///
    /// # Errors
    /// As [`SharedHeap::alloc`].
    #[inline]
    pub fn alloc(&mut self, layout: Layout) -> Result<RelPtr<u8>> {
        if let Some(c) = class_of(layout).filter(|&c| c < NSMALL) {
            if self.own() {
                while let Some(b) = self.take(c) {
                    // Relaxed: as in SharedHeap::alloc_class.
                    let fresh = self
                        .heap
                        .bit(b)
                        .is_some_and(|(w, m)| w.fetch_or(m, Ordering::Relaxed) & m == 0);
                    if fresh {
                        return Ok(RelPtr::from_offset(b.start));
                    }
                    // Someone else holds it: only corruption can cause this.
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

    /// As [`SharedHeap::free`]: the same checks (a double free is detected
    /// across processes), then the block is kept in the cache, or, when the
    /// cache is full, half the cache goes back to the shared lists.
    ///
    /// # Errors
    /// As [`SharedHeap::free`].
    #[inline]
    pub fn free(&mut self, ptr: RelPtr<u8>, layout: Layout) -> Result<()> {
        let off = ptr.offset();
        let b = self.heap.checked_block(off, layout)?;
        if b.class >= NSMALL || !self.own() {
            return self.heap.release(b);
        }
        let Some((word, mask)) = self.heap.bit(b) else {
            return Err(Error::DoubleFree { offset: off });
        };
        // Relaxed: as in SharedHeap::free; the block is now held here.
        if word.fetch_and(!mask, Ordering::Relaxed) & mask == 0 {
            return Err(Error::DoubleFree { offset: off });
        }
        if self.magazines[b.class].len == CACHE_BLOCKS {
            self.spill(b.class, CACHE_BLOCKS / 2);
        }
        let m = &mut self.magazines[b.class];
        m.blocks[m.len] = b;
        m.len += 1;
        Ok(())
    }

    /// Returns the newest `n` cached blocks of class `c` to a shared list
    /// as one chain (one CAS).
    fn spill(&mut self, c: usize, n: usize) {
        let m = &mut self.magazines[c];
        let n = n.min(m.len);
        if n == 0 {
            return;
        }
        let mut starts = [0u64; CACHE_BLOCKS];
        for (s, b) in starts.iter_mut().zip(&m.blocks[m.len - n..m.len]) {
            *s = b.start;
        }
        let chain = &starts[..n];
        let links: Option<Vec<&AtomicU64>> = chain.iter().map(|&b| self.heap.link(b)).collect();
        if let Some(links) = links {
            for (link, next) in links.iter().zip(&chain[1..]) {
                link.store(next / GRANULE, Ordering::Relaxed);
            }
            let head = self.heap.head(current_shard(), c);
            if self.heap.push_chain(head, chain[0], chain[n - 1]) {
                move_shard();
            }
        }
        m.len -= n;
    }

    /// Returns every cached block to the shared lists.
    pub fn flush(&mut self) {
        if self.own() {
            for c in 0..NSMALL {
                self.spill(c, CACHE_BLOCKS);
            }
        }
    }

    /// Blocks the cache holds now.
    pub fn held(&self) -> usize {
        self.magazines.iter().map(|m| m.len).sum()
    }

    /// As [`SharedHeap::new`], through the cache.
    ///
    /// # Errors
    /// As [`SharedHeap::alloc`].
    #[allow(clippy::new_ret_no_self)] // mirrors SharedHeap::new
    pub fn new<T: Shared>(&mut self, value: T) -> Result<RelPtr<T>> {
        let off = self.alloc(Layout::new::<T>())?.offset();
        // SAFETY: a block just allocated to this thread, of at least
        // size_of::<T>() bytes and aligned for T, inside the arena.
        unsafe { self.heap.raw(off).cast::<T>().write(value) };
        Ok(RelPtr::from_offset(off))
    }

    /// As [`SharedHeap::new_slice`], through the cache.
    ///
    /// # Errors
    /// As [`SharedHeap::new_slice`].
    pub fn new_slice<T: Shared + Copy>(&mut self, items: &[T]) -> Result<RelSlice<T>> {
        if items.is_empty() {
            return Ok(RelSlice::empty());
        }
        let off = self.alloc(slice_layout::<T>(items.len())?)?.offset();
        // SAFETY: a block just allocated to this thread, of at least
        // size_of_val(items) bytes, aligned for T; `items` is a distinct
        // local slice.
        unsafe {
            std::ptr::copy_nonoverlapping(
                items.as_ptr(),
                self.heap.raw(off).cast::<T>(),
                items.len(),
            )
        };
        Ok(RelSlice::from_raw_parts(off, items.len() as u64))
    }

    /// As [`SharedHeap::delete_slice`], through the cache.
    ///
    /// # Errors
    /// As [`SharedHeap::delete_slice`].
    pub fn delete_slice<T: Shared>(&mut self, s: RelSlice<T>) -> Result<()> {
        if s.is_empty() {
            return self.heap.delete_slice(s);
        }
        self.free(s.as_ptr().cast(), slice_layout::<T>(s.len())?)
    }

    /// As [`SharedHeap::delete`], through the cache.
    ///
    /// # Errors
    /// As [`SharedHeap::free`].
    pub fn delete<T: Shared>(&mut self, ptr: RelPtr<T>) -> Result<()> {
        self.free(ptr.cast(), Layout::new::<T>())
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
            cache.free(p, l).unwrap();
        }
        assert!(cache.held() <= CACHE_BLOCKS && cache.held() > 0);
        // Double frees are still caught, also of a cached block.
        assert!(matches!(
            cache.free(ps[0], l),
            Err(Error::DoubleFree { .. })
        ));
        assert!(matches!(heap.free(ps[0], l), Err(Error::DoubleFree { .. })));
        // Held blocks are leaked until the cache lets them go.
        let r = heap.check();
        assert!(r.is_consistent(), "{r}");
        assert_eq!(r.leaked_blocks, cache.held() as u64);
        let again = cache.alloc(l).unwrap();
        assert!(ps.contains(&again));
        cache.free(again, l).unwrap();
        // Wrong layouts and foreign pointers are refused as by the heap.
        assert!(matches!(
            cache.free(ps[1], Layout::from_size_align(8, 8).unwrap()),
            Err(Error::WrongLayout { .. }) | Err(Error::DoubleFree { .. })
        ));
        assert!(cache.free(RelPtr::from_offset(64), l).is_err());
        // Large blocks go straight to the heap.
        let big = Layout::from_size_align(10_000, 8).unwrap();
        let b = cache.alloc(big).unwrap();
        cache.free(b, big).unwrap();
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
        cache.free(p, l).unwrap();
        assert_eq!(cache.held(), 1);
        // Pretend we are the child of a fork.
        cache.generation = cache.generation.wrapping_sub(1);
        let q = cache.alloc(l).unwrap();
        assert_eq!(cache.held(), 0, "the copied blocks were forgotten");
        assert_ne!(q, p, "the parent's held block was not taken");
        cache.free(q, l).unwrap();
    }
}
