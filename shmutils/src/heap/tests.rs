//! Unit tests of the allocator on an ordinary `Vec`-backed buffer (no
//! mmap, no processes), so they could also run under Miri.

use std::alloc::Layout;
use std::sync::atomic::{AtomicU64, Ordering};

use super::class::{block_size, SLAB_BYTES};
use super::meta;
use super::testing::TestRegion;
use super::*;

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// `heap.free`, for blocks the tests own and hold no reference to.
fn free(heap: &SharedHeap<'_>, p: RelPtr<u8>, l: Layout) -> Result<()> {
    // SAFETY: the tests free only blocks they allocated and hold no
    // reference into (or, on purpose, pointers the heap must refuse).
    unsafe { heap.free(p, l) }
}

/// `heap.delete`, under the same rule as `free`.
fn delete<T: Shared>(heap: &SharedHeap<'_>, p: RelPtr<T>) -> Result<()> {
    // SAFETY: as in free().
    unsafe { heap.delete(p) }
}

/// `heap.delete_slice`, under the same rule as `free`.
fn delete_slice<T: Shared>(heap: &SharedHeap<'_>, s: RelSlice<T>) -> Result<()> {
    // SAFETY: as in free(); the callers' references into the slice are dead.
    unsafe { heap.delete_slice(s) }
}

/// A forged pointer (what a peer could write into the segment).
fn forge<T>(off: u64) -> RelPtr<T> {
    RelPtr::from_heap(off)
}

fn class_bytes(heap: &SharedHeap<'_>, p: RelPtr<u8>) -> u64 {
    block_size(heap.locate(p.offset()).unwrap().class)
}

#[test]
fn alloc_free_alloc_reuses_the_block() {
    let region = TestRegion::new(1 << 20);
    let heap = region.heap();
    let a = heap.alloc(layout(24, 8)).unwrap();
    free(&heap, a, layout(24, 8)).unwrap();
    let b = heap.alloc(layout(24, 8)).unwrap();
    assert_eq!(a, b);
    let big = heap.alloc(layout(20_000, 8)).unwrap();
    free(&heap, big, layout(20_000, 8)).unwrap();
    assert_eq!(heap.alloc(layout(20_000, 8)).unwrap(), big);
}

#[test]
fn seed_sizes_land_in_the_expected_classes() {
    let region = TestRegion::new(4 << 20);
    let heap = region.heap();
    for (size, class) in [
        (1, 8),
        (13, 16),
        (40, 48),
        (64, 64),
        (100, 112),
        (4000, 4096),
    ] {
        let p = heap.alloc(layout(size, 1)).unwrap();
        assert_eq!(class_bytes(&heap, p), class, "size {size}");
    }
    // Two 40-byte blocks from one slab lie one 48-byte class apart.
    let a = heap.alloc(layout(40, 8)).unwrap();
    let b = heap.alloc(layout(40, 8)).unwrap();
    assert_eq!(a.offset().abs_diff(b.offset()), 48);
}

