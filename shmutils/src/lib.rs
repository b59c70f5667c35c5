//! Typed data structures shared between processes through POSIX shared
//! memory, safely.
//!
//! ```
//! use shmutils::{Checked, Handle, RelSlice, Segment, SharedStruct};
//!
//! #[derive(SharedStruct, Clone, Copy, Debug, PartialEq)]
//! #[repr(u8)]
//! enum Status { Inactive = 0, Active = 1 }
//!
//! #[derive(SharedStruct)]
//! #[repr(C)]
//! struct User { id: u64, fullname: RelSlice<u8>, status: Checked<Status> }
//!
//! # let name = format!("/shmutils-doc-lib-{}", std::process::id());
//! let mut seg = Segment::create(&name, 64 << 20)?;
//! # seg.unlink_on_drop(true)?;
//! let heap = seg.heap();
//! let u = User::with_heap(&heap).new(User {
//!     id: 12345,
//!     fullname: heap.new_slice(b"Autumn")?,
//!     status: Status::Active.into(),
//! })?;
//! let token = heap.handle(u)?.to_string(); // hand it to any process
//!
//! // in another process:
//! let h: Handle<User> = token.parse()?;
//! let seg = Segment::open(h.segment_name())?;
//! let user: &User = seg.resolve(&h)?;
//! assert_eq!(user.status.get()?, Status::Active);
//! # Ok::<(), shmutils::Error>(())
//! ```
//!
//! # Layers
//! Each uses only those above it (DESIGN.md):
//!
//! | module | what it owns |
//! |---|---|
//! | `sys` (private) | every `libc` call, errno turned into `io::Error` |
//! | [`shm`] | [`ShmFd`]: named POSIX shared memory, modes, permissions |
//! | [`shared`] | the [`Shared`] trait, layout fingerprints, [`Checked`] |
//! | [`mmap`] | [`MappedMemory`] (relative; typed placement checked per object, across this process's mappings of it) and [`AbsoluteMemory`] (fixed address) |
//! | [`lock`] | [`Lock`], [`RLock`], [`Condvar`], raw lock words; owner-death recovery |
//! | [`ptr`] | [`RelPtr`], [`RelSlice`]: segment-relative, checked pointers |
//! | [`heap`] | [`SharedHeap`]: the lock-free allocator in a segment; named objects |
//! | [`segment`] | [`Segment`]: named memory + mapping + header + heap |
//! | [`handle`] | [`Handle`]: an object's identity for any process |
//! | [`registry`] | who is attached to a segment: a slot per process and per allocating thread, each thread's allocation cache, reaping of dead ones |
//!
//! `#[derive(SharedStruct)]` comes from the `shmutils-derive` crate and is
//! re-exported here.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

mod process;
mod sync;
mod sys;

pub mod error;
pub mod handle;
pub mod heap;
pub mod lock;
pub mod mmap;
pub mod ptr;
pub mod registry;
pub mod segment;
pub mod shared;
pub mod shm;

pub use error::{Error, LockErrorKind, Result};
pub use handle::Handle;
pub use heap::{CheckReport, HeapStats, SharedBox, SharedHeap, TypeRecord};
pub use lock::{
    Condvar, GenericLock, GenericLockGuard, Lock, LockError, LockGuard, LockResult, RLock,
    RLockGuard, RawLock, RawMutex, RawMutexExclusive, RawRLock, WaitTimeoutResult,
};
pub use mmap::{
    munmap, page_size, round_to_page_size, AbsoluteMemory, MapFlags, MapProtections, MappedMemory,
    RelativeMemory,
};
pub use ptr::{RelPtr, RelSlice};
pub use registry::{ProcessInfo, RegistryStats};
pub use segment::Segment;
pub use shared::{Checked, Shared, SharedEnum};
pub use shm::{shm_unlink, Mode, ShmFd};
pub use shmutils_derive::SharedStruct;

/// The README's examples, compiled and run as doc tests so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
