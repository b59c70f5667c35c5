//! The calling thread and process as the locks and the heap see them: the
//! thread's kernel id, cached; the thread's full identity (see
//! [`ThreadIdentity`]); a registry of this process's live threads; and a
//! fork generation that tells a forked child from its parent.
//!
//! One `pthread_atfork` child handler serves the whole crate: in the child
//! it forgets the cached thread id and identity (the child's only thread
//! has new ones), empties the thread registry (the parent's threads do not
//! exist here) and bumps the generation (so process-local caches know that
//! what they hold belongs to the parent). It is registered without ever blocking —
//! not with `Once`: a child forked while another thread was inside
//! `call_once` would wait for that thread forever — and nothing is cached
//! until it is registered.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::sys;

thread_local! {
    /// This thread's kernel id, or 0 until known (and in a forked child).
    static TID: Cell<u32> = const { Cell::new(0) };
    /// This thread's identity, or `tid == 0` until known (and in a child).
    static IDENTITY: Cell<ThreadIdentity> = const { Cell::new(ThreadIdentity::UNKNOWN) };
    /// Where this thread is registered; removes the entry at thread exit.
    static REGISTRATION: Registration = const { Registration(Cell::new(None)) };
}

/// This process's id, or 0 until known (and in a forked child).
static PID: AtomicU32 = AtomicU32::new(0);
/// This process's start time in clock ticks since boot, or 0 until known.
static PROCESS_START: AtomicU64 = AtomicU64::new(0);
/// This process's random nonce (see [`process_nonce`]), or 0 until drawn.
static NONCE: AtomicU64 = AtomicU64::new(0);
/// Hands out thread serials (23 bits, never 0).
static NEXT_SERIAL: AtomicU32 = AtomicU32::new(1);

/// Bumped in the child after every `fork`.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Whether [`after_fork_in_child`] is registered: `UNREGISTERED`,
/// `REGISTERING` (one thread is calling `pthread_atfork`), `REGISTERED`,
/// or `FAILED`.
static ATFORK: AtomicU8 = AtomicU8::new(UNREGISTERED);
const UNREGISTERED: u8 = 0;
const REGISTERING: u8 = 1;
const REGISTERED: u8 = 2;
const FAILED: u8 = 3;

/// Runs in the child after `fork`, in the thread that forked.
unsafe extern "C" fn after_fork_in_child() {
    let _ = TID.try_with(|t| t.set(0));
    let _ = IDENTITY.try_with(|t| t.set(ThreadIdentity::UNKNOWN));
    PID.store(0, Ordering::Relaxed);
    PROCESS_START.store(0, Ordering::Relaxed);
    NONCE.store(0, Ordering::Relaxed);
    // Only plain atomic stores: async-signal-safe, and no lock that a
    // vanished parent thread might have held.
    for slot in &THREADS {
        slot.store(0, Ordering::Relaxed);
    }
    GENERATION.fetch_add(1, Ordering::Relaxed);
    // The forking thread's cached registry slot is its parent's.
    crate::registry::local::forget_in_child();
}

/// Registers [`after_fork_in_child`] if no thread has yet, without waiting
/// for a thread that is registering it. Returns whether it is registered.
#[inline(always)]
pub(crate) fn fork_handler_registered() -> bool {
    // Acquire: pairs with the Release store in `register_fork_handler`, so
    // whoever sees REGISTERED caches only after the handler that resets it
    // exists.
    let state = ATFORK.load(Ordering::Acquire);
    if state != UNREGISTERED {
        return state == REGISTERED;
    }
    register_fork_handler()
}

#[cold]
fn register_fork_handler() -> bool {
    if ATFORK
        .compare_exchange(
            UNREGISTERED,
            REGISTERING,
            Ordering::Relaxed,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return false; // another thread is registering: do not cache yet
    }
    let state = if sys::atfork_child(after_fork_in_child).is_ok() {
        REGISTERED
    } else {
        FAILED
    };
    // Release: publishes the registration to the Acquire load above.
    ATFORK.store(state, Ordering::Release);
    state == REGISTERED
}

/// The calling thread's kernel id, cached: one system call per thread,
/// and one per forked child.
#[inline]
pub(crate) fn current_tid() -> u32 {
    let tid = TID.with(Cell::get);
    if tid != 0 {
        return tid;
    }
    fetch_tid()
}

#[cold]
fn fetch_tid() -> u32 {
    let tid = sys::gettid();
    // Without the handler a forked child would keep its parent's id, so
    // cache only once it is registered (until then, one syscall a call).
    if fork_handler_registered() {
        TID.with(|t| t.set(tid));
    }
    tid
}