#[test]
fn alignments_up_to_a_page_are_honoured() {
    let region = TestRegion::new(16 << 20);
    let heap = region.heap();
    let mut align = 1;
    while align <= 4096 {
        for size in [1, align / 2 + 1, align, 3 * align + 5, 5000] {
            let l = layout(size, align);
            let p = heap.alloc(l).unwrap();
            let addr = heap.as_ptr(p).unwrap() as usize;
            assert_eq!(addr % align, 0, "size {size} align {align}");
            assert_eq!(p.offset() % align as u64, 0);
            assert!(class_bytes(&heap, p) >= size as u64);
            free(&heap, p, l).unwrap();
        }
        align *= 2;
    }
    assert!(matches!(
        heap.alloc(layout(8, 8192)),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(heap.check().is_clean());
}

#[test]
fn stats_return_to_their_start_after_everything_is_freed() {
    let region = TestRegion::new(8 << 20);
    let heap = region.heap();
    let start = heap.stats();
    assert_eq!(start.in_use_bytes, 0);
    assert_eq!(start.free_bytes, start.arena_bytes);
    let sizes = [1usize, 13, 40, 64, 100, 1000, 4096, 5000, 70_000];
    let blocks: Vec<_> = (0..200)
        .map(|i| {
            let l = layout(sizes[i % sizes.len()], 8);
            (heap.alloc(l).unwrap(), l)
        })
        .collect();
    let busy = heap.stats();
    assert_eq!(busy.in_use_blocks, 200);
    assert!(busy.in_use_bytes >= blocks.iter().map(|(_, l)| l.size() as u64).sum());
    assert_eq!(busy.free_bytes, busy.arena_bytes - busy.in_use_bytes);
    assert!(busy.high_water_bytes >= busy.in_use_bytes);
    let c48 = busy.classes.iter().find(|c| c.block_size == 48).unwrap();
    let n48 = (0..200).filter(|i| sizes[i % sizes.len()] == 40).count() as u64;
    assert_eq!((c48.in_use, c48.spans), (n48, 1));
    for (p, l) in blocks {
        free(&heap, p, l).unwrap();
    }
    let end = heap.stats();
    assert_eq!(end.in_use_bytes, start.in_use_bytes);
    assert_eq!(end.in_use_blocks, 0);
    assert_eq!(end.free_bytes, start.free_bytes);
    assert!(end.classes.iter().all(|c| c.in_use == 0));
    // The high-water mark stays: carved memory stays with its class.
    assert_eq!(end.high_water_bytes, busy.high_water_bytes);
    let report = heap.check();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.allocated_blocks, 0);
}

#[test]
fn bad_frees_are_typed_errors_and_leave_the_heap_intact() {
    let region = TestRegion::new(1 << 20);
    let heap = region.heap();
    let l = layout(64, 8);
    let p = heap.alloc(l).unwrap();
    let q = heap.alloc(l).unwrap();
    free(&heap, p, l).unwrap();
    match free(&heap, p, l) {
        Err(Error::DoubleFree { offset }) => assert_eq!(offset, p.offset()),
        other => panic!("double free gave {other:?}"),
    }
    match free(&heap, q, layout(8, 8)) {
        Err(Error::WrongLayout {
            block_size: 64,
            size: 8,
            ..
        }) => {}
        other => panic!("wrong layout gave {other:?}"),
    }
    let inside = forge(q.offset() + 8);
    assert!(matches!(
        free(&heap, inside, l),
        Err(Error::InvalidPointer { .. })
    ));
    for foreign in [
        0,
        64,
        region_end(&heap) + 64,
        heap.geo.arena_start + SLAB_BYTES * 3,
    ] {
        match free(&heap, forge(foreign), l) {
            Err(Error::InvalidPointer { offset, reason }) => {
                assert_eq!(offset, foreign);
                assert!(!reason.is_empty());
            }
            other => panic!("foreign {foreign:#x} gave {other:?}"),
        }
    }
    // q is still allocated and freeable; nothing was disturbed.
    assert!(heap.is_allocated(q.offset(), l));
    assert!(!heap.is_allocated(p.offset(), l));
    free(&heap, q, l).unwrap();
    let r = heap.check();
    assert!(r.is_clean(), "{r}");
}

fn region_end(heap: &SharedHeap<'_>) -> u64 {
    heap.geo.end()
}

#[test]
fn get_checks_null_bounds_and_alignment() {
    let region = TestRegion::new(1 << 20);
    let heap = region.heap();
    let p = heap.new(AtomicU64::new(5)).unwrap();
    assert_eq!(heap.get(p).unwrap().load(Ordering::Relaxed), 5);
    assert!(matches!(
        heap.get(RelPtr::<u64>::null()),
        Err(Error::InvalidPointer { offset: 0, .. })
    ));
    assert!(matches!(
        heap.get(forge::<u64>(64)),
        Err(Error::InvalidPointer { offset: 64, .. })
    ));
    let end = heap.geo.end();
    assert!(matches!(
        heap.get(forge::<u64>(end - 4)),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        heap.get(forge::<u64>(u64::MAX - 2)),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        heap.get(forge::<u64>(p.offset() + 4)),
        Err(Error::Misaligned { align: 8, .. })
    ));
    assert!(matches!(
        heap.get(forge::<u64>(end - 8)),
        Err(Error::InvalidPointer { .. })
    ));
    // The block holds an AtomicU64: other types are refused.
    assert!(matches!(
        heap.get(forge::<[u32; 2]>(p.offset())),
        Err(Error::TypeMismatch { .. })
    ));
    assert!(matches!(
        heap.get(forge::<u64>(p.offset())),
        Err(Error::TypeMismatch { .. })
    ));
    assert!(heap.get_checked(p).is_ok());
    delete(&heap, p).unwrap();
    assert!(matches!(heap.get(p), Err(Error::FreedObject { .. })));
}

#[test]
fn values_slices_and_reverse_lookup() {
    let region = TestRegion::new(1 << 20);
    let heap = region.heap();
    let s = heap.new_slice(b"Autumn").unwrap();
    assert_eq!(heap.get_slice(s).unwrap(), b"Autumn");
    let words = heap.new_slice(&[1u64, 2, 3]).unwrap();
    let got = heap.get_slice(words).unwrap();
    assert_eq!(got, &[1, 2, 3]);
    // A slice may start at any element of its block, not between two.
    let tail = RelSlice::<u64>::from_heap(words.offset() + 8, 2);
    assert_eq!(heap.get_slice(tail).unwrap(), &[2, 3]);
    assert!(heap
        .get_slice(RelSlice::<u64>::from_heap(words.offset() + 8, 4))
        .is_err());
    assert!(heap
        .get_slice(RelSlice::<u64>::from_heap(words.offset() + 4, 1))
        .is_err());
    // An element of a slice is not a `T` block of its own.
    assert!(heap.ptr_of(&got[1]).is_err());
    let local = 7u64;
    assert!(heap.ptr_of(&local).is_err());
    let z = heap.new_zeroed::<[u64; 4]>().unwrap();
    let zr = heap.get(z).unwrap();
    assert_eq!(*zr, [0; 4]);
    assert_eq!(heap.ptr_of(zr).unwrap(), z);
    let empty = heap.new_slice::<u32>(&[]).unwrap();
    assert!(empty.is_empty());
    assert_eq!(heap.get_slice(empty).unwrap(), &[] as &[u32]);
    delete_slice(&heap, empty).unwrap();
    assert!(heap
        .get_slice(RelSlice::<u64>::from_heap(words.offset(), u64::MAX / 4))
        .is_err());
    delete_slice(&heap, s).unwrap();
    delete_slice(&heap, words).unwrap();
    delete(&heap, z).unwrap();
    assert!(matches!(
        delete_slice(&heap, s),
        Err(Error::FreedObject { .. })
    ));
    assert!(heap.check().is_clean());
}

#[test]
fn out_of_memory_is_an_error_and_the_heap_recovers() {
    let region = TestRegion::new(1 << 20);
    let heap = region.heap();
    let l = layout(3000, 8);
    let mut held = Vec::new();
    let err = loop {
        match heap.alloc(l) {
            Ok(p) => held.push(p),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            err,
            Error::OutOfMemory {
                size: 3000,
                align: 8
            }
        ),
        "{err}"
    );
    assert!(!held.is_empty());
    assert!(matches!(
        heap.alloc(layout(1 << 30, 8)),
        Err(Error::OutOfMemory { .. })
    ));
    for p in held.drain(..) {
        free(&heap, p, l).unwrap();
    }
    // Freed blocks serve the class again.
    assert!(heap.alloc(l).is_ok());
    assert!(heap.check().is_consistent());
}

#[test]
fn a_garbled_free_list_costs_blocks_never_double_ownership() {
    let region = TestRegion::new(2 << 20);
    let heap = region.heap();
    let l = layout(64, 8);
    let live: Vec<_> = (0..10).map(|_| heap.alloc(l).unwrap()).collect();
    let victim = heap.alloc(l).unwrap();
    free(&heap, victim, l).unwrap();
    // A peer scribbles the freed block's meta word: its link now names a
    // live block (the worst garbage: valid-looking).
    let word = heap
        .meta_word(heap.locate(victim.offset()).unwrap())
        .unwrap();
    word.store(
        meta::free(victim.offset(), live[3].offset()),
        Ordering::Relaxed,
    );
    let mut got = Vec::new();
    for _ in 0..50 {
        got.push(heap.alloc(l).unwrap());
    }
    for p in &live {
        assert!(!got.contains(p), "live block {p:?} handed out again");
    }
    let mut got: Vec<u64> = got.iter().map(|p| p.offset()).collect();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 50, "a block was handed out twice");
    let r = heap.check();
    assert!(!r.is_consistent(), "the skipped entry is reported: {r}");
}

