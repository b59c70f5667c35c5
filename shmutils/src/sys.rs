//! Every `libc` call of the crate, each wrapped once.
//!
//! The rest of the crate never sees `-1` or `errno`: each wrapper returns an
//! `io::Result` (or a plain value where the call cannot fail).

use std::ffi::CStr;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Turns a `-1`-on-error return value into an `io::Result`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `shm_open(3)`: opens (or creates) a named shared memory object.
pub(crate) fn shm_open(name: &CStr, oflag: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the
    // call; shm_open has no other memory-safety preconditions.
    let fd = cvt(unsafe { libc::shm_open(name.as_ptr(), oflag, mode as libc::mode_t) })?;
    // SAFETY: shm_open returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `shm_unlink(3)`: removes a name; mappings of the object stay valid.
pub(crate) fn shm_unlink(name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    cvt(unsafe { libc::shm_unlink(name.as_ptr()) }).map(drop)
}

/// `ftruncate(2)`.
pub(crate) fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length does not fit off_t"))?;
    // SAFETY: the descriptor is borrowed, so it is open for the whole call.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }).map(drop)
}

/// `fallocate(2)` mode 0: makes `off..off + len` of the object take real
/// pages now, so later writes there cannot fail (`ENOSPC` arrives here
/// instead of as a `SIGBUS` on first touch).
pub(crate) fn fallocate(fd: BorrowedFd<'_>, off: u64, len: u64) -> io::Result<()> {
    let (off, len) = match (libc::off_t::try_from(off), libc::off_t::try_from(len)) {
        (Ok(o), Ok(l)) => (o, l),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range does not fit off_t",
            ))
        }
    };
    loop {
        // SAFETY: the descriptor is borrowed, so it is open for the whole
        // call; fallocate reads nothing from our memory.
        match cvt(unsafe { libc::fallocate(fd.as_raw_fd(), 0, off, len) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(drop),
        }
    }
}

/// `pread(2)`: reads up to `buf.len()` bytes at `offset` (fewer at the end
/// of the file); returns how many were read. Retries when a signal
/// interrupts it.
pub(crate) fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let at = libc::off_t::try_from(offset + filled as u64).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "offset does not fit off_t")
        })?;
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is valid for writes of `rest.len()` bytes; the
        // descriptor is borrowed, so it is open for the whole call.
        let r = unsafe { libc::pread(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len(), at) };
        match r {
            0 => break,
            r if r > 0 => filled += r as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(filled)
}

