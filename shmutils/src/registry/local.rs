//! This process's side of a segment's registry: which slots its threads
//! hold through one [`Segment`](crate::Segment), found in one
//! thread-local lookup on the allocation path, and the death tokens they
//! hold there.
//!
//! An [`Attachment`] belongs to one `Segment` (shared, through an `Arc`,
//! with the thread-local entries of the threads that claimed a slot
//! through it). A thread claims its slot the first time it uses the
//! segment's heap, and holds its slot's **token** (`lock/token.rs`, a
//! robust mutex) from then on, so that lock waiters in other processes
//! learn of its death from the kernel. It gives both up when it exits,
//! when it drops the `Segment` itself, or, if another thread dropped the
//! `Segment` first, the next time it claims a slot anywhere.
//!
//! glibc links a held token into its thread's robust list, so the token
//! must stay mapped, at the address it was taken at, until that very
//! thread gives it up. Tokens are therefore taken through a second mapping
//! of just the registry's pages ([`RegistryMap`]), which every thread entry
//! keeps alive: dropping the `Segment` unmaps the segment, never a token a
//! thread still holds.
//!
//! Lock waiters find an owner's token through [`resolve`], installed as
//! the lock layer's resolver: a table of the attachments of this process
//! and the address ranges of their mappings.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once, Weak};

use super::{
    identity_word, my_identity, pid_of, Kind, Registry, RegistryHeader, Slot, REGISTRY_BYTES, SLOTS,
};
use crate::heap::cache::Mirror;
use crate::heap::SharedHeap;
use crate::lock::token::{self, Token};
use crate::mmap::forksafe::ForkSafe;
use crate::process;
use crate::sys;

/// Attachments made so far in this process: each gets a number never
/// reused, so a thread-local entry can never be taken for a later one.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How many allocations a thread that found every slot taken makes before
/// it looks again.
const RETRY_AFTER: u32 = 4096;

/// The live attachments of this process with the address range of their
/// segment's mapping, for [`resolve`]. An attachment is in it from its
/// creation until its `Segment` starts to drop, so a range found here is
/// a live mapping.
type Attached = Vec<(usize, usize, Weak<Attachment>)>;
static ATTACHED: ForkSafe<Attached> = ForkSafe::new(Vec::new(), Vec::new());

/// The registry slots threads of this process use, by object (`st_dev`,
/// `st_ino`) and slot index, across every `Segment` of the object in the
/// process: `take_local` marks a slot here, so two threads of this process
/// never share one (a cache's list changes with plain stores by its one
/// owner), whatever a peer writes in the segment. Only the claiming paths
/// (not the allocation path) touch it.
type Taken = Vec<(u64, u64, usize)>;
static TAKEN: ForkSafe<Taken> = ForkSafe::new(Vec::new(), Vec::new());

/// A second mapping of a segment's registry pages (read-write, shared):
/// the address its threads take their tokens at. Unmapped when the last
/// `Arc` goes, which is after every thread of this process gave its token
/// up.
pub(crate) struct RegistryMap {
    base: NonNull<u8>,
    len: usize,
    header: NonNull<RegistryHeader>,
}

// SAFETY: the mapping is only reached through atomics (the registry's
// slots), from any thread; it is unmapped once, in Drop.
unsafe impl Send for RegistryMap {}
// SAFETY: as for Send.
unsafe impl Sync for RegistryMap {}

impl RegistryMap {
    /// Maps the registry at `reg_off` of the object `fd` again.
    ///
    /// # Errors
    /// What `mmap` refuses.
    pub(crate) fn new(fd: BorrowedFd<'_>, reg_off: u64) -> io::Result<RegistryMap> {
        let page = sys::page_size() as u64;
        let from = reg_off / page * page;
        let to = (reg_off + REGISTRY_BYTES).div_ceil(page) * page;
        let len = (to - from) as usize;
        // SAFETY: a new shared mapping of the object's pages (no fixed
        // address): it touches no existing memory.
        let base = unsafe {
            sys::mmap(
                0,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                Some(fd),
                from,
            )
        }?;
        let base = NonNull::new(base).ok_or_else(|| io::Error::other("mmap returned null"))?;
        // SAFETY: reg_off - from < page, and the registry's bytes end
        // before `to`: the header lies inside the new mapping.
        let header =
            unsafe { NonNull::new_unchecked(base.as_ptr().add((reg_off - from) as usize).cast()) };
        Ok(RegistryMap { base, len, header })
    }

