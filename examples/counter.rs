//! The seed's headline example: two workers count a shared counter to
//! 20,000 under a process-shared lock.
//!
//! The parent creates a named segment and allocates a `Lock<u64>` in its
//! heap as the named object "counter" (and "counts", one slot per worker).
//! It holds the lock while it starts two workers, so both begin contending
//! at once, then lets go. Each worker increments the counter under the lock
//! until it reaches 20,000 and records how many increments it made. The
//! parent prints both counts and checks that they sum to 20,000 and that
//! the counter is 20,000.
//!
//! This runs twice: with forked workers, then with spawned workers (this
//! program re-executed, a fresh process that opens the segment by name and
//! finds the counter by its name). The segment's name is unlinked at the
//! end, also on error. Exits non-zero on any mismatch.
//!
//! Run with `cargo run --example counter`.

use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};

use shmutils::{Lock, Segment, SharedHeap};

const LIMIT: u64 = 20_000;

type Error = Box<dyn std::error::Error>;

/// The two named objects the workers share.
fn objects<'s>(heap: &SharedHeap<'s>) -> shmutils::Result<(&'s Lock<u64>, &'s [AtomicU64; 2])> {
    let counter = heap.find::<Lock<u64>>("counter")?;
    let counts = heap.find::<[AtomicU64; 2]>("counts")?;
    Ok((heap.get(counter)?, heap.get(counts)?))
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
fn worker(heap: &SharedHeap<'_>, slot: usize) -> shmutils::Result<()> {
    let (counter, counts) = objects(heap)?;
    let made = increment_to(counter, LIMIT)?;
    counts[slot % 2].store(made, Ordering::SeqCst);
    Ok(())
}

/// The spawned worker: `counter worker NAME SLOT`.
fn spawned_worker(name: &str, slot: &str) -> Result<(), Error> {
    let seg = Segment::open(name)?;
    worker(&seg.heap(), slot.parse()?)?;
    Ok(())
}

/// Starts one worker in slot `slot`, forked or spawned; returns a function
/// that waits for it and says whether it succeeded.
fn start(how: &str, seg: &Segment, slot: usize) -> Result<Box<dyn FnOnce() -> bool>, Error> {
    if how == "spawned" {
        let name = seg.name().ok_or("the segment has no name")?;
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
        let code = match worker(&seg.heap(), slot) {
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
fn round(how: &str, seg: &Segment) -> Result<(), Error> {
    let (lock, counts) = objects(&seg.heap())?;
    let mut waits = Vec::new();
    {
        // `?` takes a lock error straight into a `Box<dyn Error>` (an
        // OwnerDied guard is dropped unrepaired: the next locker sees it).
        let mut count = lock.lock()?;
        *count = 0;
        for (slot, c) in counts.iter().enumerate() {
            c.store(0, Ordering::SeqCst);
            waits.push(start(how, seg, slot)?);
        }
        println!("{how}: parent holds the lock while two workers start");
    } // the workers go
    let ok = waits
        .into_iter()
        .map(|wait| wait())
        .fold(true, |a, b| a & b);
    if !ok {
        return Err(format!("a {how} worker failed").into());
    }
    let [a, b] = [0, 1].map(|i| counts[i].load(Ordering::SeqCst));
    let total = *lock.lock()?;
    println!(
        "{how}: worker counts {a} + {b} = {}, counter = {total}",
        a + b
    );
    if a + b != LIMIT || total != LIMIT {
        return Err(format!("{how}: expected both to be {LIMIT}").into());
    }
    Ok(())
}

fn parent() -> Result<(), Error> {
    let name = format!("/shmutils-example-counter-{}", std::process::id());
    let mut seg = Segment::create(&name, 1 << 20)?;
    seg.unlink_on_drop(true)?; // the name goes away however we leave
    let heap = seg.heap();
    heap.find_or_init("counter", || Lock::new(0u64))?;
    heap.find_or_init("counts", || [AtomicU64::new(0), AtomicU64::new(0)])?;
    round("forked", &seg)?;
    round("spawned", &seg)?;
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
