//! Lock benchmarks: shmutils against glibc's process-shared pthread mutex
//! (plain and robust) and condition variable, and against Boost.Interprocess
//! `interprocess_mutex` + `interprocess_condition` (the C++ program
//! `peers/boost_peer.cpp`, same workloads), all in a real `MAP_SHARED`
//! mapping of a named segment, in the same run.
//!
//! - `lock_uncontended`: lock + unlock pairs in one process (ns/pair).
//! - `lock_write_unlock`: lock, one write through the guard, unlock (ns);
//!   the write goes through `DerefMut`, which checks that the guard was
//!   taken in this process (not inherited across `fork`).
//! - after the table, the cost of that check alone: a write through the
//!   guard against a write through a plain `&mut` (ns per write).
//! - `lock_contended`: 2 forked processes increment a counter under the
//!   lock until it reaches 2,000,000 (Mops/s).
//! - `pingpong`: 2 processes pass a token through lock + condvar 100,000
//!   times (ns per round trip).
//!
//!   Both two-process rows run twice: `2cpu`, the processes pinned to
//!   different CPUs, and `1cpu`, both pinned to the same one (spinning
//!   that wins on two CPUs loses on one).
//! - `contended_many/N`: N unpinned processes (2, 8, 64) each add
//!   9,600,000 / N to one counter under one lock (Mops/s): more processes
//!   than CPUs, so waiters that spin while the holder is preempted collapse.
//!   Where the scheduler puts unpinned processes varies from run to run
//!   (two on one CPU barely contend), so these rows are noisy.
//! - `blocked_wakeups`: a process blocked in `lock()` for 2 s on a lock a
//!   live process holds: its context switches (voluntary + involuntary,
//!   `/proc/PID/status`) per second. One run.
//! - `owner_died_latency`: the holder is killed (SIGKILL) while a process
//!   waits in `lock()`: µs until the waiter holds the lock with
//!   `OwnerDied` (`EOWNERDEAD`), median of 20 trials. Only robust locks
//!   take part (a plain pthread or Boost mutex waits forever).
//!
//! Each figure is the best of several runs (the machine is shared and
//! noisy). Run with `cargo bench --bench locks`. The Boost column needs a
//! C++ compiler and `libboost-dev`; without them it reads `n/a`.

#[path = "peers/boost.rs"]
mod boost;

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shmutils::{Condvar, Lock, MapFlags, MapProtections, MappedMemory, Mode, Segment, ShmFd};
use shmutils_workspace::{fork, ShmName};

const UNCONTENDED_PAIRS: u64 = 10_000_000;
const CONTENDED_TOTAL: u64 = 2_000_000;
/// `contended_many`'s total, divisible by every process count.
const MANY_TOTAL: u64 = 9_600_000;
const MANY_PROCS: [u64; 3] = [2, 8, 64];
/// How long `blocked_wakeups` watches the blocked process.
const BLOCKED_FOR: Duration = Duration::from_secs(2);
const DEATH_TRIALS: usize = 20;
const ROUND_TRIPS: u32 = 100_000;
const RUNS: usize = 5;

/// Offsets in the segment; each object on its own cache lines.
const START: usize = 0; // AtomicU32 start flag
const OBJ: usize = 256; // the lock (and counter / condvar)
const CV: usize = 512; // shmutils Condvar or pthread_cond_t

fn segment() -> (ShmName, MappedMemory) {
    let name = ShmName::new("bench-locks");
    let fd = ShmFd::open(&name, Mode::CreateExclusive).expect("shm_open");
    fd.truncate(4096).expect("truncate");
    let m = MappedMemory::new(
        None,
        4096,
        MapProtections::READ_WRITE,
        MapFlags::SHARED,
        Some(&fd),
    )
    .expect("mmap");
    (name, m)
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes it only.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        set
    };
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, inside the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    if cpus.is_empty() {
        vec![0]
    } else {
        cpus
    }
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The three lock implementations measured.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Shmutils,
    Pthread,
    PthreadRobust,
}

/// A pthread mutex (+ counter right after it) and cond placed in the mapping.
struct Pthread {
    mutex: *mut libc::pthread_mutex_t,
    counter: *mut u64,
    cond: *mut libc::pthread_cond_t,
}

