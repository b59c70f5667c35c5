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
//! - `lock_contended`: 2 forked processes, pinned to different CPUs,
//!   increment a counter under the lock until it reaches 2,000,000 (Mops/s).
//! - `pingpong`: 2 processes pass a token through lock + condvar 100,000
//!   times (ns per round trip).
//!
//! Each figure is the best of several runs (the machine is shared and
//! noisy). Run with `cargo bench --bench locks`. The Boost column needs a
//! C++ compiler and `libboost-dev`; without them it reads `n/a`.

#[path = "peers/boost.rs"]
mod boost;

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shmutils::{Condvar, Lock, MapFlags, MapProtections, MappedMemory, Mode, ShmFd};
use shmutils_workspace::{fork, ShmName};

const UNCONTENDED_PAIRS: u64 = 10_000_000;
const CONTENDED_TOTAL: u64 = 2_000_000;
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

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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

/// Runs `work` in two forked processes pinned to different CPUs, released
/// together; returns the time until both finished.
fn two_processes(m: &MappedMemory, work: impl Fn(usize) -> i32) -> Duration {
    let start = m.get::<AtomicU32>(START).unwrap();
    start.store(0, Ordering::SeqCst);
    let children: Vec<_> = (0..2)
        .map(|i| {
            fork(|| {
                pin_to_cpu(i % cpus());
                start.fetch_add(1, Ordering::SeqCst);
                while start.load(Ordering::SeqCst) < 100 {
                    std::hint::spin_loop();
                }
                work(i)
            })
        })
        .collect();
    while start.load(Ordering::SeqCst) < 2 {
        std::thread::yield_now();
    }
    let t0 = Instant::now();
    start.store(100, Ordering::SeqCst);
    for c in children {
        assert_eq!(c.wait(), 0, "a benchmark child failed");
    }
    t0.elapsed()
}

fn contended(kind: Kind) -> f64 {
    let (_name, mut m) = segment();
    let t = match kind {
        Kind::Shmutils => {
            m.init(OBJ, Lock::new(0u64)).unwrap();
            let t = two_processes(&m, |_| {
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
            let t = two_processes(&m, |_| loop {
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

fn pingpong(kind: Kind) -> f64 {
    let (_name, mut m) = segment();
    let t = match kind {
        Kind::Shmutils => {
            m.init(OBJ, Lock::new(0u32)).unwrap();
            m.init(CV, Condvar::new()).unwrap();
            two_processes(&m, |me| {
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
            two_processes(&m, |me| {
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

fn best(lower_is_better: bool, f: impl Fn() -> f64) -> f64 {
    let runs = (0..RUNS).map(|_| f());
    if lower_is_better {
        runs.fold(f64::INFINITY, f64::min)
    } else {
        runs.fold(0.0, f64::max)
    }
}

/// The best of [`RUNS`] runs of the Boost peer's `name` workload (`n`
/// iterations, a fresh segment each run, like the Rust runs); `None` if the
/// peer is unavailable or a run failed.
fn best_boost(peer: &boost::Boost, lower_is_better: bool, name: &str, n: u64) -> Option<f64> {
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        runs.push(peer.run(name, n)?.get(name)?);
    }
    let runs = runs.into_iter();
    Some(if lower_is_better {
        runs.fold(f64::INFINITY, f64::min)
    } else {
        runs.fold(0.0, f64::max)
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

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and friends
    }
    let peer = boost::Boost::new();
    println!(
        "locks benchmark: best of {RUNS} runs, {} CPUs; ratio = shmutils / pthread (plain), \
         vs boost = shmutils / Boost.Interprocess",
        cpus()
    );
    println!(
        "{:<18} {:>8} {:>10} {:>10} {:>15} {:>10} {:>7} {:>8}  target",
        "workload", "unit", "shmutils", "pthread", "pthread robust", "boost", "ratio", "vs boost"
    );
    type Row = (
        &'static str,
        &'static str,
        bool,
        fn(Kind) -> f64,
        u64,
        &'static str,
    );
    let rows: [Row; 4] = [
        (
            "lock_uncontended",
            "ns/pair",
            true,
            uncontended,
            UNCONTENDED_PAIRS,
            "ratio <= 1",
        ),
        (
            "lock_write_unlock",
            "ns/pair",
            true,
            write_unlock,
            UNCONTENDED_PAIRS,
            "ratio <= 1",
        ),
        (
            "lock_contended",
            "Mops/s",
            false,
            contended,
            CONTENDED_TOTAL,
            "ratio >= 1",
        ),
        (
            "pingpong",
            "ns/trip",
            true,
            pingpong,
            u64::from(ROUND_TRIPS),
            "ratio <= 0.05",
        ),
    ];
    for (name, unit, lower, f, count, target) in rows {
        let s = best(lower, || f(Kind::Shmutils));
        let p = best(lower, || f(Kind::Pthread));
        let r = best(lower, || f(Kind::PthreadRobust));
        let b = best_boost(&peer, lower, name, count);
        println!(
            "{name:<18} {unit:>8} {s:>10.2} {p:>10.2} {r:>15.2} {:>10} {:>7.3} {:>8}  {target}",
            cell(b, 2),
            s / p,
            cell(b.map(|b| s / b), 3),
        );
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
