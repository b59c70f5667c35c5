//! The shared heap against glibc malloc/free (the process-local floor),
//! Boost.Interprocess `managed_shared_memory` (rbtree_best_fit behind one
//! `interprocess_mutex`; the C++ program `peers/boost_peer.cpp` runs the
//! same workloads) and raw pointer dereference, measured in the same run.
//!
//! Run with `cargo bench --bench heap`. Prints one table; ratios are
//! shmutils / peer (lower is better for times, higher for throughput). The
//! Boost column needs a C++ compiler and `libboost-dev`; without them it
//! reads `n/a`.

#[path = "peers/boost.rs"]
mod boost;

use std::alloc::Layout;
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shmutils::{RelPtr, Segment, SharedHeap, SharedStruct};

const SMALL_PAIRS: u64 = 10_000_000;
const BATCH: usize = 1_000_000;
const CONTENDED_PAIRS: u64 = 5_000_000;
const RESOLVES: usize = 10_000_000;

struct Row {
    name: &'static str,
    ours: String,
    peer: String,
    ratio: String,
    boost: String,
    vs_boost: String,
}

/// The Boost cells of a row: `value` in `unit` and shmutils / Boost (`ours`
/// over `value`), or `n/a`.
fn boost_cells(ours: f64, value: Option<f64>, unit: &str) -> (String, String) {
    match value {
        Some(b) => (format!("{b:.1} {unit}"), format!("{:.2}x", ours / b)),
        None => ("n/a".to_owned(), "n/a".to_owned()),
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn ns_per(d: Duration, n: u64) -> f64 {
    d.as_nanos() as f64 / n as f64
}

/// ns per 64-byte alloc+free pair: (shared path, through a HeapCache,
/// glibc).
fn alloc_small(heap: SharedHeap<'_>) -> (f64, f64, f64) {
    let l = Layout::from_size_align(64, 8).unwrap();
    // Warm up.
    for _ in 0..100_000 {
        let p = heap.alloc(l).unwrap();
        // SAFETY: an untyped block of the bench, never read.
        unsafe { heap.free(black_box(p), l) }.unwrap();
    }
    let t = Instant::now();
    for _ in 0..SMALL_PAIRS {
        let p = heap.alloc(l).unwrap();
        // SAFETY: an untyped block of the bench, never read.
        unsafe { heap.free(black_box(p), l) }.unwrap();
    }
    let shared = ns_per(t.elapsed(), SMALL_PAIRS);
    let mut cache = heap.cache();
    let t = Instant::now();
    for _ in 0..SMALL_PAIRS {
        let p = cache.alloc(l).unwrap();
        // SAFETY: an untyped block of the bench, never read.
        unsafe { cache.free(black_box(p), l) }.unwrap();
    }
    let cached = ns_per(t.elapsed(), SMALL_PAIRS);
    drop(cache);
    let t = Instant::now();
    for _ in 0..SMALL_PAIRS {
        // SAFETY: malloc/free of a fresh block, never dereferenced.
        unsafe {
            let p = libc::malloc(64);
            libc::free(black_box(p));
        }
    }
    (shared, cached, ns_per(t.elapsed(), SMALL_PAIRS))
}

struct Batch {
    alloc_ns: f64,
    free_ns: f64,
    requested: u64,
    used: u64,
}

fn alloc_batch(heap: SharedHeap<'_>) -> (Batch, Batch) {
    let mut rng = 0x1234_5678_9abc_def1u64;
    let sizes: Vec<usize> = (0..BATCH)
        .map(|_| 16 + (xorshift(&mut rng) % 1009) as usize)
        .collect();
    let mut order: Vec<usize> = (0..BATCH).collect();
    for i in (1..BATCH).rev() {
        order.swap(i, (xorshift(&mut rng) % (i as u64 + 1)) as usize);
    }
    let requested: u64 = sizes.iter().map(|&s| s as u64).sum();

    let before = heap.stats().high_water_bytes;
    let t = Instant::now();
    let ptrs: Vec<RelPtr<u8>> = sizes
        .iter()
        .map(|&s| heap.alloc(Layout::from_size_align(s, 8).unwrap()).unwrap())
        .collect();
    let alloc_ns = ns_per(t.elapsed(), BATCH as u64);
    let used = heap.stats().high_water_bytes - before;
    let t = Instant::now();
    for &i in &order {
        // SAFETY: an untyped block of the bench, never read.
        unsafe { heap.free(ptrs[i], Layout::from_size_align(sizes[i], 8).unwrap()) }.unwrap();
    }
    let free_ns = ns_per(t.elapsed(), BATCH as u64);
    let ours = Batch {
        alloc_ns,
        free_ns,
        requested,
        used,
    };

    // SAFETY: mallinfo2 only reads allocator statistics.
    let arena_before = unsafe { libc::mallinfo2() }.uordblks as u64;
    let t = Instant::now();
    // SAFETY: fresh blocks, freed once below, never dereferenced.
    let raw: Vec<*mut libc::c_void> = sizes.iter().map(|&s| unsafe { libc::malloc(s) }).collect();
    let g_alloc = ns_per(t.elapsed(), BATCH as u64);
    // SAFETY: as above.
    let info = unsafe { libc::mallinfo2() };
    let g_used = info.uordblks as u64 + info.hblkhd as u64 - arena_before;
    let t = Instant::now();
    for &i in &order {
        // SAFETY: each block is freed exactly once.
        unsafe { libc::free(raw[i]) };
    }
    let g_free = ns_per(t.elapsed(), BATCH as u64);
    (
        ours,
        Batch {
            alloc_ns: g_alloc,
            free_ns: g_free,
            requested,
            used: g_used,
        },
    )
}

/// Runs `work` in `n` forked children that start together; returns the
/// wall time from the start signal until all are done.
fn forked(n: usize, go: &AtomicU32, work: impl Fn() + Copy) -> Duration {
    go.store(0, Ordering::SeqCst);
    let pids: Vec<libc::pid_t> = (0..n)
        .map(|_| {
            // SAFETY: the child only waits, runs `work` on shared memory and
            // _exits.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                while go.load(Ordering::Acquire) == 0 {
                    std::hint::spin_loop();
                }
                work();
                // SAFETY: leave without running the parent's destructors.
                unsafe { libc::_exit(0) };
            }
            pid
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    go.store(1, Ordering::Release);
    for pid in pids {
        let mut status = 0;
        // SAFETY: our child; status is a valid out-pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "bench child failed"
        );
    }
    t.elapsed()
}

/// Mops/s (alloc+free pairs) of two processes on one heap: (shared path,
/// through a HeapCache each, glibc's process-local heaps).
fn alloc_contended(heap: SharedHeap<'_>, go: &AtomicU32) -> (f64, f64, f64) {
    let l = Layout::from_size_align(64, 8).unwrap();
    let shared = forked(2, go, || {
        for _ in 0..CONTENDED_PAIRS {
            let p = heap.alloc(l).unwrap();
            // SAFETY: an untyped block of the bench, never read.
            unsafe { heap.free(black_box(p), l) }.unwrap();
        }
    });
    let cached = forked(2, go, || {
        let mut cache = heap.cache();
        for _ in 0..CONTENDED_PAIRS {
            let p = cache.alloc(l).unwrap();
            // SAFETY: an untyped block of the bench, never read.
            unsafe { cache.free(black_box(p), l) }.unwrap();
        }
    });
    let glibc = forked(2, go, || {
        for _ in 0..CONTENDED_PAIRS {
            // SAFETY: malloc/free of a fresh block, never dereferenced.
            unsafe { libc::free(black_box(libc::malloc(64))) };
        }
    });
    let mops = |d: Duration| (2 * CONTENDED_PAIRS) as f64 / d.as_secs_f64() / 1e6;
    (mops(shared), mops(cached), mops(glibc))
}

fn relptr_resolve(heap: SharedHeap<'_>) -> (f64, f64) {
    let n = 4096;
    let ptrs: Vec<RelPtr<u64>> = (0..n).map(|i| heap.new(i as u64).unwrap()).collect();
    let raws: Vec<*const u64> = ptrs
        .iter()
        .map(|&p| heap.get(p).unwrap() as *const u64)
        .collect();
    let t = Instant::now();
    let mut sum = 0u64;
    for i in 0..RESOLVES {
        sum = sum.wrapping_add(*heap.get(black_box(ptrs[i % n])).unwrap());
    }
    black_box(sum);
    let ours = ns_per(t.elapsed(), RESOLVES as u64);
    let t = Instant::now();
    let mut sum = 0u64;
    for i in 0..RESOLVES {
        // SAFETY: each pointer came from a live &u64 in the heap above.
        sum = sum.wrapping_add(unsafe { *black_box(raws[i % n]) });
    }
    black_box(sum);
    let raw = ns_per(t.elapsed(), RESOLVES as u64);
    for p in ptrs {
        // SAFETY: the references made above are dead.
        unsafe { heap.delete(p) }.unwrap();
    }
    (ours, raw)
}

/// A linked list node in the heap.
#[derive(SharedStruct)]
#[repr(C)]
struct Node {
    next: RelPtr<Node>,
    value: u64,
}

/// The same node with a raw pointer, in process memory.
struct RawNode {
    next: *const RawNode,
    value: u64,
}

const LIST_NODES: usize = 100_000;
const CARVES: usize = 8_000;

/// ns per allocation that carves a fresh 64 KiB span and writes one byte
/// in each of its pages (as its user will), in a named segment (each carve
/// reserves its pages in /dev/shm first, in chunks) and in an anonymous one
/// (nothing to reserve; pages appear at first touch): what reservation
/// costs per carve.
fn carve_cost() -> (f64, f64) {
    let l = Layout::from_size_align(64 << 10, 8).unwrap();
    let run = |seg: &Segment| {
        let heap = seg.heap();
        let t = Instant::now();
        for _ in 0..CARVES {
            let p = heap.as_ptr(heap.alloc(l).unwrap()).unwrap();
            for page in 0..16 {
                // SAFETY: the block is this bench's own, 64 KiB long.
                unsafe { p.add(page * 4096).write_volatile(1) };
            }
        }
        ns_per(t.elapsed(), CARVES as u64)
    };
    let name = format!("/shmutils-bench-carve-{}", std::process::id());
    let mut named = Segment::create(&name, 1 << 30).expect("a 1 GiB named segment");
    named.unlink_on_drop(true).unwrap();
    let anonymous = Segment::anonymous(1 << 30).expect("a 1 GiB anonymous segment");
    (run(&named), run(&anonymous))
}

/// ns per hop walking a list of `LIST_NODES` nodes linked in a shuffled
/// order (each hop a dependent load, as in any pointer chase): through
/// `heap.get` (type-checked) against raw pointers.
fn list_walk(heap: SharedHeap<'_>) -> (f64, f64) {
    let mut order: Vec<usize> = (0..LIST_NODES).collect();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for i in (1..order.len()).rev() {
        order.swap(i, (xorshift(&mut rng) % (i as u64 + 1)) as usize);
    }
    // Shared list: nodes allocated in index order, linked in shuffled
    // order (node order[k] -> order[k + 1]) while still private, then
    // published.
    let mut boxes: Vec<_> = (0..LIST_NODES)
        .map(|i| {
            heap.new_box(Node {
                next: RelPtr::null(),
                value: i as u64,
            })
            .unwrap()
        })
        .collect();
    let ptrs: Vec<RelPtr<Node>> = boxes.iter().map(|b| b.rel()).collect();
    for k in 0..LIST_NODES - 1 {
        boxes[order[k]].next = ptrs[order[k + 1]];
    }
    let nodes: Vec<RelPtr<Node>> = boxes.into_iter().map(|b| b.into_rel()).collect();
    let head = nodes[order[0]];
    // Raw list, same shape.
    let mut raw: Vec<RawNode> = (0..LIST_NODES)
        .map(|i| RawNode {
            next: std::ptr::null(),
            value: i as u64,
        })
        .collect();
    let base = raw.as_mut_ptr();
    for k in 0..LIST_NODES - 1 {
        // SAFETY: both indices are in the vector, which is not resized.
        unsafe { (*base.add(order[k])).next = base.add(order[k + 1]) };
    }
    let raw_head = base.wrapping_add(order[0]) as *const RawNode;
    let rounds = 20;
    let t = Instant::now();
    let mut sum = 0u64;
    for _ in 0..rounds {
        let mut p = head;
        while let Ok(n) = heap.get(black_box(p)) {
            sum = sum.wrapping_add(n.value);
            p = n.next;
        }
    }
    black_box(sum);
    let ours = ns_per(t.elapsed(), (rounds * LIST_NODES) as u64);
    let t = Instant::now();
    let mut sum = 0u64;
    for _ in 0..rounds {
        let mut p = raw_head;
        while !p.is_null() {
            // SAFETY: p walks the live vector's nodes, ending at null.
            let n = unsafe { &*black_box(p) };
            sum = sum.wrapping_add(n.value);
            p = n.next;
        }
    }
    black_box(sum);
    let raw_ns = ns_per(t.elapsed(), (rounds * LIST_NODES) as u64);
    let mut hops = 0;
    let mut p = head;
    while let Ok(n) = heap.get(p) {
        hops += 1;
        p = n.next;
    }
    assert_eq!(hops, LIST_NODES, "the shared list is whole");
    for p in nodes {
        // SAFETY: every reference made above is dead.
        unsafe { heap.delete(p) }.unwrap();
    }
    (ours, raw_ns)
}

fn main() {
    let seg = Segment::anonymous(1 << 30).expect("a 1 GiB anonymous segment");
    let heap = seg.heap();
    let go = heap.new(AtomicU32::new(0)).unwrap();
    let go = heap.get(go).unwrap();
    let peer = boost::Boost::new();
    let mut rows = Vec::new();

    let (shared, cached, glibc) = alloc_small(heap);
    let b = peer
        .run("alloc_small", SMALL_PAIRS)
        .and_then(|r| r.get("alloc_small"));
    let (boost, vs_boost) = boost_cells(shared, b, "ns/pair");
    rows.push(Row {
        name: "alloc_small (64 B alloc+free), shared",
        ours: format!("{shared:.1} ns/pair"),
        peer: format!("glibc {glibc:.1} ns/pair"),
        ratio: format!("{:.2}x", shared / glibc),
        boost,
        vs_boost,
    });
    let (boost, vs_boost) = boost_cells(cached, b, "ns/pair");
    rows.push(Row {
        name: "alloc_small, through a HeapCache",
        ours: format!("{cached:.1} ns/pair"),
        peer: format!("glibc {glibc:.1} ns/pair"),
        ratio: format!("{:.2}x", cached / glibc),
        boost,
        vs_boost,
    });

    let (ours, glibc) = alloc_batch(heap);
    let b = peer.run("alloc_batch", BATCH as u64);
    let get = |name| b.as_ref().and_then(|r| r.get(name));
    let (boost, vs_boost) = boost_cells(ours.alloc_ns, get("alloc_batch_alloc"), "ns/alloc");
    rows.push(Row {
        name: "alloc_batch alloc (1M x 16..1024 B)",
        ours: format!("{:.1} ns/alloc", ours.alloc_ns),
        peer: format!("glibc {:.1} ns/alloc", glibc.alloc_ns),
        ratio: format!("{:.2}x", ours.alloc_ns / glibc.alloc_ns),
        boost,
        vs_boost,
    });
    let (boost, vs_boost) = boost_cells(ours.free_ns, get("alloc_batch_free"), "ns/free");
    rows.push(Row {
        name: "alloc_batch free (shuffled)",
        ours: format!("{:.1} ns/free", ours.free_ns),
        peer: format!("glibc {:.1} ns/free", glibc.free_ns),
        ratio: format!("{:.2}x", ours.free_ns / glibc.free_ns),
        boost,
        vs_boost,
    });
    let (boost, vs_boost) = match (get("alloc_batch_used"), get("alloc_batch_requested")) {
        (Some(used), Some(requested)) => (
            format!("{:.3} ({} MiB)", used / requested, used as u64 >> 20),
            format!("{:.2}x", ours.used as f64 / used),
        ),
        _ => ("n/a".to_owned(), "n/a".to_owned()),
    };
    rows.push(Row {
        name: "alloc_batch bytes used / requested",
        ours: format!(
            "{:.3} ({} MiB)",
            ours.used as f64 / ours.requested as f64,
            ours.used >> 20
        ),
        peer: format!(
            "glibc {:.3} ({} MiB)",
            glibc.used as f64 / glibc.requested as f64,
            glibc.used >> 20
        ),
        ratio: format!("{:.2}x", ours.used as f64 / glibc.used as f64),
        boost,
        vs_boost,
    });

    let (shared, cached, glibc) = alloc_contended(heap, go);
    let b = peer
        .run("alloc_contended", CONTENDED_PAIRS)
        .and_then(|r| r.get("alloc_contended"));
    let (boost, vs_boost) = boost_cells(shared, b, "Mops/s");
    rows.push(Row {
        name: "alloc_contended (2 procs x 5M), shared",
        ours: format!("{shared:.1} Mops/s"),
        peer: format!("glibc local {glibc:.1} Mops/s"),
        ratio: format!("{:.2}x", shared / glibc),
        boost,
        vs_boost,
    });
    let (boost, vs_boost) = boost_cells(cached, b, "Mops/s");
    rows.push(Row {
        name: "alloc_contended, a HeapCache each",
        ours: format!("{cached:.1} Mops/s"),
        peer: format!("glibc local {glibc:.1} Mops/s"),
        ratio: format!("{:.2}x", cached / glibc),
        boost,
        vs_boost,
    });

    let (ours, raw) = relptr_resolve(heap);
    rows.push(Row {
        name: "relptr_resolve (get + load)",
        ours: format!("{ours:.2} ns"),
        peer: format!("raw deref {raw:.2} ns"),
        ratio: format!("{:.2}x", ours / raw),
        // Boost's analogue (offset_ptr) is not measured.
        boost: "-".to_owned(),
        vs_boost: "-".to_owned(),
    });

    let (ours, raw) = list_walk(heap);
    rows.push(Row {
        name: "list_walk (100k shuffled nodes, per hop)",
        ours: format!("{ours:.2} ns"),
        peer: format!("raw pointers {raw:.2} ns"),
        ratio: format!("{:.2}x", ours / raw),
        boost: "-".to_owned(),
        vs_boost: "-".to_owned(),
    });

    let (named, anonymous) = carve_cost();
    rows.push(Row {
        name: "carve (64 KiB span), reserving in /dev/shm",
        ours: format!("{named:.0} ns"),
        peer: format!("not reserving {anonymous:.0} ns"),
        ratio: format!("{:.2}x", named / anonymous),
        boost: "-".to_owned(),
        vs_boost: "-".to_owned(),
    });

    // The forked children dropped their caches before _exit, so nothing is
    // held: the heap must be consistent (and hold only `go`).
    let report = heap.check();
    assert!(report.is_consistent(), "{report}");

    println!(
        "\n{:<40} {:>22} {:>28} {:>8} {:>20} {:>8}",
        "benchmark", "shmutils", "peer", "ratio", "Boost.Interprocess", "vs Boost"
    );
    for r in rows {
        println!(
            "{:<40} {:>22} {:>28} {:>8} {:>20} {:>8}",
            r.name, r.ours, r.peer, r.ratio, r.boost, r.vs_boost
        );
    }
    let stats = heap.stats();
    println!(
        "\nheap after the run: {} MiB carved of {} MiB, {} blocks in use; check: {report}",
        stats.high_water_bytes >> 20,
        stats.arena_bytes >> 20,
        stats.in_use_blocks
    );
}
