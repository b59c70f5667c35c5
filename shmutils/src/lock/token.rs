//! Death as an event: a thread's *token*, a robust process-shared
//! `pthread_mutex_t` in shared memory that the thread locks for as long as
//! it lives, and the sleep of a lock waiter that watches it.
//!
//! A waiter blocked on a lock that a live thread of another process holds
//! would otherwise have to ask `/proc` every few milliseconds whether that
//! thread still runs (see "Owner death" in `word.rs`). With a token the
//! kernel tells it: glibc links a robust mutex into its holder's robust
//! list, and when the holder dies the kernel walks that list, sets
//! `FUTEX_OWNER_DIED` in the mutex word and, if `FUTEX_WAITERS` is set in
//! it, wakes one `futex_wait`er of the word. So the waiter sets
//! `FUTEX_WAITERS` in the owner's token word and sleeps in `futex_waitv` on
//! two words at once: the lock's state (an unlock wakes it) and the token
//! word (the holder's death or give-up wakes it). It costs no wake-up while
//! the owner lives.
//!
//! ```text
//! token word (glibc's __lock)   meaning                         a waiter for owner `tid`
//! ----------------------------  ------------------------------  -----------------------------------
//! tid [+FUTEX_WAITERS]          `tid` holds the token: lives    CAS +WAITERS, sleep on both words
//! 0                             given up (or never used)        wake all, judge, poll this owner
//! OWNER_DIED [+WAITERS]         the holder died (the kernel)    wake all, judge, poll briefly
//! anything else                 another holder, or garbage      wake all, judge, poll this owner
//! ```
//!
//! The token is only a **wake-up source**: its bytes are shared memory, so
//! a peer may have scribbled over them. A waiter it wakes judges the owner
//! exactly as before (`/proc`, the same `judge` in `word.rs`), and takes
//! over only when that confirms the death. A token that stops vouching for
//! the owner (whatever it holds) makes the waiter fall back to polling for
//! that owner, never to spinning; one that lies that the owner lives is
//! caught by a safety poll every [`WATCH_POLL`].
//!
//! The kernel marks the token before the dying thread is reported dead by
//! `/proc` (it walks the robust list before it tears the address space
//! down and long before the thread becomes a zombie), so after a token
//! reported a death the waiter asks `/proc` every [`DYING_SLICE`] for up to
//! [`DYING_WINDOW`], then falls back to the usual slices.
//!
//! Tokens are found through a process-global [`Resolver`] that the
//! segment's registry of attached threads installs ([`set_resolver`]);
//! without one, waiters poll as before.

use std::io;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::atomic::Owner;
use crate::process::ThreadIdentity;
use crate::sys::{self, FutexWaiter};

/// Set in a robust mutex word while threads may sleep on it.
pub(crate) const FUTEX_WAITERS: u32 = 0x8000_0000;
/// Set by the kernel in a robust mutex word when its holder died.
pub(crate) const FUTEX_OWNER_DIED: u32 = 0x4000_0000;

/// How long a waiter watching a token sleeps before it asks `/proc`
/// anyway (a safety net against a token that lies).
pub(crate) const WATCH_POLL: Duration = Duration::from_secs(10);
/// After a token reported its holder's death: how often `/proc` is asked
/// until it confirms it ...
const DYING_SLICE: Duration = Duration::from_micros(100);
/// ... and for how long (then the usual slices of `word.rs`).
const DYING_WINDOW: Duration = Duration::from_millis(20);

/// A thread's token: 64 bytes of shared memory, aligned to 64, holding a
/// robust process-shared `pthread_mutex_t` that one thread (the holder)
/// locks for as long as it lives ([`Token::hold`]) and unlocks only when it
/// gives the token up ([`Token::give_up`]).
///
/// Every bit pattern is valid (atomics only); all zeros is a token never
/// used. Its word is glibc's `__lock` ([`Token::word`]): the holder's tid,
/// `FUTEX_WAITERS` and `FUTEX_OWNER_DIED`.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub(crate) struct Token([AtomicU32; 16]);

const _: () = assert!(std::mem::size_of::<Token>() == 64);
const _: () = assert!(std::mem::size_of::<libc::pthread_mutex_t>() <= std::mem::size_of::<Token>());
const _: () =
    assert!(std::mem::align_of::<libc::pthread_mutex_t>() <= std::mem::align_of::<Token>());

