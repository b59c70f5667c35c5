//! A spawned child for the space tests, meant to run where `/dev/shm` is a
//! small tmpfs (a private mount namespace): it fills a segment until the
//! file system is full and checks that every failure is a typed error.
//!
//! - `fill NAME SIZE`: creates segment NAME of SIZE bytes (a `NoSpace` from
//!   create itself is a pass), allocates blocks of mixed sizes and writes
//!   every byte of each until an allocation fails, checks that it failed
//!   with `NoSpace` or `OutOfMemory` and that the heap is consistent, then
//!   drops the segment with its name. Prints what happened. A `SIGBUS`
//!   kills it, which the test sees.

use std::process::ExitCode;

use shmutils::{Error, Segment};

fn run(args: &[String]) -> Result<(), String> {
    let [cmd, name, size] = args else {
        return Err(format!("usage: fill NAME SIZE, got {args:?}"));
    };
    if cmd != "fill" {
        return Err(format!("unknown command {cmd:?}"));
    }
    let size: usize = size.parse().map_err(|e| format!("size {size:?}: {e}"))?;
    let mut seg = match Segment::create(name, size) {
        Ok(seg) => seg,
        Err(Error::NoSpace { .. }) => {
            println!("create refused: no space");
            return leftover(name);
        }
        Err(e) => return Err(format!("create: {e}")),
    };
    seg.unlink_on_drop(true).map_err(|e| e.to_string())?;
    let heap = seg.heap();
    let sizes = [64usize, 3000, 20_000, 300_000, 1 << 20];
    let mut total = 0usize;
    let mut n = 0usize;
    let err = loop {
        let bytes = sizes[n % sizes.len()];
        match heap.new_slice(&vec![0xa5u8; bytes]) {
            Ok(_) => {
                total += bytes;
                n += 1;
            }
            Err(e) => break e,
        }
    };
    match err {
        Error::NoSpace { .. } | Error::OutOfMemory { .. } => {}
        e => {
            return Err(format!(
                "allocation {n} failed with an unexpected error: {e}"
            ))
        }
    }
    let report = heap.check();
    if !report.is_consistent() {
        return Err(format!("check after filling: {report}"));
    }
    println!("filled {total} bytes in {n} blocks, then: {err}");
    drop(seg);
    leftover(name)
}

/// Fails if the name (or anything else) is left in `/dev/shm`.
fn leftover(name: &str) -> Result<(), String> {
    let names: Vec<String> = std::fs::read_dir("/dev/shm")
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    if names.is_empty() {
        Ok(())
    } else {
        Err(format!("left behind in /dev/shm after {name}: {names:?}"))
    }
}

fn main() -> ExitCode {
    shmutils_workspace::child_main("child-space", run)
}