impl Pthread {
    fn init(m: &MappedMemory, robust: bool) -> Pthread {
        let base = m.as_ptr();
        // SAFETY: OBJ and CV are inside the 4096-byte mapping, aligned to
        // 256, and large enough for a mutex (40 bytes) + u64 and a cond (48).
        unsafe {
            let mutex = base.add(OBJ).cast::<libc::pthread_mutex_t>();
            let counter = base
                .add(OBJ + std::mem::size_of::<libc::pthread_mutex_t>())
                .cast::<u64>();
            let cond = base.add(CV).cast::<libc::pthread_cond_t>();
            let mut ma: libc::pthread_mutexattr_t = std::mem::zeroed();
            assert_eq!(libc::pthread_mutexattr_init(&mut ma), 0);
            assert_eq!(
                libc::pthread_mutexattr_setpshared(&mut ma, libc::PTHREAD_PROCESS_SHARED),
                0
            );
            if robust {
                assert_eq!(
                    libc::pthread_mutexattr_setrobust(&mut ma, libc::PTHREAD_MUTEX_ROBUST),
                    0
                );
            }
            assert_eq!(libc::pthread_mutex_init(mutex, &ma), 0);
            let mut ca: libc::pthread_condattr_t = std::mem::zeroed();
            assert_eq!(libc::pthread_condattr_init(&mut ca), 0);
            assert_eq!(
                libc::pthread_condattr_setpshared(&mut ca, libc::PTHREAD_PROCESS_SHARED),
                0
            );
            assert_eq!(libc::pthread_cond_init(cond, &ca), 0);
            counter.write(0);
            Pthread {
                mutex,
                counter,
                cond,
            }
        }
    }

    #[inline]
    fn lock(&self) {
        // SAFETY: an initialised process-shared mutex in a live mapping.
        let r = unsafe { libc::pthread_mutex_lock(self.mutex) };
        debug_assert_eq!(r, 0);
    }

    #[inline]
    fn unlock(&self) {
        // SAFETY: held by this thread.
        unsafe { libc::pthread_mutex_unlock(self.mutex) };
    }
}

fn uncontended(kind: Kind) -> f64 {
    let (_name, mut m) = segment();
    let t = match kind {
        Kind::Shmutils => {
            let l = m.init(OBJ, Lock::new(0u64)).unwrap();
            let t0 = Instant::now();
            for _ in 0..UNCONTENDED_PAIRS {
                match l.lock() {
                    Ok(g) => drop(black_box(g)),
                    Err(e) => panic!("{e}"),
                }
            }
            t0.elapsed()
        }
        _ => {
            let p = Pthread::init(&m, kind == Kind::PthreadRobust);
            let t0 = Instant::now();
            for _ in 0..UNCONTENDED_PAIRS {
                p.lock();
                black_box(&p);
                p.unlock();
            }
            t0.elapsed()
        }
    };
    t.as_nanos() as f64 / UNCONTENDED_PAIRS as f64
}

fn write_unlock(kind: Kind) -> f64 {
    let (_name, mut m) = segment();
    let t = match kind {
        Kind::Shmutils => {
            let l = m.init(OBJ, Lock::new(0u64)).unwrap();
            let t0 = Instant::now();
            for i in 0..UNCONTENDED_PAIRS {
                match l.lock() {
                    Ok(mut g) => **black_box(&mut g) = i,
                    Err(e) => panic!("{e}"),
                }
            }
            t0.elapsed()
        }
        _ => {
            let p = Pthread::init(&m, kind == Kind::PthreadRobust);
            let t0 = Instant::now();
            for i in 0..UNCONTENDED_PAIRS {
                p.lock();
                // SAFETY: the counter is protected by the held mutex.
                unsafe { *black_box(p.counter) = i };
                p.unlock();
            }
            t0.elapsed()
        }
    };
    t.as_nanos() as f64 / UNCONTENDED_PAIRS as f64
}

