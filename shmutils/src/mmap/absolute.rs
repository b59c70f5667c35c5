//! [`AbsoluteMemory`]: a mapping at an address peers agree on, the only
//! kind with absolute addressing (`abs_address_at`, `relative_address_at`,
//! `absolute_at`).
//!
//! Everything else, typed placement included, is the [`MappedMemory`] it
//! dereferences to; so is the placement table, which moves with the
//! mapping through [`AbsoluteMemory::from_inherited`] and
//! [`AbsoluteMemory::into_relative`] (references into it borrowed the
//! value those consume, so none outlives the move).

use std::ops::{Deref, DerefMut, Range};

use super::{page_size, round_to_page_size, MapFlags, MapProtections, MappedMemory};
use crate::error::{Error, Result};
use crate::shm::ShmFd;
use crate::sys;

/// Address space the kernel leaves alone in a freshly exec'd Linux process
/// on x86-64 and aarch64 (executables and brk sit below, the mmap area and
/// stack above), used to pick an address a spawned child can map too.
const PORTABLE_RANGE: Range<usize> = 0x1000_0000_0000..0x5000_0000_0000;

/// A mapping at an address that peers agree on, so absolute addresses
/// inside it mean the same thing in every process that maps it this way.
///
/// It dereferences to [`MappedMemory`] for all relative access, mutably
/// too (for [`write`](MappedMemory::write) and [`init`](MappedMemory::init)).
/// Assigning another mapping through `DerefMut` is allowed and simply makes
/// the absolute addresses refer to that one, as
/// [`from_inherited`](Self::from_inherited) would.
///
/// ```
/// use shmutils::{AbsoluteMemory, MapProtections};
/// let mut m = AbsoluteMemory::map_shareable(8192, MapProtections::READ_WRITE, None)?;
/// m.write(64, b"absolute")?;
/// let abs = m.abs_address_at(64)?;
/// assert_eq!(m.relative_address_at(abs)?, 64);
/// assert_eq!(m.absolute_at(abs..abs + 8)?, b"absolute");
/// # Ok::<(), shmutils::Error>(())
/// ```
#[derive(Debug)]
pub struct AbsoluteMemory {
    inner: MappedMemory,
}

impl AbsoluteMemory {
    /// Maps `len` bytes of `fd` (anonymous memory for `None`) exactly at
    /// `addr`, with `MAP_FIXED_NOREPLACE`: an address already in use is an
    /// error, never silently replaced. `flags` may add `NORESERVE` or
    /// `POPULATE`; the mapping is always `SHARED`.
    ///
    /// # Errors
    /// [`Error::AddressInUse`] when anything is mapped in the range;
    /// otherwise as [`MappedMemory::new`].
    pub fn map_at(
        addr: usize,
        len: usize,
        prot: MapProtections,
        flags: MapFlags,
        fd: Option<&ShmFd>,
    ) -> Result<AbsoluteMemory> {
        let flags = (flags - MapFlags::PRIVATE) | MapFlags::SHARED | MapFlags::FIXED_NOREPLACE;
        Ok(AbsoluteMemory {
            inner: MappedMemory::new(Some(addr), len, prot, flags, fd)?,
        })
    }

