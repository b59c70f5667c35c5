//! Memory mappings: [`MappedMemory`] (relative addressing, every mapping)
//! and [`AbsoluteMemory`] (a mapping whose address peers agree on).
//!
//! One idea per file: `mod.rs` is the mapping itself (creation, RAII
//! unmapping, [`detach`](MappedMemory::detach), protections, page size) and
//! its checked byte copies; `typed.rs` places [`Shared`](crate::Shared)
//! values ([`MappedMemory::init`], [`MappedMemory::get`]); `absolute.rs` is
//! [`AbsoluteMemory`].
//!
//! # Relative and absolute
//! Every access to a [`MappedMemory`] names an **offset** from the start of
//! the mapping, so the same code works whatever address the kernel chose in
//! each process. Absolute addresses are meaningful across processes only
//! when every process maps the object at the same address: that is an
//! [`AbsoluteMemory`], made at a fixed address with `MAP_FIXED_NOREPLACE`
//! (or adopted after `fork`, which keeps addresses). Only it has
//! [`abs_address_at`](AbsoluteMemory::abs_address_at),
//! [`relative_address_at`](AbsoluteMemory::relative_address_at) and
//! [`absolute_at`](AbsoluteMemory::absolute_at); it dereferences to
//! [`MappedMemory`], so it can be used wherever a relative mapping can.
//!
//! # Soundness of byte access
//! Another process may write the mapped bytes at any moment, so a `&[u8]`
//! into them would promise an immutability nobody can keep. Byte access is
//! therefore **copying**: [`MappedMemory::read`], [`MappedMemory::at`] and
//! [`MappedMemory::write`] copy through raw pointers, and a concurrent peer
//! write can at worst make the copy a mix of old and new bytes. The
//! borrowing view [`MappedMemory::bytes`] is `unsafe` and says why. Typed
//! access ([`MappedMemory::get`]) hands out `&T` only for [`Shared`] types,
//! whose every bit pattern is valid and whose mutation goes through atomics
//! or locks.

mod absolute;
mod typed;

use std::ops::Range;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use bitflags::bitflags;

pub use absolute::AbsoluteMemory;

use crate::error::{Error, Result};
use crate::shm::ShmFd;
use crate::sys;

bitflags! {
    /// Page protections (`PROT_*`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct MapProtections: i32 {
        /// Pages may be read.
        const READ = libc::PROT_READ;
        /// Pages may be written.
        const WRITE = libc::PROT_WRITE;
        /// Pages may be executed.
        const EXEC = libc::PROT_EXEC;
        /// Read and write, the usual protection of shared data.
        const READ_WRITE = libc::PROT_READ | libc::PROT_WRITE;
    }
}

impl MapProtections {
    /// No access at all (`PROT_NONE`); the same value as
    /// `MapProtections::empty()`.
    pub const NONE: MapProtections = MapProtections::empty();
}

bitflags! {
    /// Mapping flags (`MAP_*`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct MapFlags: i32 {
        /// Writes are seen by every process mapping the object.
        const SHARED = libc::MAP_SHARED;
        /// Writes are private to this process (copy on write).
        const PRIVATE = libc::MAP_PRIVATE;
        /// Not backed by a named object; with `SHARED`, shared with forked
        /// children only.
        const ANONYMOUS = libc::MAP_ANONYMOUS;
        /// Map exactly at the hint, replacing what is there. Refused by
        /// [`MappedMemory::new`]: use `FIXED_NOREPLACE` / [`AbsoluteMemory`].
        const FIXED = libc::MAP_FIXED;
        /// Map exactly at the hint, or fail if anything is mapped there.
        const FIXED_NOREPLACE = libc::MAP_FIXED_NOREPLACE;
        /// Do not reserve swap for the mapping.
        const NORESERVE = libc::MAP_NORESERVE;
        /// Fault every page in now.
        const POPULATE = libc::MAP_POPULATE;
    }
}

/// The system page size in bytes.
pub fn page_size() -> usize {
    sys::page_size()
}