/// ns per write through one held guard (`with_check`) or through a plain
/// `&mut` taken from it once: the fork check's cost per access.
fn deref_cost(with_check: bool) -> f64 {
    let l = Lock::new(0u64);
    let mut g = l.lock().unwrap();
    let t0 = Instant::now();
    if with_check {
        for i in 0..UNCONTENDED_PAIRS {
            **black_box(&mut g) = i;
        }
    } else {
        let r: &mut u64 = &mut g;
        for i in 0..UNCONTENDED_PAIRS {
            *black_box(&mut *r) = i;
        }
    }
    let t = t0.elapsed();
    drop(g);
    t.as_nanos() as f64 / UNCONTENDED_PAIRS as f64
}

/// Where [`processes`] puts its children.
#[derive(Clone, Copy, PartialEq)]
enum Placement {
    /// Each on another CPU (wrapping around the CPUs this process may use).
    Spread,
    /// All on the first CPU this process may use.
    OneCpu,
    /// Not pinned.
    Free,
}

impl Placement {
    /// The two-process rows' settings: `2cpu` and `1cpu`.
    fn label(self) -> &'static str {
        match self {
            Placement::Spread => "2cpu",
            Placement::OneCpu => "1cpu",
            Placement::Free => "free",
        }
    }

    /// The Boost peer's CPUS argument.
    fn boost_arg(self) -> u64 {
        if self == Placement::OneCpu {
            1
        } else {
            2
        }
    }
}

/// The value the children of [`processes`] wait for.
const GO: u32 = 1 << 30;

/// Runs `work` in `n` forked processes placed as `placement` says,
/// released together; returns the time until all finished.
fn processes(
    m: &MappedMemory,
    n: usize,
    placement: Placement,
    work: impl Fn(usize) -> i32,
) -> Duration {
    let start = m.get::<AtomicU32>(START).unwrap();
    start.store(0, Ordering::SeqCst);
    let cpus = allowed_cpus();
    let children: Vec<_> = (0..n)
        .map(|i| {
            let (cpus, work) = (&cpus, &work);
            fork(move || {
                match placement {
                    Placement::Spread => pin_to_cpu(cpus[i % cpus.len()]),
                    Placement::OneCpu => pin_to_cpu(cpus[0]),
                    Placement::Free => {}
                }
                start.fetch_add(1, Ordering::SeqCst);
                while start.load(Ordering::SeqCst) < GO {
                    std::thread::yield_now();
                }
                work(i)
            })
        })
        .collect();
    while start.load(Ordering::SeqCst) < n as u32 {
        std::thread::yield_now();
    }
    let t0 = Instant::now();
    start.store(GO, Ordering::SeqCst);
    for c in children {
        assert_eq!(c.wait(), 0, "a benchmark child failed");
    }
    t0.elapsed()
}

fn contended(kind: Kind, placement: Placement) -> f64 {
    let (_name, mut m) = segment();
    let t = match kind {
        Kind::Shmutils => {
            m.init(OBJ, Lock::new(0u64)).unwrap();
            let t = processes(&m, 2, placement, |_| {
                let l = m.get::<Lock<u64>>(OBJ).unwrap();
                loop {
                    let Ok(mut g) = l.lock() else { return 1 };
                    if *g >= CONTENDED_TOTAL {
                        return 0;
                    }
                    *g += 1;
                }
            });
            assert_eq!(
                *m.get::<Lock<u64>>(OBJ).unwrap().lock().unwrap(),
                CONTENDED_TOTAL
            );
            t
        }
        _ => {
            let p = Pthread::init(&m, kind == Kind::PthreadRobust);
            let t = processes(&m, 2, placement, |_| loop {
                p.lock();
                // SAFETY: the counter is protected by the held mutex.
                unsafe {
                    if *p.counter >= CONTENDED_TOTAL {
                        p.unlock();
                        return 0;
                    }
                    *p.counter += 1;
                }
                p.unlock();
            });
            // SAFETY: both children are gone.
            assert_eq!(unsafe { *p.counter }, CONTENDED_TOTAL);
            t
        }
    };
    CONTENDED_TOTAL as f64 / t.as_secs_f64() / 1e6
}

