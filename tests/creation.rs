//! Segment creation that a crash cannot wedge: creators SIGKILLed at random
//! points (500 kills, children racing on the same names), a killed
//! taker-over, a live slow creator, a creator that never publishes,
//! foreign objects, the process's registry of mapped objects during a
//! takeover, and anonymous segments sealed against shrinking.
//!
//! The tests look at objects the way a peer does: `/dev/shm/NAME` read
//! directly (the first eight bytes are the magic: "SHMUTSEG" published,
//! "SHMUTNEW" being created) and `flock` probes of the creation lock.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shmutils::segment::test_hooks::pause_before_publish;
use shmutils::{Error, MapFlags, MapProtections, MappedMemory, Mode, Segment, SharedStruct, ShmFd};
use shmutils_workspace::{fork, Child, ShmName};

/// What the issue asks of a recovery: a working segment within 100 ms.
const RECOVERY_BOUND: Duration = Duration::from_millis(100);
/// Longer than any child of these tests runs, unless it hangs.
const HANG: Duration = Duration::from_secs(10);

fn size() -> usize {
    Segment::min_size().next_multiple_of(1 << 20)
}

/// What the first bytes of a name's object say, read as a peer would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Absent,
    Empty,
    Creating,
    Published,
    Other,
}

fn seen(name: &str) -> Seen {
    let Ok(mut f) = File::open(format!("/dev/shm{name}")) else {
        return Seen::Absent;
    };
    let mut magic = Vec::new();
    f.by_ref().take(8).read_to_end(&mut magic).unwrap();
    match magic.as_slice() {
        [] => Seen::Empty,
        b"SHMUTNEW" => Seen::Creating,
        b"SHMUTSEG" => Seen::Published,
        _ => Seen::Other,
    }
}

/// Size of the name's object.
fn object_size(name: &str) -> u64 {
    ShmFd::open(name, Mode::ReadOnly).unwrap().size().unwrap()
}

