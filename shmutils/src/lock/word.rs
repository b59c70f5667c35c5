//! The lock word that [`RawLock`](super::RawLock) and
//! [`RawRLock`](super::RawRLock) are built on: a 64-bit state in shared
//! memory (the futex sleeps on its low half) and, beside it, the record of
//! who took it.
//!
//! # State
//!
//! ```text
//!  63       62            61               22..=60                0..=21
//! +--------+-------------+----------------+----------------------+-------------+
//! |WAITERS | INCONSISTENT| NOT_RECOVERABLE| epoch (39 bits)      | owner tid   |
//! +--------+-------------+----------------+----------------------+-------------+
//!
//! state (E = epoch)            meaning                          who moves it on
//! ---------------------------  -------------------------------  ----------------------------------
//! E|0                          unlocked                         lock: CAS -> (E+1)|me, publish
//! E|0 + INCONSISTENT           unlocked, but an owner died and  lock: CAS -> (E+1)|me|INCONSISTENT,
//!                              nobody repaired the data yet       publish; caller gets OwnerDied
//! E|tid                        locked, nobody sleeps            unlock: clear tid -> E|0 (no wake)
//!                                                               waiter: CAS -> E|tid|WAITERS
//! E|tid + WAITERS              locked, waiters may sleep        unlock: clear -> E|0, wake 1
//! E|tid + INCONSISTENT[+W]     locked by an OwnerDied taker     mark_consistent: clear the bit
//!                                                               unlock: clear -> E|0|INCONSISTENT
//!                                                               give up: swap -> E|NOT_RECOVERABLE,
//!                                                                 wake all
//! E|tid[+flags], owner dead    see "Owner death" below          a waiter of another process: CAS
//!                                                               from the exact value seen ->
//!                                                               (E+1)|me|INCONSISTENT|(WAITERS)
//! NOT_RECOVERABLE[+anything]   a holder gave up; final          nothing (re-initialise the lock)
//! ```
//!
//! **Every acquisition moves the epoch on** (the fast path, the slow path
//! and a takeover alike), so the state never takes the same value twice in
//! 2^39 acquisitions: a compare-and-swap from a value a waiter examined
//! fails if anyone took the lock since, even a thread that the kernel gave
//! the examined owner's tid. The futex sleeps on the low 32 bits (the tid
//! and the epoch's low 10 bits): every acquisition and every release
//! changes them, the flags (high half) never need to.
//!
//! # Owner record
//!
//! ```text
//! owner   = tag (epoch's low 20 bits) << 44 | tid << 22 | pid
//! detail  = start time (40 bits) << 24 | serial (23 bits) << 1 | registered
//! ```
//!
//! Right after its CAS the new owner stores `detail`, then `owner`
//! (Release). The record *belongs to* the state `s` when its tag and tid
//! are those of `s`; otherwise it is an earlier owner's, and `s`'s owner
//! is between its CAS and its publication (it has no guard yet), died
//! there, or the bytes are garbage. The owner publishes before `lock`
//! returns, so every handed-out guard has its record published.
//!
//! Who the owner is: its tid alone is not enough, the kernel recycles
//! tids. `start` is the thread's start time (field 22 of
//! `/proc/PID/task/TID/stat`, clock ticks since boot), which no later
//! thread with the same tid shares, except one started within the same
//! tick; `serial` numbers the threads of a process, and `registered` says
//! that the thread is in its process's registry (`process.rs`), which a
//! thread-local destructor updates when the thread exits: for owners of
//! the caller's own process the answer is exact.
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
//! - Record belongs to the state, owner alive (same pid, tid, start time,
//!   and, in this process, a registered serial): wait.
//! - Record belongs, owner dead, **a thread of another process**: take
//!   over (CAS from the exact state examined), the caller gets `OwnerDied`
//!   with the guard.
//! - Record belongs, owner dead, **a thread of this process**: it exited
//!   with its guard leaked, so a reference from it may still be in use
//!   here. The word is left as it is and the caller gets `Abandoned`, no
//!   guard: this process never gets the lock again while the record is
//!   there (other processes, whose memory holds no such reference, may
//!   still take it over).
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

