//! DESIGN.md rules 2 and 3 under fire: a deterministic fuzz that scribbles
//! over a real segment (headers, free-list heads, directory, type table,
//! page map, span words, blocks' meta words, block contents) and then runs
//! every heap and segment API on it in a forked child.
//!
//! The scribbler is a real peer of the child: the child is forked with the
//! segment open, and waits; the parent then drops its own `Segment` (a
//! process may not map a segment's object raw while a `Segment` of it is
//! alive there), scribbles through a raw mapping, drops that, and lets the
//! child go. A panic, abort,
//! segfault or hang of the library is a non-zero exit (or a kill after a
//! time bound), so it fails the test; so does an allocation outside the
//! arena, one that overlaps another allocation made in the same child, and
//! a typed read that resolves a block as a type it was not made as.
//!
//! Every round is seeded by its index; a failure prints the round, its
//! seed and the scribbles. `ADVERSARIAL_ROUND=n` reruns round `n` alone,
//! `ADVERSARIAL_ROUNDS=n` runs a longer campaign (the default 300 rounds
//! take about 8 s in a debug build).

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmutils::{MapFlags, MapProtections, MappedMemory, Mode, RelPtr, RelSlice, Segment, ShmFd};
use shmutils_workspace::{fork, ShmName};

/// Rounds of create, scribble, fork, exercise.
const ROUNDS: u64 = 300;
/// A child that runs longer than this is hung.
const CHILD_LIMIT: Duration = Duration::from_secs(10);

/// Where the heap's pieces lie, from the layout documented in
/// `shmutils/src/heap/layout.rs` (segment header 64 B, heap header 128 B,
/// 119 classes x 8 shards x 64 B of heads, 128 directory entries of 160 B,
/// 512 type table entries of 128 B, then page map, span words, arena).
/// Checked against what the API reports.
#[derive(Clone, Copy, Debug)]
struct Map {
    heap_header: u64,
    heads: u64,
    dir: u64,
    types: u64,
    registry: u64,
    pagemap: u64,
    spans: u64,
    arena_start: u64,
    arena_end: u64,
    pages: u64,
    carved_end: u64,
    size: u64,
}

const HEAP_OFF: u64 = 64;
const NCLASSES: u64 = 29 + 90;
const BUMP_FIELD: u64 = HEAP_OFF + 11 * 8;

fn align_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

impl Map {
    fn of(seg: &Segment) -> Map {
        let heap = seg.heap();
        let stats = heap.stats();
        let pages = stats.arena_bytes / 4096;
        let heads = HEAP_OFF + 128;
        let dir = heads + NCLASSES * 8 * 64;
        let types = dir + 128 * 160;
        let registry = types + 512 * 128;
        let pagemap = registry + 64 + 255 * 512;
        let spans = align_up(pagemap + 4 * pages, 8);
        let arena_start = align_up(spans + 8 * pages, 4096);
        // The documented layout must be the real one, or the fuzz would
        // aim at the wrong bytes: the arena starts exactly there.
        let at = |off: u64| heap.as_ptr(forge::<u8>(off)).is_ok();
        assert!(at(arena_start) && !at(arena_start - 1));
        let arena_end = arena_start + stats.arena_bytes;
        assert!(at(arena_end - 1) && !at(arena_end));
        Map {
            heap_header: HEAP_OFF,
            heads,
            dir,
            types,
            registry,
            pagemap,
            spans,
            arena_start,
            arena_end,
            pages,
            carved_end: arena_start + stats.high_water_bytes,
            size: seg.size() as u64,
        }
    }
}

/// A pointer made from a number, as a peer could write one into the
/// segment: resolution must check it whatever it is.
fn forge<T>(off: u64) -> RelPtr<T> {
    // SAFETY: the fuzz resolves and frees forged pointers on purpose; the
    // heap must refuse every wrong one (a wrong free is the fuzz's point,
    // and the child holds no reference to anything it frees).
    unsafe { RelPtr::from_offset(off) }
}

/// A slice made from numbers (see `forge`).
fn forge_slice<T>(off: u64, len: u64) -> RelSlice<T> {
    // SAFETY: as in forge().
    unsafe { RelSlice::from_raw_parts(off, len) }
}