/// Rounds `n` up to a multiple of the page size (`0` stays `0`; saturates
/// at the largest page multiple).
///
/// ```
/// # let p = shmutils::mmap::page_size();
/// assert_eq!(shmutils::round_to_page_size(1), p);
/// assert_eq!(shmutils::round_to_page_size(p + 1), 2 * p);
/// ```
pub fn round_to_page_size(n: usize) -> usize {
    let p = page_size();
    n.checked_add(p - 1)
        .map_or(usize::MAX & !(p - 1), |m| m & !(p - 1))
}

/// Unmaps `addr..addr + len`, e.g. a range taken with
/// [`MappedMemory::detach`].
///
/// # Safety
/// The range must be a mapping the caller owns, and no reference into it
/// (including a live `MappedMemory`) may be used afterwards.
///
/// # Errors
/// [`Error::Io`] if the kernel refuses (e.g. `addr` not page-aligned).
pub unsafe fn munmap(addr: usize, len: usize) -> Result<()> {
    // SAFETY: forwarded to the caller.
    unsafe { sys::munmap(addr as *mut u8, len) }
        .map_err(|e| Error::io(format!("munmap of {len} bytes at {addr:#x}"), e))
}

/// A memory mapping that unmaps itself on drop. All access is by offset and
/// checked; see the [module docs](self) for what is shared and how.
///
/// ```
/// use shmutils::{MapFlags, MapProtections, MappedMemory};
/// let m = MappedMemory::new(None, 4096, MapProtections::READ_WRITE, MapFlags::SHARED, None)?;
/// m.write(100, b"hello")?;
/// assert_eq!(m.at(100..105)?, b"hello");
/// assert!(m.at(4090..4100).is_err());
/// # Ok::<(), shmutils::Error>(())
/// ```
#[derive(Debug)]
pub struct MappedMemory {
    ptr: NonNull<u8>,
    len: usize,
    prot: MapProtections,
}

/// A plain (relative) mapping; the same type as [`MappedMemory`].
pub type RelativeMemory = MappedMemory;

// SAFETY: a MappedMemory is an owned region of raw memory; every access goes
// through checked copies or `Shared` types, which are Sync, so it may be
// moved to and shared with other threads.
unsafe impl Send for MappedMemory {}
// SAFETY: as above.
unsafe impl Sync for MappedMemory {}