use std::cell::Cell;
use std::hint::spin_loop;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::atomic::{Atom, Kernel, Liveness, Oracle, Owner};
use super::LockError;
pub(crate) use crate::process::current_identity;
use crate::process::ThreadIdentity;

/// Some thread may sleep in `futex_wait` on the word.
pub(crate) const WAITERS: u64 = 1 << 63;
/// An owner died and nobody has repaired the data yet (survives unlock).
pub(crate) const INCONSISTENT: u64 = 1 << 62;
/// A holder gave up repairing: the lock is unusable, for good.
pub(crate) const NOT_RECOVERABLE: u64 = 1 << 61;
/// The epoch: bumped by every acquisition.
pub(crate) const EPOCH_MASK: u64 = ((1 << 39) - 1) << EPOCH_SHIFT;
const EPOCH_SHIFT: u32 = 22;
/// The owner's tid; 0 when unlocked. Linux tids are below
/// `PID_MAX_LIMIT` = 2^22.
pub(crate) const TID_MASK: u64 = (1 << 22) - 1;
/// The pid field of the owner record.
const PID_MASK: u64 = (1 << 22) - 1;
/// Where the record keeps its tag (the epoch's low 20 bits).
const TAG_SHIFT: u32 = 44;

/// How long a blocked waiter sleeps before it checks that the owner lives.
pub(crate) const SLICE: Duration = Duration::from_millis(5);
/// How many times a contended `lock` polls the word before it sleeps
/// (about 8 µs in all; measured in `benches/locks.rs`: polling every
/// iteration halves contended throughput, not spinning at all triples the
/// ping-pong round trip). Loom explores one poll.
const SPIN_ROUNDS: u32 = if cfg!(loom) { 1 } else { 12 };
/// The longest gap between two polls, in `spin_loop` hints (~30 ns each).
const MAX_GAP: u32 = 32;

/// The state after `v` for a new acquisition: the next epoch, no flags, no
/// owner.
#[inline]
fn next_epoch(v: u64) -> u64 {
    (v & EPOCH_MASK).wrapping_add(1 << EPOCH_SHIFT) & EPOCH_MASK
}

/// The owner record that `tid` of `pid` publishes for state `v`.
#[inline]
fn record(v: u64, tid: u32, pid: u32) -> u64 {
    ((v >> EPOCH_SHIFT) & ((1 << 20) - 1)) << TAG_SHIFT
        | (u64::from(tid) & TID_MASK) << 22
        | (u64::from(pid) & PID_MASK)
}

/// Whether `v` is unlocked and clean (the fast path's precondition).
#[inline]
fn clean_unlocked(v: u64) -> bool {
    v & !EPOCH_MASK == 0
}

thread_local! {
    /// The state this thread's last unlock left, and the word's address:
    /// the fast path's guess of the state to CAS from when the same thread
    /// takes the same lock again (saving a load before the CAS, and under
    /// contention a second transfer of the cache line). Only a guess: the
    /// CAS checks it.
    static LAST_UNLOCK: Cell<(usize, u64)> = const { Cell::new((0, 0)) };
}

/// This thread's guess of `state`'s current value (see [`LAST_UNLOCK`]).
#[inline(always)]
fn last_unlock<A>(state: &A) -> Option<u64> {
    if cfg!(loom) {
        return None; // model threads share one OS thread: no guessing
    }
    let (addr, v) = LAST_UNLOCK.with(Cell::get);
    (addr == state as *const A as usize).then_some(v)
}

/// Remembers the state this thread's unlock of `state` left.
#[inline(always)]
fn remember_unlock<A>(state: &A, v: u64) {
    if !cfg!(loom) {
        LAST_UNLOCK.with(|c| c.set((state as *const A as usize, v)));
    }
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
    detail: A,
}

