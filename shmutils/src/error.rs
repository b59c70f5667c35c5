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
    /// A lock could not be taken cleanly; converted from a
    /// [`LockError`](crate::lock::LockError) by `?`, which drops any guard
    /// (an `OwnerDied` guard dropped unrepaired makes the lock not
    /// recoverable).
    Lock(crate::lock::LockError<()>),
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
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

impl<G> From<crate::lock::LockError<G>> for Error {
    fn from(e: crate::lock::LockError<G>) -> Error {
        Error::Lock(e.without_guard())
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
