//! The shared heap: a lock-free allocator that lives inside a segment and
//! that every attached process may use at the same time.
//!
//! ```
//! use shmutils::{RelPtr, Segment};
//! use std::sync::atomic::{AtomicU64, Ordering};
//! let seg = Segment::anonymous(1 << 20)?;
//! let heap = seg.heap();
//! let p: RelPtr<AtomicU64> = heap.new(AtomicU64::new(1923))?;
//! heap.get(p)?.fetch_add(1, Ordering::SeqCst);
//! assert_eq!(heap.get(p)?.load(Ordering::SeqCst), 1924);
//! heap.delete(p)?;
//! assert!(heap.check().is_clean());
//! # Ok::<(), shmutils::Error>(())
//! ```
//!
//! # How it works
//! - Requests are rounded to a **size class**: small classes
//!   (8 B .. 4 KiB) are blocks of 64 KiB slabs, large ones whole runs of
//!   pages. Alignment is honoured up to 4096 bytes.
//! - Each class has 8 **free lists** (shards), each a lock-free Treiber
//!   stack whose head is one `AtomicU64` (on its own cache line) with
//!   an ABA tag. A thread works on one shard and moves to another when it
//!   loses a CAS race, so processes spread out instead of fighting over one
//!   cache line; an empty shard takes blocks from the others before new
//!   memory is carved.
//! - New slabs and large blocks are **carved** from the arena with a CAS on
//!   a bump counter of pages; a **page map** (one word per page) records the
//!   class of each carved page, so any offset leads to its block in O(1).
//! - An **allocation bitmap** holds one "allocated" bit per block (those of
//!   neighbouring blocks in different cache lines). Allocation sets the bit
//!   with `fetch_or`, freeing clears it with `fetch_and`: a double free, a
//!   pointer into the middle of a block, a foreign pointer or a layout of
//!   another class is an `Err` and leaves the heap as it was.
//! - **Named objects** live in a fixed directory of [`DIR_CAPACITY`]
//!   entries, claimed by CAS ([`SharedHeap::find_or_init`]).
//!
//! No operation takes a lock, so no process can leave the heap blocked.
//! Every change is a single CAS, `fetch_or` or `fetch_and`; a process killed
//! between two of them loses at most the block it was handing out or taking
//! back (or the slab it was carving). [`SharedHeap::check`] tells such
//! leaked blocks apart from corruption.
//!
//! - An opt-in [`HeapCache`] keeps a few freed small blocks per class in
//!   process memory (blocks it *holds*), halving the atomic operations of
//!   an alloc + free pair.
//!
//! # Cost per block
//! No header: a block costs its class size, plus the arena's bookkeeping:
//! a 64-byte bitmap line and a 4-byte page map entry per 4 KiB page (1.7%
//! of the arena). A 1-byte block costs 8.1 bytes, a 64-byte block 65 bytes
//! (Boost.Interprocess: 48 and 80).
//!
//! # Why `free` is safe
//! Freeing does not unmap anything: the block stays in the mapping and
//! every bit pattern is a valid value of any [`Shared`] type. So a `&T`
//! that outlives its block (in this process or another) can read garbage,
//! never fault or observe an invalid value: the same guarantee shmutils
//! gives against buggy peers. A stale `&AtomicU64` *writing* into a freed
//! block can garble a free-list link; the allocator validates every link
//! against the page map and the bitmap, so that costs leaked blocks at
//! worst, never a block with two owners or an access outside the arena.
//!
//! # Resolving pointers
//! [`get`](SharedHeap::get) checks only what costs nothing: the pointer is
//! in the arena (one range comparison) and aligned for `T`. It does not
//! check that the block is allocated; [`get_checked`](SharedHeap::get_checked)
//! (and handles) also look the block up in the page map and the bitmap.
//! Either way a bad pointer is an `Err`, never undefined behaviour.

pub(crate) mod cache;
pub(crate) mod check;
pub(crate) mod class;
pub(crate) mod directory;
pub(crate) mod layout;
pub(crate) mod stack;
mod typed;

use std::alloc::Layout;
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::process;
use crate::ptr::{RelPtr, RelSlice};
use crate::shared::Shared;

pub use cache::{HeapCache, CACHE_BLOCKS};
pub use check::{CheckReport, ClassStats, HeapStats};
pub use directory::{DIR_CAPACITY, MAX_NAME_LEN, MAX_TYPE_NAME_LEN};
pub use typed::WithHeap;