#[test]
fn a_bump_counter_set_back_never_recarves_spans_in_use() {
    let region = TestRegion::new(1 << 20);
    let heap = region.heap();
    let small = layout(40, 8);
    let big = layout(3 * 4096, 8);
    let mut got: Vec<(u64, u64)> = Vec::new();
    for l in [small, big, small, big] {
        let p = heap.alloc(l).unwrap();
        got.push((p.offset(), class_bytes(&heap, p)));
    }
    // A peer writes the bump counter back to 0: the carved pages must not
    // be carved again (they hold blocks in use).
    heap.header().bump.store(0, Ordering::Relaxed);
    for l in [big, big, small, big] {
        let p = heap.alloc(l).unwrap();
        let (start, end) = (p.offset(), p.offset() + class_bytes(&heap, p));
        for &(s, size) in &got {
            assert!(end <= s || s + size <= start, "{start:#x} overlaps {s:#x}");
        }
        got.push((start, end - start));
    }
    assert!(heap.header().corrupt_events.load(Ordering::Relaxed) > 0);
}

#[test]
fn a_page_map_entry_posing_as_a_span_start_cannot_overlap_blocks() {
    let region = TestRegion::new(1 << 20);
    let heap = region.heap();
    // 86 blocks of 48 bytes from one fresh slab: block 85 spans the first
    // page boundary (4080..4128 from the slab's start).
    let l = layout(48, 8);
    let blocks: Vec<u64> = (0..86).map(|_| heap.alloc(l).unwrap().offset()).collect();
    let span = blocks[0];
    assert!(blocks.contains(&(span + 4080)));
    // A peer makes the slab's second page look like the first page of a
    // span of 64-byte blocks, and a garbage head leads to its first block.
    let page = (span - heap.geo.arena_start) / PAGE;
    let c64 = class_of(layout(64, 8)).unwrap();
    let word = heap.page_word(page + 1).unwrap();
    word.store((c64 as u32 + 1) << 24, Ordering::Relaxed);
    heap.head(current_shard(), c64)
        .store(stack::pack(9, span + 4096), Ordering::Relaxed);
    // Whatever alloc hands out must not overlap the 48-byte blocks.
    for _ in 0..4 {
        if let Ok(p) = heap.alloc(layout(64, 8)) {
            let (s, e) = (p.offset(), p.offset() + 64);
            for &b in &blocks {
                assert!(e <= b || b + 48 <= s, "{s:#x}..{e:#x} overlaps {b:#x}");
            }
        }
    }
    assert!(heap.locate(span + 4096).is_err());
    assert!(!heap.check().is_consistent());
}

