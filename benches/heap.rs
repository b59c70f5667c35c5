//! The shared heap against glibc malloc/free (the process-local floor),
//! Boost.Interprocess `managed_shared_memory` (rbtree_best_fit behind one
//! `interprocess_mutex`; the C++ program `peers/boost_peer.cpp` runs the
//! same workloads) and raw pointer dereference, measured in the same run.
//!
//! Every figure is the best of [`RUNS`] runs; each run of ours gets a fresh
//! anonymous segment, each Boost run a fresh process and segment, and each
//! glibc batch run a fresh forked process (so no run reuses pages a
//! previous run faulted in).
//!
//! - `alloc_small`: one process, 64 B alloc + free pairs, ns per pair.
//! - `alloc_batch`: one process allocates 1M blocks of sizes 16..1024 B
//!   (one fixed xorshift sequence) and writes one byte of each (as its user
//!   will; it puts the page faults of every peer inside the alloc timing),
//!   then frees them in one fixed shuffled order; ns per alloc and per free,
//!   and bytes the allocator took per byte requested.
//! - `alloc_contended`: 2 forked processes on one heap, each doing
//!   [`CONTENDED_PAIRS`] alloc + free pairs (16..256 B, each process its own
//!   size sequence), pinned to two CPUs, then both to one CPU; glibc's
//!   processes each have their private heap.
//! - `heap_many`: N forked processes (unpinned) on one heap share
//!   [`MANY_TOTAL`] pairs; each frees the block it allocated [`RING`] pairs
//!   before, so it holds 16 blocks live.
//!
//! Mops/s is millions of alloc + free pairs per second, all processes
//! together, from the release of the processes until the last is reaped.
//!
//! Run with `cargo bench --bench heap`. Prints one table; ratios are
//! shmutils / peer (lower is better for times, higher for throughput). The
//! Boost column needs a C++ compiler and `libboost-dev`; without them it
//! reads `n/a`.

#[path = "peers/boost.rs"]
mod boost;

use std::alloc::Layout;
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmutils::{RelPtr, Segment, SharedHeap, SharedStruct};
use shmutils_workspace::{fork, Child, ShmName};

/// Runs per figure; the best is printed.
const RUNS: usize = 3;
const SMALL_PAIRS: u64 = 10_000_000;
const BATCH: usize = 1_000_000;
/// Ours for `alloc_batch`: the 1M blocks take about 550 MiB.
const BATCH_SEGMENT: usize = 2 << 30;
/// Ours for the forked workloads (as Boost's segment).
const CHURN_SEGMENT: usize = 1 << 30;
/// Pairs per process of `alloc_contended`.
const CONTENDED_PAIRS: u64 = 2_000_000;
/// Pairs of one `heap_many` run, all processes together.
const MANY_TOTAL: u64 = 4_000_000;
const MANY_PROCS: [usize; 3] = [2, 8, 64];
/// Blocks each `heap_many` process holds live.
const RING: usize = 16;
const RESOLVES: usize = 10_000_000;

struct Row {
    name: String,
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

/// The size sequence seed of forked process `who` (as in boost_peer.cpp).
fn seed(who: usize) -> u64 {
    0x9e37_79b9_7f4a_7c15u64.wrapping_mul(who as u64 + 1)
}

/// A random size in 16..=256 bytes.
fn small_size(rng: &mut u64) -> usize {
    16 + (xorshift(rng) % 241) as usize
}

fn ns_per(d: Duration, n: u64) -> f64 {
    d.as_nanos() as f64 / n as f64
}

fn mops(pairs: u64, d: Duration) -> f64 {
    pairs as f64 / d.as_secs_f64() / 1e6
}

/// The lowest (`lower_is_better`) or highest of `runs`.
fn best(lower_is_better: bool, runs: impl IntoIterator<Item = f64>) -> f64 {
    let runs = runs.into_iter();
    if lower_is_better {
        runs.fold(f64::INFINITY, f64::min)
    } else {
        runs.fold(0.0, f64::max)
    }
}

/// The best of [`RUNS`] runs of the Boost peer's `cmd n args...`, result
/// `name`; `None` if the peer is unavailable or a run failed.
fn best_boost(
    peer: &boost::Boost,
    lower_is_better: bool,
    cmd: &str,
    args: &[u64],
    name: &str,
) -> Option<f64> {
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        runs.push(peer.run_args(cmd, args)?.get(name)?);
    }
    Some(best(lower_is_better, runs))
}