/// `heap.free` of what the fuzz owns, or of what it means the heap to
/// refuse.
fn free(heap: &shmutils::SharedHeap<'_>, p: RelPtr<u8>, l: Layout) -> shmutils::Result<()> {
    // SAFETY: as in forge(): the process holds no reference into any block
    // it frees (every reference it makes is dropped at once).
    unsafe { heap.free(p, l) }
}

/// SplitMix64: deterministic, seeded per round.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn in_range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo))
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// What the parent made before scribbling (the child tries all of it).
#[derive(Clone, Default)]
struct Made {
    values: Vec<RelPtr<u64>>,
    slices: Vec<RelSlice<u8>>,
    raw: Vec<(RelPtr<u8>, Layout)>,
    names: Vec<String>,
    freed: Vec<(RelPtr<u8>, Layout)>,
}

fn random_layout(rng: &mut Rng) -> Layout {
    let size = match rng.below(10) {
        0 => rng.in_range(4097, 70_000),
        1 => rng.in_range(1, 9),
        _ => rng.in_range(1, 4097),
    } as usize;
    let align = match rng.below(8) {
        0 => 1 << rng.below(13),
        _ => 8,
    };
    Layout::from_size_align(size, align).unwrap()
}

/// The value, `None` when the (small) segment is full, a panic on any
/// other error: before scribbling, everything must work.
fn room<T>(r: shmutils::Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(shmutils::Error::OutOfMemory { .. }) => None,
        Err(e) => panic!("before scribbling: {e}"),
    }
}

/// Allocations, frees and named objects, so that every structure has
/// something in it worth breaking.
fn populate(seg: &Segment, rng: &mut Rng) -> Made {
    let heap = seg.heap();
    let mut made = Made::default();
    for i in 0..rng.in_range(5, 40) {
        match rng.below(4) {
            0 => made.values.extend(room(heap.new(rng.next()))),
            1 => {
                let n = rng.in_range(1, 600) as usize;
                let bytes: Vec<u8> = (0..n).map(|k| (k as u8) ^ (i as u8)).collect();
                made.slices.extend(room(heap.new_slice(&bytes)));
            }
            _ => {
                let l = random_layout(rng);
                made.raw.extend(room(heap.alloc(l)).map(|p| (p, l)));
            }
        }
    }
    // Free some, so the free lists hold blocks whose links can be hit.
    for _ in 0..made.raw.len() / 2 {
        let (p, l) = made
            .raw
            .swap_remove(rng.below(made.raw.len() as u64) as usize);
        free(&heap, p, l).unwrap();
        made.freed.push((p, l));
    }
    for k in 0..rng.in_range(1, 6) {
        let name = format!("obj{k}");
        let v = rng.next();
        if room(heap.find_or_init(&name, || AtomicU64::new(v))).is_some() {
            made.names.push(name);
        }
    }
    made
}