#[test]
fn a_block_lost_mid_operation_is_reported_as_leaked_not_corrupt() {
    let region = TestRegion::new(1 << 20);
    let heap = region.heap();
    let l = layout(100, 8);
    let p = heap.alloc(l).unwrap();
    free(&heap, p, l).unwrap();
    // Simulate a process killed between its pop and its bitmap update.
    let c = heap.locate(p.offset()).unwrap().class;
    let popped =
        (0..NSHARDS).find_map(
            |s| match stack::pop(&heap, heap.head(s, c), c, |_, _| {}).0 {
                Pop::Block { block, .. } => Some(block.start),
                Pop::Empty => None,
            },
        );
    assert!(popped.is_some());
    let r = heap.check();
    assert!(r.is_consistent(), "{r}");
    assert_eq!((r.leaked_blocks, r.leaked_bytes), (1, 112));
    assert!(!r.is_clean());
    // And a process killed after carving pages but before publishing them.
    heap.carve_pages(3).unwrap();
    let r = heap.check();
    assert!(r.is_consistent(), "{r}");
    assert_eq!(r.unpublished_pages, 3);
}

#[test]
fn check_reports_forged_bookkeeping() {
    let region = TestRegion::new(1 << 20);
    let heap = region.heap();
    let l = layout(32, 8);
    let q = heap.alloc(l).unwrap();
    let p = heap.alloc(l).unwrap();
    free(&heap, p, l).unwrap();
    let word = heap.meta_word(heap.locate(p.offset()).unwrap()).unwrap();
    let free_word = word.load(Ordering::Relaxed);
    // A free block marked allocated too.
    word.store(
        meta::allocated(meta::RAW, p.offset(), false),
        Ordering::Relaxed,
    );
    let r = heap.check();
    assert!(
        r.corruption.iter().any(|c| c.contains("meta word says")),
        "{r}"
    );
    // A meta word that is no valid state.
    word.store(u64::MAX, Ordering::Relaxed);
    let r = heap.check();
    assert!(
        r.corruption.iter().any(|c| c.contains("not a valid state")),
        "{r}"
    );
    word.store(free_word, Ordering::Relaxed);
    // An allocated block naming a type entry that does not exist.
    let qword = heap.meta_word(heap.locate(q.offset()).unwrap()).unwrap();
    qword.store(meta::allocated(77, q.offset(), false), Ordering::Relaxed);
    let r = heap.check();
    assert!(
        r.corruption.iter().any(|c| c.contains("type table entry")),
        "{r}"
    );
    qword.store(
        meta::allocated(meta::RAW, q.offset(), false),
        Ordering::Relaxed,
    );
    // A span word on a page that starts no large block.
    let span_word = heap
        .meta_word(Block {
            class: NSMALL,
            start: 0,
            span_page: heap.locate(p.offset()).unwrap().span_page,
            index: 0,
        })
        .unwrap();
    span_word.store(1, Ordering::Relaxed);
    let r = heap.check();
    assert!(r.corruption.iter().any(|c| c.contains("span word")), "{r}");
    span_word.store(0, Ordering::Relaxed);
    assert!(heap.check().is_consistent());
    // A cycle: the block links to itself.
    word.store(meta::free(p.offset(), p.offset()), Ordering::Relaxed);
    let r = heap.check();
    assert!(r.corruption.iter().any(|c| c.contains("twice")), "{r}");
    // A head pointing into the bookkeeping.
    heap.head(0, 0)
        .store(stack::pack(1, 128), Ordering::Relaxed);
    let r = heap.check();
    assert!(r.corruption.iter().any(|c| c.contains("outside")), "{r}");
    // A bump counter past the arena.
    heap.header().bump.store(u64::MAX, Ordering::Relaxed);
    let r = heap.check();
    assert!(r.corruption.iter().any(|c| c.contains("bump")), "{r}");
    assert!(matches!(
        heap.alloc(layout(1 << 20, 8)),
        Err(Error::OutOfMemory { .. })
    ));
}

