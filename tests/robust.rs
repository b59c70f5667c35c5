//! Owner-death recovery across real processes: a holder SIGKILLed, killed
//! while another process waits, a holder thread that exits, an `RLock`
//! holder dead at depth 3, a spawned holder, and an unreaped (zombie) one.
//! Each `OwnerDied` must come within 50 ms of the death (measured from the
//! moment the holder is reaped, or its thread joined).
//!
//! And what must never be recovered: a thread of *this* process that
//! exited holding a lock (`Abandoned`, no second guard), also when the
//! kernel gave its tid to a new thread (forced through
//! `/proc/sys/kernel/ns_last_pid` when running as root).

mod lock_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lock_support::{await_flag, park, segment, wait_until, DEATH_BOUND};
use shmutils::{Lock, LockError, MappedMemory, RLock, RawMutex};
use shmutils_workspace::{fork, with_recycled_tid, Child};

const FLAG: usize = 0;
const RESULT: usize = 4;
const LOCK: usize = 64;

struct Shm<'a> {
    flag: &'a AtomicU32,
    result: &'a AtomicU32,
    lock: &'a Lock<u64>,
}

fn place(m: &mut MappedMemory) -> Shm<'_> {
    m.init(FLAG, AtomicU32::new(0)).unwrap();
    m.init(RESULT, AtomicU32::new(0)).unwrap();
    m.init(LOCK, Lock::new(0u64)).unwrap();
    Shm {
        flag: m.get(FLAG).unwrap(),
        result: m.get(RESULT).unwrap(),
        lock: m.get(LOCK).unwrap(),
    }
}

/// Forks a child that locks, writes `value` (a half-done update), raises
/// the flag and waits to be killed.
fn dying_holder(s: &Shm<'_>, value: u64) -> Child {
    let child = fork(|| {
        let mut g = s.lock.lock().unwrap();
        *g = value;
        s.flag.store(1, Ordering::SeqCst);
        park()
    });
    await_flag(s.flag, 1);
    child
}

/// Locks and expects `OwnerDied` within the bound; returns the guard.
fn expect_owner_died<'a>(lock: &'a Lock<u64>, since: Instant) -> shmutils::LockGuard<'a, u64> {
    match lock.lock() {
        Err(LockError::OwnerDied(g)) => {
            let took = since.elapsed();
            assert!(took < DEATH_BOUND, "OwnerDied after {took:?}");
            assert!(g.is_inconsistent());
            g
        }
        Err(e) => panic!("expected OwnerDied, got {e:?}"),
        Ok(_) => panic!("expected OwnerDied, got the lock cleanly"),
    }
}

#[test]
fn sigkilled_holder_gives_owner_died_and_mark_consistent_recovers() {
    let (_name, mut m) = segment("robust-kill");
    let s = place(&mut m);
    let child = dying_holder(&s, 41);
    assert_eq!(child.kill(), 128 + libc::SIGKILL);
    let mut g = expect_owner_died(s.lock, Instant::now());
    assert_eq!(*g, 41, "the dead holder's write is visible to the repairer");
    *g = 42; // repair
    g.mark_consistent();
    assert!(!g.is_inconsistent());
    drop(g);
    // Usable again, here and in another process.
    assert_eq!(*s.lock.lock().unwrap(), 42);
    let other = fork(|| match s.lock.lock() {
        Ok(mut g) if *g == 42 => {
            *g += 1;
            0
        }
        _ => 1,
    });
    assert_eq!(other.wait(), 0);
    assert_eq!(*s.lock.lock().unwrap(), 43);
}

