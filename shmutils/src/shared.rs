//! What may live in shared memory: the [`Shared`] trait, layout
//! fingerprints, [`Checked<E>`] for enums and `bool`, and [`Plain`] for
//! byte views.
//!
//! A value in a segment can be read by any process at any time, including
//! one that a buggy or hostile peer has just scribbled over (DESIGN.md rules
//! 2 and 3). So a type may be stored only if **every bit pattern is a valid
//! value** and it holds **no process-local address**.

mod checked;
#[doc(hidden)]
pub mod derive_support;
mod plain;

pub use checked::{Checked, SharedEnum};
pub use plain::{bytes_of, Plain};

use std::sync::atomic::{
    AtomicI16, AtomicI32, AtomicI64, AtomicI8, AtomicIsize, AtomicU16, AtomicU32, AtomicU64,
    AtomicU8, AtomicUsize,
};

/// A type that may live in shared memory.
///
/// # Safety
/// An implementor guarantees that:
/// - every bit pattern of `size_of::<Self>()` bytes is a valid `Self`
///   (so reading a value a peer scribbled over is never UB, and a zeroed
///   value is valid);
/// - it holds no process-local address (pointers, references, `Box`, file
///   descriptors): links into shared memory are `RelPtr` offsets;
/// - it has no `Drop` that matters (values in a segment are never dropped by
///   the library) and any mutation through `&Self` goes through atomics or a
///   lock (interior mutability that is sound across processes);
/// - [`Shared::FINGERPRINT`] changes whenever the layout or meaning of the
///   type changes (use [`Fingerprint`] over its name, fields and layout),
///   and two types with one fingerprint are interchangeable: same size and
///   alignment, the same fields at the same offsets with the same interior
///   mutability. The heap's typed reads treat them as one type.
///
/// `#[derive(SharedStruct)]` implements it for `#[repr(C)]` structs whose
/// fields are all `Shared`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored in shared memory",
    label = "`{Self}` does not implement `shmutils::Shared`",
    note = "shared memory holds only types valid for every bit pattern and free of process-local addresses",
    note = "use `RelPtr<T>` instead of references, raw pointers, `Box`, `Rc` or `Arc`; `RelSlice<T>` instead of `Vec<T>`, `String` or `&str`; `Checked<E>` for `bool` and enums; `#[derive(SharedStruct)]` for your own `#[repr(C)]` structs",
    note = "for interior mutability (`Cell`, `RefCell`, `Mutex`) use atomics or a shmutils `Lock<T>`; for `Option<T>` store a `Checked<bool>` flag beside the value"
)]
pub unsafe trait Shared: Sized + Send + Sync + 'static {
    /// The type's short name (no generic arguments), used in fingerprints
    /// and error messages.
    const NAME: &'static str;
    /// A 64-bit hash of the type's layout and meaning. Two programs agree on
    /// it exactly when they agree on the definition.
    const FINGERPRINT: u64;
}

/// A `const` FNV-1a based hasher for layout fingerprints.
///
/// ```
/// use shmutils::shared::Fingerprint;
/// const F: u64 = Fingerprint::new("Point").str("x").u64(8).finish();
/// assert_ne!(F, Fingerprint::new("Point").str("y").u64(8).finish());
/// ```
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct Fingerprint(u64);

impl Fingerprint {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// Starts a fingerprint with a type name.
    pub const fn new(name: &str) -> Fingerprint {
        Fingerprint(Self::OFFSET).str(name)
    }

    /// Mixes in raw bytes.
    pub const fn bytes(self, bytes: &[u8]) -> Fingerprint {
        let mut h = self.0;
        let mut i = 0;
        while i < bytes.len() {
            h ^= bytes[i] as u64;
            h = h.wrapping_mul(Self::PRIME);
            i += 1;
        }
        Fingerprint(h)
    }

    /// Mixes in a string, length-prefixed so that `("ab", "c")` and
    /// `("a", "bc")` differ.
    pub const fn str(self, s: &str) -> Fingerprint {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }

    /// Mixes in a number.
    pub const fn u64(self, v: u64) -> Fingerprint {
        self.bytes(&v.to_le_bytes())
    }

    /// Finishes with an avalanche step (splitmix64's finalizer).
    pub const fn finish(self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The fingerprint of a leaf type: its name, size and alignment.
    pub const fn leaf<T>(name: &str) -> u64 {
        Fingerprint::new(name)
            .u64(core::mem::size_of::<T>() as u64)
            .u64(core::mem::align_of::<T>() as u64)
            .finish()
    }
}

macro_rules! shared_leaf {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: integers, floats and their atomics are valid for every bit
        // pattern, hold no addresses, and atomics mutate only atomically.
        unsafe impl Shared for $t {
            const NAME: &'static str = stringify!($t);
            const FINGERPRINT: u64 = Fingerprint::leaf::<$t>(stringify!($t));
        }
    )*};
}

/// Calls `$m!` with every integer and float type: the one list of the
/// numbers that are `Shared` here and `Plain` in `shared/plain.rs`.
macro_rules! for_numbers {
    ($m:ident) => {
        $m!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64);
    };
}
pub(crate) use for_numbers;

for_numbers!(shared_leaf);
shared_leaf!(
    AtomicU8,
    AtomicU16,
    AtomicU32,
    AtomicU64,
    AtomicUsize,
    AtomicI8,
    AtomicI16,
    AtomicI32,
    AtomicI64,
    AtomicIsize,
);

// SAFETY: the unit type has one (empty) bit pattern and no addresses.
unsafe impl Shared for () {
    const NAME: &'static str = "()";
    const FINGERPRINT: u64 = Fingerprint::leaf::<()>("()");
}

// SAFETY: an array is valid for every bit pattern when its element is, and
// holds addresses only if its element does.
unsafe impl<T: Shared, const N: usize> Shared for [T; N] {
    const NAME: &'static str = "array";
    const FINGERPRINT: u64 = Fingerprint::new("[T; N]")
        .u64(T::FINGERPRINT)
        .u64(N as u64)
        .finish();
}

// SAFETY: `PhantomData` is zero-sized; `T: Shared` keeps the marker honest
// about what a containing type claims to point at.
unsafe impl<T: Shared> Shared for core::marker::PhantomData<T> {
    const NAME: &'static str = "PhantomData";
    const FINGERPRINT: u64 = Fingerprint::new("PhantomData").u64(T::FINGERPRINT).finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_differ_by_type() {
        let all = [
            u8::FINGERPRINT,
            i8::FINGERPRINT,
            u32::FINGERPRINT,
            f32::FINGERPRINT,
            AtomicU32::FINGERPRINT,
            <[u32; 2]>::FINGERPRINT,
            <[u32; 3]>::FINGERPRINT,
            <[u64; 2]>::FINGERPRINT,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn fingerprint_strings_are_length_prefixed() {
        let ab_c = Fingerprint::new("T").str("ab").str("c").finish();
        let a_bc = Fingerprint::new("T").str("a").str("bc").finish();
        assert_ne!(ab_c, a_bc);
    }

    #[test]
    fn fingerprints_are_stable_values() {
        // A fingerprint is part of the on-segment format: it must not change
        // between builds or compilers. This value was computed independently
        // (FNV-1a over the length-prefixed name, then splitmix64's finalizer).
        assert_eq!(Fingerprint::new("u8").finish(), 0xc43b_68e2_f98a_2f03);
    }
}