#[test]
fn attach_refuses_a_scribbled_header() {
    let region = TestRegion::new(1 << 20);
    let heap = region.heap();
    heap.header().arena_pages.store(1 << 40, Ordering::Relaxed);
    let types = TypeCache::new();
    // SAFETY: the test region outlives the attempt.
    let again =
        unsafe { SharedHeap::attach(heap.base, region_len(&heap), 64, &types, None, None, None) };
    match again {
        Err(Error::HeapCorrupt { what }) => assert!(what.contains("arena pages"), "{what}"),
        other => panic!("{other:?}"),
    }
    heap.header().magic.store(0, Ordering::Relaxed);
    // SAFETY: as above.
    let again =
        unsafe { SharedHeap::attach(heap.base, region_len(&heap), 64, &types, None, None, None) };
    assert!(matches!(again, Err(Error::HeapCorrupt { .. })));
}

fn region_len(heap: &SharedHeap<'_>) -> usize {
    heap.geo.total as usize
}

#[test]
fn threads_share_the_heap_without_double_ownership() {
    let region = TestRegion::new(16 << 20);
    let heap = region.heap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                let mut held: Vec<(RelSlice<u64>, u64)> = Vec::new();
                for i in 0..20_000u64 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    if held.len() < 64 && (held.is_empty() || rng % 2 == 0) {
                        let n = 1 + (rng >> 8) % 64;
                        let tag = (t << 32) | i;
                        let s = heap.new_slice(&vec![tag; n as usize]).unwrap();
                        held.push((s, tag));
                    } else {
                        let (s, tag) = held.swap_remove((rng >> 16) as usize % held.len());
                        assert!(heap.get_slice(s).unwrap().iter().all(|&w| w == tag));
                        delete_slice(&heap, s).unwrap();
                    }
                }
                for (s, tag) in held {
                    assert!(heap.get_slice(s).unwrap().iter().all(|&w| w == tag));
                    delete_slice(&heap, s).unwrap();
                }
            });
        }
    });
    let r = heap.check();
    assert!(r.is_clean(), "{r}");
    assert_eq!(heap.stats().in_use_bytes, 0);
}