/// ns per 64-byte alloc+free pair: (ours, glibc), one run.
fn alloc_small(heap: SharedHeap<'_>) -> (f64, f64) {
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
    let ours = ns_per(t.elapsed(), SMALL_PAIRS);
    let t = Instant::now();
    for _ in 0..SMALL_PAIRS {
        // SAFETY: malloc/free of a fresh block, never dereferenced.
        unsafe {
            let p = libc::malloc(64);
            libc::free(black_box(p));
        }
    }
    (ours, ns_per(t.elapsed(), SMALL_PAIRS))
}

/// One `alloc_batch` run of one allocator.
#[derive(Clone, Copy)]
struct Batch {
    alloc_ns: f64,
    free_ns: f64,
    /// Bytes the allocator took for the blocks.
    used: u64,
}

/// The workload of `alloc_batch` (the same in boost_peer.cpp): the sizes,
/// the shuffled free order, and the bytes requested.
struct BatchPlan {
    sizes: Vec<usize>,
    order: Vec<usize>,
    requested: u64,
}

impl BatchPlan {
    fn new() -> BatchPlan {
        let mut rng = 0x1234_5678_9abc_def1u64;
        let sizes: Vec<usize> = (0..BATCH)
            .map(|_| 16 + (xorshift(&mut rng) % 1009) as usize)
            .collect();
        let mut order: Vec<usize> = (0..BATCH).collect();
        for i in (1..BATCH).rev() {
            order.swap(i, (xorshift(&mut rng) % (i as u64 + 1)) as usize);
        }
        let requested = sizes.iter().map(|&s| s as u64).sum();
        BatchPlan {
            sizes,
            order,
            requested,
        }
    }
}

/// One run of ours, in a fresh segment.
fn batch_ours(plan: &BatchPlan) -> Batch {
    let seg = Segment::anonymous(BATCH_SEGMENT).expect("a 2 GiB anonymous segment");
    let heap = seg.heap();
    let mut ptrs: Vec<RelPtr<u8>> = Vec::with_capacity(BATCH);
    let before = heap.stats().high_water_bytes;
    let t = Instant::now();
    for &s in &plan.sizes {
        let p = heap.alloc(Layout::from_size_align(s, 8).unwrap()).unwrap();
        // SAFETY: the block is this bench's own, at least 16 bytes long.
        unsafe { heap.as_ptr(p).unwrap().write_volatile(1) };
        ptrs.push(p);
    }
    let alloc_ns = ns_per(t.elapsed(), BATCH as u64);
    let used = heap.stats().high_water_bytes - before;
    let t = Instant::now();
    for &i in &plan.order {
        let l = Layout::from_size_align(plan.sizes[i], 8).unwrap();
        // SAFETY: each block is freed once, and nothing refers to it.
        unsafe { heap.free(ptrs[i], l) }.unwrap();
    }
    let free_ns = ns_per(t.elapsed(), BATCH as u64);
    Batch {
        alloc_ns,
        free_ns,
        used,
    }
}

