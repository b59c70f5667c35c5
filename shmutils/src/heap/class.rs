//! Size classes: which block a request gets.
//!
//! - **Small** classes (8 B to 4 KiB, four steps per doubling above 128 B)
//!   are carved from 64 KiB **slabs** of equal blocks. A slab starts on a
//!   page boundary, so a block of size `s` is aligned to the largest power
//!   of two dividing `s` (up to the page).
//! - **Large** classes are whole runs of pages (2, 3, 4, 5, 6, 7, 8, 10, 12,
//!   14, 16, 20, ... pages: four steps per doubling, so at most 25% is lost
//!   to rounding), each run page-aligned.
//!
//! Every class is a list of free blocks that never changes class: memory
//! carved for one class stays with it (no splitting or coalescing). That
//! keeps every structure lock-free and every block's class readable from the
//! page map alone.

use std::alloc::Layout;

/// The heap's page: the unit of carving and the largest alignment served.
/// Fixed (not the machine's page size) so the format is the same
/// everywhere; mappings are aligned to at least this on Linux.
pub(crate) const PAGE: u64 = 4096;
/// The smallest block and the unit of the allocation bitmap.
pub(crate) const GRANULE: u64 = 8;
/// Pages per slab of a small class.
pub(crate) const SLAB_PAGES: u64 = 16;
/// Bytes per slab of a small class.
pub(crate) const SLAB_BYTES: u64 = SLAB_PAGES * PAGE;

/// Block sizes of the small classes.
pub(crate) const SMALL: [u32; 29] = [
    8, 16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896,
    1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096,
];
/// Number of small classes; class indices below it are small.
pub(crate) const NSMALL: usize = SMALL.len();
/// Number of large classes.
pub(crate) const NLARGE: usize = 90;
/// Pages per block of each large class.
pub(crate) const LARGE_PAGES: [u32; NLARGE] = large_pages();
/// Number of classes in all.
pub(crate) const NCLASSES: usize = NSMALL + NLARGE;

const fn large_pages() -> [u32; NLARGE] {
    let mut out = [0u32; NLARGE];
    let mut i = 0;
    // 2 to 8 by 1, then four steps per doubling: 8, 10, 12, 14, 16, 20, ...
    let mut p = 2u32;
    while i < NLARGE {
        out[i] = p;
        i += 1;
        let octave = 1u32 << (31 - p.leading_zeros());
        p += if p < 8 { 1 } else { octave / 4 };
    }
    out
}

/// Lookup for sizes up to 1024 by `(size + 7) / 8`.
const BY8: [u8; 129] = by_step::<129>(8);
/// Lookup for sizes up to 4096 by `(size + 127) / 128`.
const BY128: [u8; 33] = by_step::<33>(128);

const fn by_step<const N: usize>(step: usize) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        let size = i * step;
        let mut c = 0;
        while (SMALL[c] as usize) < size {
            c += 1;
        }
        out[i] = c as u8;
        i += 1;
    }
    out
}

/// `ceil(2^32 / size)` for each small class: `(n * RECIP[c]) >> 32 == n /
/// SMALL[c]` for every `n < SLAB_BYTES` (checked exhaustively in the tests),
/// which keeps a division off the free path.
const RECIP: [u64; NSMALL] = recips();

const fn recips() -> [u64; NSMALL] {
    let mut out = [0u64; NSMALL];
    let mut c = 0;
    while c < NSMALL {
        out[c] = (1u64 << 32) / SMALL[c] as u64 + 1;
        c += 1;
    }
    out
}

/// The class that serves `layout`, or `None` when the alignment exceeds a
/// page or the size cannot be served by any class.
#[inline]
pub(crate) fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size().max(1);
    let align = layout.align();
    if align <= 8 && size <= 1024 {
        return Some(BY8[size.div_ceil(8)] as usize);
    }
    class_of_slow(size, align)
}

fn class_of_slow(size: usize, align: usize) -> Option<usize> {
    if align as u64 > PAGE {
        return None;
    }
    let need = size.max(align);
    if need as u64 <= PAGE {
        let mut c = if need <= 1024 {
            BY8[need.div_ceil(8)] as usize
        } else {
            BY128[need.div_ceil(128)] as usize
        };
        // Blocks of a class lie at multiples of its size from a page
        // boundary, so the size must be a multiple of the alignment.
        while c < NSMALL && SMALL[c] as usize % align != 0 {
            c += 1;
        }
        return (c < NSMALL).then_some(c);
    }
    let pages = u64::try_from(need).ok()?.div_ceil(PAGE);
    let i = LARGE_PAGES.partition_point(|&p| u64::from(p) < pages);
    (i < NLARGE).then_some(NSMALL + i)
}

