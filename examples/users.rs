//! The seed roadmap's `User` example, end to end.
//!
//! The parent defines `User` with `#[derive(SharedStruct)]`, allocates one
//! in a segment's heap with `User::with_heap(&heap).new(...)` (its
//! `fullname` a `RelSlice<u8>`, which carries the seed's `fullname_len`),
//! shows its size and layout fingerprint, and puts a second one behind a
//! `Lock<User>`. A spawned child (this program re-executed) gets a handle
//! to the lock on its command line, prints the user and sets its status
//! under the lock; the parent sees the new status.
//!
//! Run with `cargo run --example users`.

use std::process::{Command, ExitCode};

use shmutils::{Checked, Handle, Lock, RelSlice, Segment, Shared, SharedHeap, SharedStruct};

type Error = Box<dyn std::error::Error>;

#[derive(SharedStruct, Clone, Copy, Debug, PartialEq)]
#[repr(u8)]
enum Status {
    Inactive = 0,
    Active = 1,
    Deleted = 2,
}

#[derive(SharedStruct)]
#[repr(C)]
struct User {
    id: u64,
    fullname: RelSlice<u8>,
    status: Checked<Status>,
}

fn describe(heap: &SharedHeap<'_>, user: &User) -> Result<String, Error> {
    let name = String::from_utf8_lossy(heap.get_slice(user.fullname)?).into_owned();
    Ok(format!(
        "User {{ id: {}, fullname: {name:?}, status: {:?} }}",
        user.id,
        user.status.get()?
    ))
}

/// The child: `users child TOKEN`.
fn child(token: &str) -> Result<(), Error> {
    let handle: Handle<Lock<User>> = token.parse()?;
    let seg = Segment::open(handle.segment_name())?;
    let heap = seg.heap();
    let lock = seg.resolve(&handle)?;
    let mut user = lock.lock().map_err(shmutils::Error::from)?;
    println!("child {}: {}", std::process::id(), describe(&heap, &user)?);
    user.status = Status::Deleted.into();
    println!("child: status set to Deleted");
    Ok(())
}

fn parent() -> Result<(), Error> {
    let name = format!("/shmutils-example-users-{}", std::process::id());
    let mut seg = Segment::create(&name, 1 << 20)?;
    seg.unlink_on_drop(true)?;
    let heap = seg.heap();

    let u = User::with_heap(&heap).new(User {
        id: 12345,
        fullname: heap.new_slice(b"Autumn")?,
        status: Status::Active.into(),
    })?;
    let user = heap.get(u)?;
    println!("{}", describe(&heap, user)?);
    println!(
        "User::sizeof() = {}, fingerprint {:#018x}, at offset {:#x} (ptr_in agrees: {})",
        User::sizeof(),
        User::FINGERPRINT,
        u.offset(),
        user.ptr_in(&heap)? == u
    );
    // User has 7 padding bytes after `status`, so `User::as_bytes` does not
    // compile; its fields without padding have a byte view.
    println!(
        "fullname as stored (offset, length): {:02x?}",
        shmutils::shared::bytes_of(&user.fullname)
    );

    let locked = heap.new(Lock::new(User {
        id: 4123,
        fullname: heap.new_slice(b"Autumn Jolitz")?,
        status: Status::Active.into(),
    }))?;
    let token = heap.handle(locked)?.to_string();
    println!("parent: handing {token} to a spawned child");
    let status = Command::new(std::env::current_exe()?)
        .args(["child", &token])
        .status()?;
    if !status.success() {
        return Err("the child failed".into());
    }
    let after = heap.get(locked)?.lock().map_err(shmutils::Error::from)?;
    println!("parent sees: {}", describe(&heap, &after)?);
    if after.status.get()? != Status::Deleted {
        return Err("the child's change is not visible".into());
    }
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
