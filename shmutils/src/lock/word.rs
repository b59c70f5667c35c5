//! The lock word that [`RawLock`](super::RawLock) and
//! [`RawRLock`](super::RawRLock) are built on: a 64-bit state in shared
//! memory (the futex sleeps on its low half) and, beside it, the record of
//! who holds it.
//!
//! # State
//!
//! ```text
//!  63       62            61               22..=60                0..=21
//! +--------+-------------+----------------+----------------------+-------------+
//! |WAITERS | INCONSISTENT| NOT_RECOVERABLE| owner's tag (39 bits)| owner tid   |
//! +--------+-------------+----------------+----------------------+-------------+
//!
//! state (me = tag|tid)         meaning                          who moves it on
//! ---------------------------  -------------------------------  ----------------------------------
//! 0 [+WAITERS]                 unlocked                         lock: CAS -> me, publish (WAITERS
//!                                                                 kept only by a waiter that slept)
//! INCONSISTENT [+WAITERS]      unlocked, an owner died and      lock: CAS -> me|INCONSISTENT,
//!                              nobody repaired the data yet       publish; caller gets OwnerDied
//! me                           locked, nobody sleeps            unlock: subtract me -> 0
//!                                                               waiter: CAS -> me|WAITERS
//! me + WAITERS                 locked, waiters may sleep        unlock: subtract me, wake 1
//! me + INCONSISTENT [+W]       locked by an OwnerDied taker     mark_consistent: clear the bit
//!                                                               unlock: subtract me (stays
//!                                                                 INCONSISTENT)
//!                                                               give up: swap -> NOT_RECOVERABLE,
//!                                                                 wake all
//! tag|tid [+flags], owner dead see "Owner death" below          a waiter of another process: CAS
//!                                                               from the exact state seen ->
//!                                                               me|INCONSISTENT|(WAITERS)
//! NOT_RECOVERABLE [+anything]  a holder gave up; final          nothing (re-initialise the lock)
//! ```
//!
//! **The tag names the thread, not just its tid.** Every thread draws a
//! 39-bit tag once (a hash of its start time, pid, serial and a random
//! per-process value; see `process.rs`), and its locked value is
//! `tag << 22 | tid`. The kernel recycles tids, but a thread that inherits
//! a dead owner's tid has another tag, so the state it writes differs from
//! the dead owner's: a compare-and-swap from a state a waiter examined
//! fails if any other thread, even one with the examined owner's tid, took
//! the lock since (the examined owner itself is dead and takes nothing).
//! The residue is a tag collision between two threads that share a tid:
//! 2^-39 per such pair. A thread's locked value is the same every time,
//! so the unlocked state is always 0 and the fast path needs no load: one
//! CAS from 0 and, at unlock, one `fetch_sub` of the locked value. The
//! futex sleeps on the low 32 bits (the tid and 10 tag bits), which every
//! acquisition and release changes.
//!
//! # Owner record
//!
//! ```text
//! owner   = tag << 22 | tid        (the state's owner bits: binds the record to it)
//! pid     = the owner's process id
//! detail  = start time (40 bits) << 24 | serial (23 bits) << 1 | registered
//! ```
//!
//! After its CAS the new owner stores `detail` and `pid`, then `owner`
//! (Release); a thread that finds its own record there already (it held
//! the lock last) stores nothing. The record *belongs to* the state `s`
//! when `owner` equals `s`'s owner bits; otherwise `s`'s owner is between
//! its CAS and its publication (it has no guard yet), died there, or the
//! bytes are garbage. The owner publishes before `lock` returns, so every
//! handed-out guard has its record published.
//!
//! `start` is the thread's start time (field 22 of
//! `/proc/PID/task/TID/stat`, clock ticks since boot): a later thread with
//! the same tid has another, except one started within the same tick.
//! `serial` numbers the threads of a process, and `registered` says that
//! the thread is in its process's registry (`process.rs`), which a
//! thread-local destructor updates when the thread exits: for owners of
//! the caller's own process, liveness is exact.
//!
//! # Owner death
//!
//! A waiter looks at the owner after each futex sleep that no release
//! ended (at most [`SLICE`]), and at once in `try_lock` and when a
//! `lock_timeout` expires. Liveness is asked of the kernel (`/proc`, or
//! the registry for its own process's threads), and a thread whose death
//! the kernel reports is taken to have made all its stores before it (the
//! kernel's exit path and the system call that observes it are full
//! barriers).
//!
//! An owner of another process that holds a token (`token.rs`) is not
//! polled: the waiter sleeps in `futex_waitv` on the state and the token
//! at once, and judges the owner when the token reports its death (or
//! stops vouching for it), after a safety poll, or at the deadline.
//!
//! - Record belongs to the state, owner alive (same pid, tid, start time,
//!   and, in this process, a registered serial): wait.
//! - Record belongs, owner dead, **a thread of another process**: take
//!   over (CAS from the exact state examined), the caller gets `OwnerDied`
//!   with the guard.
//! - Record belongs, owner dead, **a thread of this process**: it exited
//!   with its guard leaked, so a reference from it may still be in use
//!   here. The state is left as it is and the caller gets `Abandoned`, no
//!   guard: this process does not get the lock while the dead thread's
//!   state is there.
//! - Record does not belong: if no thread could be the owner (the tid is
//!   free, a zombie, or its thread started after the waiter first saw this
//!   state), the waiter reads the record once more (the owner may have
//!   published just before it died) and judges that; if it still does not
//!   belong, the owner died before it had a guard, and the waiter takes
//!   over with `OwnerDied` (sound in any process). Otherwise it waits.
//!
//! Garbage reads the same way: a state with a tid that no live thread
//! could own is a dead owner; one naming a live thread waits for it, as
//! for any holder (`lock_timeout` bounds that).

