//! How a waiter spends the moments before it sleeps, in [`Word`]'s
//! `lock_slow` and in [`Condvar`]'s `block`: spin while spinning can pay,
//! otherwise give the CPU to whoever it waits for, and only then sleep on
//! the futex.
//!
//! Spinning pays only while the thread we wait for runs on another CPU: a
//! futex sleep and wake-up cost microseconds that a spin of a few hundred
//! nanoseconds saves. When it cannot run (it shares our CPU, or more
//! threads are runnable than there are CPUs), every spin burns the time
//! it needs: it is better to `sched_yield` to it, which on a run queue
//! with nobody else returns at once (~0.2 µs) and otherwise runs the
//! others first (~1 µs and up).
//!
//! Neither the partner's CPU nor our own affinity mask tells which case
//! holds (a process pinned to one CPU may wait for one pinned to another),
//! so each thread learns it from outcomes, in a credit:
//!
//! ```text
//! event                                  credit          means
//! -------------------------------------  --------------  ---------------------------
//! a spin ended the wait                  FULL            the partner runs elsewhere
//! a spin ran out                         - SPIN_FAILED   it did not get there in time
//! a yield came back at once (< SWITCHED) + 1             nobody else wanted this CPU:
//!                                                          the partner runs elsewhere
//!                                                          or sleeps
//! a yield ran someone else               unchanged       (that is why we yield)
//! ```
//!
//! A waiter spins only with a credit; otherwise it goes straight to its
//! yields (a few, each followed by a look), then sleeps. Two spins that ran
//! out stop spinning; one yield that came back at once starts it again,
//! so a thread that moves to an idle CPU spins again at its next wait.
//! The credit is per thread (a thread-local byte): nothing is added to the
//! lock word or the condition variable, and the fast paths never read it.
//!
//! Under `--cfg loom` the policy is fixed (spin, then yield, once each),
//! so that model executions are deterministic.
//!
//! [`Word`]: super::word::Word
//! [`Condvar`]: super::Condvar

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The credit after a spin that ended its wait.
const FULL: u8 = 8;
/// What a spin that ran out costs.
const SPIN_FAILED: u8 = 4;
/// A yield shorter than this ran nobody else (measured on Linux 6, x86-64:
/// ~0.2 µs alone on a run queue, ~1.2 µs through another process and back).
const SWITCHED: Duration = Duration::from_nanos(600);
/// How many times a waiter yields before it sleeps on the futex. Each
/// yield may run the others for a whole time slice, so a few are enough.
pub(crate) const YIELDS: u32 = if cfg!(loom) { 1 } else { 4 };

thread_local! {
    /// This thread's spin credit (see the module docs).
    static CREDIT: Cell<u8> = const { Cell::new(FULL) };
}

/// Whether the calling thread should spin before it yields and sleeps.
#[inline]
pub(crate) fn should_spin() -> bool {
    cfg!(loom) || CREDIT.with(Cell::get) > 0
}

/// Records that a spin ended the wait.
#[inline]
pub(crate) fn spin_paid() {
    if !cfg!(loom) {
        CREDIT.with(|c| c.set(FULL));
    }
}

/// Records that a spin ran out without ending the wait.
#[inline]
pub(crate) fn spin_failed() {
    if !cfg!(loom) {
        CREDIT.with(|c| c.set(c.get().saturating_sub(SPIN_FAILED)));
    }
}

/// Yields the CPU with `yield_cpu` (the scheduler's `sched_yield`, or the
/// model's), and learns from how long that took.
#[inline]
pub(crate) fn yield_now(yield_cpu: fn()) {
    if cfg!(loom) {
        yield_cpu();
        return;
    }
    let t0 = Instant::now();
    yield_cpu();
    if t0.elapsed() < SWITCHED {
        CREDIT.with(|c| c.set(c.get().saturating_add(1).min(FULL)));
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn credit() -> u8 {
        CREDIT.with(Cell::get)
    }

    #[test]
    fn two_failed_spins_stop_spinning_and_a_paid_one_restores_it() {
        CREDIT.with(|c| c.set(FULL));
        assert!(should_spin());
        spin_failed();
        assert!(should_spin());
        spin_failed();
        assert!(!should_spin());
        spin_failed();
        assert_eq!(credit(), 0, "saturates at zero");
        spin_paid();
        assert_eq!(credit(), FULL);
    }

    #[test]
    fn a_yield_that_ran_nobody_else_earns_credit_and_one_that_did_not_earns_none() {
        CREDIT.with(|c| c.set(FULL));
        spin_failed();
        spin_failed();
        assert_eq!(credit(), 0);
        yield_now(|| {});
        assert_eq!(credit(), 1, "an instant yield: nobody else wanted this CPU");
        assert!(should_spin());
        spin_failed();
        yield_now(|| std::thread::sleep(SWITCHED * 4));
        assert_eq!(credit(), 0, "a yield that ran someone else");
        for _ in 0..2 * FULL {
            yield_now(|| {});
        }
        assert_eq!(credit(), FULL, "bounded");
    }
}
