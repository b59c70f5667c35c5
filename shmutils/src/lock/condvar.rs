//! [`Condvar`]: a process-shared condition variable on a futex sequence
//! word.
//!
//! ```text
//! seq       bumped by every notify; a waiter sleeps while it is unchanged
//! sleepers  epoch (high 8 bits) | waiters inside (or about to enter)
//!           futex_wait (low 24 bits); a notify makes the futex_wake
//!           system call only when the count is non-zero
//! ```
//!
//! **A killed sleeper heals.** A waiter killed inside `futex_wait` never
//! takes itself off `sleepers`, which would make every later notify pay a
//! system call. A notify whose `futex_wake` woke nobody knows that each
//! waiter it counted is either dead or about to see the new `seq` and stay
//! awake (it re-checks `seq` after counting itself, and the notify bumped it
//! first), so it starts a new epoch with a count of zero. A waiter takes
//! itself off the count only in the epoch it counted itself in, so a late
//! leaver never takes off a newer sleeper's count (that would let a notify
//! skip a live sleeper). Any number of killed sleepers cost the next notify
//! one system call, then nothing.
//!
//! A waiter reads `seq` while holding the lock, unlocks, then spins on
//! `seq` for a few microseconds (a hand-off between running processes is
//! far cheaper than a futex sleep and wake) if its spins have been paying,
//! yields the CPU a few times (a notifier on the same CPU runs only then;
//! see `spin.rs`), and only then counts itself in `sleepers` and sleeps. Spurious wake-ups are possible (`notify_one` may
//! release every spinning waiter), as with every condition variable; use
//! [`Condvar::wait_while`]. Garbage in either word costs at most a spurious
//! wake-up or a needless system call.

use std::hint::spin_loop;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::typed::LockGuard;
use super::{spin, LockResult};
use crate::shared::{Fingerprint, Shared};
use crate::sys;

/// The count bits of `sleepers`; the bits above are the epoch.
const COUNT: u32 = (1 << 24) - 1;
const EPOCH_SHIFT: u32 = 24;

/// How long a waiter spins on the sequence word when it spins.
const SPIN_FOR: Duration = Duration::from_micros(20);
/// The longest a waiter sleeps before it looks at the sequence word again.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// A process-shared condition variable, used with a [`Lock`](super::Lock).
///
/// ```
/// use shmutils::{Condvar, Lock};
/// let (ready, cv) = (Lock::new(false), Condvar::new());
/// std::thread::scope(|s| {
///     s.spawn(|| { *ready.lock().unwrap() = true; cv.notify_all(); });
///     let g = cv.wait_while(ready.lock().unwrap(), |r| !*r).unwrap();
///     assert!(*g);
/// });
/// ```
#[derive(Debug, Default)]
#[repr(C)]
pub struct Condvar {
    seq: AtomicU32,
    sleepers: AtomicU32,
}

/// Whether a timed wait returned because its time ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitTimeoutResult(bool);

impl WaitTimeoutResult {
    /// True if the wait ended by timeout rather than a notification.
    pub fn timed_out(&self) -> bool {
        self.0
    }
}

impl Condvar {
    /// A condition variable nobody waits on (all zero bytes are one too).
    pub const fn new() -> Condvar {
        Condvar {
            seq: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
        }
    }

