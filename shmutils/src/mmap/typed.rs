//! Typed placement: [`MappedMemory::init`] and [`MappedMemory::get`] hand
//! out `&T` for [`Shared`] types over checked, aligned bytes of a mapping.

use super::MappedMemory;
use crate::error::{Error, Result};
use crate::shared::Shared;

impl MappedMemory {
    /// Checks that a `T` fits at `offset` and is aligned there, and returns
    /// its address.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`].
    pub fn check_typed<T>(&self, offset: usize) -> Result<*mut T> {
        self.check_range(offset, std::mem::size_of::<T>())?;
        let align = std::mem::align_of::<T>();
        let addr = self.ptr.as_ptr() as usize + offset;
        if addr % align != 0 {
            return Err(Error::Misaligned { offset, align });
        }
        Ok(addr as *mut T)
    }

    /// Places `value` at `offset` and returns a reference to it.
    ///
    /// `&mut self` makes this the only access to the mapping from this
    /// process; other processes must not use the bytes before the value is
    /// published to them (DESIGN.md rule 4).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`], [`Error::Misaligned`], [`Error::ReadOnly`].
    pub fn init<T: Shared>(&mut self, offset: usize, value: T) -> Result<&T> {
        self.check_writable()?;
        let p = self.check_typed::<T>(offset)?;
        // SAFETY: `p` is in bounds and aligned for T in the live writable
        // mapping; `&mut self` rules out other references from this process.
        unsafe {
            p.write(value);
            Ok(&*p)
        }
    }

    /// Returns a reference to the `T` at `offset`.
    ///
    /// Any bytes make a valid `T` ([`Shared`]), so this cannot observe an
    /// invalid value even if a peer wrote garbage there.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`], [`Error::Misaligned`]; [`Error::ReadOnly`] for
    /// a mapping that is not read-write (a `Shared` type may mutate through
    /// `&T`, which would fault on a read-only page).
    pub fn get<T: Shared>(&self, offset: usize) -> Result<&T> {
        self.check_writable()?;
        let p = self.check_typed::<T>(offset)?;
        // SAFETY: in bounds, aligned, in a live read-write mapping, and every
        // bit pattern is a valid `T` (Shared); mutation through `&T` is
        // atomic or locked.
        Ok(unsafe { &*p })
    }
}

#[cfg(test)]
mod tests {
    use crate::error::Error;
    use crate::mmap::{MapFlags, MapProtections, MappedMemory};

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
    fn typed_placement_checks_alignment_and_bounds() {
        let mut m = anon(4096);
        assert_eq!(*m.init(8, 1923u64).unwrap(), 1923);
        assert_eq!(*m.get::<u64>(8).unwrap(), 1923);
        assert!(matches!(
            m.get::<u64>(4),
            Err(Error::Misaligned {
                offset: 4,
                align: 8
            })
        ));
        assert!(matches!(m.get::<u64>(4092), Err(Error::OutOfBounds { .. })));
        assert!(matches!(m.init(4081, 1u64), Err(Error::Misaligned { .. })));
    }
}
