//! Named objects: a fixed directory of [`DIR_CAPACITY`] entries, each
//! claimed and released by CAS on its state word. No lock.
//!
//! # Entry state word
//! ```text
//!  63 62 61        32 31            0
//! +-----+------------+---------------+
//! |kind | name hash  |  thread id    |
//! +-----+------------+---------------+
//! ```
//!
//! | state | meaning | next states |
//! |---|---|---|
//! | `EMPTY` (0) | free | `INIT(h, tid)` by CAS (claim) |
//! | `INIT(h, tid)` | thread `tid` is making the object | `READY(h)` (it finished), `EMPTY` (it gave up, failed, or died: anyone may CAS the exact dead value to `EMPTY`) |
//! | `READY(h)` | the object is published; fields are immutable | `EMPTY` by CAS (`remove`, which unlinks the name and leaves the object allocated) |
//!
//! Any other kind is garbage a peer wrote: scans skip it and `check`
//! reports nothing for it but the missing name.
//!
//! # Exactly one initializer
//! `find_or_init` scans for the name; if absent it claims an `EMPTY` entry,
//! then scans again for another `INIT` or `READY` entry of the same name
//! hash. Claims and both scans are `SeqCst`, so of two racing claimers the
//! later one always sees the earlier one's claim: whoever sees a rival
//! backs off (releases its entry, sleeps a random moment, starts over).
//! Possibly both back off, never neither; so one object per name, and
//! the random backoff makes repeated collisions vanishingly unlikely.
//!
//! # Torn reads
//! A reader of a `READY` entry checks afterwards that the state and the
//! entry's generation (bumped by every claimer before it writes the fields)
//! are unchanged, seqlock style, so it never mixes two objects' fields.
//!
//! # Crashes
//! A process killed while initializing leaves `INIT` with its dead thread
//! id: the next caller frees the entry (the half-made object, if any, is
//! leaked: it was that process's). Thread ids can be reused by the kernel;
//! a reused id makes a waiter wait for the new thread's lifetime, never
//! corrupts anything.

use std::mem::{align_of, size_of};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::SharedHeap;
use crate::error::{Error, Result};
use crate::ptr::RelPtr;
use crate::shared::Shared;
use crate::sys;

/// Entries in a heap's directory: the most named objects a heap holds.
pub const DIR_CAPACITY: usize = 128;
/// The longest name of a named object, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Type names are recorded (for error messages) up to this many bytes.
pub const MAX_TYPE_NAME_LEN: usize = 32;

/// How long `find_or_init` waits for another thread's initializer of the
/// same name before it gives up with [`Error::Timeout`]. The entry's state
/// word is peer-writable: an `INIT` naming a live thread that is not
/// initializing anything (a scribbled or reused thread id) must not stall
/// callers forever.
const INIT_WAIT: Duration = if cfg!(test) {
    Duration::from_millis(300)
} else {
    Duration::from_secs(10)
};

const KIND_SHIFT: u32 = 62;
const INIT: u64 = 1;
const READY: u64 = 2;

/// One directory entry (160 bytes, all atomics: peers may write any of it).
#[repr(C)]
pub(crate) struct DirEntry {
    state: AtomicU64,
    generation: AtomicU64,
    offset: AtomicU64,
    fingerprint: AtomicU64,
    size: AtomicU64,
    align: AtomicU64,
    /// Name length in the low 32 bits, type name length in the high 32.
    lens: AtomicU64,
    name: [AtomicU64; MAX_NAME_LEN / 8],
    type_name: [AtomicU64; MAX_TYPE_NAME_LEN / 8],
    /// Who is initializing the entry (`INIT`), as [`claimer_record`] packs
    /// it; 0 when unknown.
    claimer: AtomicU64,
}

/// Bits of the claimer's start time kept in its record (100 Hz ticks:
/// wraps after 2.9 hours; a recycled thread id must also start a multiple
/// of that later to pass for the claimer).
const CLAIMER_START_BITS: u32 = 20;