use class::NCLASSES;
use class::{
    block_index, block_size, blocks_per_span, class_of, span_pages, GRANULE, PAGE, SLAB_PAGES,
};
use layout::{Geometry, HeapHeader, BITMAP_BYTES_PER_PAGE, HEAD_STRIDE, HEAP_MAGIC, NSHARDS};
use stack::Pop;

/// How many corrupt free-list entries one allocation skips before giving
/// up with [`Error::HeapCorrupt`].
const MAX_SKIPS: usize = 64;

/// A view of the heap inside a mapping: cheap to copy, valid as long as
/// the mapping (`'s`). All its state is in the segment; the view holds only
/// the mapping's address and the heap's validated geometry.
#[derive(Clone, Copy)]
pub struct SharedHeap<'s> {
    base: NonNull<u8>,
    geo: Geometry,
    name: Option<&'s str>,
    id: Option<u64>,
    _mapping: PhantomData<&'s [AtomicU64]>,
}

// SAFETY: the view only reaches shared memory through atomics and `Shared`
// types (which are Sync), exactly as other processes do; the raw base
// pointer is a location, not ownership.
unsafe impl Send for SharedHeap<'_> {}
// SAFETY: as above.
unsafe impl Sync for SharedHeap<'_> {}

impl fmt::Debug for SharedHeap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedHeap")
            .field("segment", &self.name)
            .field("arena_start", &self.geo.arena_start)
            .field("arena_bytes", &self.geo.arena_bytes())
            .finish()
    }
}

/// What [`SharedHeap::carve`] made of fresh pages.
enum Carved {
    /// A span: its first block, already marked allocated.
    Block(u64),
    /// The arena is used up.
    Full,
    /// The pages the bump counter gave were not fresh (corruption); they
    /// were skipped.
    Taken,
}

/// Where a block lies.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Block {
    pub(crate) class: usize,
    /// Offset of the block's first byte.
    pub(crate) start: u64,
    /// Arena page where its span starts.
    pub(crate) span_page: u64,
    /// Its index in the span.
    pub(crate) index: u64,
}

thread_local! {
    /// How far this thread has moved from its home shard after lost CAS
    /// races.
    static SHARD_SHIFT: Cell<u32> = const { Cell::new(0) };
}

/// The calling thread's shard: its home shard (a hash of its thread id, so
/// threads and processes spread out) moved on by lost races.
#[inline]
fn current_shard() -> usize {
    let home = process::current_tid().wrapping_mul(0x9e37_79b9) >> 29;
    let shift = SHARD_SHIFT.try_with(Cell::get).unwrap_or(0);
    (home.wrapping_add(shift) as usize) % NSHARDS
}

/// Moves the calling thread to the next shard after a lost CAS race.
#[cold]
fn move_shard() {
    let _ = SHARD_SHIFT.try_with(|s| s.set(s.get().wrapping_add(1)));
}

impl<'s> SharedHeap<'s> {
    /// Lays out an empty heap at `heap_off` in `base..base + len` and
    /// publishes it (its magic last).
    ///
    /// # Safety
    /// `base..base + len` must be valid for reads and writes, aligned to
    /// 4096 bytes, and accessed by nobody else during the call.
    pub(crate) unsafe fn format(base: NonNull<u8>, len: usize, heap_off: u64) -> Result<()> {
        check_base(base)?;
        let geo = Geometry::compute(len as u64, heap_off)?;
        // SAFETY: heap_off..arena_start lies inside base..base + len
        // (Geometry guarantees end() <= len), which the caller gives us
        // exclusively for now.
        unsafe {
            std::ptr::write_bytes(
                base.as_ptr().add(heap_off as usize),
                0,
                (geo.arena_start - heap_off) as usize,
            )
        };
        // SAFETY: the header lies at heap_off (64-aligned, base page
        // aligned) inside the region, and was just zeroed (a valid header).
        let hdr = unsafe { &*(base.as_ptr().add(heap_off as usize) as *const HeapHeader) };
        geo.store(hdr);
        // Release: publishes the geometry and the zeroed bookkeeping to the
        // Acquire load in attach().
        hdr.magic.store(HEAP_MAGIC, Ordering::Release);
        Ok(())
    }

