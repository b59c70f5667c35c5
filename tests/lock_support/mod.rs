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