    fn registry(&self) -> Registry<'_> {
        // SAFETY: the registry lies inside this mapping, which lives as
        // long as self; all atomics.
        unsafe { Registry::at(self.header) }
    }
}

impl Drop for RegistryMap {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours (made in new()); no token is held in
        // it any more (every holder's entry keeps an Arc to it) and no
        // reference into it outlives the last Arc.
        let _ = unsafe { sys::munmap(self.base.as_ptr(), self.len) };
    }
}

/// One `Segment`'s attachment to its registry, in this process.
pub(crate) struct Attachment {
    id: u64,
    /// The registry inside the segment's mapping (valid while `alive`).
    header: NonNull<RegistryHeader>,
    /// The same registry through its own mapping, for tokens.
    map: Arc<RegistryMap>,
    /// False once the `Segment` is being dropped.
    alive: AtomicBool,
    /// Per slot, the owner word of the thread of this process that holds
    /// it through this attachment (0: none). Whoever swaps it to 0 frees
    /// the slot.
    held: Box<[AtomicU64]>,
    /// Per slot, whether its holder took the slot's token.
    tokens: Box<[AtomicBool]>,
    /// The process slot: `pid << 32 | index + 1` (0: none).
    process_slot: AtomicU64,
    /// The object's identity (`st_dev`, `st_ino`), for `TAKEN`.
    object: (u64, u64),
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

/// What the allocation path needs of the calling thread's slot: its
/// mirror (`heap/cache.rs`), which also names the slot and its custody
/// number (`heap/meta.rs`). One pointer, so it stays in a register.
#[derive(Clone, Copy)]
pub(crate) struct Local<'s> {
    /// Owned by this thread's entry in `HELD`; only this thread uses it.
    pub(crate) mirror: NonNull<Mirror>,
    _slot: std::marker::PhantomData<&'s Slot>,
}

impl<'s> Local<'s> {
    /// `mirror` as this thread's view of its slot.
    ///
    /// # Safety
    /// `mirror` must be this thread's own, for a slot (`Mirror::slot`) in a
    /// registry that stays mapped for `'s`, and only this thread may use
    /// it.
    pub(crate) unsafe fn new(mirror: NonNull<Mirror>) -> Local<'s> {
        Local {
            mirror,
            _slot: std::marker::PhantomData,
        }
    }

    /// The slot.
    #[inline(always)]
    pub(crate) fn slot(self) -> &'s Slot {
        // SAFETY: `new`'s contract: the mirror names a slot of a registry
        // mapped for 's; reading its two plain fields races nothing (only
        // this thread writes them, before handing the mirror out).
        unsafe { &*(*self.mirror.as_ptr()).slot }
    }

    /// The custody number of the slot's cached blocks.
    #[inline(always)]
    pub(crate) fn custody(self) -> u8 {
        // SAFETY: as in slot().
        unsafe { (*self.mirror.as_ptr()).custody }
    }
}

/// `LAST` when it names nothing.
const NO_LAST: Last = Last {
    id: 0,
    generation: 0,
    mirror: std::ptr::null_mut(),
};

#[derive(Clone, Copy)]
struct Last {
    id: u64,
    generation: u64,
    /// Null: "no slot was free, retry later".
    mirror: *mut Mirror,
}

/// Whether the fork handler (process.rs) resets `LAST` in a forked child.
static FORK_RESETS: AtomicBool = AtomicBool::new(false);

