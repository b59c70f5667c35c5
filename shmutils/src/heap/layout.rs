//! Where the heap's pieces lie in a segment, and its header.
//!
//! ```text
//! heap_off   HeapHeader (128 B): magic, version, the geometry below, bump
//!            free-list heads: NCLASSES x NSHARDS AtomicU64, one per cache
//!            line
//! dir_off    named-object directory: DIR_CAPACITY entries of 160 B
//! types_off  type table: TYPE_CAPACITY entries of 128 B (`types.rs`)
//! reg_off    registry: a 64 B header and SLOTS slots of 512 B
//!            (`registry/`), each thread's allocation cache among them
//! pagemap    one AtomicU32 per arena page: the class of its span and its
//!            distance from the span's first page
//! spans      one AtomicU64 per arena page: the meta word (`meta.rs`) of
//!            the block of a large span starting there (small slabs keep
//!            their blocks' meta words at their own tail)
//! arena      page-aligned; every block lives here
//! ```
//!
//! The geometry is a pure function of the segment size and `heap_off`. The
//! header records it; attaching recomputes it and compares, so a header a
//! peer scribbled over is refused, and afterwards every process works from
//! its own validated copy, never from numbers re-read from the segment.

use std::sync::atomic::AtomicU64;

use super::class::{NCLASSES, PAGE, SLAB_PAGES};
use super::directory::{DirEntry, DIR_CAPACITY};
use super::types::{ENTRY_BYTES, TYPE_CAPACITY};
use crate::error::{Error, Result};
use crate::registry::REGISTRY_BYTES;

/// "SHMUHEAP", little-endian.
pub(crate) const HEAP_MAGIC: u64 = u64::from_le_bytes(*b"SHMUHEAP");
/// The heap's format version.
pub(crate) const HEAP_VERSION: u64 = 3;
/// Free-list shards per class: processes spread over them so that two of
/// them rarely fight over one head's cache line.
pub(crate) const NSHARDS: usize = 8;
/// Bytes per free-list head: each head has its own cache line, so two
/// processes working on different lists never share one.
pub(crate) const HEAD_STRIDE: u64 = 64;
/// Block offsets are stored as `offset / 8` in 32 bits, so a segment holds
/// at most 1 TiB (the free-list heads address 2 TiB).
pub(crate) const MAX_SEGMENT: u64 = 1 << 40;
/// Bytes of the header struct.
const HEADER_BYTES: u64 = 128;
/// Bitmap bytes per arena page: one cache line, 512 bits, enough for the
/// 8192 blocks of the smallest class spread over a slab's 16 lines.
/// Bytes of span words per arena page.
pub(crate) const SPAN_WORD_BYTES: u64 = 8;

/// The heap header. Every field is atomic because peers may write the
/// segment at any time; fields other than `bump` and `corrupt_events` are
/// written once, before `magic` is published.
#[repr(C)]
pub(crate) struct HeapHeader {
    /// [`HEAP_MAGIC`] once the heap is formatted (stored last, Release).
    pub(crate) magic: AtomicU64,
    pub(crate) version: AtomicU64,
    pub(crate) total: AtomicU64,
    pub(crate) heap_off: AtomicU64,
    pub(crate) heads_off: AtomicU64,
    pub(crate) dir_off: AtomicU64,
    pub(crate) dir_capacity: AtomicU64,
    pub(crate) pagemap_off: AtomicU64,
    pub(crate) spans_off: AtomicU64,
    pub(crate) arena_start: AtomicU64,
    pub(crate) arena_pages: AtomicU64,
    /// Pages of the arena carved into spans so far (only grows). State
    /// table: `n` -> `n + k` by CAS when a span of `k` pages is carved, if
    /// `n + k <= arena_pages`; a process killed after its CAS leaves pages
    /// `n..n + k` carved but unpublished (counted as leaked by `check`).
    pub(crate) bump: AtomicU64,
    /// How many corrupt free-list entries the allocator has skipped.
    pub(crate) corrupt_events: AtomicU64,
    pub(crate) types_off: AtomicU64,
    pub(crate) type_capacity: AtomicU64,
    /// Arena pages whose bytes, page map entries and span words are
    /// reserved in the object (`fallocate`); only grows, by CAS to a
    /// larger value after the reservation succeeded.
    pub(crate) reserved: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<HeapHeader>() as u64 == HEADER_BYTES);