use std::hint::spin_loop;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::atomic::{Atom, Kernel, Liveness, Oracle, Owner};
use super::token::{Watch, WATCH_POLL};
use super::{spin, LockError};
pub(crate) use crate::process::current_identity;
use crate::process::ThreadIdentity;

/// Some thread may sleep in `futex_wait` on the word.
pub(crate) const WAITERS: u64 = 1 << 63;
/// An owner died and nobody has repaired the data yet (survives unlock).
pub(crate) const INCONSISTENT: u64 = 1 << 62;
/// A holder gave up repairing: the lock is unusable, for good.
pub(crate) const NOT_RECOVERABLE: u64 = 1 << 61;
/// The owner's tag and tid: zero when unlocked.
pub(crate) const OWNER_MASK: u64 = (1 << 61) - 1;
/// The owner's tid. Linux tids are below `PID_MAX_LIMIT` = 2^22.
pub(crate) const TID_MASK: u64 = (1 << 22) - 1;

/// How long a blocked waiter sleeps before it checks that the owner lives.
pub(crate) const SLICE: Duration = Duration::from_millis(5);
/// How many times a contended `lock` polls the word when it spins
/// (about 8 µs in all; measured in `benches/locks.rs`: polling every
/// iteration halves contended throughput, not spinning at all triples the
/// ping-pong round trip). Loom explores one poll.
const SPIN_ROUNDS: u32 = if cfg!(loom) { 1 } else { 12 };
/// The longest gap between two polls, in `spin_loop` hints (~30 ns each).
const MAX_GAP: u32 = 32;

/// Whether `v` is unlocked and consistent (the fast path's
/// precondition). `WAITERS` may be set: an unlock leaves it to the next
/// acquirer, which clears it unless it slept itself.
#[inline(always)]
fn clean_unlocked(v: u64) -> bool {
    v & !WAITERS == 0
}

/// The calling thread as a record names it.
fn owner_of_me(me: &ThreadIdentity) -> Owner {
    Owner {
        tid: me.tid,
        pid: me.pid,
        detail: me.detail,
    }
}

/// When a contended acquisition gives up.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Deadline {
    /// `try_lock`: never sleep.
    Now,
    /// `lock`: never give up.
    Never,
    /// `lock_timeout`.
    At(Instant),
}

impl Deadline {
    /// The deadline `timeout` from now (`Never` if it overflows).
    pub(crate) fn after(timeout: Duration) -> Deadline {
        Instant::now()
            .checked_add(timeout)
            .map_or(Deadline::Never, Deadline::At)
    }
}

/// What a waiter concludes about the owner of the state it examined.
enum Verdict {
    Alive,
    /// Dead in another process, or dead before it had a guard: take over.
    TakeOver,
    /// Dead in this process with its guard leaked.
    Abandoned,
}

/// The lock word: state and owner record.
#[derive(Debug, Default)]
#[repr(C)]
pub(crate) struct Word<A = AtomicU64> {
    state: A,
    owner: A,
    pid: A,
    detail: A,
}

impl Word<AtomicU64> {
    pub(crate) const fn new() -> Word {
        Word {
            state: AtomicU64::new(0),
            owner: AtomicU64::new(0),
            pid: AtomicU64::new(0),
            detail: AtomicU64::new(0),
        }
    }

    /// Takes the lock for the calling thread, or says why not.
    /// `Err(OwnerDied(()))` means the caller now holds it, inconsistent.
    #[inline(always)]
    pub(crate) fn lock(&self, deadline: Deadline) -> Result<(), LockError<()>> {
        let me = current_identity();
        if self.try_fast(&me) {
            return Ok(());
        }
        self.lock_slow(&me, &Kernel, deadline)
    }

    /// Releases the lock held by the calling thread (see `unlock_by`).
    #[inline(always)]
    pub(crate) fn unlock(&self) {
        self.unlock_by(&current_identity());
    }

    /// Whether the calling thread owns the word.
    #[inline]
    pub(crate) fn held_by_current_thread(&self) -> bool {
        self.held_by(&current_identity())
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> &AtomicU64 {
        &self.state
    }
}

impl<A: Atom> Word<A> {
    /// The raw state (tests and `is_locked`).
    pub(crate) fn load(&self) -> u64 {
        self.state.load(Ordering::Relaxed)
    }

