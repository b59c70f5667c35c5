//! Mutual exclusion, recursion, try_lock and timeouts across real
//! processes: forked children and spawned children that open the segment
//! by name.

mod lock_support;

use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lock_support::{await_flag, pin_to_one_cpu, segment};
use shmutils::{Lock, LockError, MappedMemory, RLock, RawLock, RawMutex};
use shmutils_workspace::fork;

const LOCK: usize = 64;
const FLAG: usize = 0;

/// Adds 1 to the counter `n` times, each a non-atomic read-modify-write
/// under the lock.
fn count(lock: &Lock<u64>, n: u64) {
    for _ in 0..n {
        let mut g = lock.lock().expect("lock");
        let v = *g;
        *g = black_box(v) + 1;
    }
}

fn processes_count_exactly(procs: u64, per_proc: u64, one_cpu: bool) {
    let (_name, mut m) = segment("lock-procs");
    let lock = m.init(LOCK, Lock::new(0u64)).unwrap();
    let children: Vec<_> = (0..procs)
        .map(|_| {
            fork(|| {
                if one_cpu {
                    pin_to_one_cpu();
                }
                count(lock, per_proc);
                0
            })
        })
        .collect();
    for c in children {
        assert_eq!(c.wait(), 0);
    }
    assert_eq!(*lock.lock().unwrap(), procs * per_proc);
}

#[test]
fn two_forked_processes_count_exactly() {
    processes_count_exactly(2, 50_000, false);
}

#[test]
fn four_forked_processes_count_exactly() {
    processes_count_exactly(4, 25_000, false);
}

/// Waiters that share the holder's CPU yield to it and sleep instead of
/// spinning: still exact.
#[test]
fn four_forked_processes_on_one_cpu_count_exactly() {
    processes_count_exactly(4, 25_000, true);
}

#[test]
fn threads_in_several_processes_count_exactly() {
    let (_name, mut m) = segment("lock-threads");
    let lock = m.init(LOCK, Lock::new(0u64)).unwrap();
    let threads = |n| {
        std::thread::scope(|s| {
            for _ in 0..n {
                s.spawn(|| count(lock, 10_000));
            }
        })
    };
    let children: Vec<_> = (0..2)
        .map(|_| {
            fork(|| {
                threads(3);
                0
            })
        })
        .collect();
    threads(4);
    for c in children {
        assert_eq!(c.wait(), 0);
    }
    assert_eq!(*lock.lock().unwrap(), 10 * 10_000);
}

#[test]
fn spawned_children_count_exactly() {
    let (name, mut m) = segment("lock-spawn");
    let lock = m.init(LOCK, Lock::new(0u64)).unwrap();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_child-lock"))
            .args(["count", &name, &LOCK.to_string(), "20000"])
            .spawn()
            .unwrap()
    };
    let children = [spawn(), spawn()];
    count(lock, 20_000);
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a spawned child failed");
    }
    assert_eq!(*lock.lock().unwrap(), 60_000);
}

#[test]
fn rlock_reenters_to_depth_100_and_excludes_another_process_until_the_last_unlock() {
    let (_name, mut m) = segment("lock-rlock");
    let flag = m.init(FLAG, AtomicU32::new(0)).unwrap() as *const AtomicU32;
    let lock = m.init(LOCK, RLock::new(AtomicU32::new(0))).unwrap();
    // SAFETY: the flag lives in the mapping, which outlives every use below
    // (init took `&mut m` only to place it).
    let flag = unsafe { &*flag };
    let mut guards = Vec::new();
    for depth in 1..=100 {
        let g = lock.lock().unwrap();
        g.fetch_add(1, Ordering::Relaxed);
        assert_eq!(lock.depth(), depth);
        guards.push(g);
    }
    assert_eq!(guards[0].load(Ordering::Relaxed), 100);
    // The child reports each try: 1 = would block at depth 1, 2 = got it.
    let child = fork(|| {
        if !matches!(lock.try_lock(), Err(LockError::WouldBlock)) {
            return 1;
        }
        flag.store(1, Ordering::SeqCst);
        match lock.lock() {
            Ok(g) if g.load(Ordering::Relaxed) == 100 && flag.load(Ordering::SeqCst) == 2 => {
                g.fetch_add(1, Ordering::Relaxed);
                0
            }
            _ => 2,
        }
    });
    await_flag(flag, 1);
    while guards.len() > 1 {
        drop(guards.pop());
    }
    // Held at depth 1: the child must still be blocked.
    std::thread::sleep(Duration::from_millis(50));
    assert!(lock.is_locked());
    assert_eq!(lock.depth(), 1);
    flag.store(2, Ordering::SeqCst);
    drop(guards.pop());
    assert_eq!(
        child.wait(),
        0,
        "the child got the lock only after the last unlock"
    );
    assert_eq!(lock.lock().unwrap().load(Ordering::Relaxed), 101);
}

