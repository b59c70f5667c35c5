//! The seed's fork and spawn examples on the mapping layer.
//!
//! The parent creates a named segment, maps it at an address a spawned child
//! can share, and stores 1923. A forked child counts it up to 5000; then a
//! spawned child (this program re-executed, a fresh process) opens the
//! segment by name, maps it at the same fixed address, and counts on to
//! 8900. The parent checks both and unlinks the name.
//!
//! Run with `cargo run --example mmap`.

use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};

use shmutils::{shm_unlink, AbsoluteMemory, MapFlags, MapProtections, Mode, ShmFd};

const LEN: usize = 4096 * 100;
const OFFSET: usize = 64;

fn count_up_to(m: &AbsoluteMemory, to: u64) -> shmutils::Result<u64> {
    let value = m.get::<AtomicU64>(OFFSET)?;
    let was = value.load(Ordering::SeqCst);
    for i in was..=to {
        value.store(i, Ordering::SeqCst);
    }
    Ok(was)
}

/// The spawned child: `mmap child NAME ADDRESS`.
fn child(name: &str, addr: &str) -> shmutils::Result<()> {
    let addr = usize::from_str_radix(addr.trim_start_matches("0x"), 16).map_err(|_| {
        shmutils::Error::InvalidArgument {
            what: format!("address {addr:?} is not hex"),
        }
    })?;
    let fd = ShmFd::open(name, Mode::ReadWrite)?;
    let m = AbsoluteMemory::map_at(
        addr,
        LEN,
        MapProtections::READ_WRITE,
        MapFlags::empty(),
        Some(&fd),
    )?;
    let was = count_up_to(&m, 8900)?;
    println!(
        "spawned child {}: mapped {name} at {:#x}, counted {was} -> 8900",
        std::process::id(),
        m.address()
    );
    Ok(())
}

fn parent() -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("/shmutils-example-mmap-{}", std::process::id());
    let fd = ShmFd::open(&name, Mode::CreateExclusive)?;
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        fd.truncate(LEN as u64)?;
        let m = AbsoluteMemory::map_shareable(LEN, MapProtections::READ_WRITE, Some(&fd))?;
        m.get::<AtomicU64>(OFFSET)?.store(1923, Ordering::SeqCst);
        println!(
            "parent {}: mapped {name} at {:#x}, stored 1923",
            std::process::id(),
            m.address()
        );

        // A forked child inherits the mapping at the same address.
        // SAFETY: the child only touches the shared mapping and then _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = match count_up_to(&m, 5000) {
                Ok(was) => {
                    println!("forked child {}: counted {was} -> 5000", std::process::id());
                    0
                }
                Err(_) => 1,
            };
            // SAFETY: leave the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: `pid` is our child and `status` a valid out-pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            return Err("the forked child failed".into());
        }

        let out = Command::new(std::env::current_exe()?)
            .args(["child", &name, &format!("{:#x}", m.address())])
            .status()?;
        if !out.success() {
            return Err("the spawned child failed".into());
        }
        let now = m.get::<AtomicU64>(OFFSET)?.load(Ordering::SeqCst);
        println!("parent: value is now {now}");
        if now != 8900 {
            return Err(format!("expected 8900, found {now}").into());
        }
        Ok(())
    })();
    shm_unlink(&name)?;
    result
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let r = if args.len() == 4 && args[1] == "child" {
        child(&args[2], &args[3]).map_err(Into::into)
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