impl Word<AtomicU64> {
    pub(crate) const fn new() -> Word {
        Word {
            state: AtomicU64::new(0),
            owner: AtomicU64::new(0),
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

    /// Stores who took the state `v`.
    #[inline(always)]
    fn publish(&self, v: u64, me: &ThreadIdentity) {
        self.detail.store(me.detail, Ordering::Relaxed);
        // Release: a waiter that reads this record with Acquire (in
        // `owner_of`) also sees the `detail` stored just above.
        self.owner
            .store(record(v, me.tid, me.pid), Ordering::Release);
    }

    /// The owner record if it belongs to the acquisition that produced `v`.
    fn owner_of(&self, v: u64) -> Option<Owner> {
        // Acquire: pairs with the Release store in `publish`.
        let rec = self.owner.load(Ordering::Acquire);
        let tid = v & TID_MASK;
        if tid == 0 || rec != record(v, tid as u32, (rec & PID_MASK) as u32) {
            return None;
        }
        Some(Owner {
            tid: tid as u32,
            pid: (rec & PID_MASK) as u32,
            detail: self.detail.load(Ordering::Relaxed),
        })
    }

    /// Whether `me` owns the word. Relaxed loads suffice: if `me` owns it,
    /// `me` wrote the state and the record itself, and a thread always
    /// reads its own latest writes (or later ones, which another thread
    /// could only make after a takeover, changing the state).
    pub(crate) fn held_by(&self, me: &ThreadIdentity) -> bool {
        let v = self.load();
        v & TID_MASK == u64::from(me.tid)
            && v & NOT_RECOVERABLE == 0
            && self.owner_of(v) == Some(owner_of_me(me))
    }

    /// The uncontended path: one CAS (from the state this thread's last
    /// unlock of this word left, when it remembers one, see
    /// [`LAST_UNLOCK`]; else from a load), two stores.
    #[inline(always)]
    pub(crate) fn try_fast(&self, me: &ThreadIdentity) -> bool {
        let v = last_unlock(&self.state).unwrap_or_else(|| self.state.load(Ordering::Relaxed));
        self.try_from(v, me)
    }

    /// One acquisition attempt from the state `v` believed current; a
    /// wrong belief costs one more CAS, from the value the failed one read.
    #[inline(always)]
    fn try_from(&self, mut v: u64, me: &ThreadIdentity) -> bool {
        for _ in 0..2 {
            if !clean_unlocked(v) {
                return false;
            }
            let new = next_epoch(v) | u64::from(me.tid);
            // Acquire: pairs with the Release RMW in `unlock`, so the
            // previous owner's critical section happens-before ours.
            // Release: pairs with a waiter's Acquire load of this state in
            // `lock_slow`, so what this thread did before (its very
            // existence, for the model's oracle; the kernel orders a
            // thread's creation before its first step) is visible to a
            // waiter that judges this state's owner.
            match self
                .state
                .compare_exchange(v, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.publish(new, me);
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
        if !matches!(deadline, Deadline::Now) {
            // Adaptive spin: the owner is probably running and about to
            // release; a futex sleep/wake round trip costs far more. The gap
            // between looks doubles (bounded), so a spinner steals the
            // owner's cache line only a few times.
            for round in 0..SPIN_ROUNDS {
                for _ in 0..(1u32 << round).min(MAX_GAP) {
                    spin_loop();
                }
                let w = self.load();
                if clean_unlocked(w) && self.try_from(w, me) {
                    return Ok(());
                }
                if w & WAITERS != 0 {
                    break; // others already sleep: join them
                }
            }
        }
        let mut slept = false;
        // try_lock looks at the owner at once; blocking calls after a slice.
        let mut check_owner = matches!(deadline, Deadline::Now);
        let mut attempts = 0u32;
        // The state whose owner had not published, and when we first saw it.
        let mut seen: Option<(u64, u64)> = None;
        loop {
            attempts = attempts.wrapping_add(1);
            // Acquire: pairs with the Release of the acquiring CAS that wrote
            // this state (and of the unlock before it), so the owner's
            // existence and everything before its CAS are visible to `judge`.
            let v = self.state.load(Ordering::Acquire);
            if v & NOT_RECOVERABLE != 0 {
                return Err(LockError::NotRecoverable);
            }
            if v & TID_MASK == 0 {
                let new = next_epoch(v)
                    | u64::from(me.tid)
                    | (v & INCONSISTENT)
                    | if slept { WAITERS } else { 0 };
                // AcqRel: as in `try_fast`.
                if self
                    .state
                    .compare_exchange(v, new, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    self.publish(new, me);
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
            // The record is read only when it matters (our own tid, or a
            // check): a waiter's read pulls the owner's cache line away.
            let owner = if v & TID_MASK == u64::from(me.tid) || check_owner {
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
            let timeout = match deadline {
                Deadline::Now => return Err(LockError::WouldBlock),
                Deadline::Never => SLICE,
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
                    SLICE.min(at - now)
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
            if self.state.wait_low(v as u32, timeout) {
                check_owner = true;
            }
        }
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
    /// wins if anyone acquired since (the epoch moved). Keeps `WAITERS` so
    /// that our unlock wakes the others.
    fn take_over(&self, observed: u64, me: &ThreadIdentity) -> bool {
        let new = next_epoch(observed) | u64::from(me.tid) | INCONSISTENT | (observed & WAITERS);
        // Acquire: whatever the dead owner's critical section published (see
        // the module docs on death and ordering) is visible to the repairer.
        // Release: as in `try_fast`, for waiters judging the new owner.
        if self
            .state
            .compare_exchange(observed, new, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.publish(new, me);
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

    /// Releases the lock held by the caller. An inconsistent lock stays
    /// inconsistent: the next locker gets `OwnerDied`.
    #[inline]
    pub(crate) fn unlock(&self) {
        // One RMW, no load first: clear the tid and WAITERS, keep the epoch
        // and INCONSISTENT (only the owner changes those, and we own the
        // word; NOT_RECOVERABLE is never set while held). Waiters only add
        // WAITERS, which the returned value reports.
        // Release: publishes our critical section to the next Acquire CAS.
        let old = self
            .state
            .fetch_and(!(TID_MASK | WAITERS), Ordering::Release);
        remember_unlock(&self.state, old & !(TID_MASK | WAITERS));
        if old & WAITERS != 0 {
            self.state.wake(1);
        }
    }

    /// The holder gives up repairing: the lock becomes not recoverable,
    /// and every waiter must hear so.
    #[cold]
    pub(crate) fn give_up(&self) {
        let v = self.state.load(Ordering::Relaxed);
        // Release: orders our writes before the final state (later lockers
        // only report it, but keep it tidy).
        self.state
            .swap((v & EPOCH_MASK) | NOT_RECOVERABLE, Ordering::Release);
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
    fn epochs_and_records() {
        assert_eq!(next_epoch(0), 1 << 22);
        assert_eq!(
            next_epoch(EPOCH_MASK | WAITERS | 5),
            0,
            "wraps, drops flags"
        );
        let v = next_epoch(7 << 22) | 42;
        let r = record(v, 42, 99);
        assert_eq!(r >> TAG_SHIFT, 8);
        assert_eq!((r >> 22) & TID_MASK, 42);
        assert_eq!(r & PID_MASK, 99);
        assert!(clean_unlocked(EPOCH_MASK));
        assert!(!clean_unlocked(INCONSISTENT));
        assert!(!clean_unlocked(1));
    }

    #[test]
    fn uncontended_lock_unlock_moves_the_epoch() {
        let w = Word::new();
        let me = me();
        for round in 1..=3u64 {
            w.lock(Deadline::Never).unwrap();
            assert_eq!(w.load(), round << 22 | u64::from(me.tid));
            assert!(w.held_by(&me));
            assert_eq!(w.lock(Deadline::Now), Err(LockError::WouldDeadlock));
            w.unlock();
            assert_eq!(w.load(), round << 22);
            assert!(!w.held_by(&me));
        }
    }

    #[test]
    fn waiters_bit_is_dropped_by_unlock() {
        let w = Word::new();
        w.lock(Deadline::Never).unwrap();
        w.state.fetch_or(WAITERS, Ordering::Relaxed);
        w.unlock();
        assert_eq!(w.load(), 1 << 22);
    }

    #[test]
    fn an_unrepaired_lock_stays_inconsistent_for_the_next_locker() {
        let w = word(INCONSISTENT);
        assert_eq!(w.lock(Deadline::Never), Err(LockError::OwnerDied(())));
        assert!(w.is_inconsistent());
        w.unlock();
        assert_eq!(w.load(), INCONSISTENT | 1 << 22);
        assert_eq!(w.lock(Deadline::Now), Err(LockError::OwnerDied(())));
        w.mark_consistent();
        w.unlock();
        assert_eq!(w.lock(Deadline::Now), Ok(()));
        w.give_up();
        assert_eq!(w.load() & NOT_RECOVERABLE, NOT_RECOVERABLE);
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
    fn the_owner_record_separates_threads_that_share_a_tid() {
        // A record of "our tid, another thread" (a dead predecessor with the
        // same tid, of another process): not ours, and dead.
        let me = me();
        let w = word(3 << 22 | u64::from(me.tid));
        let impostor = ThreadIdentity {
            tid: me.tid,
            pid: 0x3f_fff1,
            detail: ThreadIdentity::pack(1, 1, false),
        };
        w.publish(w.load(), &impostor);
        assert!(!w.held_by(&me));
        assert_eq!(w.lock(Deadline::Now), Err(LockError::OwnerDied(())));
        assert!(w.held_by(&me));
        w.mark_consistent();
        w.unlock();
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
                    w.unlock();
                })
            };
            let me = ident(1, 1);
            if lock(&w, &me, &o, Deadline::Now).is_ok() {
                bump(&cell, 10);
                w.unlock();
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
                                w.unlock();
                            }
                            Ok(()) => {
                                bump(&cell, 1);
                                w.unlock();
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

    /// The ABA the epoch exists for: thread 0 (another process) holds the
    /// lock, unlocks and "dies"; thread 1 takes the lock meanwhile with the
    /// same tid (a recycled tid: same tid, new identity). A waiter that
    /// examined thread 0's state must never take over from thread 1.
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
                    w.unlock();
                    o.die(0);
                    o.start(1);
                    let mut recycled = ident(1, 2);
                    recycled.tid = first.tid;
                    if lock(&w, &recycled, &o, Deadline::Now).is_ok() {
                        bump(&cell, 1);
                        w.unlock();
                    }
                })
            };
            let me = ident(2, 1);
            match lock(&w, &me, &o, Deadline::Now) {
                Ok(()) | Err(LockError::OwnerDied(())) => {
                    bump(&cell, 1);
                    w.mark_consistent();
                    w.unlock();
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
                        w.unlock();
                    }
                })
            };
            let me = ident(1, 1);
            match lock(&w, &me, &o, Deadline::Now) {
                Ok(()) => {
                    bump(&cell, 1);
                    w.unlock();
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
                        Err(LockError::OwnerDied(())) => w.unlock(), // stays inconsistent
                        r => panic!("{r:?}"),
                    }
                })
            };
            let me = ident(2, 1);
            match lock(&w, &me, &o, Deadline::Now) {
                Err(LockError::Abandoned) | Err(LockError::WouldBlock) => {}
                // After the other process repaired nothing and released:
                // the next locker hears of the death again.
                Err(LockError::OwnerDied(())) => w.unlock(),
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
                thread::spawn(move || w.unlock())
            };
            let me = ident(1, 1);
            lock(&w, &me, &o, Deadline::Never).unwrap();
            w.unlock();
            t.join().unwrap();
            assert!(clean_unlocked(w.load()));
        });
    }
}
