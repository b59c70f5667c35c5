//! A spawned child (fresh exec) for the heap tests: it opens a segment by
//! name, as an unrelated program would.
//!
//! - `publish NAME INDEX COUNT`: allocates COUNT strings `"child INDEX item
//!   i"` and a table of `RelSlice<u8>` pointing at them, then publishes the
//!   table's offset and length in slots INDEX and 8 + INDEX of the named
//!   object `"board"` (a `[AtomicU64; 16]`). Prints the table's offset.
//! - `find NAME OBJECT`: looks OBJECT up as a `u32` and prints the error
//!   (used to check type errors across processes).

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use shmutils::{RelSlice, Segment};

/// The named object children publish through.
pub type Board = [AtomicU64; 16];

fn run(args: &[String]) -> shmutils::Result<()> {
    let usage = || shmutils::Error::InvalidArgument {
        what: format!("usage: publish NAME INDEX COUNT | find NAME OBJECT, got {args:?}"),
    };
    let num = |s: &String| s.parse::<usize>().map_err(|_| usage());
    match args.first().map(String::as_str) {
        Some("publish") if args.len() == 4 => {
            let seg = Segment::open(&args[1])?;
            let heap = seg.heap();
            let (index, count) = (num(&args[2])?, num(&args[3])?);
            if index >= 8 {
                return Err(usage());
            }
            let board = heap.get(heap.find_or_init::<Board>("board", Default::default)?)?;
            let items: Vec<RelSlice<u8>> = (0..count)
                .map(|i| heap.new_slice(format!("child {index} item {i}").as_bytes()))
                .collect::<shmutils::Result<_>>()?;
            let table = heap.new_slice(&items)?;
            // Release: publishes the strings and the table to the parent's
            // Acquire load of the slot.
            board[8 + index].store(table.len() as u64, Ordering::Release);
            board[index].store(table.offset(), Ordering::Release);
            println!("{}", table.offset());
            Ok(())
        }
        Some("find") if args.len() == 3 => {
            let seg = Segment::open(&args[1])?;
            match seg.heap().find::<u32>(&args[2]) {
                Ok(p) => println!("found {}", p.offset()),
                Err(e) => println!("{e}"),
            }
            Ok(())
        }
        _ => Err(usage()),
    }
}

fn main() -> ExitCode {
    shmutils_workspace::child_main("child-heap", run)
}
