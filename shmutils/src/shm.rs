//! Named POSIX shared memory: [`ShmFd`], [`Mode`] and [`shm_unlink`].
//!
//! # Names
//! A name is one path component under `/dev/shm`. A leading `/` is **added
//! when missing**, so `"users"` and `"/users"` name the same object and
//! [`ShmFd::name`] always starts with `/`. After that slash a name must be
//! 1 to 255 bytes, contain no further `/` and no NUL, and not be `.` or `..`.
//! Names are checked before any system call.

use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::sys;

/// Permissions given to objects shmutils creates unless asked otherwise.
pub const DEFAULT_PERMISSIONS: u32 = 0o600;

/// How to open a shared memory object; the seed's mode strings.
///
/// | string | variant | opens | creates | truncates | exclusive |
/// |---|---|---|---|---|---|
/// | `r`  | [`ReadOnly`](Mode::ReadOnly) | read | no | no | - |
/// | `r+` | [`ReadWrite`](Mode::ReadWrite) | read-write | no | no | - |
/// | `w`  | [`CreateTruncate`](Mode::CreateTruncate) | read-write | if missing | yes | no |
/// | `w+` | [`ReadWriteCreate`](Mode::ReadWriteCreate) | read-write | if missing | no | no |
/// | `x`  | [`CreateExclusive`](Mode::CreateExclusive) | read-write | always | - | yes |
/// | `x+` | [`ReadWriteCreateExclusive`](Mode::ReadWriteCreateExclusive) | read-write | always | - | yes |
///
/// POSIX allows a shared memory object to be opened only read-only or
/// read-write, so the writing modes all open it read-write (a mapping needs
/// that anyway); `x` and `x+` differ only in how they print.
///
/// ```
/// use shmutils::Mode;
/// let m: Mode = "w+".parse()?;
/// assert_eq!(m, Mode::ReadWriteCreate);
/// assert_eq!(m.to_string(), "w+");
/// # Ok::<(), shmutils::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `r`: open an existing object read-only.
    ReadOnly,
    /// `r+`: open an existing object read-write.
    ReadWrite,
    /// `w`: create if missing, truncate to zero length if present.
    CreateTruncate,
    /// `w+`: create if missing, keep the contents if present.
    ReadWriteCreate,
    /// `x`: create; fail with [`Error::Exists`] if the name is taken.
    CreateExclusive,
    /// `x+`: same as `x`.
    ReadWriteCreateExclusive,
}

impl Mode {
    /// Every mode, in the order of the table above.
    pub const ALL: [Mode; 6] = [
        Mode::ReadOnly,
        Mode::ReadWrite,
        Mode::CreateTruncate,
        Mode::ReadWriteCreate,
        Mode::CreateExclusive,
        Mode::ReadWriteCreateExclusive,
    ];

    /// The mode's string, as [`FromStr`] takes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::ReadOnly => "r",
            Mode::ReadWrite => "r+",
            Mode::CreateTruncate => "w",
            Mode::ReadWriteCreate => "w+",
            Mode::CreateExclusive => "x",
            Mode::ReadWriteCreateExclusive => "x+",
        }
    }

    /// Whether objects opened this way can be mapped writable.
    pub const fn is_writable(self) -> bool {
        !matches!(self, Mode::ReadOnly)
    }

    /// Whether this mode may create the object.
    pub const fn creates(self) -> bool {
        !matches!(self, Mode::ReadOnly | Mode::ReadWrite)
    }

    /// Whether this mode fails when the object exists.
    pub const fn is_exclusive(self) -> bool {
        matches!(self, Mode::CreateExclusive | Mode::ReadWriteCreateExclusive)
    }

    fn access_flags(self) -> libc::c_int {
        if self.is_writable() {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Mode> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| Error::InvalidMode { mode: s.to_owned() })
    }
}

/// Checks a shared memory name and returns it with its leading `/`.
///
/// # Errors
/// [`Error::InvalidName`] saying which rule the name breaks (see the module
/// docs).
pub fn normalize_name(name: &str) -> Result<String> {
    let bad = |reason| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    let bare = name.strip_prefix('/').unwrap_or(name);
    if bare.is_empty() {
        return bad("a name needs at least one byte after the leading '/'");
    }
    if bare.len() > 255 {
        return bad("a name may hold at most 255 bytes after the leading '/'");
    }
    if bare.contains('/') {
        return bad("a name may contain no '/' after the leading one");
    }
    if bare.contains('\0') {
        return bad("a name may not contain a NUL byte");
    }
    if bare == "." || bare == ".." {
        return bad("a name may not be '.' or '..'");
    }
    Ok(format!("/{bare}"))
}

