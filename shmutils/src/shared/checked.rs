//! Fieldless enums (and `bool`) in shared memory: [`SharedEnum`] and the
//! validating wrapper [`Checked<E>`].
//!
//! An enum has invalid bit patterns: a peer that writes `7` into a
//! `#[repr(u8)]` enum with three variants would make a `&E` undefined
//! behaviour. So a segment never holds an `E` directly: it holds a
//! `Checked<E>`, which stores the raw integer (valid for every bit pattern)
//! and validates it in [`Checked::get`].

use core::fmt;
use core::marker::PhantomData;

use super::{Fingerprint, Plain, Shared};
use crate::error::{Error, Result};

/// A fieldless enum with an explicit integer representation, storable as
/// [`Checked<Self>`].
///
/// `#[derive(SharedStruct)]` implements it for a fieldless enum with
/// `#[repr(u8)]` (or `u16`, `u32`, `u64`, `i8`, `i16`, `i32`, `i64`) that
/// also derives `Clone` and `Copy`:
///
/// ```
/// use shmutils::{Checked, SharedStruct};
/// #[derive(SharedStruct, Clone, Copy, Debug, PartialEq)]
/// #[repr(u8)]
/// enum Status { Active = 1, Banned = 2 }
/// let s: Checked<Status> = Status::Banned.into();
/// assert_eq!(s.raw(), 2);
/// assert_eq!(s.get()?, Status::Banned);
/// # Ok::<(), shmutils::Error>(())
/// ```
///
/// # Safety
/// [`Checked<Self>`] implements [`Shared`] and [`Plain`] on the strength
/// of this trait, so an implementor guarantees that:
/// - `from_repr` returns `Some` exactly for the values `to_repr` produces,
///   and `from_repr(to_repr(e)) == Some(e)`;
/// - [`FINGERPRINT`](Self::FINGERPRINT) changes whenever a variant's name
///   or discriminant, or the representation, changes (so two programs that
///   disagree on the enum disagree on every fingerprint containing it).
pub unsafe trait SharedEnum: Copy + Send + Sync + 'static {
    /// The integer the enum is stored as (its `#[repr(..)]`).
    type Repr: Shared + Plain + Copy + Eq + fmt::Debug + Into<i128>;
    /// The enum's short name, for fingerprints and error messages.
    const NAME: &'static str;
    /// A hash of the representation and every variant's name and
    /// discriminant (see [`Fingerprint`]).
    const FINGERPRINT: u64;
    /// The variant whose discriminant is `repr`, if there is one.
    fn from_repr(repr: Self::Repr) -> Option<Self>;
    /// The discriminant of `self`.
    fn to_repr(self) -> Self::Repr;
}

/// An enum value as stored in shared memory: its raw discriminant, checked
/// on every read.
///
/// Any integer is a valid `Checked<E>`, so a peer can never make a
/// reference to it undefined behaviour; [`get`](Checked::get) turns an
/// unknown discriminant into [`Error::InvalidDiscriminant`].
///
/// ```
/// use shmutils::Checked;
/// let mut b = Checked::new(true);
/// assert_eq!(b.get()?, true);
/// b.set(false);
/// assert_eq!(b.raw(), 0);
/// # Ok::<(), shmutils::Error>(())
/// ```
#[repr(transparent)]
pub struct Checked<E: SharedEnum> {
    raw: E::Repr,
    _enum: PhantomData<E>,
}

impl<E: SharedEnum> Checked<E> {
    /// Stores `e`.
    pub fn new(e: E) -> Self {
        Checked {
            raw: e.to_repr(),
            _enum: PhantomData,
        }
    }

    /// The stored value, validated.
    ///
    /// # Errors
    /// [`Error::InvalidDiscriminant`] when the stored integer is not the
    /// discriminant of any variant of `E` (e.g. a peer wrote garbage, or
    /// runs a newer definition of the enum).
    pub fn get(&self) -> Result<E> {
        E::from_repr(self.raw).ok_or(Error::InvalidDiscriminant {
            type_name: E::NAME,
            value: self.raw.into(),
        })
    }