/// Bytes per block of class `c`.
#[inline]
pub(crate) fn block_size(c: usize) -> u64 {
    if c < NSMALL {
        u64::from(SMALL[c])
    } else {
        u64::from(LARGE_PAGES[c - NSMALL]) * PAGE
    }
}

/// Pages per span of class `c` (a slab, or one large block).
#[inline]
pub(crate) fn span_pages(c: usize) -> u64 {
    if c < NSMALL {
        SLAB_PAGES
    } else {
        u64::from(LARGE_PAGES[c - NSMALL])
    }
}

/// Blocks per slab of each small class (a table: no division at run time).
/// A slab holds its blocks from its start and their meta words (see
/// `meta.rs`) at its tail, so `n` blocks need `n * size` bytes plus
/// [`meta_bytes`]`(n)`.
const BLOCKS: [u32; NSMALL] = blocks();

const fn blocks() -> [u32; NSMALL] {
    let mut out = [0u32; NSMALL];
    let mut c = 0;
    while c < NSMALL {
        let s = SMALL[c] as u64;
        let mut n = SLAB_BYTES / s;
        while n * s + meta_bytes(n) > SLAB_BYTES {
            n -= 1;
        }
        out[c] = n as u32;
        c += 1;
    }
    out
}

/// Meta words are spread over [`META_STRIDE`] groups so that neighbouring
/// blocks (often used by different processes) have their words in
/// different cache lines: block `i`'s word is slot
/// `(i % META_STRIDE) * ceil(n / META_STRIDE) + i / META_STRIDE`.
pub(crate) const META_STRIDE: u64 = 8;

/// Bytes of the meta area of a slab of `n` blocks.
pub(crate) const fn meta_bytes(n: u64) -> u64 {
    n.div_ceil(META_STRIDE) * META_STRIDE * 8
}

/// Per small class: where its meta area starts in a slab, and the bytes
/// between the words of blocks `i` and `i + 1` of one group.
const META_AREA: [(u32, u32); NSMALL] = meta_areas();

const fn meta_areas() -> [(u32, u32); NSMALL] {
    let mut out = [(0u32, 0u32); NSMALL];
    let mut c = 0;
    while c < NSMALL {
        let n = BLOCKS[c] as u64;
        out[c] = (
            (SLAB_BYTES - meta_bytes(n)) as u32,
            (n.div_ceil(META_STRIDE) * 8) as u32,
        );
        c += 1;
    }
    out
}

/// Byte offset, from the slab's start, of the meta word of block `i` of a
/// slab of small class `c` (`i < blocks_per_span(c)`).
#[inline]
pub(crate) fn meta_offset(c: usize, i: u64) -> u64 {
    let (base, group) = META_AREA[c];
    u64::from(base) + (i % META_STRIDE) * u64::from(group) + i / META_STRIDE * 8
}

/// Blocks per span of class `c`.
#[inline]
pub(crate) fn blocks_per_span(c: usize) -> u64 {
    if c < NSMALL {
        u64::from(BLOCKS[c])
    } else {
        1
    }
}

/// Everything the typed-read fast path needs of a class, in one table row
/// (two rows a cache line): no branch on small or large.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClassGeo {
    /// Bytes per block.
    pub(crate) size: u64,
    /// `RECIP` for a small class, 0 for a large one (every offset in a
    /// large span is in its one block).
    pub(crate) recip: u64,
    /// Pages per span.
    pub(crate) pages: u32,
    /// Blocks per span.
    pub(crate) blocks: u32,
}

/// [`ClassGeo`] of every class.
pub(crate) const CLASS_GEO: [ClassGeo; NCLASSES] = class_geos();

const fn class_geos() -> [ClassGeo; NCLASSES] {
    let mut out = [ClassGeo {
        size: 0,
        recip: 0,
        pages: 0,
        blocks: 0,
    }; NCLASSES];
    let mut c = 0;
    while c < NCLASSES {
        out[c] = if c < NSMALL {
            ClassGeo {
                size: SMALL[c] as u64,
                recip: RECIP[c],
                pages: SLAB_PAGES as u32,
                blocks: BLOCKS[c],
            }
        } else {
            ClassGeo {
                size: LARGE_PAGES[c - NSMALL] as u64 * PAGE,
                recip: 0,
                pages: LARGE_PAGES[c - NSMALL],
                blocks: 1,
            }
        };
        c += 1;
    }
    out
}