/// Called by the fork handler in a forked child, on the forking thread
/// (the child's only thread): its `LAST` named its parent's slot. Only a
/// plain thread-local store: async-signal-safe.
pub(crate) fn forget_in_child() {
    let _ = LAST.try_with(|l| l.set(NO_LAST));
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
    /// The slot's index in the registry.
    index: usize,
    generation: u64,
    /// Also names the slot in the segment's mapping (used only while it
    /// lives).
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
                e.att.leave(e.index);
            }
        }
    }
}

impl Attachment {
    /// An attachment to the registry at `header` (its slots follow it),
    /// in the mapping `range`, whose object is also mapped by `map`.
    ///
    /// # Safety
    /// `header` must point to a heap's registry inside the mapping `range`
    /// (start, end), which must stay valid until [`detach`](Self::detach)
    /// returns, accessed only through atomics; `map` must map the same
    /// registry.
    pub(crate) unsafe fn new(
        header: NonNull<RegistryHeader>,
        range: (usize, usize),
        map: RegistryMap,
        object: (u64, u64),
    ) -> Arc<Attachment> {
        static RESOLVER: Once = Once::new();
        // SAFETY: `resolve` returns tokens in the registry of a live
        // attachment whose mapping contains the lock: that mapping is the
        // one the waiter holds the lock in (live mappings do not overlap,
        // and an attachment leaves ATTACHED before its mapping goes), so
        // the token is mapped as long as the lock is borrowed.
        RESOLVER.call_once(|| unsafe { token::set_resolver(resolve) });
        if process::fork_handler_registered() {
            FORK_RESETS.store(true, Ordering::Relaxed);
        }
        let att = Arc::new(Attachment {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            header,
            map: Arc::new(map),
            alive: AtomicBool::new(true),
            held: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            tokens: (0..SLOTS).map(|_| AtomicBool::new(false)).collect(),
            process_slot: AtomicU64::new(0),
            object,
        });
        let weak = Arc::downgrade(&att);
        ATTACHED
            .lock()
            .change(|v| v.push((range.0, range.1, weak.clone())));
        att
    }

