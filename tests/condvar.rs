//! Condition variables across real processes: a producer and a consumer
//! hand 10,000 tokens back and forth; `notify_all` wakes 3 sleeping
//! processes.

mod lock_support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lock_support::{pin_to_one_cpu, segment, wait_until};
use shmutils::{Condvar, Lock};
use shmutils_workspace::fork;

const LOCK: usize = 64;
const CV: usize = 128;
const DONE: usize = 0;
const TOKENS: u64 = 10_000;

/// `[slot, received, sum]`: slot 0 = empty, otherwise a token.
type Mailbox = Lock<[u64; 3]>;

#[test]
fn producer_and_consumer_processes_hand_10000_tokens_back_and_forth() {
    hand_tokens(false);
}

/// On one CPU a waiter must yield to the notifier rather than spin.
#[test]
fn producer_and_consumer_on_one_cpu_hand_10000_tokens_back_and_forth() {
    hand_tokens(true);
}

fn hand_tokens(one_cpu: bool) {
    let (_name, mut m) = segment("cv-tokens");
    m.init(LOCK, Mailbox::new([0; 3])).unwrap();
    m.init(CV, Condvar::new()).unwrap();
    let lock: &Mailbox = m.get(LOCK).unwrap();
    let cv: &Condvar = m.get(CV).unwrap();
    let producer = fork(|| {
        if one_cpu {
            pin_to_one_cpu();
        }
        for token in 1..=TOKENS {
            let Ok(g) = lock.lock() else { return 1 };
            // Wait until the consumer handed the slot back (empty).
            let Ok(mut g) = cv.wait_while(g, |b| b[0] != 0) else {
                return 2;
            };
            g[0] = token;
            cv.notify_one();
        }
        0
    });
    let consumer = fork(|| {
        if one_cpu {
            pin_to_one_cpu();
        }
        for expected in 1..=TOKENS {
            let Ok(g) = lock.lock() else { return 1 };
            let Ok(mut g) = cv.wait_while(g, |b| b[0] == 0) else {
                return 2;
            };
            if g[0] != expected {
                return 3; // lost or reordered
            }
            g[1] += 1;
            g[2] += g[0];
            g[0] = 0;
            cv.notify_one();
        }
        0
    });
    assert_eq!(producer.wait(), 0, "producer");
    assert_eq!(consumer.wait(), 0, "consumer");
    let b = *lock.lock().unwrap();
    assert_eq!(b, [0, TOKENS, TOKENS * (TOKENS + 1) / 2]);
}

#[test]
fn notify_all_wakes_three_waiting_processes() {
    let (_name, mut m) = segment("cv-all");
    m.init(DONE, AtomicU32::new(0)).unwrap();
    // [go, waiting]
    m.init(LOCK, Lock::new([0u32; 2])).unwrap();
    m.init(CV, Condvar::new()).unwrap();
    let done: &AtomicU32 = m.get(DONE).unwrap();
    let lock: &Lock<[u32; 2]> = m.get(LOCK).unwrap();
    let cv: &Condvar = m.get(CV).unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            fork(|| {
                let Ok(mut g) = lock.lock() else { return 1 };
                g[1] += 1;
                while g[0] == 0 {
                    g = match cv.wait(g) {
                        Ok(g) => g,
                        Err(_) => return 2,
                    };
                }
                done.fetch_add(1, Ordering::SeqCst);
                0
            })
        })
        .collect();
    let all_waiting = wait_until(Duration::from_secs(10), || lock.lock().unwrap()[1] == 3);
    assert!(all_waiting.is_some(), "the children never all waited");
    // Long past their spin: they sleep in futex_wait now.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        done.load(Ordering::SeqCst),
        0,
        "nobody left before the notify"
    );
    lock.lock().unwrap()[0] = 1;
    cv.notify_all(); // one notification must release all three
    let woke = wait_until(Duration::from_secs(5), || done.load(Ordering::SeqCst) == 3);
    assert!(
        woke.is_some(),
        "notify_all woke {} of 3 waiters",
        done.load(Ordering::SeqCst)
    );
    for c in children {
        assert_eq!(c.wait(), 0);
    }
}

#[test]
fn wait_timeout_in_another_process_times_out_and_then_sees_the_notify() {
    let (_name, mut m) = segment("cv-timeout");
    m.init(LOCK, Lock::new(0u32)).unwrap();
    m.init(CV, Condvar::new()).unwrap();
    let lock: &Lock<u32> = m.get(LOCK).unwrap();
    let cv: &Condvar = m.get(CV).unwrap();
    let child = fork(|| {
        let Ok(g) = lock.lock() else { return 1 };
        let Ok((mut g, r)) = cv.wait_timeout(g, Duration::from_millis(20)) else {
            return 2;
        };
        if !r.timed_out() || *g != 0 {
            return 3;
        }
        *g = 2; // tell the parent to notify
        let Ok((g, r)) = cv.wait_timeout_while(g, Duration::from_secs(10), |v| *v != 1) else {
            return 4;
        };
        if r.timed_out() || *g != 1 {
            return 5;
        }
        0
    });
    let asked = wait_until(Duration::from_secs(10), || *lock.lock().unwrap() == 2);
    assert!(asked.is_some(), "the child's first wait never timed out");
    *lock.lock().unwrap() = 1;
    cv.notify_one();
    assert_eq!(child.wait(), 0);
}

/// Eight processes killed while asleep in `wait` leave eight counted
/// sleepers behind; the next notify finds nobody to wake and takes them off
/// (each would otherwise cost every later notify a system call).
#[test]
fn sleepers_killed_in_their_sleep_are_taken_off_by_the_next_notify() {
    let (_name, mut m) = segment("cv-killed");
    m.init(LOCK, Lock::new(0u32)).unwrap();
    m.init(CV, Condvar::new()).unwrap();
    let lock: &Lock<u32> = m.get(LOCK).unwrap();
    let cv: &Condvar = m.get(CV).unwrap();
    let children: Vec<_> = (0..8)
        .map(|_| {
            fork(|| {
                let Ok(mut g) = lock.lock() else { return 1 };
                *g += 1;
                loop {
                    g = match cv.wait(g) {
                        Ok(g) => g,
                        Err(_) => return 2,
                    };
                }
            })
        })
        .collect();
    let all_asleep = wait_until(Duration::from_secs(10), || {
        *lock.lock().unwrap() == 8 && cv.sleepers() == 8
    });
    assert!(all_asleep.is_some(), "sleepers counted: {}", cv.sleepers());
    for c in children {
        assert_eq!(c.kill(), 128 + libc::SIGKILL);
    }
    assert_eq!(
        cv.sleepers(),
        8,
        "dead sleepers stay counted until a notify"
    );
    cv.notify_one();
    assert_eq!(cv.sleepers(), 0);
}