impl Token {
    /// The mutex the token's bytes hold, for glibc. The pointer covers the
    /// whole token (its provenance is `self`'s), and every byte of it is in
    /// an `UnsafeCell` (the atomics), so C may write through it.
    fn mutex(&self) -> *mut libc::pthread_mutex_t {
        (self as *const Token).cast_mut().cast()
    }

    /// Makes the calling thread the token's holder until it calls
    /// [`Token::give_up`] or dies: initialises the mutex afresh (whatever
    /// a previous holder left, a dead one included) and locks it.
    ///
    /// # Safety
    /// - The token must stay mapped at this address until its holder gave
    ///   it up: glibc links the mutex into the calling thread's robust
    ///   list, which glibc updates and the kernel walks when the thread
    ///   exits. Give it up (from this thread) before the mapping goes.
    /// - No live thread may hold it (its previous holder gave it up or
    ///   died): initialising a held mutex breaks that holder's robust list.
    ///   The registry that hands out tokens guarantees it.
    ///
    /// # Errors
    /// What `pthread_mutex_init` or `pthread_mutex_lock` refuse; the
    /// token is not held then.
    pub(crate) unsafe fn hold(&self) -> io::Result<()> {
        let m = self.mutex();
        // SAFETY: `m` covers this token's 64 bytes (enough for and aligned
        // to a pthread_mutex_t, asserted above), valid for writes through
        // the atomics' cells; no thread holds it or is inside a call on it
        // (the caller's contract).
        unsafe { sys::robust_mutex_init(m) }?;
        // SAFETY: initialised just above; the caller keeps it mapped here
        // until it gives the token up.
        unsafe { sys::mutex_lock(m) }
    }

    /// The holder gives the token up: unlocks the mutex (glibc wakes one
    /// waiter of the word, which wakes the others).
    ///
    /// # Safety
    /// The calling thread must hold the token ([`Token::hold`]), still
    /// mapped at the address it held it at.
    ///
    /// # Errors
    /// `EPERM` if the calling thread does not hold it.
    pub(crate) unsafe fn give_up(&self) -> io::Result<()> {
        // SAFETY: this thread locked the mutex in `hold`, at this address
        // (the caller's contract).
        unsafe { sys::mutex_unlock(self.mutex()) }
    }

    /// The mutex word (glibc's `__lock`, the mutex's first 4 bytes):
    /// holder tid | `FUTEX_WAITERS` | `FUTEX_OWNER_DIED`.
    pub(crate) fn word(&self) -> &AtomicU32 {
        &self.0[0]
    }

    /// Whether the word says that thread `tid` holds the token (and did not
    /// die holding it). A hint, as everything in shared memory is.
    #[cfg(test)]
    pub(crate) fn held_by(&self, tid: u32) -> bool {
        /// The holder's tid in a robust mutex word.
        const FUTEX_TID_MASK: u32 = 0x3fff_ffff;
        let w = self.word().load(Ordering::Relaxed);
        tid != 0 && w & FUTEX_OWNER_DIED == 0 && w & FUTEX_TID_MASK == tid
    }
}

/// Finds a lock owner's token: given the address of a lock in a mapped
/// segment and the owner its record names (pid, tid, start time in clock
/// ticks since boot, the low 40 bits), the token that owner thread holds,
/// in the same mapping. `None` when the owner has none (or is not known).
pub(crate) type Resolver = fn(
    lock_addr: usize,
    owner_pid: u32,
    owner_tid: u32,
    owner_start_ticks: u64,
) -> Option<*const Token>;

/// The installed [`Resolver`] as a pointer; null until one is installed.
static RESOLVER: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());

/// Installs the process's [`Resolver`] (replacing any earlier one).
///
/// # Safety
/// Whatever `r` returns for a lock address must point to a [`Token`] (64
/// bytes, 64-aligned, possibly never used) that stays mapped for as long
/// as the mapping the lock at that address lies in: a waiter keeps the
/// lock borrowed while it sleeps and reads the token meanwhile.
pub(crate) unsafe fn set_resolver(r: Resolver) {
    // Release: pairs with the Acquire load in `resolver`: whatever the
    // installer set up for `r` before is visible to the threads that call
    // it.
    RESOLVER.store(r as *mut (), Ordering::Release);
}

/// The installed resolver, if any.
fn resolver() -> Option<Resolver> {
    // Acquire: pairs with the Release store in `set_resolver`.
    let p = RESOLVER.load(Ordering::Acquire);
    if p.is_null() {
        return None;
    }
    // SAFETY: the only non-null values ever stored are `Resolver` function
    // pointers cast to `*mut ()` (in `set_resolver`); a function pointer
    // and a data pointer have the same size and representation on the
    // platforms this crate builds for (it calls Linux system calls).
    Some(unsafe { std::mem::transmute::<*mut (), Resolver>(p) })
}

