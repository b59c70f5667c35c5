//! A spawned child (fresh exec) for the derive tests. It is compiled
//! separately from the test binary but from the same type definitions
//! (`tests/defs/fingerprint_defs.rs`).
//!
//! - `fingerprints`: prints `NAME FINGERPRINT` (hex) for each definition.
//! - `visit NAME OFFSET`: opens the segment by name, reads the
//!   `Record<u64>` at OFFSET, prints `id status verified x0 y0 x1 y1`, then
//!   adds one to its `visits`.

use std::process::ExitCode;
use std::sync::atomic::Ordering;

use shmutils::{MapFlags, MapProtections, MappedMemory, Mode, ShmFd};

mod defs {
    include!("../../tests/defs/fingerprint_defs.rs");
}

fn run(args: &[String]) -> shmutils::Result<()> {
    let usage = || shmutils::Error::InvalidArgument {
        what: format!("usage: fingerprints | visit NAME OFFSET, got {args:?}"),
    };
    match args.first().map(String::as_str) {
        Some("fingerprints") if args.len() == 1 => {
            for (name, fp) in defs::fingerprints() {
                println!("{name} {fp:016x}");
            }
            Ok(())
        }
        Some("visit") if args.len() == 3 => {
            let offset = args[2].parse::<usize>().map_err(|_| usage())?;
            let fd = ShmFd::open(&args[1], Mode::ReadWrite)?;
            let m = MappedMemory::new(
                None,
                fd.size()? as usize,
                MapProtections::READ_WRITE,
                MapFlags::SHARED,
                Some(&fd),
            )?;
            let r = m.get::<defs::Record<u64>>(offset)?;
            let [a, b] = &r.corners;
            println!(
                "{} {:?} {} {} {} {} {}",
                r.id,
                r.status.get()?,
                r.verified.get()?,
                a.x,
                a.y,
                b.x,
                b.y
            );
            r.visits.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        _ => Err(usage()),
    }
}

fn main() -> ExitCode {
    shmutils_workspace::child_main("child-derive", run)
}