/// One run of glibc, in a forked child (a heap no run has used before);
/// `out` carries its figures back.
fn batch_glibc(plan: &BatchPlan, out: &[&AtomicU64; 3]) -> Batch {
    let child = fork(|| {
        let mut raw: Vec<*mut u8> = Vec::with_capacity(BATCH);
        // SAFETY: mallinfo2 only reads allocator statistics.
        let before = unsafe { libc::mallinfo2() };
        let t = Instant::now();
        for &s in &plan.sizes {
            // SAFETY: malloc of a fresh block; when it is not null it holds
            // at least `s` >= 16 bytes, written once, and is freed once below.
            unsafe {
                let p = libc::malloc(s).cast::<u8>();
                assert!(!p.is_null(), "malloc failed");
                p.write_volatile(1);
                raw.push(p);
            }
        }
        let alloc_ns = ns_per(t.elapsed(), BATCH as u64);
        // SAFETY: as above.
        let after = unsafe { libc::mallinfo2() };
        let used = (after.uordblks + after.hblkhd).saturating_sub(before.uordblks + before.hblkhd);
        let t = Instant::now();
        for &i in &plan.order {
            // SAFETY: each block is freed exactly once.
            unsafe { libc::free(raw[i].cast()) };
        }
        let free_ns = ns_per(t.elapsed(), BATCH as u64);
        out[0].store(alloc_ns.to_bits(), Ordering::Relaxed);
        out[1].store(free_ns.to_bits(), Ordering::Relaxed);
        out[2].store(used as u64, Ordering::Relaxed);
        0
    });
    assert_eq!(child.wait(), 0, "the glibc alloc_batch child failed");
    // The child's stores are visible: waitpid returned after its exit.
    Batch {
        alloc_ns: f64::from_bits(out[0].load(Ordering::Relaxed)),
        free_ns: f64::from_bits(out[1].load(Ordering::Relaxed)),
        used: out[2].load(Ordering::Relaxed),
    }
}

/// The best of [`RUNS`] runs of one allocator (each figure on its own).
fn best_batch(run: impl Fn() -> Batch) -> Batch {
    let runs: Vec<Batch> = (0..RUNS).map(|_| run()).collect();
    Batch {
        alloc_ns: best(true, runs.iter().map(|b| b.alloc_ns)),
        free_ns: best(true, runs.iter().map(|b| b.free_ns)),
        used: runs.iter().map(|b| b.used).min().unwrap(),
    }
}

/// The per-process workload of `alloc_contended` and `heap_many` (the same
/// in boost_peer.cpp): `pairs` times, free the block allocated `ring` pairs
/// before (if any) and allocate one of a random size in 16..=256 B (the
/// sequence of `seed(who)`); `ring` 0 frees each block right after
/// allocating it. Frees what the ring holds at the end.
fn churn<P>(
    who: usize,
    pairs: u64,
    ring: usize,
    mut alloc: impl FnMut(usize) -> P,
    mut free: impl FnMut(P, usize),
) {
    let mut rng = seed(who);
    if ring == 0 {
        for _ in 0..pairs {
            let s = small_size(&mut rng);
            let p = alloc(s);
            free(black_box(p), s);
        }
        return;
    }
    let mut slots: Vec<Option<(P, usize)>> = (0..ring).map(|_| None).collect();
    let mut slot = 0;
    for _ in 0..pairs {
        if let Some((p, s)) = slots[slot].take() {
            free(p, s);
        }
        let s = small_size(&mut rng);
        slots[slot] = Some((black_box(alloc(s)), s));
        slot += 1;
        if slot == ring {
            slot = 0;
        }
    }
    for (p, s) in slots.into_iter().flatten() {
        free(p, s);
    }
}

/// `churn` on our heap.
fn churn_ours(heap: SharedHeap<'_>, who: usize, pairs: u64, ring: usize) {
    let layout = |s| Layout::from_size_align(s, 8).unwrap();
    churn(
        who,
        pairs,
        ring,
        |s| heap.alloc(layout(s)).unwrap(),
        // SAFETY: each block is freed once, and nothing refers to it.
        |p, s| unsafe { heap.free(p, layout(s)) }.unwrap(),
    );
}