impl ClassGeo {
    /// [`block_index`] from the row.
    #[inline(always)]
    pub(crate) fn index(&self, within: u64) -> u64 {
        (within * self.recip) >> 32
    }
}

/// Index of the block containing byte `within` of a span of class `c`
/// (`within < span_pages(c) * PAGE`).
#[inline]
pub(crate) fn block_index(c: usize, within: u64) -> u64 {
    if c < NSMALL {
        (within * RECIP[c]) >> 32
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_size(size: usize, align: usize) -> u64 {
        block_size(class_of(Layout::from_size_align(size, align).unwrap()).unwrap())
    }

    #[test]
    fn seed_sizes_land_in_their_classes() {
        assert_eq!(class_size(1, 1), 8);
        assert_eq!(class_size(13, 1), 16);
        assert_eq!(class_size(40, 8), 48);
        assert_eq!(class_size(0, 1), 8);
        assert_eq!(class_size(64, 8), 64);
        assert_eq!(class_size(65, 8), 80);
        assert_eq!(class_size(4096, 8), 4096);
        assert_eq!(class_size(4097, 8), 2 * PAGE);
        assert_eq!(class_size(9 * 4096, 8), 10 * PAGE);
    }

    #[test]
    fn every_size_gets_the_smallest_fitting_class() {
        for size in 1..=3 * PAGE as usize {
            for align in [1, 8, 16, 32, 64, 256, 4096] {
                let c = class_of(Layout::from_size_align(size, align).unwrap()).unwrap();
                let b = block_size(c);
                assert!(b >= size as u64, "size {size} got {b}");
                assert_eq!(b % align as u64, 0, "size {size} align {align} got {b}");
                if c > 0 && c < NSMALL && align <= 8 {
                    assert!(block_size(c - 1) < size as u64, "size {size} not smallest");
                }
            }
        }
    }

    #[test]
    fn alignment_above_a_page_is_refused() {
        assert_eq!(class_of(Layout::from_size_align(8, 8192).unwrap()), None);
    }

    #[test]
    fn large_classes_grow_by_a_quarter_at_most() {
        assert_eq!(
            &LARGE_PAGES[..12],
            &[2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20]
        );
        for w in LARGE_PAGES.windows(2) {
            assert!(w[1] > w[0]);
            assert!(w[1] - w[0] <= w[0].div_ceil(4).max(1), "{w:?}");
        }
        // The largest block is 32 GiB (bigger requests are OutOfMemory).
        assert!(u64::from(LARGE_PAGES[NLARGE - 1]) * PAGE >= 1 << 35);
        const { assert!(NCLASSES < 255, "class + 1 must fit the page map's byte") };
    }

    #[test]
    fn meta_words_fit_behind_the_blocks_and_never_collide() {
        for c in 0..NSMALL {
            let n = blocks_per_span(c);
            let s = block_size(c);
            assert!(n >= 15, "class {s}: only {n} blocks");
            assert!(n * s <= SLAB_BYTES - meta_bytes(n), "class {s}");
            let mut seen = std::collections::HashSet::new();
            for i in 0..n {
                let m = meta_offset(c, i);
                assert!(m >= n * s && m + 8 <= SLAB_BYTES, "class {s} block {i}");
                assert!(seen.insert(m), "class {s}: two blocks share a word");
                if i + 1 < n && n >= 64 {
                    assert_ne!(m / 64, meta_offset(c, i + 1) / 64, "class {s} block {i}");
                }
            }
        }
        // What the meta words cost: 8 bytes a block.
        assert_eq!(
            blocks_per_span(class_of(Layout::new::<[u8; 64]>()).unwrap()),
            910
        );
        assert_eq!(blocks_per_span(NSMALL - 1), 15);
    }

    #[test]
    fn the_class_table_agrees_with_the_functions() {
        for (c, g) in CLASS_GEO.iter().enumerate() {
            assert_eq!(g.size, block_size(c));
            assert_eq!(u64::from(g.pages), span_pages(c));
            assert_eq!(u64::from(g.blocks), blocks_per_span(c));
            for within in [0, 1, g.size - 1, g.size, 3 * g.size + 5] {
                if within < span_pages(c) * PAGE {
                    assert_eq!(g.index(within), block_index(c, within), "class {c}");
                }
            }
        }
    }

    #[test]
    fn reciprocal_division_is_exact_within_a_slab() {
        for (c, &s) in SMALL.iter().enumerate() {
            let s = u64::from(s);
            for n in 0..SLAB_BYTES {
                assert_eq!(block_index(c, n), n / s, "class {s}, n {n}");
            }
        }
    }
}