fn c_name(name: &str) -> CString {
    // normalize_name rejected NUL bytes, so this cannot fail; an error here
    // would be a bug in this module.
    CString::new(name).expect("name was checked for NUL bytes")
}

/// An open POSIX shared memory object; the descriptor closes on drop (the
/// name stays until [`shm_unlink`]).
///
/// ```
/// use shmutils::{shm_unlink, Mode, ShmFd};
/// # let name = format!("/shmutils-doc-shmfd-{}", std::process::id());
/// let fd = ShmFd::open(&name, Mode::CreateExclusive)?;
/// fd.truncate(4096 * 100)?;
/// assert_eq!(fd.size()?, 4096 * 100);
/// shm_unlink(&name)?;
/// # Ok::<(), shmutils::Error>(())
/// ```
#[derive(Debug)]
pub struct ShmFd {
    fd: OwnedFd,
    name: String,
    mode: Mode,
    created: bool,
}

impl ShmFd {
    /// Opens `name` in `mode`; a created object gets permissions
    /// [`DEFAULT_PERMISSIONS`] (0o600).
    ///
    /// # Errors
    /// [`Error::InvalidName`] before any system call; [`Error::Exists`],
    /// [`Error::NotFound`], [`Error::PermissionDenied`] or [`Error::Io`] from
    /// the OS.
    pub fn open(name: &str, mode: Mode) -> Result<ShmFd> {
        ShmFd::open_with_permissions(name, mode, DEFAULT_PERMISSIONS)
    }