    /// A view of the heap formatted at `heap_off` in `base..base + len`,
    /// after checking its header against the geometry `len` implies.
    ///
    /// # Safety
    /// `base..base + len` must stay valid for reads and writes for `'s`, be
    /// aligned to 4096 bytes, and be accessed (by anyone) only through
    /// atomics and [`Shared`] types.
    ///
    /// # Errors
    /// [`Error::HeapCorrupt`] if the header is not a heap's or disagrees
    /// with `len`; errors of [`Geometry::compute`].
    pub(crate) unsafe fn attach(
        base: NonNull<u8>,
        len: usize,
        heap_off: u64,
        name: Option<&'s str>,
        id: Option<u64>,
    ) -> Result<SharedHeap<'s>> {
        check_base(base)?;
        let geo = Geometry::compute(len as u64, heap_off)?;
        // SAFETY: as in format(); the caller keeps the region alive for 's.
        let hdr = unsafe { &*(base.as_ptr().add(heap_off as usize) as *const HeapHeader) };
        // Acquire: pairs with the Release store in format().
        let magic = hdr.magic.load(Ordering::Acquire);
        if magic != HEAP_MAGIC {
            return Err(Error::HeapCorrupt {
                what: format!(
                    "heap magic: expected {:?}, found {:?}",
                    String::from_utf8_lossy(&HEAP_MAGIC.to_le_bytes()),
                    String::from_utf8_lossy(&magic.to_le_bytes())
                ),
            });
        }
        geo.verify(hdr)?;
        Ok(SharedHeap {
            base,
            geo,
            name,
            id,
            _mapping: PhantomData,
        })
    }

    /// A view from a geometry that [`attach`](Self::attach) validated.
    ///
    /// # Safety
    /// `geo` must come from a successful `attach` on this same mapping at
    /// `base`, and the mapping must stay as `attach` requires for `'s`.
    pub(crate) unsafe fn from_parts(
        base: NonNull<u8>,
        geo: Geometry,
        name: Option<&'s str>,
        id: Option<u64>,
    ) -> SharedHeap<'s> {
        SharedHeap {
            base,
            geo,
            name,
            id,
            _mapping: PhantomData,
        }
    }

    /// The validated geometry (kept by a segment to make views cheaply).
    pub(crate) fn geometry(&self) -> Geometry {
        self.geo
    }

    // ----- raw access to the bookkeeping -----

    pub(crate) fn header(&self) -> &'s HeapHeader {
        // SAFETY: the header lies at heap_off inside the mapping (attach
        // validated the geometry against its length), 64-aligned; all its
        // fields are atomics.
        unsafe { &*(self.base.as_ptr().add(self.geo.heap_off as usize) as *const HeapHeader) }
    }

    #[inline]
    pub(crate) fn head(&self, shard: usize, class: usize) -> &'s AtomicU64 {
        // Clamped (a no-op for the indices callers pass) so that the
        // address is in range whatever they pass.
        let (shard, class) = (shard % NSHARDS, class.min(NCLASSES - 1));
        let off = self.geo.heads_off + (class * NSHARDS + shard) as u64 * HEAD_STRIDE;
        // SAFETY: shard and class are clamped into range, so the word lies
        // in the heads array inside the mapping; 64-aligned.
        unsafe { &*(self.base.as_ptr().add(off as usize) as *const AtomicU64) }
    }

    /// The page map entry of arena page `page`, 0 if out of range.
    ///
    /// Entry: `(class + 1) << 24 | pages from the span's first page`; 0 =
    /// not carved. Written once (Release) when the span is carved.
    #[inline]
    pub(crate) fn page_entry(&self, page: u64) -> u32 {
        match self.page_word(page) {
            // Acquire: pairs with the Release store in carve(), so whoever
            // meets a block of the span sees its whole entry.
            Some(w) => w.load(Ordering::Acquire),
            None => 0,
        }
    }

    #[inline]
    fn page_word(&self, page: u64) -> Option<&'s AtomicU32> {
        if page >= self.geo.arena_pages {
            return None;
        }
        let off = self.geo.pagemap_off + page * 4;
        // SAFETY: page < arena_pages, so the word lies in the page map
        // inside the mapping; 4-aligned (pagemap_off is 8-aligned).
        Some(unsafe { &*(self.base.as_ptr().add(off as usize) as *const AtomicU32) })
    }

    /// The bitmap word and mask of a block's "allocated" bit: block `i` of
    /// a span uses line `i % SLAB_PAGES` of the span's lines (one line per
    /// page), bit `i / SLAB_PAGES` in it.
    #[inline]
    pub(crate) fn bit(&self, b: Block) -> Option<(&'s AtomicU64, u64)> {
        let line = b.index % SLAB_PAGES;
        let pos = b.index / SLAB_PAGES;
        if b.span_page + line >= self.geo.arena_pages || pos >= BITMAP_BYTES_PER_PAGE * 8 {
            return None;
        }
        let word =
            self.geo.bitmap_off + (b.span_page + line) * BITMAP_BYTES_PER_PAGE + pos / 64 * 8;
        // SAFETY: span_page + line < arena_pages and pos < 512, so the word
        // lies in that page's 64 bytes of bitmap inside the mapping;
        // 8-aligned (bitmap_off is 64-aligned).
        let w = unsafe { &*(self.base.as_ptr().add(word as usize) as *const AtomicU64) };
        Some((w, 1u64 << (pos % 64)))
    }

    /// The bitmap line of arena page `page` (`None` past the arena).
    pub(crate) fn bitmap_line(&self, page: u64) -> Option<&'s [AtomicU64; 8]> {
        if page >= self.geo.arena_pages {
            return None;
        }
        let off = self.geo.bitmap_off + page * BITMAP_BYTES_PER_PAGE;
        // SAFETY: page < arena_pages: the 64 bytes lie in the bitmap inside
        // the mapping, 64-aligned; all atomics.
        Some(unsafe { &*(self.base.as_ptr().add(off as usize) as *const [AtomicU64; 8]) })
    }

    /// Whether a block's bit is set.
    #[inline]
    pub(crate) fn is_set(&self, b: Block) -> bool {
        self.bit(b)
            .is_some_and(|(w, m)| w.load(Ordering::Relaxed) & m != 0)
    }

    /// The block containing the byte at `off`.
    ///
    /// # Errors
    /// A short reason when `off` is in no carved block.
    #[inline]
    pub(crate) fn locate(&self, off: u64) -> std::result::Result<Block, &'static str> {
        let rel = off.wrapping_sub(self.geo.arena_start);
        if rel >= self.geo.arena_bytes() {
            return Err(if off == 0 {
                "it is null"
            } else {
                "it lies outside the heap's arena"
            });
        }
        let page = rel / PAGE;
        let e = self.page_entry(page);
        let cls = (e >> 24) as usize;
        if cls == 0 {
            return Err("it lies in memory no block was carved from");
        }
        if cls > NCLASSES {
            return Err("its page map entry is corrupt");
        }
        let c = cls - 1;
        let dist = u64::from(e & 0xff_ffff);
        let pages = span_pages(c);
        if dist > page || dist >= pages || page - dist + pages > self.geo.arena_pages {
            return Err("its page map entry is corrupt");
        }
        // The span's first and last entries must agree: one entry a peer
        // rewrote cannot then describe a span overlapping another one's
        // blocks (which could give a block two owners).
        let first = page - dist;
        let class_bits = (cls as u32) << 24;
        if (dist != 0 && self.page_entry(first) != class_bits)
            || (dist != pages - 1
                && self.page_entry(first + pages - 1) != class_bits | (pages - 1) as u32)
        {
            return Err("its span's page map entries disagree");
        }
        let span = (page - dist) * PAGE;
        let i = block_index(c, rel - span);
        if i >= blocks_per_span(c) {
            return Err("it lies in the unused tail of a slab");
        }
        Ok(Block {
            class: c,
            start: self.geo.arena_start + span + i * block_size(c),
            span_page: page - dist,
            index: i,
        })
    }

    // ----- allocation -----

    /// Allocates a block for `layout` (alignment up to 4096 honoured).
    ///
    /// The block's contents are whatever was there: a fresh block is zero,
    /// a reused one holds old bytes.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`]; [`Error::InvalidArgument`] for an alignment
    /// above 4096; [`Error::HeapCorrupt`] if a peer corrupted the free lists
    /// beyond what one allocation skips.
    pub fn alloc(&self, layout: Layout) -> Result<RelPtr<u8>> {
        let Some(c) = class_of(layout) else {
            return Err(Error::InvalidArgument {
                what: format!(
                    "alignment {}: the shared heap aligns blocks to at most {PAGE} bytes",
                    layout.align()
                ),
            });
        };
        self.alloc_class(c, layout).map(RelPtr::from_offset)
    }

    fn alloc_class(&self, c: usize, layout: Layout) -> Result<u64> {
        let shard = current_shard();
        for _ in 0..MAX_SKIPS {
            let Some((off, head, installed)) = self.pop_class(c, shard) else {
                match self.carve(c, shard) {
                    Carved::Block(off) => return Ok(off),
                    Carved::Full => {
                        return Err(Error::OutOfMemory {
                            size: layout.size(),
                            align: layout.align(),
                        })
                    }
                    // The pages were not fresh (a bump counter set back):
                    // they were skipped; carve again further on.
                    Carved::Taken => {
                        self.note_corruption();
                        continue;
                    }
                }
            };
            // Relaxed: read-modify-writes of one word are totally ordered,
            // and the list's Release/Acquire orders them with push and pop.
            let claimed = match self.locate(off) {
                Ok(b) if b.class == c && b.start == off => self
                    .bit(b)
                    .is_some_and(|(w, m)| w.fetch_or(m, Ordering::Relaxed) & m == 0),
                _ => false,
            };
            if claimed {
                return Ok(off);
            }
            // Not a block of this class, or allocated already: the link that
            // led here was garbage. Never hand a block to two owners; drop
            // the rest of that chain (leaked) instead of following it.
            self.note_corruption();
            self.cut(head, installed);
        }
        Err(Error::HeapCorrupt {
            what: format!(
                "the free lists (or fresh pages) of {}-byte blocks hold more than {MAX_SKIPS} corrupt entries",
                block_size(c)
            ),
        })
    }

    /// Pops a block of class `c`: from this thread's shard, else any shard.
    /// Returns it with the head it came from and the value the pop left
    /// there.
    #[inline]
    fn pop_class(&self, c: usize, shard: usize) -> Option<(u64, &'s AtomicU64, u64)> {
        let head = self.head(shard, c);
        let (p, contended) = self.pop(head);
        if contended {
            move_shard();
        }
        if let Pop::Block(off, installed) = p {
            return Some((off, head, installed));
        }
        (1..NSHARDS).find_map(|k| {
            let head = self.head(shard + k, c);
            match self.pop(head).0 {
                Pop::Block(off, installed) => Some((off, head, installed)),
                Pop::Empty => None,
            }
        })
    }

    /// Carves a new span of class `c`: returns its first block (marked
    /// allocated) and pushes the rest of a slab onto `shard`'s list.
    ///
    /// The bump counter is peer-writable: one set back would hand out pages
    /// that are already spans (with blocks in use). So each page map entry
    /// is claimed by CAS from 0 (pages above the counter are never mapped),
    /// and the first block's bit must have been clear; otherwise the pages
    /// are left behind (leaked, the counter has moved past them) and the
    /// result is [`Carved::Taken`].
    fn carve(&self, c: usize, shard: usize) -> Carved {
        let pages = span_pages(c);
        let Some(first) = self.carve_pages(pages) else {
            return Carved::Full;
        };
        for i in 0..pages {
            let entry = ((c as u32 + 1) << 24) | i as u32;
            // Release: pairs with the Acquire load in page_entry().
            let claimed = self.page_word(first + i).is_some_and(|w| {
                w.compare_exchange(0, entry, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
            });
            if !claimed {
                // Give back the entries claimed so far (nobody can hold a
                // block of them: the chain was not pushed yet).
                for j in 0..i {
                    if let Some(w) = self.page_word(first + j) {
                        w.store(0, Ordering::Relaxed);
                    }
                }
                return Carved::Taken;
            }
        }
        let span = self.geo.arena_start + first * PAGE;
        let Some((word, mask)) = self.bit(Block {
            class: c,
            start: span,
            span_page: first,
            index: 0,
        }) else {
            return Carved::Taken;
        };
        if word.fetch_or(mask, Ordering::Relaxed) & mask != 0 {
            // A stale bit in a fresh span: the bitmap was written over.
            // Leave the span unused rather than trust its bits.
            return Carved::Taken;
        }
        let n = blocks_per_span(c);
        if n > 1 {
            let size = block_size(c);
            for i in 1..n - 1 {
                let Some(link) = self.link(span + i * size) else {
                    return Carved::Taken;
                };
                link.store((span + (i + 1) * size) / GRANULE, Ordering::Relaxed);
            }
            if self.push_chain(self.head(shard, c), span + size, span + (n - 1) * size) {
                move_shard();
            }
        }
        Carved::Block(span)
    }

    /// Takes `pages` pages off the bump counter; `None` when they do not fit.
    fn carve_pages(&self, pages: u64) -> Option<u64> {
        let bump = &self.header().bump;
        let mut cur = bump.load(Ordering::Relaxed);
        loop {
            if cur > self.geo.arena_pages {
                self.note_corruption();
                return None;
            }
            let end = cur.checked_add(pages)?;
            if end > self.geo.arena_pages {
                return None;
            }
            // Relaxed: the pages become reachable only through the page map
            // entries and list pushes that follow, which carry the ordering.
            match bump.compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(cur),
                Err(seen) => cur = seen,
            }
        }
    }

    /// Frees the block at `ptr`, allocated with a layout of the same size
    /// class as `layout`.
    ///
    /// Safe: see the [module docs](self#why-free-is-safe).
    ///
    /// # Errors
    /// [`Error::InvalidPointer`] for a null or foreign pointer or one into
    /// the middle of a block; [`Error::WrongLayout`] for a layout of another
    /// class; [`Error::DoubleFree`] for a block that is not allocated. The
    /// heap is unchanged in every case.
    pub fn free(&self, ptr: RelPtr<u8>, layout: Layout) -> Result<()> {
        let b = self.checked_block(ptr.offset(), layout)?;
        self.release(b)
    }

    /// The block starting at `off`, if `layout` belongs to its class.
    #[inline]
    pub(crate) fn checked_block(&self, off: u64, layout: Layout) -> Result<Block> {
        let b = self.locate(off).map_err(|reason| Error::InvalidPointer {
            offset: off,
            reason: reason.to_owned(),
        })?;
        if b.start != off {
            return Err(Error::InvalidPointer {
                offset: off,
                reason: format!(
                    "it points inside the {}-byte block at {:#x}, not at its start",
                    block_size(b.class),
                    b.start
                ),
            });
        }
        if class_of(layout) != Some(b.class) {
            return Err(Error::WrongLayout {
                offset: off,
                block_size: block_size(b.class),
                size: layout.size(),
                align: layout.align(),
            });
        }
        Ok(b)
    }

    /// Clears a block's bit and pushes it onto this thread's shard.
    #[inline]
    pub(crate) fn release(&self, b: Block) -> Result<()> {
        let Some((word, mask)) = self.bit(b) else {
            return Err(Error::DoubleFree { offset: b.start });
        };
        // Relaxed: see alloc_class(); the push below is the Release.
        if word.fetch_and(!mask, Ordering::Relaxed) & mask == 0 {
            return Err(Error::DoubleFree { offset: b.start });
        }
        if self.push(self.head(current_shard(), b.class), b.start) {
            move_shard();
        }
        Ok(())
    }

    /// Whether `offset` is the start of an allocated block of the size
    /// class of `layout` (what handles check before resolving).
    pub fn is_allocated(&self, offset: u64, layout: Layout) -> bool {
        match self.locate(offset) {
            Ok(b) if b.start == offset && class_of(layout) == Some(b.class) => self.is_set(b),
            _ => false,
        }
    }

    /// Moves `value` into a new block and returns its pointer. The value is
    /// written whole before the pointer exists, so no peer can see it half
    /// made (DESIGN.md rule 4).
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc).
    #[allow(clippy::new_ret_no_self)] // the contract's name: `heap.new(value)`
    pub fn new<T: Shared>(&self, value: T) -> Result<RelPtr<T>> {
        let off = self.alloc(Layout::new::<T>())?.offset();
        // SAFETY: the block was just allocated, so this thread owns it; it
        // lies in the arena, holds at least size_of::<T>() bytes and is
        // aligned for T (class_of honours the layout).
        unsafe { self.raw(off).cast::<T>().write(value) };
        Ok(RelPtr::from_offset(off))
    }

    /// A new block holding a zeroed `T` (valid: every bit pattern of a
    /// [`Shared`] type is).
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc).
    pub fn new_zeroed<T: Shared>(&self) -> Result<RelPtr<T>> {
        let off = self.alloc(Layout::new::<T>())?.offset();
        // SAFETY: as in new(): a fresh block of at least size_of::<T>() bytes.
        unsafe { std::ptr::write_bytes(self.raw(off), 0, size_of::<T>()) };
        Ok(RelPtr::from_offset(off))
    }

    /// Copies `items` into a new block. An empty `items` gives
    /// [`RelSlice::empty`] and allocates nothing.
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc); [`Error::InvalidArgument`] if the size
    /// overflows.
    pub fn new_slice<T: Shared + Copy>(&self, items: &[T]) -> Result<RelSlice<T>> {
        if items.is_empty() {
            return Ok(RelSlice::empty());
        }
        let layout = slice_layout::<T>(items.len())?;
        let off = self.alloc(layout)?.offset();
        // SAFETY: a fresh block of at least size_of_val(items) bytes, aligned
        // for T; `items` is a distinct local slice.
        unsafe {
            std::ptr::copy_nonoverlapping(items.as_ptr(), self.raw(off).cast::<T>(), items.len())
        };
        Ok(RelSlice::from_raw_parts(off, items.len() as u64))
    }

    /// Frees the block of a value made by [`new`](Self::new) or
    /// [`new_zeroed`](Self::new_zeroed) (nothing is dropped).
    ///
    /// # Errors
    /// As [`free`](Self::free).
    pub fn delete<T: Shared>(&self, ptr: RelPtr<T>) -> Result<()> {
        self.free(ptr.cast(), Layout::new::<T>())
    }

    /// Frees the block of a slice made by [`new_slice`](Self::new_slice).
    /// The empty slice is accepted and frees nothing.
    ///
    /// # Errors
    /// As [`free`](Self::free); [`Error::InvalidPointer`] for an empty
    /// slice with a non-null offset (no block was made for it).
    pub fn delete_slice<T: Shared>(&self, s: RelSlice<T>) -> Result<()> {
        if s.is_empty() {
            if s.offset() == 0 {
                return Ok(());
            }
            return Err(Error::InvalidPointer {
                offset: s.offset(),
                reason: "an empty slice owns no block".to_owned(),
            });
        }
        self.free(s.as_ptr().cast(), slice_layout::<T>(s.len())?)
    }

    // ----- resolution -----

    /// The address of the arena byte at `off`, unchecked.
    #[inline]
    pub(crate) fn raw(&self, off: u64) -> *mut u8 {
        self.base.as_ptr().wrapping_add(off as usize)
    }

    /// Checks that `off..off + size` lies in the arena and `off` is aligned
    /// to `align`; returns the address.
    #[inline]
    fn resolve_range(&self, off: u64, size: u64, align: usize) -> Result<*mut u8> {
        let rel = off.wrapping_sub(self.geo.arena_start);
        let arena = self.geo.arena_bytes();
        if rel > arena || size > arena - rel {
            return Err(self.bad_range(off, size));
        }
        let p = self.raw(off);
        if (p as usize) & (align - 1) != 0 {
            return Err(Error::Misaligned {
                offset: off as usize,
                align,
            });
        }
        Ok(p)
    }

    #[cold]
    fn bad_range(&self, off: u64, size: u64) -> Error {
        if off == 0 {
            Error::InvalidPointer {
                offset: 0,
                reason: "it is null".to_owned(),
            }
        } else if off < self.geo.arena_start {
            Error::InvalidPointer {
                offset: off,
                reason: format!(
                    "it points into the segment header and heap bookkeeping, below the arena at {:#x}",
                    self.geo.arena_start
                ),
            }
        } else {
            Error::OutOfBounds {
                offset: usize::try_from(off).unwrap_or(usize::MAX),
                len: usize::try_from(size).unwrap_or(usize::MAX),
                size: self.geo.end() as usize,
            }
        }
    }

    /// Resolves `ptr`: checks that a `T` there lies inside the heap's arena
    /// and is aligned. Costs one range comparison and an alignment test; it
    /// does **not** check that the block is allocated (see
    /// [`get_checked`](Self::get_checked)). A freed block still reads as
    /// some valid `T` ([module docs](self#why-free-is-safe)).
    ///
    /// # Errors
    /// [`Error::InvalidPointer`] for null or a pointer into the bookkeeping,
    /// [`Error::OutOfBounds`], [`Error::Misaligned`].
    #[inline]
    pub fn get<T: Shared>(&self, ptr: RelPtr<T>) -> Result<&'s T> {
        let p = self.resolve_range(ptr.offset(), size_of::<T>() as u64, align_of::<T>())?;
        // SAFETY: in bounds of the live mapping and aligned for T; every bit
        // pattern is a valid T (Shared) and mutation through &T is atomic
        // or locked, so sharing it with other processes is sound.
        Ok(unsafe { &*p.cast::<T>() })
    }

    /// [`get`](Self::get), and also checks that the `T` lies inside one
    /// allocated block (page map and bitmap lookups).
    ///
    /// # Errors
    /// As [`get`](Self::get); [`Error::InvalidPointer`] if the memory is not
    /// inside a live allocation.
    pub fn get_checked<T: Shared>(&self, ptr: RelPtr<T>) -> Result<&'s T> {
        let r = self.get(ptr)?;
        let off = ptr.offset();
        let invalid = |reason: String| Error::InvalidPointer {
            offset: off,
            reason,
        };
        let b = self.locate(off).map_err(|r| invalid(r.to_owned()))?;
        if !self.is_set(b) {
            return Err(invalid(format!(
                "the block at {:#x} containing it is not allocated",
                b.start
            )));
        }
        let size = block_size(b.class);
        if off + size_of::<T>() as u64 > b.start + size {
            return Err(invalid(format!(
                "a {} of {} bytes runs past the end of its {size}-byte block at {:#x}",
                T::NAME,
                size_of::<T>(),
                b.start
            )));
        }
        Ok(r)
    }

    /// Resolves a slice: all `len` elements inside the arena, aligned.
    ///
    /// # Errors
    /// As [`get`](Self::get); [`Error::OutOfBounds`] if the length
    /// overflows.
    pub fn get_slice<T: Shared>(&self, s: RelSlice<T>) -> Result<&'s [T]> {
        if s.is_empty() {
            return Ok(&[]);
        }
        let bytes = (s.len() as u64)
            .checked_mul(size_of::<T>() as u64)
            .ok_or_else(|| self.bad_range(s.offset().max(1), u64::MAX))?;
        let p = self.resolve_range(s.offset(), bytes, align_of::<T>())?;
        // SAFETY: all `len` elements lie in the live mapping, aligned; every
        // bit pattern is a valid T (Shared).
        Ok(unsafe { std::slice::from_raw_parts(p.cast::<T>(), s.len()) })
    }

    /// The relative pointer of a `T` that lies in this heap's arena (the
    /// reverse of [`get`](Self::get)).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::InvalidPointer`] if `r` is not in
    /// the arena.
    pub fn ptr_of<T: Shared>(&self, r: &T) -> Result<RelPtr<T>> {
        let off = (r as *const T as usize).wrapping_sub(self.base.as_ptr() as usize) as u64;
        self.resolve_range(off, size_of::<T>() as u64, align_of::<T>())?;
        Ok(RelPtr::from_offset(off))
    }

    /// The raw address of `ptr` in this process, bounds- and
    /// alignment-checked like [`get`](Self::get). Writing through it is the
    /// caller's business: only to memory this process owns (a block it
    /// allocated and has not published), or through atomics.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn as_ptr<T: Shared>(&self, ptr: RelPtr<T>) -> Result<*mut T> {
        Ok(self
            .resolve_range(ptr.offset(), size_of::<T>() as u64, align_of::<T>())?
            .cast())
    }

    /// The name of the segment the heap lives in (`None` if anonymous or
    /// not in a segment).
    pub(crate) fn segment_name(&self) -> Option<&'s str> {
        self.name
    }

    /// The random id of the segment the heap lives in.
    pub(crate) fn segment_id(&self) -> Option<u64> {
        self.id
    }
}

