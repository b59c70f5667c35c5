//! [`Plain`]: shared types whose bytes may be viewed as `&[u8]`.
//!
//! A byte view of a value is sound only when every byte is initialized
//! (no padding) and no byte can change while the view is borrowed (no
//! interior mutability: atomics and locks change through `&T`). That is
//! what `Plain` promises; [`bytes_of`] gives the view.
//!
//! # How derived structs get it
//! `#[derive(SharedStruct)]` on a non-generic struct implements `Plain`
//! when every field is `Plain` and the struct's size equals the sum of its
//! fields' sizes (no padding between or after them). Both conditions are
//! where-clauses of the impl, written `for<'a> ...` so that a false one
//! only leaves the impl out instead of being an error; the padding
//! condition is the type `PaddingCheck<{ size == sum }>` implementing
//! `NoPadding`, which only `PaddingCheck<true>` does. So a padded or
//! atomic struct compiles, and calling `as_bytes` on it is a type error at
//! the call.
//!
//! A generic struct cannot name its own size in a where-clause (stable
//! Rust has no generic const expressions), so it does not implement
//! `Plain`; its `as_bytes` requires every field to be `Plain` and checks
//! the sizes in a `const` block, which fails to compile only where it is
//! called on a padded instance.

use super::Shared;

/// A [`Shared`] type with no padding and no interior mutability, so its
/// bytes can be viewed as `&[u8]` ([`bytes_of`], derived `as_bytes`).
///
/// Implemented for integers, floats, `()`, `PhantomData`, arrays of
/// `Plain`, [`Checked<E>`](super::Checked), and derived non-generic structs
/// whose fields are all `Plain` and leave no gap. Not for atomics or
/// locks.
///
/// # Safety
/// Every byte of a `Self` is initialized (no padding, at any depth), and
/// no byte of a value changes while a `&Self` to it exists, unless through
/// a `&mut` (no `UnsafeCell`, at any depth).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not plain bytes: it has interior mutability or padding",
    label = "`{Self}` does not implement `shmutils::shared::Plain`",
    note = "a byte view needs every byte initialized (no padding) and unchanging while borrowed (no atomics or locks)",
    note = "read the fields you need instead, or fill gaps with explicit fields such as `_pad: [u8; 4]`"
)]
pub unsafe trait Plain: Shared {}

/// The bytes of `value`.
///
/// ```
/// let v: [u16; 2] = [1, 0x0302];
/// assert_eq!(shmutils::shared::bytes_of(&v), &[1u16.to_ne_bytes(), 0x0302u16.to_ne_bytes()].concat()[..]);
/// ```
pub fn bytes_of<T: Plain>(value: &T) -> &[u8] {
    // SAFETY: `T: Plain`, so all `size_of::<T>()` bytes behind `value` are
    // initialized and do not change while `value` is borrowed; u8 has
    // alignment 1 and the slice has the lifetime of the borrow.
    unsafe {
        core::slice::from_raw_parts((value as *const T).cast::<u8>(), core::mem::size_of::<T>())
    }
}

macro_rules! plain_leaf {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: integers and floats have no padding and no interior
        // mutability.
        unsafe impl Plain for $t {}
    )*};
}

super::for_numbers!(plain_leaf);
plain_leaf!(());

// SAFETY: an array's size is `N * size_of::<T>()` with no gaps (a type's
// size is a multiple of its alignment), and it has the bytes of its
// elements, which are Plain.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {}

// SAFETY: zero-sized: no bytes at all.
unsafe impl<T: Shared> Plain for core::marker::PhantomData<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_of_views_every_byte() {
        let v: [u32; 2] = [0x0403_0201, 0x0807_0605];
        let b = bytes_of(&v);
        assert_eq!(b.len(), 8);
        assert_eq!(&b[..4], &0x0403_0201u32.to_ne_bytes());
        assert_eq!(&b[4..], &0x0807_0605u32.to_ne_bytes());
    }
}