/// Whether a token may watch a lock owner in this process: a resolver is
/// installed and `futex_waitv` is not known to be missing.
pub(crate) fn may_watch() -> bool {
    !RESOLVER.load(Ordering::Relaxed).is_null() && !sys::futex_waitv_missing()
}

/// The token of `owner`, the owner of the lock whose state is `state`.
fn token_of(state: &AtomicU64, owner: Owner) -> Option<&Token> {
    let resolve = resolver()?;
    let start = ThreadIdentity::start_ticks(owner.detail);
    // The state is the lock word's first field: its address is the lock's.
    let p = resolve(state.as_ptr() as usize, owner.pid, owner.tid, start)?;
    if p.is_null() || !p.is_aligned() {
        return None;
    }
    // SAFETY: bit-validity: a `Token` is atomics only, valid for every
    // bit pattern. Type and lifetime: `set_resolver`'s contract says `p`
    // points to a Token that stays mapped as long as the mapping of the
    // lock at `state`'s address, which the borrow of `state` keeps mapped
    // for the lifetime returned. Aliasing: all access goes through atomics
    // (and glibc's own, in the holder), so shared references are fine.
    Some(unsafe { &*p })
}

/// What one blocked lock call learned about its owners' tokens.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    /// The owner whose token stopped vouching for it (it is not watched
    /// again in this call), and when its token said that it died, if so.
    unwatched: Option<(Owner, Option<Instant>)>,
}

/// Sleeps while the lock's state still has low half `low` and `owner`, a
/// thread of another process, holds it, watching `owner`'s token as well,
/// for at most `timeout`.
///
/// Returns `Some(true)` when the owner should be judged now (the time ran
/// out, or the token stopped vouching for the owner: it died, gave the
/// token up, or the bytes changed), `Some(false)` after any other wake-up
/// (the caller re-reads the state), and `None` when no token watches this
/// owner (no resolver, no token, no `futex_waitv`, or its token stopped
/// vouching for it earlier in this call): the caller sleeps in slices.
pub(crate) fn sleep_watching(
    state: &AtomicU64,
    low: u32,
    owner: Owner,
    timeout: Duration,
    watch: &mut Watch,
) -> Option<bool> {
    if let Some((o, died)) = watch.unwatched {
        if o == owner {
            return match died {
                // The kernel said it died: confirm it quickly.
                Some(at) if at.elapsed() < DYING_WINDOW => Some(
                    sys::futex_wait_low(state, low, Some(DYING_SLICE.min(timeout)))
                        == sys::FutexWait::TimedOut,
                ),
                _ => None,
            };
        }
    }
    let token = token_of(state, owner)?;
    sleep_on(state, low, owner, token, timeout, watch)
}

/// [`sleep_watching`] once the owner's token is found.
fn sleep_on(
    state: &AtomicU64,
    low: u32,
    owner: Owner,
    token: &Token,
    timeout: Duration,
    watch: &mut Watch,
) -> Option<bool> {
    let word = token.word();
    let watching = owner.tid | FUTEX_WAITERS;
    // Relaxed throughout: the token word publishes no data; a wake-up it
    // causes is confirmed through `/proc`, and the kernel compares the
    // value itself when the sleep starts.
    let mut seen = word.load(Ordering::Relaxed);
    if seen == owner.tid {
        // Ask the kernel to wake us at the holder's death (and glibc at
        // its give-up).
        seen = match word.compare_exchange(seen, watching, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => watching,
            Err(now) => now,
        };
    }
    if seen != watching {
        return Some(stop_watching(token, seen, owner, watch));
    }
    let words = [
        FutexWaiter::low_half(state, low),
        FutexWaiter::new(word, watching),
    ];
    match sys::futex_waitv(&words, Some(timeout)) {
        Err(e) if e.raw_os_error() == Some(libc::ETIMEDOUT) => return Some(true),
        Ok(_) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => {}
        Err(_) => {
            // No futex_waitv, or it refused these words: poll this owner.
            watch.unwatched = Some((owner, None));
            return None;
        }
    }
    let now = word.load(Ordering::Relaxed);
    Some(now != watching && stop_watching(token, now, owner, watch))
}