    /// Stores who took the state (the caller just did): nothing when the
    /// record is already the caller's (it held the lock last).
    #[inline(always)]
    fn publish(&self, me: &ThreadIdentity) {
        if self.owner.load(Ordering::Relaxed) == me.locked() {
            // Ours, whole: a later acquirer's record would have replaced
            // `owner`, and its stores happen-before our CAS (through its
            // unlock's Release), so this load would have seen it.
            return;
        }
        // A seqlock over the three words: `owner` is 0 while the others
        // change, so a reader that saw a field of this record and an
        // earlier `owner` notices (its second look at `owner` differs).
        self.owner.store(0, Ordering::Relaxed);
        // Release fence: orders the 0 above before the field stores below,
        // pairing with the Acquire fence in `owner_of`.
        A::fence(Ordering::Release);
        self.detail.store(me.detail, Ordering::Relaxed);
        self.pid.store(u64::from(me.pid), Ordering::Relaxed);
        // Release: a waiter that reads this record with Acquire (in
        // `owner_of`) also sees `detail` and `pid` stored just above.
        self.owner.store(me.locked(), Ordering::Release);
    }

    /// The owner record if it belongs to the state `v` and was read whole
    /// (not while a new owner was writing it).
    fn owner_of(&self, v: u64) -> Option<Owner> {
        // Acquire: pairs with the Release store in `publish`: the fields
        // read below are at least that record's.
        let owner = self.owner.load(Ordering::Acquire);
        if v & TID_MASK == 0 || owner != v & OWNER_MASK {
            return None;
        }
        let pid = (self.pid.load(Ordering::Relaxed) & TID_MASK) as u32;
        let detail = self.detail.load(Ordering::Relaxed);
        // Acquire fence: pairs with the Release fence in `publish`; had we
        // read a field of a newer record, this load sees its `owner` (0 or
        // the new value), not the one we started from.
        A::fence(Ordering::Acquire);
        if self.owner.load(Ordering::Relaxed) != owner {
            return None;
        }
        Some(Owner {
            tid: (v & TID_MASK) as u32,
            pid,
            detail,
        })
    }

    /// Whether `me` owns the word: its locked value is the state's, and
    /// its record is there. Relaxed loads suffice: if `me` owns the word,
    /// `me` wrote all of it (or found it its own), and a thread reads its
    /// own latest writes.
    pub(crate) fn held_by(&self, me: &ThreadIdentity) -> bool {
        let v = self.load();
        v & (OWNER_MASK | NOT_RECOVERABLE) == me.locked()
            && self.owner_of(v) == Some(owner_of_me(me))
    }

    /// The uncontended path: one CAS from 0, and a load of the record.
    #[inline(always)]
    pub(crate) fn try_fast(&self, me: &ThreadIdentity) -> bool {
        self.try_from(0, me)
    }

    /// An acquisition attempt from the state `v` believed current; a wrong
    /// belief costs one more CAS, from the value the failed one read.
    #[inline(always)]
    fn try_from(&self, mut v: u64, me: &ThreadIdentity) -> bool {
        for _ in 0..2 {
            if !clean_unlocked(v) {
                return false;
            }
            // Acquire: pairs with the Release RMW in `unlock_by`, so the
            // previous owner's critical section happens-before ours.
            // Release: pairs with a waiter's Acquire load of this state in
            // `lock_slow`, so what this thread did before (its very
            // existence, for the model's oracle; the kernel orders a
            // thread's creation before its first step) is visible to a
            // waiter that judges this state's owner. WAITERS is dropped: we
            // did not sleep (see the state table).
            match self
                .state
                .compare_exchange(v, me.locked(), Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.publish(me);
                    return true;
                }
                Err(current) => v = current,
            }
        }
        false
    }