/// One write a buggy or hostile peer might make.
fn scribble(rng: &mut Rng, map: &Map, made: &Made, m: &mut MappedMemory, log: &mut Vec<String>) {
    let live: Vec<u64> = made
        .values
        .iter()
        .map(|p| p.offset())
        .chain(made.slices.iter().map(|s| s.offset()))
        .chain(made.raw.iter().chain(&made.freed).map(|(p, _)| p.offset()))
        .collect();
    // The registry slots in use (a thread's cache among them).
    let used: Vec<u64> = (0..255u64)
        .map(|i| map.registry + 64 + i * 512)
        .filter(|&s| {
            m.at(s as usize..s as usize + 8)
                .is_ok_and(|b| b.iter().any(|&x| x != 0))
        })
        .collect();
    let (lo, hi, what) = match rng.below(13) {
        0 => (0, 64, "segment header"),
        1 => (map.heap_header, map.heads, "heap header"),
        2 => (map.heads, map.dir, "free-list heads"),
        3 => (map.dir, map.types, "directory"),
        4 => (map.pagemap, map.pagemap + 4 * map.pages, "page map"),
        5 => (map.spans, map.spans + 8 * map.pages, "span words"),
        6 => (BUMP_FIELD, BUMP_FIELD + 8, "bump counter"),
        8 | 9 => (map.types, map.types + 8 * 128, "type table"),
        11 if !used.is_empty() => {
            let s = used[rng.below(used.len() as u64) as usize];
            (s, s + 512, "a registry slot (owner, records, cache heads)")
        }
        10 => {
            // The meta words at the tail of the first slabs.
            let slabs = ((map.carved_end - map.arena_start) / 65536).max(1);
            let slab = map.arena_start + rng.below(slabs) * 65536;
            let end = (slab + 65536).min(map.arena_end);
            (end - 8192, end, "slab meta words")
        }
        7 if !live.is_empty() => {
            let b = live[rng.below(live.len() as u64) as usize];
            (b, (b + 64).min(map.size), "a block's first bytes")
        }
        _ => (
            map.arena_start,
            map.carved_end.max(map.arena_start + 8),
            "carved arena",
        ),
    };
    // A plausible-looking offset: in the arena, at a block, or just outside.
    let offset = |rng: &mut Rng| match rng.below(7) {
        0 => map.arena_end,
        1 => map.arena_end + 8,
        2 => map.arena_start - 8,
        3 => map.arena_start,
        4 if !live.is_empty() => live[rng.below(live.len() as u64) as usize],
        5 => map.size,
        _ => map.arena_start + rng.below(map.arena_end - map.arena_start) / 8 * 8,
    };
    let pos = rng.in_range(lo, hi);
    let (at, bytes): (u64, Vec<u8>) = match rng.below(6) {
        // Random bytes, random length, random position.
        0 | 1 => {
            let len = rng.in_range(1, 33).min(map.size - pos);
            (pos, (0..len).map(|_| rng.next() as u8).collect())
        }
        // A whole word set to an extreme or misleading value.
        2 | 3 => {
            let at = pos / 8 * 8;
            let v = match rng.below(9) {
                0 => 0,
                1 => u64::MAX,
                2 => u64::from(u32::MAX),
                3 => rng.below(map.pages + 3),
                4 => offset(rng),
                // A free-list head word: tag, block / 8.
                5 => (rng.next() << 32) | (offset(rng) / 8),
                6 => offset(rng) / 8,
                7 => 1,
                _ => rng.next(),
            };
            (at, v.to_le_bytes().to_vec())
        }
        // A 32-bit word: page map entries look like (class + 1) << 24 | page.
        4 => {
            let at = pos / 4 * 4;
            let v: u32 = match rng.below(4) {
                0 => ((rng.below(256) as u32) << 24) | rng.below(20) as u32,
                1 => u32::MAX,
                2 => 0,
                _ => rng.next() as u32,
            };
            (at, v.to_le_bytes().to_vec())
        }
        // A copy of another piece of the segment (a peer's stray memcpy).
        _ => {
            let len = rng.in_range(8, 161).min(map.size - pos);
            let from = rng.below(map.size - len);
            let mut buf = vec![0u8; len as usize];
            m.read(from as usize, &mut buf).unwrap();
            (pos, buf)
        }
    };
    let len = (bytes.len() as u64).min(map.size - at) as usize;
    m.write(at as usize, &bytes[..len]).unwrap();
    log.push(format!(
        "{what}: {len} bytes at {at:#x}: {:02x?}",
        &bytes[..len.min(16)]
    ));
}

/// Writes a line to the real stderr (a forked child's `eprintln!` would go
/// to the test harness's capture buffer, a copy that nobody reads).
fn say(line: String) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Allocations the child holds: start -> end. Every new one must lie in
/// the arena and overlap none of the others.
struct Owned {
    map: Map,
    ranges: BTreeMap<u64, u64>,
}