/// Forks a child that takes the lock, raises the flag, and holds it until
/// the flag reaches 2; then it unlocks and exits.
fn holder(lock: &Lock<u64>, flag: &AtomicU32) -> shmutils_workspace::Child {
    let child = fork(|| {
        let g = lock.lock().unwrap();
        flag.store(1, Ordering::SeqCst);
        while flag.load(Ordering::SeqCst) < 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(g);
        0
    });
    await_flag(flag, 1);
    child
}

fn lock_and_flag(m: &mut MappedMemory) -> (&Lock<u64>, &AtomicU32) {
    let flag = m.init(FLAG, AtomicU32::new(0)).unwrap() as *const AtomicU32;
    let lock = m.init(LOCK, Lock::new(0u64)).unwrap();
    // SAFETY: the flag lives in the mapping, borrowed for as long as `lock`.
    (lock, unsafe { &*flag })
}

#[test]
fn try_lock_on_a_lock_held_by_another_process_would_block() {
    let (_name, mut m) = segment("lock-try");
    let (lock, flag) = lock_and_flag(&mut m);
    let child = holder(lock, flag);
    for _ in 0..3 {
        assert!(matches!(lock.try_lock(), Err(LockError::WouldBlock)));
    }
    flag.store(2, Ordering::SeqCst);
    assert_eq!(child.wait(), 0);
    let g = lock.try_lock().expect("free after the holder unlocked");
    assert!(!g.is_inconsistent());
}

#[test]
fn lock_timeout_returns_after_about_the_time_asked() {
    let (_name, mut m) = segment("lock-timeout");
    let (lock, flag) = lock_and_flag(&mut m);
    let child = holder(lock, flag);
    for asked in [Duration::from_millis(1), Duration::from_millis(120)] {
        let t0 = Instant::now();
        let r = lock.lock_timeout(asked);
        let took = t0.elapsed();
        assert!(matches!(r, Err(LockError::TimedOut)), "{:?}", r.map(drop));
        assert!(took >= asked, "returned after {took:?}, asked {asked:?}");
        assert!(
            took < asked + Duration::from_secs(1),
            "returned after {took:?}, asked {asked:?}"
        );
    }
    flag.store(2, Ordering::SeqCst);
    assert_eq!(child.wait(), 0);
    drop(
        lock.lock_timeout(Duration::from_millis(10))
            .expect("free now"),
    );
}

#[test]
fn relocking_in_the_holding_thread_is_refused_not_a_hang() {
    let (_name, mut m) = segment("lock-self");
    let lock = m.init(LOCK, Lock::new(0u64)).unwrap();
    let g = lock.lock().unwrap();
    assert!(matches!(lock.lock(), Err(LockError::WouldDeadlock)));
    assert!(matches!(lock.try_lock(), Err(LockError::WouldDeadlock)));
    drop(g);
    drop(lock.lock().unwrap());
}

#[test]
fn a_forked_child_does_not_inherit_its_parents_lock() {
    let (_name, mut m) = segment("lock-inherit");
    let (lock, flag) = lock_and_flag(&mut m);
    let g = lock.lock().unwrap();
    let child = fork(|| {
        // The parent's thread holds it: the child waits, it does not re-enter.
        if !matches!(lock.try_lock(), Err(LockError::WouldBlock)) {
            return 1;
        }
        flag.store(1, Ordering::SeqCst);
        match lock.lock() {
            Ok(mut g) => {
                *g += 1;
                0
            }
            Err(_) => 2,
        }
    });
    await_flag(flag, 1);
    drop(g);
    assert_eq!(child.wait(), 0);
    assert_eq!(*lock.lock().unwrap(), 1);
}

#[test]
fn a_guard_dropped_in_a_forked_child_leaves_the_parents_lock_held() {
    let (_name, mut m) = segment("lock-guard-fork");
    let (lock, _flag) = lock_and_flag(&mut m);
    let g = lock.lock().unwrap();
    let child = fork(|| {
        // The child's copy of the guard does not hold the lock here.
        drop(unsafe_copy_of(&g));
        match lock.try_lock() {
            Err(LockError::WouldBlock) => 0, // still the parent's
            _ => 1,
        }
    });
    assert_eq!(
        child.wait(),
        0,
        "the child's drop released the parent's lock"
    );
    assert!(lock.raw().is_held_by_current_thread());
    drop(g);
    assert!(!lock.is_locked());
}

/// A bitwise copy of a guard: what a forked child holds of its parent's.
fn unsafe_copy_of<G>(g: &G) -> G {
    // SAFETY: only used in a forked child, where the original is never
    // dropped (the child leaves with _exit), so the guard is dropped once
    // in that process — as happens when a child returns with an inherited
    // guard in scope.
    unsafe { std::ptr::read(g) }
}

