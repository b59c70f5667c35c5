//! Who is attached to a segment: a fixed table of [`SLOTS`] slots inside
//! the heap's bookkeeping, one per attached process ([`Segment`] made or
//! opened) and one per thread that uses its heap (from its first
//! `seg.heap()` or allocation). A thread's slot also holds
//! - its **allocation cache** (`heap/cache.rs`): free blocks it keeps at
//!   hand, linked through their meta words, so that the common
//!   `alloc`/`free` touches only memory the thread owns;
//! - its **death token** (`lock/token.rs`): a robust mutex it holds while
//!   it lives, which lock waiters in other processes sleep on.
//!
//! This process's side (`local.rs`) finds the calling thread's slot in one
//! thread-local lookup, and marks, per object, the slots its threads use,
//! so that two threads of one process never share a slot whatever a peer
//! writes in the owner words.
//!
//! # A slot's owner word
//! ```text
//!  63        62 .. 41    40 .. 19    18 .. 0
//! +---------+-----------+-----------+----------------------+
//! | REAPING | tid       | pid       | start (low 19 bits)  |
//! +---------+-----------+-----------+----------------------+
//!
//! owner word              meaning                        who moves it on
//! ----------------------  -----------------------------  -----------------------------
//! 0                       free (its cache, if any, is    claim: CAS 0 -> identity
//!                         kept for the next owner)
//! identity                owned by that thread           the owner: CAS -> 0 (release);
//!                                                        anyone, once the owner is
//!                                                        dead: CAS -> REAPING | self
//! REAPING | identity      being reaped by that thread    the reaper: CAS -> 0; anyone,
//!                                                        once the reaper is dead:
//!                                                        CAS -> REAPING | self
//! ```
//!
//! The identity is the thread's id, its process's id and its kernel start
//! time, so a recycled pid or tid never passes for a dead owner
//! (`sys::thread_runs`). Every change is one CAS or store: a process
//! killed while claiming, using, releasing or reaping a slot leaves an
//! owner word naming a dead thread, which the next reaper takes over.
//!
//! # Reaping
//! A slot whose owner is dead is reaped by any attached process: when a
//! segment is opened, when a claim finds no free slot, and on request
//! ([`Segment::reap`]). The reaper settles what the dead owner was doing
//! with its cache (`SharedHeap::settle`) and frees the slot; the cached
//! blocks stay with the slot, free, for whoever claims it next, and an
//! allocation that finds the arena full takes them from free slots.
//!
//! [`Segment`]: crate::Segment
//! [`Segment::reap`]: crate::Segment::reap

pub(crate) mod local;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::lock::token::Token;
use crate::process;
use crate::sys;

/// Slots per segment (a cached block's meta word names its slot in 8
/// bits, 0 meaning "on a shared list").
pub const SLOTS: usize = 255;
/// Cache heads per slot: one per cached size class (`heap/cache.rs`).
pub(crate) const CACHE_HEADS: usize = 48;

const REAPING: u64 = 1 << 63;
const ID_BITS: u32 = 22;
const ID_MASK: u64 = (1 << ID_BITS) - 1;
const START_BITS: u32 = 19;

/// What a claimed slot stands for (in [`Slot::info`]'s top bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A process attached through one `Segment`.
    Process = 1,
    /// A thread that allocates through one `Segment`; owns a cache.
    Thread = 2,
}

/// The registry's header: counters shown by `stats()`.
#[repr(C, align(64))]
pub(crate) struct RegistryHeader {
    /// Claims that found no free slot (the thread then used the shared
    /// path).
    pub(crate) full: AtomicU64,
    /// Slots reaped after their owner died.
    pub(crate) reaped: AtomicU64,
    /// Free blocks a dead owner may have held between a shared free
    /// list's CAS and the next step, which its reaper could not tell
    /// apart from blocks still on the list, and so left alone.
    pub(crate) unresolved: AtomicU64,
    _reserved: [AtomicU64; 5],
}