impl Owned {
    fn claim(&mut self, off: u64, size: u64, what: &str) -> Result<(), i32> {
        let end = off + size.max(1);
        if off < self.map.arena_start || end > self.map.arena_end {
            say(format!(
                "{what} returned {off:#x}+{size}, outside the arena {:#x}..{:#x}",
                self.map.arena_start, self.map.arena_end
            ));
            return Err(2);
        }
        let before = self.ranges.range(..=off).next_back().map(|(&s, &e)| (s, e));
        let after = self.ranges.range(off..).next().map(|(&s, &e)| (s, e));
        for (s, e) in before.into_iter().chain(after) {
            if s < end && off < e {
                say(format!("{what} returned {off:#x}..{end:#x}, which overlaps {s:#x}..{e:#x} handed out before"));
                return Err(3);
            }
        }
        self.ranges.insert(off, end);
        Ok(())
    }

    fn release(&mut self, off: u64) {
        self.ranges.remove(&off);
    }
}

/// Everything a process attached to the scribbled segment might do. Returns
/// the child's exit code: 0, or 2 / 3 / 4 for an allocation outside the
/// arena / handed out twice / a block resolved as another type. A panic
/// inside the library exits 101.
fn exercise(seg: &Segment, name: &str, map: Map, made: &Made, seed: u64) -> i32 {
    let mut rng = Rng(seed ^ 0x00c0_ffee);
    let heap = seg.heap();
    let mut owned = Owned {
        map,
        ranges: BTreeMap::new(),
    };
    // Opening the scribbled segment: an error or a segment, nothing worse.
    let reopened = Segment::open(name);
    if let Ok(other) = &reopened {
        let h = other.heap();
        let _ = h.stats();
        let _ = h.check();
        for n in &made.names {
            let _ = h
                .find::<AtomicU64>(n)
                .map(|p| h.get(p).map(|v| v.load(Ordering::Relaxed)));
        }
    }
    let _ = heap.stats();
    let _ = heap.check();

    // Resolve what the parent made (and its neighbours).
    let mut sink = 0u64;
    for &p in &made.values {
        for q in [p, forge(p.offset().wrapping_add(8)), forge(p.offset() ^ 4)] {
            sink ^= heap.get(q).map_or(0, |v| *v);
            sink ^= heap.get_checked(q).map_or(0, |v| *v);
        }
    }
    for &s in &made.slices {
        for t in [
            s,
            forge_slice(s.offset(), s.len() as u64 * 1000),
            forge_slice(s.offset(), u64::MAX),
        ] {
            sink ^= heap
                .get_slice(t)
                .map_or(0, |b| b.iter().map(|&x| u64::from(x)).sum());
        }
    }
    std::hint::black_box(sink);

    // Typed reads as types the blocks were not made as: whatever the
    // scribbles did, never a reference (exit 4).
    let wrong = |what: &str, ok: bool| {
        if ok {
            say(format!("{what} resolved as a type it was not made as"));
        }
        ok
    };
    for &p in &made.values {
        let off = p.offset();
        if wrong("a u64 block", heap.get(forge::<AtomicU64>(off)).is_ok())
            || wrong("a u64 block", heap.get(forge::<i64>(off)).is_ok())
            || wrong(
                "a u64 block",
                heap.get_slice(forge_slice::<u64>(off, 1)).is_ok(),
            )
        {
            return 4;
        }
    }
    for &s in &made.slices {
        let off = s.offset();
        if wrong("a [u8] block", heap.get(forge::<u8>(off)).is_ok())
            || wrong("a [u8] block", heap.get(forge::<u64>(off)).is_ok())
            || wrong(
                "a [u8] block",
                heap.get_slice(forge_slice::<i8>(off, 1)).is_ok(),
            )
        {
            return 4;
        }
    }
    for &(p, _) in made.raw.iter().chain(&made.freed) {
        let off = p.offset();
        if wrong("an untyped block", heap.get(forge::<u8>(off)).is_ok())
            || wrong("an untyped block", heap.get(forge::<u64>(off)).is_ok())
        {
            return 4;
        }
    }
    for n in &made.names {
        if let Ok(p) = heap.find::<AtomicU64>(n) {
            if wrong(
                "an AtomicU64 object",
                heap.get(forge::<u64>(p.offset())).is_ok(),
            ) {
                return 4;
            }
        }
    }

    // Named objects: find, wrong type, init new ones, remove some.
    for n in &made.names {
        let _ = heap.find::<AtomicU64>(n).map(|p| {
            heap.get_checked(p)
                .map(|v| v.fetch_add(1, Ordering::Relaxed))
        });
        let _ = heap.find::<u32>(n);
        let _ = heap.find_or_init(n, || AtomicU64::new(5));
    }

    // Everything below frees what the child does not own (removes, double
    // frees, foreign pointers): it comes before the child allocates, since
    // a stale pointer that happens to name a block the child got later
    // would free that block, and the heap cannot tell.
    for n in made.names.iter().take(2) {
        let _ = heap.remove(n);
    }
    let _ = heap.remove("never-made");

    // Frees of what the parent made (double frees, wrong layouts,
    // pointers the scribbling may have made foreign) and of random offsets.
    for &(p, l) in made.raw.iter().chain(&made.freed) {
        let _ = free(&heap, p, l);
        let _ = free(
            &heap,
            p,
            Layout::from_size_align(l.size() + 5000, 8).unwrap(),
        );
    }
    for &p in &made.values {
        // SAFETY: as in forge(): no reference into the block is alive here.
        let _ = unsafe { heap.delete(p) };
    }
    for &s in &made.slices {
        // SAFETY: as above.
        let _ = unsafe { heap.delete_slice(s) };
    }
    for _ in 0..20 {
        let off = match rng.below(3) {
            0 => rng.next(),
            1 => map.arena_start + rng.below(map.arena_end - map.arena_start),
            _ => rng.below(map.size + 64),
        };
        let _ = free(&heap, forge(off), random_layout(&mut rng));
        let _ = heap.get_checked(forge::<u64>(off));
        let _ = heap.get_slice(forge_slice::<u32>(off, rng.below(1 << 20)));
    }

    // From here on the child allocates and claims what it gets.
    let mut named = Vec::new();
    for k in 0..3 {
        let mut ran = false;
        if let Ok(p) = heap.find_or_init(&format!("child{k}"), || {
            ran = true;
            7u64
        }) {
            let _ = heap.get(p);
            if ran {
                if let Err(code) = owned.claim(p.offset(), 8, "find_or_init") {
                    return code;
                }
                named.push((k, p.offset()));
            }
        }
    }

    if heap.remove("child0").is_ok() {
        if let Some(&(_, off)) = named.iter().find(|(k, _)| *k == 0) {
            owned.release(off);
        }
    }

    // Allocate, write, free: the core of the check.
    let mut mine: Vec<(u64, Layout, u8)> = Vec::new();
    for i in 0..200u32 {
        let roll = rng.below(10);
        if roll < 6 || mine.is_empty() {
            let l = random_layout(&mut rng);
            let (res, kind) = match rng.below(3) {
                0 => (
                    heap.new(u64::from(i))
                        .map(|p| (p.offset(), Layout::new::<u64>())),
                    0,
                ),
                1 => {
                    let bytes = vec![i as u8; l.size().min(5000)];
                    (
                        heap.new_slice(&bytes)
                            .map(|s| (s.offset(), Layout::array::<u8>(bytes.len()).unwrap())),
                        1,
                    )
                }
                _ => (heap.alloc(l).map(|p| (p.offset(), l)), 2),
            };
            if let Ok((off, l)) = res {
                if let Err(code) = owned.claim(off, l.size() as u64, "alloc") {
                    return code;
                }
                mine.push((off, l, kind));
            }
        } else {
            let (off, l, kind) = mine.swap_remove(rng.below(mine.len() as u64) as usize);
            owned.release(off);
            let _ = match kind {
                // SAFETY: the child's own block; it made no reference to it.
                0 => unsafe { heap.delete(forge::<u64>(off)) },
                // SAFETY: as above.
                1 => unsafe { heap.delete_slice(forge_slice::<u8>(off, l.size() as u64)) },
                _ => free(&heap, forge(off), l),
            };
        }
    }

    // Untyped blocks through the thread's cache over the scribbled heap.
    {
        let mut held = Vec::new();
        for _ in 0..100 {
            if rng.chance(3) && !held.is_empty() {
                let (p, l): (RelPtr<u8>, Layout) = held.swap_remove(0);
                owned.release(p.offset());
                // SAFETY: the child's own untyped block, never read.
                let _ = unsafe { heap.free(p, l) };
            } else {
                let l = Layout::from_size_align(rng.in_range(1, 600) as usize, 8).unwrap();
                if let Ok(p) = heap.alloc(l) {
                    if let Err(code) = owned.claim(p.offset(), l.size() as u64, "raw alloc") {
                        return code;
                    }
                    held.push((p, l));
                }
            }
        }
        for (p, l) in held {
            owned.release(p.offset());
            // SAFETY: as above.
            let _ = unsafe { heap.free(p, l) };
        }
    }

    // Everything the child still owns is its own: free it all.
    for (off, l, _) in mine {
        let _ = free(&heap, forge(off), l);
    }
    let _ = heap.stats();
    let _ = heap.check();
    if let Ok(other) = reopened {
        let _ = other.heap().check();
    }
    0
}

