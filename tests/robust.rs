//! Owner-death recovery across real processes: a holder SIGKILLed, killed
//! while another process waits, a holder thread that exits, an `RLock`
//! holder dead at depth 3, a spawned holder, and an unreaped (zombie) one.
//! Each `OwnerDied` must come within 50 ms of the death (measured from the
//! moment the holder is reaped, or its thread joined).

mod lock_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lock_support::{await_flag, park, segment, wait_until, DEATH_BOUND};
use shmutils::{Lock, LockError, MappedMemory, RLock};
use shmutils_workspace::{fork, Child};

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
fn unrepaired_owner_died_guard_makes_the_lock_not_recoverable_for_everyone() {
    let (_name, mut m) = segment("robust-nr");
    let s = place(&mut m);
    dying_holder(&s, 7).kill();
    let g = expect_owner_died(s.lock, Instant::now());
    drop(g); // no mark_consistent
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
    // Re-entry while inconsistent works; the last unlock decides.
    let inner = lock.lock().unwrap();
    assert_eq!(lock.depth(), 2);
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