/// The token no longer vouches for `owner` (its word is `now`): wakes the
/// token's other sleepers (the kernel at a death, and glibc at a give-up,
/// wake only one), and stops watching it in this call. Returns `true`:
/// judge the owner now.
fn stop_watching(token: &Token, now: u32, owner: Owner, watch: &mut Watch) -> bool {
    sys::futex_wake(token.word(), u32::MAX);
    let died = now & FUTEX_OWNER_DIED != 0;
    watch.unwatched = Some((owner, died.then(Instant::now)));
    true
}

/// For the workspace's tests (`tests/token.rs`, feature `test-hooks`):
/// tokens at raw addresses, and a resolver that finds every owner's token
/// at a fixed offset in the lock's page.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod test_hooks {
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::Token;
    use crate::sys;

    static OFFSET: AtomicUsize = AtomicUsize::new(0);

    fn in_page(lock_addr: usize, _pid: u32, _tid: u32, _start: u64) -> Option<*const Token> {
        let page = lock_addr & !(sys::page_size() - 1);
        Some(page.wrapping_add(OFFSET.load(Ordering::Relaxed)) as *const Token)
    }

    /// Installs a resolver that answers, for every lock and owner, the
    /// token at `offset` in the lock's page.
    ///
    /// # Safety
    /// From now on, every lock that a thread of this process waits for
    /// while a thread of another process holds it must have 64 mapped
    /// bytes, 64-aligned, at `offset` in its page, in the same mapping.
    pub unsafe fn resolve_tokens_at_page_offset(offset: usize) {
        OFFSET.store(offset, Ordering::Relaxed);
        // SAFETY: the caller's contract is `set_resolver`'s for this
        // resolver.
        unsafe { super::set_resolver(in_page) };
    }

    /// [`Token::hold`] of the token at `addr`.
    ///
    /// # Safety
    /// `addr` is 64-aligned and `Token::hold`'s contract holds for the 64
    /// bytes there.
    ///
    /// # Errors
    /// As `Token::hold`.
    pub unsafe fn hold(addr: usize) -> io::Result<()> {
        // SAFETY: the reference: 64 mapped, 64-aligned bytes (the caller's
        // contract) are a valid `Token` whatever they hold (atomics only),
        // accessed only through atomics and glibc; `hold`'s own contract is
        // the caller's.
        unsafe { token_at(addr).hold() }
    }

    /// [`Token::give_up`] of the token at `addr`.
    ///
    /// # Safety
    /// As `Token::give_up`, for the token at `addr`.
    ///
    /// # Errors
    /// As `Token::give_up`.
    pub unsafe fn give_up(addr: usize) -> io::Result<()> {
        // SAFETY: the reference as in `hold`; `give_up`'s contract is the
        // caller's.
        unsafe { token_at(addr).give_up() }
    }

    /// The word of the token at `addr`.
    ///
    /// # Safety
    /// `addr` is 64-aligned, and 64 bytes there are mapped.
    pub unsafe fn word(addr: usize) -> u32 {
        // SAFETY: the reference as in `hold` (the caller's contract).
        unsafe { token_at(addr) }.word().load(Ordering::Relaxed)
    }

    /// The token at `addr`.
    ///
    /// # Safety
    /// `addr` is 64-aligned and the 64 bytes there stay mapped for `'a`.
    unsafe fn token_at<'a>(addr: usize) -> &'a Token {
        // SAFETY: bit-validity: a `Token` is atomics only, valid for every
        // bit pattern. Lifetime: mapped and aligned for `'a` (the caller's
        // contract). Aliasing: every access to it, here and in other
        // processes, goes through atomics or glibc's atomic operations.
        unsafe { &*(addr as *const Token) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    fn owner(tid: u32) -> Owner {
        Owner {
            tid,
            pid: 0x3f_fff1,
            detail: ThreadIdentity::pack(7, 1, false),
        }
    }

    #[test]
    fn holding_and_giving_up_write_the_holders_tid() {
        let token = Box::new(Token::default());
        // A thread of its own: were an assertion to fail while it holds the
        // token, its exit (not the box's drop) would unlink it.
        std::thread::scope(|s| {
            s.spawn(|| {
                let tid = sys::gettid();
                for _ in 0..2 {
                    // SAFETY: nobody holds it; the box outlives this thread,
                    // which gives it up below.
                    unsafe { token.hold() }.unwrap();
                    assert_eq!(token.word().load(Ordering::Relaxed), tid);
                    assert!(token.held_by(tid));
                    assert!(!token.held_by(tid + 1));
                    // SAFETY: this thread holds it, at this address.
                    unsafe { token.give_up() }.unwrap();
                    assert_eq!(token.word().load(Ordering::Relaxed), 0);
                    assert!(!token.held_by(tid));
                }
            });
        });
    }

    #[test]
    fn a_thread_that_exits_holding_its_token_wakes_a_futex_waitv_sleeper() {
        let token = Box::new(Token::default());
        let state = AtomicU64::new(1);
        let (held_tx, held_rx) = channel();
        let (exit_tx, exit_rx) = channel::<()>();
        let token = &*token;
        std::thread::scope(|s| {
            let holder = s.spawn(move || {
                // SAFETY: nobody holds it; the box outlives this thread, and
                // the kernel unlinks it when the thread exits below.
                unsafe { token.hold() }.unwrap();
                held_tx.send(sys::gettid()).unwrap();
                exit_rx.recv().unwrap();
                std::thread::sleep(Duration::from_millis(20)); // let the sleeper sleep
            });
            let tid = held_rx.recv().unwrap();
            let watching = tid | FUTEX_WAITERS;
            assert_eq!(
                token
                    .word()
                    .compare_exchange(tid, watching, Ordering::Relaxed, Ordering::Relaxed),
                Ok(tid)
            );
            exit_tx.send(()).unwrap();
            let words = [
                FutexWaiter::low_half(&state, 1),
                FutexWaiter::new(token.word(), watching),
            ];
            match sys::futex_waitv(&words, Some(Duration::from_secs(10))) {
                Ok(i) => assert_eq!(i, 1, "woken through the token"),
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    eprintln!("futex_waitv is not available here: skipped");
                }
                // The holder was gone before the sleep began.
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EAGAIN), "{e}"),
            }
            holder.join().unwrap();
        });
        assert_eq!(
            token.word().load(Ordering::Relaxed),
            FUTEX_OWNER_DIED | FUTEX_WAITERS,
            "the kernel marked the dead holder's token"
        );
    }

    #[test]
    fn a_token_that_does_not_vouch_for_the_owner_is_judged_once_then_polled() {
        let state = AtomicU64::new(9);
        let (a, b) = (owner(0x1_2345), owner(0x1_2346));
        let short = Duration::from_millis(1);
        // Given up (or never used), or another holder: judge now, then
        // slices for that owner; another owner is watched afresh.
        for word in [0, b.tid, b.tid | FUTEX_WAITERS, 0x1ead_beef] {
            let token = Token::default();
            token.word().store(word, Ordering::Relaxed);
            let mut watch = Watch::default();
            assert_eq!(
                sleep_on(&state, 9, a, &token, short, &mut watch),
                Some(true)
            );
            assert_eq!(watch.unwatched, Some((a, None)), "{word:#x}");
            assert_eq!(sleep_watching(&state, 9, a, short, &mut watch), None);
            assert_eq!(token.word().load(Ordering::Relaxed), word, "left as found");
        }
        // Dead (or garbage with that bit): judge now, then quick slices for
        // a while.
        let token = Token::default();
        token
            .word()
            .store(FUTEX_OWNER_DIED | FUTEX_WAITERS, Ordering::Relaxed);
        let mut watch = Watch::default();
        assert_eq!(
            sleep_on(&state, 9, a, &token, short, &mut watch),
            Some(true)
        );
        assert!(matches!(watch.unwatched, Some((o, Some(_))) if o == a));
        let t0 = Instant::now();
        assert_eq!(
            sleep_watching(&state, 9, a, Duration::from_secs(10), &mut watch),
            Some(true),
            "a quick slice ran out"
        );
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_token_that_vouches_for_the_owner_is_watched() {
        if sys::futex_waitv(&[], Some(Duration::ZERO))
            .is_err_and(|e| e.raw_os_error() == Some(libc::ENOSYS))
        {
            eprintln!("futex_waitv is not available here: skipped");
            return;
        }
        let state = AtomicU64::new(9);
        let a = owner(0x1_2345);
        let token = Token::default();
        token.word().store(a.tid, Ordering::Relaxed);
        let mut watch = Watch::default();
        // Sleeps (WAITERS set for the kernel) until the time runs out.
        let short = Duration::from_millis(2);
        assert_eq!(
            sleep_on(&state, 9, a, &token, short, &mut watch),
            Some(true)
        );
        assert_eq!(token.word().load(Ordering::Relaxed), a.tid | FUTEX_WAITERS);
        // The state changed: woken, nothing to judge, still watching.
        assert_eq!(
            sleep_on(&state, 8, a, &token, short, &mut watch),
            Some(false)
        );
        assert_eq!(watch.unwatched, None);
    }
}
