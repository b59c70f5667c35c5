//! The meta word of a block: whether it is free or allocated, its free-list
//! link, its type and whether a [`SharedBox`](super::SharedBox) still owns
//! it. One `AtomicU64` per block, kept *outside* the block (at the tail of
//! its slab, or in the span words for a large block), so the allocator
//! never reads or writes the bytes of a block: a free-list link is never
//! read from memory another thread may be writing as a value.
//!
//! # States
//!
//! ```text
//!  63     62    61       60..48   47..32   31..0
//! +------+-----+--------+--------+--------+------------------+
//! |ALLOC |FREE |PRIVATE | 0      | seal   | type id          |  allocated
//! +------+-----+--------+--------+--------+------------------+
//! |0     |1    | seal (61..45)    | custody (44..37) | next / 8 |  free
//! +------+-----+------------------+------------------+----------+
//!
//! value                   meaning                       who moves it on
//! ----------------------  ----------------------------  ------------------------------
//! 0                       never initialized (fresh      carve: CAS 0 -> allocated (the
//!                         pages are zero)               carver's block) or store free
//! FREE | next             free: on a list (or held by   push: store FREE | head, CAS head
//!                         a cache, or popped by a       alloc: CAS from the exact value
//!                         thread that died)             popped -> ALLOC | type
//! ALLOC|PRIVATE|seal|ty   owned by one SharedBox,       into_rel: store ALLOC | seal | ty
//!                         resolvable by nobody          drop: CAS -> FREE (then push)
//! ALLOC|seal|ty           published, resolvable as ty   free (unsafe): CAS -> FREE
//! anything else           corrupt (a peer scribbled)    nothing: refused and reported
//! ```
//!
//! The **seal** is 16 bits of a hash of the type id (0 for a free word)
//! and the block's offset: a word a peer scribbled at random is refused
//! (with odds of 2^-16 per word of passing), and a word copied from
//! another block never passes, so a page map entry a peer forged cannot
//! make the allocator take bytes that are not a block's word for one.
//! The **custody** of a free block says where it is: 0 on a shared free
//! list, `i + 1` in the cache of registry slot `i` (`cache.rs`). A claim
//! accepts only the custody it expects, so a block a peer linked into a
//! shared list while it sits in a cache (or the other way round) is never
//! claimed from the wrong place.
//!
//! Type id 0 is [`RAW`]: bytes from [`alloc`](super::SharedHeap::alloc),
//! which no typed read resolves.

/// The block is allocated.
const ALLOC: u64 = 1 << 63;
/// The block is free.
const FREE: u64 = 1 << 62;
/// The block is owned by a `SharedBox` of one process: not resolvable.
const PRIVATE: u64 = 1 << 61;
/// Bits that are zero in every valid word.
const RESERVED_ALLOC: u64 = 0x1fff << 48;
/// The link: a block position (offset / 8) below 2^37 (1 TiB segments).
const LINK_MASK: u64 = (1 << 37) - 1;
const CUSTODY_SHIFT: u32 = 37;
const SEAL_SHIFT: u32 = 32;
const FREE_SEAL_SHIFT: u32 = 45;

/// The type id of untyped bytes ([`SharedHeap::alloc`](super::SharedHeap::alloc)).
pub(crate) const RAW: u32 = 0;

/// What a meta word says, read without trusting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Meta {
    /// Never initialized.
    Fresh,
    /// Free; the next free block's offset (0 = end of list), and where it
    /// is (0: a shared list; `i + 1`: the cache of registry slot `i`).
    Free { next: u64, custody: u8 },
    /// Allocated as `ty`; `private` while a `SharedBox` owns it.
    Allocated { ty: u32, private: bool },
    /// No valid state (or a seal that does not match the block).
    Corrupt,
}