/// Offsets of the heap's pieces from the segment's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) total: u64,
    pub(crate) heap_off: u64,
    pub(crate) heads_off: u64,
    pub(crate) dir_off: u64,
    pub(crate) dir_capacity: u64,
    pub(crate) pagemap_off: u64,
    pub(crate) types_off: u64,
    pub(crate) reg_off: u64,
    pub(crate) spans_off: u64,
    pub(crate) arena_start: u64,
    pub(crate) arena_pages: u64,
}

const fn align_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

impl Geometry {
    /// The layout of a heap at `heap_off` in a segment of `total` bytes.
    ///
    /// # Errors
    /// [`Error::SegmentTooSmall`] when not even one slab fits;
    /// [`Error::InvalidArgument`] above [`MAX_SEGMENT`] or for a misaligned
    /// `heap_off`.
    pub(crate) fn compute(total: u64, heap_off: u64) -> Result<Geometry> {
        if total > MAX_SEGMENT {
            return Err(Error::InvalidArgument {
                what: format!(
                    "a segment of {total} bytes: at most {MAX_SEGMENT} bytes are supported"
                ),
            });
        }
        if heap_off % 64 != 0 {
            return Err(Error::InvalidArgument {
                what: format!("heap offset {heap_off}: expected a multiple of 64"),
            });
        }
        let heads_off = heap_off + HEADER_BYTES;
        let dir_off = heads_off + (NSHARDS * NCLASSES) as u64 * HEAD_STRIDE;
        let types_off = dir_off + DIR_CAPACITY as u64 * std::mem::size_of::<DirEntry>() as u64;
        let reg_off = align_up(types_off + TYPE_CAPACITY as u64 * ENTRY_BYTES, 64);
        let pagemap_off = reg_off + REGISTRY_BYTES;
        let with_pages = |n: u64| {
            let spans_off = align_up(pagemap_off + 4 * n, SPAN_WORD_BYTES);
            let arena_start = align_up(spans_off + SPAN_WORD_BYTES * n, PAGE);
            Geometry {
                total,
                heap_off,
                heads_off,
                dir_off,
                dir_capacity: DIR_CAPACITY as u64,
                types_off,
                reg_off,
                pagemap_off,
                spans_off,
                arena_start,
                arena_pages: n,
            }
        };
        let mut n = total.saturating_sub(pagemap_off) / (PAGE + 4 + SPAN_WORD_BYTES);
        while n > 0 && with_pages(n).end() > total {
            n -= 1;
        }
        if n < SLAB_PAGES {
            return Err(Error::SegmentTooSmall {
                size: total,
                min: with_pages(SLAB_PAGES).end(),
            });
        }
        Ok(with_pages(n))
    }

    /// The smallest segment whose heap (at `heap_off`) holds one slab.
    pub(crate) fn min_total(heap_off: u64) -> u64 {
        match Geometry::compute(0, heap_off) {
            Err(Error::SegmentTooSmall { min, .. }) => min,
            _ => 0,
        }
    }

    /// One past the arena's last byte.
    pub(crate) fn end(&self) -> u64 {
        self.arena_start + self.arena_pages * PAGE
    }

    /// Bytes in the arena.
    pub(crate) fn arena_bytes(&self) -> u64 {
        self.arena_pages * PAGE
    }

