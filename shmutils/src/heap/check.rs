//! [`SharedHeap::stats`] and [`SharedHeap::check`]: walks of every
//! structure that trust nothing they read.

use std::alloc::Layout;
use std::fmt;
use std::sync::atomic::Ordering;

use super::class::{block_size, blocks_per_span, class_of, span_pages, GRANULE, NCLASSES, PAGE};
use super::layout::NSHARDS;
use super::stack::head_offset;
use super::{Block, SharedHeap};

/// Figures of one size class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassStats {
    /// Bytes per block.
    pub block_size: u64,
    /// Spans (slabs, or large blocks) carved for the class.
    pub spans: u64,
    /// Blocks in those spans.
    pub blocks: u64,
    /// Blocks allocated.
    pub in_use: u64,
}

/// Figures of a heap at one moment (exact when no process is allocating).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes the arena holds in all.
    pub arena_bytes: u64,
    /// High-water mark: bytes of the arena ever carved into spans (carved
    /// memory stays with its class).
    pub high_water_bytes: u64,
    /// Bytes of allocated blocks (block sizes, not requested sizes).
    pub in_use_bytes: u64,
    /// Allocated blocks.
    pub in_use_blocks: u64,
    /// `arena_bytes - in_use_bytes`.
    pub free_bytes: u64,
    /// Named objects.
    pub named_objects: usize,
    /// Classes that have at least one span, smallest first.
    pub classes: Vec<ClassStats>,
}

/// What [`SharedHeap::check`] found.
///
/// Blocks are **allocated** (bitmap bit set), **free** (on a free list), or
/// **leaked**: carved but neither, which is what a process killed in the
/// middle of `alloc` or `free` leaves behind (also a live process in the
/// middle of one, if the check runs concurrently). Leaks are not
/// corruption; `corruption` lists only states no sequence of crashes can
/// produce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Blocks on free lists.
    pub free_blocks: u64,
    /// Blocks allocated.
    pub allocated_blocks: u64,
    /// Blocks neither free nor allocated.
    pub leaked_blocks: u64,
    /// Bytes of those blocks.
    pub leaked_bytes: u64,
    /// Pages carved but never published as a span (a process died while
    /// carving).
    pub unpublished_pages: u64,
    /// Directory entries left half-made or half-removed by dead threads.
    pub abandoned: Vec<String>,
    /// Inconsistencies: each says what was expected and what was found.
    pub corruption: Vec<String>,
}

impl CheckReport {
    /// No corruption (leaks allowed).
    pub fn is_consistent(&self) -> bool {
        self.corruption.is_empty()
    }

    /// No corruption and nothing leaked or abandoned.
    pub fn is_clean(&self) -> bool {
        self.is_consistent()
            && self.leaked_blocks == 0
            && self.unpublished_pages == 0
            && self.abandoned.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} allocated, {} free, {} leaked ({} bytes), {} unpublished pages, {} abandoned entries, {} inconsistencies",
            self.allocated_blocks,
            self.free_blocks,
            self.leaked_blocks,
            self.leaked_bytes,
            self.unpublished_pages,
            self.abandoned.len(),
            self.corruption.len()
        )?;
        for line in self.abandoned.iter().chain(&self.corruption) {
            write!(f, "\n  {line}")?;
        }
        Ok(())
    }
}

/// A span as the page map describes it.
struct Span {
    class: usize,
    first_page: u64,
}

impl Span {
    /// Its block `i`.
    fn block(&self, heap: &SharedHeap<'_>, i: u64) -> Block {
        Block {
            class: self.class,
            start: heap.geo.arena_start + self.first_page * PAGE + i * block_size(self.class),
            span_page: self.first_page,
            index: i,
        }
    }
}

/// One bit per granule of the arena.
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(bits: u64) -> BitSet {
        BitSet(vec![0; bits.div_ceil(64) as usize])
    }

    /// Sets bit `i`; returns whether it was set before.
    fn insert(&mut self, i: u64) -> bool {
        let (w, m) = ((i / 64) as usize, 1u64 << (i % 64));
        let was = self.0[w] & m != 0;
        self.0[w] |= m;
        was
    }

    fn contains(&self, i: u64) -> bool {
        self.0[(i / 64) as usize] & (1u64 << (i % 64)) != 0
    }
}

