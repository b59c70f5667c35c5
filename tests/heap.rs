//! The shared heap across real processes: forked children hammering one
//! heap, spawned children that attach by name, racing initializers, and
//! children killed in the middle of allocating.

use std::alloc::Layout;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shmutils::{Error, RelSlice, Segment, SharedHeap};
use shmutils_workspace::{fork, Child, ShmName};

/// A pointer made from a number (as a peer could write one).
fn forge<T>(off: u64) -> shmutils::RelPtr<T> {
    // SAFETY: the tests resolve and free forged pointers only where the
    // heap must refuse them, or where they name the test's own blocks.
    unsafe { shmutils::RelPtr::from_offset(off) }
}

/// `heap.free` of the test's own untyped blocks (never read), or of
/// pointers the heap must refuse.
fn free(heap: SharedHeap<'_>, p: shmutils::RelPtr<u8>, l: Layout) -> shmutils::Result<()> {
    // SAFETY: as documented above: nothing refers into these blocks.
    unsafe { heap.free(p, l) }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Fills `buf[..n]` with a pattern unique to (`owner`, `seq`).
fn pattern(buf: &mut [u8], n: usize, owner: u64, seq: u64) {
    let tag = (owner << 40 | seq).to_le_bytes();
    let head = n.min(8);
    buf[..head].copy_from_slice(&tag[..head]);
    buf[head..n].fill((seq as u8) ^ (owner as u8) ^ 0x5a);
}

/// Allocates and frees typed slices, or untyped blocks written and read
/// through raw pointers (both through the thread's cache in the segment).
enum Allocator<'s> {
    Typed(SharedHeap<'s>),
    Raw(SharedHeap<'s>),
}

/// A block a process holds: where, how many bytes, and its tag.
type Held = (u64, usize, u64);

impl Allocator<'_> {
    fn put(&mut self, bytes: &[u8]) -> shmutils::Result<u64> {
        match self {
            Allocator::Typed(h) => h.new_slice(bytes).map(|s| s.offset()),
            Allocator::Raw(c) => {
                let p = c.alloc(Layout::array::<u8>(bytes.len()).unwrap())?;
                let dst = c.as_ptr(p)?;
                // SAFETY: a block just allocated to this process, at least
                // bytes.len() long; nothing else can reach it.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
                Ok(p.offset())
            }
        }
    }

    /// Whether the block still holds `want`; then frees it.
    fn take(&mut self, off: u64, want: &[u8]) -> Result<bool, Error> {
        let n = want.len() as u64;
        match self {
            Allocator::Typed(h) => {
                // SAFETY: a slice this process made; it only reads it here.
                let s = unsafe { RelSlice::<u8>::from_raw_parts(off, n) };
                let same = h.get_slice(s)? == want;
                // SAFETY: the reference above is dead; the block is ours.
                unsafe { h.delete_slice(s) }?;
                Ok(same)
            }
            Allocator::Raw(c) => {
                // SAFETY: a block this process allocated and still owns.
                let p = unsafe { shmutils::RelPtr::<u8>::from_offset(off) };
                let src = c.as_ptr(p)?;
                // SAFETY: the block is ours, n bytes long, written by put().
                let same = unsafe { std::slice::from_raw_parts(src, want.len()) } == want;
                // SAFETY: no reference into the block outlives this line.
                unsafe { c.free(p, Layout::array::<u8>(want.len()).unwrap()) }?;
                Ok(same)
            }
        }
    }
}

/// `ops` random allocations and frees of 1..=4096 bytes, each block filled
/// with a unique pattern that is checked before it is freed, as typed
/// slices or (`raw`) untyped blocks. Returns 0 on success, 1 if a block's
/// contents changed (two owners), 2 on an error.
fn random_ops(heap: SharedHeap<'_>, owner: u64, ops: u64, max_live: usize, raw: bool) -> i32 {
    let mut alloc = if raw {
        Allocator::Raw(heap)
    } else {
        Allocator::Typed(heap)
    };
    let mut rng = 0x2545_f491_4f6c_dd1d ^ (owner + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; 4096];
    let mut live: Vec<Held> = Vec::with_capacity(max_live);
    let check = |alloc: &mut Allocator<'_>, buf: &mut Vec<u8>, (off, n, seq): Held| {
        pattern(buf, n, owner, seq);
        match alloc.take(off, &buf[..n]) {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(_) => 2,
        }
    };
    for seq in 0..ops {
        let r = xorshift(&mut rng);
        if live.len() < max_live && (live.is_empty() || r % 2 == 0) {
            let n = 1 + (r >> 8) as usize % 4096;
            pattern(&mut buf, n, owner, seq);
            match alloc.put(&buf[..n]) {
                Ok(off) => live.push((off, n, seq)),
                Err(_) => return 2,
            }
        } else {
            let held = live.swap_remove((r >> 16) as usize % live.len());
            let code = check(&mut alloc, &mut buf, held);
            if code != 0 {
                return code;
            }
        }
    }
    for held in live {
        let code = check(&mut alloc, &mut buf, held);
        if code != 0 {
            return code;
        }
    }
    0
}