/// 16 bits of a multiplicative hash of the type and the offset (one
/// multiplication: it is on the path of every typed read).
#[inline]
fn seal(ty: u32, offset: u64) -> u64 {
    ((offset ^ (u64::from(ty) << 40) ^ 0x5bd1_e995).wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 48
}

/// Whether the word says "allocated" (published or private), seal
/// included (the fast path of `free`).
#[inline]
pub(crate) fn is_allocated(w: u64, offset: u64) -> bool {
    w & (ALLOC | FREE | RESERVED_ALLOC) == ALLOC
        && (w >> SEAL_SHIFT) & 0xffff == seal(w as u32, offset)
}

/// The type of a published block's word, `None` for any other state (the
/// fast path of typed reads; `decode` says which state it is).
#[inline]
pub(crate) fn published(w: u64, offset: u64) -> Option<u32> {
    let ty = w as u32;
    (w & (ALLOC | FREE | PRIVATE | RESERVED_ALLOC) == ALLOC
        && (w >> SEAL_SHIFT) & 0xffff == seal(ty, offset))
    .then_some(ty)
}

/// The word of the block at `offset` allocated as `ty`.
#[inline]
pub(crate) fn allocated(ty: u32, offset: u64, private: bool) -> u64 {
    ALLOC | if private { PRIVATE } else { 0 } | seal(ty, offset) << SEAL_SHIFT | u64::from(ty)
}

/// The word of the free block at `offset` on a shared list that continues
/// at `next` (0 = end).
#[inline]
pub(crate) fn free(offset: u64, next: u64) -> u64 {
    held(offset, next, 0)
}

/// The word of the free block at `offset` in the list of custody
/// `custody` (see the module docs) that continues at `next`.
#[inline]
pub(crate) fn held(offset: u64, next: u64, custody: u8) -> u64 {
    FREE | seal(0, offset) << FREE_SEAL_SHIFT
        | u64::from(custody) << CUSTODY_SHIFT
        | (next / super::class::GRANULE) & LINK_MASK
}

/// The link of a free block's word on a shared list, `None` for any other
/// state or custody (the fast path of `pop`).
#[inline]
pub(crate) fn free_link(w: u64, offset: u64) -> Option<u64> {
    held_link(w, offset, 0)
}

/// The link of a free word of custody `custody` read at a location known
/// to be the block's meta word (a cache's mirror): the state and custody
/// are checked, the seal (which catches a word read for the wrong block)
/// is not.
#[inline]
pub(crate) fn held_link_at_own_word(w: u64, custody: u8) -> Option<u64> {
    (w & (ALLOC | FREE | 0xff << CUSTODY_SHIFT) == FREE | u64::from(custody) << CUSTODY_SHIFT)
        .then_some((w & LINK_MASK) * super::class::GRANULE)
}

/// The link of a free block's word of custody `custody`, `None` for any
/// other state or custody.
#[inline]
pub(crate) fn held_link(w: u64, offset: u64, custody: u8) -> Option<u64> {
    (w & (ALLOC | FREE | 0xff << CUSTODY_SHIFT) == FREE | u64::from(custody) << CUSTODY_SHIFT
        && (w >> FREE_SEAL_SHIFT) & 0xffff == seal(0, offset))
    .then_some((w & LINK_MASK) * super::class::GRANULE)
}

/// Decodes the word of the block at `offset`.
#[inline]
pub(crate) fn decode(w: u64, offset: u64) -> Meta {
    if w == 0 {
        return Meta::Fresh;
    }
    if w & (ALLOC | FREE) == FREE && (w >> FREE_SEAL_SHIFT) & 0xffff == seal(0, offset) {
        return Meta::Free {
            next: (w & LINK_MASK) * super::class::GRANULE,
            custody: (w >> CUSTODY_SHIFT) as u8,
        };
    }
    if w & (ALLOC | FREE) == ALLOC && w & RESERVED_ALLOC == 0 {
        let ty = w as u32;
        if (w >> SEAL_SHIFT) & 0xffff == seal(ty, offset) {
            return Meta::Allocated {
                ty,
                private: w & PRIVATE != 0,
            };
        }
    }
    Meta::Corrupt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for off in [0x1000u64, 0x1_0008, 0x7_ffff_fff8] {
            for ty in [RAW, 1, 511, u32::MAX] {
                for private in [false, true] {
                    assert_eq!(
                        decode(allocated(ty, off, private), off),
                        Meta::Allocated { ty, private }
                    );
                }
            }
            assert_eq!(
                decode(free(off, off + 64), off),
                Meta::Free {
                    next: off + 64,
                    custody: 0
                }
            );
            assert_eq!(
                decode(held(off, 0, 7), off),
                Meta::Free {
                    next: 0,
                    custody: 7
                }
            );
            assert_eq!(held_link(held(off, off + 8, 7), off, 7), Some(off + 8));
            assert_eq!(held_link(held(off, off + 8, 7), off, 6), None);
            assert_eq!(free_link(held(off, off + 8, 7), off), None);
            assert_eq!(decode(free(off, 0), off + 8), Meta::Corrupt);
        }
        assert_eq!(decode(0, 64), Meta::Fresh);
        assert_eq!(published(allocated(9, 0x1000, false), 0x1000), Some(9));
        assert_eq!(published(allocated(9, 0x1000, true), 0x1000), None);
        assert_eq!(published(allocated(9, 0x1000, false), 0x1008), None);
        assert_eq!(published(free(0x1000, 0x2000), 0x1000), None);
        assert_eq!(free_link(free(0x1000, 0x2000), 0x1000), Some(0x2000));
    }

    #[test]
    fn copied_and_scribbled_words_are_corrupt() {
        // A word copied to another block fails its seal.
        let w = allocated(7, 0x2000, false);
        assert_eq!(decode(w, 0x2040), Meta::Corrupt);
        for bad in [
            ALLOC | FREE,
            u64::MAX,
            FREE | PRIVATE,
            ALLOC | (1 << 50) | 7,
        ] {
            assert_eq!(decode(bad, 0x2000), Meta::Corrupt, "{bad:#x}");
        }
        // Random words almost never pass.
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut passed = 0;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if matches!(decode(x | ALLOC, 0x4000), Meta::Allocated { .. }) {
                passed += 1;
            }
        }
        assert!(passed < 10, "{passed} random words passed");
    }
}
