//! [`SharedHeap::stats`] and [`SharedHeap::check`]: walks of every
//! structure that trust nothing they read, using memory proportional to
//! what is allocated and free, not to the segment's size.

use std::alloc::Layout;
use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::Ordering;

use super::class::{block_size, blocks_per_span, class_of, span_pages, NCLASSES, NSMALL, PAGE};
use super::layout::NSHARDS;
use super::meta::{self, Meta};
use super::stack::head_offset;
use super::{Block, SharedHeap};
use crate::registry::RegistryStats;

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
    /// The registry: attached processes and threads, and how often a
    /// thread found no free slot (it then allocates without a cache).
    pub registry: RegistryStats,
}

/// What [`SharedHeap::check`] found.
///
/// Blocks are **allocated** (their meta word says so; this includes blocks
/// a `SharedBox` owns), **free** (on a free list), or **leaked**: carved but
/// neither, which is what a process killed in the
/// middle of `alloc` or `free` leaves behind (also a live process in the
/// middle of one, if the check runs concurrently). Leaks are not
/// corruption; `corruption` lists only states no sequence of crashes can
/// produce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Free blocks: on the shared free lists or in a thread's cache.
    pub free_blocks: u64,
    /// Of those, blocks in the caches of registry slots.
    pub cached_blocks: u64,
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
            "{} allocated, {} free ({} cached), {} leaked ({} bytes), {} unpublished pages, {} abandoned entries, {} inconsistencies",
            self.allocated_blocks,
            self.free_blocks,
            self.cached_blocks,
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

    /// Its block `i`'s meta word, decoded.
    fn meta(&self, heap: &SharedHeap<'_>, i: u64) -> Meta {
        let b = self.block(heap, i);
        heap.meta_word(b).map_or(Meta::Corrupt, |w| {
            meta::decode(w.load(Ordering::Acquire), b.start)
        })
    }
}

/// Page map entries past the carved pages that `check` reads (a window a
/// set-back bump counter would fall in).
const CHECK_BEYOND: u64 = 1024;

fn carved_pages(heap: &SharedHeap<'_>, corruption: &mut Vec<String>) -> u64 {
    let bump = heap.header().bump.load(Ordering::Acquire);
    if bump > heap.geo.arena_pages {
        corruption.push(format!(
            "bump counter: expected at most {} pages, found {bump}",
            heap.geo.arena_pages
        ));
    }
    bump.min(heap.geo.arena_pages)
}

