//! This process's side of a segment's registry: which slots its threads
//! hold through one [`Segment`](crate::Segment), found in one
//! thread-local lookup on the allocation path.
//!
//! An [`Attachment`] belongs to one `Segment` (shared, through an `Arc`,
//! with the thread-local entries of the threads that claimed a slot
//! through it). A thread claims its slot the first time it allocates
//! through the segment and frees it when it exits; dropping the `Segment`
//! frees every slot its threads still hold. The two never overlap: a
//! thread's exit marks itself as a user of the attachment first, and the
//! drop waits for users before it lets the mapping go.

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::{identity_word, my_identity, Kind, Registry, RegistryHeader, Slot, SLOTS};
use crate::heap::cache::Mirror;
use crate::heap::SharedHeap;
use crate::process;

/// Attachments made so far in this process: each gets a number never
/// reused, so a thread-local entry can never be taken for a later one.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How many allocations a thread that found every slot taken makes before
/// it looks again.
const RETRY_AFTER: u32 = 4096;

/// One `Segment`'s attachment to its registry, in this process.
pub(crate) struct Attachment {
    id: u64,
    /// The registry inside the mapping (valid while `alive`).
    header: NonNull<RegistryHeader>,
    slots: NonNull<Slot>,
    /// False once the `Segment` is being dropped.
    alive: AtomicBool,
    /// Threads of this process inside `leave()`: `pid << 32 | count` (a
    /// forked child ignores its parent's count).
    users: AtomicU64,
    /// Per slot, the owner word of the thread of this process that holds
    /// it through this attachment (0: none).
    held: Box<[AtomicU64]>,
    /// The process slot: `pid << 32 | index + 1` (0: none).
    process_slot: AtomicU64,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("id", &self.id)
            .field("alive", &self.alive.load(Ordering::Relaxed))
            .finish()
    }
}

// SAFETY: the pointers lead to the registry inside the segment's mapping,
// which is only ever accessed through atomics, from any thread; the
// attachment never dereferences them once `alive` is false (see `detach`).
unsafe impl Send for Attachment {}
// SAFETY: as for Send.
unsafe impl Sync for Attachment {}

/// What the allocation path needs of the calling thread's slot: the slot,
/// its custody number (`heap/meta.rs`) and this thread's mirror of its
/// cache (`heap/cache.rs`).
#[derive(Clone, Copy)]
pub(crate) struct Local<'s> {
    pub(crate) slot: &'s Slot,
    pub(crate) custody: u8,
    /// Owned by this thread's entry in `HELD`; only this thread uses it.
    pub(crate) mirror: NonNull<Mirror>,
}

/// `LAST` when it names nothing.
const NO_LAST: Last = Last {
    id: 0,
    generation: 0,
    slot: std::ptr::null(),
    mirror: std::ptr::null_mut(),
    custody: 0,
};

#[derive(Clone, Copy)]
struct Last {
    id: u64,
    generation: u64,
    /// Null: "no slot was free, retry later".
    slot: *const Slot,
    mirror: *mut Mirror,
    custody: u8,
}

thread_local! {
    /// The slot this thread used last, with the attachment's id and the
    /// fork generation it was claimed in.
    static LAST: Cell<Last> = const { Cell::new(NO_LAST) };
    /// Allocations left before a thread without a slot looks again.
    static RETRY: Cell<u32> = const { Cell::new(0) };
    /// Every slot this thread holds, released when it exits.
    static HELD: Held = const { Held(RefCell::new(Vec::new())) };
}

struct Entry {
    att: Arc<Attachment>,
    slot: *const Slot,
    generation: u64,
    mirror: Box<Mirror>,
}

struct Held(RefCell<Vec<Entry>>);

impl Drop for Held {
    fn drop(&mut self) {
        // The mirrors go with the entries: nothing may use them after.
        let _ = LAST.try_with(|l| l.set(NO_LAST));
        let generation = process::fork_generation();
        for e in self.0.get_mut().drain(..) {
            if e.generation == generation {
                e.att.leave(e.slot);
            }
        }
    }
}