    /// The registry in the segment's mapping (only while alive: every
    /// caller holds the `Segment` borrowed; after it, `map`'s view serves).
    pub(crate) fn registry(&self) -> Registry<'_> {
        // SAFETY: `new`'s contract: the registry stays mapped while the
        // attachment is alive, and callers only ask while it is; all
        // atomics.
        unsafe { Registry::at(self.header) }
    }

    /// This attachment's id (never 0, never reused in the process).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The calling thread's slot through the attachment with id `id`, if
    /// its thread-local lookup has it (a `SharedHeap` keeps the id beside
    /// its attachment, so the common case reads nothing else). `None`:
    /// ask [`slot`](Self::slot).
    #[inline(always)]
    pub(crate) fn cached<'s>(id: u64) -> Option<Local<'s>> {
        let last = LAST.get();
        if id != 0
            && last.id == id
            && (FORK_RESETS.load(Ordering::Relaxed)
                || last.generation == process::fork_generation())
        {
            // `local` gives None for the "no slot free" entry; `slot` then
            // decides when to look again.
            return Self::local(last);
        }
        None
    }

    /// The calling thread's slot, claiming one the first time; `None` when
    /// every slot is taken.
    #[inline(always)]
    pub(crate) fn slot<'s>(self: &'s Arc<Self>, heap: &SharedHeap<'s>) -> Option<Local<'s>> {
        let last = LAST.get();
        // With the fork handler in place, a forked child's copy of LAST is
        // reset (forget_in_child), so the generation need not be compared.
        if last.id == self.id
            && (FORK_RESETS.load(Ordering::Relaxed)
                || last.generation == process::fork_generation())
        {
            return Self::local(last);
        }
        self.slot_slow(heap)
    }

    #[inline(always)]
    fn local<'s>(last: Last) -> Option<Local<'s>> {
        let mirror = NonNull::new(last.mirror)?;
        // SAFETY: the mirror of a slot this thread claimed through this
        // attachment (ids are never reused) in this process generation, in
        // the registry, which stays mapped while the caller holds the
        // segment borrowed; it is owned by this thread's entry for it,
        // which lives until the thread exits (and LAST is reset before it
        // goes).
        Some(unsafe { Local::new(mirror) })
    }

    #[cold]
    fn slot_slow<'s>(self: &'s Arc<Self>, heap: &SharedHeap<'s>) -> Option<Local<'s>> {
        let generation = process::fork_generation();
        let last = LAST.get();
        if last.id == self.id && last.generation == generation && last.mirror.is_null() {
            // None was free: look again only now and then.
            let left = RETRY.get();
            if left > 0 {
                RETRY.set(left - 1);
                return None;
            }
        }
        let found = HELD
            .try_with(|h| {
                let mut entries = h.0.borrow_mut();
                // Slots held through segments dropped since (by another
                // thread): give them up now.
                entries.retain(|e| {
                    let stale = e.generation == generation && !e.att.alive.load(Ordering::Acquire);
                    if stale {
                        e.att.leave(e.index);
                    }
                    !stale
                });
                entries
                    .iter_mut()
                    .find(|e| e.att.id == self.id && e.generation == generation)
                    .map(|e| &mut *e.mirror as *mut Mirror)
            })
            .ok()
            .flatten();
        let mirror = match found {
            Some(found) => found,
            None => match self.claim_thread(heap) {
                Some(s) => {
                    let index = self.index(s);
                    let mut entry = Entry {
                        att: Arc::clone(self),
                        index,
                        generation,
                        mirror: Box::new(Mirror::new(s, heap.custody(s))),
                    };
                    // The Box's contents do not move with the entry.
                    let mirror: *mut Mirror = &mut *entry.mirror;
                    if HELD.try_with(|h| h.0.borrow_mut().push(entry)).is_err() {
                        // The thread is exiting: give the slot back now.
                        self.leave(index);
                        return None;
                    }
                    mirror
                }
                None => {
                    RETRY.set(RETRY_AFTER);
                    std::ptr::null_mut()
                }
            },
        };
        let last = Last {
            id: self.id,
            generation,
            mirror,
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
        let claim = || {
            // A slot some other thread of this process already uses (a
            // peer zeroed its owner word under it) is never shared: skip
            // it (it stays claimed in our name; see `take_local`).
            for _ in 0..SLOTS {
                let s = reg.claim(Kind::Thread, me, start)?;
                if self.take_local(self.index(s), me) {
                    return Some(s);
                }
                heap.note_corruption();
            }
            None
        };
        let s = claim().or_else(|| {
            heap.reap();
            claim()
        });
        match s {
            Some(s) => {
                let i = self.index(s);
                // The token, through the registry's own mapping (which
                // outlives the segment's while this thread holds it).
                // SAFETY: the slot was free (released after its last holder
                // gave its token up) or reaped (its holder is dead), so no
                // live thread holds the token; this thread's entry keeps
                // the mapping until it gives the token up (leave()).
                let took = unsafe { self.map.registry().slots[i].token.hold() }.is_ok();
                self.tokens[i].store(took, Ordering::Relaxed);
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
        match s.filter(|s| self.take_local(self.index(s), me)) {
            Some(s) => {
                let i = self.index(s);
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

    /// Marks slot `i` as used through this attachment by the calling
    /// thread (`me`); false if a thread of this process already uses it.
    /// The owner word in the segment decides between processes, but a
    /// peer may write it: this process-local mark is what guarantees that
    /// two threads of this process never share a cache (whose list they
    /// change with plain stores).
    pub(crate) fn take_local(&self, i: usize, me: u64) -> bool {
        let (dev, ino) = self.object;
        let mut taken = TAKEN.lock();
        if taken.get().contains(&(dev, ino, i)) {
            return false;
        }
        taken.change(|t| t.push((dev, ino, i)));
        drop(taken);
        self.held[i].store(me, Ordering::Relaxed);
        true
    }

    /// Undoes [`take_local`](Self::take_local).
    pub(crate) fn drop_local(&self, i: usize, me: u64) {
        if self.held[i]
            .compare_exchange(me, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.untake(i);
        }
    }

    /// Removes slot `i` of this object from `TAKEN`.
    fn untake(&self, i: usize) {
        let (dev, ino) = self.object;
        TAKEN.lock().change(|t| t.retain(|&e| e != (dev, ino, i)));
    }

    /// Whether a thread of this process uses slot `i` (through any
    /// `Segment` of the object): a reaper of this process leaves such a
    /// slot alone, whatever its owner word says.
    pub(crate) fn is_local(&self, i: usize) -> bool {
        let (dev, ino) = self.object;
        TAKEN.lock().get().contains(&(dev, ino, i))
    }

    fn index(&self, s: &Slot) -> usize {
        (s as *const Slot as usize - self.header.as_ptr().wrapping_add(1) as usize)
            / std::mem::size_of::<Slot>()
    }

    /// Gives up the token of slot `i` and frees the slot, for the thread
    /// of this process that holds it (called from that thread: at its
    /// exit, or when it finds the segment dropped), unless `detach` did.
    fn leave(&self, i: usize) {
        let me = self.held[i].swap(0, Ordering::Relaxed);
        if me == 0 {
            return;
        }
        self.untake(i);
        let reg = self.map.registry();
        if self.tokens[i].swap(false, Ordering::Relaxed) {
            // SAFETY: this thread took the token at this address in
            // claim_thread() (the same mapping, which the entry kept).
            let _ = unsafe { reg.slots[i].token.give_up() };
        }
        reg.release(&reg.slots[i], me);
    }

    /// The segment is being dropped: leaves the table of live attachments,
    /// frees the process slot, and gives up the slots (and tokens) of the
    /// calling thread. Other threads of the process give theirs up
    /// themselves (only the holder can give a token up): when they exit, or
    /// when they next claim a slot.
    pub(crate) fn detach(&self) {
        self.alive.store(false, Ordering::Release);
        ATTACHED
            .lock()
            .change(|v| v.retain(|(_, _, w)| !std::ptr::eq(w.as_ptr(), self)));
        let pid = process::current_pid();
        let me = my_identity();
        let process_index = match self.process_slot.load(Ordering::Relaxed) {
            p if p >> 32 == u64::from(pid) && p & 0xffff_ffff != 0 => {
                Some((p & 0xffff_ffff) as usize - 1)
            }
            _ => None,
        };
        for i in 0..SLOTS {
            let w = self.held[i].load(Ordering::Relaxed);
            // Only this process's own (not a parent's, in a fork), and of
            // its threads only the caller's.
            if w == 0 || pid_of(w) != pid & ((1 << 22) - 1) || (w != me && Some(i) != process_index)
            {
                continue;
            }
            self.leave(i);
        }
    }
}

/// The lock layer's resolver (`lock/token.rs`): the token of the thread
/// `(pid, tid, start)` in the registry of the segment mapped at
/// `lock_addr`, if that thread holds a slot there.
fn resolve(lock_addr: usize, pid: u32, tid: u32, start_ticks: u64) -> Option<*const Token> {
    let att = {
        let g = ATTACHED.lock();
        g.get()
            .iter()
            .find(|(from, to, _)| (*from..*to).contains(&lock_addr))
            .and_then(|(_, _, w)| w.upgrade())
    }?;
    if !att.alive.load(Ordering::Acquire) {
        return None;
    }
    let want = identity_word(pid, tid, start_ticks);
    att.registry()
        .slots
        .iter()
        .find(|s| {
            s.owner.load(Ordering::Acquire) == want
                && s.info.load(Ordering::Relaxed) >> 62 == Kind::Thread as u64
        })
        .map(|s| &s.token as *const Token)
}
