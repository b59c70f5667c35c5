//! Unit tests of the allocator on an ordinary `Vec`-backed buffer (no
//! mmap, no processes), so they could also run under Miri.

use std::alloc::Layout;
use std::sync::atomic::{AtomicU64, Ordering};

use super::class::{block_size, SLAB_BYTES};
use super::testing::TestRegion;
use super::*;

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

fn class_bytes(heap: &SharedHeap<'_>, p: RelPtr<u8>) -> u64 {
    block_size(heap.locate(p.offset()).unwrap().class)
}

#[test]
fn alloc_free_alloc_reuses_the_block() {
    let region = TestRegion::new(1 << 20);
    let heap = region.heap();
    let a = heap.alloc(layout(24, 8)).unwrap();
    heap.free(a, layout(24, 8)).unwrap();
    let b = heap.alloc(layout(24, 8)).unwrap();
    assert_eq!(a, b);
    let big = heap.alloc(layout(20_000, 8)).unwrap();
    heap.free(big, layout(20_000, 8)).unwrap();
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
            heap.free(p, l).unwrap();
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
        heap.free(p, l).unwrap();
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
    heap.free(p, l).unwrap();
    match heap.free(p, l) {
        Err(Error::DoubleFree { offset }) => assert_eq!(offset, p.offset()),
        other => panic!("double free gave {other:?}"),
    }
    match heap.free(q, layout(8, 8)) {
        Err(Error::WrongLayout {
            block_size: 64,
            size: 8,
            ..
        }) => {}
        other => panic!("wrong layout gave {other:?}"),
    }
    let inside = RelPtr::from_offset(q.offset() + 8);
    assert!(matches!(
        heap.free(inside, l),
        Err(Error::InvalidPointer { .. })
    ));
    for foreign in [
        0,
        64,
        region_end(&heap) + 64,
        heap.geo.arena_start + SLAB_BYTES * 3,
    ] {
        match heap.free(RelPtr::from_offset(foreign), l) {
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
    heap.free(q, l).unwrap();
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
        heap.get(RelPtr::<u64>::from_offset(64)),
        Err(Error::InvalidPointer { offset: 64, .. })
    ));
    let end = heap.geo.end();
    assert!(matches!(
        heap.get(RelPtr::<u64>::from_offset(end - 4)),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        heap.get(RelPtr::<u64>::from_offset(u64::MAX - 2)),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        heap.get(RelPtr::<u64>::from_offset(p.offset() + 4)),
        Err(Error::Misaligned { align: 8, .. })
    ));
    assert!(heap.get(RelPtr::<u64>::from_offset(end - 8)).is_ok());
    // get_checked also wants a live allocation that holds the whole T.
    assert!(heap.get_checked(p).is_ok());
    assert!(matches!(
        heap.get_checked(RelPtr::<[u64; 2]>::from_offset(p.offset())),
        Err(Error::InvalidPointer { .. })
    ));
    heap.delete(p).unwrap();
    assert!(heap.get(p).is_ok(), "get does not check liveness");
    assert!(matches!(
        heap.get_checked(p),
        Err(Error::InvalidPointer { .. })
    ));
    assert!(matches!(
        heap.get_checked(RelPtr::<u64>::from_offset(end - 8)),
        Err(Error::InvalidPointer { .. })
    ));
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
    assert_eq!(heap.ptr_of(&got[1]).unwrap().offset(), words.offset() + 8);
    let local = 7u64;
    assert!(heap.ptr_of(&local).is_err());
    let z = heap.new_zeroed::<[u64; 4]>().unwrap();
    assert_eq!(*heap.get(z).unwrap(), [0; 4]);
    let empty = heap.new_slice::<u32>(&[]).unwrap();
    assert!(empty.is_empty());
    assert_eq!(heap.get_slice(empty).unwrap(), &[] as &[u32]);
    heap.delete_slice(empty).unwrap();
    assert!(heap
        .get_slice(RelSlice::<u64>::from_raw_parts(
            words.offset(),
            u64::MAX / 4
        ))
        .is_err());
    heap.delete_slice(s).unwrap();
    heap.delete_slice(words).unwrap();
    heap.delete(z).unwrap();
    assert!(matches!(
        heap.delete_slice(s),
        Err(Error::DoubleFree { .. })
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
        heap.free(p, l).unwrap();
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
    heap.free(victim, l).unwrap();
    // A stale reference writes into the freed block: its link now names a
    // live block (the worst garbage: valid-looking).
    let stale: &AtomicU64 = heap.get(victim.cast()).unwrap();
    stale.store(live[3].offset() / 8, Ordering::Relaxed);
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
    let mut blocks: Vec<u64> = (0..86).map(|_| heap.alloc(l).unwrap().offset()).collect();
    let span = blocks[0];
    assert!(blocks.contains(&(span + 4080)));
    // Block 1's allocation bit is the one block 0 of a span starting at
    // the next page would use: free it, so that bit is clear.
    assert_eq!(blocks.remove(1), span + 48);
    heap.free(RelPtr::from_offset(span + 48), l).unwrap();
    // A peer makes the slab's second page look like the first page of a
    // span of 64-byte blocks, and a garbage link leads to its first block.
    let page = (span - heap.geo.arena_start) / PAGE;
    let c64 = class_of(layout(64, 8)).unwrap();
    let word = heap.page_word(page + 1).unwrap();
    word.store((c64 as u32 + 1) << 24, Ordering::Relaxed);
    heap.push(heap.head(current_shard(), c64), span + 4096);
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
    heap.free(p, l).unwrap();
    // Simulate a process killed between its pop and its bitmap update.
    let c = heap.locate(p.offset()).unwrap().class;
    let popped = (0..NSHARDS).find_map(|s| match heap.pop(heap.head(s, c)).0 {
        Pop::Block(off, _) => Some(off),
        Pop::Empty => None,
    });
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
    let p = heap.alloc(l).unwrap();
    heap.free(p, l).unwrap();
    // A free block marked allocated too.
    let (w, m) = heap.bit(heap.locate(p.offset()).unwrap()).unwrap();
    w.fetch_or(m, Ordering::Relaxed);
    let r = heap.check();
    assert!(
        r.corruption.iter().any(|c| c.contains("marked allocated")),
        "{r}"
    );
    w.fetch_and(!m, Ordering::Relaxed);
    // A stray bit where no block of the slab has its bit.
    let line = heap
        .bitmap_line(heap.locate(p.offset()).unwrap().span_page)
        .unwrap();
    let (w, m) = (&line[7], 1u64 << 63);
    w.fetch_or(m, Ordering::Relaxed);
    let r = heap.check();
    assert!(
        r.corruption.iter().any(|c| c.contains("allocation bits")),
        "{r}"
    );
    w.fetch_and(!m, Ordering::Relaxed);
    // A cycle: the block links to itself.
    heap.link(p.offset())
        .unwrap()
        .store(p.offset() / 8, Ordering::Relaxed);
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
    // SAFETY: the test region outlives the attempt.
    let again = unsafe { SharedHeap::attach(heap.base, region_len(&heap), 64, None, None) };
    match again {
        Err(Error::HeapCorrupt { what }) => assert!(what.contains("arena pages"), "{what}"),
        other => panic!("{other:?}"),
    }
    heap.header().magic.store(0, Ordering::Relaxed);
    // SAFETY: as above.
    let again = unsafe { SharedHeap::attach(heap.base, region_len(&heap), 64, None, None) };
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
                        heap.delete_slice(s).unwrap();
                    }
                }
                for (s, tag) in held {
                    assert!(heap.get_slice(s).unwrap().iter().all(|&w| w == tag));
                    heap.delete_slice(s).unwrap();
                }
            });
        }
    });
    let r = heap.check();
    assert!(r.is_clean(), "{r}");
    assert_eq!(heap.stats().in_use_bytes, 0);
}