    /// The stored integer, unvalidated.
    pub fn raw(&self) -> E::Repr {
        self.raw
    }

    /// Replaces the stored value with `e`.
    pub fn set(&mut self, e: E) {
        self.raw = e.to_repr();
    }
}

impl<E: SharedEnum> From<E> for Checked<E> {
    fn from(e: E) -> Self {
        Checked::new(e)
    }
}

impl<E: SharedEnum> Clone for Checked<E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E: SharedEnum> Copy for Checked<E> {}

/// Compares the raw integers, so two equal invalid values are equal.
impl<E: SharedEnum> PartialEq for Checked<E> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl<E: SharedEnum> Eq for Checked<E> {}

/// Shows the variant, or the invalid integer: `Checked<Status>(Active)`,
/// `Checked<Status>(invalid 7)`.
impl<E: SharedEnum + fmt::Debug> fmt::Debug for Checked<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match E::from_repr(self.raw) {
            Some(e) => write!(f, "Checked<{}>({e:?})", E::NAME),
            None => write!(f, "Checked<{}>(invalid {:?})", E::NAME, self.raw),
        }
    }
}

// SAFETY: a `Checked<E>` is exactly an `E::Repr` (repr(transparent) over it
// and a zero-sized marker), which is `Shared`: valid for every bit pattern,
// no addresses, no drop. It is Send and Sync because `E::Repr` is and
// `SharedEnum` requires `E: Send + Sync + 'static`. The fingerprint covers
// `E`'s (SharedEnum's contract).
unsafe impl<E: SharedEnum> Shared for Checked<E> {
    const NAME: &'static str = "Checked";
    const FINGERPRINT: u64 = Fingerprint::new("Checked")
        .u64(E::FINGERPRINT)
        .u64(<E::Repr as Shared>::FINGERPRINT)
        .finish();
}

// SAFETY: a `Checked<E>` is exactly an `E::Repr`, which is `Plain`: no
// padding, no interior mutability.
unsafe impl<E: SharedEnum> Plain for Checked<E> {}

// SAFETY: 0 and 1 are exactly the values `to_repr` produces and `from_repr`
// accepts; the fingerprint names both.
unsafe impl SharedEnum for bool {
    type Repr = u8;
    const NAME: &'static str = "bool";
    const FINGERPRINT: u64 = Fingerprint::new("bool")
        .str("u8")
        .str("false")
        .u64(0)
        .str("true")
        .u64(1)
        .finish();

    fn from_repr(repr: u8) -> Option<bool> {
        match repr {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    fn to_repr(self) -> u8 {
        u8::from(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_bool_round_trips_and_rejects_other_bytes() {
        let mut b = Checked::new(false);
        assert_eq!(b.raw(), 0);
        assert!(!b.get().unwrap());
        b.set(true);
        assert_eq!(b.raw(), 1);
        assert!(b.get().unwrap());
        let bad: Checked<bool> = Checked {
            raw: 2,
            _enum: PhantomData,
        };
        match bad.get() {
            Err(Error::InvalidDiscriminant { type_name, value }) => {
                assert_eq!((type_name, value), ("bool", 2));
            }
            other => panic!("expected InvalidDiscriminant, got {other:?}"),
        }
        assert_eq!(format!("{bad:?}"), "Checked<bool>(invalid 2)");
        assert_eq!(format!("{b:?}"), "Checked<bool>(true)");
        assert_ne!(bad, b);
    }

    #[test]
    fn checked_is_its_repr() {
        assert_eq!(core::mem::size_of::<Checked<bool>>(), 1);
        assert_ne!(<Checked<bool>>::FINGERPRINT, u8::FINGERPRINT);
    }
}
