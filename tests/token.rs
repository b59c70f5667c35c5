//! Death as an event (`shmutils/src/lock/token.rs`): a waiter blocked on a
//! lock that a live thread of another process holds watches that thread's
//! token (a robust pthread mutex the holder keeps locked) and sleeps
//! without waking until the lock is released or the kernel marks the
//! token at the holder's death.
//!
//! Each test puts a token and `Lock<u64>`s in one named segment of one
//! page, the token at offset 64, and installs a resolver that finds every
//! owner's token there (the registry's job in the library). The holders
//! are forked children.

mod lock_support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lock_support::{await_flag, park, segment, wait_until};
use shmutils::lock::token_test_hooks as token;
use shmutils::{Lock, LockError, MappedMemory};
use shmutils_workspace::{fork, Child};

const FLAG: usize = 0;
const TOKEN: usize = 64;
const LOCK: usize = 128;
const LOCK2: usize = 192;
/// Set in a token word once a waiter sleeps on it.
const FUTEX_WAITERS: u32 = 0x8000_0000;

struct Shm<'a> {
    flag: &'a AtomicU32,
    /// The token's address (64-aligned: the mapping is page-aligned).
    token: usize,
    lock: &'a Lock<u64>,
    /// A second lock, for a holder of two.
    lock2: &'a Lock<u64>,
}

fn place(m: &mut MappedMemory) -> Shm<'_> {
    m.init(FLAG, AtomicU32::new(0)).unwrap();
    m.init(LOCK, Lock::new(0u64)).unwrap();
    m.init(LOCK2, Lock::new(0u64)).unwrap();
    // SAFETY: every lock this test process waits for is in a one-page
    // mapping laid out by `place`, whose token is at `TOKEN` (64 bytes,
    // 64-aligned); the test's mapping outlives every wait on its locks.
    unsafe { token::resolve_tokens_at_page_offset(TOKEN) };
    Shm {
        flag: m.get(FLAG).unwrap(),
        token: m.as_ptr() as usize + TOKEN,
        lock: m.get(LOCK).unwrap(),
        lock2: m.get(LOCK2).unwrap(),
    }
}

impl Shm<'_> {
    fn token_word(&self) -> u32 {
        // SAFETY: `token` is 64-aligned, inside the live mapping.
        unsafe { token::word(self.token) }
    }

    /// In a forked child: holds the token, then the lock (writing
    /// `value`), raises the flag to `flag`.
    fn hold_both(&self, value: u64, flag: u32) -> shmutils::LockGuard<'_, u64> {
        // SAFETY: nobody holds the token (the previous holder gave it up or
        // died), and this child never unmaps the segment: it gives the
        // token up or dies.
        unsafe { token::hold(self.token) }.unwrap();
        let mut g = self.lock.lock().unwrap();
        *g = value;
        self.flag.store(flag, Ordering::SeqCst);
        g
    }

    /// Waits (at most 10 s) until a waiter has set `FUTEX_WAITERS` in the
    /// token word: it watches the token. If it never does, kills `holder`
    /// first (so that the waiter returns and the test ends) and panics.
    fn await_token_watch(&self, holder: &Child) {
        let watched = wait_until(Duration::from_secs(10), || {
            self.token_word() & FUTEX_WAITERS != 0
        });
        if watched.is_none() {
            // SAFETY: signalling our own child has no memory-safety effect.
            unsafe { libc::kill(holder.pid(), libc::SIGKILL) };
            panic!(
                "the waiter never watched the token (word {:#x})",
                self.token_word()
            );
        }
    }
}

/// What one thread spent while it did something: its context switches
/// (each wake-up from a sleep is one) and its CPU time.
#[derive(Debug)]
struct Cost {
    wakeups: u64,
    cpu: Duration,
}