    /// Maps `len` bytes of `fd` at an address chosen so that a spawned child
    /// (a fresh `exec`) can most likely map it at the same address with
    /// [`map_at`](Self::map_at): one in the middle of the address space,
    /// far from where executables, the heap, libraries and stacks go.
    /// Pass [`address`](Self::address) to the child.
    ///
    /// # Errors
    /// As [`map_at`](Self::map_at), after several addresses were tried.
    pub fn map_shareable(
        len: usize,
        prot: MapProtections,
        fd: Option<&ShmFd>,
    ) -> Result<AbsoluteMemory> {
        let span = PORTABLE_RANGE.end - PORTABLE_RANGE.start - round_to_page_size(len);
        let mut last = None;
        for _ in 0..16 {
            let mut seed = [0u8; 8];
            sys::getrandom(&mut seed).map_err(|e| Error::io("getrandom", e))?;
            let pick = (u64::from_le_bytes(seed) as usize % span) & !(page_size() - 1);
            match AbsoluteMemory::map_at(
                PORTABLE_RANGE.start + pick,
                len,
                prot,
                MapFlags::empty(),
                fd,
            ) {
                Err(e @ Error::AddressInUse { .. }) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or(Error::AddressInUse {
            addr: PORTABLE_RANGE.start,
            len,
        }))
    }

    /// Adopts a mapping whose address peers already share: typically one
    /// made before `fork`, which the child inherits at the same address.
    /// This is the explicit opt-in to absolute addressing.
    pub fn from_inherited(mapping: MappedMemory) -> AbsoluteMemory {
        AbsoluteMemory { inner: mapping }
    }

    /// Returns to relative-only access.
    pub fn into_relative(self) -> MappedMemory {
        self.inner
    }

    /// The mapping's start address.
    pub fn address(&self) -> usize {
        self.inner.as_ptr() as usize
    }

    /// The absolute address of `offset` (offset -> address). `offset` may
    /// be `len()`, the one-past-the-end address.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] past the end.
    pub fn abs_address_at(&self, offset: usize) -> Result<usize> {
        self.inner.check_range(offset, 0)?;
        Ok(self.address() + offset)
    }

    /// The offset of absolute address `addr` (address -> offset).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if `addr` is outside the mapping.
    pub fn relative_address_at(&self, addr: usize) -> Result<usize> {
        let offset = addr.wrapping_sub(self.address());
        if addr < self.address() || offset > self.inner.len() {
            return Err(Error::OutOfBounds {
                offset: addr,
                len: 0,
                size: self.inner.len(),
            });
        }
        Ok(offset)
    }

    /// Copies the bytes at absolute addresses `range` (the seed's
    /// `absolute_at`), like [`MappedMemory::at`].
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] unless the whole range is in the mapping;
    /// otherwise as [`MappedMemory::at`] ([`Error::TypeMismatch`] over
    /// bytes a typed value is placed on).
    pub fn absolute_at(&self, range: Range<usize>) -> Result<Vec<u8>> {
        let start = self.relative_address_at(range.start)?;
        let end = self.relative_address_at(range.end)?;
        self.inner.at(start..end)
    }
}

impl Deref for AbsoluteMemory {
    type Target = MappedMemory;

    fn deref(&self) -> &MappedMemory {
        &self.inner
    }
}

impl DerefMut for AbsoluteMemory {
    fn deref_mut(&mut self) -> &mut MappedMemory {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn absolute_round_trips() {
        let mut m =
            AbsoluteMemory::map_shareable(3 * page_size(), MapProtections::READ_WRITE, None)
                .unwrap();
        assert!(PORTABLE_RANGE.contains(&m.address()));
        for off in [0, 1, 64, 4095, m.len()] {
            let abs = m.abs_address_at(off).unwrap();
            assert_eq!(abs, m.address() + off);
            assert_eq!(m.relative_address_at(abs).unwrap(), off);
        }
        assert!(m.abs_address_at(m.len() + 1).is_err());
        assert!(m.relative_address_at(m.address() - 1).is_err());
        assert!(m.relative_address_at(m.address() + m.len() + 1).is_err());
        m.write(10, b"xyz").unwrap();
        let a = m.abs_address_at(10).unwrap();
        assert_eq!(m.absolute_at(a..a + 3).unwrap(), b"xyz");
    }

    #[test]
    fn fixed_noreplace_refuses_a_taken_address() {
        let rw = MapProtections::READ_WRITE;
        let a = AbsoluteMemory::map_shareable(page_size(), rw, None).unwrap();
        let e = AbsoluteMemory::map_at(a.address(), page_size(), rw, MapFlags::empty(), None)
            .unwrap_err();
        assert!(
            matches!(e, Error::AddressInUse { addr, .. } if addr == a.address()),
            "{e}"
        );
    }

    #[test]
    fn typed_placement_and_absolute_copies_share_one_table() {
        let mut m =
            AbsoluteMemory::map_shareable(page_size(), MapProtections::READ_WRITE, None).unwrap();
        m.init(64, AtomicU64::new(1923)).unwrap();
        let abs = m.abs_address_at(64).unwrap();
        assert!(matches!(
            m.absolute_at(abs..abs + 8),
            Err(Error::TypeMismatch { .. })
        ));
        assert!(m.absolute_at(abs - 8..abs).is_ok());
        // The table travels with the mapping.
        let rel = m.into_relative();
        assert!(matches!(
            rel.get::<u64>(64),
            Err(Error::TypeMismatch { .. })
        ));
        let back = AbsoluteMemory::from_inherited(rel);
        assert_eq!(
            back.get::<AtomicU64>(64).unwrap().load(Ordering::Relaxed),
            1923
        );
    }
}
