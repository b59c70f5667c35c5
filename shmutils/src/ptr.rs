//! Segment-relative pointers: [`RelPtr`] and [`RelSlice`].
//!
//! A `RelPtr<T>` is an offset from the start of the segment, not an
//! address, so it means the same thing in every process that maps the
//! segment, wherever the mapping lands (a forked child, a spawned child, an
//! unrelated program), and it stays valid when the value holding it is
//! copied (DESIGN.md rule 1). Offset 0 is the segment header, never an
//! object, so it doubles as the null value.
//!
//! A relative pointer is resolved only through the heap that owns the
//! segment ([`SharedHeap::get`](crate::heap::SharedHeap::get)), which checks
//! it: a stale, forged or corrupted one is an `Err`, never undefined
//! behaviour (rule 2).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

use crate::shared::{Fingerprint, Shared};

/// An offset from the start of a segment to a `T`; `0` is null.
///
/// `#[repr(C)]`, 8 bytes, valid for every bit pattern, so it may itself be
/// stored in shared memory (e.g. a linked list `struct Node { next:
/// RelPtr<Node> }`).
///
/// Pointers come from the heap (`heap.new(value)`) or out of the segment;
/// making one from a number or casting it to another type is `unsafe`,
/// and every resolution checks the block's type anyway.
///
/// ```
/// use shmutils::{RelPtr, Segment};
/// let seg = Segment::anonymous(1 << 20)?;
/// let p: RelPtr<u64> = seg.heap().new(1923)?;
/// assert_eq!(*seg.heap().get(p)?, 1923);
/// assert!(RelPtr::<u64>::null().is_null());
/// # Ok::<(), shmutils::Error>(())
/// ```
#[repr(C)]
pub struct RelPtr<T> {
    offset: u64,
    // `fn() -> T` keeps the pointer Send + Sync and covariant whatever T is:
    // it owns nothing and points into shared memory, not to a local T.
    _type: PhantomData<fn() -> T>,
}

impl<T> RelPtr<T> {
    /// The null pointer (offset 0).
    pub const fn null() -> Self {
        RelPtr::from_heap(0)
    }

    /// A pointer the heap made (crate-internal: no forging needed).
    pub(crate) const fn from_heap(off: u64) -> Self {
        RelPtr {
            offset: off,
            _type: PhantomData,
        }
    }

    /// A pointer to the byte at `off` from the segment's start (a forged
    /// pointer). Resolution checks it like any other: a wrong offset or
    /// type is an `Err`, never a wrong reference.
    ///
    /// # Safety
    /// The caller asserts that `off` is where a `T` was allocated in the
    /// segment the pointer will be used with. Code that frees memory
    /// ([`SharedHeap::delete`](crate::SharedHeap::delete)) relies on its
    /// pointers naming the objects it owns, which a forged pointer may not;
    /// forging is therefore an explicit, reviewable step.
    pub const unsafe fn from_offset(off: u64) -> Self {
        RelPtr {
            offset: off,
            _type: PhantomData,
        }
    }

    /// Whether this is the null pointer.
    pub fn is_null(&self) -> bool {
        self.offset == 0
    }

    /// The offset from the segment's start.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The same offset, typed as a pointer to `U`. Resolving it checks the
    /// block's type again, so a wrong cast is an `Err` when resolved.
    ///
    /// # Safety
    /// As [`from_offset`](Self::from_offset): the caller asserts that a `U`
    /// was allocated at this offset.
    pub const unsafe fn cast<U>(self) -> RelPtr<U> {
        RelPtr::from_heap(self.offset)
    }
}

impl<T> Clone for RelPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for RelPtr<T> {}

impl<T> PartialEq for RelPtr<T> {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset
    }
}

impl<T> Eq for RelPtr<T> {}

impl<T> Hash for RelPtr<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.offset.hash(state);
    }
}

impl<T> Default for RelPtr<T> {
    fn default() -> Self {
        RelPtr::null()
    }
}

impl<T> fmt::Debug for RelPtr<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelPtr({:#x})", self.offset)
    }
}

/// An offset from the start of a segment to `len` consecutive `T`s.
///
/// `#[repr(C)]`, 16 bytes (offset, then length in elements), valid for every
/// bit pattern. The empty slice has offset 0 and length 0.
///
/// ```
/// use shmutils::{RelSlice, Segment};
/// let seg = Segment::anonymous(1 << 20)?;
/// let s: RelSlice<u8> = seg.heap().new_slice(b"Autumn")?;
/// assert_eq!(s.len(), 6);
/// assert_eq!(seg.heap().get_slice(s)?, b"Autumn");
/// assert!(RelSlice::<u8>::empty().is_empty());
/// # Ok::<(), shmutils::Error>(())
/// ```
#[repr(C)]
pub struct RelSlice<T> {
    offset: u64,
    len: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> RelSlice<T> {
    /// The empty slice (offset 0, length 0).
    pub const fn empty() -> Self {
        RelSlice::from_heap(0, 0)
    }

    /// A slice the heap made (crate-internal: no forging needed).
    pub(crate) const fn from_heap(off: u64, len: u64) -> Self {
        RelSlice {
            offset: off,
            len,
            _type: PhantomData,
        }
    }

    /// A slice of `len` elements starting `off` bytes from the segment's
    /// start (a forged slice). Resolution checks it like any other.
    ///
    /// # Safety
    /// As [`RelPtr::from_offset`]: the caller asserts that `len` `T`s were
    /// allocated as a slice at this offset.
    pub const unsafe fn from_raw_parts(off: u64, len: u64) -> Self {
        RelSlice {
            offset: off,
            len,
            _type: PhantomData,
        }
    }

    /// The number of elements (saturating at `usize::MAX` on targets where
    /// the stored `u64` does not fit; resolution then fails).
    pub fn len(&self) -> usize {
        usize::try_from(self.len).unwrap_or(usize::MAX)
    }

    /// Whether the slice has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The offset of the first element from the segment's start.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// A pointer to the first element (it resolves only as part of the
    /// slice: a slice's block holds a `[T]`, not a `T`).
    pub fn as_ptr(&self) -> RelPtr<T> {
        RelPtr::from_heap(self.offset)
    }
}

impl<T> Clone for RelSlice<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for RelSlice<T> {}

impl<T> PartialEq for RelSlice<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.offset, self.len) == (other.offset, other.len)
    }
}