/// One slot (512 bytes, see the module docs). All atomics: valid for any
/// bytes a peer leaves.
#[repr(C, align(64))]
pub(crate) struct Slot {
    /// The owner word.
    pub(crate) owner: AtomicU64,
    /// `kind << 62 | pid`, written after the claim (0 while claiming).
    pub(crate) info: AtomicU64,
    /// The owner's full start time (clock ticks since boot).
    pub(crate) start: AtomicU64,
    /// When it attached (ms since the Unix epoch).
    pub(crate) attached: AtomicU64,
    /// The cache operation in progress: the offset of the block moving
    /// between the cache and its user (0: none). See `heap/cache.rs`.
    pub(crate) inflight: AtomicU64,
    /// A pop from a shared list in progress: the block's offset.
    pub(crate) pop_off: AtomicU64,
    /// The head word that pop expects to replace.
    pub(crate) pop_seen: AtomicU64,
    /// Which head: `class << 8 | shard`.
    pub(crate) pop_where: AtomicU64,
    /// The thread's death token (a robust mutex it holds while it lives,
    /// `lock/token.rs`).
    pub(crate) token: Token,
    /// The cache: per cached class, `count << 40 | first block / 8`.
    pub(crate) heads: [AtomicU64; CACHE_HEADS],
}

/// Bytes of the registry in a heap's bookkeeping.
pub(crate) const REGISTRY_BYTES: u64 =
    (std::mem::size_of::<RegistryHeader>() + SLOTS * std::mem::size_of::<Slot>()) as u64;

const _: () = assert!(std::mem::size_of::<Slot>() == 512);
const _: () = assert!(std::mem::size_of::<RegistryHeader>() == 64);

/// A thread's identity as an owner word.
pub(crate) fn identity_word(pid: u32, tid: u32, start_ticks: u64) -> u64 {
    (u64::from(tid) & ID_MASK) << 41
        | (u64::from(pid) & ID_MASK) << 19
        | start_ticks & ((1 << START_BITS) - 1)
}

/// The calling thread's owner word.
pub(crate) fn my_identity() -> u64 {
    let me = process::current_identity();
    identity_word(
        me.pid,
        me.tid,
        process::ThreadIdentity::start_ticks(me.detail),
    )
}

fn tid_of(w: u64) -> u32 {
    ((w >> 41) & ID_MASK) as u32
}

pub(crate) fn pid_of(w: u64) -> u32 {
    ((w >> 19) & ID_MASK) as u32
}

/// Whether the thread an owner word (without [`REAPING`]) names still
/// runs.
pub(crate) fn identity_runs(w: u64) -> bool {
    let w = w & !REAPING;
    sys::thread_runs(
        pid_of(w),
        tid_of(w),
        Some((w & ((1 << START_BITS) - 1), START_BITS)),
    )
}

/// A process attached to a segment, from [`Segment::processes`].
///
/// [`Segment::processes`]: crate::Segment::processes
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Its process id.
    pub pid: u32,
    /// Its start time, in clock ticks since boot (what tells it from a
    /// later process with the same id).
    pub start_ticks: u64,
    /// When it attached.
    pub attached: SystemTime,
    /// Threads of it that hold a slot (and a cache).
    pub threads: usize,
}

/// Figures of the registry, in [`HeapStats`](crate::HeapStats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// Slots in all.
    pub slots: usize,
    /// Slots held by a process attachment.
    pub processes: usize,
    /// Slots held by a thread (each with a cache).
    pub threads: usize,
    /// Times a thread found no free slot and allocated without a cache.
    pub full_events: u64,
    /// Slots reaped after their owner died.
    pub reaped: u64,
    /// Free blocks a dead process may have held in the middle of a shared
    /// free-list operation that no reaper could attribute (left alone,
    /// never handed out twice; `check()` counts them as leaked).
    pub unresolved: u64,
}

/// The registry of one heap: its header and slots.
#[derive(Clone, Copy)]
pub(crate) struct Registry<'s> {
    pub(crate) header: &'s RegistryHeader,
    pub(crate) slots: &'s [Slot],
}