    /// Writes the geometry into a header (before its magic is published).
    pub(crate) fn store(&self, h: &HeapHeader) {
        use std::sync::atomic::Ordering::Relaxed;
        h.version.store(HEAP_VERSION, Relaxed);
        h.total.store(self.total, Relaxed);
        h.heap_off.store(self.heap_off, Relaxed);
        h.heads_off.store(self.heads_off, Relaxed);
        h.dir_off.store(self.dir_off, Relaxed);
        h.dir_capacity.store(self.dir_capacity, Relaxed);
        h.pagemap_off.store(self.pagemap_off, Relaxed);
        h.spans_off.store(self.spans_off, Relaxed);
        h.types_off.store(self.types_off, Relaxed);
        h.type_capacity.store(TYPE_CAPACITY as u64, Relaxed);
        h.arena_start.store(self.arena_start, Relaxed);
        h.arena_pages.store(self.arena_pages, Relaxed);
        h.bump.store(0, Relaxed);
        h.corrupt_events.store(0, Relaxed);
    }

    /// Compares a header with this (recomputed) geometry.
    ///
    /// # Errors
    /// [`Error::HeapCorrupt`] naming the first field that differs.
    pub(crate) fn verify(&self, h: &HeapHeader) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let fields: [(&str, &AtomicU64, u64); 13] = [
            ("version", &h.version, HEAP_VERSION),
            ("total size", &h.total, self.total),
            ("heap offset", &h.heap_off, self.heap_off),
            ("heads offset", &h.heads_off, self.heads_off),
            ("directory offset", &h.dir_off, self.dir_off),
            ("directory capacity", &h.dir_capacity, self.dir_capacity),
            ("page map offset", &h.pagemap_off, self.pagemap_off),
            ("span words offset", &h.spans_off, self.spans_off),
            ("type table offset", &h.types_off, self.types_off),
            (
                "type table capacity",
                &h.type_capacity,
                TYPE_CAPACITY as u64,
            ),
            ("arena start", &h.arena_start, self.arena_start),
            ("arena pages", &h.arena_pages, self.arena_pages),
            ("magic", &h.magic, HEAP_MAGIC),
        ];
        for (what, field, want) in fields {
            let found = field.load(Relaxed);
            if found != want {
                return Err(Error::HeapCorrupt {
                    what: format!("heap header field {what}: expected {want:#x}, found {found:#x}"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_fits_and_is_aligned() {
        for total in [1 << 19, 1 << 20, 3 << 20, (64 << 20) + 12345, 1 << 30] {
            let g = Geometry::compute(total, 64).unwrap();
            assert!(g.end() <= total, "{g:?}");
            assert_eq!(g.arena_start % PAGE, 0);
            assert_eq!(g.heads_off % 64, 0);
            assert!(g.reg_off >= g.types_off + TYPE_CAPACITY as u64 * ENTRY_BYTES);
            assert_eq!(g.reg_off % 64, 0);
            assert!(g.pagemap_off >= g.reg_off + REGISTRY_BYTES);
            assert!(g.spans_off >= g.pagemap_off + 4 * g.arena_pages);
            assert!(g.arena_start >= g.spans_off + SPAN_WORD_BYTES * g.arena_pages);
            // Little is wasted: one more page would not fit.
            let again = Geometry::compute(total, 64).unwrap();
            assert_eq!(again, g);
            assert!(total - g.end() < 2 * PAGE + 4 + SPAN_WORD_BYTES + 64);
        }
    }

    #[test]
    fn too_small_names_the_minimum() {
        let min = Geometry::min_total(64);
        assert!(min > 0);
        assert!(Geometry::compute(min, 64).is_ok());
        match Geometry::compute(min - 1, 64) {
            Err(Error::SegmentTooSmall { size, min: m }) => assert_eq!((size, m), (min - 1, min)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Geometry::compute(4096, 64),
            Err(Error::SegmentTooSmall { .. })
        ));
        assert!(matches!(
            Geometry::compute(MAX_SEGMENT + 1, 64),
            Err(Error::InvalidArgument { .. })
        ));
    }
}
