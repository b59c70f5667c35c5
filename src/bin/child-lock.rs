//! A spawned child (fresh exec) for the lock tests: it opens a segment by
//! name, as an unrelated program would, and uses the `Lock<u64>` at OFFSET.
//!
//! - `count NAME OFFSET N`: adds 1 to the counter N times, each under the
//!   lock, with a non-atomic read-modify-write.
//! - `hold NAME OFFSET VALUE`: locks, stores VALUE, prints `locked`, and
//!   sleeps until killed (the robustness tests SIGKILL it).

use std::io::Write;
use std::process::ExitCode;

use shmutils::{Lock, MapFlags, MapProtections, MappedMemory, Mode, ShmFd};

fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let usage = || format!("usage: count NAME OFFSET N | hold NAME OFFSET VALUE, got {args:?}");
    if args.len() != 4 {
        return Err(usage().into());
    }
    let fd = ShmFd::open(&args[1], Mode::ReadWrite)?;
    let m = MappedMemory::new(
        None,
        usize::try_from(fd.size()?)?,
        MapProtections::READ_WRITE,
        MapFlags::SHARED,
        Some(&fd),
    )?;
    let lock = m.get::<Lock<u64>>(args[2].parse()?)?;
    let n: u64 = args[3].parse()?;
    match args[0].as_str() {
        "count" => {
            for _ in 0..n {
                let mut g = lock.lock()?;
                let v = *g;
                *g = std::hint::black_box(v) + 1;
            }
            Ok(())
        }
        "hold" => {
            let mut g = lock.lock()?;
            *g = n;
            println!("locked");
            std::io::stdout().flush()?;
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        _ => Err(usage().into()),
    }
}

fn main() -> ExitCode {
    shmutils_workspace::child_main("child-lock", run)
}
