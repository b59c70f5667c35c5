//! [`WithHeap`]: the typed constructors `#[derive(SharedStruct)]` gives a
//! type (`User::with_heap(&heap).new(user)`), the seed's `with_heap(page)`.

use std::marker::PhantomData;

use super::{SharedBox, SharedHeap};
use crate::error::Result;
use crate::ptr::RelPtr;
use crate::shared::Shared;

/// Allocates `T` values in one heap. Made by the derived
/// `T::with_heap(&heap)`, or by [`WithHeap::for_heap`] for any [`Shared`]
/// type.
///
/// ```
/// use shmutils::{heap::WithHeap, Segment};
/// let seg = Segment::anonymous(1 << 20)?;
/// let heap = seg.heap();
/// let p = WithHeap::<u64>::for_heap(heap).new(1923)?;
/// assert_eq!(*heap.get(p)?, 1923);
/// # Ok::<(), shmutils::Error>(())
/// ```
#[must_use]
pub struct WithHeap<'s, T> {
    heap: SharedHeap<'s>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for WithHeap<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for WithHeap<'_, T> {}

impl<T> std::fmt::Debug for WithHeap<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithHeap")
            .field("type", &std::any::type_name::<T>())
            .field("heap", &self.heap)
            .finish()
    }
}

impl<'s, T: Shared> WithHeap<'s, T> {
    /// Constructors of `T` in `heap`.
    pub fn for_heap(heap: SharedHeap<'s>) -> Self {
        WithHeap {
            heap,
            _type: PhantomData,
        }
    }

    /// The heap the values go to.
    pub fn heap(&self) -> SharedHeap<'s> {
        self.heap
    }

    /// Moves `value` into the heap ([`SharedHeap::new`]).
    ///
    /// # Errors
    /// As [`SharedHeap::alloc`].
    #[allow(clippy::new_ret_no_self, clippy::wrong_self_convention)] // the seed's `User.with_heap(page).new()`
    pub fn new(&self, value: T) -> Result<RelPtr<T>> {
        self.heap.new(value)
    }

    /// A zeroed `T` in the heap ([`SharedHeap::new_zeroed`]); valid, since
    /// every bit pattern of a `Shared` type is.
    ///
    /// # Errors
    /// As [`SharedHeap::alloc`].
    pub fn new_zeroed(&self) -> Result<RelPtr<T>> {
        self.heap.new_zeroed()
    }

    /// `T::default()` in the heap.
    ///
    /// # Errors
    /// As [`SharedHeap::alloc`].
    pub fn new_default(&self) -> Result<RelPtr<T>>
    where
        T: Default,
    {
        self.heap.new(T::default())
    }

    /// `value` in a [`SharedBox`]: private to this process until
    /// [`into_rel`](SharedBox::into_rel) ([`SharedHeap::new_box`]).
    ///
    /// # Errors
    /// As [`SharedHeap::new`].
    pub fn new_box(&self, value: T) -> Result<SharedBox<'s, T>> {
        self.heap.new_box(value)
    }

    /// A zeroed `T` in a [`SharedBox`], to fill in field by field before
    /// publishing it ([`SharedHeap::new_box_zeroed`]): the seed's
    /// `User.with_heap(page).new()` followed by assignments.
    ///
    /// ```
    /// use shmutils::{Segment, SharedStruct};
    /// #[derive(SharedStruct)]
    /// #[repr(C)]
    /// struct Point { x: u64, y: u64 }
    /// let seg = Segment::anonymous(1 << 20)?;
    /// let heap = seg.heap();
    /// let mut p = Point::with_heap(&heap).new_box_zeroed()?;
    /// p.x = 3;
    /// p.y = 4;
    /// let p = p.into_rel();
    /// assert_eq!(heap.get(p)?.x + heap.get(p)?.y, 7);
    /// # Ok::<(), shmutils::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`SharedHeap::new`].
    pub fn new_box_zeroed(&self) -> Result<SharedBox<'s, T>> {
        self.heap.new_box_zeroed()
    }

    /// `T::default()` in a [`SharedBox`].
    ///
    /// # Errors
    /// As [`SharedHeap::new`].
    pub fn new_box_default(&self) -> Result<SharedBox<'s, T>>
    where
        T: Default,
    {
        self.heap.new_box(T::default())
    }
}