/// Who a lock holder is, beyond its reusable thread id: what a lock word's
/// owner record holds (see `lock/word.rs`), computed once per thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ThreadIdentity {
    /// Kernel thread id (at most 22 bits).
    pub(crate) tid: u32,
    /// Kernel process id (at most 22 bits).
    pub(crate) pid: u32,
    /// `start << 24 | serial << 1 | registered`: see [`ThreadIdentity::pack`].
    pub(crate) detail: u64,
    /// 39 bits that tell this thread from every other thread that had or
    /// will have its tid (a hash of its start time, pid, serial and this
    /// process's random nonce): see `lock/word.rs`.
    pub(crate) tag: u64,
}

/// Bits of the start time kept in [`ThreadIdentity::detail`] (40 bits of
/// 100 Hz ticks: 348 years of uptime).
pub(crate) const START_BITS: u32 = 40;
/// Bits of the serial kept in [`ThreadIdentity::detail`].
pub(crate) const SERIAL_BITS: u32 = 23;

impl ThreadIdentity {
    const UNKNOWN: ThreadIdentity = ThreadIdentity {
        tid: 0,
        pid: 0,
        detail: 0,
        tag: 0,
    };

    /// The lock state that names this thread as the owner:
    /// `tag << 22 | tid` (61 bits).
    #[inline(always)]
    pub(crate) const fn locked(&self) -> u64 {
        self.tag << 22 | (self.tid as u64 & ((1 << 22) - 1))
    }

    /// The tag for a thread: a 39-bit hash of everything that tells it
    /// apart from other threads with its tid (splitmix64's finaliser).
    pub(crate) const fn tag_of(start_ticks: u64, pid: u32, serial: u32, nonce: u64) -> u64 {
        let mut z =
            start_ticks ^ (pid as u64).rotate_left(40) ^ (serial as u64).rotate_left(20) ^ nonce;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        z & ((1 << 39) - 1)
    }

    /// Packs the thread's start time (clock ticks since boot, 0 if
    /// unknown), its serial in this process and whether it is registered.
    pub(crate) const fn pack(start_ticks: u64, serial: u32, registered: bool) -> u64 {
        (start_ticks & ((1 << START_BITS) - 1)) << 24
            | ((serial & ((1 << SERIAL_BITS) - 1)) as u64) << 1
            | registered as u64
    }

    /// The start time, in clock ticks since boot (truncated to 40 bits).
    pub(crate) const fn start_ticks(detail: u64) -> u64 {
        detail >> 24
    }

    /// The serial of the thread in its process.
    pub(crate) const fn serial(detail: u64) -> u32 {
        ((detail >> 1) & ((1 << SERIAL_BITS) - 1)) as u32
    }

    /// Whether the thread is in its process's registry.
    pub(crate) const fn registered(detail: u64) -> bool {
        detail & 1 != 0
    }
}

/// The calling thread's identity, cached: computed once per thread (one
/// read of `/proc`), and again in a forked child.
#[inline(always)]
pub(crate) fn current_identity() -> ThreadIdentity {
    let id = IDENTITY.with(Cell::get);
    if id.tid != 0 {
        return id;
    }
    fetch_identity()
}

#[cold]
fn fetch_identity() -> ThreadIdentity {
    let tid = current_tid();
    let pid = current_pid();
    let start = sys::own_thread_start_ticks();
    let mut serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed) & ((1 << SERIAL_BITS) - 1);
    if serial == 0 {
        serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed) & ((1 << SERIAL_BITS) - 1);
    }
    let registered = register(tid, serial);
    let id = ThreadIdentity {
        tid,
        pid,
        detail: ThreadIdentity::pack(start, serial, registered),
        tag: ThreadIdentity::tag_of(start, pid, serial, process_nonce()),
    };
    if fork_handler_registered() {
        IDENTITY.with(|c| c.set(id));
    }
    id
}

/// A random value per process (and per forked child), drawn once: mixed
/// into thread tags so that two processes that reuse a pid within one
/// clock tick still tag their threads differently.
fn process_nonce() -> u64 {
    let n = NONCE.load(Ordering::Relaxed);
    if n != 0 {
        return n;
    }
    let mut b = [0u8; 8];
    let n = match sys::getrandom(&mut b) {
        Ok(()) => u64::from_ne_bytes(b) | 1,
        // No randomness: the time still differs between processes.
        Err(_) => sys::boot_ticks_now() ^ u64::from(sys::getpid()) << 32 | 1,
    };
    if fork_handler_registered() {
        NONCE.store(n, Ordering::Relaxed);
    }
    n
}

/// This process's id, cached (reset in a forked child).
pub(crate) fn current_pid() -> u32 {
    let pid = PID.load(Ordering::Relaxed);
    if pid != 0 {
        return pid;
    }
    let pid = sys::getpid();
    if fork_handler_registered() {
        PID.store(pid, Ordering::Relaxed);
    }
    pid
}

/// This process's start time in clock ticks since boot (0 if `/proc`
/// cannot tell), cached.
pub(crate) fn process_start_ticks() -> u64 {
    let t = PROCESS_START.load(Ordering::Relaxed);
    if t != 0 {
        return t;
    }
    let t = sys::own_process_start_ticks();
    if fork_handler_registered() {
        PROCESS_START.store(t, Ordering::Relaxed);
    }
    t
}