    /// Releases the guard's lock, waits for a notification (or a spurious
    /// wake-up), and takes the lock again.
    ///
    /// The lock is released like a guard drop: if it was taken from a dead
    /// owner and not marked consistent, it stays inconsistent (and taking
    /// it back reports `OwnerDied` again).
    ///
    /// # Errors
    /// As [`Lock::lock`](super::GenericLock::lock) when taking the lock back:
    /// [`LockError::OwnerDied`](super::LockError::OwnerDied) with the guard
    /// if a holder died meanwhile, or
    /// [`LockError::NotRecoverable`](super::LockError::NotRecoverable).
    ///
    /// # Panics
    /// If the guard was inherited across `fork` (see [`LockGuard`]).
    pub fn wait<'a, T>(&self, guard: LockGuard<'a, T>) -> LockResult<LockGuard<'a, T>> {
        let lock = guard.lock_ref();
        // Relaxed: read under the lock; a notifier that changes the
        // condition takes the lock after our unlock, so its bump comes later
        // in `seq`'s modification order than the value we read.
        let seq = self.seq.load(Ordering::Relaxed);
        drop(guard);
        self.block(seq, None);
        lock.lock()
    }

    /// As [`wait`](Self::wait), for at most `timeout`.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    pub fn wait_timeout<'a, T>(
        &self,
        guard: LockGuard<'a, T>,
        timeout: Duration,
    ) -> LockResult<(LockGuard<'a, T>, WaitTimeoutResult)> {
        let lock = guard.lock_ref();
        let seq = self.seq.load(Ordering::Relaxed);
        drop(guard);
        let timed_out = self.block(seq, Instant::now().checked_add(timeout));
        match lock.lock() {
            Ok(g) => Ok((g, WaitTimeoutResult(timed_out))),
            Err(e) => Err(e.map(|g| (g, WaitTimeoutResult(timed_out)))),
        }
    }

    /// Waits while `condition` holds, re-checking it under the lock after
    /// every wake-up. Returns with the lock held and `condition` false.
    ///
    /// # Errors
    /// As [`wait`](Self::wait); an `OwnerDied` guard comes back without the
    /// condition re-checked.
    pub fn wait_while<'a, T>(
        &self,
        mut guard: LockGuard<'a, T>,
        mut condition: impl FnMut(&mut T) -> bool,
    ) -> LockResult<LockGuard<'a, T>> {
        while condition(&mut guard) {
            guard = self.wait(guard)?;
        }
        Ok(guard)
    }

    /// As [`wait_while`](Self::wait_while), for at most `timeout` in all.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    pub fn wait_timeout_while<'a, T>(
        &self,
        mut guard: LockGuard<'a, T>,
        timeout: Duration,
        mut condition: impl FnMut(&mut T) -> bool,
    ) -> LockResult<(LockGuard<'a, T>, WaitTimeoutResult)> {
        let start = Instant::now();
        while condition(&mut guard) {
            let Some(left) = timeout.checked_sub(start.elapsed()) else {
                return Ok((guard, WaitTimeoutResult(true)));
            };
            guard = self.wait_timeout(guard, left)?.0;
        }
        Ok((guard, WaitTimeoutResult(false)))
    }

    /// How many waiters are counted as asleep: a hint for diagnostics (a
    /// notify makes a system call only when it is non-zero; waiters killed
    /// in their sleep stay counted until a notify finds nobody to wake).
    pub fn sleepers(&self) -> u32 {
        self.sleepers.load(Ordering::Relaxed) & COUNT
    }

    /// Wakes at least one waiter, if any (spinning waiters all notice).
    pub fn notify_one(&self) {
        self.notify(1);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.notify(u32::MAX);
    }

    fn notify(&self, n: u32) {
        // SeqCst (both): with the waiter's SeqCst `sleepers` increment and
        // `seq` re-check in `block`, either we see its count and wake it, or
        // it sees our bump and does not sleep.
        self.seq.fetch_add(1, Ordering::SeqCst);
        let counted = self.sleepers.load(Ordering::SeqCst);
        if counted & COUNT != 0 && sys::futex_wake(&self.seq, n) == 0 {
            // Nobody was asleep: every counted waiter is dead or leaving.
            // A new epoch, counting from zero (unless someone counted
            // themselves since: then the next notify looks again).
            let _ = self.sleepers.compare_exchange(
                counted,
                (counted & !COUNT).wrapping_add(1 << EPOCH_SHIFT),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Takes one off the count of `epoch` (the value the waiter's increment
    /// returned), if that epoch still runs and its count is not zero.
    fn leave(&self, counted_in: u32) {
        let epoch = counted_in & !COUNT;
        // Relaxed: the count only decides whether a notify makes a system
        // call; `seq` carries the ordering.
        let _ = self
            .sleepers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                (v & !COUNT == epoch && v & COUNT != 0).then(|| v - 1)
            });
    }

    /// Waits until `seq` moves on from `seen` (or a spurious wake-up, or
    /// `deadline`); returns whether the deadline passed.
    fn block(&self, seen: u32, deadline: Option<Instant>) -> bool {
        // Relaxed looks: the wait only needs to notice the bump; what the
        // notifier did is ordered by the lock the caller takes next.
        let moved = || self.seq.load(Ordering::Relaxed) != seen;
        // Spin only while this thread's spins have been paying, then yield
        // a few times (see `spin.rs`: a notifier that shares our CPU runs
        // only if we let it).
        if spin::should_spin() {
            let spin_until = Instant::now() + SPIN_FOR;
            'spin: loop {
                for _ in 0..64 {
                    if moved() {
                        spin::spin_paid();
                        return false;
                    }
                    spin_loop();
                }
                if Instant::now() >= spin_until {
                    break 'spin;
                }
            }
            spin::spin_failed();
        }
        for _ in 0..spin::YIELDS {
            if deadline.is_some_and(|at| Instant::now() >= at) {
                break;
            }
            spin::yield_now(sys::sched_yield);
            if moved() {
                return false;
            }
        }
        // Sleep in slices of at most MAX_SLEEP, re-checking `seq` after
        // each: `sleepers` lives in shared memory, and a peer that scribbled
        // a 0 over it makes `notify` skip the wake. Garbage then costs up to
        // one slice of latency, never a waiter asleep for good.
        loop {
            let timeout = match deadline {
                None => MAX_SLEEP,
                Some(at) => match at.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(MAX_SLEEP),
                    _ => return true,
                },
            };
            // SeqCst: see `notify`. (A count that reached 2^24 would carry
            // into the epoch: then a spurious system call or wake-up, no
            // more.)
            let counted_in = self.sleepers.fetch_add(1, Ordering::SeqCst);
            let slept = if self.seq.load(Ordering::SeqCst) == seen {
                sys::futex_wait(&self.seq, seen, Some(timeout))
            } else {
                sys::FutexWait::Changed
            };
            self.leave(counted_in);
            if slept != sys::FutexWait::TimedOut || self.seq.load(Ordering::Relaxed) != seen {
                return false;
            }
        }
    }
}