impl<'s> Registry<'s> {
    /// The registry whose header is at `header` (its slots follow it).
    ///
    /// # Safety
    /// `header` must point to a registry (a 64-byte header, then [`SLOTS`]
    /// slots) in memory that stays mapped for `'s` and is only accessed
    /// through atomics.
    pub(crate) unsafe fn at(header: std::ptr::NonNull<RegistryHeader>) -> Registry<'s> {
        // SAFETY: the caller's contract; the slots follow the header
        // (64 bytes, so they are 64-aligned too); all atomics.
        unsafe {
            Registry {
                header: header.as_ref(),
                slots: std::slice::from_raw_parts(header.as_ptr().add(1).cast::<Slot>(), SLOTS),
            }
        }
    }

    /// Claims a free slot for the calling thread as `kind`. `None` when
    /// every slot is taken (counted in [`RegistryHeader::full`]).
    pub(crate) fn claim(&self, kind: Kind, me: u64, start_ticks: u64) -> Option<&'s Slot> {
        let first = (tid_of(me) as usize).wrapping_mul(0x9e37_79b9) % SLOTS;
        for i in 0..SLOTS {
            let s = &self.slots[(first + i) % SLOTS];
            // Acquire: pairs with the Release store that freed the slot,
            // so the cache its last owner (or reaper) left is visible.
            if s.owner.load(Ordering::Relaxed) == 0
                && s.owner
                    .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                s.start.store(start_ticks, Ordering::Relaxed);
                s.attached.store(now_ms(), Ordering::Relaxed);
                s.info.store(
                    (kind as u64) << 62 | u64::from(process::current_pid()),
                    Ordering::Relaxed,
                );
                return Some(s);
            }
        }
        None
    }

    /// Frees a slot the caller owns as `me` (or reaps as `REAPING | me`).
    pub(crate) fn release(&self, s: &Slot, me: u64) {
        s.info.store(0, Ordering::Relaxed);
        // Release: the cache as this thread leaves it happens-before the
        // next claimer's Acquire CAS. A CAS, not a store: a slot this
        // thread no longer owns (reaped by mistake is impossible while it
        // runs; but a forked child's copy of a parent's slot is not its own)
        // is left alone.
        let _ = s
            .owner
            .compare_exchange(me, 0, Ordering::Release, Ordering::Relaxed);
    }

    /// Takes over the slot `s` if its owner (or reaper) is dead: returns
    /// the word that now names the caller as its reaper.
    pub(crate) fn take_dead(&self, s: &Slot, me: u64) -> Option<u64> {
        let w = s.owner.load(Ordering::Acquire);
        if w == 0 || w & !REAPING == me || identity_runs(w) {
            return None;
        }
        let mine = REAPING | me;
        // Acquire: the dead owner's last stores to the slot (made before
        // it died: they are all visible once it is gone) are read after.
        s.owner
            .compare_exchange(w, mine, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| mine)
    }

    /// Slots whose owner word is set, with their kind (`None` while being
    /// claimed or reaped).
    pub(crate) fn stats(&self) -> RegistryStats {
        let mut st = RegistryStats {
            slots: SLOTS,
            full_events: self.header.full.load(Ordering::Relaxed),
            reaped: self.header.reaped.load(Ordering::Relaxed),
            unresolved: self.header.unresolved.load(Ordering::Relaxed),
            ..RegistryStats::default()
        };
        for s in self.slots {
            let w = s.owner.load(Ordering::Relaxed);
            if w == 0 || w & REAPING != 0 {
                continue;
            }
            match s.info.load(Ordering::Relaxed) >> 62 {
                1 => st.processes += 1,
                2 => st.threads += 1,
                _ => {}
            }
        }
        st
    }

    /// The live processes attached (one entry per process, whatever the
    /// number of `Segment`s it holds).
    pub(crate) fn processes(&self) -> Vec<ProcessInfo> {
        let mut out: Vec<ProcessInfo> = Vec::new();
        let mut threads: Vec<u32> = Vec::new();
        for s in self.slots {
            let w = s.owner.load(Ordering::Acquire);
            if w == 0 || w & REAPING != 0 {
                continue;
            }
            let info = s.info.load(Ordering::Relaxed);
            let pid = info as u32;
            match info >> 62 {
                1 if pid_of(w) == pid & ID_MASK as u32
                    && identity_runs(w)
                    && !out.iter().any(|p| p.pid == pid) =>
                {
                    out.push(ProcessInfo {
                        pid,
                        start_ticks: s.start.load(Ordering::Relaxed),
                        attached: UNIX_EPOCH
                            + Duration::from_millis(s.attached.load(Ordering::Relaxed)),
                        threads: 0,
                    });
                }
                2 => threads.push(pid),
                _ => {}
            }
        }
        for p in &mut out {
            p.threads = threads.iter().filter(|&&t| t == p.pid).count();
        }
        out.sort_by_key(|p| p.pid);
        out
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_words_round_trip() {
        let w = identity_word(4_194_303, 17, (1 << 40) + 5);
        assert_eq!(tid_of(w), 17);
        assert_eq!(pid_of(w), 4_194_303);
        assert_eq!(w & ((1 << START_BITS) - 1), 5);
        assert_eq!(w & REAPING, 0);
        assert_ne!(identity_word(1, 1, 0), 0);
        assert!(identity_runs(my_identity()));
        // A start time that is not ours: a recycled id, not us.
        let me = process::current_identity();
        let other = identity_word(
            me.pid,
            me.tid,
            process::ThreadIdentity::start_ticks(me.detail) + 1,
        );
        assert!(!identity_runs(other));
    }
}