fn hammer(procs: u64) {
    let name = ShmName::new("hammer");
    let seg = Segment::create(&name, 64 << 20).unwrap();
    let heap = seg.heap();
    let children: Vec<Child> = (0..procs)
        // Half the children allocate untyped blocks.
        .map(|owner| fork(move || random_ops(heap, owner, 200_000, 64, owner % 2 == 1)))
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        assert_eq!(
            c.wait(),
            0,
            "child {i}: 1 = a block had two owners, 2 = error"
        );
    }
    let report = heap.check();
    assert!(report.is_clean(), "{report}");
    assert!(report.free_blocks > 0);
    let stats = heap.stats();
    assert_eq!((stats.in_use_bytes, stats.in_use_blocks), (0, 0));
    assert_eq!(stats.free_bytes, stats.arena_bytes);
}

#[test]
fn two_forked_processes_share_the_heap() {
    hammer(2);
}

#[test]
fn four_forked_processes_share_the_heap() {
    hammer(4);
}

#[test]
fn spawned_children_attach_by_name_and_publish_pointers() {
    let name = ShmName::new("publish");
    let seg = Segment::create(&name, 4 << 20).unwrap();
    let heap = seg.heap();
    let spawn = |index: usize| {
        Command::new(env!("CARGO_BIN_EXE_child-heap"))
            .args(["publish", &name, &index.to_string(), "25"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let kids: Vec<_> = (0..2).map(spawn).collect();
    let mut tables = Vec::new();
    for kid in kids {
        let out = kid.wait_with_output().unwrap();
        assert!(out.status.success(), "child failed");
        tables.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    let board = heap
        .get(heap.find::<[AtomicU64; 16]>("board").unwrap())
        .unwrap();
    for (index, printed) in tables.iter().enumerate() {
        // Acquire: pairs with the child's Release stores.
        let off = board[index].load(Ordering::Acquire);
        let len = board[8 + index].load(Ordering::Acquire);
        assert_eq!(printed, &off.to_string());
        // SAFETY: the child printed where it put its table; it is only read.
        let table = heap
            .get_slice(unsafe { RelSlice::<RelSlice<u8>>::from_raw_parts(off, len) })
            .unwrap();
        assert_eq!(table.len(), 25);
        for (i, &item) in table.iter().enumerate() {
            assert_eq!(
                heap.get_slice(item).unwrap(),
                format!("child {index} item {i}").as_bytes()
            );
            assert!(heap.is_allocated(item.offset(), Layout::array::<u8>(item.len()).unwrap()));
        }
    }
    // A child asking for the wrong type gets a typed error naming both.
    let out = Command::new(env!("CARGO_BIN_EXE_child-heap"))
        .args(["find", &name, "board"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("expected u32") && said.contains("found array"),
        "{said}"
    );
    assert!(heap.check().is_consistent());
}

#[test]
fn racing_processes_run_exactly_one_initializer() {
    let name = ShmName::new("once");
    let seg = Segment::create(&name, 1 << 20).unwrap();
    let heap = seg.heap();
    let inits = heap.find_or_init("inits", || AtomicU64::new(0)).unwrap();
    let go = heap.find_or_init("go", || AtomicU64::new(0)).unwrap();
    let children: Vec<Child> = (0..4)
        .map(|_| {
            fork(move || {
                let go = heap.get(go).unwrap();
                while go.load(Ordering::Acquire) == 0 {
                    std::hint::spin_loop();
                }
                let counter = heap
                    .find_or_init("counter", || {
                        heap.get(inits).unwrap().fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        AtomicU64::new(0)
                    })
                    .unwrap();
                heap.get(counter).unwrap().fetch_add(1, Ordering::SeqCst);
                0
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    heap.get(go).unwrap().store(1, Ordering::Release);
    for c in children {
        assert_eq!(c.wait(), 0);
    }
    assert_eq!(heap.get(inits).unwrap().load(Ordering::SeqCst), 1);
    let counter = heap.find::<AtomicU64>("counter").unwrap();
    assert_eq!(heap.get(counter).unwrap().load(Ordering::SeqCst), 4);
    assert_eq!(heap.stats().named_objects, 3);
}

/// The crash test: children allocate and free in a loop and are SIGKILLed
/// at random moments, 100 times; survivors keep going; the heap stays
/// consistent and loses at most what the killed children held.
#[test]
fn children_killed_mid_allocation_leak_only_their_blocks() {
    const KILLS: u64 = 100;
    const RUNNING: usize = 3;
    const LIVE: usize = 8;
    let seg = Segment::anonymous(64 << 20).unwrap();
    let heap = seg.heap();
    let stop = heap.find_or_init("stop", || AtomicU64::new(0)).unwrap();
    let progress = heap
        .find_or_init::<[AtomicU64; 256]>("progress", || std::array::from_fn(|_| AtomicU64::new(0)))
        .unwrap();
    let worker = move |owner: u64| {
        fork(move || {
            let stop = heap.get(stop).unwrap();
            let progress = &heap.get(progress).unwrap()[owner as usize % 256];
            let mut round = 0;
            while stop.load(Ordering::Relaxed) == 0 {
                let code = random_ops(heap, owner * 1_000_000 + round, 200, LIVE, false);
                if code != 0 {
                    return code;
                }
                round += 1;
                progress.fetch_add(1, Ordering::Relaxed);
            }
            0
        })
    };
    let mut rng = 0xdead_beef_u64;
    let mut next_owner = 0u64;
    let mut running: Vec<(u64, Child)> = (0..RUNNING)
        .map(|_| {
            next_owner += 1;
            (next_owner, worker(next_owner))
        })
        .collect();
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_micros(500 + xorshift(&mut rng) % 4_000));
        let victim = xorshift(&mut rng) as usize % running.len();
        let (_, child) = running.swap_remove(victim);
        assert_eq!(
            child.kill(),
            128 + libc::SIGKILL,
            "the child died before its kill"
        );
        next_owner += 1;
        running.push((next_owner, worker(next_owner)));
    }
    // The survivors keep allocating.
    let progress_of =
        |owner: u64| heap.get(progress).unwrap()[owner as usize % 256].load(Ordering::Relaxed);
    let before: Vec<u64> = running.iter().map(|(o, _)| progress_of(*o)).collect();
    std::thread::sleep(Duration::from_millis(200));
    for ((owner, _), was) in running.iter().zip(&before) {
        assert!(
            progress_of(*owner) > *was,
            "survivor {owner} made no progress"
        );
    }
    heap.get(stop).unwrap().store(1, Ordering::Relaxed);
    for (owner, child) in running {
        assert_eq!(child.wait(), 0, "survivor {owner} failed");
    }
    let report = heap.check();
    assert!(report.is_consistent(), "{report}");
    // What is not free now is what the killed children held: their live
    // blocks (still marked allocated: the heap cannot know their owner
    // died), the block in flight (leaked), or a slab being carved. Each
    // held at most LIVE blocks of at most 4096 bytes plus one in flight.
    let named = 2; // "stop" and "progress", the parent's
    assert!(
        report.allocated_blocks <= named + KILLS * LIVE as u64,
        "{report}"
    );
    let named_bytes = 8 + 2048;
    let held = heap.stats().in_use_bytes - named_bytes;
    let slab = 64 << 10;
    let bound = KILLS * ((LIVE as u64 + 1) * 4096 + slab);
    let lost = held + report.leaked_bytes + report.unpublished_pages * 4096;
    assert!(lost <= bound, "lost {lost} bytes, bound {bound}: {report}");
    assert!(report.abandoned.is_empty(), "{report}");
    // And the heap still serves everyone.
    let p = heap.new([7u8; 3000]).unwrap();
    assert_eq!(heap.get(p).unwrap()[2999], 7);
    println!("after {KILLS} kills: {report}; {held} bytes still allocated to dead children");
}

#[test]
fn out_of_memory_in_a_segment_is_an_error_not_a_signal() {
    let seg = Segment::anonymous(Segment::min_size() + (256 << 10)).unwrap();
    let heap = seg.heap();
    let l = Layout::from_size_align(1000, 8).unwrap();
    let mut n = 0;
    let err = loop {
        match heap.alloc(l) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
    };
    assert!(n > 0);
    assert!(
        matches!(
            err,
            Error::OutOfMemory {
                size: 1000,
                align: 8
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("out of shared memory"), "{err}");
    assert!(matches!(
        heap.alloc(Layout::from_size_align(100 << 20, 8).unwrap()),
        Err(Error::OutOfMemory { .. })
    ));
    assert!(heap.check().is_consistent());
}

#[test]
fn bad_input_from_any_process_is_a_typed_error() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let heap = seg.heap();
    let l = Layout::from_size_align(64, 8).unwrap();
    let p = heap.alloc(l).unwrap();
    let q = heap.alloc(l).unwrap();
    free(heap, p, l).unwrap();
    // A forked child makes every mistake on the parent's blocks.
    let child = fork(move || {
        let double = matches!(free(heap, p, l), Err(Error::DoubleFree { .. }));
        let wrong = matches!(
            free(heap, q, Layout::from_size_align(200, 8).unwrap()),
            Err(Error::WrongLayout { block_size: 64, .. })
        );
        let foreign = matches!(
            free(heap, forge(q.offset() + 16), l),
            Err(Error::InvalidPointer { .. })
        );
        let oob = matches!(
            heap.get(forge::<u64>(1 << 40)),
            Err(Error::OutOfBounds { .. })
        );
        let misaligned = matches!(
            heap.get(forge::<u64>(q.offset() + 3)),
            Err(Error::Misaligned { align: 8, .. })
        );
        let untyped = matches!(
            heap.get(forge::<u64>(q.offset())),
            Err(Error::TypeMismatch { .. })
        );
        let null = matches!(
            heap.get(shmutils::RelPtr::<u64>::null()),
            Err(Error::InvalidPointer { offset: 0, .. })
        );
        i32::from(!(double && wrong && foreign && oob && misaligned && null && untyped))
    });
    assert_eq!(child.wait(), 0);
    // Nothing was disturbed: q is still allocated, p still free.
    assert!(heap.is_allocated(q.offset(), l));
    assert!(!heap.is_allocated(p.offset(), l));
    free(heap, q, l).unwrap();
    let r = heap.check();
    assert!(r.is_clean(), "{r}");
}

#[test]
fn an_initializer_killed_mid_init_is_taken_over() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let heap = seg.heap();
    let entered = heap.find_or_init("entered", || AtomicU64::new(0)).unwrap();
    let child = fork(move || {
        let _ = heap.find_or_init("slow", || -> u64 {
            heap.get(entered).unwrap().store(1, Ordering::SeqCst);
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        3
    });
    while heap.get(entered).unwrap().load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(matches!(
        heap.find::<u64>("slow"),
        Err(Error::NameNotFound { .. })
    ));
    assert_eq!(child.kill(), 128 + libc::SIGKILL);
    let r = heap.check();
    assert_eq!(r.abandoned.len(), 1, "{r}");
    let p = heap.find_or_init("slow", || 42u64).unwrap();
    assert_eq!(*heap.get(p).unwrap(), 42);
    let r = heap.check();
    assert!(r.is_clean(), "{r}");
}

#[test]
fn a_zombie_initializer_is_taken_over_within_100_ms() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let heap = seg.heap();
    // The child dies inside its initializer and stays unreaped (a zombie:
    // `kill(pid, 0)` still succeeds for it) until the end of the test.
    let child = fork(move || {
        let _ = heap.find_or_init("zombie", || -> u64 {
            // SAFETY: the child kills itself; nothing runs after.
            unsafe { libc::raise(libc::SIGKILL) };
            unreachable!()
        });
        3
    });
    let stat = format!("/proc/{}/stat", child.pid());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = std::fs::read_to_string(&stat).unwrap_or_default();
        if s.rsplit(')')
            .next()
            .is_some_and(|rest| rest.starts_with(" Z"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the child never became a zombie"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = std::time::Instant::now();
    let p = heap.find_or_init("zombie", || 42u64).unwrap();
    let took = t.elapsed();
    assert_eq!(*heap.get(p).unwrap(), 42, "our initializer ran");
    assert!(
        took < Duration::from_millis(100),
        "took over after {took:?}"
    );
    assert_eq!(child.wait(), 128 + libc::SIGKILL);
}

/// A thread claims a name and exits inside its initializer without
/// unwinding (its entry stays "initializing, by tid T"); the kernel then
/// gives T to a live thread. That thread's own `find_or_init` of the name
/// must neither take the claim for its own (reentrant use) nor wait for a
/// live tid: the claimer's recorded identity (process, start time) says
/// the claimer is gone, and it takes over within 100 ms.
#[test]
fn an_initializer_whose_tid_was_recycled_is_taken_over() {
    // Leaked: the exiting thread keeps a borrow of it that never ends.
    let seg: &'static Segment = Box::leak(Box::new(Segment::anonymous(1 << 20).unwrap()));
    let heap = seg.heap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = heap.find_or_init("recycled", || -> u64 {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            // SAFETY: ends this thread at once, without unwinding: its
            // claim stays, as a crashed initializer's would. Nothing after
            // this runs; the thread's stack is never reused.
            unsafe { libc::syscall(libc::SYS_exit, 0) };
            unreachable!()
        });
    });
    let dead = rx.recv().unwrap();
    let gone = std::time::Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/self/task/{dead}")).exists() {
        assert!(std::time::Instant::now() < gone, "the thread never exited");
        std::thread::sleep(Duration::from_millis(1));
    }
    // A later clock tick, so the new thread's start time differs.
    std::thread::sleep(Duration::from_millis(30));
    let took = shmutils_workspace::with_recycled_tid(dead, || {
        let t = std::time::Instant::now();
        let p = heap.find_or_init("recycled", || 42u64).unwrap();
        (t.elapsed(), *heap.get(p).unwrap())
    });
    if let Some((took, value)) = took {
        assert_eq!(value, 42, "our initializer ran");
        assert!(
            took < Duration::from_millis(100),
            "took over after {took:?}"
        );
    }
}