    /// The contended path: spin, then sleep in slices, checking the owner.
    #[cold]
    pub(crate) fn lock_slow<O: Oracle>(
        &self,
        me: &ThreadIdentity,
        oracle: &O,
        deadline: Deadline,
    ) -> Result<(), LockError<()>> {
        if !matches!(deadline, Deadline::Now) && self.spin_then_yield(me) {
            return Ok(());
        }
        let mut slept = false;
        // try_lock looks at the owner at once; blocking calls after a slice.
        let mut check_owner = matches!(deadline, Deadline::Now);
        let mut attempts = 0u32;
        // The state whose owner had not published, and when we first saw it.
        let mut seen: Option<(u64, u64)> = None;
        // What the owners' tokens said (token.rs).
        let mut watch = Watch::default();
        loop {
            attempts = attempts.wrapping_add(1);
            // Acquire: pairs with the Release of the acquiring CAS that wrote
            // this state (and of the unlock before it), so the owner's
            // existence and everything before its CAS are visible to `judge`.
            let v = self.state.load(Ordering::Acquire);
            if v & NOT_RECOVERABLE != 0 {
                return Err(LockError::NotRecoverable);
            }
            if v & OWNER_MASK == 0 {
                let new = me.locked() | (v & INCONSISTENT) | if slept { WAITERS } else { 0 };
                // AcqRel: as in `try_from`.
                if self
                    .state
                    .compare_exchange(v, new, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    self.publish(me);
                    return if v & INCONSISTENT != 0 {
                        Err(LockError::OwnerDied(()))
                    } else {
                        Ok(())
                    };
                }
                if matches!(deadline, Deadline::Now) && attempts > 4 {
                    return Err(LockError::WouldBlock);
                }
                continue;
            }
            // The record is read only when it matters (our own locked
            // value, or a check): a waiter's read pulls the owner's line.
            let owner = if v & OWNER_MASK == me.locked() || check_owner {
                self.owner_of(v)
            } else {
                None
            };
            if owner == Some(owner_of_me(me)) {
                return Err(LockError::WouldDeadlock);
            }
            if check_owner {
                match self.judge(v, owner, me, oracle, &mut seen) {
                    Verdict::Alive => {}
                    Verdict::Abandoned => return Err(LockError::Abandoned),
                    Verdict::TakeOver => {
                        if self.take_over(v, me) {
                            return Err(LockError::OwnerDied(()));
                        }
                        continue;
                    }
                }
            }
            check_owner = attempts % 16 == 0; // also after many early wakes
            let (timeout, watched) = match deadline {
                Deadline::Now => return Err(LockError::WouldBlock),
                Deadline::Never => (SLICE, WATCH_POLL),
                Deadline::At(at) => {
                    let now = Instant::now();
                    if now >= at {
                        let owner = owner.or_else(|| self.owner_of(v));
                        match self.judge(v, owner, me, oracle, &mut seen) {
                            Verdict::Alive => {}
                            Verdict::Abandoned => return Err(LockError::Abandoned),
                            Verdict::TakeOver => {
                                if self.take_over(v, me) {
                                    return Err(LockError::OwnerDied(()));
                                }
                            }
                        }
                        return Err(LockError::TimedOut);
                    }
                    (SLICE.min(at - now), WATCH_POLL.min(at - now))
                }
            };
            if v & WAITERS == 0
                && self
                    .state
                    .compare_exchange(v, v | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            slept = true;
            // An owner of another process is watched through its token when
            // it holds one (token.rs): one sleep until the state changes or
            // the owner dies, judged then. Otherwise, slices.
            let elsewhere = || {
                owner
                    .or_else(|| self.owner_of(v))
                    .filter(|o| o.pid != me.pid)
            };
            let judge_now = match self
                .state
                .wait_low_watching(v as u32, elsewhere, watched, &mut watch)
            {
                Some(judge_now) => judge_now,
                None => self.state.wait_low(v as u32, timeout),
            };
            if judge_now {
                check_owner = true;
            }
        }
    }

    /// What a blocking acquisition does before it sleeps (see `spin.rs`):
    /// spin if this thread's spins have been paying (the owner is probably
    /// running on another CPU and about to release; a futex sleep and
    /// wake-up cost far more), then yield the CPU a few times (an owner
    /// that cannot run while we spin runs now). Stops early when others
    /// already sleep: then it joins them. Returns whether it took the lock.
    fn spin_then_yield(&self, me: &ThreadIdentity) -> bool {
        // Each look loads the state and, if it is free, tries to take it.
        // No ordering of its own: `try_from` is the acquiring CAS.
        let look = || {
            let w = self.load();
            (clean_unlocked(w) && self.try_from(w, me), w & WAITERS != 0)
        };
        if spin::should_spin() {
            // The gap between looks doubles (bounded), so a spinner steals
            // the owner's cache line only a few times.
            for round in 0..SPIN_ROUNDS {
                for _ in 0..(1u32 << round).min(MAX_GAP) {
                    spin_loop();
                }
                match look() {
                    (true, _) => {
                        spin::spin_paid();
                        return true;
                    }
                    (false, true) => return false,
                    (false, false) => {}
                }
            }
            spin::spin_failed();
        }
        for _ in 0..spin::YIELDS {
            spin::yield_now(A::yield_cpu);
            match look() {
                (true, _) => return true,
                (false, true) => return false,
                (false, false) => {}
            }
        }
        false
    }

    /// Decides about the owner of the locked state `v` (see "Owner death"
    /// in the module docs). `seen` remembers since when `v` has been seen
    /// without a record of its own.
    fn judge<O: Oracle>(
        &self,
        v: u64,
        owner: Option<Owner>,
        me: &ThreadIdentity,
        oracle: &O,
        seen: &mut Option<(u64, u64)>,
    ) -> Verdict {
        let by_record = |o: Owner| match oracle.owner(o, me) {
            Liveness::Alive => Verdict::Alive,
            Liveness::DeadHere => Verdict::Abandoned,
            Liveness::DeadElsewhere => Verdict::TakeOver,
        };
        if let Some(o) = owner {
            return by_record(o);
        }
        let since = match *seen {
            Some((state, at)) if state == v => at,
            _ => {
                let at = oracle.now();
                *seen = Some((v, at));
                at
            }
        };
        if oracle.tid_could_own((v & TID_MASK) as u32, since) {
            return Verdict::Alive;
        }
        // The owner is gone. Had it published before it died, its record
        // is visible now (its death orders its stores before our look).
        match self.owner_of(v) {
            Some(o) => by_record(o),
            // It died between its CAS and `publish`: it never had a guard.
            None => Verdict::TakeOver,
        }
    }

    /// Takes over from a dead owner: CAS from the exact state examined, so
    /// of several waiters that saw the same death only one wins, and none
    /// wins if any other thread took the lock since (its locked value
    /// differs from the dead owner's). Keeps `WAITERS` so that our unlock
    /// wakes the others.
    fn take_over(&self, observed: u64, me: &ThreadIdentity) -> bool {
        let new = me.locked() | INCONSISTENT | (observed & WAITERS);
        // Acquire: whatever the dead owner's critical section published (see
        // the module docs on death and ordering) is visible to the repairer.
        // Release: as in `try_from`, for waiters judging the new owner.
        if self
            .state
            .compare_exchange(observed, new, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.publish(me);
            true
        } else {
            false
        }
    }

    /// Clears `INCONSISTENT` (the caller holds the lock). Relaxed: the bit
    /// is read by the next owner after our Release unlock.
    pub(crate) fn mark_consistent(&self) {
        self.state.fetch_and(!INCONSISTENT, Ordering::Relaxed);
    }

    /// Whether the lock is marked inconsistent (meaningful to its holder).
    pub(crate) fn is_inconsistent(&self) -> bool {
        let v = self.load();
        v & INCONSISTENT != 0 && v & NOT_RECOVERABLE == 0
    }

    /// Releases the lock held by `me` (the caller). An inconsistent lock
    /// stays inconsistent: the next locker gets `OwnerDied`.
    #[inline(always)]
    pub(crate) fn unlock_by(&self, me: &ThreadIdentity) {
        // One RMW that needs no load first (a `fetch_and` would be a CAS
        // loop): subtract our locked value, which is the state's owner bits
        // since we own the word, leaving INCONSISTENT and WAITERS. The next
        // acquirer clears WAITERS unless it slept itself.
        // Release: publishes our critical section to the next Acquire CAS.
        if self.state.fetch_sub(me.locked(), Ordering::Release) & WAITERS != 0 {
            self.state.wake(1);
        }
    }

    /// The holder gives up repairing: the lock becomes not recoverable,
    /// and every waiter must hear so.
    #[cold]
    pub(crate) fn give_up(&self) {
        // Release: orders our writes before the final state (later lockers
        // only report it, but keep it tidy).
        self.state.swap(NOT_RECOVERABLE, Ordering::Release);
        self.state.wake(u32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(state: u64) -> Word {
        let w = Word::new();
        w.state.store(state, Ordering::Relaxed);
        w
    }

    fn me() -> ThreadIdentity {
        current_identity()
    }

    fn tid_of(w: &Word) -> u32 {
        (w.load() & TID_MASK) as u32
    }

    #[test]
    fn locked_values_and_masks() {
        let me = me();
        assert_eq!(me.locked() & TID_MASK, u64::from(me.tid));
        assert_eq!(me.locked() & !OWNER_MASK, 0, "no flag bits");
        assert!(clean_unlocked(0));
        assert!(clean_unlocked(WAITERS));
        assert!(!clean_unlocked(INCONSISTENT));
        assert!(!clean_unlocked(NOT_RECOVERABLE));
        assert!(!clean_unlocked(1));
        assert!(!clean_unlocked(1 << 40));
    }

    #[test]
    fn uncontended_lock_unlock_writes_the_record_once() {
        let w = Word::new();
        let me = me();
        for _ in 0..3 {
            w.lock(Deadline::Never).unwrap();
            assert_eq!(w.load(), me.locked());
            assert!(w.held_by(&me));
            assert_eq!(w.owner.load(Ordering::Relaxed), me.locked());
            assert_eq!(w.pid.load(Ordering::Relaxed), u64::from(me.pid));
            assert_eq!(w.detail.load(Ordering::Relaxed), me.detail);
            assert_eq!(w.lock(Deadline::Now), Err(LockError::WouldDeadlock));
            w.unlock();
            assert_eq!(w.load(), 0);
            assert!(!w.held_by(&me));
        }
    }

    #[test]
    fn waiters_bit_is_dropped_by_the_next_acquirer_that_did_not_sleep() {
        let w = Word::new();
        w.lock(Deadline::Never).unwrap();
        w.state.fetch_or(WAITERS, Ordering::Relaxed);
        w.unlock();
        assert_eq!(w.load(), WAITERS, "unlock leaves it");
        w.lock(Deadline::Now).unwrap();
        assert_eq!(w.load(), me().locked());
        w.unlock();
    }

    #[test]
    fn an_unrepaired_lock_stays_inconsistent_for_the_next_locker() {
        let w = word(INCONSISTENT);
        assert_eq!(w.lock(Deadline::Never), Err(LockError::OwnerDied(())));
        assert!(w.is_inconsistent());
        w.unlock();
        assert_eq!(w.load(), INCONSISTENT);
        assert_eq!(w.lock(Deadline::Now), Err(LockError::OwnerDied(())));
        w.mark_consistent();
        w.unlock();
        assert_eq!(w.lock(Deadline::Now), Ok(()));
        w.give_up();
        assert_eq!(w.load(), NOT_RECOVERABLE);
        assert_eq!(w.lock(Deadline::Never), Err(LockError::NotRecoverable));
        assert_eq!(w.lock(Deadline::Now), Err(LockError::NotRecoverable));
    }

    #[test]
    fn a_free_tid_without_a_record_is_a_dead_owner() {
        // tid 0x3f_fff0 is above this machine's pid_max in practice; if a
        // thread has it, it started after we looked and cannot own.
        for state in [
            0x3f_fff0,
            WAITERS | 0x3f_fff0,
            5 << 22 | 0x3f_fff0 | INCONSISTENT,
        ] {
            let w = word(state);
            assert_eq!(
                w.lock(Deadline::Now),
                Err(LockError::OwnerDied(())),
                "{state:#x}"
            );
            assert_eq!(tid_of(&w), me().tid);
            assert_eq!(w.load() & WAITERS, state & WAITERS, "waiters kept");
            assert!(w.is_inconsistent());
            assert!(w.held_by(&me()));
            w.mark_consistent();
            w.unlock();
            assert!(clean_unlocked(w.load()));
        }
    }

    #[test]
    fn a_live_owner_blocks_try_and_times_out() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let w = Word::new();
        std::thread::scope(|s| {
            let w = &w;
            s.spawn(move || {
                w.lock(Deadline::Never).unwrap();
                tx.send(()).unwrap();
                done_rx.recv().unwrap();
                w.unlock();
            });
            rx.recv().unwrap();
            assert_eq!(w.lock(Deadline::Now), Err(LockError::WouldBlock));
            let t0 = Instant::now();
            let asked = Duration::from_millis(20);
            assert_eq!(w.lock(Deadline::At(t0 + asked)), Err(LockError::TimedOut));
            assert!(t0.elapsed() >= asked);
            done_tx.send(()).unwrap();
            assert_eq!(w.lock(Deadline::Never), Ok(()));
            w.unlock();
        });
    }

    #[test]
    fn a_thread_of_this_process_that_exits_holding_is_abandoned_not_recovered() {
        let w = std::sync::Arc::new(Word::new());
        let w2 = w.clone();
        // `join` returns once the thread is gone, destructors run.
        std::thread::spawn(move || w2.lock(Deadline::Never).unwrap())
            .join()
            .unwrap();
        let before = w.load();
        assert_eq!(w.lock(Deadline::Now), Err(LockError::Abandoned));
        assert_eq!(w.lock(Deadline::Never), Err(LockError::Abandoned));
        assert_eq!(
            w.lock(Deadline::At(Instant::now() + Duration::from_millis(1))),
            Err(LockError::Abandoned)
        );
        assert_eq!(
            w.load() & !WAITERS,
            before,
            "the word is left to the dead owner"
        );
    }

    #[test]
    fn the_state_and_record_separate_threads_that_share_a_tid() {
        // A dead predecessor with our tid, of another process: another tag,
        // another record. Not ours, and dead.
        let me = me();
        let impostor = ThreadIdentity {
            tid: me.tid,
            pid: 0x3f_fff1,
            detail: ThreadIdentity::pack(1, 1, false),
            tag: me.tag ^ 1,
        };
        let w = word(impostor.locked());
        w.publish(&impostor);
        assert!(!w.held_by(&me));
        assert_eq!(w.lock(Deadline::Now), Err(LockError::OwnerDied(())));
        assert!(w.held_by(&me));
        w.mark_consistent();
        w.unlock();
        // Our tag with the impostor's record (a scribble): not held either.
        let w = word(me.locked());
        w.publish(&impostor);
        assert!(!w.held_by(&me));
    }
}

/// Model checks of the protocol with `loom` (`RUSTFLAGS="--cfg loom"
/// cargo test -p shmutils --release --lib loom`): every interleaving of
/// the threads below, within loom's preemption bound, for the parts of the
/// protocol that run in one process. The futex only yields and liveness is
/// scripted per identity.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::{AtomicBool, AtomicU64 as LoomU64};
    use loom::sync::Arc;
    use loom::thread;

    type LoomWord = Word<LoomU64>;

    fn new_word(state: u64) -> LoomWord {
        Word {
            state: LoomU64::new(state),
            owner: LoomU64::new(0),
            pid: LoomU64::new(0),
            detail: LoomU64::new(0),
        }
    }

    /// Thread `i` of the model: tid `i + 1`, in process 1 (or 2 for
    /// "another process").
    fn ident(i: u32, pid: u32) -> ThreadIdentity {
        ThreadIdentity {
            tid: i + 1,
            pid,
            detail: ThreadIdentity::pack(100 + u64::from(i), i + 1, true),
            tag: u64::from(i) + 1,
        }
    }

    /// Liveness scripted per model thread: `alive[i]` for the thread with
    /// serial `i + 1`, whose tid is `tids[i]`; `started[i]` is when it
    /// started on the model's logical clock (0: not yet).
    struct Script {
        alive: Vec<AtomicBool>,
        started: Vec<LoomU64>,
        tids: Vec<u32>,
        clock: LoomU64,
    }

    impl Script {
        /// `n` threads with tids `1..=n`, all running from the start.
        fn new(n: usize) -> Arc<Script> {
            Self::with_tids((1..=n as u32).collect(), &vec![true; n])
        }
        /// Threads with the given tids; those `running` run from the
        /// start, the others call [`Script::start`].
        fn with_tids(tids: Vec<u32>, running: &[bool]) -> Arc<Script> {
            Arc::new(Script {
                alive: tids.iter().map(|_| AtomicBool::new(true)).collect(),
                started: (0..tids.len())
                    .map(|i| LoomU64::new(u64::from(running[i])))
                    .collect(),
                tids,
                clock: LoomU64::new(2),
            })
        }
        fn start(&self, i: usize) {
            let t = self.clock.fetch_add(1, Ordering::SeqCst);
            self.started[i].store(t, Ordering::SeqCst);
        }
        fn die(&self, i: usize) {
            self.alive[i].store(false, Ordering::SeqCst);
        }
    }

    impl Oracle for Script {
        fn owner(&self, o: Owner, me: &ThreadIdentity) -> Liveness {
            let i = ThreadIdentity::serial(o.detail) as usize - 1;
            let alive = self.alive.get(i).is_some_and(|a| a.load(Ordering::SeqCst));
            match (alive, o.pid == me.pid) {
                (true, _) => Liveness::Alive,
                (false, true) => Liveness::DeadHere,
                (false, false) => Liveness::DeadElsewhere,
            }
        }
        /// The real oracle's contract at its most aggressive: a live
        /// thread with the tid counts only if it started no later than
        /// `seen_at` (the owner of a state started before anyone saw it).
        fn tid_could_own(&self, tid: u32, seen_at: u64) -> bool {
            self.tids.iter().enumerate().any(|(i, &t)| {
                let started = self.started[i].load(Ordering::SeqCst);
                t == tid
                    && self.alive[i].load(Ordering::SeqCst)
                    && started != 0
                    && started <= seen_at
            })
        }
        fn now(&self) -> u64 {
            self.clock.fetch_add(1, Ordering::SeqCst)
        }
    }

    fn lock(
        w: &LoomWord,
        me: &ThreadIdentity,
        o: &Script,
        d: Deadline,
    ) -> Result<(), LockError<()>> {
        if w.try_fast(me) {
            return Ok(());
        }
        w.lock_slow(me, o, d)
    }

    /// Adds `by` to the model's protected value: the write loom checks.
    fn bump(cell: &UnsafeCell<u32>, by: u32) {
        cell.with_mut(|p| {
            // SAFETY: validity and type: `p` points to the cell's u32, live
            // for the closure. Aliasing: the caller holds the lock; were it
            // not exclusive, loom reports the concurrent access (that is
            // the test) instead of letting it happen.
            unsafe { *p += by }
        });
    }

    /// Reads the model's protected value (after every thread joined).
    fn read(cell: &UnsafeCell<u32>) -> u32 {
        // SAFETY: as in `bump`; loom checks that no write is concurrent.
        cell.with(|p| unsafe { *p })
    }

    fn builder() -> loom::model::Builder {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        // A waiter re-reads the state after every yield of its "futex".
        b.max_branches = 100_000;
        b
    }

    /// One thread locks (blocking), another try_locks; each increments a loom cell under the lock (loom flags any
    /// concurrent access) and unlocks: mutual exclusion, the blocking
    /// thread always gets the lock, and the state ends clean.
    #[test]
    fn loom_mutual_exclusion() {
        builder().check(|| {
            let w = Arc::new(new_word(0));
            let cell = Arc::new(UnsafeCell::new(0u32));
            let o = Script::new(2);
            let t = {
                let (w, cell, o) = (w.clone(), cell.clone(), o.clone());
                thread::spawn(move || {
                    let me = ident(0, 1);
                    lock(&w, &me, &o, Deadline::Never).unwrap();
                    bump(&cell, 1);
                    w.unlock_by(&me);
                })
            };
            let me = ident(1, 1);
            if lock(&w, &me, &o, Deadline::Now).is_ok() {
                bump(&cell, 10);
                w.unlock_by(&me);
            }
            t.join().unwrap();
            let v = read(&cell);
            assert!(v == 1 || v == 11, "{v}");
            assert!(clean_unlocked(w.load()));
        });
    }

    /// An owner of another process (thread 0) holds the lock and dies;
    /// two waiters race to take over while a live thread also locks:
    /// exactly one OwnerDied, never alongside another holder.
    #[test]
    fn loom_one_takeover_from_a_dead_owner_of_another_process() {
        builder().check(|| {
            let w = Arc::new(new_word(0));
            let o = Script::new(4);
            let dead = ident(0, 2);
            assert!(w.try_fast(&dead));
            o.die(0);
            let cell = Arc::new(UnsafeCell::new(0u32));
            let died = Arc::new(LoomU64::new(0));
            let hs: Vec<_> = (1..3)
                .map(|i| {
                    let (w, o, cell, died) = (w.clone(), o.clone(), cell.clone(), died.clone());
                    thread::spawn(move || {
                        let me = ident(i, 1);
                        match lock(&w, &me, &o, Deadline::Now) {
                            Err(LockError::OwnerDied(())) => {
                                died.fetch_add(1, Ordering::SeqCst);
                                bump(&cell, 1);
                                w.mark_consistent();
                                w.unlock_by(&me);
                            }
                            Ok(()) => {
                                bump(&cell, 1);
                                w.unlock_by(&me);
                            }
                            Err(LockError::WouldBlock) => {}
                            Err(e) => panic!("{e:?}"),
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
            assert_eq!(died.load(Ordering::SeqCst), 1, "exactly one repairer");
        });
    }

    /// The ABA the tag exists for: thread 0 (another process) holds the
    /// lock, unlocks and "dies"; thread 1 takes the lock meanwhile with the
    /// same tid (a recycled tid: same tid, another tag and record). A waiter
    /// that examined thread 0's state must never take over from thread 1.
    #[test]
    fn loom_a_waiter_never_takes_over_from_a_live_owner_with_a_recycled_tid() {
        builder().check(|| {
            let w = Arc::new(new_word(0));
            let o = Script::with_tids(vec![1, 1, 3], &[true, false, true]);
            let cell = Arc::new(UnsafeCell::new(0u32));
            let first = ident(0, 2);
            assert!(w.try_fast(&first));
            let t = {
                let (w, o, cell) = (w.clone(), o.clone(), cell.clone());
                thread::spawn(move || {
                    // Thread 0 unlocks and exits; its tid goes to thread 1.
                    w.unlock_by(&first);
                    o.die(0);
                    o.start(1);
                    let mut recycled = ident(1, 2);
                    recycled.tid = first.tid;
                    if lock(&w, &recycled, &o, Deadline::Now).is_ok() {
                        bump(&cell, 1);
                        w.unlock_by(&recycled);
                    }
                })
            };
            let me = ident(2, 1);
            match lock(&w, &me, &o, Deadline::Now) {
                Ok(()) | Err(LockError::OwnerDied(())) => {
                    bump(&cell, 1);
                    w.mark_consistent();
                    w.unlock_by(&me);
                }
                Err(LockError::WouldBlock) => {}
                Err(e) => panic!("{e:?}"),
            }
            t.join().unwrap();
        });
    }

    /// An owner between its CAS and its publication is alive: a waiter
    /// that sees no record must not take over (the tid is live).
    #[test]
    fn loom_an_unpublished_owner_is_not_taken_for_dead() {
        builder().check(|| {
            let w = Arc::new(new_word(0));
            let o = Script::new(2);
            let cell = Arc::new(UnsafeCell::new(0u32));
            let t = {
                let (w, o, cell) = (w.clone(), o.clone(), cell.clone());
                thread::spawn(move || {
                    let me = ident(0, 1);
                    if lock(&w, &me, &o, Deadline::Now).is_ok() {
                        bump(&cell, 1);
                        w.unlock_by(&me);
                    }
                })
            };
            let me = ident(1, 1);
            match lock(&w, &me, &o, Deadline::Now) {
                Ok(()) => {
                    bump(&cell, 1);
                    w.unlock_by(&me);
                }
                Err(LockError::WouldBlock) => {}
                Err(e) => panic!("{e:?}"),
            }
            t.join().unwrap();
        });
    }

    /// A dead owner of the waiter's own process (a leaked guard): the
    /// waiter gets Abandoned and the word is untouched, while a thread of
    /// another process may take it over.
    #[test]
    fn loom_a_dead_owner_of_this_process_is_abandoned() {
        builder().check(|| {
            let w = Arc::new(new_word(0));
            let o = Script::new(3);
            let dead = ident(0, 1);
            assert!(w.try_fast(&dead));
            o.die(0);
            let t = {
                let (w, o) = (w.clone(), o.clone());
                thread::spawn(move || {
                    let other = ident(1, 2);
                    match lock(&w, &other, &o, Deadline::Now) {
                        Err(LockError::OwnerDied(())) => w.unlock_by(&other), // stays inconsistent
                        r => panic!("{r:?}"),
                    }
                })
            };
            let me = ident(2, 1);
            match lock(&w, &me, &o, Deadline::Now) {
                Err(LockError::Abandoned) | Err(LockError::WouldBlock) => {}
                // After the other process repaired nothing and released:
                // the next locker hears of the death again.
                Err(LockError::OwnerDied(())) => w.unlock_by(&me),
                r => panic!("{r:?}"),
            }
            t.join().unwrap();
        });
    }

    /// Unlock racing with a waiter that sets WAITERS and "sleeps": the
    /// waiter ends up with the lock (no state in which it waits on an
    /// unlocked word forever, given the futex's re-read).
    #[test]
    fn loom_waiters_bit_and_unlock() {
        builder().check(|| {
            let w = Arc::new(new_word(0));
            let o = Script::new(2);
            let holder = ident(0, 1);
            assert!(w.try_fast(&holder));
            let t = {
                let w = w.clone();
                thread::spawn(move || w.unlock_by(&holder))
            };
            let me = ident(1, 1);
            lock(&w, &me, &o, Deadline::Never).unwrap();
            w.unlock_by(&me);
            t.join().unwrap();
            assert!(clean_unlocked(w.load()));
        });
    }
}