impl<T> Eq for RelSlice<T> {}

impl<T> Hash for RelSlice<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.offset, self.len).hash(state);
    }
}

impl<T> Default for RelSlice<T> {
    fn default() -> Self {
        RelSlice::empty()
    }
}

impl<T> fmt::Debug for RelSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelSlice({:#x}, len {})", self.offset, self.len)
    }
}

// SAFETY: a RelPtr is one u64 (valid for every bit pattern) and holds an
// offset, not an address; the PhantomData is zero-sized.
//
// The fingerprint uses T's name and layout, not T::FINGERPRINT: a
// self-referential `struct Node { next: RelPtr<Node> }` would otherwise be a
// cycle in constant evaluation.
unsafe impl<T: Shared> Shared for RelPtr<T> {
    const NAME: &'static str = "RelPtr";
    const FINGERPRINT: u64 = Fingerprint::new("RelPtr")
        .str(T::NAME)
        .u64(core::mem::size_of::<T>() as u64)
        .u64(core::mem::align_of::<T>() as u64)
        .finish();
}

// SAFETY: two u64 (valid for every bit pattern), an offset and a length,
// no address. Fingerprint as for RelPtr, for the same reason.
unsafe impl<T: Shared> Shared for RelSlice<T> {
    const NAME: &'static str = "RelSlice";
    const FINGERPRINT: u64 = Fingerprint::new("RelSlice")
        .str(T::NAME)
        .u64(core::mem::size_of::<T>() as u64)
        .u64(core::mem::align_of::<T>() as u64)
        .finish();
}

// SAFETY: one u64 (no padding) with no interior mutability, whatever T is;
// only T: Shared is required, so a RelPtr to an atomic is still plain bytes.
unsafe impl<T: Shared> crate::shared::Plain for RelPtr<T> {}

// SAFETY: two u64 (no padding) with no interior mutability.
unsafe impl<T: Shared> crate::shared::Plain for RelSlice<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    struct Node {
        next: RelPtr<Node>,
        value: u64,
    }

    // SAFETY: two u64-sized fields, both valid for every bit pattern.
    unsafe impl Shared for Node {
        const NAME: &'static str = "Node";
        const FINGERPRINT: u64 = Fingerprint::new("Node")
            .u64(<RelPtr<Node>>::FINGERPRINT)
            .u64(u64::FINGERPRINT)
            .finish();
    }

    #[test]
    fn layout_is_fixed() {
        assert_eq!(core::mem::size_of::<RelPtr<u8>>(), 8);
        assert_eq!(core::mem::size_of::<RelPtr<[u64; 9]>>(), 8);
        assert_eq!(core::mem::size_of::<RelSlice<u16>>(), 16);
        assert_eq!(core::mem::align_of::<RelSlice<u16>>(), 8);
    }

    #[test]
    fn null_and_cast() {
        let p: RelPtr<u32> = RelPtr::null();
        assert!(p.is_null());
        assert_eq!(p, RelPtr::default());
        // SAFETY: test of the arithmetic only; never resolved.
        let q = unsafe { RelPtr::<u32>::from_offset(64).cast::<u8>() };
        assert_eq!(q.offset(), 64);
        assert!(!q.is_null());
        assert_eq!(format!("{q:?}"), "RelPtr(0x40)");
    }

    #[test]
    fn self_referential_fingerprints_compile_and_differ() {
        assert_ne!(Node::FINGERPRINT, <RelPtr<Node>>::FINGERPRINT);
        assert_ne!(<RelPtr<u32>>::FINGERPRINT, <RelPtr<i32>>::FINGERPRINT);
        assert_ne!(<RelPtr<u32>>::FINGERPRINT, <RelSlice<u32>>::FINGERPRINT);
    }

    #[test]
    fn slices() {
        // SAFETY: test of the accessors only; never resolved.
        let s = unsafe { RelSlice::<u64>::from_raw_parts(128, 3) };
        assert_eq!(s.len(), 3);
        assert_eq!(s.as_ptr().offset(), 128);
        assert!(RelSlice::<u64>::empty().is_empty());
        // SAFETY: as above.
        assert_ne!(s, unsafe { RelSlice::from_raw_parts(128, 4) });
    }
}