impl MappedMemory {
    /// Maps `len` bytes: of `fd` from its start, or anonymous memory when
    /// `fd` is `None` (`ANONYMOUS` is then implied). `addr_hint` is only a
    /// hint unless `flags` has `FIXED_NOREPLACE`, in which case the mapping
    /// is made there or not at all.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a zero `len`, neither or both of
    /// `SHARED`/`PRIVATE`, `ANONYMOUS` with an `fd`, plain `FIXED`, or a
    /// writable shared mapping of a read-only descriptor;
    /// [`Error::PastEnd`] when `len` exceeds the object's size (mapping it
    /// would let a touch of the excess raise `SIGBUS`);
    /// [`Error::AddressInUse`] when `FIXED_NOREPLACE` cannot be honoured;
    /// [`Error::Io`] when `mmap` fails.
    pub fn new(
        addr_hint: Option<usize>,
        len: usize,
        prot: MapProtections,
        flags: MapFlags,
        fd: Option<&ShmFd>,
    ) -> Result<MappedMemory> {
        let invalid = |what: &str| {
            Err(Error::InvalidArgument {
                what: what.to_owned(),
            })
        };
        if len == 0 {
            return invalid("a mapping needs a length above zero");
        }
        if flags.contains(MapFlags::SHARED) == flags.contains(MapFlags::PRIVATE) {
            return invalid(
                "a mapping needs exactly one of MapFlags::SHARED and MapFlags::PRIVATE",
            );
        }
        if flags.contains(MapFlags::FIXED) {
            return invalid(
                "MapFlags::FIXED would replace whatever is mapped at the address; \
                 use MapFlags::FIXED_NOREPLACE or AbsoluteMemory::map_at",
            );
        }
        let mut flags = flags;
        let mut what = String::from("anonymous memory");
        if let Some(fd) = fd {
            if flags.contains(MapFlags::ANONYMOUS) {
                return invalid("MapFlags::ANONYMOUS cannot map a shared memory descriptor");
            }
            if prot.contains(MapProtections::WRITE)
                && flags.contains(MapFlags::SHARED)
                && !fd.mode().is_writable()
            {
                return Err(Error::ReadOnly);
            }
            let size = fd.size()?;
            if len as u64 > size {
                return Err(Error::PastEnd {
                    name: fd.name().to_owned(),
                    requested: len as u64,
                    size,
                });
            }
            what = format!("shared memory {:?}", fd.name());
        } else {
            flags |= MapFlags::ANONYMOUS;
        }
        let fixed = flags.contains(MapFlags::FIXED_NOREPLACE);
        let addr = addr_hint.unwrap_or(0);
        if fixed && (addr == 0 || addr % page_size() != 0) {
            return invalid("MapFlags::FIXED_NOREPLACE needs a non-zero, page-aligned address");
        }
        // SAFETY: plain FIXED was refused above, so this mmap cannot replace
        // an existing mapping; FIXED_NOREPLACE fails instead of replacing.
        let p = unsafe {
            sys::mmap(
                addr,
                len,
                prot.bits(),
                flags.bits(),
                fd.map(|f| f.as_fd()),
                0,
            )
        }
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EEXIST) if fixed => Error::AddressInUse { addr, len },
            _ => Error::io(format!("mmap of {len} bytes of {what}"), e),
        })?;
        let ptr = NonNull::new(p).ok_or_else(|| Error::InvalidArgument {
            what: "the kernel mapped address 0".to_owned(),
        })?;
        let m = MappedMemory { ptr, len, prot };
        if fixed && p as usize != addr {
            // Kernels before 4.17 treat FIXED_NOREPLACE as a hint; `m` unmaps
            // the misplaced mapping on drop.
            return Err(Error::AddressInUse { addr, len });
        }
        Ok(m)
    }

    /// Takes ownership of a mapping, e.g. one given up with
    /// [`detach`](Self::detach).
    ///
    /// # Safety
    /// `addr..addr + len` must be a live mapping with protection `prot`
    /// that nothing else owns or unmaps, and `addr` must not be 0.
    pub unsafe fn from_raw_parts(addr: usize, len: usize, prot: MapProtections) -> MappedMemory {
        // SAFETY: the caller guarantees a non-null live mapping.
        let ptr = unsafe { NonNull::new_unchecked(addr as *mut u8) };
        MappedMemory { ptr, len, prot }
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never true: zero-length mappings are
    /// refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Address of the first byte, for FFI. Storing it in shared memory is
    /// what relative pointers exist to avoid.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The protection the mapping was made with.
    pub fn protections(&self) -> MapProtections {
        self.prot
    }

    /// The system page size; the same as [`page_size`].
    pub fn page_size() -> usize {
        page_size()
    }

    /// Rounds up to the page size; the same as [`round_to_page_size`].
    pub fn round_to_page_size(n: usize) -> usize {
        round_to_page_size(n)
    }

    /// Checks that `offset..offset + len` lies inside the mapping.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] otherwise (also when the sum overflows).
    pub fn check_range(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    fn check_readable(&self) -> Result<()> {
        if self.prot.contains(MapProtections::READ) {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                what: "the mapping is not readable".to_owned(),
            })
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.prot.contains(MapProtections::READ_WRITE) {
            Ok(())
        } else {
            Err(Error::ReadOnly)
        }
    }

    /// Copies `buf.len()` bytes starting at `offset` into `buf`.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`]; [`Error::InvalidArgument`] if the mapping is
    /// not readable.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check_readable()?;
        self.check_range(offset, buf.len())?;
        // SAFETY: the range is inside the live, readable mapping and `buf`
        // is a distinct Rust buffer. A peer writing concurrently can only
        // make the copy a mix of old and new bytes (module docs).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        Ok(())
    }

    /// Copies the bytes of `range` out of the mapping (the seed's `at`).
    ///
    /// # Errors
    /// As [`read`](Self::read); also [`Error::OutOfBounds`] for a reversed
    /// range.
    pub fn at(&self, range: Range<usize>) -> Result<Vec<u8>> {
        let len = range
            .end
            .checked_sub(range.start)
            .ok_or(Error::OutOfBounds {
                offset: range.start,
                len: 0,
                size: self.len,
            })?;
        self.check_range(range.start, len)?;
        let mut v = vec![0u8; len];
        self.read(range.start, &mut v)?;
        Ok(v)
    }

    /// Copies `bytes` into the mapping at `offset`.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`]; [`Error::ReadOnly`] if the mapping is not
    /// read-write.
    pub fn write(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, bytes.len())?;
        // SAFETY: the range is inside the live, writable mapping. No `&[u8]`
        // into the mapping exists except through the unsafe `bytes`, whose
        // caller promised no concurrent writes; typed `&T` are `Shared`,
        // valid for every bit pattern.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(offset),
                bytes.len(),
            )
        };
        Ok(())
    }

    /// Borrows the bytes of `range` without copying.
    ///
    /// # Safety
    /// While the slice lives, no process (this one included) may write
    /// those bytes: a write would break the immutability `&[u8]` promises.
    ///
    /// # Errors
    /// As [`at`](Self::at).
    pub unsafe fn bytes(&self, range: Range<usize>) -> Result<&[u8]> {
        self.check_readable()?;
        let len = range
            .end
            .checked_sub(range.start)
            .ok_or(Error::OutOfBounds {
                offset: range.start,
                len: 0,
                size: self.len,
            })?;
        self.check_range(range.start, len)?;
        // SAFETY: in bounds of the live mapping; the caller rules out writes.
        Ok(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(range.start), len) })
    }

    /// Changes the protection of the pages covering `range`.
    ///
    /// # Safety
    /// Removing `READ` or `WRITE` from pages makes later accesses to them
    /// fault; the caller must not use any accessor of this mapping, or any
    /// `&T` obtained from it, on those pages while they are protected so.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`], [`Error::Misaligned`] if `range.start` is not
    /// page-aligned, [`Error::Io`] from `mprotect`.
    pub unsafe fn protect(&mut self, range: Range<usize>, prot: MapProtections) -> Result<()> {
        let len = range.end.saturating_sub(range.start);
        self.check_range(range.start, len)?;
        if range.start % page_size() != 0 {
            return Err(Error::Misaligned {
                offset: range.start,
                align: page_size(),
            });
        }
        // SAFETY: in bounds of the owned mapping; the caller accepts the
        // new protection.
        unsafe { sys::mprotect(self.ptr.as_ptr().add(range.start), len, prot.bits()) }
            .map_err(|e| Error::io(format!("mprotect of {len} bytes"), e))?;
        if range.start == 0 && round_to_page_size(len) >= round_to_page_size(self.len) {
            self.prot = prot;
        }
        Ok(())
    }

    /// Tells the kernel that `range` will not be needed soon
    /// (`MADV_DONTNEED`); for shared mappings the contents stay.
    ///
    /// # Errors
    /// As [`protect`](Self::protect).
    pub fn advise_dont_need(&self, range: Range<usize>) -> Result<()> {
        let len = range.end.saturating_sub(range.start);
        self.check_range(range.start, len)?;
        if range.start % page_size() != 0 {
            return Err(Error::Misaligned {
                offset: range.start,
                align: page_size(),
            });
        }
        // SAFETY: in bounds of the owned mapping; for a SHARED mapping
        // MADV_DONTNEED only drops this process's page table entries, and for
        // a PRIVATE one it resets pages to the object's contents, which the
        // safe accessors read as ordinary bytes.
        unsafe { sys::madvise(self.ptr.as_ptr().add(range.start), len, libc::MADV_DONTNEED) }
            .map_err(|e| Error::io(format!("madvise of {len} bytes"), e))
    }

    /// Gives up ownership: the mapping stays mapped and the caller must
    /// eventually [`munmap`] it (or rebuild it with
    /// [`from_raw_parts`](Self::from_raw_parts)). Returns `(address, len)`.
    pub fn detach(self) -> (usize, usize) {
        let parts = (self.ptr.as_ptr() as usize, self.len);
        std::mem::forget(self);
        parts
    }
}

