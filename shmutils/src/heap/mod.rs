//! The shared heap: a lock-free allocator that lives inside a segment and
//! that every attached process may use at the same time. Every block knows
//! its type, so a typed read never gives a reference of the wrong type.
//!
//! ```
//! use shmutils::{RelPtr, Segment};
//! use std::sync::atomic::{AtomicU64, Ordering};
//! let seg = Segment::anonymous(1 << 20)?;
//! let heap = seg.heap();
//! let p: RelPtr<AtomicU64> = heap.new(AtomicU64::new(1923))?;
//! heap.get(p)?.fetch_add(1, Ordering::SeqCst);
//! assert_eq!(heap.get(p)?.load(Ordering::SeqCst), 1924);
//! // SAFETY: only to show that a typed read checks the block's type.
//! let forged: RelPtr<u64> = unsafe { p.cast() };
//! assert!(heap.get(forged).is_err()); // the block holds an AtomicU64
//! # Ok::<(), shmutils::Error>(())
//! ```
//!
//! # How it works
//! - Requests are rounded to a **size class**: small classes
//!   (8 B .. 4 KiB) are blocks of 64 KiB slabs, large ones whole runs of
//!   pages. Alignment is honoured up to 4096 bytes.
//! - Every block has a **meta word** (`meta.rs`), kept outside the block:
//!   free (with its free-list link) or allocated (with its type's index in
//!   the segment's **type table**, `types.rs`, and whether a [`SharedBox`]
//!   still owns it privately). Small slabs keep their blocks' words at
//!   their tail; a large block's word is in the span words beside the
//!   page map.
//! - Each class has 8 **free lists** (shards), each a lock-free Treiber
//!   stack whose head is one `AtomicU64` (on its own cache line) with an
//!   ABA tag, linked through the meta words. A thread works on one shard
//!   and moves to another when it loses a CAS race.
//! - In a heap reached through a [`Segment`](crate::Segment), each thread
//!   allocates and frees blocks up to 256 KiB through its own **cache**, a
//!   list per class kept in its registry slot (`cache.rs`); the shared
//!   lists serve caches that run empty or full, and heaps without a
//!   registry attachment.
//! - New slabs and large blocks are **carved** from the arena with a CAS on
//!   a bump counter of pages; a **page map** (one word per page) records the
//!   class of each carved page, so any offset leads to its block in O(1).
//! - **Named objects** live in a fixed directory of [`DIR_CAPACITY`]
//!   entries, claimed by CAS ([`SharedHeap::find_or_init`]).
//! - All-zero bookkeeping is an empty heap, so a new heap writes only its
//!   header and stays sparse; pages are **reserved** in the backing object
//!   (`fallocate`, in chunks) before the heap first writes them, so a full
//!   file system is [`Error::NoSpace`], never a `SIGBUS`.
//!
//! No operation takes a lock, so no process can leave the heap blocked.
//! Every change is a single CAS or store; a process killed between two of
//! them loses at most the block it was handing out or taking back (or the
//! slab it was carving), and a reaper gives back what it can tell was free
//! (`cache.rs`). [`SharedHeap::check`] tells leaked blocks apart from
//! corruption.
//!
//! # Ownership: who may free a block
//! A `&T` from [`get`](SharedHeap::get) lives as long as the segment's
//! mapping, so freeing a block that others may still read is `unsafe`
//! ([`free`](SharedHeap::free), [`delete`](SharedHeap::delete),
//! [`delete_slice`](SharedHeap::delete_slice)). The safe owner is
//! [`SharedBox`]: [`new_box`](SharedHeap::new_box) makes a block only this
//! box can reach (`DerefMut`, freed on drop), and
//! [`into_rel`](SharedBox::into_rel) publishes it, after which only
//! `unsafe` code frees it.
//!
//! # Typed reads
//! [`get`](SharedHeap::get) and [`get_slice`](SharedHeap::get_slice) check
//! that the pointer is the start of an allocated, published block (a slice
//! may start at any element of one) whose type has `T`'s fingerprint. A
//! forged or stale pointer is an `Err`, never a reference to a free block,
//! to another type, or into the middle of a value.
//!
//! # Cost per block
//! No header: a block costs its class size plus its 8-byte meta word, and
//! the arena 12 bytes per page of page map and span words. A 1-byte block
//! costs 16 bytes, a 64-byte block 72 (Boost.Interprocess: 48 and 80).

mod boxed;
pub(crate) mod cache;
pub(crate) mod check;
pub(crate) mod class;
pub(crate) mod directory;
pub(crate) mod layout;
pub(crate) mod meta;
pub(crate) mod stack;
mod typed;
pub(crate) mod types;

use std::alloc::Layout;
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::process;
use crate::ptr::{RelPtr, RelSlice};
use crate::registry::local::{Attachment, Local};
use crate::registry::{Registry, RegistryHeader};
use crate::shared::Shared;
use crate::sys;

pub use boxed::SharedBox;
pub use check::{CheckReport, ClassStats, HeapStats};
pub use directory::{DIR_CAPACITY, MAX_NAME_LEN, MAX_TYPE_NAME_LEN};
pub use typed::WithHeap;
pub(crate) use types::TypeCache;
pub use types::{TypeRecord, TYPE_CAPACITY};

use class::{
    block_index, block_size, blocks_per_span, class_of, meta_offset, span_pages, CLASS_GEO,
    NCLASSES, NSMALL, PAGE, SLAB_PAGES,
};
use directory::Directory;
use layout::{Geometry, HeapHeader, HEAD_STRIDE, HEAP_MAGIC, NSHARDS, SPAN_WORD_BYTES};
use meta::Meta;
use stack::Pop;
use types::{TypeEntry, TypeKey, TypeTable};

/// How many corrupt free-list entries one allocation skips before giving
/// up with [`Error::HeapCorrupt`].
const MAX_SKIPS: usize = 64;

/// The smallest reservation step, in arena pages (1 MiB).
const RESERVE_CHUNK: u64 = 256;