#[test]
fn every_typed_read_checks_the_blocks_type() {
    let region = TestRegion::new(1 << 20);
    let heap = region.heap();
    let atomic = heap.new(AtomicU64::new(5)).unwrap();
    let plain = heap.new(5u64).unwrap();
    let words = heap.new_slice(&[1u32, 2]).unwrap();
    let raw = heap.alloc(layout(8, 8)).unwrap();
    // The right type resolves.
    assert!(heap.get(atomic).is_ok() && heap.get(plain).is_ok());
    assert_eq!(heap.get_slice(words).unwrap(), &[1, 2]);
    // Every other view of the same bytes is a TypeMismatch, never a
    // reference (a `&u64` beside the `&AtomicU64` would see stores change
    // it).
    let mismatch = |r: Result<()>| matches!(r, Err(Error::TypeMismatch { .. }));
    assert!(mismatch(heap.get(forge::<u64>(atomic.offset())).map(drop)));
    assert!(mismatch(
        heap.get(forge::<AtomicU64>(plain.offset())).map(drop)
    ));
    assert!(mismatch(heap.get(forge::<i64>(plain.offset())).map(drop)));
    assert!(mismatch(heap.get(forge::<u64>(words.offset())).map(drop)));
    assert!(mismatch(heap.get(forge::<u32>(words.offset())).map(drop)));
    assert!(mismatch(
        heap.get_slice(RelSlice::<i32>::from_heap(words.offset(), 2))
            .map(drop)
    ));
    assert!(mismatch(
        heap.get_slice(RelSlice::<u64>::from_heap(plain.offset(), 1))
            .map(drop)
    ));
    assert!(mismatch(heap.get(forge::<u64>(raw.offset())).map(drop)));
    assert!(mismatch(heap.get(forge::<u8>(raw.offset())).map(drop)));
    // The message names both types.
    match heap.get(forge::<u64>(atomic.offset())) {
        Err(Error::TypeMismatch {
            expected, found, ..
        }) => {
            assert!(expected.starts_with("u64 ("), "{expected}");
            assert!(found.starts_with("AtomicU64 ("), "{found}");
        }
        other => panic!("{other:?}"),
    }
    // Pointers into a value, or past it, are not values.
    let pair = heap.new([1u32, 2]).unwrap();
    assert!(matches!(
        heap.get(forge::<u32>(pair.offset() + 4)),
        Err(Error::InvalidPointer { .. })
    ));
    // The type table records them, for tools.
    let names: Vec<String> = heap
        .types()
        .into_iter()
        .map(|(_, r)| r.describe())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("AtomicU64 (")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.starts_with("[u32] (")), "{names:?}");
}

#[test]
fn a_freed_block_reused_by_another_type_never_resolves_as_the_old_one() {
    let region = TestRegion::new(1 << 20);
    let heap = region.heap();
    let p = heap.new(7u64).unwrap();
    delete(&heap, p).unwrap();
    assert!(matches!(heap.get(p), Err(Error::FreedObject { .. })));
    // The same block, now an AtomicU64 (same size class, LIFO list).
    let q = heap.new(AtomicU64::new(9)).unwrap();
    assert_eq!(q.offset(), p.offset());
    assert!(matches!(heap.get(p), Err(Error::TypeMismatch { .. })));
    // Deleting through the stale typed pointer is refused too.
    assert!(matches!(delete(&heap, p), Err(Error::TypeMismatch { .. })));
    assert_eq!(heap.get(q).unwrap().load(Ordering::Relaxed), 9);
}