/// The registry of this process's live threads that took a lock: one
/// entry `serial << 22 | tid` per thread, added before its first lock and
/// removed by a thread-local destructor when it exits. A lock waiter of
/// this process asks it whether an owner of this process still runs,
/// exactly, even when the kernel gave the owner's tid to a new thread
/// within the same clock tick. Full (more live threads than slots): the
/// thread is not registered, and waiters fall back to `/proc`.
const THREAD_SLOTS: usize = 4096;
static THREADS: [AtomicU64; THREAD_SLOTS] = [const { AtomicU64::new(0) }; THREAD_SLOTS];

fn entry(tid: u32, serial: u32) -> u64 {
    u64::from(serial) << 22 | u64::from(tid)
}

/// Removes the thread's registry entry when the thread exits.
struct Registration(Cell<Option<(usize, u64)>>);

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some((slot, e)) = self.0.get() {
            // Release: the thread's every store (its lock's owner record
            // included) happens-before a waiter's Acquire scan that sees the
            // slot emptied. A failed exchange means a forked child emptied
            // the table meanwhile.
            let _ = THREADS[slot].compare_exchange(e, 0, Ordering::Release, Ordering::Relaxed);
        }
    }
}

/// Adds the calling thread to the registry; false if it is full or the
/// thread is exiting (its thread-locals are being destroyed).
fn register(tid: u32, serial: u32) -> bool {
    let e = entry(tid, serial);
    let start = (tid as usize).wrapping_mul(0x9e37_79b9) % THREAD_SLOTS;
    for i in 0..THREAD_SLOTS {
        let slot = (start + i) % THREAD_SLOTS;
        if THREADS[slot]
            .compare_exchange(0, e, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let kept = REGISTRATION
                .try_with(|r| {
                    if let Some((old, old_e)) = r.0.replace(Some((slot, e))) {
                        // A re-registration (in a forked child): drop the
                        // parent's entry if it is still there.
                        let _ = THREADS[old].compare_exchange(
                            old_e,
                            0,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                })
                .is_ok();
            if !kept {
                THREADS[slot].store(0, Ordering::Relaxed);
            }
            return kept;
        }
    }
    false
}

/// Whether the registered thread `(tid, serial)` of this process still
/// runs (its entry is present).
pub(crate) fn registered_thread_alive(tid: u32, serial: u32) -> bool {
    let e = entry(tid, serial);
    // Acquire: pairs with the Release removal in `Registration::drop`.
    THREADS.iter().any(|s| s.load(Ordering::Acquire) == e)
}

/// The process's fork generation: different in a forked child than in its
/// parent at the time of the fork.
#[inline(always)]
pub(crate) fn fork_generation() -> u64 {
    if fork_handler_registered() {
        GENERATION.load(Ordering::Relaxed)
    } else {
        // No handler: the process id tells a child from its parent, at the
        // cost of a system call.
        u64::from(sys::getpid()) | 1 << 63
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tid_is_cached_and_per_thread() {
        let me = current_tid();
        assert_eq!(me, sys::gettid());
        assert_eq!(current_tid(), me);
        let other = std::thread::spawn(current_tid).join().unwrap();
        assert_ne!(other, me);
    }

    #[test]
    fn a_forked_child_has_its_own_tid_and_generation() {
        let (tid, generation) = (current_tid(), fork_generation());
        // SAFETY: the child only calls async-signal-safe code paths of this
        // module (a cached read, gettid, getpid) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = current_tid() != tid
                && current_tid() == sys::gettid()
                && fork_generation() != generation;
            // SAFETY: ends the child without running the harness's code.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(fork_generation(), generation, "the parent's is unchanged");
    }

    #[test]
    fn identity_is_per_thread_and_the_registry_follows_thread_exit() {
        let me = current_identity();
        assert_eq!(me.tid, sys::gettid());
        assert_eq!(me.pid, sys::getpid());
        assert!(ThreadIdentity::registered(me.detail));
        assert!(ThreadIdentity::start_ticks(me.detail) >= process_start_ticks());
        assert_eq!(current_identity(), me);
        let other = std::thread::spawn(current_identity).join().unwrap();
        assert_ne!(other.detail, me.detail);
        assert_ne!(other.tag, me.tag);
        assert_eq!(me.locked() & ((1 << 22) - 1), u64::from(me.tid));
        assert!(me.locked() < 1 << 61);
        assert_ne!(
            ThreadIdentity::serial(other.detail),
            ThreadIdentity::serial(me.detail)
        );
        // `join` returns after the thread's destructors ran.
        assert!(!registered_thread_alive(
            other.tid,
            ThreadIdentity::serial(other.detail)
        ));
        assert!(registered_thread_alive(
            me.tid,
            ThreadIdentity::serial(me.detail)
        ));
    }
}
