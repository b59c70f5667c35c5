//! Typed data structures shared between processes through POSIX shared
//! memory, safely.
//!
//! ```
//! use shmutils::{shm_unlink, MapFlags, MapProtections, MappedMemory, Mode, ShmFd};
//! # let name = format!("/shmutils-doc-lib-{}", std::process::id());
//! let fd = ShmFd::open(&name, Mode::CreateExclusive)?;
//! fd.truncate(4096)?;
//! let mut m = MappedMemory::new(None, 4096, MapProtections::READ_WRITE, MapFlags::SHARED, Some(&fd))?;
//! m.init(0, 1923u64)?;
//! assert_eq!(*m.get::<u64>(0)?, 1923);
//! shm_unlink(&name)?;
//! # Ok::<(), shmutils::Error>(())
//! ```
//!
//! The layers, each using only those above it: [`shm`] (named memory),
//! [`shared`] (what may be stored), [`mmap`] (mappings), [`lock`]
//! (process-shared locks that survive a crashed holder).
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

mod sys;

pub mod error;
pub mod handle;
pub mod lock;
pub mod mmap;
pub mod shared;
pub mod shm;

pub mod heap;
pub mod ptr;
pub mod segment;

pub use error::{Error, Result};
pub use handle::Handle;
pub use lock::{
    Condvar, Lock, LockError, LockGuard, LockResult, RLock, RLockGuard, RawLock, RawRLock,
    WaitTimeoutResult,
};
pub use mmap::{
    munmap, page_size, round_to_page_size, AbsoluteMemory, MapFlags, MapProtections, MappedMemory,
    RelativeMemory,
};
pub use shared::Shared;
pub use shared::{Checked, SharedEnum};
pub use shm::{shm_unlink, Mode, ShmFd};
pub use shmutils_derive::SharedStruct;

pub use heap::{CheckReport, HeapCache, HeapStats, SharedHeap};
pub use ptr::{RelPtr, RelSlice};
pub use segment::Segment;