/// The calling thread's claimer record: `tid << 42 | pid << 20 | start`,
/// tid and pid 22 bits each (`PID_MAX_LIMIT`).
fn claimer_record() -> u64 {
    let me = crate::process::current_identity();
    let start = crate::process::ThreadIdentity::start_ticks(me.detail);
    u64::from(me.tid & 0x3f_ffff) << 42
        | u64::from(me.pid & 0x3f_ffff) << CLAIMER_START_BITS
        | start & ((1 << CLAIMER_START_BITS) - 1)
}

/// Whether the thread `tid` that claimed `e` (its `INIT` state says so)
/// still runs: by its full record if it published one for this claim (the
/// record names the same tid), else by the thread id alone.
fn claimer_runs(e: &DirEntry, tid: u32) -> bool {
    let r = e.claimer.load(Ordering::Acquire);
    if r != 0 && (r >> 42) as u32 == tid {
        let pid = ((r >> CLAIMER_START_BITS) & 0x3f_ffff) as u32;
        let start = r & ((1 << CLAIMER_START_BITS) - 1);
        let start = (start != 0).then_some((start, CLAIMER_START_BITS));
        sys::thread_runs(pid, tid, start)
    } else {
        sys::thread_alive(tid)
    }
}

const _: () = assert!(size_of::<DirEntry>() == 160);

fn state(kind: u64, hash: u32, tid: u32) -> u64 {
    (kind << KIND_SHIFT) | (u64::from(hash & 0x3fff_ffff) << 32) | u64::from(tid)
}

fn kind(s: u64) -> u64 {
    s >> KIND_SHIFT
}

fn hash_of(s: u64) -> u32 {
    ((s >> 32) & 0x3fff_ffff) as u32
}

fn tid_of(s: u64) -> u32 {
    s as u32
}

/// FNV-1a of the name, 30 bits.
fn name_hash(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h & 0x3fff_ffff
}

fn store_bytes(words: &[AtomicU64], bytes: &[u8]) {
    for (i, w) in words.iter().enumerate() {
        let mut chunk = [0u8; 8];
        let from = (i * 8).min(bytes.len());
        let to = (i * 8 + 8).min(bytes.len());
        chunk[..to - from].copy_from_slice(&bytes[from..to]);
        w.store(u64::from_le_bytes(chunk), Ordering::Relaxed);
    }
}

fn load_bytes(words: &[AtomicU64], len: usize) -> Vec<u8> {
    let mut out: Vec<u8> = words
        .iter()
        .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
        .collect();
    out.truncate(len);
    out
}

/// A consistent copy of a `READY` entry.
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    pub(crate) state: u64,
    pub(crate) name: Vec<u8>,
    pub(crate) type_name: String,
    pub(crate) offset: u64,
    pub(crate) fingerprint: u64,
    pub(crate) size: u64,
    pub(crate) align: u64,
}

impl Snapshot {
    fn describe(&self) -> String {
        format!(
            "{} (size {}, align {}, fingerprint {:#018x})",
            self.type_name, self.size, self.align, self.fingerprint
        )
    }
}

fn describe<T: Shared>() -> String {
    format!(
        "{} (size {}, align {}, fingerprint {:#018x})",
        T::NAME,
        size_of::<T>(),
        align_of::<T>(),
        T::FINGERPRINT
    )
}

/// What a scan for a name found.
enum Scan {
    Ready(Snapshot),
    /// Another thread is making an object of the same name hash.
    Busy {
        index: usize,
        state: u64,
    },
    Absent {
        first_empty: Option<usize>,
    },
}

/// Releases a claimed entry unless disarmed (initializer failed or
/// panicked).
struct ClaimGuard<'a> {
    entry: &'a DirEntry,
    claimed: u64,
    armed: bool,
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.entry.claimer.store(0, Ordering::Relaxed);
            // Release: later claimers see our fields as stale, never half
            // made (they bump the generation before writing).
            let _ = self.entry.state.compare_exchange(
                self.claimed,
                0,
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
    }
}