fn round(index: u64) -> Result<(), String> {
    let seed = 0x5eed_0000_0000 + index;
    let mut rng = Rng(seed);
    let name = ShmName::new("adv");
    let size = match rng.below(3) {
        0 => Segment::min_size(),
        1 => 1 << 20,
        _ => 2 << 20,
    };
    let seg = Segment::create(&name, size).unwrap();
    let made = populate(&seg, &mut rng);
    let map = Map::of(&seg);
    // The child attaches now (it inherits `seg`, validated before any
    // scribble) and waits until the scribbling is done.
    let (mut go, mut wait_for_go) = UnixStream::pair().unwrap();
    let child = {
        let (seg, name, made) = (&seg, name.as_str().to_owned(), made.clone());
        fork(move || {
            let mut byte = [0u8];
            if wait_for_go.read_exact(&mut byte).is_err() {
                return 5; // the parent gave up before scribbling
            }
            exercise(seg, &name, map, &made, seed)
        })
    };
    // From here the parent is a peer of the child, not a user of the
    // segment: no `Segment` of the object is alive in it while it maps the
    // object raw.
    drop(seg);
    let mut log = Vec::new();
    {
        let fd = ShmFd::open(&name, Mode::ReadWrite).unwrap();
        let mut raw = MappedMemory::new(
            None,
            size,
            MapProtections::READ_WRITE,
            MapFlags::SHARED,
            Some(&fd),
        )
        .unwrap();
        for _ in 0..rng.in_range(1, 9) {
            scribble(&mut rng, &map, &made, &mut raw, &mut log);
        }
    }
    go.write_all(&[1]).unwrap();
    let outcome = child.wait_timeout(CHILD_LIMIT);
    let fail = |why: String| {
        Err(format!(
            "round {index} (seed {seed:#x}, segment of {size} bytes): {why}\n  scribbles:\n    {}",
            log.join("\n    ")
        ))
    };
    match outcome {
        Ok(0) => Ok(()),
        Ok(2) => fail("an allocation outside the arena (exit 2)".to_owned()),
        Ok(3) => fail("a block handed out twice (exit 3)".to_owned()),
        Ok(4) => fail("a block resolved as a type it was not made as (exit 4)".to_owned()),
        Ok(101) => fail("the library panicked (exit 101)".to_owned()),
        Ok(code) if code > 128 => fail(format!("killed by signal {}", code - 128)),
        Ok(code) => fail(format!("exit code {code}")),
        Err(why) => fail(why),
    }
}

#[test]
fn scribbled_segments_give_errors_never_crashes_hangs_shared_blocks_or_wrong_types() {
    let started = Instant::now();
    let only: Option<u64> = std::env::var("ADVERSARIAL_ROUND")
        .ok()
        .and_then(|v| v.parse().ok());
    let rounds: u64 = std::env::var("ADVERSARIAL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS);
    let failures: Vec<String> = (0..rounds)
        .filter(|&i| only.is_none_or(|o| o == i))
        .filter_map(|i| round(i).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {rounds} rounds failed (in {:?}):\n{}",
        failures.len(),
        started.elapsed(),
        failures.join("\n")
    );
}
