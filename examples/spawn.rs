//! The seed's spawn example, without its fixed-address trick.
//!
//! The parent stores 1923 in a shared heap and hands a spawned child (this
//! program re-executed: a fresh process with its own address layout) a
//! handle token on its command line. The child opens the segment by name,
//! resolves the handle, counts the value up to 8900 and prints what it
//! found. The parent checks `(1923, 8900)`, as the seed did.
//!
//! Run with `cargo run --example spawn`.

use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};

use shmutils::{Handle, Segment};

type Error = Box<dyn std::error::Error>;

/// The child: `spawn child TOKEN`. Prints the value it found.
fn child(token: &str) -> Result<(), Error> {
    let handle: Handle<AtomicU64> = token.parse()?;
    let seg = Segment::open(handle.segment_name())?;
    let value = seg.resolve(&handle)?;
    let was = value.load(Ordering::SeqCst);
    for i in was..=8900 {
        value.store(i, Ordering::SeqCst);
    }
    println!("{was}");
    Ok(())
}

fn parent() -> Result<(), Error> {
    let name = format!("/shmutils-example-spawn-{}", std::process::id());
    let mut seg = Segment::create(&name, 1 << 20)?;
    seg.unlink_on_drop(true)?; // the name goes away however we leave
    let value = seg.heap().new(AtomicU64::new(1923))?;
    let token = seg.heap().handle(value)?.to_string();
    println!(
        "parent {}: stored 1923 in {name}; handle {token}",
        std::process::id()
    );

    let out = Command::new(std::env::current_exe()?)
        .args(["child", &token])
        .output()?;
    if !out.status.success() {
        return Err(format!("child failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let was: u64 = String::from_utf8(out.stdout)?.trim().parse()?;
    let now = seg.heap().get(value)?.load(Ordering::SeqCst);
    println!("spawned child saw {was} and counted to {now}");
    if (was, now) != (1923, 8900) {
        return Err(format!("expected (1923, 8900), got ({was}, {now})").into());
    }
    println!("(1923, 8900): ok");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.as_slice() {
        [_, cmd, token] if cmd == "child" => child(token),
        _ => parent(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
