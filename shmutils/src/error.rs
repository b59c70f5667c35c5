//! The crate's error type.
//!
//! What the operating system refused arrives as [`Error::Io`] with the
//! `io::Error` inside; everything shmutils itself rejects (a bad name, a
//! range outside a mapping, a corrupt header, ...) has its own variant, whose
//! message says what was expected and what was found.

use std::fmt;
use std::io;

/// Everything that can go wrong in shmutils, except lock acquisition (see
/// [`LockError`](crate::lock::LockError), which can carry a guard).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A shared memory name broke the naming rules; nothing was called.
    InvalidName {
        /// The name as given.
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A mode string was not one of `r r+ w w+ x x+`.
    InvalidMode {
        /// The string as given.
        mode: String,
    },
    /// An exclusive create found the name taken.
    Exists {
        /// The shared memory name.
        name: String,
    },
    /// The name does not exist.
    NotFound {
        /// The shared memory name.
        name: String,
    },
    /// The OS refused access to the name.
    PermissionDenied {
        /// The shared memory name.
        name: String,
    },
    /// Another OS error, with what was being done.
    Io {
        /// The operation and its object, e.g. `"mmap of /users"`.
        context: String,
        /// What the OS said.
        source: io::Error,
    },
    /// An argument was out of its domain (zero length, conflicting flags...).
    InvalidArgument {
        /// What was wrong.
        what: String,
    },
    /// `offset..offset + len` does not lie inside `0..size`.
    OutOfBounds {
        /// First byte asked for.
        offset: usize,
        /// Number of bytes asked for.
        len: usize,
        /// Size of the region.
        size: usize,
    },
    /// An offset or address is not aligned for the type asked for.
    Misaligned {
        /// The offset (or address) given.
        offset: usize,
        /// The alignment required.
        align: usize,
    },
    /// A mapping was asked to extend past the end of its shared memory object
    /// (touching such pages would raise `SIGBUS`).
    PastEnd {
        /// The shared memory name.
        name: String,
        /// Bytes asked to map (offset plus length).
        requested: u64,
        /// Size of the object.
        size: u64,
    },
    /// The mapping is not writable, so the operation was refused before it
    /// could fault.
    ReadOnly,
    /// A fixed address could not be mapped because something is there.
    AddressInUse {
        /// The address asked for.
        addr: usize,
        /// The length asked for.
        len: usize,
    },
    /// A [`Checked<E>`](crate::Checked) held an integer that is not the
    /// discriminant of any variant of `E`.
    InvalidDiscriminant {
        /// The enum's name.
        type_name: &'static str,
        /// The integer found.
        value: i128,
    },
    /// The heap has no block left for a request (never a panic or `SIGBUS`).
    OutOfMemory {
        /// Bytes asked for.
        size: usize,
        /// Alignment asked for.
        align: usize,
    },
    /// A block was freed that is not allocated (freed twice, or never
    /// handed out); the heap is unchanged.
    DoubleFree {
        /// Offset of the block from the segment's start.
        offset: u64,
    },
    /// A relative pointer does not designate what the operation needs (null,
    /// outside the heap, not the start of a block, not a live allocation).
    InvalidPointer {
        /// The offset given.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A block was freed (or checked) with a layout of another size class
    /// than the one it was allocated with; the heap is unchanged.
    WrongLayout {
        /// Offset of the block from the segment's start.
        offset: u64,
        /// The block size of the class the block belongs to.
        block_size: u64,
        /// The size given.
        size: usize,
        /// The alignment given.
        align: usize,
    },
    /// The heap's bookkeeping in the segment is inconsistent (a peer wrote
    /// over it, or it is not a heap at all).
    HeapCorrupt {
        /// What was found wrong.
        what: String,
    },
    /// The object is not a shmutils segment: its magic number is wrong.
    NotASegment {
        /// The shared memory name.
        name: String,
        /// The first eight bytes found, little-endian.
        found: u64,
    },
    /// The object is a segment whose creation never finished: its creator
    /// (or a process that took the creation over) died before publishing
    /// the header, and nobody is finishing it now.
    /// [`Segment::open_or_create`](crate::Segment::open_or_create) creates
    /// it again in place.
    Unfinished {
        /// The shared memory name.
        name: String,
        /// The process that was creating it, when it got as far as
        /// recording itself (`None`: the object is still empty).
        creator_pid: Option<u32>,
    },
    /// The segment was written by a newer shmutils with a format this one
    /// cannot read.
    UnsupportedVersion {
        /// The shared memory name.
        name: String,
        /// The version found in the header.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The object is shorter than a segment needs (or than its header says).
    Truncated {
        /// The shared memory name.
        name: String,
        /// Its size in bytes.
        size: u64,
        /// The size expected.
        expected: u64,
    },
    /// A segment header field has an impossible value.
    CorruptHeader {
        /// The shared memory name (or `"anonymous"`).
        name: String,
        /// Which field, what was expected and what was found.
        what: String,
    },
    /// A segment size too small to hold the header, the heap's bookkeeping
    /// and one slab.
    SegmentTooSmall {
        /// The size asked for.
        size: u64,
        /// The smallest size that works.
        min: u64,
    },
    /// Waited too long for something a peer should have done.
    Timeout {
        /// What was being waited for.
        what: String,
    },
    /// No named object has this name.
    NameNotFound {
        /// The object's name.
        name: String,
    },
    /// An object holds another type than the one asked for: a named object,
    /// a heap block, or bytes of a mapping already placed as another type.
    TypeMismatch {
        /// The object, e.g. `named object "counter"` or `block at 0x1000`.
        object: String,
        /// The type asked for: name, size, alignment, fingerprint.
        expected: String,
        /// The type recorded in the segment.
        found: String,
    },
    /// Bytes of a raw mapping cannot be changed through it (`write`,
    /// `init`) because another mapping of the same object in this process
    /// placed a typed value on them, whose references may be alive.
    Aliased {
        /// The bytes, e.g. `bytes 0..8 of shared memory "/users"`.
        object: String,
        /// The value placed there: type, bytes, and that another mapping
        /// holds it.
        found: String,
    },
    /// A raw [`MappedMemory`](crate::MappedMemory) of a shared memory
    /// object was refused because a live [`Segment`](crate::Segment) of
    /// this process maps it: the segment's references could change under
    /// the raw mapping's writes, or race its byte copies.
    InUseBySegment {
        /// The shared memory name.
        name: String,
    },
    /// A [`Segment`](crate::Segment) of a shared memory object was refused
    /// because live raw [`MappedMemory`](crate::MappedMemory) values of
    /// this process map it.
    InUseByRawMapping {
        /// The shared memory name.
        name: String,
        /// How many raw mappings of it are alive.
        mappings: usize,
    },
    /// The file system holding the segment's object (`/dev/shm` for a named
    /// segment) has no room for pages the segment needs now; nothing was
    /// written to them.
    NoSpace {
        /// The segment, e.g. `segment "/users" of 268435456 bytes`.
        segment: String,
        /// What the pages were for and how many bytes were asked.
        what: String,
    },
    /// Every entry of the segment's type table is taken: the segment holds
    /// values of too many different types.
    TypeTableFull {
        /// How many types a segment records.
        capacity: usize,
    },
    /// Every entry of the named-object directory is taken.
    DirectoryFull {
        /// How many named objects a heap holds.
        capacity: usize,
    },
    /// A handle's text or byte form could not be parsed.
    InvalidHandle {
        /// What was wrong with it.
        reason: String,
    },
    /// A handle names another segment than the one asked to resolve it: a
    /// different name, or the same name recreated (a new random id).
    WrongSegment {
        /// The segment the handle names.
        handle_segment: String,
        /// The handle's segment id.
        handle_id: u64,
        /// The segment asked to resolve it.
        segment: String,
        /// That segment's id.
        segment_id: u64,
    },
    /// A handle was made for another type than the one it is resolved as
    /// (their layout fingerprints differ).
    HandleTypeMismatch {
        /// The type asked for.
        expected: &'static str,
        /// Its fingerprint.
        expected_fingerprint: u64,
        /// The fingerprint the handle carries.
        found_fingerprint: u64,
    },
    /// The object a pointer or handle names is no longer allocated (its block
    /// is free).
    FreedObject {
        /// The object's offset in the segment.
        offset: u64,
        /// What was found there instead.
        reason: String,
    },
    /// A lock could not be taken cleanly; converted from a
    /// [`LockError`](crate::lock::LockError) by `?`, which drops any guard
    /// (an `OwnerDied` guard dropped unrepaired leaves the lock
    /// inconsistent, so the next locker hears `OwnerDied` in turn).
    Lock(LockErrorKind),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidName { name, reason } => {
                write!(f, "invalid shared memory name {name:?}: {reason}")
            }
            Error::InvalidMode { mode } => write!(
                f,
                "invalid mode {mode:?}: expected one of \"r\", \"r+\", \"w\", \"w+\", \"x\", \"x+\""
            ),
            Error::Exists { name } => write!(f, "shared memory {name:?} already exists"),
            Error::NotFound { name } => write!(f, "shared memory {name:?} does not exist"),
            Error::PermissionDenied { name } => {
                write!(f, "permission denied for shared memory {name:?}")
            }
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::InvalidArgument { what } => write!(f, "invalid argument: {what}"),
            Error::OutOfBounds { offset, len, size } => write!(
                f,
                "range {offset}..{} is out of bounds: expected it within 0..{size}",
                offset.saturating_add(*len)
            ),
            Error::Misaligned { offset, align } => {
                write!(f, "offset {offset:#x} is not aligned to {align} bytes")
            }
            Error::PastEnd {
                name,
                requested,
                size,
            } => write!(
                f,
                "cannot map {requested} bytes of shared memory {name:?}: it holds only {size} bytes"
            ),
            Error::ReadOnly => write!(f, "the mapping is not writable"),
            Error::AddressInUse { addr, len } => {
                write!(
                    f,
                    "cannot map {len} bytes at {addr:#x}: the range is in use"
                )
            }
            Error::InvalidDiscriminant { type_name, value } => write!(
                f,
                "invalid {type_name} discriminant {value}: expected the value of one of its variants"
            ),
            Error::OutOfMemory { size, align } => write!(
                f,
                "out of shared memory: no free block of {size} bytes aligned to {align}"
            ),
            Error::DoubleFree { offset } => write!(
                f,
                "block at offset {offset:#x} is not allocated: freed twice or never allocated"
            ),
            Error::InvalidPointer { offset, reason } => {
                write!(f, "invalid relative pointer {offset:#x}: {reason}")
            }
            Error::WrongLayout {
                offset,
                block_size,
                size,
                align,
            } => write!(
                f,
                "block at offset {offset:#x} is a {block_size}-byte block, \
                 but the layout given (size {size}, align {align}) belongs to another size class"
            ),
            Error::HeapCorrupt { what } => write!(f, "shared heap is corrupt: {what}"),
            Error::NotASegment { name, found } => write!(
                f,
                "shared memory {name:?} is not a shmutils segment: \
                 expected magic {:?}, found {:?}",
                String::from_utf8_lossy(&crate::segment::SEGMENT_MAGIC.to_le_bytes()),
                String::from_utf8_lossy(&found.to_le_bytes())
            ),
            Error::Unfinished { name, creator_pid } => {
                write!(
                    f,
                    "segment {name:?} was never finished: expected a published header, found "
                )?;
                match creator_pid {
                    Some(pid) => write!(f, "one still being written by process {pid}")?,
                    None => write!(f, "an empty object")?,
                }
                write!(
                    f,
                    ", and nobody is creating it any more (its creator died); \
                     Segment::open_or_create creates it again"
                )
            }
            Error::UnsupportedVersion {
                name,
                found,
                supported,
            } => write!(
                f,
                "segment {name:?} has format version {found}; this build reads versions up to {supported}"
            ),
            Error::Truncated {
                name,
                size,
                expected,
            } => write!(
                f,
                "segment {name:?} is truncated: expected {expected} bytes, found {size}"
            ),
            Error::CorruptHeader { name, what } => {
                write!(f, "segment {name:?} has a corrupt header: {what}")
            }
            Error::SegmentTooSmall { size, min } => write!(
                f,
                "a segment of {size} bytes is too small: expected at least {min} bytes"
            ),
            Error::Timeout { what } => write!(f, "timed out waiting for {what}"),
            Error::NameNotFound { name } => write!(f, "no named object {name:?}"),
            Error::TypeMismatch {
                object,
                expected,
                found,
            } => write!(
                f,
                "{object} has the wrong type: expected {expected}, found {found}"
            ),
            Error::Aliased { object, found } => write!(
                f,
                "{object} cannot be changed through this mapping: expected no typed value \
                 placed on them through another mapping of the object in this process, \
                 found {found} (its references may be alive; drop that mapping or clear \
                 its placements first)"
            ),
            Error::InUseBySegment { name } => write!(
                f,
                "cannot map shared memory {name:?} raw: expected no Segment of it open in \
                 this process, found one; change the segment's values through its heap \
                 (Segment::heap), or map it raw from another process"
            ),
            Error::InUseByRawMapping { name, mappings } => write!(
                f,
                "cannot open shared memory {name:?} as a Segment: expected no raw \
                 MappedMemory of it in this process, found {mappings}; drop them first \
                 (a raw write could change bytes under the segment's references)"
            ),
            Error::NoSpace { segment, what } => write!(
                f,
                "no space left in /dev/shm (or the memory file system behind it) for {segment}: \
                 {what}; free space there or make the segment smaller"
            ),
            Error::TypeTableFull { capacity } => write!(
                f,
                "the segment's type table is full: it records at most {capacity} types"
            ),
            Error::DirectoryFull { capacity } => write!(
                f,
                "the named-object directory is full: it holds at most {capacity} names"
            ),
            Error::InvalidHandle { reason } => write!(f, "invalid handle: {reason}"),
            Error::WrongSegment { handle_segment, handle_id, segment, segment_id } => write!(
                f,
                "the handle is for segment {handle_segment:?} with id {handle_id:#018x}, \
                 not segment {segment:?} with id {segment_id:#018x}"
            ),
            Error::HandleTypeMismatch { expected, expected_fingerprint, found_fingerprint } => {
                write!(
                    f,
                    "the handle was made for another type: expected `{expected}` \
                     (fingerprint {expected_fingerprint:#018x}), found fingerprint \
                     {found_fingerprint:#018x}"
                )
            }
            Error::FreedObject { offset, reason } => {
                write!(f, "the object at {offset:#x} was freed: {reason}")
            }
            Error::Lock(e) => write!(f, "lock: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Error {
    /// An [`Error::Io`] with its context.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Maps an OS error about the shared memory object `name` to the typed
    /// variant when there is one (`ENOENT`, `EEXIST`, `EACCES`/`EPERM`).
    pub(crate) fn from_shm(op: &str, name: &str, source: io::Error) -> Self {
        let name = name.to_owned();
        match source.raw_os_error() {
            Some(libc::ENOENT) => Error::NotFound { name },
            Some(libc::EEXIST) => Error::Exists { name },
            Some(libc::EACCES) | Some(libc::EPERM) => Error::PermissionDenied { name },
            _ => Error::Io {
                context: format!("{op} of shared memory {name:?}"),
                source,
            },
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Io { source, .. } => source.kind(),
            Error::NotFound { .. } => io::ErrorKind::NotFound,
            Error::Exists { .. } => io::ErrorKind::AlreadyExists,
            Error::PermissionDenied { .. } => io::ErrorKind::PermissionDenied,
            Error::OutOfMemory { .. } => io::ErrorKind::OutOfMemory,
            // StorageFull, named without raising the minimum Rust version.
            Error::NoSpace { .. } => io::Error::from_raw_os_error(libc::ENOSPC).kind(),
            Error::Timeout { .. } => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

/// Why a lock was not (cleanly) acquired, without the guard that
/// [`LockError::OwnerDied`](crate::lock::LockError::OwnerDied) carries: see
/// [`LockError`](crate::lock::LockError) for each case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LockErrorKind {
    /// A thread of another process died holding the lock (or the last
    /// holder released it unrepaired).
    OwnerDied,
    /// A thread of this process exited holding the lock.
    Abandoned,
    /// A holder gave up repairing: the lock is unusable.
    NotRecoverable,
    /// Another live thread holds the lock (`try_lock`).
    WouldBlock,
    /// The time ran out (`lock_timeout`).
    TimedOut,
    /// The calling thread already holds this non-recursive lock.
    WouldDeadlock,
    /// A recursive lock is held `u32::MAX` times already.
    RecursionLimit,
}

impl fmt::Display for LockErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockErrorKind::OwnerDied => {
                "a thread of another process died while holding the lock; \
                 the data may be inconsistent and must be repaired, then marked consistent"
            }
            LockErrorKind::Abandoned => {
                "a thread of this process exited while holding the lock (its guard was \
                 leaked), so the data may still be borrowed: this process cannot use the lock"
            }
            LockErrorKind::NotRecoverable => {
                "the lock is not recoverable: a holder gave up repairing it after its owner died"
            }
            LockErrorKind::WouldBlock => "the lock is held by another thread",
            LockErrorKind::TimedOut => "timed out waiting for the lock",
            LockErrorKind::WouldDeadlock => {
                "the calling thread already holds this lock; waiting for it would deadlock"
            }
            LockErrorKind::RecursionLimit => {
                "the recursive lock is already held u32::MAX times by this thread"
            }
        })
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
