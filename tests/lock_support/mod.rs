//! Helpers shared by the lock, condvar and robustness tests.
#![allow(dead_code)] // each test file uses a different subset

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shmutils::{MapFlags, MapProtections, MappedMemory, Mode, ShmFd};
use shmutils_workspace::ShmName;

/// Segment size used by every lock test.
pub const LEN: usize = 4096;

/// A fresh named segment of [`LEN`] bytes, mapped read-write and shared.
pub fn segment(tag: &str) -> (ShmName, MappedMemory) {
    let name = ShmName::new(tag);
    let fd = ShmFd::open(&name, Mode::CreateExclusive).unwrap();
    fd.truncate(LEN as u64).unwrap();
    let m = MappedMemory::new(
        None,
        LEN,
        MapProtections::READ_WRITE,
        MapFlags::SHARED,
        Some(&fd),
    )
    .unwrap();
    (name, m)
}

/// Polls `done` every 100 µs until it holds or `limit` passes; returns
/// the time it took, or `None` on timeout.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        if done() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Waits (at most 10 s) until the flag reaches `value`; panics otherwise.
pub fn await_flag(flag: &AtomicU32, value: u32) {
    let ok = wait_until(Duration::from_secs(10), || {
        flag.load(Ordering::SeqCst) >= value
    });
    assert!(ok.is_some(), "flag never reached {value}");
}

/// Sleeps forever (a child that holds a lock until it is killed).
pub fn park() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The bound the issue sets between an owner's death and `OwnerDied`.
pub const DEATH_BOUND: Duration = Duration::from_millis(50);

/// Pins the calling process to the first CPU it may run on, so that it
/// shares that CPU with every process pinned the same way (a waiter then
/// cannot spin its way to the lock: it must yield or sleep).
pub fn pin_to_one_cpu() {
    // SAFETY: cpu_set_t is plain data, written by sched_getaffinity and
    // read by sched_setaffinity; the index is below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        assert_eq!(libc::sched_getaffinity(0, size, &mut set), 0);
        let first = (0..libc::CPU_SETSIZE as usize)
            .find(|&cpu| libc::CPU_ISSET(cpu, &set))
            .expect("no CPU allowed");
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(first, &mut set);
        assert_eq!(libc::sched_setaffinity(0, size, &set), 0);
    }
}