impl Attachment {
    /// An attachment to the registry at `header` (its slots follow it).
    ///
    /// # Safety
    /// `header` must point to a heap's registry inside a mapping that stays
    /// valid until [`detach`](Self::detach) returns, accessed only through
    /// atomics.
    pub(crate) unsafe fn new(header: NonNull<RegistryHeader>) -> Arc<Attachment> {
        // SAFETY: the slots follow the 64-byte header inside the registry
        // (the caller's contract).
        let slots = unsafe { NonNull::new_unchecked(header.as_ptr().add(1).cast::<Slot>()) };
        Arc::new(Attachment {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            header,
            slots,
            alive: AtomicBool::new(true),
            users: AtomicU64::new(0),
            held: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            process_slot: AtomicU64::new(0),
        })
    }

    /// The registry (only while alive: every caller holds the `Segment`
    /// borrowed, or is a user counted in `users`).
    pub(crate) fn registry(&self) -> Registry<'_> {
        // SAFETY: `new`'s contract: the registry stays mapped while the
        // attachment is alive, and callers only ask while it is; all
        // atomics.
        unsafe {
            Registry {
                header: self.header.as_ref(),
                slots: std::slice::from_raw_parts(self.slots.as_ptr(), SLOTS),
            }
        }
    }

    /// The calling thread's slot, claiming one the first time; `None` when
    /// every slot is taken.
    #[inline(always)]
    pub(crate) fn slot<'s>(self: &'s Arc<Self>, heap: &SharedHeap<'s>) -> Option<Local<'s>> {
        let last = LAST.get();
        if last.id == self.id && last.generation == process::fork_generation() {
            return Self::local(last);
        }
        self.slot_slow(heap)
    }

    #[inline(always)]
    fn local<'s>(last: Last) -> Option<Local<'s>> {
        // SAFETY: a slot this thread claimed through this attachment (ids
        // are never reused) in this process generation, in the registry,
        // which stays mapped while the caller holds the segment borrowed;
        // the mirror is owned by this thread's entry for it, which lives
        // until the thread exits (and LAST is reset before it goes).
        let slot = unsafe { last.slot.as_ref() }?;
        Some(Local {
            slot,
            custody: last.custody,
            mirror: NonNull::new(last.mirror)?,
        })
    }

    #[cold]
    fn slot_slow<'s>(self: &'s Arc<Self>, heap: &SharedHeap<'s>) -> Option<Local<'s>> {
        let generation = process::fork_generation();
        let last = LAST.get();
        if last.id == self.id && last.generation == generation && last.slot.is_null() {
            // None was free: look again only now and then.
            let left = RETRY.get();
            if left > 0 {
                RETRY.set(left - 1);
                return None;
            }
        }
        let found = HELD
            .try_with(|h| {
                h.0.borrow_mut()
                    .iter_mut()
                    .find(|e| e.att.id == self.id && e.generation == generation)
                    .map(|e| (e.slot, &mut *e.mirror as *mut Mirror))
            })
            .ok()
            .flatten();
        let (slot, mirror) = match found {
            Some(found) => found,
            None => match self.claim_thread(heap) {
                Some(s) => {
                    let s: *const Slot = s;
                    let mut entry = Entry {
                        att: Arc::clone(self),
                        slot: s,
                        generation,
                        mirror: Box::new(Mirror::new()),
                    };
                    // The Box's contents do not move with the entry.
                    let mirror: *mut Mirror = &mut *entry.mirror;
                    if HELD.try_with(|h| h.0.borrow_mut().push(entry)).is_err() {
                        // The thread is exiting: give the slot back now.
                        self.leave(s);
                        return None;
                    }
                    (s, mirror)
                }
                None => {
                    RETRY.set(RETRY_AFTER);
                    (std::ptr::null(), std::ptr::null_mut())
                }
            },
        };
        let custody = if slot.is_null() {
            0
        } else {
            // SAFETY: as in local().
            heap.custody(unsafe { &*slot })
        };
        let last = Last {
            id: self.id,
            generation,
            slot,
            mirror,
            custody,
        };
        LAST.set(last);
        Self::local(last)
    }

    /// Claims a thread slot (and, in a process that has none yet through
    /// this attachment, a process slot), reaping dead slots if none is
    /// free.
    fn claim_thread<'s>(&'s self, heap: &SharedHeap<'s>) -> Option<&'s Slot> {
        self.attach_process(heap);
        let reg = self.registry();
        let me = my_identity();
        let start = process::ThreadIdentity::start_ticks(process::current_identity().detail);
        let s = reg.claim(Kind::Thread, me, start).or_else(|| {
            heap.reap();
            reg.claim(Kind::Thread, me, start)
        });
        match s {
            Some(s) => {
                self.held[self.index(s)].store(me, Ordering::Relaxed);
                Some(s)
            }
            None => {
                reg.header.full.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Claims the slot that says this process is attached (once per
    /// process: a forked child claims its own).
    pub(crate) fn attach_process(&self, heap: &SharedHeap<'_>) {
        let pid = process::current_pid();
        let cur = self.process_slot.load(Ordering::Relaxed);
        if cur >> 32 == u64::from(pid) {
            return;
        }
        let reg = self.registry();
        let me = identity_word(pid, pid, process::process_start_ticks());
        let start = process::process_start_ticks();
        let s = reg.claim(Kind::Process, me, start).or_else(|| {
            heap.reap();
            reg.claim(Kind::Process, me, start)
        });
        match s {
            Some(s) => {
                let i = self.index(s);
                self.held[i].store(me, Ordering::Relaxed);
                self.process_slot
                    .store(u64::from(pid) << 32 | (i as u64 + 1), Ordering::Relaxed);
            }
            None => {
                reg.header.full.fetch_add(1, Ordering::Relaxed);
                // Not attached: remember the try so it is made once.
                self.process_slot
                    .store(u64::from(pid) << 32, Ordering::Relaxed);
            }
        }
    }

    fn index(&self, s: &Slot) -> usize {
        (s as *const Slot as usize - self.slots.as_ptr() as usize) / std::mem::size_of::<Slot>()
    }

    /// Frees the slot a thread of this process holds (at its exit), unless
    /// the segment is already gone.
    fn leave(&self, slot: *const Slot) {
        let pid = u64::from(process::current_pid());
        // SeqCst (with the SeqCst store of `alive` in detach()): either we
        // see the segment dying, or detach() sees us as a user and waits.
        let _ = self
            .users
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                Some(if u >> 32 == pid { u + 1 } else { pid << 32 | 1 })
            });
        if self.alive.load(Ordering::SeqCst) {
            // SAFETY: the attachment is alive and we are a counted user, so
            // detach() has not let the mapping go; the slot is one of its.
            let s = unsafe { &*slot };
            let i = self.index(s);
            let me = self.held[i].swap(0, Ordering::Relaxed);
            if me != 0 {
                self.registry().release(s, me);
            }
        }
        let _ = self
            .users
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                (u >> 32 == pid && u & 0xffff_ffff > 0).then(|| u - 1)
            });
    }

    /// Frees every slot this process holds through the attachment; after
    /// it returns the registry is never touched again through it.
    pub(crate) fn detach(&self) {
        self.alive.store(false, Ordering::SeqCst);
        let pid = u64::from(process::current_pid());
        // Wait for threads inside leave() (a short, bounded section).
        loop {
            let u = self.users.load(Ordering::SeqCst);
            if u >> 32 != pid || u & 0xffff_ffff == 0 {
                break;
            }
            std::thread::yield_now();
        }
        let reg = self.registry();
        for (i, held) in self.held.iter().enumerate() {
            let me = held.swap(0, Ordering::Relaxed);
            // Only slots of this process (not a parent's, in a fork).
            if me != 0 && (me >> 19) & ((1 << 22) - 1) == pid & ((1 << 22) - 1) {
                reg.release(&reg.slots[i], me);
            }
        }
    }
}
