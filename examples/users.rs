//! The seed roadmap's `User` example, end to end.
//!
//! The parent defines `User` with `#[derive(SharedStruct)]` and follows the
//! seed's roadmap: it allocates a zeroed `User` in a segment's heap
//! (`User::with_heap(&heap).new_box_zeroed()`, a `SharedBox` only this
//! process can reach), assigns its fields one by one (its `fullname` a
//! `RelSlice<u8>`, which carries the seed's `fullname_len`), publishes it
//! (`into_rel`) and makes a handle for other processes. It also puts a
//! second user behind a `Lock<User>`. A spawned child (this program
//! re-executed) gets both handles on its command line, prints the first
//! user and sets the second's status under the lock; the parent sees the
//! new status.
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

/// The child: `users child USER_TOKEN LOCKED_USER_TOKEN`.
fn child(user_token: &str, token: &str) -> Result<(), Error> {
    let published: Handle<User> = user_token.parse()?;
    let handle: Handle<Lock<User>> = token.parse()?;
    let seg = Segment::open(handle.segment_name())?;
    let heap = seg.heap();
    println!(
        "child {}: published {}",
        std::process::id(),
        describe(&heap, seg.resolve(&published)?)?
    );
    // The same token read as another type is an error, not a reference.
    let wrong: Handle<Lock<User>> = user_token
        .replacen(
            &format!(".{:x}.", User::FINGERPRINT),
            &format!(".{:x}.", <Lock<User>>::FINGERPRINT),
            1,
        )
        .parse()?;
    match seg.resolve(&wrong) {
        Err(e) => println!("child: the user token retyped as Lock<User>: {e}"),
        Ok(_) => return Err("a block resolved as a type it does not hold".into()),
    }
    let lock = seg.resolve(&handle)?;
    let mut user = lock.lock()?;
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

    // The seed's flow: a zeroed User in the shared heap, private to this
    // process while its fields are assigned one by one...
    let mut draft = User::with_heap(&heap).new_box_zeroed()?;
    assert_eq!((draft.id, draft.fullname.len()), (0, 0));
    draft.id = 12345;
    draft.fullname = heap.new_slice(b"Autumn")?;
    draft.status = Status::Active.into();
    // ...then published: from here on any process may read it.
    let u = draft.into_rel();
    let user = heap.get(u)?;
    let user_token = heap.handle(u)?.to_string();
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
        .args(["child", &user_token, &token])
        .status()?;
    if !status.success() {
        return Err("the child failed".into());
    }
    let after = heap.get(locked)?.lock()?;
    println!("parent sees: {}", describe(&heap, &after)?);
    if after.status.get()? != Status::Deleted {
        return Err("the child's change is not visible".into());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.as_slice() {
        [_, cmd, user, token] if cmd == "child" => child(user, token),
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