// SAFETY: two AtomicU32, valid for every bit pattern (garbage costs a
// spurious wake-up or a needless syscall), no addresses.
unsafe impl Shared for Condvar {
    const NAME: &'static str = "Condvar";
    const FINGERPRINT: u64 = Fingerprint::new("Condvar")
        .u64(1)
        .u64(std::mem::size_of::<Condvar>() as u64)
        .finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::Lock;

    #[test]
    fn timeout_without_notify() {
        let (l, cv) = (Lock::new(()), Condvar::new());
        let t0 = Instant::now();
        let (_g, r) = cv
            .wait_timeout(l.lock().unwrap(), Duration::from_millis(20))
            .unwrap();
        assert!(r.timed_out());
        assert!(t0.elapsed() >= Duration::from_millis(20));
        assert_eq!(cv.sleepers.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn notify_between_threads() {
        let (l, cv) = (Lock::new(0u32), Condvar::new());
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 1..=1000 {
                    let g = cv.wait_while(l.lock().unwrap(), |v| *v % 2 == 1).unwrap();
                    drop(g);
                    *l.lock().unwrap() = 2 * i - 1;
                    cv.notify_all();
                }
            });
            for i in 1..=1000 {
                let mut g = cv.wait_while(l.lock().unwrap(), |v| *v % 2 == 0).unwrap();
                *g = 2 * i;
                cv.notify_all();
            }
        });
        assert_eq!(*l.lock().unwrap(), 2000);
    }

    #[test]
    fn a_sleeper_count_left_by_dead_sleepers_heals_at_the_next_notify() {
        let cv = Condvar::new();
        // Eight sleepers that died in futex_wait: counted, never leaving.
        cv.sleepers.store(8, Ordering::SeqCst);
        cv.notify_one();
        assert_eq!(cv.sleepers(), 0);
        assert_eq!(
            cv.sleepers.load(Ordering::SeqCst) >> EPOCH_SHIFT,
            1,
            "a new epoch"
        );
    }

    #[test]
    fn a_late_leaver_never_takes_off_a_newer_sleepers_count() {
        let cv = Condvar::new();
        // A waiter counts itself (epoch 0) and is about to sleep ...
        let counted_in = cv.sleepers.fetch_add(1, Ordering::SeqCst);
        // ... a notify finds nobody asleep and starts epoch 1 ...
        cv.notify_one();
        // ... another waiter counts itself in epoch 1 and sleeps ...
        cv.sleepers.fetch_add(1, Ordering::SeqCst);
        // ... and the first one leaves late: the sleeper stays counted, so
        // the next notify wakes it.
        cv.leave(counted_in);
        assert_eq!(cv.sleepers(), 1);
    }

    #[test]
    fn a_scribbled_sleeper_count_delays_but_never_loses_a_wake_up() {
        let (l, cv) = (Lock::new(false), Condvar::new());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let g = cv.wait_while(l.lock().unwrap(), |ready| !*ready).unwrap();
                tx.send(*g).unwrap();
            });
            // Let the waiter fall asleep, then play a peer that zeroes the
            // sleeper count: notify_all will skip the futex wake.
            while cv.sleepers.load(Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            cv.sleepers.store(0, Ordering::SeqCst);
            *l.lock().unwrap() = true;
            cv.notify_all();
            // The waiter's slice ends and it sees the sequence word moved.
            let woke = rx.recv_timeout(MAX_SLEEP * 20);
            if woke.is_err() {
                // Release the waiter so the scope can end and report.
                cv.sleepers.store(1, Ordering::SeqCst);
                cv.notify_all();
            }
            assert_eq!(woke, Ok(true), "the waiter missed the wake-up");
        });
    }
}
