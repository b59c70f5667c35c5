//! The 64-bit atomic cell the crate's lock-free protocols are written over
//! (the lock word in `lock/`, the free lists in `heap/stack.rs`): `std`'s
//! `AtomicU64` in the library, and in tests with `--cfg loom` also `loom`'s, so that
//! the model checks run the very same code.

use std::sync::atomic::{AtomicU64, Ordering};

/// An atomic 64-bit cell.
pub(crate) trait Word {
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, v: u64, order: Ordering);
    fn swap(&self, v: u64, order: Ordering) -> u64;
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
    fn compare_exchange_weak(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
    fn fetch_and(&self, v: u64, order: Ordering) -> u64;
    fn fetch_sub(&self, v: u64, order: Ordering) -> u64;
    /// A memory fence of the same model as the cell.
    fn fence(order: Ordering);
}

macro_rules! impl_word {
    ($t:ty, $fence:path) => {
        impl Word for $t {
            #[inline(always)]
            fn load(&self, order: Ordering) -> u64 {
                <$t>::load(self, order)
            }
            #[inline(always)]
            fn store(&self, v: u64, order: Ordering) {
                <$t>::store(self, v, order)
            }
            #[inline(always)]
            fn swap(&self, v: u64, order: Ordering) -> u64 {
                <$t>::swap(self, v, order)
            }
            #[inline(always)]
            fn compare_exchange(
                &self,
                current: u64,
                new: u64,
                success: Ordering,
                failure: Ordering,
            ) -> Result<u64, u64> {
                <$t>::compare_exchange(self, current, new, success, failure)
            }
            #[inline(always)]
            fn compare_exchange_weak(
                &self,
                current: u64,
                new: u64,
                success: Ordering,
                failure: Ordering,
            ) -> Result<u64, u64> {
                <$t>::compare_exchange_weak(self, current, new, success, failure)
            }
            #[inline(always)]
            fn fetch_and(&self, v: u64, order: Ordering) -> u64 {
                <$t>::fetch_and(self, v, order)
            }
            #[inline(always)]
            fn fetch_sub(&self, v: u64, order: Ordering) -> u64 {
                <$t>::fetch_sub(self, v, order)
            }
            #[inline(always)]
            fn fence(order: Ordering) {
                $fence(order)
            }
        }
    };
}

impl_word!(AtomicU64, std::sync::atomic::fence);
#[cfg(all(test, loom))]
impl_word!(loom::sync::atomic::AtomicU64, loom::sync::atomic::fence);