    /// Opens `name` in `mode`; if this call creates the object, its
    /// permissions are exactly `permissions & 0o777` (the umask does not
    /// apply).
    ///
    /// # Errors
    /// As [`ShmFd::open`]; also [`Error::InvalidArgument`] for permission
    /// bits outside `0o777`.
    pub fn open_with_permissions(name: &str, mode: Mode, permissions: u32) -> Result<ShmFd> {
        let name = normalize_name(name)?;
        if permissions & !0o777 != 0 {
            return Err(Error::InvalidArgument {
                what: format!("permissions {permissions:#o}: expected bits within 0o777"),
            });
        }
        let cname = c_name(&name);
        let access = mode.access_flags() | libc::O_CLOEXEC;
        if !mode.creates() {
            let fd = sys::shm_open(&cname, access, 0)
                .map_err(|e| Error::from_shm("shm_open", &name, e))?;
            return Ok(ShmFd {
                fd,
                name,
                mode,
                created: false,
            });
        }
        // Creating modes first try an exclusive create, so that we know
        // whether this call made the object (and owes it its permissions).
        // A non-exclusive mode that finds the name taken opens it instead;
        // the loop covers a peer unlinking it in between.
        for _ in 0..64 {
            match sys::shm_open(&cname, access | libc::O_CREAT | libc::O_EXCL, permissions) {
                Ok(fd) => {
                    sys::fchmod(fd.as_fd(), permissions).map_err(|e| {
                        // Leave no half-made object behind.
                        let _ = sys::shm_unlink(&cname);
                        Error::from_shm("fchmod", &name, e)
                    })?;
                    return Ok(ShmFd {
                        fd,
                        name,
                        mode,
                        created: true,
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && !mode.is_exclusive() => {
                    let trunc = if mode == Mode::CreateTruncate {
                        libc::O_TRUNC
                    } else {
                        0
                    };
                    match sys::shm_open(&cname, access | trunc, 0) {
                        Ok(fd) => {
                            return Ok(ShmFd {
                                fd,
                                name,
                                mode,
                                created: false,
                            })
                        }
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                        Err(e) => return Err(Error::from_shm("shm_open", &name, e)),
                    }
                }
                Err(e) => return Err(Error::from_shm("shm_open", &name, e)),
            }
        }
        Err(Error::io(
            format!("shm_open of shared memory {name:?}"),
            std::io::Error::other("the name kept appearing and disappearing"),
        ))
    }

    /// The object's name, with its leading `/`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The mode it was opened with.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether this open created the object.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Sets the object's size in bytes (new bytes read as zero).
    ///
    /// # Errors
    /// [`Error::ReadOnly`] for an `r` descriptor; [`Error::Io`] from the OS.
    pub fn truncate(&self, len: u64) -> Result<()> {
        if !self.mode.is_writable() {
            return Err(Error::ReadOnly);
        }
        sys::ftruncate(self.fd.as_fd(), len)
            .map_err(|e| Error::io(format!("ftruncate of shared memory {:?}", self.name), e))
    }

    /// The object's size in bytes.
    ///
    /// # Errors
    /// [`Error::Io`] if `fstat` fails.
    pub fn size(&self) -> Result<u64> {
        Ok(self.stat()?.size)
    }

    /// The object's permission bits (`mode & 0o777`).
    ///
    /// # Errors
    /// [`Error::Io`] if `fstat` fails.
    pub fn permissions(&self) -> Result<u32> {
        Ok(self.stat()?.mode & 0o777)
    }

    /// The user id owning the object.
    ///
    /// # Errors
    /// [`Error::Io`] if `fstat` fails.
    pub fn owner_uid(&self) -> Result<u32> {
        Ok(self.stat()?.uid)
    }

    /// Changes the object's permission bits.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for bits outside `0o777`; the OS's refusal
    /// otherwise.
    pub fn set_permissions(&self, permissions: u32) -> Result<()> {
        if permissions & !0o777 != 0 {
            return Err(Error::InvalidArgument {
                what: format!("permissions {permissions:#o}: expected bits within 0o777"),
            });
        }
        sys::fchmod(self.fd.as_fd(), permissions)
            .map_err(|e| Error::from_shm("fchmod", &self.name, e))
    }

    /// Removes this object's name (see [`shm_unlink`]).
    ///
    /// # Errors
    /// As [`shm_unlink`].
    pub fn unlink(&self) -> Result<()> {
        shm_unlink(&self.name)
    }

    /// Reads up to `buf.len()` bytes at `offset` without mapping the object
    /// (fewer past its end); returns how many were read.
    ///
    /// # Errors
    /// [`Error::Io`] if `pread` fails.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        sys::pread(self.fd.as_fd(), buf, offset)
            .map_err(|e| Error::io(format!("pread of shared memory {:?}", self.name), e))
    }

    /// Writes all of `buf` at `offset` without mapping the object (growing
    /// it if it ends before).
    ///
    /// # Errors
    /// [`Error::ReadOnly`] for an `r` descriptor; [`Error::Io`] if `pwrite`
    /// fails.
    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if !self.mode.is_writable() {
            return Err(Error::ReadOnly);
        }
        sys::pwrite(self.fd.as_fd(), buf, offset)
            .map_err(|e| Error::io(format!("pwrite of shared memory {:?}", self.name), e))
    }

    /// Takes the exclusive `flock` of this descriptor's open file
    /// description if no other description holds a lock on the object;
    /// `None` if one does. The lock goes when the guard drops, or when the
    /// last descriptor of the description closes (so when its process
    /// dies, whatever it was doing).
    ///
    /// # Errors
    /// [`Error::Io`] if `flock` fails for another reason than contention.
    pub(crate) fn try_lock(&self) -> Result<Option<FileLock<'_>>> {
        let taken = sys::flock_try_exclusive(self.fd.as_fd())
            .map_err(|e| Error::io(format!("flock of shared memory {:?}", self.name), e))?;
        Ok(taken.then_some(FileLock { fd: self }))
    }

    /// Whether the name still designates this descriptor's object (it may
    /// have been unlinked, or unlinked and created again, since it was
    /// opened).
    ///
    /// # Errors
    /// The errors of opening the name (other than [`Error::NotFound`],
    /// which is `false`) and of `fstat`.
    pub(crate) fn name_still_refers_here(&self) -> Result<bool> {
        let now = match ShmFd::open(&self.name, Mode::ReadOnly) {
            Ok(fd) => fd.stat()?,
            Err(Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let here = self.stat()?;
        Ok((now.dev, now.ino) == (here.dev, here.ino))
    }

    /// `fstat` of the object: its size, permissions, owner and identity.
    pub(crate) fn stat(&self) -> Result<sys::FileStat> {
        sys::fstat(self.fd.as_fd())
            .map_err(|e| Error::io(format!("fstat of shared memory {:?}", self.name), e))
    }
}

impl AsFd for ShmFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// An exclusive `flock` on a [`ShmFd`]'s open file description, released
/// when dropped.
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard drops"]
pub(crate) struct FileLock<'a> {
    fd: &'a ShmFd,
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // An error here would mean the descriptor is not open, which the
        // borrow rules out; closing it would release the lock anyway.
        let _ = sys::flock_unlock(self.fd.fd.as_fd());
    }
}

