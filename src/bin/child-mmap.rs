//! A spawned child (fresh exec) for the mapping tests: it opens a segment by
//! name, as an unrelated program would.
//!
//! - `count NAME OFFSET TARGET`: counts the u64 at OFFSET up to TARGET and
//!   prints the value it started from.
//! - `lock NAME OFFSET`: takes the `Lock<u64>` its parent placed at OFFSET,
//!   prints the value and adds 1, then prints `TypeMismatch` if a `u64`
//!   view of the same bytes is refused (this process's first typed view
//!   claimed them as the lock).
//! - `fixed NAME ADDR LEN OFFSET`: maps the object at ADDR (hex), prints the
//!   absolute address of OFFSET and the 8 bytes there (hex), then writes
//!   `b"child ok"` at OFFSET + 8.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use shmutils::{AbsoluteMemory, Error, Lock, MapFlags, MapProtections, MappedMemory, Mode, ShmFd};

fn run(args: &[String]) -> shmutils::Result<()> {
    let usage = || shmutils::Error::InvalidArgument {
        what: format!("usage: count|lock|fixed ..., got {args:?}"),
    };
    let num = |s: &String| s.parse::<usize>().map_err(|_| usage());
    match args.first().map(String::as_str) {
        Some("count") if args.len() == 4 => {
            let fd = ShmFd::open(&args[1], Mode::ReadWrite)?;
            let len = fd.size()? as usize;
            let m = MappedMemory::new(
                None,
                len,
                MapProtections::READ_WRITE,
                MapFlags::SHARED,
                Some(&fd),
            )?;
            let v = m.get::<AtomicU64>(num(&args[2])?)?;
            let was = v.load(Ordering::SeqCst);
            for i in was..=num(&args[3])? as u64 {
                v.store(i, Ordering::SeqCst);
            }
            println!("{was}");
            Ok(())
        }
        Some("lock") if args.len() == 3 => {
            let fd = ShmFd::open(&args[1], Mode::ReadWrite)?;
            let m = MappedMemory::new(
                None,
                fd.size()? as usize,
                MapProtections::READ_WRITE,
                MapFlags::SHARED,
                Some(&fd),
            )?;
            let offset = num(&args[2])?;
            let lock = m.get::<Lock<u64>>(offset)?;
            {
                let mut value = lock.lock()?;
                print!("{}", *value);
                *value += 1;
            }
            match m.get::<u64>(offset) {
                Err(Error::TypeMismatch { .. }) => println!(" TypeMismatch"),
                other => println!(" {other:?}"),
            }
            Ok(())
        }
        Some("fixed") if args.len() == 5 => {
            let addr =
                usize::from_str_radix(args[2].trim_start_matches("0x"), 16).map_err(|_| usage())?;
            let fd = ShmFd::open(&args[1], Mode::ReadWrite)?;
            let mut m = AbsoluteMemory::map_at(
                addr,
                num(&args[3])?,
                MapProtections::READ_WRITE,
                MapFlags::empty(),
                Some(&fd),
            )?;
            let off = num(&args[4])?;
            let abs = m.abs_address_at(off)?;
            let bytes = m.absolute_at(abs..abs + 8)?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            println!("{abs:#x} {hex}");
            m.write(off + 8, b"child ok")
        }
        _ => Err(usage()),
    }
}

fn main() -> ExitCode {
    shmutils_workspace::child_main("child-mmap", run)
}