impl SharedHeap<'_> {
    /// The bump counter, clamped to the arena (reports a bad one).
    fn carved_pages(&self, corruption: &mut Vec<String>) -> u64 {
        let bump = self.header().bump.load(Ordering::Acquire);
        if bump > self.geo.arena_pages {
            corruption.push(format!(
                "bump counter: expected at most {} pages, found {bump}",
                self.geo.arena_pages
            ));
        }
        bump.min(self.geo.arena_pages)
    }

    /// Complete spans below the bump counter; counts incomplete pages.
    fn spans(&self, corruption: &mut Vec<String>, unpublished: &mut u64) -> Vec<Span> {
        let carved = self.carved_pages(corruption);
        let mut spans = Vec::new();
        let mut p = 0;
        while p < carved {
            let e = self.page_entry(p);
            let cls = (e >> 24) as usize;
            if e == 0 {
                *unpublished += 1;
                p += 1;
                continue;
            }
            if cls == 0 || cls > NCLASSES || e & 0xff_ffff != 0 {
                corruption.push(format!(
                    "page {p}: expected the first page of a span, found page map entry {e:#x}"
                ));
                p += 1;
                continue;
            }
            let c = cls - 1;
            let pages = span_pages(c);
            let mut complete = p + pages <= carved;
            for i in 1..pages.min(carved - p) {
                let want = ((c as u32 + 1) << 24) | i as u32;
                match self.page_entry(p + i) {
                    x if x == want => {}
                    // The carver died before finishing the page map.
                    0 => complete = false,
                    x => {
                        complete = false;
                        corruption.push(format!(
                            "page {}: expected page map entry {want:#x} (page {i} of a span), found {x:#x}",
                            p + i
                        ));
                    }
                }
            }
            if complete {
                spans.push(Span {
                    class: c,
                    first_page: p,
                });
            } else {
                *unpublished += pages.min(carved - p);
            }
            p += pages;
        }
        for q in carved..self.geo.arena_pages {
            let e = self.page_entry(q);
            if e != 0 {
                corruption.push(format!(
                    "page {q} lies beyond the carved pages but has page map entry {e:#x}"
                ));
                break;
            }
        }
        spans
    }

    /// Figures about the heap: bytes in use, free, the high-water mark and
    /// each class. Walks the page map and bitmap (cost proportional to the
    /// carved memory); exact when no process is allocating meanwhile.
    pub fn stats(&self) -> HeapStats {
        let (mut ignored, mut unpublished) = (Vec::new(), 0);
        let spans = self.spans(&mut ignored, &mut unpublished);
        let mut classes: Vec<ClassStats> = (0..NCLASSES)
            .map(|c| ClassStats {
                block_size: block_size(c),
                spans: 0,
                blocks: 0,
                in_use: 0,
            })
            .collect();
        for span in &spans {
            let c = span.class;
            let n = blocks_per_span(c);
            let in_use = (0..n).filter(|&i| self.is_set(span.block(self, i))).count() as u64;
            let cs = &mut classes[c];
            cs.spans += 1;
            cs.blocks += n;
            cs.in_use += in_use;
        }
        let in_use_bytes = classes.iter().map(|c| c.in_use * c.block_size).sum();
        HeapStats {
            arena_bytes: self.geo.arena_bytes(),
            high_water_bytes: self.carved_pages(&mut ignored) * PAGE,
            in_use_bytes,
            in_use_blocks: classes.iter().map(|c| c.in_use).sum(),
            free_bytes: self.geo.arena_bytes() - in_use_bytes,
            named_objects: self.directory_census().0,
            classes: classes.into_iter().filter(|c| c.spans > 0).collect(),
        }
    }

    /// Walks every structure of the heap (page map, free lists with cycle
    /// detection, allocation bitmap, directory) and reports what it finds,
    /// telling leaked blocks (a crashed process's) from corruption. Never
    /// fails and never trusts what it reads: every offset is checked before
    /// use and every walk is bounded.
    ///
    /// Exact when no process is allocating or freeing meanwhile; run
    /// concurrently, it may report blocks in flight as leaked (or, rarely,
    /// a list that moved under it as inconsistent).
    pub fn check(&self) -> CheckReport {
        let mut r = CheckReport::default();
        let spans = self.spans(&mut r.corruption, &mut r.unpublished_pages);
        let mut blocks_of = vec![0u64; NCLASSES];
        for s in &spans {
            blocks_of[s.class] += blocks_per_span(s.class);
        }
        let granule = |off: u64| (off - self.geo.arena_start) / GRANULE;
        let mut on_list = BitSet::new(self.geo.arena_bytes() / GRANULE);

        // Free lists.
        for (c, &class_blocks) in blocks_of.iter().enumerate() {
            for shard in 0..NSHARDS {
                let mut off = head_offset(self.head(shard, c).load(Ordering::Acquire));
                let mut steps = 0u64;
                let list = format!("free list of {}-byte blocks (shard {shard})", block_size(c));
                while off != 0 {
                    let b = match self.locate(off) {
                        Ok(b) if b.class == c && b.start == off => b,
                        Ok(b) => {
                            r.corruption.push(format!(
                                "{list}: expected a block of its class, found {off:#x} (a {}-byte class block starting at {:#x})",
                                block_size(b.class),
                                b.start
                            ));
                            break;
                        }
                        Err(why) => {
                            r.corruption
                                .push(format!("{list}: expected a block, found {off:#x}: {why}"));
                            break;
                        }
                    };
                    steps += 1;
                    if steps > class_blocks {
                        r.corruption.push(format!(
                            "{list}: longer than the class's {class_blocks} blocks (a cycle)"
                        ));
                        break;
                    }
                    if on_list.insert(granule(off)) {
                        r.corruption.push(format!(
                            "{list}: block {off:#x} is listed twice (a cycle or shared tail)"
                        ));
                        break;
                    }
                    if self.is_set(b) {
                        r.corruption.push(format!(
                            "{list}: block {off:#x} is on a free list and marked allocated"
                        ));
                    }
                    r.free_blocks += 1;
                    let next = self.link(off).map_or(0, |l| l.load(Ordering::Relaxed));
                    if next > 0xffff_ffff {
                        r.corruption.push(format!(
                            "{list}: block {off:#x} links to {next:#x}, not a block index"
                        ));
                        break;
                    }
                    off = next * GRANULE;
                }
            }
        }

        // Blocks and stray bits, span by span; then bits outside spans.
        let mut in_spans = BitSet::new(self.geo.arena_pages);
        for s in &spans {
            let start = self.geo.arena_start + s.first_page * PAGE;
            let size = block_size(s.class);
            let mut counted = 0u64;
            for i in 0..blocks_per_span(s.class) {
                let off = start + i * size;
                let allocated = self.is_set(s.block(self, i));
                counted += u64::from(allocated);
                if allocated {
                    r.allocated_blocks += 1;
                } else if !on_list.contains(granule(off)) {
                    r.leaked_blocks += 1;
                    r.leaked_bytes += size;
                }
            }
            let pages = span_pages(s.class);
            for p in s.first_page..s.first_page + pages {
                in_spans.insert(p);
            }
            let bits = self.count_bits(s.first_page, pages);
            if bits != counted {
                r.corruption.push(format!(
                    "span at {start:#x} ({size}-byte blocks): expected {counted} allocation bits (at block starts), found {bits}"
                ));
            }
        }
        for p in 0..self.geo.arena_pages {
            if !in_spans.contains(p) {
                let start = self.geo.arena_start + p * PAGE;
                let bits = self.count_bits(p, 1);
                if bits != 0 {
                    r.corruption.push(format!(
                        "page at {start:#x} is in no span but has {bits} allocation bits set"
                    ));
                }
            }
        }

        // Directory.
        r.abandoned = self.directory_census().1;
        for e in self.directory_entries() {
            let name = String::from_utf8_lossy(&e.name);
            let live = usize::try_from(e.size)
                .ok()
                .zip(usize::try_from(e.align).ok())
                .and_then(|(s, a)| Layout::from_size_align(s, a).ok())
                .is_some_and(|l| class_of(l).is_some() && self.is_allocated(e.offset, l));
            if !live {
                r.corruption.push(format!(
                    "named object {name:?}: expected an allocated block of {} bytes at {:#x}, found none",
                    e.size, e.offset
                ));
            }
        }

        let skipped = self.header().corrupt_events.load(Ordering::Relaxed);
        if skipped != 0 {
            r.corruption.push(format!(
                "the allocator met {skipped} corrupt free-list entries and skipped them"
            ));
        }
        r
    }

    /// Allocation bits set in the bitmap lines of `pages` pages from
    /// `first`.
    fn count_bits(&self, first: u64, pages: u64) -> u64 {
        (first..first + pages)
            .filter_map(|p| self.bitmap_line(p))
            .flat_map(|line| line.iter())
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }
}