/// Whether another open file description holds a `flock` on the object:
/// a live process is creating it.
fn creation_locked(name: &str) -> bool {
    let Ok(fd) = ShmFd::open(name, Mode::ReadOnly) else {
        return false;
    };
    let raw = fd.as_fd().as_raw_fd();
    // SAFETY: flock on a descriptor we own; it touches no memory.
    if unsafe { libc::flock(raw, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        // SAFETY: as above.
        unsafe { libc::flock(raw, libc::LOCK_UN) };
        return false;
    }
    let e = std::io::Error::last_os_error();
    assert_eq!(e.raw_os_error(), Some(libc::EWOULDBLOCK), "flock: {e}");
    true
}

/// Waits (at most 10 s) until `name` is being created by a live process
/// that is paused before publishing with `size` bytes.
fn await_paused_creator(name: &str, size: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(seen(name) == Seen::Creating
        && object_size(name) == size as u64
        && creation_locked(name))
    {
        assert!(
            Instant::now() < deadline,
            "no paused creator of {name}: {:?}",
            seen(name)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Forks a child that creates (or, finding it unfinished, re-creates) the
/// segment `name` with `size` bytes and pauses for `pause` right before
/// publishing it, holding the creation lock; returns once it is paused.
/// The child exits 0 if it published a segment it created.
fn paused_creator(name: &str, size: usize, exclusive: bool, pause: Duration) -> Child {
    let child = fork(|| {
        pause_before_publish(pause);
        let made = if exclusive {
            Segment::create(name, size)
        } else {
            Segment::open_or_create(name, size)
        };
        match made {
            Ok(seg) if seg.created() => 0,
            Ok(_) => 2,
            Err(_) => 1,
        }
    });
    await_paused_creator(name, size);
    child
}

/// Leaves `name` as a creator killed after it sized the object (and, but
/// for a very slow machine, formatted the heap) and before it published
/// the header; returns the dead creator's pid.
fn kill_a_creator_before_publishing(name: &str, size: usize) -> u32 {
    let child = paused_creator(name, size, false, Duration::from_secs(60));
    // Into its pause before publishing.
    std::thread::sleep(Duration::from_millis(20));
    let pid = child.pid() as u32;
    assert_eq!(child.kill(), 128 + libc::SIGKILL);
    assert_eq!(seen(name), Seen::Creating);
    assert!(!creation_locked(name), "the kernel dropped the dead's lock");
    pid
}

/// A segment that works: a fresh value round-trips and the heap is clean.
fn assert_works(seg: &Segment, what: &str) {
    let report = seg.heap().check();
    assert!(report.is_clean(), "{what}: check() = {report:?}");
    let p = seg.heap().new(0xC0FFEE_u64).unwrap();
    assert_eq!(*seg.heap().get(p).unwrap(), 0xC0FFEE, "{what}");
}

/// xorshift64*: the crash test's schedule, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The names in `/dev/shm` that start with `prefix` (without its `/`).
fn listing(prefix: &str) -> Vec<String> {
    let prefix = prefix.trim_start_matches('/');
    let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// A pipe that children block on until the parent writes one byte for
/// each: one start signal for a whole batch. (Not the end of file: other
/// tests of this process fork too, and their children would hold the
/// write end open.)
struct StartLine {
    read: libc::c_int,
    write: libc::c_int,
}

impl StartLine {
    fn new() -> StartLine {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        StartLine {
            read: fds[0],
            write: fds[1],
        }
    }

    /// In a child: blocks until the parent calls [`go`](Self::go).
    fn wait(&self) {
        let mut b = 0u8;
        // SAFETY: reads one byte into a live byte.
        let n = unsafe { libc::read(self.read, (&mut b as *mut u8).cast(), 1) };
        assert_eq!(n, 1);
    }

    /// Starts `children` waiting children at once.
    fn go(&self, children: usize) {
        let bytes = vec![0u8; children];
        // SAFETY: writes from a live buffer of `children` bytes (fewer than
        // a pipe holds, so it is written whole).
        let n = unsafe { libc::write(self.write, bytes.as_ptr().cast(), bytes.len()) };
        assert_eq!(n, children as isize);
    }
}

impl Drop for StartLine {
    fn drop(&mut self) {
        // SAFETY: closing our own descriptors, once.
        unsafe {
            libc::close(self.read);
            libc::close(self.write);
        }
    }
}

/// Nanoseconds of `CLOCK_MONOTONIC`: one clock for the parent and its
/// children.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for writes.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(r, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Arms a timer that SIGKILLs this process `delay_ns` from now. The kernel
/// sends the signal on time whoever is running, so the kill lands where the
/// process is then, not where a busy parent would get to it.
fn arm_kill_timer(delay_ns: u64) {
    // SAFETY: a zeroed sigevent is a valid value (plain integers and a
    // union of an integer and a pointer).
    let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
    sev.sigev_notify = libc::SIGEV_SIGNAL;
    sev.sigev_signo = libc::SIGKILL;
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: `sev` and `timer` are valid for the call.
    let r = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer) };
    assert_eq!(r, 0, "timer_create: {}", std::io::Error::last_os_error());
    let delay_ns = delay_ns.max(1); // 0 would disarm it
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: (delay_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (delay_ns % 1_000_000_000) as libc::c_long,
        },
    };
    // SAFETY: `timer` was just created; `spec` is valid for reads.
    let r = unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) };
    assert_eq!(r, 0, "timer_settime: {}", std::io::Error::last_os_error());
}

/// What a racer of the crash test publishes to the parent, in an
/// anonymous segment: when it entered and left its call (0: not yet).
#[derive(SharedStruct, Default)]
#[repr(C)]
struct Racer {
    entered: AtomicU64,
    left: AtomicU64,
}