/// A small xorshift for backoff, seeded per call.
struct Backoff(u64);

impl Backoff {
    fn new() -> Backoff {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
        Backoff(t ^ (u64::from(sys::gettid()) << 32) | 1)
    }

    fn sleep(&mut self) {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        std::thread::sleep(Duration::from_micros(20 + self.0 % 500));
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Error::InvalidArgument {
            what: format!(
                "named object name {name:?}: expected 1 to {MAX_NAME_LEN} bytes, found {}",
                name.len()
            ),
        });
    }
    Ok(())
}

/// The named-object directory of a heap (its entries are in the heap's
/// bookkeeping; [`SharedHeap::find_or_init`], [`SharedHeap::find`] and
/// [`SharedHeap::remove`] are its public face).
#[derive(Clone, Copy)]
pub(crate) struct Directory<'s> {
    pub(crate) heap: SharedHeap<'s>,
}

impl<'s> Directory<'s> {
    pub(crate) fn entry(&self, i: usize) -> &'s DirEntry {
        let i = i % DIR_CAPACITY;
        let off = self.heap.geo.dir_off + (i * size_of::<DirEntry>()) as u64;
        // SAFETY: i < DIR_CAPACITY, so the entry lies in the directory
        // inside the mapping (validated geometry); 8-aligned; all atomics.
        unsafe { &*(self.heap.base.as_ptr().add(off as usize) as *const DirEntry) }
    }

    /// A consistent copy of entry `i` if it is `READY`.
    pub(crate) fn read_ready(&self, i: usize) -> Option<Snapshot> {
        let e = self.entry(i);
        for _ in 0..16 {
            // Acquire: pairs with the Release store of READY in
            // find_or_init(), making the fields visible.
            let generation = e.generation.load(Ordering::Acquire);
            let s = e.state.load(Ordering::Acquire);
            if kind(s) != READY {
                return None;
            }
            let lens = e.lens.load(Ordering::Relaxed);
            let name_len = ((lens & 0xffff_ffff) as usize).min(MAX_NAME_LEN);
            let type_len = ((lens >> 32) as usize).min(MAX_TYPE_NAME_LEN);
            let snap = Snapshot {
                state: s,
                name: load_bytes(&e.name, name_len),
                type_name: String::from_utf8_lossy(&load_bytes(&e.type_name, type_len))
                    .into_owned(),
                offset: e.offset.load(Ordering::Relaxed),
                fingerprint: e.fingerprint.load(Ordering::Relaxed),
                size: e.size.load(Ordering::Relaxed),
                align: e.align.load(Ordering::Relaxed),
            };
            // Acquire fence: pairs with the Release fence a claimer issues
            // after bumping the generation and before writing fields; if we
            // read any of its fields, we see its new generation below.
            fence(Ordering::Acquire);
            if e.state.load(Ordering::Relaxed) == s
                && e.generation.load(Ordering::Relaxed) == generation
            {
                return Some(snap);
            }
        }
        None
    }

    /// Scans the whole directory for `name`.
    fn scan(&self, name: &str, hash: u32) -> Scan {
        let mut busy = None;
        let mut first_empty = None;
        for i in 0..DIR_CAPACITY {
            let s = self.entry(i).state.load(Ordering::SeqCst);
            match kind(s) {
                0 if s == 0 => {
                    first_empty.get_or_insert(i);
                }
                READY if hash_of(s) == hash => {
                    if let Some(snap) = self.read_ready(i) {
                        if snap.name == name.as_bytes() {
                            return Scan::Ready(snap);
                        }
                    }
                }
                INIT if hash_of(s) == hash => {
                    busy.get_or_insert((i, s));
                }
                _ => {}
            }
        }
        match busy {
            Some((index, state)) => Scan::Busy { index, state },
            None => Scan::Absent { first_empty },
        }
    }

    /// Whether an entry other than `mine` holds (or is making) `name`.
    fn rival(&self, name: &str, hash: u32, mine: usize) -> bool {
        (0..DIR_CAPACITY).filter(|&i| i != mine).any(|i| {
            let s = self.entry(i).state.load(Ordering::SeqCst);
            match kind(s) {
                INIT => hash_of(s) == hash,
                READY => {
                    hash_of(s) == hash
                        && self
                            .read_ready(i)
                            .map_or(true, |snap| snap.name == name.as_bytes())
                }
                _ => false,
            }
        })
    }

    fn typed<T: Shared>(&self, name: &str, snap: &Snapshot) -> Result<RelPtr<T>> {
        if snap.fingerprint != T::FINGERPRINT
            || snap.size != size_of::<T>() as u64
            || snap.align != align_of::<T>() as u64
        {
            return Err(Error::TypeMismatch {
                object: format!("named object {name:?}"),
                expected: describe::<T>(),
                found: snap.describe(),
            });
        }
        Ok(RelPtr::from_heap(snap.offset))
    }

    /// [`SharedHeap::find_or_init`].
    pub(crate) fn find_or_init<T: Shared>(
        &self,
        name: &str,
        init: impl FnOnce() -> T,
    ) -> Result<RelPtr<T>> {
        check_name(name)?;
        let hash = name_hash(name);
        let me = sys::gettid();
        let mut backoff = Backoff::new();
        let mut init = Some(init);
        // The initializer waited for: (entry, state, since when).
        let mut waiting: Option<(usize, u64, Instant)> = None;
        loop {
            let i = match self.scan(name, hash) {
                Scan::Ready(snap) => return self.typed::<T>(name, &snap),
                Scan::Busy { index, state } => {
                    let tid = tid_of(state);
                    let claimer = self.entry(index).claimer.load(Ordering::Acquire);
                    // Our tid: our own claim (reentrant use), unless the
                    // record names another thread that had this tid before.
                    if tid == me && (claimer == 0 || claimer == claimer_record()) {
                        return Err(Error::InvalidArgument {
                            what: format!(
                                "find_or_init({name:?}) was called from the initializer of the same name"
                            ),
                        });
                    }
                    if !claimer_runs(self.entry(index), tid) {
                        // The initializer died: free its entry (exact value).
                        let _ = self.entry(index).state.compare_exchange(
                            state,
                            0,
                            Ordering::SeqCst,
                            Ordering::Relaxed,
                        );
                    } else {
                        let since = match waiting {
                            Some((i, s, t)) if (i, s) == (index, state) => t,
                            _ => waiting.insert((index, state, Instant::now())).2,
                        };
                        if since.elapsed() >= INIT_WAIT {
                            return Err(Error::Timeout {
                                what: format!(
                                    "named object {name:?}: directory entry {index} has been initializing (by thread {tid}) for {INIT_WAIT:?}"
                                ),
                            });
                        }
                        backoff.sleep();
                    }
                    continue;
                }
                Scan::Absent { first_empty: None } => {
                    return Err(Error::DirectoryFull {
                        capacity: DIR_CAPACITY,
                    })
                }
                Scan::Absent {
                    first_empty: Some(i),
                } => i,
            };
            let e = self.entry(i);
            let claimed = state(INIT, hash, me);
            // SeqCst: the claim and the rival scan below are ordered with a
            // rival's claim and scan, so at least one of two sees the other.
            if e.state
                .compare_exchange(0, claimed, Ordering::SeqCst, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // Release: a waiter that reads the record (Acquire) and finds
            // our tid in it sees a whole record.
            e.claimer.store(claimer_record(), Ordering::Release);
            let mut guard = ClaimGuard {
                entry: e,
                claimed,
                armed: true,
            };
            if self.rival(name, hash, i) {
                drop(guard);
                backoff.sleep();
                continue;
            }
            e.generation.fetch_add(1, Ordering::Relaxed);
            // Release fence: pairs with the Acquire fence in read_ready(): a
            // reader that sees any field written below sees the new
            // generation.
            fence(Ordering::Release);
            let type_name = &T::NAME.as_bytes()[..T::NAME.len().min(MAX_TYPE_NAME_LEN)];
            store_bytes(&e.name, name.as_bytes());
            store_bytes(&e.type_name, type_name);
            e.lens.store(
                name.len() as u64 | ((type_name.len() as u64) << 32),
                Ordering::Relaxed,
            );
            e.fingerprint.store(T::FINGERPRINT, Ordering::Relaxed);
            e.size.store(size_of::<T>() as u64, Ordering::Relaxed);
            e.align.store(align_of::<T>() as u64, Ordering::Relaxed);
            let Some(init) = init.take() else {
                // Unreachable: init is taken once, right before we return.
                return Err(Error::InvalidArgument {
                    what: "initializer already used".to_owned(),
                });
            };
            let ptr = self.heap.new(init())?;
            e.offset.store(ptr.offset(), Ordering::Relaxed);
            e.claimer.store(0, Ordering::Relaxed);
            // Release: publishes the fields and the object to the Acquire
            // loads in read_ready().
            if e.state
                .compare_exchange(
                    claimed,
                    state(READY, hash, 0),
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                // Someone judged us dead and took the entry: undo and lose.
                guard.armed = false;
                // SAFETY: the pointer was never published (our entry did not
                // become READY), so nobody else holds it, and we made no
                // reference to the value.
                unsafe { self.heap.delete(ptr)? };
                return Err(Error::Timeout {
                    what: format!("named object {name:?}: the entry was taken over"),
                });
            }
            guard.armed = false;
            return Ok(ptr);
        }
    }

    /// [`SharedHeap::find`].
    pub(crate) fn find<T: Shared>(&self, name: &str) -> Result<RelPtr<T>> {
        check_name(name)?;
        match self.scan(name, name_hash(name)) {
            Scan::Ready(snap) => self.typed::<T>(name, &snap),
            _ => Err(Error::NameNotFound {
                name: name.to_owned(),
            }),
        }
    }

    /// [`SharedHeap::remove`].
    pub(crate) fn remove(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let hash = name_hash(name);
        loop {
            let Scan::Ready(snap) = self.scan(name, hash) else {
                return Err(Error::NameNotFound {
                    name: name.to_owned(),
                });
            };
            // The same state too: an entry that matches only by name and
            // offset (a peer's copy) would fail the CAS below forever.
            let Some(i) = (0..DIR_CAPACITY).find(|&i| {
                self.read_ready(i).is_some_and(|s| {
                    s.state == snap.state && s.name == snap.name && s.offset == snap.offset
                })
            }) else {
                continue;
            };
            // Release: the entry is free for a new claimer, and nothing
            // of ours is read from it afterwards.
            if self
                .entry(i)
                .state
                .compare_exchange(snap.state, 0, Ordering::Release, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            return Ok(());
        }
    }

    /// How many entries are `READY`, and which look abandoned (`INIT` by a
    /// dead thread), for stats and check.
    pub(crate) fn census(&self) -> (usize, Vec<String>) {
        let mut ready = 0;
        let mut stale = Vec::new();
        for i in 0..DIR_CAPACITY {
            let s = self.entry(i).state.load(Ordering::Acquire);
            match kind(s) {
                READY => ready += 1,
                INIT if !claimer_runs(self.entry(i), tid_of(s)) => stale.push(format!(
                    "directory entry {i} was left initializing by thread {} that no longer exists",
                    tid_of(s)
                )),
                _ => {}
            }
        }
        (ready, stale)
    }

    /// Every `READY` entry, for check.
    pub(crate) fn entries(&self) -> Vec<Snapshot> {
        (0..DIR_CAPACITY)
            .filter_map(|i| self.read_ready(i))
            .collect()
    }

    /// Entry `i`'s raw state word (tests).
    #[cfg(test)]
    pub(crate) fn entry_state(&self, i: usize) -> &'s AtomicU64 {
        &self.entry(i).state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::testing::TestRegion;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn state_words_round_trip() {
        let s = state(INIT, 0x3abc_def0, 4242);
        assert_eq!((kind(s), hash_of(s), tid_of(s)), (INIT, 0x3abc_def0, 4242));
        assert_eq!(kind(state(READY, u32::MAX, u32::MAX)), READY);
        assert_ne!(name_hash("counter"), name_hash("counters"));
    }

    #[test]
    fn find_or_init_runs_init_once_and_types_are_checked() {
        let region = TestRegion::new(1 << 20);
        let heap = region.heap();
        let mut runs = 0;
        let a = heap
            .find_or_init("counter", || {
                runs += 1;
                AtomicU64::new(7)
            })
            .unwrap();
        let b = heap
            .find_or_init("counter", || {
                runs += 1;
                AtomicU64::new(9)
            })
            .unwrap();
        assert_eq!((a, runs), (b, 1));
        assert_eq!(heap.get(a).unwrap().load(Ordering::Relaxed), 7);
        assert_eq!(heap.find::<AtomicU64>("counter").unwrap(), a);
        match heap.find::<AtomicU32>("counter") {
            Err(Error::TypeMismatch {
                object,
                expected,
                found,
            }) => {
                assert_eq!(object, "named object \"counter\"");
                assert!(expected.starts_with("AtomicU32 (size 4"), "{expected}");
                assert!(found.starts_with("AtomicU64 (size 8"), "{found}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            heap.find::<AtomicU64>("nope"),
            Err(Error::NameNotFound { .. })
        ));
        heap.remove("counter").unwrap();
        assert!(matches!(
            heap.find::<AtomicU64>("counter"),
            Err(Error::NameNotFound { .. })
        ));
        assert!(matches!(
            heap.remove("counter"),
            Err(Error::NameNotFound { .. })
        ));
        // remove() unlinks the name only: the object stays, and freeing it
        // is the unsafe step of whoever knows nobody uses it.
        assert_eq!(heap.get(a).unwrap().load(Ordering::Relaxed), 7);
        // SAFETY: no reference to the object is alive any more.
        unsafe { heap.delete(a) }.unwrap();
        assert_eq!(heap.stats().in_use_bytes, 0);
    }

    #[test]
    fn names_are_bounded_and_the_directory_fills() {
        let region = TestRegion::new(4 << 20);
        let heap = region.heap();
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            heap.find_or_init(&long, || 0u8),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            heap.find::<u8>(""),
            Err(Error::InvalidArgument { .. })
        ));
        let max = "y".repeat(MAX_NAME_LEN);
        let p = heap.find_or_init(&max, || 5u8).unwrap();
        assert_eq!(heap.find::<u8>(&max).unwrap(), p);
        for i in 1..DIR_CAPACITY {
            heap.find_or_init(&format!("n{i}"), || i as u64).unwrap();
        }
        assert!(matches!(
            heap.find_or_init("one-too-many", || 0u64),
            Err(Error::DirectoryFull {
                capacity: DIR_CAPACITY
            })
        ));
        heap.remove("n7").unwrap();
        let q = heap.find_or_init("one-too-many", || 77u64).unwrap();
        assert_eq!(*heap.get(q).unwrap(), 77);
        assert_eq!(*heap.get(heap.find::<u64>("n8").unwrap()).unwrap(), 8);
    }

    #[test]
    fn reentrant_init_is_an_error_and_a_failed_init_frees_the_entry() {
        let region = TestRegion::new(1 << 20);
        let heap = region.heap();
        let r = heap.find_or_init("outer", || {
            let inner = heap.find_or_init("outer", || 1u32);
            assert!(
                matches!(inner, Err(Error::InvalidArgument { .. })),
                "{inner:?}"
            );
            2u32
        });
        assert_eq!(*heap.get(r.unwrap()).unwrap(), 2);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            heap.find_or_init::<u32>("boom", || panic!("init failed"))
        }));
        assert!(panicked.is_err());
        // The entry was released: the next caller initializes.
        assert_eq!(
            *heap
                .get(heap.find_or_init("boom", || 3u32).unwrap())
                .unwrap(),
            3
        );
    }

    #[test]
    fn an_initializer_that_died_is_replaced() {
        let region = TestRegion::new(1 << 20);
        let heap = region.heap();
        // Forge an entry left INIT by a thread id that cannot exist.
        let dead = state(INIT, name_hash("orphan"), i32::MAX as u32 - 1);
        heap.directory()
            .entry_state(5)
            .store(dead, Ordering::SeqCst);
        assert_eq!(heap.directory().census().1.len(), 1);
        let p = heap.find_or_init("orphan", || 11u16).unwrap();
        assert_eq!(*heap.get(p).unwrap(), 11);
        assert_eq!(heap.directory().census(), (1, vec![]));
    }

    #[test]
    fn remove_ends_when_a_copied_entry_differs_only_in_its_state() {
        // Leaked, so that a remove() that never returns can be abandoned.
        let region: &'static TestRegion = Box::leak(Box::new(TestRegion::new(1 << 20)));
        let heap = region.heap();
        let p = heap.find_or_init("twin", || 3u64).unwrap();
        // A peer's stray copy: entry 1 becomes entry 0, then entry 0's state
        // is changed to READY with another name hash. Entry 0 now matches
        // the name and offset but not the state scan() found in entry 1.
        let (a, b) = (heap.directory().entry(0), heap.directory().entry(1));
        fn words(e: &DirEntry) -> Vec<&AtomicU64> {
            let mut w = vec![&e.state, &e.generation, &e.offset, &e.fingerprint];
            w.extend([&e.size, &e.align, &e.lens, &e.claimer]);
            w.extend(e.name.iter().chain(&e.type_name));
            w
        }
        for (from, to) in words(a).into_iter().zip(words(b)) {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let other = state(READY, name_hash("twin") ^ 1, 0);
        a.state.store(other, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(heap.remove("twin")));
        let removed = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("remove() did not return: it loops on the copied entry");
        assert!(removed.is_ok(), "{removed:?}");
        assert!(heap.get(p).is_ok(), "the object stays allocated");
    }

    #[test]
    fn an_entry_stuck_initializing_by_a_live_thread_times_out() {
        let region = TestRegion::new(1 << 20);
        let heap = region.heap();
        // Forge an entry left INIT by a thread that exists but is not
        // initializing anything (thread 1 always exists).
        let stuck = state(INIT, name_hash("stuck"), 1);
        heap.directory()
            .entry_state(9)
            .store(stuck, Ordering::SeqCst);
        let started = std::time::Instant::now();
        match heap.find_or_init("stuck", || 1u8) {
            Err(Error::Timeout { what }) => assert!(what.contains("\"stuck\""), "{what}"),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() >= INIT_WAIT);
        // Other names are not held up, and the entry's end frees the name.
        assert!(heap.find_or_init("other", || 2u8).is_ok());
        heap.directory().entry_state(9).store(0, Ordering::SeqCst);
        assert_eq!(
            *heap
                .get(heap.find_or_init("stuck", || 3u8).unwrap())
                .unwrap(),
            3
        );
    }

    #[test]
    fn racing_threads_initialize_once() {
        let region = TestRegion::new(1 << 20);
        let heap = region.heap();
        let runs = AtomicU64::new(0);
        let ptrs: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        heap.find_or_init("shared", || {
                            runs.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(5));
                            AtomicU64::new(0)
                        })
                        .unwrap()
                        .offset()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(ptrs.windows(2).all(|w| w[0] == w[1]), "{ptrs:?}");
    }
}