impl Drop for MappedMemory {
    fn drop(&mut self) {
        // SAFETY: we own the mapping and `&mut self` shows no borrow of it
        // survives. An error here can only mean a bug; there is nobody to
        // report it to in drop.
        let _ = unsafe { sys::munmap(self.ptr.as_ptr(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(len: usize) -> MappedMemory {
        MappedMemory::new(
            None,
            len,
            MapProtections::READ_WRITE,
            MapFlags::SHARED,
            None,
        )
        .unwrap()
    }

    #[test]
    fn page_rounding() {
        let p = page_size();
        assert_eq!(round_to_page_size(0), 0);
        assert_eq!(round_to_page_size(1), p);
        assert_eq!(round_to_page_size(p), p);
        assert_eq!(round_to_page_size(p + 1), 2 * p);
        assert_eq!(round_to_page_size(2 * p - 1), 2 * p);
        assert_eq!(round_to_page_size(usize::MAX) % p, 0);
        if p == 4096 {
            assert_eq!(round_to_page_size(4097), 8192);
            assert_eq!(round_to_page_size(8191), 8192);
        }
    }

    #[test]
    fn read_write_round_trip_and_bounds() {
        let m = anon(4096);
        m.write(4090, b"abcdef").unwrap();
        assert_eq!(m.at(4090..4096).unwrap(), b"abcdef");
        assert!(matches!(
            m.write(4091, b"abcdef"),
            Err(Error::OutOfBounds {
                offset: 4091,
                len: 6,
                size: 4096
            })
        ));
        assert!(matches!(m.at(4000..4097), Err(Error::OutOfBounds { .. })));
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 10..5;
        assert!(matches!(m.at(reversed), Err(Error::OutOfBounds { .. })));
        assert!(matches!(
            m.at(usize::MAX - 1..usize::MAX),
            Err(Error::OutOfBounds { .. })
        ));
        let mut buf = [0u8; 2];
        assert!(m.read(usize::MAX, &mut buf).is_err());
    }

    #[test]
    fn invalid_arguments_are_refused() {
        let rw = MapProtections::READ_WRITE;
        assert!(matches!(
            MappedMemory::new(None, 0, rw, MapFlags::SHARED, None),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            MappedMemory::new(None, 4096, rw, MapFlags::empty(), None),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            MappedMemory::new(None, 4096, rw, MapFlags::SHARED | MapFlags::PRIVATE, None),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            MappedMemory::new(
                Some(0x1000_0000),
                4096,
                rw,
                MapFlags::SHARED | MapFlags::FIXED,
                None
            ),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn read_only_mapping_refuses_writes() {
        let m =
            MappedMemory::new(None, 4096, MapProtections::READ, MapFlags::PRIVATE, None).unwrap();
        assert!(matches!(m.write(0, b"x"), Err(Error::ReadOnly)));
        assert!(matches!(m.get::<u32>(0), Err(Error::ReadOnly)));
        assert_eq!(m.at(0..4).unwrap(), [0, 0, 0, 0]);
    }

    #[test]
    fn detach_then_munmap() {
        let m = anon(8192);
        m.write(0, b"q").unwrap();
        let (addr, len) = m.detach();
        assert_eq!(len, 8192);
        // SAFETY: we own the detached mapping and hold no reference into it.
        let back = unsafe { MappedMemory::from_raw_parts(addr, len, MapProtections::READ_WRITE) };
        assert_eq!(back.at(0..1).unwrap(), b"q");
        let (addr, len) = back.detach();
        // SAFETY: as above.
        unsafe { munmap(addr, len) }.unwrap();
    }
}