#[test]
fn killed_creators_never_wedge_a_name() {
    const NAMES: usize = 50;
    /// Names raced on at once; a batch forks RACERS children for each.
    const BATCH: usize = 5;
    const RACERS: usize = 2;
    /// Every name is raced on this many times.
    const ROUNDS: usize = 5;
    const KILLS: usize = NAMES * ROUNDS * RACERS;
    let seed = std::env::var("SHMUTILS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x005E_ED0F_C4A5_u64);
    let mut rng = Rng(seed | 1);
    let size = size();
    let prefix = format!("/shmutils-test-crash-{}-", std::process::id());
    assert_eq!(
        listing(&prefix),
        Vec::<String>::new(),
        "names before the test"
    );
    let names: Vec<ShmName> = (0..NAMES).map(|_| ShmName::new("crash")).collect();
    assert!(names.iter().all(|n| n.starts_with(&prefix)));

    let board = Segment::anonymous(Segment::min_size()).unwrap();
    let heap = board.heap();
    let racers: &[Racer; BATCH * RACERS] = heap
        .get(heap.new(std::array::from_fn(|_| Racer::default())).unwrap())
        .unwrap();

    let mut kills = 0;
    // Killed before entering the call, inside it, after it returned.
    let mut where_killed = [0usize; 3];
    let mut call_times = Vec::new();
    let mut found = std::collections::BTreeMap::<String, usize>::new();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for round in 0..ROUNDS {
        for batch in names.chunks(BATCH) {
            for r in racers.iter() {
                r.entered.store(0, Ordering::SeqCst);
                r.left.store(0, Ordering::SeqCst);
            }
            let start = StartLine::new();
            let mut children: Vec<(usize, Child)> = Vec::new();
            for (i, name) in batch.iter().enumerate() {
                for r in 0..RACERS {
                    let slot = i * RACERS + r;
                    // The first racer creates exclusively, the others open
                    // or create; each asks for a size of its own.
                    let exclusive = r == 0;
                    let size = size * (1 + rng.below(2) as usize);
                    // 0 to 1.5 ms into the call; two thirds of them within
                    // the first 250 µs, where most creations end.
                    let window = if rng.below(3) < 2 { 250_000 } else { 1_500_000 };
                    let delay_ns = rng.below(window);
                    let start = &start;
                    let child = fork(move || {
                        start.wait();
                        arm_kill_timer(delay_ns);
                        racers[slot].entered.store(now_ns(), Ordering::SeqCst);
                        let made = if exclusive {
                            Segment::create(name, size)
                        } else {
                            Segment::open_or_create(name, size)
                        };
                        racers[slot].left.store(now_ns(), Ordering::SeqCst);
                        // Stay (holding whatever it made) until killed.
                        let _made = made;
                        loop {
                            // SAFETY: pause only waits for a signal.
                            unsafe { libc::pause() };
                        }
                    });
                    children.push((slot, child));
                }
            }
            start.go(children.len());
            // Each child dies by its own timer, at most 1.5 ms into its
            // call.
            for (slot, child) in children {
                assert_eq!(
                    child.wait_timeout(HANG),
                    Ok(128 + libc::SIGKILL),
                    "slot {slot}"
                );
                let entered = racers[slot].entered.load(Ordering::SeqCst);
                let left = racers[slot].left.load(Ordering::SeqCst);
                where_killed[match (entered, left) {
                    (0, _) => 0,
                    (_, 0) => 1,
                    _ => 2,
                }] += 1;
                if entered != 0 && left != 0 {
                    call_times.push(Duration::from_nanos(left - entered));
                }
                kills += 1;
            }
            for name in batch {
                let before = seen(name);
                *found.entry(format!("{before:?}")).or_default() += 1;
                let t = Instant::now();
                let seg = Segment::open_or_create(name, size).unwrap_or_else(|e| {
                    panic!(
                        "round {round}, seed {seed}: {} was left {before:?}: {e}",
                        name.as_str()
                    )
                });
                let took = t.elapsed();
                slowest = slowest.max(took);
                assert!(
                    took < RECOVERY_BOUND,
                    "round {round}, seed {seed}: open_or_create of {} ({before:?}) took {took:?}",
                    name.as_str()
                );
                assert_works(&seg, name);
                seg.unlink().unwrap();
            }
            assert_eq!(listing(&prefix), Vec::<String>::new(), "round {round}");
        }
    }
    call_times.sort();
    eprintln!(
        "{kills} kills (seed {seed}) in {:?}: before the call {}, inside it {}, after it {} \
         (median call {:?}); names found {found:?}; slowest recovery {slowest:?}",
        started.elapsed(),
        where_killed[0],
        where_killed[1],
        where_killed[2],
        call_times.get(call_times.len() / 2),
    );
    assert_eq!(kills, KILLS);
    // The schedule must have hit creations half-way, or it tested nothing.
    assert!(
        where_killed[1] >= kills / 5,
        "only {} of {kills} kills landed inside create/open_or_create",
        where_killed[1]
    );
    let unfinished = found.get("Empty").unwrap_or(&0) + found.get("Creating").unwrap_or(&0);
    assert!(unfinished > 0, "no kill left a name unfinished: {found:?}");
    drop(names);
    assert_eq!(
        listing(&prefix),
        Vec::<String>::new(),
        "names after the test"
    );
}

#[test]
fn a_live_slow_creator_is_waited_for() {
    let name = ShmName::new("slow");
    let size = size();
    let creator = paused_creator(&name, size, true, Duration::from_millis(400));
    let t = Instant::now();
    let opener = std::thread::spawn({
        let name = name.as_str().to_owned();
        move || Segment::open(&name).map(|s| s.id())
    });
    // Asks for another size: an existing segment keeps its own.
    let seg = Segment::open_or_create(&name, 2 * size).unwrap();
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_secs(2),
        "waited {waited:?} for a creator paused 400 ms"
    );
    assert!(!seg.created());
    assert_eq!(seg.creator_pid(), creator.pid() as u32);
    assert_eq!(seg.size(), size);
    assert_eq!(opener.join().unwrap().unwrap(), seg.id());
    assert_eq!(
        creator.wait_timeout(HANG),
        Ok(0),
        "the creator published its own segment"
    );
    assert_works(&seg, "after a slow creator");
}