/// Garbage in a lock word never hangs or panics: either the lock works, or
/// a typed error comes back.
#[test]
fn garbage_in_the_lock_word_gives_a_typed_outcome() {
    const WAITERS: u64 = 1 << 63;
    const INCONSISTENT: u64 = 1 << 62;
    const NOT_RECOVERABLE: u64 = 1 << 61;
    let (_name, mut m) = segment("lock-garbage");
    let main_thread = u64::from(std::process::id()); // alive, not this test's thread
    let cases: [u64; 9] = [
        1,                                  // tid 1: init, alive -> times out
        WAITERS,                            // WAITERS with no owner: unlocked
        INCONSISTENT,                       // unlocked, inconsistent -> OwnerDied
        NOT_RECOVERABLE,                    // final
        u64::MAX,                           // everything
        0x3f_fff0,                          // a tid no thread has
        INCONSISTENT | main_thread,         // inconsistent, live owner -> times out
        WAITERS | 99_999 | 77 << 22,        // WAITERS + a tid that is usually free
        0x0123_4567_89ab_cdef & !(7 << 61), // random bits, no final flag
    ];
    for (i, &w) in cases.iter().enumerate() {
        let off = 256 + 64 * i;
        m.write(off, &w.to_ne_bytes()).unwrap();
        // A scribbled owner record too.
        m.write(off + 8, &0xdead_beef_dead_beef_u64.to_ne_bytes())
            .unwrap();
        m.write(off + 16, &u64::MAX.to_ne_bytes()).unwrap();
        let raw = RawLock::from_mapping(&m, off).unwrap();
        let t0 = Instant::now();
        let r = raw.lock_timeout(Duration::from_millis(30));
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "{w:#x} took too long"
        );
        match r {
            Ok(()) | Err(LockError::OwnerDied(())) => {
                // We hold it: it must work as a lock from here on.
                // SAFETY: this thread holds the lock.
                unsafe {
                    raw.mark_consistent();
                    raw.unlock();
                }
                raw.try_lock().expect("usable after repair");
                // SAFETY: as above.
                unsafe { raw.unlock() };
            }
            Err(LockError::NotRecoverable) => assert_ne!(w & NOT_RECOVERABLE, 0),
            Err(LockError::TimedOut) => {
                assert!(t0.elapsed() >= Duration::from_millis(30));
                let tid = w & 0x3f_ffff;
                assert!(
                    std::path::Path::new(&format!("/proc/{tid}")).exists(),
                    "{w:#x}: only a live owner may time out"
                );
            }
            Err(e) => panic!("{w:#x}: unexpected {e:?}"),
        }
    }
}

/// A guard inherited by a forked child gives no access there: using it
/// panics (the child exits with the fork helper's panic status, 101).
#[test]
fn a_guard_inherited_across_fork_panics_on_use_in_the_child() {
    let (_name, mut m) = segment("lock-guard-fork-use");
    let (lock, _flag) = lock_and_flag(&mut m);
    let mut g = lock.lock().unwrap();
    *g = 5;
    let read = fork(|| {
        let copy = unsafe_copy_of(&g);
        let v = *copy; // panics
        std::mem::forget(copy);
        i32::try_from(v).unwrap_or(0)
    });
    assert_eq!(read.wait(), 101, "deref in the child must panic");
    let write = fork(|| {
        let mut copy = unsafe_copy_of(&g);
        *copy = 6; // panics
        0
    });
    assert_eq!(write.wait(), 101, "deref_mut in the child must panic");
    let repair = fork(|| {
        unsafe_copy_of(&g).mark_consistent(); // panics
        0
    });
    assert_eq!(
        repair.wait(),
        101,
        "mark_consistent in the child must panic"
    );
    // The parent's guard is untouched and still works.
    assert_eq!(*g, 5);
    *g = 7;
    drop(g);
    assert_eq!(*lock.lock().unwrap(), 7);
}

/// `?` on a lock result compiles into `Box<dyn Error>` and
/// `Box<dyn Error + Send + Sync>`, and gives the lock's error.
#[test]
fn question_mark_into_boxed_dyn_error() {
    fn f(lock: &Lock<u64>) -> Result<(), Box<dyn std::error::Error>> {
        let _g = lock.lock()?;
        Ok(())
    }
    fn g(lock: &RLock<u64>) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        let g = lock.try_lock()?;
        Ok(*g)
    }
    let l = Lock::new(1u64);
    f(&l).unwrap();
    let held = l.lock().unwrap();
    let e = f(&l).unwrap_err();
    assert!(
        matches!(
            e.downcast_ref::<LockError<()>>(),
            Some(LockError::WouldDeadlock)
        ),
        "{e}"
    );
    drop(held);
    assert_eq!(g(&RLock::new(2)).unwrap(), 2);
}
