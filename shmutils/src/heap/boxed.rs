//! [`SharedBox`]: the safe owner of a block in the shared heap.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};

use super::meta::{self, Meta};
use super::SharedHeap;
use crate::error::{Error, Result};
use crate::process::fork_generation;
use crate::ptr::RelPtr;
use crate::shared::Shared;

/// A `T` in the shared heap that only this box can reach, like a `Box<T>`
/// whose memory other processes will later see.
///
/// While the box lives, its block is **private**: its meta word says so,
/// and no typed read ([`SharedHeap::get`], handles, named objects) in any
/// process resolves it, so `DerefMut` is sound. Dropping the box frees the
/// block (no destructor runs on the value: shared types have none that
/// matter). [`into_rel`](Self::into_rel) **publishes** it: the value
/// becomes readable by everyone, the box is gone, and from then on only
/// `unsafe` code ([`SharedHeap::delete`], [`SharedBox::from_rel`]) may
/// free it.
///
/// ```
/// use shmutils::{Segment, SharedBox};
/// use std::sync::atomic::AtomicU64;
/// let seg = Segment::anonymous(1 << 20)?;
/// let heap = seg.heap();
/// let mut b = heap.new_box_zeroed::<[u64; 4]>()?;
/// b[0] = 1923; // private: assign freely
/// b[3] = 8900;
/// let p = b.into_rel(); // published: everyone may read it now
/// assert_eq!(heap.get(p)?, &[1923, 0, 0, 8900]);
/// # Ok::<(), shmutils::Error>(())
/// ```
///
/// A box is owned by the process that made it: in a forked child (which
/// has a copy of the box, not the block) dereferencing it panics and
/// dropping it leaves the block alone.
pub struct SharedBox<'s, T: Shared> {
    heap: SharedHeap<'s>,
    offset: u64,
    word: &'s AtomicU64,
    ty: u32,
    generation: u64,
    _owns: PhantomData<T>,
}

impl<'s, T: Shared> SharedBox<'s, T> {
    /// Wraps a block allocated private as `T`.
    ///
    /// # Safety
    /// The block at `offset` of `heap`, whose meta word is `word`, must be
    /// allocated private with type index `ty` = `T`'s, hold a valid `T`,
    /// and be referenced by nothing else.
    pub(crate) unsafe fn from_private(
        heap: SharedHeap<'s>,
        offset: u64,
        word: &'s AtomicU64,
        ty: u32,
    ) -> Self {
        SharedBox {
            heap,
            offset,
            word,
            ty,
            generation: fork_generation(),
            _owns: PhantomData,
        }
    }

    /// Takes ownership back of a published `T`: the block becomes private
    /// again (typed reads refuse it) until the box is published or dropped.
    ///
    /// # Safety
    /// Nothing else may use the value while the box lives or after it
    /// frees the block: no reference from [`SharedHeap::get`] (or a handle,
    /// or a named object) may still be alive in this process, and no other
    /// process may still use it — exactly the contract of
    /// [`SharedHeap::delete`].
    ///
    /// # Errors
    /// As [`SharedHeap::get`] if `ptr` is not a published `T` of `heap`.
    pub unsafe fn from_rel(heap: &SharedHeap<'s>, ptr: RelPtr<T>) -> Result<Self> {
        heap.get(ptr)?;
        let b = heap
            .locate(ptr.offset())
            .map_err(|reason| Error::InvalidPointer {
                offset: ptr.offset(),
                reason: reason.to_owned(),
            })?;
        let word = heap.meta_word(b).ok_or(Error::InvalidPointer {
            offset: ptr.offset(),
            reason: "it has no meta word".to_owned(),
        })?;
        let cur = word.load(Ordering::Relaxed);
        let Meta::Allocated {
            ty: found,
            private: false,
        } = meta::decode(cur, b.start)
        else {
            return Err(Error::InvalidPointer {
                offset: ptr.offset(),
                reason: "its block changed while it was taken back".to_owned(),
            });
        };
        // Acquire: pairs with publish()'s Release, so the value is seen.
        word.compare_exchange(
            cur,
            meta::allocated(found, b.start, true),
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .map_err(|_| Error::InvalidPointer {
            offset: ptr.offset(),
            reason: "its block changed while it was taken back".to_owned(),
        })?;
        // SAFETY: the block is now private, allocated as a type with T's
        // fingerprint (get checked it; `found` may be another entry with the
        // same fingerprint, which is the same type), holds a T, and the
        // caller promises nothing else refers to it.
        Ok(unsafe { SharedBox::from_private(*heap, b.start, word, found) })
    }

    /// Publishes the value: from now on any process may read it through
    /// the returned pointer (or a handle to it), and only `unsafe` code may
    /// free it.
    pub fn into_rel(self) -> RelPtr<T> {
        let off = self.offset;
        if self.owned() {
            SharedHeap::publish(self.word, off, self.ty);
        }
        std::mem::forget(self);
        RelPtr::from_heap(off)
    }

    /// The pointer the value will have once published (useful to link
    /// values before publishing them). It resolves only after
    /// [`into_rel`](Self::into_rel).
    pub fn rel(&self) -> RelPtr<T> {
        RelPtr::from_heap(self.offset)
    }

    /// The heap the value lives in.
    pub fn heap(&self) -> SharedHeap<'s> {
        self.heap
    }

    /// Whether this process made the box (not a forked copy).
    fn owned(&self) -> bool {
        fork_generation() == self.generation
    }

    fn ptr(&self) -> *mut T {
        assert!(
            self.owned(),
            "a SharedBox inherited through fork belongs to the parent process"
        );
        self.heap.raw(self.offset).cast()
    }
}

impl<T: Shared> Deref for SharedBox<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the block holds a valid T (from_private's contract; every
        // bit pattern is one), lies in the mapping, which outlives the box,
        // and is aligned for T; it is private, so no typed read anywhere
        // resolves it and nothing but this box reaches it: the shared
        // borrow of the box is the only way to these bytes while it lives.
        unsafe { &*self.ptr() }
    }
}

impl<T: Shared> DerefMut for SharedBox<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in deref(), and the exclusive borrow of the box is
        // exclusive access to the block.
        unsafe { &mut *self.ptr() }
    }
}

impl<T: Shared> Drop for SharedBox<'_, T> {
    fn drop(&mut self) {
        if !self.owned() {
            return;
        }
        if let Ok(b) = self.heap.locate(self.offset) {
            // Only a peer scribbling over the meta word can make this fail;
            // then the block is left alone (leaked), never freed twice.
            let _ = self
                .heap
                .release(b, Some(meta::allocated(self.ty, self.offset, true)));
        }
    }
}

impl<T: Shared + fmt::Debug> fmt::Debug for SharedBox<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedBox").field(&**self).finish()
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// Makes `b` look like a copy a forked child holds.
    pub(crate) fn age<T: Shared>(b: &mut SharedBox<'_, T>) {
        b.generation = b.generation.wrapping_sub(1);
    }
}