#[test]
fn a_creator_that_never_publishes_is_a_timeout_then_recovered_when_it_dies() {
    let name = ShmName::new("hung");
    let size = size();
    let creator = paused_creator(&name, size, false, Duration::from_secs(60));
    let t = Instant::now();
    match Segment::open_or_create(&name, size) {
        Err(Error::Timeout { what }) => {
            assert!(what.contains(name.as_str()), "{what}");
            assert!(what.contains("creation lock"), "{what}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let waited = t.elapsed();
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    let pid = creator.pid() as u32;
    assert_eq!(creator.kill(), 128 + libc::SIGKILL);
    let t = Instant::now();
    let seg = Segment::open_or_create(&name, size).unwrap();
    assert!(t.elapsed() < RECOVERY_BOUND, "{:?}", t.elapsed());
    assert!(seg.created());
    assert_ne!(seg.creator_pid(), pid);
    assert_eq!(seg.creator_pid(), std::process::id());
    assert_works(&seg, "after a hung creator died");
}

#[test]
fn a_killed_taker_over_is_taken_over_again() {
    let name = ShmName::new("takeover");
    let size = size();
    // A creator killed right after its shm_open: an empty object.
    drop(ShmFd::open(&name, Mode::CreateExclusive).unwrap());
    let t = Instant::now();
    match Segment::open(&name) {
        Err(e @ Error::Unfinished { .. }) => {
            assert!(matches!(
                e,
                Error::Unfinished {
                    creator_pid: None,
                    ..
                }
            ));
            assert!(e.to_string().contains("open_or_create"), "{e}");
        }
        other => panic!("expected Unfinished, got {other:?}"),
    }
    assert!(t.elapsed() < RECOVERY_BOUND, "{:?}", t.elapsed());
    assert_eq!(seen(&name), Seen::Empty, "open writes nothing");

    // A taker-over (open_or_create on the empty object) killed after
    // sizing and formatting, before publishing.
    let first = kill_a_creator_before_publishing(&name, 2 * size);
    let t = Instant::now();
    match Segment::open(&name) {
        Err(Error::Unfinished { creator_pid, .. }) => assert_eq!(creator_pid, Some(first)),
        other => panic!("expected Unfinished, got {other:?}"),
    }
    assert!(t.elapsed() < RECOVERY_BOUND, "{:?}", t.elapsed());

    // Another taker-over, alive and paused: an opener waits for it, and
    // takes over itself the moment it is killed.
    let second = paused_creator(&name, 3 * size, false, Duration::from_secs(60));
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn({
        let name = name.as_str().to_owned();
        move || {
            let seg = Segment::open_or_create(&name, size);
            tx.send(Instant::now()).unwrap();
            seg
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        rx.try_recv().is_err(),
        "open_or_create returned while a live process was creating"
    );
    let second_pid = second.pid() as u32;
    assert_eq!(second.kill(), 128 + libc::SIGKILL);
    let killed = Instant::now();
    let done = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let seg = waiter.join().unwrap().unwrap();
    let after = done.saturating_duration_since(killed);
    assert!(after < RECOVERY_BOUND, "took over {after:?} after the kill");
    assert!(seg.created());
    assert_eq!(seg.creator_pid(), std::process::id());
    assert_ne!(seg.creator_pid(), second_pid);
    assert_eq!(seg.size(), size, "the taker-over's own size");
    assert_works(&seg, "after two killed taker-overs");
    assert_eq!(Segment::open(&name).unwrap().id(), seg.id());
}

#[test]
fn racing_threads_of_one_process_create_once() {
    let name = ShmName::new("threads");
    let size = size();
    let barrier = std::sync::Barrier::new(6);
    let made: Vec<(bool, u64)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let seg = Segment::open_or_create(&name, size).unwrap();
                    (seg.created(), seg.id())
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(made.iter().filter(|(c, _)| *c).count(), 1, "{made:?}");
    assert!(made.iter().all(|(_, id)| *id == made[0].1), "{made:?}");
}

/// Writes `bytes` at the start of a new object of `len` bytes named
/// `name`, as another program would.
fn foreign(name: &str, len: u64, bytes: &[u8]) {
    let fd = ShmFd::open(name, Mode::CreateExclusive).unwrap();
    fd.truncate(len).unwrap();
    let mut m = MappedMemory::new(
        None,
        len as usize,
        MapProtections::READ_WRITE,
        MapFlags::SHARED,
        Some(&fd),
    )
    .unwrap();
    m.write(0, bytes).unwrap();
}

fn contents(name: &str) -> Vec<u8> {
    std::fs::read(format!("/dev/shm{name}")).unwrap()
}

#[test]
fn a_foreign_object_is_never_overwritten() {
    let size = size() as u64;
    let cases: [(&str, u64, &[u8]); 4] = [
        ("elf", size, b"\x7fELF\x02\x01\x01\x00"),
        // Sized, nothing written: not what a creator of ours leaves (it
        // writes "SHMUTNEW" before it sizes the object).
        ("zeros", size, b""),
        // Looks like a magic caught half-written, but is settled.
        ("torn", size, b"SHMUT\0\0\0"),
        ("short", 100, b"hello, world"),
    ];
    for (tag, len, bytes) in cases {
        let name = ShmName::new(tag);
        foreign(&name, len, bytes);
        let before = contents(&name);
        for attempt in 0..3 {
            let t = Instant::now();
            let got = match attempt {
                0 => Segment::open_or_create(&name, size as usize),
                1 => Segment::open(&name),
                _ => Segment::create(&name, size as usize),
            };
            let took = t.elapsed();
            match (attempt, got) {
                (2, Err(Error::Exists { .. })) => {}
                (_, Err(Error::NotASegment { found, .. })) if len >= size => {
                    let mut magic = [0u8; 8];
                    magic[..bytes.len()].copy_from_slice(bytes);
                    assert_eq!(found.to_le_bytes(), magic, "{tag}");
                }
                (_, Err(Error::Truncated { size: s, .. })) if len < size => assert_eq!(s, len),
                (_, other) => panic!("{tag}, attempt {attempt}: {other:?}"),
            }
            assert!(took < RECOVERY_BOUND, "{tag}: {took:?}");
            assert_eq!(contents(&name), before, "{tag}: the object was written");
        }
    }
}

#[test]
fn a_takeover_respects_this_processs_mappings() {
    let name = ShmName::new("claimed");
    let size = size();
    kill_a_creator_before_publishing(&name, 2 * size);
    // A raw mapping of the unfinished object in this process: re-creating
    // it would truncate the object under that mapping.
    let fd = ShmFd::open(&name, Mode::ReadWrite).unwrap();
    let raw = MappedMemory::new(
        None,
        2 * size,
        MapProtections::READ,
        MapFlags::SHARED,
        Some(&fd),
    )
    .unwrap();
    match Segment::open_or_create(&name, size) {
        Err(Error::InUseByRawMapping { mappings: 1, .. }) => {}
        other => panic!("expected InUseByRawMapping, got {other:?}"),
    }
    assert_eq!(
        (seen(&name), object_size(&name)),
        (Seen::Creating, 2 * size as u64)
    );
    assert_eq!(raw.len(), 2 * size);
    drop(raw);
    let seg = Segment::open_or_create(&name, size).unwrap();
    assert!(seg.created());
    let p = seg.heap().new(7u64).unwrap();

    // A peer makes the published segment look unfinished while this
    // process has it open: it is not created again under our mapping.
    let peer = fork(|| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/dev/shm{}", name.as_str()))
            .unwrap();
        f.write_all_at(b"SHMUTNEW", 0).unwrap();
        0
    });
    assert_eq!(peer.wait_timeout(HANG), Ok(0));
    match Segment::open_or_create(&name, size) {
        Err(Error::CorruptHeader { what, .. }) => assert!(what.contains("SHMUTNEW"), "{what}"),
        other => panic!("expected CorruptHeader, got {other:?}"),
    }
    assert_eq!(object_size(&name), size as u64, "not truncated");
    assert_eq!(*seg.heap().get(p).unwrap(), 7);
}

#[test]
fn an_anonymous_segment_cannot_be_shrunk_by_a_forked_child() {
    let size = size();
    let seg = Segment::anonymous(size).unwrap();
    let fd = seg.memfd().expect("an anonymous segment has a memfd");
    let raw = fd.as_raw_fd();
    // SAFETY: F_GET_SEALS on a descriptor the segment keeps open.
    let seals = unsafe { libc::fcntl(raw, libc::F_GET_SEALS) };
    assert_eq!(seals, libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL);
    let heap = seg.heap();
    let child = fork(|| {
        for len in [size as libc::off_t / 2, 0] {
            // SAFETY: ftruncate on the inherited memfd; it must fail.
            if unsafe { libc::ftruncate(raw, len) } == 0 {
                return 1;
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
                return 2;
            }
        }
        // SAFETY: as above; adding a seal must fail too (F_SEAL_SEAL).
        if unsafe { libc::fcntl(raw, libc::F_ADD_SEALS, libc::F_SEAL_GROW) } == 0 {
            return 3;
        }
        // Still shared: the child's block is the parent's.
        let p = heap.new(0xDEC0DE_u64).unwrap();
        match heap.find_or_init::<shmutils::RelPtr<u64>>("from child", || p) {
            Ok(_) => 0,
            Err(_) => 4,
        }
    });
    assert_eq!(child.wait_timeout(HANG), Ok(0));
    // SAFETY: as above, in the parent.
    assert_eq!(unsafe { libc::ftruncate(raw, 4096) }, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM)
    );
    let p = heap
        .get(heap.find::<shmutils::RelPtr<u64>>("from child").unwrap())
        .unwrap();
    assert_eq!(*heap.get::<u64>(*p).unwrap(), 0xDEC0DE);
    let file = File::from(seg.memfd().unwrap().try_clone_to_owned().unwrap());
    assert_eq!(
        file.metadata().unwrap().len(),
        size as u64,
        "nobody shrank it"
    );
    assert_works(&seg, "anonymous");
    let named = ShmName::new("named-fd");
    assert!(Segment::create(&named, size).unwrap().memfd().is_none());
}