/// `pwrite(2)`: writes all of `buf` at `offset` (retrying short writes and
/// interruptions).
pub(crate) fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let at = libc::off_t::try_from(offset + done as u64).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "offset does not fit off_t")
        })?;
        let rest = &buf[done..];
        // SAFETY: `rest` is valid for reads of `rest.len()` bytes; the
        // descriptor is borrowed, so it is open for the whole call.
        let r = unsafe { libc::pwrite(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len(), at) };
        match r {
            r if r > 0 => done += r as usize,
            0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: takes the exclusive advisory lock of
/// the open file description behind `fd` if nobody else holds it. Returns
/// whether it was taken (`false`: another open file description holds a
/// lock on the file). The kernel drops the lock when the last descriptor
/// of the description closes, so also when its process dies.
pub(crate) fn flock_try_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    loop {
        // SAFETY: the descriptor is borrowed, so it is open for the whole
        // call; flock touches no memory of ours.
        match cvt(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
            Ok(_) => return Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `flock(fd, LOCK_UN)`: releases the lock [`flock_try_exclusive`] took.
pub(crate) fn flock_unlock(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: the descriptor is borrowed, so it is open for the whole call.
    cvt(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_UN) }).map(drop)
}

/// `memfd_create(2)` with `MFD_CLOEXEC | MFD_ALLOW_SEALING`: an anonymous
/// shared memory file of size 0 that accepts seals. `name` only labels it
/// in `/proc/PID/fd`.
pub(crate) fn memfd_create_sealable(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string for the duration of
    // the call; memfd_create has no other memory-safety preconditions.
    let fd = cvt(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fcntl(fd, F_ADD_SEALS, seals)`: seals a memfd (`F_SEAL_SHRINK`, ...).
/// Seals can never be removed.
pub(crate) fn add_seals(fd: BorrowedFd<'_>, seals: libc::c_int) -> io::Result<()> {
    // SAFETY: the descriptor is borrowed, so it is open for the whole call;
    // F_ADD_SEALS takes an int argument and touches no memory of ours.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) }).map(drop)
}

/// What `fstat(2)` tells about a shared memory object.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FileStat {
    pub(crate) size: u64,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    /// The device holding the object (`st_dev`); with `ino`, the object's
    /// identity, the same through every descriptor and name of it.
    pub(crate) dev: u64,
    /// The object's inode number (`st_ino`).
    pub(crate) ino: u64,
}

/// `fstat(2)`.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<FileStat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of one `stat`; the descriptor is open.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it initialised the whole struct.
    let st = unsafe { st.assume_init() };
    Ok(FileStat {
        size: u64::try_from(st.st_size).unwrap_or(0),
        mode: st.st_mode,
        uid: st.st_uid,
        // Lossless widenings on the 64-bit Linux targets (both are u64
        // there); `as` keeps this compiling where libc declares them
        // narrower.
        #[allow(clippy::unnecessary_cast)]
        dev: st.st_dev as u64,
        #[allow(clippy::unnecessary_cast)]
        ino: st.st_ino as u64,
    })
}

/// `fchmod(2)`.
pub(crate) fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: the descriptor is borrowed, so it is open for the whole call.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(drop)
}

/// `mmap(2)`. Returns the address of the new mapping.
///
/// # Safety
/// With `MAP_FIXED` the caller must own whatever was mapped at `addr`
/// before: the kernel silently replaces it.
pub(crate) unsafe fn mmap(
    addr: usize,
    len: usize,
    prot: libc::c_int,
    flags: libc::c_int,
    fd: Option<BorrowedFd<'_>>,
    offset: u64,
) -> io::Result<*mut u8> {
    let raw_fd = fd.map_or(-1, |fd| fd.as_raw_fd());
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset does not fit off_t"))?;
    // SAFETY: the caller upholds the MAP_FIXED contract; any other mmap only
    // creates a new mapping and touches no existing memory.
    let p = unsafe { libc::mmap(addr as *mut libc::c_void, len, prot, flags, raw_fd, offset) };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p.cast())
    }
}

/// `munmap(2)`.
///
/// # Safety
/// `addr..addr + len` must be a mapping the caller owns and that nothing
/// references any more.
pub(crate) unsafe fn munmap(addr: *mut u8, len: usize) -> io::Result<()> {
    // SAFETY: the caller owns the range and no reference into it survives.
    cvt(unsafe { libc::munmap(addr.cast(), len) }).map(drop)
}

/// `mprotect(2)`.
///
/// # Safety
/// The caller must own the range and must not access it afterwards in a way
/// the new protection forbids.
pub(crate) unsafe fn mprotect(addr: *mut u8, len: usize, prot: libc::c_int) -> io::Result<()> {
    // SAFETY: the caller owns the range and accepts the new protection.
    cvt(unsafe { libc::mprotect(addr.cast(), len, prot) }).map(drop)
}

/// `madvise(2)`.
///
/// # Safety
/// The caller must own the range; advice such as `MADV_DONTNEED` discards
/// private contents.
pub(crate) unsafe fn madvise(addr: *mut u8, len: usize, advice: libc::c_int) -> io::Result<()> {
    // SAFETY: the caller owns the range and accepts the advice's effect.
    cvt(unsafe { libc::madvise(addr.cast(), len, advice) }).map(drop)
}

/// The system page size (`sysconf(_SC_PAGESIZE)`), read once.
pub(crate) fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
    })
}

/// The calling process's id.
pub(crate) fn getpid() -> u32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() as u32 }
}

/// The calling thread's kernel id, unique among live threads of the pid
/// namespace (a lock word records it as the owner).
pub(crate) fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() as u32 }
}

/// `sched_yield(2)`: lets another runnable thread of this CPU's run queue
/// go first; returns at once when there is none.
pub(crate) fn sched_yield() {
    // SAFETY: sched_yield has no preconditions; on Linux it always succeeds.
    unsafe { libc::sched_yield() };
}

/// Whether a thread (or process) with kernel id `tid` exists and has not
/// exited: the one liveness test of the crate (locks, the directory, the
/// type table).
///
/// `kill(tid, 0)` sends nothing; it fails with `ESRCH` once the id is gone
/// and with `EPERM` when it belongs to another user (who is alive). It
/// still succeeds for a thread that exited but was not reaped yet (a
/// zombie), so `/proc/TID/stat` is asked too. Ids that cannot name a thread
/// (0, or above `i32::MAX`) are reported dead.
pub(crate) fn thread_alive(tid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(tid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission check.
    let r = unsafe { libc::kill(pid, 0) };
    let exists = r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !matches!(proc_any_thread(tid), ProcThread::Found(st) if st.zombie)
}

/// How a [`futex_wait`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FutexWait {
    /// Woken by a `futex_wake` (or spuriously).
    Woken,
    /// The word no longer held the expected value when the call started.
    Changed,
    /// The timeout elapsed.
    TimedOut,
    /// A signal interrupted the wait.
    Interrupted,
}

/// `futex(FUTEX_WAIT)` on a word that may live in shared memory: sleeps while
/// `*word == expected`, at most `timeout`. Not `FUTEX_PRIVATE_FLAG`, so it
/// pairs with [`futex_wake`] from any process mapping the same page.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> FutexWait {
    futex_wait_at(word.as_ptr(), expected, timeout)
}

/// The address of the low 32 bits of a 64-bit atomic, the half a lock
/// state sleeps on (the kernel's futex words are 32-bit).
fn low_half(word: &AtomicU64) -> *mut u32 {
    let p = word.as_ptr().cast::<u32>();
    if cfg!(target_endian = "little") {
        p
    } else {
        p.wrapping_add(1)
    }
}

/// [`futex_wait`] on the low 32 bits of a 64-bit atomic. The kernel reads
/// those 4 bytes itself; no Rust access of another size is made.
pub(crate) fn futex_wait_low(
    word: &AtomicU64,
    expected: u32,
    timeout: Option<Duration>,
) -> FutexWait {
    futex_wait_at(low_half(word), expected, timeout)
}

/// [`futex_wake`] for sleepers in [`futex_wait_low`].
pub(crate) fn futex_wake_low(word: &AtomicU64, n: u32) -> usize {
    futex_wake_at(low_half(word), n)
}

fn futex_wait_at(word: *mut u32, expected: u32, timeout: Option<Duration>) -> FutexWait {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` points into a live atomic borrowed by the caller for the
    // whole call, aligned to 4; the kernel only reads it. `ts_ptr` is null or
    // points to a timespec that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word,
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r == 0 {
        return FutexWait::Woken;
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => FutexWait::Changed,
        Some(libc::ETIMEDOUT) => FutexWait::TimedOut,
        Some(libc::EINTR) => FutexWait::Interrupted,
        // EFAULT/EINVAL cannot happen for a valid &AtomicU32; treat as a
        // spurious wake so callers re-check their condition.
        _ => FutexWait::Woken,
    }
}

/// `futex(FUTEX_WAKE)`: wakes up to `n` waiters of `word`, in any process.
/// Returns how many were woken.
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) -> usize {
    futex_wake_at(word.as_ptr(), n)
}

fn futex_wake_at(word: *mut u32, n: u32) -> usize {
    let n = libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
    // SAFETY: FUTEX_WAKE uses the address only as a key (it reads no
    // memory); the caller's borrow keeps the mapping alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word,
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    usize::try_from(r).unwrap_or(0)
}

/// `futex_waitv(2)`'s system call number (the same on x86_64 and aarch64).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_FUTEX_WAITV: libc::c_long = 449;
/// `FUTEX2_SIZE_U32`: the word is 32 bits. No `FUTEX2_PRIVATE`: the words
/// live in shared memory, so they pair with wakes from any process.
const FUTEX2_SIZE_U32: u32 = 2;
/// The kernel's limit on the words of one `futex_waitv`.
const FUTEX_WAITV_MAX: usize = 128;

/// Set once `futex_waitv` turned out not to exist (or to be forbidden, as
/// a seccomp filter may do): later calls fail at once.
static FUTEX_WAITV_MISSING: AtomicBool = AtomicBool::new(false);

/// Whether [`futex_waitv`] is known not to work here (it failed with
/// `ENOSYS` once).
pub(crate) fn futex_waitv_missing() -> bool {
    FUTEX_WAITV_MISSING.load(Ordering::Relaxed)
}

/// One word of a [`futex_waitv`]: the kernel's `struct futex_waitv`, which
/// borrows the word for `'a`.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct FutexWaiter<'a> {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
    word: PhantomData<&'a AtomicU32>,
}