/// A view of the heap inside a mapping: cheap to copy, valid as long as
/// the mapping (`'s`). All its state is in the segment, except this
/// process's validated copy of the type table; the view holds the
/// mapping's address, the heap's validated geometry and that copy.
#[derive(Clone, Copy)]
pub struct SharedHeap<'s> {
    base: NonNull<u8>,
    geo: Geometry,
    types: &'s TypeCache,
    /// The object behind the mapping, to reserve pages in before they are
    /// first written (`None`: memory that cannot run out that way).
    backing: Option<BorrowedFd<'s>>,
    name: Option<&'s str>,
    id: Option<u64>,
    /// This process's attachment to the heap's registry (`None`: no
    /// per-thread caches, every allocation takes the shared path).
    att: Option<&'s Arc<Attachment>>,
    /// `att`'s id (0: none), for the allocation path's thread-local lookup.
    att_id: u64,
    _mapping: PhantomData<&'s [AtomicU64]>,
}

// SAFETY: the view only reaches shared memory through atomics and through
// blocks it checked (typed, published, or owned by the caller), exactly as
// other processes do; the raw base pointer is a location, not ownership,
// and the type cache is all atomics behind a Mutex.
unsafe impl Send for SharedHeap<'_> {}
// SAFETY: as for Send: no method relies on being called from one thread.
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
enum Carved<'a> {
    /// A span: its first block and its meta word, already claimed with the
    /// state asked.
    Block(u64, &'a AtomicU64),
    /// The arena is used up.
    Full,
    /// The object's file system could not reserve the pages.
    NoSpace(Error),
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
    /// publishes it (its magic last). All-zero bookkeeping is an empty heap,
    /// so nothing but the header is written: a fresh object stays sparse
    /// whatever its size (its pages are zero until first written).
    ///
    /// # Safety
    /// `base..base + len` must be valid for reads and writes, aligned to
    /// 4096 bytes, all zero, and accessed by nobody else during the call.
    pub(crate) unsafe fn format(base: NonNull<u8>, len: usize, heap_off: u64) -> Result<()> {
        check_base(base)?;
        let geo = Geometry::compute(len as u64, heap_off)?;
        // SAFETY: the header lies at heap_off (64-aligned, base page
        // aligned) inside the region (Geometry guarantees end() <= len),
        // which is zero (a valid header: all atomics).
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
    /// atomics and through blocks the heap handed out; `types` must be used
    /// for this mapping's heap only; `backing`, if given, must be the object
    /// the mapping maps (from offset 0).
    ///
    /// # Errors
    /// [`Error::HeapCorrupt`] if the header is not a heap's or disagrees
    /// with `len`; errors of [`Geometry::compute`].
    pub(crate) unsafe fn attach(
        base: NonNull<u8>,
        len: usize,
        heap_off: u64,
        types: &'s TypeCache,
        backing: Option<BorrowedFd<'s>>,
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
            types,
            backing,
            name,
            id,
            att: None,
            att_id: 0,
            _mapping: PhantomData,
        })
    }

    /// A view from a geometry that [`attach`](Self::attach) validated.
    ///
    /// # Safety
    /// `geo` must come from a successful `attach` on this same mapping at
    /// `base`, and the mapping and `types` must stay as `attach` requires
    /// for `'s`.
    pub(crate) unsafe fn from_parts(
        base: NonNull<u8>,
        geo: Geometry,
        types: &'s TypeCache,
        backing: Option<BorrowedFd<'s>>,
        name: Option<&'s str>,
        id: Option<u64>,
    ) -> SharedHeap<'s> {
        SharedHeap {
            base,
            geo,
            types,
            backing,
            name,
            id,
            att: None,
            att_id: 0,
            _mapping: PhantomData,
        }
    }

    /// The same view, allocating through this process's attachment to
    /// the heap's registry (per-thread caches).
    ///
    /// # Safety
    /// `att` must be attached to this heap's registry.
    pub(crate) unsafe fn with_attachment(mut self, att: &'s Arc<Attachment>) -> SharedHeap<'s> {
        self.att = Some(att);
        self.att_id = att.id();
        self
    }

    /// The registry inside the heap's bookkeeping.
    pub(crate) fn registry(&self) -> Registry<'s> {
        // SAFETY: the registry lies at reg_off inside the mapping (attach
        // validated the geometry), 64-aligned, mapped for 's; all atomics.
        unsafe { Registry::at(self.registry_header()) }
    }

    /// The registry's header, for an attachment to hold.
    pub(crate) fn registry_header(&self) -> NonNull<RegistryHeader> {
        let at = self.raw(self.geo.reg_off).cast::<RegistryHeader>();
        // SAFETY: base is non-null and reg_off lies inside the mapping, so
        // base + reg_off is too.
        unsafe { NonNull::new_unchecked(at) }
    }

    /// The calling thread's slot (claimed on first use), if this view
    /// allocates through caches and a slot was free.
    #[inline(always)]
    pub(crate) fn slot(&self) -> Option<Local<'s>> {
        // The thread-local lookup first: it needs only the id.
        if let Some(l) = Attachment::cached(self.att_id) {
            return Some(l);
        }
        match self.att {
            Some(att) => att.slot(self),
            None => None,
        }
    }

    /// The validated geometry (kept by a segment to make views cheaply).
    pub(crate) fn geometry(&self) -> Geometry {
        self.geo
    }

    // ----- raw access to the bookkeeping -----

    /// A word of bookkeeping at `off`.
    ///
    /// # Safety
    /// `off..off + 8` must lie in the heap's bookkeeping or in a slab's
    /// meta area (never in a block), 8-aligned: memory only ever accessed
    /// through atomics.
    #[inline]
    unsafe fn word(&self, off: u64) -> &'s AtomicU64 {
        // SAFETY: the caller puts off inside the mapping, 8-aligned, in
        // memory that is only accessed atomically; the mapping lives for
        // 's.
        unsafe { &*(self.base.as_ptr().add(off as usize) as *const AtomicU64) }
    }

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
        // SAFETY: shard and class are clamped into range, so the word lies
        // in the heads array inside the mapping; 64-aligned; only atomics.
        unsafe { self.word(self.geo.heads_off + (class * NSHARDS + shard) as u64 * HEAD_STRIDE) }
    }

    /// The type table together with this process's copy of it.
    pub(crate) fn type_table(&self) -> TypeTable<'s> {
        // SAFETY: the table lies at types_off inside the mapping (attach
        // validated the geometry), TYPE_CAPACITY entries of 128 bytes,
        // 64-aligned, all atomics.
        let entries = unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().add(self.geo.types_off as usize) as *const TypeEntry,
                TYPE_CAPACITY,
            )
        };
        TypeTable {
            entries,
            cache: self.types,
        }
    }

    /// The page map entry of arena page `page`, 0 if out of range.
    ///
    /// Entry: `(class + 1) << 24 | pages from the span's first page`; 0 =
    /// not carved. Written once (Release) when the span is carved.
    #[inline]
    pub(crate) fn page_entry(&self, page: u64) -> u32 {
        match self.page_word(page) {
            // Acquire: pairs with the Release CAS in carve(), so whoever
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

    /// The meta word of a block `locate` (or a carve) produced.
    #[inline]
    pub(crate) fn meta_word(&self, b: Block) -> Option<&'s AtomicU64> {
        if b.class < NSMALL {
            if b.span_page + SLAB_PAGES > self.geo.arena_pages
                || b.index >= blocks_per_span(b.class)
            {
                return None;
            }
            let off = self.geo.arena_start + b.span_page * PAGE + meta_offset(b.class, b.index);
            // SAFETY: the slab lies in the arena (checked above) and
            // meta_offset puts the word in its meta area, past its last
            // block (class.rs tests it): memory no block covers, only ever
            // accessed atomically; 8-aligned.
            Some(unsafe { self.word(off) })
        } else {
            if b.span_page >= self.geo.arena_pages {
                return None;
            }
            // SAFETY: span_page < arena_pages: the word lies in the span
            // words inside the mapping, 8-aligned, only accessed atomically.
            Some(unsafe { self.word(self.geo.spans_off + b.span_page * SPAN_WORD_BYTES) })
        }
    }

    /// The block containing the byte at `off` from its page map entry
    /// alone (no cross-check of the span's other entries: callers check
    /// the block's sealed meta word next). `None` when the entry names no
    /// span that fits the arena.
    #[inline(always)]
    pub(crate) fn block_at(&self, off: u64) -> Option<Block> {
        let rel = off.wrapping_sub(self.geo.arena_start);
        if rel >= self.geo.arena_bytes() {
            return None;
        }
        let page = rel / PAGE;
        let e = self.page_entry(page);
        let c = ((e >> 24) as usize).wrapping_sub(1);
        let dist = u64::from(e & 0xff_ffff);
        let cg = CLASS_GEO.get(c)?;
        if dist > page || dist >= u64::from(cg.pages) {
            return None;
        }
        let span_page = page - dist;
        if span_page + u64::from(cg.pages) > self.geo.arena_pages {
            return None;
        }
        // Less than the span's bytes, so the index is exact.
        let within = rel - span_page * PAGE;
        let index = cg.index(within);
        if index >= u64::from(cg.blocks) {
            return None;
        }
        Some(Block {
            class: c,
            start: off - (within - index * cg.size),
            span_page,
            index,
        })
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
            return Err("it lies in the tail of a slab, where the blocks' meta words are");
        }
        Ok(Block {
            class: c,
            start: self.geo.arena_start + span + i * block_size(c),
            span_page: page - dist,
            index: i,
        })
    }

    // ----- allocation -----

    /// Allocates an untyped block for `layout` (alignment up to 4096
    /// honoured). Its bytes can be reached only through
    /// [`as_ptr`](Self::as_ptr); typed reads refuse it.
    ///
    /// The block's contents are whatever was there: a fresh block is zero,
    /// a reused one holds old bytes.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`]; [`Error::InvalidArgument`] for an alignment
    /// above 4096; [`Error::HeapCorrupt`] if a peer corrupted the free lists
    /// beyond what one allocation skips.
    #[inline(always)]
    pub fn alloc(&self, layout: Layout) -> Result<RelPtr<u8>> {
        self.alloc_as(layout, meta::RAW, false)
            .map(|(off, _)| RelPtr::from_heap(off))
    }

    /// Allocates a block for `layout` whose meta word says `ty` (private or
    /// published); returns its offset and its meta word.
    #[inline(always)]
    pub(crate) fn alloc_as(
        &self,
        layout: Layout,
        ty: u32,
        private: bool,
    ) -> Result<(u64, &'s AtomicU64)> {
        // The common case, inlined: a block from this thread's cache.
        if let Some(c) = class_of(layout).filter(|&c| c < cache::NCACHED) {
            if let Some(l) = self.slot() {
                if let Some(got) = self.cache_pop(l, c, ty, private) {
                    return Ok(got);
                }
            }
        }
        self.alloc_slow(layout, ty, private)
    }

    /// [`alloc_as`](Self::alloc_as) past an empty (or no) cache.
    #[inline(never)]
    fn alloc_slow(&self, layout: Layout, ty: u32, private: bool) -> Result<(u64, &'s AtomicU64)> {
        let Some(c) = class_of(layout) else {
            return Err(Error::InvalidArgument {
                what: format!(
                    "alignment {}: the shared heap aligns blocks to at most {PAGE} bytes",
                    layout.align()
                ),
            });
        };
        if c < cache::NCACHED {
            if let Some(l) = self.slot() {
                if let Some(got) = self.cache_pop(l, c, ty, private) {
                    return Ok(got);
                }
                return self.refill(l.slot(), c, ty, private, layout);
            }
        }
        let shard = current_shard();
        for _ in 0..MAX_SKIPS {
            let Some((block, word, seen, head, installed)) = self.pop_class(c, shard) else {
                match self.carve(c, shard, ty, private) {
                    Carved::Block(off, word) => return Ok((off, word)),
                    Carved::Full => {
                        return Err(Error::OutOfMemory {
                            size: layout.size(),
                            align: layout.align(),
                        })
                    }
                    Carved::NoSpace(e) => return Err(e),
                    // The pages were not fresh (a bump counter set back):
                    // they were skipped; carve again further on.
                    Carved::Taken => {
                        self.note_corruption();
                        continue;
                    }
                }
            };
            // Relaxed: the block is ours since the pop's CAS; the value is
            // published by a later Release store (publish()) or never.
            if word
                .compare_exchange(
                    seen,
                    meta::allocated(ty, block.start, private),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                return Ok((block.start, word));
            }
            // The word changed under a block nobody else may hold: garbage.
            // Never hand a block to two owners; drop the rest of that chain
            // (leaked) instead of following it.
            self.note_corruption();
            stack::cut(head, installed);
        }
        Err(Error::HeapCorrupt {
            what: format!(
                "the free lists (or fresh pages) of {}-byte blocks hold more than {MAX_SKIPS} corrupt entries",
                block_size(c)
            ),
        })
    }

    /// Pops a block of class `c`: from this thread's shard, else any shard.
    #[inline]
    #[allow(clippy::type_complexity)]
    fn pop_class(
        &self,
        c: usize,
        shard: usize,
    ) -> Option<(Block, &'s AtomicU64, u64, &'s AtomicU64, u64)> {
        (0..NSHARDS).find_map(|k| {
            let head = self.head(shard + k, c);
            let (p, contended) = stack::pop(self, head, c, |_, _| {});
            if contended && k == 0 {
                move_shard();
            }
            match p {
                Pop::Block {
                    block,
                    seen,
                    installed,
                } => self
                    .meta_word(block)
                    .map(|w| (block, w, seen, head, installed)),
                Pop::Empty => None,
            }
        })
    }

    /// Carves a new span of class `c`: returns its first block (claimed
    /// with the meta word for `ty`) and pushes the rest of a slab onto
    /// `shard`'s list.
    ///
    /// The bump counter is peer-writable: one set back would hand out pages
    /// that are already spans (with blocks in use). So each page map entry
    /// is claimed by CAS from 0, and the first block's meta word must have
    /// been 0 (fresh); otherwise the pages are left behind (leaked, the
    /// counter has moved past them) and the result is [`Carved::Taken`].
    fn carve(&self, c: usize, shard: usize, ty: u32, private: bool) -> Carved<'s> {
        let pages = span_pages(c);
        let first = match self.carve_pages(pages) {
            Ok(Some(first)) => first,
            Ok(None) => return Carved::Full,
            Err(e) => return Carved::NoSpace(e),
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
        let block = |index: u64| Block {
            class: c,
            start: span + index * block_size(c),
            span_page: first,
            index,
        };
        let Some(word) = self.meta_word(block(0)) else {
            return Carved::Taken;
        };
        if word
            .compare_exchange(
                0,
                meta::allocated(ty, span, private),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
        {
            // A word in a fresh span was written over: leave the span
            // unused rather than trust it.
            return Carved::Taken;
        }
        let n = blocks_per_span(c);
        if n > 1 {
            for i in 1..n - 1 {
                let Some(w) = self.meta_word(block(i)) else {
                    return Carved::Taken;
                };
                w.store(
                    meta::free(block(i).start, block(i + 1).start),
                    Ordering::Relaxed,
                );
            }
            let Some(last) = self.meta_word(block(n - 1)) else {
                return Carved::Taken;
            };
            if stack::push_chain(
                self.head(shard, c),
                block(1).start,
                block(n - 1).start,
                last,
            ) {
                move_shard();
            }
        }
        Carved::Block(span, word)
    }

    /// Takes `pages` pages off the bump counter, after reserving them in
    /// the object; `None` when they do not fit.
    ///
    /// # Errors
    /// [`Error::NoSpace`] if the object's file system cannot reserve them
    /// (the counter is left as it was).
    fn carve_pages(&self, pages: u64) -> Result<Option<u64>> {
        let bump = &self.header().bump;
        let mut cur = bump.load(Ordering::Relaxed);
        loop {
            if cur > self.geo.arena_pages {
                self.note_corruption();
                return Ok(None);
            }
            let Some(end) = cur
                .checked_add(pages)
                .filter(|&e| e <= self.geo.arena_pages)
            else {
                return Ok(None);
            };
            self.reserve(end)?;
            // Relaxed: the pages become reachable only through the page map
            // entries and list pushes that follow, which carry the ordering.
            match bump.compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(Some(cur)),
                Err(seen) => cur = seen,
            }
        }
    }

    /// Makes sure arena pages `0..upto` (their bytes, page map entries and
    /// span words) are reserved in the backing object, so writing them can
    /// never raise `SIGBUS`. Reserves in chunks (at least
    /// [`RESERVE_CHUNK`] pages, and an eighth more than reserved so far), so
    /// most carves cost one load here.
    ///
    /// # Errors
    /// [`Error::NoSpace`] when the file system is full.
    fn reserve(&self, upto: u64) -> Result<()> {
        let Some(fd) = self.backing else {
            return Ok(());
        };
        let reserved = &self.header().reserved;
        // Acquire: pairs with the Release CAS below, so the pages it
        // counts were reserved before we write them.
        let mut cur = reserved.load(Ordering::Acquire).min(self.geo.arena_pages);
        if upto <= cur {
            return Ok(());
        }
        let chunk = upto
            .max(cur + RESERVE_CHUNK)
            .max(cur + cur / 8)
            .min(self.geo.arena_pages);
        // A chunk the file system cannot hold may still leave room for what
        // is needed now.
        let target = match self.reserve_pages(fd, cur, chunk) {
            Err(Error::NoSpace { .. }) if chunk > upto => {
                self.reserve_pages(fd, cur, upto)?;
                upto
            }
            r => r.map(|()| chunk)?,
        };
        // Release: publishes the reservation to the Acquire load above.
        while cur < target {
            match reserved.compare_exchange_weak(cur, target, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
        Ok(())
    }

    /// Reserves arena pages `from..to`: their bytes, page map entries and
    /// span words.
    fn reserve_pages(&self, fd: BorrowedFd<'_>, from: u64, to: u64) -> Result<()> {
        let g = &self.geo;
        let n = to - from;
        let ranges = [
            (g.arena_start + from * PAGE, n * PAGE, "arena pages"),
            (g.pagemap_off + from * 4, n * 4, "page map entries"),
            (
                g.spans_off + from * SPAN_WORD_BYTES,
                n * SPAN_WORD_BYTES,
                "span words",
            ),
        ];
        for (off, len, what) in ranges {
            reserve_range(fd, off, len, what, self.name, g.total)?;
        }
        Ok(())
    }

    /// Counts a corrupt entry the allocator skipped (reported by `check`).
    pub(crate) fn note_corruption(&self) {
        self.header().corrupt_events.fetch_add(1, Ordering::Relaxed);
    }

    /// Frees the block at `ptr`, allocated with a layout of the same size
    /// class as `layout`.
    ///
    /// # Safety
    /// Nothing may use the block afterwards: no reference to it (from
    /// [`get`](Self::get) or [`get_slice`](Self::get_slice), in any
    /// thread of this process) may still be alive, and no other process may
    /// still use it (the heap will hand the block to someone else). The
    /// safe way to own a block is [`SharedBox`].
    ///
    /// # Errors
    /// [`Error::InvalidPointer`] for a null or foreign pointer or one into
    /// the middle of a block; [`Error::WrongLayout`] for a layout of another
    /// class; [`Error::DoubleFree`] for a block that is not allocated. The
    /// heap is unchanged in every case.
    #[inline(always)]
    pub unsafe fn free(&self, ptr: RelPtr<u8>, layout: Layout) -> Result<()> {
        let off = ptr.offset();
        // A match rather than `checked_block(..)?`: the block stays in
        // registers on the way to the cache.
        match self.block_at(off) {
            Some(b) if b.start == off && class_of(layout) == Some(b.class) => self.release(b, None),
            _ => Err(self.not_a_block(off, layout)),
        }
    }

    /// The block starting at `off`, if `layout` belongs to its class. (The
    /// block's sealed meta word, checked next by whoever frees it, guards
    /// against a page map entry a peer forged.)
    #[inline]
    pub(crate) fn checked_block(&self, off: u64, layout: Layout) -> Result<Block> {
        match self.block_at(off) {
            Some(b) if b.start == off && class_of(layout) == Some(b.class) => Ok(b),
            _ => Err(self.not_a_block(off, layout)),
        }
    }

    #[cold]
    fn not_a_block(&self, off: u64, layout: Layout) -> Error {
        let b = match self.locate(off) {
            Ok(b) => b,
            Err(reason) => {
                return Error::InvalidPointer {
                    offset: off,
                    reason: reason.to_owned(),
                }
            }
        };
        if b.start != off {
            return Error::InvalidPointer {
                offset: off,
                reason: format!(
                    "it points inside the {}-byte block at {:#x}, not at its start",
                    block_size(b.class),
                    b.start
                ),
            };
        }
        Error::WrongLayout {
            offset: off,
            block_size: block_size(b.class),
            size: layout.size(),
            align: layout.align(),
        }
    }

    /// Marks an allocated block free (if `expect` is given, only if its
    /// word says exactly that) and returns its meta word, or says why not.
    #[inline]
    pub(crate) fn unclaim(&self, b: Block, expect: Option<u64>) -> Result<&'s AtomicU64> {
        let Some(word) = self.meta_word(b) else {
            return Err(Error::DoubleFree { offset: b.start });
        };
        let cur = word.load(Ordering::Relaxed);
        if !meta::is_allocated(cur, b.start) || expect.is_some_and(|e| e != cur) {
            return Err(Error::DoubleFree { offset: b.start });
        }
        // Relaxed: the push that follows is the Release that hands the
        // block on; a failed CAS means a concurrent free of the same block.
        word.compare_exchange(
            cur,
            meta::free(b.start, 0),
            Ordering::Relaxed,
            Ordering::Relaxed,
        )
        .map_err(|_| Error::DoubleFree { offset: b.start })?;
        Ok(word)
    }

    /// Frees an allocated block: into this thread's cache, or onto its
    /// shard of the shared lists.
    #[inline(always)]
    pub(crate) fn release(&self, b: Block, expect: Option<u64>) -> Result<()> {
        if b.class < cache::NCACHED {
            if let Some(l) = self.slot() {
                if self.cache_push(l, b, expect)? {
                    return Ok(());
                }
            }
        }
        self.release_shared(b.start, expect)
    }

    /// Frees the allocated block at `off` (the start of a block, checked
    /// by the caller) onto this thread's shard of the shared lists. Takes
    /// the offset rather than the `Block`, which would be spilled to the
    /// stack on the cache path, and finds the block again.
    #[inline(never)]
    fn release_shared(&self, off: u64, expect: Option<u64>) -> Result<()> {
        let Some(b) = self.block_at(off).filter(|b| b.start == off) else {
            return Err(Error::DoubleFree { offset: off });
        };
        let word = self.unclaim(b, expect)?;
        if stack::push_chain(self.head(current_shard(), b.class), b.start, b.start, word) {
            move_shard();
        }
        Ok(())
    }

    /// Whether `offset` is the start of an allocated block of the size
    /// class of `layout`.
    pub fn is_allocated(&self, offset: u64, layout: Layout) -> bool {
        match self.locate(offset) {
            Ok(b) if b.start == offset && class_of(layout) == Some(b.class) => {
                self.meta_word(b).is_some_and(|w| {
                    matches!(
                        meta::decode(w.load(Ordering::Relaxed), offset),
                        Meta::Allocated { .. }
                    )
                })
            }
            _ => false,
        }
    }

    // ----- typed values -----

    /// The index of `key` in the type table (registering it if needed).
    #[inline]
    pub(crate) fn type_index(&self, key: &TypeKey) -> Result<u32> {
        self.type_table().index_of(key)
    }

    /// A block for one `T`, private to the caller, its contents as found:
    /// its offset, meta word and type index.
    #[inline]
    fn alloc_private<T: Shared>(&self) -> Result<(u64, &'s AtomicU64, u32)> {
        let ty = self.type_index(&TypeKey::of::<T>())?;
        let (off, word) = self.alloc_as(Layout::new::<T>(), ty, true)?;
        Ok((off, word, ty))
    }

    /// Publishes the private block at `off` (whose meta word is `word`):
    /// from now on it resolves as `ty`.
    #[inline]
    pub(crate) fn publish(word: &AtomicU64, off: u64, ty: u32) {
        // Release: the value written into the block before this
        // happens-before any read that sees the published word (the
        // Acquire load in typed_block()).
        word.store(meta::allocated(ty, off, false), Ordering::Release);
    }

    /// Moves `value` into a new block and returns its pointer. The value is
    /// written whole, then published: no reader, in this process or
    /// another, can see it half made (DESIGN.md rule 4).
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc); [`Error::TypeTableFull`] if the segment
    /// has no room to record a new type.
    #[allow(clippy::new_ret_no_self)] // the contract's name: `heap.new(value)`
    pub fn new<T: Shared>(&self, value: T) -> Result<RelPtr<T>> {
        let (off, word, ty) = self.alloc_private::<T>()?;
        // SAFETY: the block was just allocated private to this thread (no
        // typed read resolves it); it lies in the arena, holds at least
        // size_of::<T>() bytes and is aligned for T (class_of honours the
        // layout).
        unsafe { self.raw(off).cast::<T>().write(value) };
        Self::publish(word, off, ty);
        Ok(RelPtr::from_heap(off))
    }

    /// A new block holding a zeroed `T` (valid: every bit pattern of a
    /// [`Shared`] type is).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn new_zeroed<T: Shared>(&self) -> Result<RelPtr<T>> {
        let (off, word, ty) = self.alloc_private::<T>()?;
        // SAFETY: as in new(): a fresh private block of at least
        // size_of::<T>() bytes.
        unsafe { std::ptr::write_bytes(self.raw(off), 0, size_of::<T>()) };
        Self::publish(word, off, ty);
        Ok(RelPtr::from_heap(off))
    }

    /// Moves `value` into a new block owned by the returned [`SharedBox`]:
    /// only it can reach the block (`Deref`, `DerefMut`) until
    /// [`into_rel`](SharedBox::into_rel) publishes it; dropping it frees
    /// the block.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn new_box<T: Shared>(&self, value: T) -> Result<SharedBox<'s, T>> {
        let (off, word, ty) = self.alloc_private::<T>()?;
        // SAFETY: as in new(): a fresh private block for a T.
        unsafe { self.raw(off).cast::<T>().write(value) };
        // SAFETY: the block is allocated private as T at off (its meta
        // word is `word`), its value written, and nothing else refers to it.
        Ok(unsafe { SharedBox::from_private(*self, off, word, ty) })
    }

    /// A [`SharedBox`] holding a zeroed `T`: the seed's "allocate, then
    /// assign the fields one by one, then hand it over" flow.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn new_box_zeroed<T: Shared>(&self) -> Result<SharedBox<'s, T>> {
        let (off, word, ty) = self.alloc_private::<T>()?;
        // SAFETY: as in new_zeroed().
        unsafe { std::ptr::write_bytes(self.raw(off), 0, size_of::<T>()) };
        // SAFETY: as in new_box().
        Ok(unsafe { SharedBox::from_private(*self, off, word, ty) })
    }

    /// Copies `items` into a new block. An empty `items` gives
    /// [`RelSlice::empty`] and allocates nothing.
    ///
    /// # Errors
    /// As [`new`](Self::new); [`Error::InvalidArgument`] if the size
    /// overflows.
    pub fn new_slice<T: Shared + Copy>(&self, items: &[T]) -> Result<RelSlice<T>> {
        if items.is_empty() {
            return Ok(RelSlice::empty());
        }
        let ty = self.type_index(&TypeKey::slice_of::<T>())?;
        let (off, word) = self.alloc_as(slice_layout::<T>(items.len())?, ty, true)?;
        // SAFETY: a fresh private block of at least size_of_val(items)
        // bytes, aligned for T; `items` is a distinct local slice.
        unsafe {
            std::ptr::copy_nonoverlapping(items.as_ptr(), self.raw(off).cast::<T>(), items.len())
        };
        Self::publish(word, off, ty);
        Ok(RelSlice::from_heap(off, items.len() as u64))
    }

    /// Frees the block of a value made by [`new`](Self::new) or
    /// [`new_zeroed`](Self::new_zeroed) (nothing is dropped).
    ///
    /// # Safety
    /// As [`free`](Self::free): no reference to the value may outlive the
    /// call, in this process or another.
    ///
    /// # Errors
    /// As [`get`](Self::get) if `ptr` is not a published `T`; otherwise as
    /// [`free`](Self::free).
    pub unsafe fn delete<T: Shared>(&self, ptr: RelPtr<T>) -> Result<()> {
        self.get(ptr)?;
        let b = self.checked_block(ptr.offset(), Layout::new::<T>())?;
        let w = self.meta_word(b).map(|w| w.load(Ordering::Relaxed));
        self.release(b, w)
    }

    /// Frees the block of a slice made by [`new_slice`](Self::new_slice).
    /// The empty slice is accepted and frees nothing.
    ///
    /// # Safety
    /// As [`free`](Self::free): no reference into the slice may outlive the
    /// call, in this process or another.
    ///
    /// # Errors
    /// As [`get_slice`](Self::get_slice), and [`Error::InvalidPointer`] if
    /// the slice does not start its block; otherwise as
    /// [`free`](Self::free).
    pub unsafe fn delete_slice<T: Shared>(&self, s: RelSlice<T>) -> Result<()> {
        if s.is_empty() {
            return Ok(());
        }
        self.get_slice(s)?;
        let b = self.checked_block(s.offset(), slice_layout::<T>(s.len())?)?;
        let w = self.meta_word(b).map(|w| w.load(Ordering::Relaxed));
        self.release(b, w)
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

    /// The checks every typed read makes: `off..off + bytes` lies in the
    /// arena, aligned to `align`, inside one allocated, published block
    /// whose type has `key`'s fingerprint, at `off` = the block's start
    /// (or, for a slice, at a whole element from it). Returns the address.
    ///
    /// The fast path does only what a valid pointer needs (one page map
    /// entry, the block's meta word, this process's copy of the type
    /// table); anything else takes the slow path, which checks the same
    /// and more and says what is wrong.
    #[inline(always)]
    fn typed_block(&self, off: u64, bytes: u64, key: &TypeKey) -> Result<*mut u8> {
        match self.fast_typed(off, bytes, key) {
            Some(p) => Ok(p),
            None => self.typed_block_slow(off, bytes, key),
        }
    }

    /// The typed check of a pointer to a published block whose type this
    /// process already knows; `None` for anything else.
    #[inline(always)]
    fn fast_typed(&self, off: u64, bytes: u64, key: &TypeKey) -> Option<*mut u8> {
        if (self.raw(off) as u64) & (key.align - 1) != 0 {
            return None;
        }
        let b = self.block_at(off)?;
        let inside = off - b.start;
        let size = CLASS_GEO[b.class].size;
        if (inside != 0 && (!key.slice || inside % key.size.max(1) != 0)) || bytes > size - inside {
            return None;
        }
        // Acquire: pairs with the Release store in publish(), so the value
        // written before publication is visible through the reference.
        let w = self.meta_word(b)?.load(Ordering::Acquire);
        let ty = meta::published(w, b.start)?;
        (self.types.known(ty) == key.fingerprint).then(|| self.raw(off))
    }

    #[cold]
    #[inline(never)]
    fn typed_block_slow(&self, off: u64, bytes: u64, key: &TypeKey) -> Result<*mut u8> {
        let p = self.resolve_range(off, bytes, key.align as usize)?;
        let b = self.locate(off).map_err(|reason| Error::InvalidPointer {
            offset: off,
            reason: reason.to_owned(),
        })?;
        let within = off - b.start;
        let size = block_size(b.class);
        if (within != 0 && (!key.slice || within % key.size.max(1) != 0)) || bytes > size - within {
            return Err(self.misplaced(off, bytes, b, key));
        }
        let Some(word) = self.meta_word(b) else {
            return Err(self.misplaced(off, bytes, b, key));
        };
        // Acquire: pairs with the Release store in publish(), so the
        // value written before publication is visible through the reference.
        let w = word.load(Ordering::Acquire);
        match meta::decode(w, b.start) {
            Meta::Allocated { ty, private: false }
                if self.type_table().fingerprint(ty) == key.fingerprint =>
            {
                Ok(p)
            }
            m => Err(self.unresolved(b, m, key)),
        }
    }

    #[cold]
    fn misplaced(&self, off: u64, bytes: u64, b: Block, key: &TypeKey) -> Error {
        Error::InvalidPointer {
            offset: off,
            reason: format!(
                "{} bytes of {} at it do not start (or fit in) the {}-byte block at {:#x}",
                bytes,
                key.describe(),
                block_size(b.class),
                b.start
            ),
        }
    }

    #[cold]
    fn unresolved(&self, b: Block, m: Meta, key: &TypeKey) -> Error {
        match m {
            Meta::Fresh | Meta::Free { .. } => Error::FreedObject {
                offset: b.start,
                reason: "its block is free".to_owned(),
            },
            Meta::Allocated { private: true, .. } => Error::InvalidPointer {
                offset: b.start,
                reason: "its block is owned by a SharedBox that has not published it".to_owned(),
            },
            Meta::Allocated { ty: meta::RAW, .. } => Error::TypeMismatch {
                object: format!("block at {:#x}", b.start),
                expected: key.describe(),
                found: "untyped bytes (SharedHeap::alloc)".to_owned(),
            },
            Meta::Allocated { ty, .. } => Error::TypeMismatch {
                object: format!("block at {:#x}", b.start),
                expected: key.describe(),
                found: match self.type_table().record(ty) {
                    Some(r) => r.describe(),
                    None => format!("type entry {ty}, which is not a valid entry"),
                },
            },
            Meta::Corrupt => Error::HeapCorrupt {
                what: format!("the meta word of the block at {:#x} is not valid", b.start),
            },
        }
    }

    /// The `T` at `ptr`: checks that it is the start of an allocated,
    /// published block holding a `T` (one range comparison, a page map
    /// lookup, the block's meta word and this process's copy of the type
    /// table).
    ///
    /// # Errors
    /// [`Error::InvalidPointer`] for null, a pointer into the bookkeeping,
    /// into the middle of a block, or to a block a [`SharedBox`] still
    /// owns; [`Error::OutOfBounds`]; [`Error::Misaligned`];
    /// [`Error::FreedObject`] for a free block; [`Error::TypeMismatch`] for
    /// a block of another type; [`Error::HeapCorrupt`] for a meta word a
    /// peer scribbled over.
    #[inline]
    pub fn get<T: Shared>(&self, ptr: RelPtr<T>) -> Result<&'s T> {
        let key = TypeKey::of::<T>();
        let p = self.typed_block(ptr.offset(), key.size, &key)?;
        // SAFETY: in bounds of the live mapping and aligned for T (checked);
        // bit-valid, as every bit pattern is a valid T (Shared); the block
        // holds a T (its meta word names T's fingerprint) and is published,
        // so in this process nothing can free it (free is unsafe and its
        // contract forbids live references) or write it except through
        // T's own interior mutability (atomics, locks); peers are trusted
        // to do the same (README's trust model).
        Ok(unsafe { &*p.cast::<T>() })
    }

    /// The same as [`get`](Self::get), which checks everything since
    /// blocks know their type.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    #[inline]
    pub fn get_checked<T: Shared>(&self, ptr: RelPtr<T>) -> Result<&'s T> {
        self.get(ptr)
    }

    /// Resolves a slice: all `len` elements inside one allocated, published
    /// block made as a `[T]` (by [`new_slice`](Self::new_slice)), starting
    /// at a whole element of it.
    ///
    /// # Errors
    /// As [`get`](Self::get); [`Error::OutOfBounds`] if the length
    /// overflows.
    pub fn get_slice<T: Shared>(&self, s: RelSlice<T>) -> Result<&'s [T]> {
        if s.is_empty() {
            return Ok(&[]);
        }
        let key = TypeKey::slice_of::<T>();
        let bytes = (s.len() as u64)
            .checked_mul(key.size)
            .ok_or_else(|| self.bad_range(s.offset().max(1), u64::MAX))?;
        let p = self.typed_block(s.offset(), bytes, &key)?;
        // SAFETY: all `len` elements lie in the live mapping, aligned, in
        // one published block allocated as [T] (checked), starting at a
        // whole element; bit-valid as every bit pattern is a valid T; as in
        // get(), nothing in this process frees or writes it while the
        // slice lives.
        Ok(unsafe { std::slice::from_raw_parts(p.cast::<T>(), s.len()) })
    }

    /// The relative pointer of a `T` that [`get`](Self::get) resolved in
    /// this heap (the reverse of `get`).
    ///
    /// # Errors
    /// As [`get`](Self::get) if `r` is not a published `T` block of this
    /// heap (a field inside a struct is not).
    pub fn ptr_of<T: Shared>(&self, r: &T) -> Result<RelPtr<T>> {
        let off = (r as *const T as usize).wrapping_sub(self.base.as_ptr() as usize) as u64;
        let key = TypeKey::of::<T>();
        self.typed_block(off, key.size, &key)?;
        Ok(RelPtr::from_heap(off))
    }

    /// The raw address of `ptr` in this process, bounds- and
    /// alignment-checked (not type-checked). Using it is `unsafe` and the
    /// caller's business: only to memory this process owns, or through
    /// atomics.
    ///
    /// # Errors
    /// [`Error::InvalidPointer`], [`Error::OutOfBounds`],
    /// [`Error::Misaligned`].
    pub fn as_ptr<T: Shared>(&self, ptr: RelPtr<T>) -> Result<*mut T> {
        Ok(self
            .resolve_range(ptr.offset(), size_of::<T>() as u64, align_of::<T>())?
            .cast())
    }

    // ----- named objects -----

    /// The named-object directory.
    pub(crate) fn directory(&self) -> Directory<'s> {
        Directory { heap: *self }
    }

    /// The named object `name`, made by `init` if it does not exist yet.
    ///
    /// Atomic across processes: of any number of racing callers exactly one
    /// runs its `init`; the others wait for its object. A caller whose
    /// initializer died (crashed process) is replaced by the next caller.
    /// Calling it for `name` from inside `name`'s own `init` is an error,
    /// not a deadlock.
    ///
    /// # Errors
    /// [`Error::TypeMismatch`] if `name` holds another type (compared by
    /// fingerprint, size and alignment); [`Error::DirectoryFull`];
    /// [`Error::InvalidArgument`] for a name of 0 or more than
    /// [`MAX_NAME_LEN`] bytes, or reentrant use; errors of
    /// [`new`](Self::new); [`Error::Timeout`] if another live thread's
    /// initialization of `name` does not finish within 10 seconds (or the
    /// entry claims one that is not happening). If `init` panics, the entry
    /// is released and the panic continues.
    pub fn find_or_init<T: Shared>(
        &self,
        name: &str,
        init: impl FnOnce() -> T,
    ) -> Result<RelPtr<T>> {
        self.directory().find_or_init(name, init)
    }

    /// The named object `name`, which must hold a `T`.
    ///
    /// # Errors
    /// [`Error::NameNotFound`] if absent (or still being initialized);
    /// [`Error::TypeMismatch`] naming both types if it holds another type;
    /// [`Error::InvalidArgument`] for a bad name.
    pub fn find<T: Shared>(&self, name: &str) -> Result<RelPtr<T>> {
        self.directory().find(name)
    }

    /// Removes the name `name` from the directory. The object itself stays
    /// allocated: others may still hold pointers to it or references from
    /// it, so freeing it is a separate, `unsafe` step
    /// ([`delete`](Self::delete)) for whoever knows that nobody does.
    ///
    /// # Errors
    /// [`Error::NameNotFound`]; [`Error::InvalidArgument`] for a bad name.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.directory().remove(name)
    }

    // ----- whole-heap views -----

    /// Figures of the heap at one moment (exact when no process is
    /// allocating).
    pub fn stats(&self) -> HeapStats {
        check::stats(self)
    }

    /// Walks every structure of the heap and reports what it found:
    /// allocated, free and leaked blocks, and any corruption (states no
    /// sequence of crashes can produce). Trusts nothing it reads.
    pub fn check(&self) -> CheckReport {
        check::check(self)
    }

    /// The types recorded in the segment's type table, with their index
    /// (what blocks' meta words name): what a tool needs to name what a
    /// segment holds without the program's code.
    pub fn types(&self) -> Vec<(u32, TypeRecord)> {
        self.type_table().records()
    }

    /// Reaps every registry slot whose owner died (see
    /// [`Segment::reap`](crate::Segment::reap)); returns how many.
    pub(crate) fn reap(&self) -> usize {
        self.reap_dead()
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

/// Reserves what a heap of a `total`-byte segment (heap at `heap_off`)
/// writes before it carves anything: everything before the page map
/// (segment header, heap header, free-list heads, directory, type table).
/// The creator calls it before formatting.
///
/// # Errors
/// As [`reserve_range`].
pub(crate) fn reserve_fixed(
    fd: BorrowedFd<'_>,
    total: u64,
    heap_off: u64,
    name: Option<&str>,
) -> Result<()> {
    let geo = Geometry::compute(total, heap_off)?;
    reserve_range(
        fd,
        0,
        geo.pagemap_off,
        "the segment's header and bookkeeping",
        name,
        total,
    )
}

/// `fallocate` of `off..off + len` of the object behind a segment.
///
/// # Errors
/// [`Error::NoSpace`] when its file system is full; [`Error::Io`] for other
/// refusals (a file system that cannot reserve at all is not an error:
/// there is nothing to guard against beyond what it does).
fn reserve_range(
    fd: BorrowedFd<'_>,
    off: u64,
    len: u64,
    what: &str,
    name: Option<&str>,
    total: u64,
) -> Result<()> {
    match sys::fallocate(fd, off, len) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => Err(Error::NoSpace {
            segment: match name {
                Some(n) => format!("segment {n:?} of {total} bytes"),
                None => format!("an anonymous segment of {total} bytes"),
            },
            what: format!("{len} bytes of {what} at offset {off:#x} could not be reserved"),
        }),
        Err(e) => Err(Error::io(format!("fallocate of {len} bytes of {what}"), e)),
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
        types: TypeCache,
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
                types: TypeCache::new(),
                _pages: pages,
            }
        }

        pub(crate) fn heap(&self) -> SharedHeap<'_> {
            // SAFETY: the buffer lives as long as self, is page-aligned, and
            // the heap touches it only through atomics and Shared types.
            unsafe { SharedHeap::attach(self.base, self.len, 64, &self.types, None, None, None) }
                .unwrap()
        }
    }
}

#[cfg(test)]
mod tests;