fn slice_layout<T>(len: usize) -> Result<Layout> {
    Layout::array::<T>(len).map_err(|_| Error::InvalidArgument {
        what: format!(
            "a slice of {len} elements of {} bytes overflows",
            size_of::<T>()
        ),
    })
}

fn check_base(base: NonNull<u8>) -> Result<()> {
    if base.as_ptr() as usize % PAGE as usize != 0 {
        return Err(Error::Misaligned {
            offset: base.as_ptr() as usize,
            align: PAGE as usize,
        });
    }
    Ok(())
}

/// A heap on an ordinary (non-shared) buffer, for unit tests that could run
/// under Miri.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// One heap page of u64s, page-aligned.
    #[repr(C, align(4096))]
    #[derive(Clone, Copy)]
    struct Page([u64; 512]);

    /// A zeroed, page-aligned `Vec`-backed region with a heap at offset 64.
    pub(crate) struct TestRegion {
        base: NonNull<u8>,
        len: usize,
        _pages: Vec<Page>,
    }

    impl TestRegion {
        pub(crate) fn new(len: usize) -> TestRegion {
            let mut pages = vec![Page([0; 512]); len.div_ceil(4096)];
            let base = NonNull::new(pages.as_mut_ptr().cast::<u8>()).unwrap();
            let len = pages.len() * 4096;
            // SAFETY: the buffer is ours, zeroed, page-aligned and len long.
            unsafe { SharedHeap::format(base, len, 64) }.unwrap();
            TestRegion {
                base,
                len,
                _pages: pages,
            }
        }

        pub(crate) fn heap(&self) -> SharedHeap<'_> {
            // SAFETY: the buffer lives as long as self, is page-aligned, and
            // the heap touches it only through atomics and Shared types.
            unsafe { SharedHeap::attach(self.base, self.len, 64, None, None) }.unwrap()
        }
    }
}

#[cfg(test)]
mod tests;