#[test]
fn unrepaired_owner_died_guard_passes_owner_died_on_and_give_up_is_final_everywhere() {
    let (_name, mut m) = segment("robust-nr");
    let s = place(&mut m);
    dying_holder(&s, 7).kill();
    let g = expect_owner_died(s.lock, Instant::now());
    drop(g); // no mark_consistent: released, still inconsistent
    assert!(!s.lock.is_locked());
    // `?` drops the guard the same way.
    let through_question_mark = || -> shmutils::Result<()> {
        *s.lock.lock()? += 1;
        Ok(())
    };
    assert!(matches!(
        through_question_mark(),
        Err(shmutils::Error::Lock(shmutils::LockErrorKind::OwnerDied))
    ));
    // Another process hears it too, repairs nothing, releases.
    let other = fork(|| match s.lock.lock() {
        Err(LockError::OwnerDied(g)) if *g == 7 => 0,
        _ => 1,
    });
    assert_eq!(other.wait(), 0, "another process gets OwnerDied too");
    // The next locker repairs: from then on Ok.
    let mut g = match s.lock.try_lock() {
        Err(LockError::OwnerDied(g)) => g,
        other => panic!("expected OwnerDied, got {:?}", other.map(drop)),
    };
    *g = 8;
    g.mark_consistent();
    drop(g);
    assert_eq!(*s.lock.lock().unwrap(), 8);
    // A holder that gives up makes it final, for every process.
    s.lock.lock().unwrap().make_not_recoverable();
    assert!(matches!(s.lock.lock(), Err(LockError::NotRecoverable)));
    assert!(matches!(s.lock.try_lock(), Err(LockError::NotRecoverable)));
    assert!(matches!(
        s.lock.lock_timeout(Duration::from_millis(10)),
        Err(LockError::NotRecoverable)
    ));
    let other = fork(|| match s.lock.lock() {
        Err(LockError::NotRecoverable) => 0,
        _ => 1,
    });
    assert_eq!(other.wait(), 0, "another process sees NotRecoverable too");
    let e = s.lock.lock().map(drop).unwrap_err();
    assert!(e.to_string().contains("not recoverable"), "{e}");
}

#[test]
fn holder_killed_while_another_process_is_blocked_in_lock() {
    let (_name, mut m) = segment("robust-waiter");
    let s = place(&mut m);
    let holder = dying_holder(&s, 5);
    // The waiter reports 1 for OwnerDied (then repairs), 2 for anything else.
    let waiter = fork(|| {
        s.flag.store(2, Ordering::SeqCst);
        let code = match s.lock.lock() {
            Err(LockError::OwnerDied(mut g)) if *g == 5 => {
                *g = 6;
                g.mark_consistent();
                1
            }
            _ => 2,
        };
        s.result.store(code, Ordering::SeqCst);
        0
    });
    await_flag(s.flag, 2);
    // Let the waiter get past its spin into futex_wait.
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(s.result.load(Ordering::SeqCst), 0, "the waiter is blocked");
    holder.kill();
    let took = wait_until(Duration::from_secs(5), || {
        s.result.load(Ordering::SeqCst) != 0
    })
    .expect("the blocked waiter never returned");
    assert_eq!(
        s.result.load(Ordering::SeqCst),
        1,
        "the waiter got OwnerDied"
    );
    assert!(took < DEATH_BOUND, "OwnerDied after {took:?}");
    assert_eq!(waiter.wait(), 0);
    assert_eq!(*s.lock.lock().unwrap(), 6);
}

#[test]
fn holder_thread_exits_in_a_multithreaded_process() {
    let (_name, mut m) = segment("robust-thread");
    let s = place(&mut m);
    // The child's holder thread exits holding the lock while the process
    // (its main thread and another thread) lives on.
    let child = fork(|| {
        let _busy = std::thread::spawn(park);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let mut g = s.lock.lock().unwrap();
                *g = 9;
                std::mem::forget(g);
            });
        }); // joined: the holder thread has exited
        s.flag.store(1, Ordering::SeqCst);
        park()
    });
    await_flag(s.flag, 1);
    let since = Instant::now();
    let g = expect_owner_died(s.lock, since);
    assert_eq!(*g, 9);
    g.mark_consistent();
    drop(g);
    drop(s.lock.lock().unwrap());
    drop(child); // killed and reaped
}

#[test]
fn rlock_holder_dies_at_depth_3() {
    let (_name, mut m) = segment("robust-rlock");
    m.init(FLAG, AtomicU32::new(0)).unwrap();
    m.init(LOCK, RLock::new(AtomicU32::new(0))).unwrap();
    let flag: &AtomicU32 = m.get(FLAG).unwrap();
    let lock: &RLock<AtomicU32> = m.get(LOCK).unwrap();
    let child = fork(|| {
        let guards: Vec<_> = (0..3).map(|_| lock.lock().unwrap()).collect();
        guards[2].store(3, Ordering::SeqCst);
        if lock.depth() != 3 {
            return 1;
        }
        flag.store(1, Ordering::SeqCst);
        park()
    });
    await_flag(flag, 1);
    child.kill();
    let since = Instant::now();
    let g = match lock.lock() {
        Err(LockError::OwnerDied(g)) => g,
        other => panic!("expected OwnerDied, got {:?}", other.map(drop)),
    };
    assert!(since.elapsed() < DEATH_BOUND, "after {:?}", since.elapsed());
    assert_eq!(lock.depth(), 1, "the dead owner's depth is not inherited");
    assert_eq!(g.load(Ordering::SeqCst), 3);
    // Re-entry while inconsistent works (this thread heard OwnerDied).
    let inner = lock.lock().unwrap();
    assert_eq!(lock.depth(), 2);
    assert!(inner.is_inconsistent());
    inner.mark_consistent();
    drop(inner);
    drop(g);
    assert!(!lock.is_locked());
    let g = lock.lock().unwrap();
    assert!(!g.is_inconsistent());
    assert_eq!(lock.depth(), 1);
}