#[test]
fn a_box_is_private_until_published_and_frees_on_drop() {
    let region = TestRegion::new(1 << 20);
    let heap = region.heap();
    let mut b = heap.new_box_zeroed::<[u64; 3]>().unwrap();
    let p = b.rel();
    // Nobody resolves a private block, not even this process.
    assert!(matches!(heap.get(p), Err(Error::InvalidPointer { .. })));
    b[1] = 1923;
    b[2] = 8900;
    assert_eq!(*b, [0, 1923, 8900]);
    drop(b);
    assert!(matches!(heap.get(p), Err(Error::FreedObject { .. })));
    assert_eq!(heap.stats().in_use_blocks, 0);
    // Published: readable by all, the box gone.
    let mut b = heap.new_box(5u64).unwrap();
    *b += 1;
    let p = b.into_rel();
    assert_eq!(*heap.get(p).unwrap(), 6);
    // Taken back (unsafe: nobody may still hold a reference).
    // SAFETY: the reference above is dead.
    let mut b = unsafe { SharedBox::from_rel(&heap, p) }.unwrap();
    assert!(matches!(heap.get(p), Err(Error::InvalidPointer { .. })));
    *b = 7;
    drop(b);
    assert!(matches!(heap.get(p), Err(Error::FreedObject { .. })));
    // from_rel checks what it takes.
    let other = heap.new(AtomicU64::new(0)).unwrap();
    // SAFETY: refused before anything is taken.
    assert!(unsafe { SharedBox::from_rel(&heap, forge::<u64>(other.offset())) }.is_err());
    assert!(heap.check().is_consistent());
}

#[test]
fn a_box_copied_into_a_forked_generation_neither_frees_nor_derefs() {
    let region = TestRegion::new(1 << 20);
    let heap = region.heap();
    let b = heap.new_box(3u64).unwrap();
    let p = b.rel();
    // The box as a forked child would hold it (the generation changed).
    let copy = std::mem::ManuallyDrop::new(b);
    // SAFETY: a bitwise copy of the box, playing the child's copy; the
    // original is never dropped (ManuallyDrop).
    let mut child: SharedBox<'_, u64> = unsafe { std::ptr::read(&*copy) };
    boxed::tests_support::age(&mut child);
    let deref = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| *child));
    assert!(deref.is_err(), "a forked copy must not reach the block");
    drop(child);
    // The block is still the parent's: allocated, private.
    assert!(heap.is_allocated(p.offset(), Layout::new::<u64>()));
    let parent = std::mem::ManuallyDrop::into_inner(copy);
    assert_eq!(*parent, 3);
}

#[test]
fn a_scribbled_type_table_gives_errors_never_another_type() {
    let region = TestRegion::new(1 << 20);
    let heap = region.heap();
    let a = heap.new(AtomicU64::new(1)).unwrap();
    let u = heap.new(2u64).unwrap();
    // A second process (a fresh type cache) that has not read the table yet.
    let fresh = TypeCache::new();
    // SAFETY: the region outlives the view.
    let other =
        unsafe { SharedHeap::attach(heap.base, region_len(&heap), 64, &fresh, None, None, None) }
            .unwrap();
    // A peer rewrites every entry's fingerprint to u64's.
    let table = heap.type_table();
    for e in table.entries.iter() {
        e.fingerprint_for_tests()
            .store(u64::FINGERPRINT, Ordering::Relaxed);
    }
    // This process learned the entries before: unchanged answers.
    assert!(heap.get(a).is_ok());
    assert!(heap.get(forge::<u64>(a.offset())).is_err());
    // The other one meets entries whose check word fails: errors only.
    assert!(other.get(forge::<u64>(a.offset())).is_err());
    assert!(other.get(a).is_err());
    // (u64's own entry was "rewritten" to what it already held.)
    assert_eq!(*other.get(u).unwrap(), 2);
    assert!(!other.check().is_consistent());
}