fn pingpong(kind: Kind, placement: Placement) -> f64 {
    let (_name, mut m) = segment();
    let t = match kind {
        Kind::Shmutils => {
            m.init(OBJ, Lock::new(0u32)).unwrap();
            m.init(CV, Condvar::new()).unwrap();
            processes(&m, 2, placement, |me| {
                let l = m.get::<Lock<u32>>(OBJ).unwrap();
                let cv = m.get::<Condvar>(CV).unwrap();
                let me = me as u32;
                for _ in 0..ROUND_TRIPS {
                    let Ok(g) = l.lock() else { return 1 };
                    let Ok(mut g) = cv.wait_while(g, |turn| *turn != me) else {
                        return 1;
                    };
                    *g = 1 - me;
                    cv.notify_one();
                }
                0
            })
        }
        _ => {
            let p = Pthread::init(&m, kind == Kind::PthreadRobust);
            processes(&m, 2, placement, |me| {
                let me = me as u64;
                for _ in 0..ROUND_TRIPS {
                    p.lock();
                    // SAFETY: the counter (the turn) is protected by the
                    // mutex; cond_wait is called with it held.
                    unsafe {
                        while p.counter.read_volatile() != me {
                            libc::pthread_cond_wait(p.cond, p.mutex);
                        }
                        *p.counter = 1 - me;
                        libc::pthread_cond_signal(p.cond);
                    }
                    p.unlock();
                }
                0
            })
        }
    };
    t.as_nanos() as f64 / f64::from(ROUND_TRIPS)
}

/// `procs` unpinned processes each add `MANY_TOTAL / procs` to one counter
/// under one lock (Mops/s).
fn contended_many(kind: Kind, procs: u64) -> f64 {
    let (_name, mut m) = segment();
    let each = MANY_TOTAL / procs;
    let t = match kind {
        Kind::Shmutils => {
            m.init(OBJ, Lock::new(0u64)).unwrap();
            let t = processes(&m, procs as usize, Placement::Free, |_| {
                let l = m.get::<Lock<u64>>(OBJ).unwrap();
                for _ in 0..each {
                    let Ok(mut g) = l.lock() else { return 1 };
                    *g += 1;
                }
                0
            });
            assert_eq!(
                *m.get::<Lock<u64>>(OBJ).unwrap().lock().unwrap(),
                MANY_TOTAL
            );
            t
        }
        _ => {
            let p = Pthread::init(&m, kind == Kind::PthreadRobust);
            let t = processes(&m, procs as usize, Placement::Free, |_| {
                for _ in 0..each {
                    p.lock();
                    // SAFETY: the counter is protected by the held mutex.
                    unsafe { *p.counter += 1 };
                    p.unlock();
                }
                0
            });
            // SAFETY: every child is gone.
            assert_eq!(unsafe { *p.counter }, MANY_TOTAL);
            t
        }
    };
    MANY_TOTAL as f64 / t.as_secs_f64() / 1e6
}

/// Context switches (voluntary + involuntary) of process `pid` so far.
fn context_switches(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .filter_map(|l| {
            let (key, value) = l.split_once(':')?;
            matches!(
                key,
                "voluntary_ctxt_switches" | "nonvoluntary_ctxt_switches"
            )
            .then(|| value.trim().parse::<u64>().ok())?
        })
        .sum()
}

/// Context switches per second of a process blocked in `lock()` while a
/// live process holds the lock (the holder lets go when the parent says
/// so, and both exit normally).
fn blocked_wakeups(kind: Kind) -> f64 {
    let (_name, m) = segment();
    // Ours lives in a segment's heap, as locks do: its holder's thread
    // holds a death token there (the registry's), which the waiter
    // watches.
    let seg_name = ShmName::new("bench-locks-seg");
    let seg = Segment::create(&seg_name, 1 << 20).unwrap();
    let at = seg.heap().find_or_init("lock", || Lock::new(0u64)).unwrap();
    let p = (kind != Kind::Shmutils).then(|| Pthread::init(&m, kind == Kind::PthreadRobust));
    let flag = m.get::<AtomicU32>(START).unwrap();
    flag.store(0, Ordering::SeqCst);
    let lock = || seg.heap().get(at).unwrap();
    let holder = fork(|| {
        let g = match &p {
            None => Some(lock().lock().unwrap()),
            Some(p) => {
                p.lock();
                None
            }
        };
        flag.store(1, Ordering::SeqCst);
        while flag.load(Ordering::SeqCst) != 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(g);
        if let Some(p) = &p {
            p.unlock();
        }
        0
    });
    while flag.load(Ordering::SeqCst) != 1 {
        std::thread::sleep(Duration::from_micros(100));
    }
    let waiter = fork(|| {
        match &p {
            None => drop(lock().lock().unwrap()),
            Some(p) => {
                p.lock();
                p.unlock();
            }
        }
        0
    });
    std::thread::sleep(Duration::from_millis(100)); // let it settle
    let before = context_switches(waiter.pid());
    std::thread::sleep(BLOCKED_FOR);
    let after = context_switches(waiter.pid());
    flag.store(2, Ordering::SeqCst);
    assert_eq!(holder.wait(), 0, "the holder failed");
    assert_eq!(waiter.wait(), 0, "the waiter failed");
    (after - before) as f64 / BLOCKED_FOR.as_secs_f64()
}

