//! The seed's headline example: two workers count a shared counter to
//! 20,000 under a process-shared lock.
//!
//! The parent creates a named segment and places a `Lock<u64>` in it. It
//! holds the lock while it starts two workers, so both begin contending at
//! once, then lets go. Each worker increments the counter under the lock
//! until it reaches 20,000 and records how many increments it made. The
//! parent prints both counts and checks that they sum to 20,000 and that
//! the counter is 20,000.
//!
//! This runs twice: with forked workers, then with spawned workers (this
//! program re-executed, a fresh process that opens the segment by name).
//! The name is unlinked at the end, also on error. Exits non-zero on any
//! mismatch.
//!
//! Run with `cargo run --example counter`.

use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};

use shmutils::{shm_unlink, Lock, MapFlags, MapProtections, MappedMemory, Mode, ShmFd};

const SIZE: usize = 4096 * 100;
const LIMIT: u64 = 20_000;
/// The `Lock<u64>` counter.
const COUNTER: usize = 0;
/// One `AtomicU64` per worker: how many increments it made.
const COUNTS: usize = 64;

type Error = Box<dyn std::error::Error>;

fn map(fd: &ShmFd) -> shmutils::Result<MappedMemory> {
    MappedMemory::new(
        None,
        SIZE,
        MapProtections::READ_WRITE,
        MapFlags::SHARED,
        Some(fd),
    )
}

/// Increments the counter under the lock until it reaches `limit`;
/// returns how many increments this worker made (the seed's `_increment_to`).
fn increment_to(lock: &Lock<u64>, limit: u64) -> shmutils::Result<u64> {
    let mut made = 0;
    loop {
        let mut count = lock.lock()?;
        if *count >= limit {
            return Ok(made);
        }
        *count += 1;
        made += 1;
    }
}

/// A worker: counts, then stores its count in slot `slot`.
fn worker(m: &MappedMemory, slot: usize) -> shmutils::Result<()> {
    let made = increment_to(m.get::<Lock<u64>>(COUNTER)?, LIMIT)?;
    m.get::<AtomicU64>(COUNTS + 8 * slot)?
        .store(made, Ordering::SeqCst);
    Ok(())
}

/// The spawned worker: `counter worker NAME SLOT`.
fn spawned_worker(name: &str, slot: &str) -> Result<(), Error> {
    let fd = ShmFd::open(name, Mode::ReadWrite)?;
    worker(&map(&fd)?, slot.parse()?)?;
    Ok(())
}

/// Starts one worker in slot `slot`, forked or spawned; returns a function
/// that waits for it and says whether it succeeded.
fn start(
    how: &str,
    m: &MappedMemory,
    name: &str,
    slot: usize,
) -> Result<Box<dyn FnOnce() -> bool>, Error> {
    if how == "spawned" {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["worker", name, &slot.to_string()])
            .spawn()?;
        return Ok(Box::new(move || {
            child.wait().map(|s| s.success()).unwrap_or(false)
        }));
    }
    // SAFETY: the child only runs `worker` on the inherited mapping and then
    // leaves with _exit, never returning into the parent's code (the guard
    // the parent holds is not dropped in the child).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if pid == 0 {
        let code = match worker(m, slot) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("forked worker: {e}");
                1
            }
        };
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    Ok(Box::new(move || {
        let mut status = 0;
        // SAFETY: `pid` is our child and `status` a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }))
}

/// One round: two workers started while the parent holds the lock.
fn round(how: &str, m: &MappedMemory, name: &str) -> Result<(), Error> {
    let lock = m.get::<Lock<u64>>(COUNTER)?;
    let mut waits = Vec::new();
    {
        // `?` on a lock error into a `Box<dyn Error>`: drop the guard first
        // (shmutils::Error holds the error without it).
        let mut count = lock.lock().map_err(shmutils::Error::from)?;
        *count = 0;
        for slot in 0..2 {
            m.get::<AtomicU64>(COUNTS + 8 * slot)?
                .store(0, Ordering::SeqCst);
            waits.push(start(how, m, name, slot)?);
        }
        println!("{how}: parent holds the lock while two workers start");
    } // the workers go
    let results: Vec<bool> = waits.into_iter().map(|wait| wait()).collect();
    let ok = results.iter().all(|&ok| ok);
    if !ok {
        return Err(format!("a {how} worker failed").into());
    }
    let counts: Vec<u64> = (0..2)
        .map(|slot| {
            m.get::<AtomicU64>(COUNTS + 8 * slot)
                .map(|c| c.load(Ordering::SeqCst))
        })
        .collect::<shmutils::Result<_>>()?;
    let total = *lock.lock().map_err(shmutils::Error::from)?;
    println!(
        "{how}: worker counts {} + {} = {}, counter = {total}",
        counts[0],
        counts[1],
        counts[0] + counts[1]
    );
    if counts[0] + counts[1] != LIMIT || total != LIMIT {
        return Err(format!("{how}: expected both to be {LIMIT}").into());
    }
    Ok(())
}

fn parent() -> Result<(), Error> {
    let name = format!("/shmutils-example-counter-{}", std::process::id());
    /// Unlinks the name when dropped: on success, error or panic.
    struct Unlink<'a>(&'a str);
    impl Drop for Unlink<'_> {
        fn drop(&mut self) {
            if let Err(e) = shm_unlink(self.0) {
                eprintln!("could not unlink {}: {e}", self.0);
            }
        }
    }
    let fd = ShmFd::open(&name, Mode::CreateExclusive)?;
    let _unlink = Unlink(&name);
    fd.truncate(SIZE as u64)?;
    let mut m = map(&fd)?;
    m.init(COUNTER, Lock::new(0u64))?;
    round("forked", &m, &name)?;
    round("spawned", &m, &name)?;
    println!("ok");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let r = if args.len() == 4 && args[1] == "worker" {
        spawned_worker(&args[2], &args[3])
    } else {
        parent()
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