const _: () = assert!(std::mem::size_of::<FutexWaiter<'_>>() == 24);

impl<'a> FutexWaiter<'a> {
    fn at(word: *mut u32, expected: u32) -> FutexWaiter<'a> {
        FutexWaiter {
            val: u64::from(expected),
            uaddr: word as usize as u64,
            flags: FUTEX2_SIZE_U32,
            reserved: 0,
            word: PhantomData,
        }
    }

    /// Sleep while `*word == expected`.
    pub(crate) fn new(word: &'a AtomicU32, expected: u32) -> FutexWaiter<'a> {
        FutexWaiter::at(word.as_ptr(), expected)
    }

    /// Sleep while the low 32 bits of `word` equal `expected` (the half
    /// [`futex_wait_low`] sleeps on and [`futex_wake_low`] wakes).
    pub(crate) fn low_half(word: &'a AtomicU64, expected: u32) -> FutexWaiter<'a> {
        FutexWaiter::at(low_half(word), expected)
    }
}

/// `futex_waitv(2)`: sleeps while every word holds its expected value, at
/// most `timeout` (none: no limit), until a `futex_wake` on any of them
/// (from any process). Returns the index of the word that was woken.
///
/// # Errors
/// The kernel's answers as `io::Error`s: `EAGAIN` (a word did not hold its
/// value when the call started), `ETIMEDOUT`, `EINTR`, and `ENOSYS` when
/// the kernel has no `futex_waitv` (before 5.16, other architectures, or a
/// seccomp filter that refuses it with `ENOSYS` or `EPERM`): that is
/// remembered, and later calls fail with `ENOSYS` without asking. `EINVAL`
/// for more than 128 words.
pub(crate) fn futex_waitv(
    waiters: &[FutexWaiter<'_>],
    timeout: Option<Duration>,
) -> io::Result<usize> {
    if FUTEX_WAITV_MISSING.load(Ordering::Relaxed) {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    if waiters.len() > FUTEX_WAITV_MAX {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let deadline = match timeout {
        None => None,
        Some(d) => Some(monotonic_after(d)?),
    };
    let r = raw_futex_waitv(waiters, deadline.as_ref());
    match r {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
            FUTEX_WAITV_MISSING.store(true, Ordering::Relaxed);
            Err(io::Error::from_raw_os_error(libc::ENOSYS))
        }
        r => r,
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn raw_futex_waitv(
    waiters: &[FutexWaiter<'_>],
    deadline: Option<&libc::timespec>,
) -> io::Result<usize> {
    let deadline = deadline.map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `waiters` is an array of `waiters.len()` (at most 128) kernel
    // `struct futex_waitv`s (repr(C), 24 bytes, flags FUTEX2_SIZE_U32,
    // reserved 0), each naming a 4-aligned word that its lifetime keeps
    // borrowed, hence mapped, for the whole call; the kernel only reads
    // them. `deadline` is null or points to a timespec that outlives the
    // call. The flags argument must be 0.
    let r = unsafe {
        libc::syscall(
            SYS_FUTEX_WAITV,
            waiters.as_ptr(),
            waiters.len() as libc::c_uint,
            0 as libc::c_uint,
            deadline,
            libc::CLOCK_MONOTONIC,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(usize::try_from(r).unwrap_or(0))
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn raw_futex_waitv(
    _waiters: &[FutexWaiter<'_>],
    _deadline: Option<&libc::timespec>,
) -> io::Result<usize> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// `CLOCK_MONOTONIC` now plus `d` (saturating), the absolute time
/// `futex_waitv` takes.
fn monotonic_after(d: Duration) -> io::Result<libc::timespec> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is valid for writes of one timespec.
    cvt(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) })?;
    let secs = libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX);
    let mut nanos = now.tv_nsec + d.subsec_nanos() as libc::c_long;
    let mut carry = 0;
    if nanos >= 1_000_000_000 {
        nanos -= 1_000_000_000;
        carry = 1;
    }
    Ok(libc::timespec {
        tv_sec: now.tv_sec.saturating_add(secs).saturating_add(carry),
        tv_nsec: nanos,
    })
}

/// Turns a pthread return code (0, or the error number) into an `io::Result`.
fn cvt_pthread(code: libc::c_int) -> io::Result<()> {
    match code {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// `pthread_mutex_init(3)` of a robust (`PTHREAD_MUTEX_ROBUST`),
/// process-shared (`PTHREAD_PROCESS_SHARED`) mutex at `m`, whatever `m`
/// held before.
///
/// # Safety
/// `m` must be valid for reads and writes of a `pthread_mutex_t` and
/// aligned for it, and no thread may hold the mutex there or be inside a
/// `pthread_mutex_*` call on it (its previous holder, if any, released it
/// or died): initialising a held mutex breaks its holder's robust list.
///
/// # Errors
/// What `pthread_mutexattr_*` or `pthread_mutex_init` refuse.
pub(crate) unsafe fn robust_mutex_init(m: *mut libc::pthread_mutex_t) -> io::Result<()> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
    // SAFETY: `attr` is valid for writes of a pthread_mutexattr_t.
    cvt_pthread(unsafe { libc::pthread_mutexattr_init(attr.as_mut_ptr()) })?;
    let attr = attr.as_mut_ptr();
    // SAFETY: `attr` was initialised just above and is destroyed below; `m`
    // is valid, aligned and not in use (the caller's contract).
    let r = unsafe {
        cvt_pthread(libc::pthread_mutexattr_setrobust(
            attr,
            libc::PTHREAD_MUTEX_ROBUST,
        ))
        .and_then(|()| {
            cvt_pthread(libc::pthread_mutexattr_setpshared(
                attr,
                libc::PTHREAD_PROCESS_SHARED,
            ))
        })
        .and_then(|()| cvt_pthread(libc::pthread_mutex_init(m, attr)))
    };
    // SAFETY: `attr` is initialised and not used after this.
    unsafe { libc::pthread_mutexattr_destroy(attr) };
    r
}

/// `pthread_mutex_lock(3)`.
///
/// # Safety
/// `m` must point to a mutex initialised by [`robust_mutex_init`] that
/// stays mapped at this address while the calling thread holds it (glibc
/// links it into the thread's robust list, which the kernel walks when
/// the thread exits).
///
/// # Errors
/// `EOWNERDEAD` (the caller holds it now, its previous holder died),
/// `ENOTRECOVERABLE`, `EDEADLK`, or what else the mutex refuses.
pub(crate) unsafe fn mutex_lock(m: *mut libc::pthread_mutex_t) -> io::Result<()> {
    // SAFETY: the caller's contract: an initialised mutex that outlives
    // the hold.
    cvt_pthread(unsafe { libc::pthread_mutex_lock(m) })
}

/// `pthread_mutex_unlock(3)`.
///
/// # Safety
/// `m` must point to a mutex the calling thread locked with
/// [`mutex_lock`], still mapped at that address.
///
/// # Errors
/// `EPERM` when the calling thread does not hold it.
pub(crate) unsafe fn mutex_unlock(m: *mut libc::pthread_mutex_t) -> io::Result<()> {
    // SAFETY: the caller's contract: a mutex this thread holds.
    cvt_pthread(unsafe { libc::pthread_mutex_unlock(m) })
}

/// Fills `buf` from the kernel's random source (`getrandom(2)`).
pub(crate) fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is valid for writes of `rest.len()` bytes.
        let r = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += r as usize;
    }
    Ok(())
}

/// `pthread_atfork(3)` with only a child handler: `child` runs in the child
/// process right after every `fork()` made through libc.
pub(crate) fn atfork_child(child: unsafe extern "C" fn()) -> io::Result<()> {
    // SAFETY: registering a handler has no memory-safety preconditions; the
    // handler is a plain function that lives for the whole program.
    match unsafe { libc::pthread_atfork(None, None, Some(child)) } {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// What `/proc/…/stat` says about one thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ThreadStat {
    /// Exited but not reaped yet (state `Z` or `X`).
    pub(crate) zombie: bool,
    /// When the thread started, in clock ticks since boot (field 22).
    pub(crate) start_ticks: u64,
}

/// Parses a `/proc/…/stat` line: the state after the last `)` (comm may
/// contain anything), and field 22, the start time.
fn parse_stat(stat: &[u8]) -> Option<ThreadStat> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 2..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    // `rest` starts at field 3 (state); field 22 is 19 further on.
    let start_ticks = fields.nth(18)?.parse().ok()?;
    Some(ThreadStat {
        zombie: matches!(state, "Z" | "X"),
        start_ticks,
    })
}

/// How `/proc` answered about a thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProcThread {
    /// The thread exists (possibly as a zombie).
    Found(ThreadStat),
    /// No such thread in that process.
    Gone,
    /// `/proc` could not tell (not mounted, not readable, unparsable).
    Unknown,
}

/// The `Tgid:` line of a `/proc/…/status` file.
fn parse_tgid(status: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(status).ok()?;
    let line = text.lines().find(|l| l.starts_with("Tgid:"))?;
    line["Tgid:".len()..].trim().parse().ok()
}

/// Thread `tid` of process `pid`, from `/proc/PID/task/TID/stat`, checked
/// to belong to process `pid` (`/proc/PID` also resolves when `pid` is now
/// the id of a thread of some other process).
pub(crate) fn proc_thread(pid: u32, tid: u32) -> ProcThread {
    match std::fs::read(format!("/proc/{pid}/task/{tid}/stat")) {
        Ok(stat) => {
            let tgid = std::fs::read(format!("/proc/{pid}/task/{tid}/status"))
                .ok()
                .and_then(|s| parse_tgid(&s));
            match (parse_stat(&stat), tgid) {
                (Some(st), Some(tgid)) if tgid == pid => ProcThread::Found(st),
                (Some(_), Some(_)) => ProcThread::Gone,
                // Exited between the two reads, or unparsable.
                _ => ProcThread::Unknown,
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // No such entry, or no /proc at all: tell them apart.
            if std::path::Path::new("/proc/self/stat").exists() {
                ProcThread::Gone
            } else {
                ProcThread::Unknown
            }
        }
        Err(_) => ProcThread::Unknown,
    }
}

/// Whether thread `tid` of process `pid` still runs: it exists in that
/// process, has not exited (a zombie) and, if `start` gives its recorded
/// start time (the low `bits` bits of clock ticks since boot), started
/// then, so a recycled thread id is not taken for it. The one identity
/// check of the crate: lock owners and directory claimers are judged by
/// it. Without `/proc`, only the thread id can be asked about.
pub(crate) fn thread_runs(pid: u32, tid: u32, start: Option<(u64, u32)>) -> bool {
    match proc_thread(pid, tid) {
        ProcThread::Found(st) => {
            !st.zombie
                && start.map_or(true, |(at, bits)| {
                    st.start_ticks & ((1u64 << bits) - 1) == at
                })
        }
        ProcThread::Gone => false,
        ProcThread::Unknown => thread_alive(tid),
    }
}

/// Thread `tid` of any process, from `/proc/TID/stat` (hidden thread ids
/// resolve there too).
pub(crate) fn proc_any_thread(tid: u32) -> ProcThread {
    match std::fs::read(format!("/proc/{tid}/stat")) {
        Ok(stat) => parse_stat(&stat).map_or(ProcThread::Unknown, ProcThread::Found),
        Err(e) if e.kind() == io::ErrorKind::NotFound => ProcThread::Gone,
        Err(_) => ProcThread::Unknown,
    }
}

/// The calling thread's start time in clock ticks since boot, or 0 when
/// `/proc` cannot tell.
pub(crate) fn own_thread_start_ticks() -> u64 {
    match proc_thread(getpid(), gettid()) {
        ProcThread::Found(st) => st.start_ticks,
        _ => 0,
    }
}

/// The calling process's start time (its main thread's) in clock ticks
/// since boot, or 0 when `/proc` cannot tell.
pub(crate) fn own_process_start_ticks() -> u64 {
    std::fs::read("/proc/self/stat")
        .ok()
        .and_then(|s| parse_stat(&s))
        .map_or(0, |st| st.start_ticks)
}

/// Clock ticks per second of `/proc`'s times (`sysconf(_SC_CLK_TCK)`).
fn clock_ticks_per_second() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(100)
    })
}

/// Now, in `/proc`'s clock ticks since boot (`CLOCK_BOOTTIME`, the clock of
/// a thread's start time), rounded down.
pub(crate) fn boot_ticks_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for writes of one timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return 0;
    }
    let tck = clock_ticks_per_second();
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * tck + nanos * tck / 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_finds_state_and_start_time() {
        let line = b"42 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 1234 99 99\n";
        assert_eq!(
            parse_stat(line),
            Some(ThreadStat {
                zombie: false,
                start_ticks: 1234
            })
        );
        let z = b"7 (x) Z 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 5 0";
        assert!(parse_stat(z).unwrap().zombie);
        assert_eq!(parse_stat(b"7 (x) S 1 2"), None);
        assert_eq!(parse_stat(b"garbage"), None);
        assert_eq!(parse_tgid(b"Name:\tx\nTgid:\t417\nPid:\t418\n"), Some(417));
        assert_eq!(parse_tgid(b"Name:\tx\n"), None);
    }

    #[test]
    fn own_start_times_are_read_and_ordered() {
        let p = own_process_start_ticks();
        let t = own_thread_start_ticks();
        assert!(p > 0 && t >= p, "process {p}, thread {t}");
        assert!(boot_ticks_now() >= t);
        let other = std::thread::spawn(own_thread_start_ticks).join().unwrap();
        assert!(other >= t);
        assert_eq!(
            proc_thread(getpid(), gettid()),
            ProcThread::Found(ThreadStat {
                zombie: false,
                start_ticks: t
            })
        );
        assert_eq!(proc_thread(getpid(), 0), ProcThread::Gone);
    }

    #[test]
    fn futex_waitv_checks_every_word_and_says_which_one_woke() {
        let a = AtomicU32::new(1);
        let b = AtomicU64::new(5 << 32 | 7);
        let both = |x: u32, y: u32| [FutexWaiter::new(&a, x), FutexWaiter::low_half(&b, y)];
        match futex_waitv(&both(1, 8), Some(Duration::from_secs(5))) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                eprintln!("futex_waitv is not available here: skipped");
                return;
            }
            r => assert_eq!(
                r.unwrap_err().raw_os_error(),
                Some(libc::EAGAIN),
                "b's low half is 7"
            ),
        }
        let r = futex_waitv(&both(2, 7), Some(Duration::from_secs(5)));
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EAGAIN), "a is 1");
        let r = futex_waitv(&both(1, 7), Some(Duration::from_millis(2)));
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ETIMEDOUT));
        // A wake on either word ends the sleep and names it.
        for which in [0, 1] {
            std::thread::scope(|s| {
                let sleeper = s.spawn(|| futex_waitv(&both(1, 7), Some(Duration::from_secs(10))));
                // The wake may come before the sleep: wake until one lands.
                while !sleeper.is_finished() {
                    let woken = match which {
                        0 => futex_wake(&a, 1),
                        _ => futex_wake_low(&b, 1),
                    };
                    if woken == 1 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                assert_eq!(sleeper.join().unwrap().unwrap(), which);
            });
        }
    }
}