/// CLOCK_MONOTONIC in ns: one clock for every process.
fn monotonic_ns() -> u64 {
    // SAFETY: `ts` is a valid out-pointer.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// µs from SIGKILL of the holder until a waiter blocked in `lock()` holds
/// the lock with `OwnerDied` / `EOWNERDEAD`, median of [`DEATH_TRIALS`].
fn owner_died_latency(kind: Kind) -> Option<f64> {
    if kind == Kind::Pthread {
        return None; // a plain mutex never reports its owner's death
    }
    let (_name, m) = segment();
    // Ours lives in a segment's heap (see blocked_wakeups).
    let seg_name = ShmName::new("bench-locks-seg");
    let seg = Segment::create(&seg_name, 1 << 20).unwrap();
    let mut latencies = Vec::with_capacity(DEATH_TRIALS);
    for trial in 0..DEATH_TRIALS {
        let at = seg
            .heap()
            .find_or_init(&format!("lock{trial}"), || Lock::new(0u64))
            .unwrap();
        let p = (kind != Kind::Shmutils).then(|| Pthread::init(&m, true));
        let flag = m.get::<AtomicU32>(START).unwrap();
        flag.store(0, Ordering::SeqCst);
        // The waiter's time of recovery goes after the counter.
        let done = m.get::<std::sync::atomic::AtomicU64>(CV - 64).unwrap();
        done.store(0, Ordering::SeqCst);
        let lock = || seg.heap().get(at).unwrap();
        let holder = fork(|| {
            let g = match &p {
                None => Some(lock().lock().unwrap()),
                Some(p) => {
                    p.lock();
                    None
                }
            };
            flag.store(1, Ordering::SeqCst);
            loop {
                std::thread::sleep(Duration::from_secs(1));
                black_box(&g);
            }
        });
        while flag.load(Ordering::SeqCst) != 1 {
            std::thread::sleep(Duration::from_micros(100));
        }
        let waiter = fork(|| match &p {
            None => match lock().lock() {
                Err(shmutils::LockError::OwnerDied(g)) => {
                    done.store(monotonic_ns(), Ordering::SeqCst);
                    g.mark_consistent();
                    0
                }
                _ => 1,
            },
            Some(p) => {
                // SAFETY: an initialised robust process-shared mutex.
                let r = unsafe { libc::pthread_mutex_lock(p.mutex) };
                if r != libc::EOWNERDEAD {
                    return 1;
                }
                done.store(monotonic_ns(), Ordering::SeqCst);
                // SAFETY: we hold the mutex (EOWNERDEAD gives it to us).
                unsafe {
                    libc::pthread_mutex_consistent(p.mutex);
                    libc::pthread_mutex_unlock(p.mutex);
                }
                0
            }
        });
        // The waiter blocks; the kill then lands at evenly spread points of
        // its poll period (a fixed delay would be in phase with its 5 ms
        // sleeps, and always land just before one ends).
        let jitter = Duration::from_millis(5) * trial as u32 / DEATH_TRIALS as u32;
        std::thread::sleep(Duration::from_millis(20) + jitter);
        let killed_at = monotonic_ns();
        holder.kill();
        assert_eq!(
            waiter.wait_timeout(Duration::from_secs(10)),
            Ok(0),
            "the waiter did not get OwnerDied"
        );
        latencies.push(done.load(Ordering::SeqCst).saturating_sub(killed_at) as f64 / 1e3);
    }
    latencies.sort_by(f64::total_cmp);
    Some(latencies[latencies.len() / 2])
}

fn best(lower_is_better: bool, f: impl Fn() -> f64) -> f64 {
    let runs = (0..RUNS).map(|_| f());
    if lower_is_better {
        runs.fold(f64::INFINITY, f64::min)
    } else {
        runs.fold(0.0, f64::max)
    }
}

/// The best of `runs` runs of the Boost peer's `cmd` workload (a fresh
/// segment each run, like the Rust runs); `None` if the peer is
/// unavailable or a run failed.
fn best_boost(
    peer: &boost::Boost,
    lower_is_better: bool,
    runs: usize,
    cmd: &str,
    args: &[u64],
) -> Option<f64> {
    let mut values = Vec::with_capacity(runs);
    for _ in 0..runs {
        values.push(peer.run_args(cmd, args)?.get(cmd)?);
    }
    let values = values.into_iter();
    Some(if lower_is_better {
        values.fold(f64::INFINITY, f64::min)
    } else {
        values.fold(0.0, f64::max)
    })
}

/// `value` formatted with `decimals`, or `n/a`.
fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

/// ns per `notify_one` with nobody waiting; then, after 8 processes were
/// killed while asleep in `wait` (they stay counted as sleepers), ns per
/// `notify_one` over the next million, and ns for the first one (which
/// finds nobody to wake and takes the dead sleepers off).
fn notify_after_killed_sleepers() -> (f64, f64, f64) {
    const N: u32 = 1_000_000;
    let (_name, mut m) = segment();
    m.init(OBJ, Lock::new(0u32)).unwrap();
    m.init(CV, Condvar::new()).unwrap();
    let lock: &Lock<u32> = m.get(OBJ).unwrap();
    let cv: &Condvar = m.get(CV).unwrap();
    let per = |n: u32| {
        let t0 = Instant::now();
        for _ in 0..n {
            cv.notify_one();
        }
        t0.elapsed().as_nanos() as f64 / f64::from(n)
    };
    let idle = per(N);
    let sleepers: Vec<_> = (0..8)
        .map(|_| {
            fork(|| {
                let Ok(mut g) = lock.lock() else { return 1 };
                loop {
                    g = match cv.wait(g) {
                        Ok(g) => g,
                        Err(_) => return 2,
                    };
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    while cv.sleepers() < 8 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "sleepers never slept"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    for c in sleepers {
        c.kill();
    }
    let first = per(1);
    let healed = per(N);
    (idle, healed, first)
}

/// One line of the table.
struct Row {
    name: String,
    unit: &'static str,
    lower: bool,
    /// One run for `kind`; `None` where that lock cannot take part.
    ours: Box<dyn Fn(Kind) -> Option<f64>>,
    /// The Boost peer's subcommand and its arguments, if it has one.
    boost: Option<(&'static str, Vec<u64>)>,
    /// One run instead of [`RUNS`].
    once: bool,
    target: &'static str,
}

fn rows() -> Vec<Row> {
    let mut rows = vec![
        Row {
            name: "lock_uncontended".into(),
            unit: "ns/pair",
            lower: true,
            ours: Box::new(|k| Some(uncontended(k))),
            boost: Some(("lock_uncontended", vec![UNCONTENDED_PAIRS])),
            once: false,
            target: "ratio <= 1",
        },
        Row {
            name: "lock_write_unlock".into(),
            unit: "ns/pair",
            lower: true,
            ours: Box::new(|k| Some(write_unlock(k))),
            boost: Some(("lock_write_unlock", vec![UNCONTENDED_PAIRS])),
            once: false,
            target: "ratio <= 1",
        },
    ];
    for placement in [Placement::Spread, Placement::OneCpu] {
        rows.push(Row {
            name: format!("lock_contended {}", placement.label()),
            unit: "Mops/s",
            lower: false,
            ours: Box::new(move |k| Some(contended(k, placement))),
            boost: Some((
                "lock_contended",
                vec![CONTENDED_TOTAL, placement.boost_arg()],
            )),
            once: false,
            target: "ratio >= 1",
        });
    }
    for placement in [Placement::Spread, Placement::OneCpu] {
        rows.push(Row {
            name: format!("pingpong {}", placement.label()),
            unit: "ns/trip",
            lower: true,
            ours: Box::new(move |k| Some(pingpong(k, placement))),
            boost: Some((
                "pingpong",
                vec![u64::from(ROUND_TRIPS), placement.boost_arg()],
            )),
            once: false,
            target: if placement == Placement::OneCpu {
                "ratio <= 1"
            } else {
                "ratio <= 0.05"
            },
        });
    }
    for procs in MANY_PROCS {
        rows.push(Row {
            name: format!("contended_many/{procs}"),
            unit: "Mops/s",
            lower: false,
            ours: Box::new(move |k| Some(contended_many(k, procs))),
            boost: Some(("contended_many", vec![MANY_TOTAL, procs])),
            once: false,
            target: "ratio >= 1, no collapse",
        });
    }
    rows.push(Row {
        name: "blocked_wakeups".into(),
        unit: "switch/s",
        lower: true,
        ours: Box::new(|k| Some(blocked_wakeups(k))),
        boost: Some(("blocked_wakeups", vec![BLOCKED_FOR.as_millis() as u64])),
        once: true,
        target: "< 1 (pthread: 0)",
    });
    rows.push(Row {
        name: "owner_died_latency".into(),
        unit: "us",
        lower: true,
        ours: Box::new(owner_died_latency),
        boost: None,
        once: true,
        target: "<= 1000 us median",
    });
    rows
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and friends
    }
    let peer = boost::Boost::new();
    println!(
        "locks benchmark: best of {RUNS} runs, CPUs {:?}; ratio = shmutils / pthread (plain), \
         vs robust = shmutils / pthread robust, vs boost = shmutils / Boost.Interprocess",
        allowed_cpus()
    );
    println!(
        "{:<22} {:>9} {:>10} {:>10} {:>15} {:>10} {:>7} {:>9} {:>8}  target",
        "workload",
        "unit",
        "shmutils",
        "pthread",
        "pthread robust",
        "boost",
        "ratio",
        "vs robust",
        "vs boost"
    );
    // `cargo bench --bench locks -- pingpong` runs the rows whose name
    // contains `pingpong` (cargo itself passes `--bench`).
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    for row in rows() {
        if filter
            .as_ref()
            .is_some_and(|f| !row.name.contains(f.as_str()))
        {
            continue;
        }
        let runs = if row.once { 1 } else { RUNS };
        let best_of = |kind| -> Option<f64> {
            let mut values = Vec::with_capacity(runs);
            for _ in 0..runs {
                values.push((row.ours)(kind)?);
            }
            let values = values.into_iter();
            Some(if row.lower {
                values.fold(f64::INFINITY, f64::min)
            } else {
                values.fold(0.0, f64::max)
            })
        };
        let s = best_of(Kind::Shmutils).expect("shmutils takes part in every row");
        let p = best_of(Kind::Pthread);
        let r = best_of(Kind::PthreadRobust);
        let b = row
            .boost
            .as_ref()
            .and_then(|(cmd, args)| best_boost(&peer, row.lower, runs, cmd, args));
        println!(
            "{:<22} {:>9} {s:>10.2} {:>10} {:>15} {:>10} {:>7} {:>9} {:>8}  {}",
            row.name,
            row.unit,
            cell(p, 2),
            cell(r, 2),
            cell(b, 2),
            cell(p.map(|p| s / p), 3),
            cell(r.map(|r| s / r), 3),
            cell(b.map(|b| s / b), 3),
            row.target,
        );
    }
    if filter.is_some() {
        return;
    }
    let (idle, healed, first) = notify_after_killed_sleepers();
    println!(
        "condvar notify_one: idle {idle:.1} ns; after 8 sleepers were killed in their sleep \
         {healed:.1} ns (the first notify, which heals the count, {first:.0} ns)"
    );
    let checked = best(true, || deref_cost(true));
    let plain = best(true, || deref_cost(false));
    println!(
        "fork check: a write through a guard {checked:.2} ns, through a plain &mut {plain:.2} ns \
         (+{:.2} ns per access)",
        checked - plain
    );
}