#[test]
fn spawned_holder_sigkilled() {
    let (name, mut m) = segment("robust-spawn");
    let s = place(&mut m);
    let mut child = Command::new(env!("CARGO_BIN_EXE_child-lock"))
        .args(["hold", &name, &LOCK.to_string(), "77"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    child.kill().unwrap();
    child.wait().unwrap();
    let g = expect_owner_died(s.lock, Instant::now());
    assert_eq!(*g, 77);
    g.mark_consistent();
}

#[test]
fn exited_but_unreaped_holder_counts_as_dead() {
    let (_name, mut m) = segment("robust-zombie");
    let s = place(&mut m);
    let child = fork(|| {
        let mut g = s.lock.lock().unwrap();
        *g = 3;
        std::mem::forget(g);
        s.flag.store(1, Ordering::SeqCst);
        0 // exits holding the lock; the parent does not reap it yet
    });
    await_flag(s.flag, 1);
    let g = match s.lock.lock_timeout(Duration::from_secs(5)) {
        Err(LockError::OwnerDied(g)) => g,
        other => panic!(
            "expected OwnerDied from a zombie holder, got {:?}",
            other.map(drop)
        ),
    };
    assert_eq!(*g, 3);
    g.mark_consistent();
    drop(g);
    assert_eq!(child.wait(), 0);
}

/// The case: a thread locks, leaks its guard, hands the `&mut`
/// out of a scoped thread and exits. The next `lock` in this process gets
/// `Abandoned` (no second `&mut`), promptly, every time; another process,
/// whose memory holds no such reference, may recover it.
#[test]
fn a_leaked_guard_of_an_exited_thread_is_abandoned_never_a_second_guard() {
    let (_name, mut m) = segment("robust-leak");
    let s = place(&mut m);
    let leaked: &mut u64 = std::thread::scope(|sc| {
        sc.spawn(|| {
            let g = Box::leak(Box::new(s.lock.lock().unwrap()));
            &mut **g
        })
        .join()
        .unwrap()
    });
    *leaked = 11;
    // The scope ends before the thread's destructors run: give the
    // registry up to one check to notice, as a waiter would.
    let since = Instant::now();
    assert!(matches!(s.lock.lock(), Err(LockError::Abandoned)));
    assert!(since.elapsed() < DEATH_BOUND, "after {:?}", since.elapsed());
    for _ in 0..3 {
        assert!(matches!(s.lock.try_lock(), Err(LockError::Abandoned)));
        assert!(matches!(
            s.lock.lock_timeout(Duration::from_secs(5)),
            Err(LockError::Abandoned)
        ));
    }
    let e = s.lock.lock().map(drop).unwrap_err();
    assert!(e.to_string().contains("this process"), "{e}");
    *leaked += 1; // still the only reference in this process
    assert_eq!(*leaked, 12);
    // Another process recovers (its memory has no reference to the value).
    let other = fork(|| match s.lock.lock() {
        Err(LockError::OwnerDied(g)) if *g == 12 => {
            g.mark_consistent();
            0
        }
        _ => 1,
    });
    assert_eq!(other.wait(), 0);
}

/// A thread that exits with an `RLock` leaked (after a half-finished
/// update); a new thread that gets its tid must not re-enter: it gets
/// `Abandoned`, not `Ok` at depth 2, and holds nothing after.
#[test]
fn a_thread_with_a_recycled_tid_never_reenters_a_dead_threads_rlock() {
    let (_name, mut m) = segment("robust-recycle-rlock");
    m.init(LOCK, RLock::new(AtomicU32::new(0))).unwrap();
    let lock: &RLock<AtomicU32> = m.get(LOCK).unwrap();
    let dead_tid = std::thread::scope(|sc| {
        sc.spawn(|| {
            let g = lock.lock().unwrap();
            g.store(1, Ordering::SeqCst); // half-finished
            std::mem::forget(g);
            // SAFETY: gettid has no preconditions.
            unsafe { libc::gettid() as u32 }
        })
        .join()
        .unwrap()
    });
    // Let the thread finish exiting (scope returns before its destructors).
    wait_until(Duration::from_secs(5), || {
        !std::path::Path::new(&format!("/proc/self/task/{dead_tid}")).exists()
    })
    .expect("the holder thread never exited");
    let outcome = with_recycled_tid(dead_tid, || {
        let t0 = Instant::now();
        let r = lock.lock().map(|g| g.load(Ordering::SeqCst));
        let took = t0.elapsed();
        let try_r = lock.try_lock().map(drop);
        (
            matches!(r, Err(LockError::Abandoned)),
            took,
            matches!(try_r, Err(LockError::Abandoned)),
            lock.depth(),
            lock.raw().is_held_by_current_thread(),
        )
    });
    let Some((abandoned, took, try_abandoned, depth, held)) = outcome else {
        return;
    };
    assert!(
        abandoned,
        "the recycled tid re-entered the dead thread's lock"
    );
    assert!(took < DEATH_BOUND, "Abandoned after {took:?}");
    assert!(try_abandoned);
    assert_eq!(depth, 0);
    assert!(!held);
    assert!(lock.is_locked(), "still the dead thread's");
}

/// A waiter whose lock's dead owner had its tid recycled to a live
/// thread: it must not wait for that thread. Same process: `Abandoned`;
/// another process: `OwnerDied`, within 50 ms.
#[test]
fn a_dead_owners_recycled_tid_does_not_look_alive() {
    let (_name, mut m) = segment("robust-recycle-wait");
    let s = place(&mut m);
    // 1. This process: a leaked guard, then the tid goes to a live thread.
    let dead_tid = std::thread::scope(|sc| {
        sc.spawn(|| {
            std::mem::forget(s.lock.lock().unwrap());
            // SAFETY: gettid has no preconditions.
            unsafe { libc::gettid() as u32 }
        })
        .join()
        .unwrap()
    });
    wait_until(Duration::from_secs(5), || {
        !std::path::Path::new(&format!("/proc/self/task/{dead_tid}")).exists()
    })
    .expect("the holder thread never exited");
    let lock = s.lock;
    let outcome = std::thread::scope(|sc| {
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let waiter = sc.spawn(move || {
            // An error: the tid did not land (the body was dropped unrun).
            ready_rx.recv().ok()?;
            let t0 = Instant::now();
            let r = lock.lock().map(drop);
            let took = t0.elapsed();
            let _ = stop_tx.send(());
            Some((matches!(r, Err(LockError::Abandoned)), took))
        });
        // The recycled tid stays alive until the waiter is done.
        with_recycled_tid(dead_tid, move || {
            ready_tx.send(()).unwrap();
            let _ = stop_rx.recv_timeout(Duration::from_secs(10));
        });
        waiter.join().unwrap()
    });
    let Some((abandoned, took)) = outcome else {
        return;
    };
    assert!(
        abandoned,
        "expected Abandoned while a live thread has the dead owner's tid"
    );
    assert!(took < DEATH_BOUND, "Abandoned after {took:?}");
    // 2. Another process: its holder is SIGKILLed and a live thread here
    // gets its tid (the child's pid); the waiter gets OwnerDied.
    let (_name2, mut m2) = segment("robust-recycle-other");
    let s2 = place(&mut m2);
    let child = dying_holder(&s2, 21);
    let child_tid = child.pid() as u32;
    assert_eq!(child.kill(), 128 + libc::SIGKILL);
    let got = with_recycled_tid(child_tid, || {
        let t0 = Instant::now();
        match s2.lock.lock() {
            Err(LockError::OwnerDied(g)) => {
                let took = t0.elapsed();
                let v = *g;
                g.mark_consistent();
                Some((took, v))
            }
            _ => None,
        }
    });
    if let Some(r) = got {
        let (took, v) = r.expect("expected OwnerDied from a thread that has the dead owner's tid");
        assert_eq!(v, 21);
        assert!(took < DEATH_BOUND, "OwnerDied after {took:?}");
    }
}