/// The complete spans of the carved pages; counts the pages of spans left
/// half-published by a crash.
fn spans(heap: &SharedHeap<'_>, corruption: &mut Vec<String>, unpublished: &mut u64) -> Vec<Span> {
    let carved = carved_pages(heap, corruption);
    let mut spans = Vec::new();
    let mut p = 0;
    while p < carved {
        let e = heap.page_entry(p);
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
            match heap.page_entry(p + i) {
                x if x == want => {}
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
    // Past the carved pages the map must be empty. Only a window is read:
    // reading the whole map would touch (and make resident) every page of
    // it, in proportion to the segment's size, not its use.
    for q in carved..heap.geo.arena_pages.min(carved + CHECK_BEYOND) {
        let e = heap.page_entry(q);
        if e != 0 {
            corruption.push(format!(
                "page {q} lies beyond the carved pages but has page map entry {e:#x}"
            ));
            break;
        }
    }
    spans
}

/// [`SharedHeap::stats`].
pub(super) fn stats(heap: &SharedHeap<'_>) -> HeapStats {
    let (mut ignored, mut unpublished) = (Vec::new(), 0);
    let spans = spans(heap, &mut ignored, &mut unpublished);
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
        let in_use = (0..n)
            .filter(|&i| matches!(span.meta(heap, i), Meta::Allocated { .. }))
            .count() as u64;
        let cs = &mut classes[c];
        cs.spans += 1;
        cs.blocks += n;
        cs.in_use += in_use;
    }
    let in_use_bytes = classes.iter().map(|c| c.in_use * c.block_size).sum();
    HeapStats {
        arena_bytes: heap.geo.arena_bytes(),
        high_water_bytes: carved_pages(heap, &mut ignored) * PAGE,
        in_use_bytes,
        in_use_blocks: classes.iter().map(|c| c.in_use).sum(),
        free_bytes: heap.geo.arena_bytes() - in_use_bytes,
        named_objects: heap.directory().census().0,
        classes: classes.into_iter().filter(|c| c.spans > 0).collect(),
        registry: heap.registry().stats(),
    }
}

/// Walks the free lists of class `c`, recording their blocks in `on_list`.
fn walk_lists(
    heap: &SharedHeap<'_>,
    c: usize,
    class_blocks: u64,
    on_list: &mut HashSet<u64>,
    r: &mut CheckReport,
) {
    for shard in 0..NSHARDS {
        let mut off = head_offset(heap.head(shard, c).load(Ordering::Acquire));
        let mut steps = 0u64;
        let list = format!("free list of {}-byte blocks (shard {shard})", block_size(c));
        while off != 0 {
            let b = match heap.locate(off) {
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
            if !on_list.insert(off) {
                r.corruption.push(format!(
                    "{list}: block {off:#x} is listed twice (a cycle or shared tail)"
                ));
                break;
            }
            let w = heap.meta_word(b).map_or(0, |w| w.load(Ordering::Acquire));
            match meta::decode(w, off) {
                Meta::Free { next, custody: 0 } => {
                    r.free_blocks += 1;
                    off = next;
                }
                m => {
                    r.corruption.push(format!(
                        "{list}: block {off:#x} is on a free list but its meta word says {m:?}"
                    ));
                    break;
                }
            }
        }
    }
}

/// [`SharedHeap::check`].
pub(super) fn check(heap: &SharedHeap<'_>) -> CheckReport {
    let mut r = CheckReport::default();
    let spans = spans(heap, &mut r.corruption, &mut r.unpublished_pages);
    let mut blocks_of = vec![0u64; NCLASSES];
    for s in &spans {
        blocks_of[s.class] += blocks_per_span(s.class);
    }
    let mut on_list = HashSet::new();
    for (c, &class_blocks) in blocks_of.iter().enumerate() {
        walk_lists(heap, c, class_blocks, &mut on_list, &mut r);
    }
    heap.cached_blocks(|slot, off, bad| match bad {
        Some(why) => r.corruption.push(format!(
            "cache of registry slot {slot}: block {off:#x} {why}"
        )),
        None if !on_list.insert(off) => r.corruption.push(format!(
            "cache of registry slot {slot}: block {off:#x} is also on a free list or another cache"
        )),
        None => {
            r.free_blocks += 1;
            r.cached_blocks += 1;
        }
    });

    let types = heap.type_table();
    let mut large_first_pages = HashSet::new();
    for s in &spans {
        if s.class >= NSMALL {
            large_first_pages.insert(s.first_page);
        }
        let size = block_size(s.class);
        for i in 0..blocks_per_span(s.class) {
            let off = s.block(heap, i).start;
            match s.meta(heap, i) {
                Meta::Allocated { ty, .. } => {
                    r.allocated_blocks += 1;
                    if ty != meta::RAW && types.record(ty).is_none() {
                        r.corruption.push(format!(
                            "block {off:#x}: its type is entry {ty}, which is not a valid type table entry"
                        ));
                    }
                }
                Meta::Free { .. } | Meta::Fresh if !on_list.contains(&off) => {
                    r.leaked_blocks += 1;
                    r.leaked_bytes += size;
                }
                Meta::Free { .. } | Meta::Fresh => {}
                Meta::Corrupt => r.corruption.push(format!(
                    "block {off:#x} ({size} bytes): its meta word is not a valid state"
                )),
            }
        }
    }
    // Span words belong to the first pages of large spans only.
    let carved = carved_pages(heap, &mut Vec::new());
    for p in 0..carved {
        if large_first_pages.contains(&p) {
            continue;
        }
        let w = heap
            .meta_word(Block {
                class: NSMALL,
                start: 0,
                span_page: p,
                index: 0,
            })
            .map_or(0, |w| w.load(Ordering::Relaxed));
        if w != 0 {
            r.corruption.push(format!(
                "page {p} starts no large block but its span word holds {w:#x}"
            ));
        }
    }
    for (i, state) in types.damaged() {
        if super::types::is_claim(state) {
            r.abandoned.push(format!(
                "type table entry {i}: being registered by thread {}",
                state as u32
            ));
        } else {
            r.corruption.push(format!(
                "type table entry {i}: state {state:#x}, but not a valid entry"
            ));
        }
    }

    r.abandoned.extend(heap.directory().census().1);
    for e in heap.directory().entries() {
        let name = String::from_utf8_lossy(&e.name);
        let live = usize::try_from(e.size)
            .ok()
            .zip(usize::try_from(e.align).ok())
            .and_then(|(s, a)| Layout::from_size_align(s, a).ok())
            .is_some_and(|l| class_of(l).is_some() && heap.is_allocated(e.offset, l));
        if !live {
            r.corruption.push(format!(
                "named object {name:?}: expected an allocated block of {} bytes at {:#x}, found none",
                e.size, e.offset
            ));
        }
    }

    let skipped = heap.header().corrupt_events.load(Ordering::Relaxed);
    if skipped != 0 {
        r.corruption.push(format!(
            "the allocator met {skipped} corrupt free-list entries and skipped them"
        ));
    }
    r
}