/// `churn` on this process's glibc heap.
fn churn_glibc(who: usize, pairs: u64, ring: usize) {
    churn(
        who,
        pairs,
        ring,
        // SAFETY: malloc of a fresh block, never dereferenced.
        |s| unsafe { libc::malloc(s) },
        // SAFETY: each block is freed exactly once.
        |p, _| unsafe { libc::free(p) },
    );
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; all zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most `size_of::<cpu_set_t>()` bytes into
    // the set, which lives for the call.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(
        r,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is below CPU_SETSIZE, so inside the set.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Pins this process to `cpu`; false if the kernel refused.
fn pin_to_cpu(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; all zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` came from `allowed_cpus`, so it is below CPU_SETSIZE;
    // sched_setaffinity only reads the set.
    unsafe {
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Where the processes of a forked workload run.
#[derive(Clone, Copy)]
enum Place {
    /// Process `i` pinned to the `i`-th allowed CPU (round robin).
    Spread,
    /// All pinned to the first allowed CPU.
    OneCpu,
    /// Wherever the scheduler puts them.
    Free,
}

/// The start line of forked children, in the bench's shared segment.
struct Gate<'s> {
    ready: &'s AtomicU32,
    go: &'s AtomicU32,
}

/// Runs `work(i)` in forked children `i` in `0..n`, placed by `place`,
/// released together once all are ready; returns the time from the release
/// until all are reaped. A child that fails (or cannot be placed) fails
/// the bench; every child is killed and reaped on the way out.
fn forked(gate: &Gate<'_>, n: usize, place: Place, work: impl Fn(usize)) -> Duration {
    gate.ready.store(0, Ordering::SeqCst);
    gate.go.store(0, Ordering::SeqCst);
    let cpus = allowed_cpus();
    let parent = std::process::id();
    let work = &work;
    let cpus = &cpus;
    let children: Vec<Child> = (0..n)
        .map(|i| {
            fork(move || {
                // SAFETY: PR_SET_PDEATHSIG takes a signal number and changes
                // only this process: it dies with the bench.
                let orphan = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0;
                // SAFETY: getppid has no preconditions.
                if orphan || unsafe { libc::getppid() } as u32 != parent {
                    return 2;
                }
                let cpu = match place {
                    Place::Spread => Some(cpus[i % cpus.len()]),
                    Place::OneCpu => Some(cpus[0]),
                    Place::Free => None,
                };
                if cpu.is_some_and(|c| !pin_to_cpu(c)) {
                    return 3;
                }
                gate.ready.fetch_add(1, Ordering::SeqCst);
                // Acquire: pairs with the Release store that starts the
                // clock.
                while gate.go.load(Ordering::Acquire) == 0 {
                    std::thread::yield_now();
                }
                work(i);
                0
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while gate.ready.load(Ordering::SeqCst) < n as u32 {
        assert!(Instant::now() < deadline, "bench children never got ready");
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = Instant::now();
    // Release: the children start only after the clock does.
    gate.go.store(1, Ordering::Release);
    let codes: Vec<i32> = children.into_iter().map(Child::wait).collect();
    let elapsed = t.elapsed();
    assert!(
        codes.iter().all(|&c| c == 0),
        "bench children failed: exit codes {codes:?} (101 a panic, 2 orphaned, 3 not pinned)"
    );
    elapsed
}

/// Which allocator a forked workload uses.
#[derive(Clone, Copy, PartialEq)]
enum Alloc {
    Ours,
    Glibc,
}

/// One run of `procs` processes each doing `pairs` pairs of `churn` with
/// `ring`: Mops/s. Ours gets a fresh segment, checked afterwards.
fn churn_run(
    gate: &Gate<'_>,
    alloc: Alloc,
    procs: usize,
    place: Place,
    pairs: u64,
    ring: usize,
) -> f64 {
    let t = match alloc {
        Alloc::Ours => {
            let seg = Segment::anonymous(CHURN_SEGMENT).expect("a 1 GiB anonymous segment");
            let heap = seg.heap();
            let t = forked(gate, procs, place, |i| churn_ours(heap, i, pairs, ring));
            let report = heap.check();
            assert!(report.is_consistent(), "after {procs} processes: {report}");
            t
        }
        Alloc::Glibc => forked(gate, procs, place, |i| churn_glibc(i, pairs, ring)),
    };
    mops(procs as u64 * pairs, t)
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
    // Unlinked when dropped, also when the bench panics.
    let name = ShmName::new("bench-carve");
    let named = Segment::create(&name, 1 << 30).expect("a 1 GiB named segment");
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
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and friends
    }
    let seg = Segment::anonymous(1 << 30).expect("a 1 GiB anonymous segment");
    let heap = seg.heap();
    let atomic32 = || heap.get(heap.new(AtomicU32::new(0)).unwrap()).unwrap();
    let atomic64 = || heap.get(heap.new(AtomicU64::new(0)).unwrap()).unwrap();
    let gate = Gate {
        ready: atomic32(),
        go: atomic32(),
    };
    let out = [atomic64(), atomic64(), atomic64()];
    let peer = boost::Boost::new();
    let cpus = allowed_cpus();
    println!(
        "heap benchmark: best of {RUNS} runs, {} CPUs; ratio = shmutils / peer, vs Boost = \
         shmutils / Boost.Interprocess; Mops/s = million alloc+free pairs per second",
        cpus.len()
    );
    let mut rows = Vec::new();

    let runs: Vec<(f64, f64)> = (0..RUNS).map(|_| alloc_small(heap)).collect();
    let ours = best(true, runs.iter().map(|r| r.0));
    let glibc = best(true, runs.iter().map(|r| r.1));
    let b = best_boost(&peer, true, "alloc_small", &[SMALL_PAIRS], "alloc_small");
    let (boost, vs_boost) = boost_cells(ours, b, "ns/pair");
    rows.push(Row {
        name: "alloc_small (64 B alloc+free)".to_owned(),
        ours: format!("{ours:.1} ns/pair"),
        peer: format!("glibc {glibc:.1} ns/pair"),
        ratio: format!("{:.2}x", ours / glibc),
        boost,
        vs_boost,
    });

    let plan = BatchPlan::new();
    let ours = best_batch(|| batch_ours(&plan));
    let glibc = best_batch(|| batch_glibc(&plan, &out));
    let requested = plan.requested as f64;
    drop(plan);
    let boost_runs: Option<Vec<boost::Results>> = (0..RUNS)
        .map(|_| peer.run("alloc_batch", BATCH as u64))
        .collect();
    let b = |name: &str| -> Option<f64> {
        let runs = boost_runs.as_ref()?;
        let values: Option<Vec<f64>> = runs.iter().map(|r| r.get(name)).collect();
        Some(best(true, values?))
    };
    let (boost, vs_boost) = boost_cells(ours.alloc_ns, b("alloc_batch_alloc"), "ns/alloc");
    rows.push(Row {
        name: "alloc_batch alloc+write (1M x 16..1024 B)".to_owned(),
        ours: format!("{:.1} ns/alloc", ours.alloc_ns),
        peer: format!("glibc {:.1} ns/alloc", glibc.alloc_ns),
        ratio: format!("{:.2}x", ours.alloc_ns / glibc.alloc_ns),
        boost,
        vs_boost,
    });
    let (boost, vs_boost) = boost_cells(ours.free_ns, b("alloc_batch_free"), "ns/free");
    rows.push(Row {
        name: "alloc_batch free (shuffled)".to_owned(),
        ours: format!("{:.1} ns/free", ours.free_ns),
        peer: format!("glibc {:.1} ns/free", glibc.free_ns),
        ratio: format!("{:.2}x", ours.free_ns / glibc.free_ns),
        boost,
        vs_boost,
    });
    let (boost, vs_boost) = match b("alloc_batch_used") {
        Some(used) => (
            format!("{:.3} ({} MiB)", used / requested, used as u64 >> 20),
            format!("{:.2}x", ours.used as f64 / used),
        ),
        None => ("n/a".to_owned(), "n/a".to_owned()),
    };
    rows.push(Row {
        name: "alloc_batch bytes used / requested".to_owned(),
        ours: format!(
            "{:.3} ({} MiB)",
            ours.used as f64 / requested,
            ours.used >> 20
        ),
        peer: format!(
            "glibc {:.3} ({} MiB)",
            glibc.used as f64 / requested,
            glibc.used >> 20
        ),
        ratio: format!("{:.2}x", ours.used as f64 / glibc.used as f64),
        boost,
        vs_boost,
    });

    for (place, cpus_arg, label) in [(Place::Spread, 2, "2 CPUs"), (Place::OneCpu, 1, "1 CPU")] {
        let run = |a| {
            best(
                false,
                (0..RUNS).map(|_| churn_run(&gate, a, 2, place, CONTENDED_PAIRS, 0)),
            )
        };
        let (ours, glibc) = (run(Alloc::Ours), run(Alloc::Glibc));
        let b = best_boost(
            &peer,
            false,
            "alloc_contended",
            &[CONTENDED_PAIRS, cpus_arg],
            "alloc_contended",
        );
        let (boost, vs_boost) = boost_cells(ours, b, "Mops/s");
        rows.push(Row {
            name: format!("alloc_contended (2 procs x 2M) on {label}"),
            ours: format!("{ours:.1} Mops/s"),
            peer: format!("glibc local {glibc:.1} Mops/s"),
            ratio: format!("{:.2}x", ours / glibc),
            boost,
            vs_boost,
        });
    }

    for procs in MANY_PROCS {
        let pairs = MANY_TOTAL / procs as u64;
        let run = |a| {
            best(
                false,
                (0..RUNS).map(|_| churn_run(&gate, a, procs, Place::Free, pairs, RING)),
            )
        };
        let (ours, glibc) = (run(Alloc::Ours), run(Alloc::Glibc));
        let b = best_boost(
            &peer,
            false,
            "heap_many",
            &[MANY_TOTAL, procs as u64],
            "heap_many",
        );
        let (boost, vs_boost) = boost_cells(ours, b, "Mops/s");
        rows.push(Row {
            name: format!("heap_many ({procs} procs, 4M pairs, ring 16)"),
            ours: format!("{ours:.1} Mops/s"),
            peer: format!("glibc local {glibc:.1} Mops/s"),
            ratio: format!("{:.2}x", ours / glibc),
            boost,
            vs_boost,
        });
    }

    let (ours, raw) = relptr_resolve(heap);
    rows.push(Row {
        name: "relptr_resolve (get + load)".to_owned(),
        ours: format!("{ours:.2} ns"),
        peer: format!("raw deref {raw:.2} ns"),
        ratio: format!("{:.2}x", ours / raw),
        // Boost's analogue (offset_ptr) is not measured.
        boost: "-".to_owned(),
        vs_boost: "-".to_owned(),
    });

    let (ours, raw) = list_walk(heap);
    rows.push(Row {
        name: "list_walk (100k shuffled nodes, per hop)".to_owned(),
        ours: format!("{ours:.2} ns"),
        peer: format!("raw pointers {raw:.2} ns"),
        ratio: format!("{:.2}x", ours / raw),
        boost: "-".to_owned(),
        vs_boost: "-".to_owned(),
    });

    let (named, anonymous) = carve_cost();
    rows.push(Row {
        name: "carve (64 KiB span), reserving in /dev/shm".to_owned(),
        ours: format!("{named:.0} ns"),
        peer: format!("not reserving {anonymous:.0} ns"),
        ratio: format!("{:.2}x", named / anonymous),
        boost: "-".to_owned(),
        vs_boost: "-".to_owned(),
    });

    // Everything this process allocated here is freed: the heap must be
    // consistent (and hold only the gate and the result slots).
    let report = heap.check();
    assert!(report.is_consistent(), "{report}");

    println!(
        "\n{:<46} {:>22} {:>28} {:>8} {:>20} {:>8}",
        "benchmark", "shmutils", "peer", "ratio", "Boost.Interprocess", "vs Boost"
    );
    for r in rows {
        println!(
            "{:<46} {:>22} {:>28} {:>8} {:>20} {:>8}",
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