/// An unnamed shared memory object of `size` bytes (`memfd_create`),
/// sealed so that no process holding a descriptor of it, now or after a
/// `fork` or a descriptor passing, can shrink it (`F_SEAL_SHRINK`) or
/// change its seals (`F_SEAL_SEAL`). Growing stays allowed: it cannot
/// take a page from under a mapping.
///
/// # Errors
/// [`Error::Io`] from `memfd_create`, `ftruncate` or `fcntl`.
pub(crate) fn sealed_anonymous(size: u64) -> Result<OwnedFd> {
    let fd = sys::memfd_create_sealable(c"shmutils-anonymous")
        .map_err(|e| Error::io("memfd_create of an anonymous segment", e))?;
    sys::ftruncate(fd.as_fd(), size).map_err(|e| {
        Error::io(
            format!("ftruncate of an anonymous segment to {size} bytes"),
            e,
        )
    })?;
    sys::add_seals(fd.as_fd(), libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL)
        .map_err(|e| Error::io("fcntl(F_ADD_SEALS) of an anonymous segment", e))?;
    Ok(fd)
}

/// Removes a shared memory name. Open descriptors and mappings of the object
/// stay valid; the memory is freed when the last one goes.
///
/// # Errors
/// [`Error::InvalidName`], [`Error::NotFound`], [`Error::PermissionDenied`],
/// or [`Error::Io`].
pub fn shm_unlink(name: &str) -> Result<()> {
    let name = normalize_name(name)?;
    sys::shm_unlink(&c_name(&name)).map_err(|e| Error::from_shm("shm_unlink", &name, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip() {
        for m in Mode::ALL {
            assert_eq!(m.to_string().parse::<Mode>().unwrap(), m);
        }
        let strings: Vec<String> = Mode::ALL.iter().map(|m| m.to_string()).collect();
        assert_eq!(strings, ["r", "r+", "w", "w+", "x", "x+"]);
    }

    #[test]
    fn bad_modes_are_rejected() {
        for s in ["rw", "a", "", "R", "r++", "+", "w+ ", "xr"] {
            match s.parse::<Mode>() {
                Err(Error::InvalidMode { mode }) => assert_eq!(mode, s),
                other => panic!("{s:?} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn mode_properties() {
        assert!(!Mode::ReadOnly.is_writable());
        assert!(Mode::ReadWrite.is_writable() && !Mode::ReadWrite.creates());
        assert!(Mode::CreateTruncate.creates() && !Mode::CreateTruncate.is_exclusive());
        assert!(Mode::CreateExclusive.is_exclusive());
        assert!(Mode::ReadWriteCreateExclusive.is_exclusive());
    }

    #[test]
    fn names_get_a_leading_slash() {
        assert_eq!(normalize_name("users").unwrap(), "/users");
        assert_eq!(normalize_name("/users").unwrap(), "/users");
        assert_eq!(normalize_name(&"a".repeat(255)).unwrap().len(), 256);
    }

    #[test]
    fn bad_names_are_rejected() {
        let long = "a".repeat(256);
        for name in ["", "/", "/a/b", "a/b", "a\0b", ".", "/..", long.as_str()] {
            match normalize_name(name) {
                Err(Error::InvalidName { name: n, reason }) => {
                    assert_eq!(n, name);
                    assert!(!reason.is_empty());
                }
                other => panic!("{name:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_name_errors_before_any_syscall() {
        let e = ShmFd::open("/a/b", Mode::CreateExclusive).unwrap_err();
        assert!(matches!(e, Error::InvalidName { .. }), "{e}");
        assert!(e.to_string().contains("\"/a/b\""), "{e}");
    }
}