fn switches() -> u64 {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    status
        .lines()
        .filter(|l| l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt"))
        .map(|l| l.split(':').nth(1).unwrap().trim().parse::<u64>().unwrap())
        .sum()
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for writes of one timespec.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `f` on the calling thread and says what it cost.
fn measure<R>(f: impl FnOnce() -> R) -> (R, Cost) {
    let (s0, c0) = (switches(), thread_cpu());
    let r = f();
    let cost = Cost {
        wakeups: switches() - s0,
        cpu: thread_cpu() - c0,
    };
    (r, cost)
}

#[test]
fn a_waiter_does_not_wake_while_the_token_holder_lives() {
    let (_name, mut m) = segment("token-sleep");
    let s = place(&mut m);
    let hold = Duration::from_secs(2);
    let holder = fork(|| {
        let g = s.hold_both(1, 1);
        std::thread::sleep(hold);
        drop(g);
        // SAFETY: this thread holds the token, still mapped.
        unsafe { token::give_up(s.token) }.unwrap();
        0
    });
    await_flag(s.flag, 1);
    let (got, cost) = std::thread::scope(|sc| {
        let waiter = sc.spawn(|| measure(|| s.lock.lock().map(|g| *g).map_err(|e| e.map(drop))));
        s.await_token_watch(&holder);
        waiter.join().unwrap()
    });
    assert_eq!(got, Ok(1), "the lock, cleanly, once the holder released it");
    assert_eq!(holder.wait(), 0);
    println!("blocked ~{hold:?} behind a live token holder: {cost:?}");
    assert!(
        cost.wakeups <= 5,
        "woke {} times in {hold:?} (slices would be ~400)",
        cost.wakeups
    );
    assert!(cost.cpu < Duration::from_millis(100), "{cost:?}");
}

#[test]
fn a_sigkilled_token_holder_wakes_the_waiter_with_owner_died() {
    let (_name, mut m) = segment("token-kill");
    let s = place(&mut m);
    let mut latencies = Vec::new();
    for round in 1..=20u32 {
        let holder = fork(|| {
            let _g = s.hold_both(u64::from(round), round);
            park()
        });
        await_flag(s.flag, round);
        let (outcome, killed_at) = std::thread::scope(|sc| {
            let waiter = sc.spawn(|| match s.lock.lock() {
                Err(LockError::OwnerDied(mut g)) => {
                    let at = Instant::now();
                    let seen = *g;
                    *g = 0;
                    g.mark_consistent();
                    Ok((seen, at))
                }
                other => Err(format!("{:?}", other.map(drop).map_err(|e| e.map(drop)))),
            });
            s.await_token_watch(&holder);
            let killed_at = Instant::now();
            // SAFETY: signalling our own child has no memory-safety effect.
            assert_eq!(unsafe { libc::kill(holder.pid(), libc::SIGKILL) }, 0);
            (waiter.join().unwrap(), killed_at)
        });
        assert_eq!(holder.wait(), 128 + libc::SIGKILL);
        let (seen, at) = outcome.expect("OwnerDied");
        assert_eq!(seen, u64::from(round), "the dead holder's write is visible");
        latencies.push(at - killed_at);
    }
    latencies.sort();
    println!(
        "SIGKILL -> OwnerDied over {} rounds: median {:?}, min {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[0],
        latencies[latencies.len() - 1]
    );
}

#[test]
fn a_deadline_still_ends_a_token_watch() {
    let (_name, mut m) = segment("token-deadline");
    let s = place(&mut m);
    let holder = fork(|| {
        let g = s.hold_both(3, 1);
        await_flag(s.flag, 2);
        drop(g);
        // SAFETY: this thread holds the token, still mapped.
        unsafe { token::give_up(s.token) }.unwrap();
        0
    });
    await_flag(s.flag, 1);
    let asked = Duration::from_millis(300);
    let t0 = Instant::now();
    let (r, cost) = measure(|| {
        s.lock
            .lock_timeout(asked)
            .map(drop)
            .map_err(|e| e.map(drop))
    });
    let took = t0.elapsed();
    assert_eq!(r, Err(LockError::TimedOut));
    assert!(took >= asked, "gave up after {took:?}");
    assert_ne!(s.token_word() & FUTEX_WAITERS, 0, "it watched the token");
    println!("lock_timeout({asked:?}) behind a live token holder: {cost:?}");
    assert!(cost.wakeups <= 5, "{cost:?}");
    s.flag.store(2, Ordering::SeqCst);
    assert_eq!(holder.wait(), 0);
    assert_eq!(*s.lock.lock().unwrap(), 3);
}

#[test]
fn a_token_given_up_by_a_live_holder_means_polling_not_spinning() {
    let (_name, mut m) = segment("token-give-up");
    let s = place(&mut m);
    let after = Duration::from_secs(1);
    let holder = fork(|| {
        let g = s.hold_both(4, 1);
        await_flag(s.flag, 2);
        // SAFETY: this thread holds the token, still mapped.
        unsafe { token::give_up(s.token) }.unwrap();
        std::thread::sleep(after);
        drop(g);
        0
    });
    await_flag(s.flag, 1);
    let (got, cost) = std::thread::scope(|sc| {
        let waiter = sc.spawn(|| measure(|| s.lock.lock().map(|g| *g).map_err(|e| e.map(drop))));
        s.await_token_watch(&holder);
        s.flag.store(2, Ordering::SeqCst);
        waiter.join().unwrap()
    });
    assert_eq!(
        got,
        Ok(4),
        "a live holder that gave its token up is no dead one"
    );
    assert_eq!(holder.wait(), 0);
    println!("blocked {after:?} behind a holder without a token: {cost:?}");
    // Slices of 5 ms: ~200 wake-ups and a few ms of CPU; a spin would
    // burn the whole second.
    assert!(cost.wakeups <= 400, "{cost:?}");
    assert!(cost.cpu < Duration::from_millis(200), "{cost:?}");
}

#[test]
fn a_holder_without_a_token_is_still_found_dead_by_polling() {
    let (_name, mut m) = segment("token-none");
    let s = place(&mut m);
    let holder = fork(|| {
        let mut g = s.lock.lock().unwrap();
        *g = 5;
        s.flag.store(1, Ordering::SeqCst);
        park()
    });
    await_flag(s.flag, 1);
    std::thread::scope(|sc| {
        let waiter = sc.spawn(|| match s.lock.lock() {
            Err(LockError::OwnerDied(g)) => Some(*g),
            _ => None,
        });
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(s.token_word(), 0, "a token never held is left alone");
        holder.kill();
        assert_eq!(waiter.join().unwrap(), Some(5));
    });
}

#[test]
fn every_waiter_on_a_dead_holders_token_hears_of_it() {
    // One holder, two locks, a waiter on each: the kernel wakes one
    // sleeper of the token; that one must wake the other, whose lock
    // nobody will ever release. A missed wake-up would leave it asleep
    // until the 10 s safety poll.
    let (_name, mut m) = segment("token-two");
    let s = place(&mut m);
    let holder = fork(|| {
        let _g = s.hold_both(6, 1);
        let _g2 = s.lock2.lock().unwrap();
        s.flag.store(2, Ordering::SeqCst);
        park()
    });
    await_flag(s.flag, 2);
    let outcome = |lock: &Lock<u64>| match lock.lock() {
        Err(LockError::OwnerDied(g)) => {
            g.mark_consistent();
            "OwnerDied".to_string()
        }
        other => format!("{:?}", other.map(drop).map_err(|e| e.map(drop))),
    };
    let (one, two) = std::thread::scope(|sc| {
        let one = sc.spawn(|| outcome(s.lock));
        s.await_token_watch(&holder);
        let two = sc.spawn(|| outcome(s.lock2));
        // Both asleep on the token (the second set nothing new: wait a
        // little for it to get there).
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: signalling our own child has no memory-safety effect.
        assert_eq!(unsafe { libc::kill(holder.pid(), libc::SIGKILL) }, 0);
        let both = wait_until(Duration::from_secs(5), || {
            one.is_finished() && two.is_finished()
        });
        assert!(both.is_some(), "a waiter slept on through the death");
        (one.join().unwrap(), two.join().unwrap())
    });
    assert_eq!(holder.wait(), 128 + libc::SIGKILL);
    assert_eq!((one.as_str(), two.as_str()), ("OwnerDied", "OwnerDied"));
}
