//! The lock-free free lists: one Treiber stack per (shard, class).
//!
//! # Head word
//! ```text
//!  63            32 31             0
//! +----------------+----------------+
//! |    ABA tag     |  block / 8     |     block / 8 == 0: the list is empty
//! +----------------+----------------+
//! ```
//!
//! | state | push(b) | pop |
//! |---|---|---|
//! | `(t, 0)` empty | `b.next = 0`; CAS -> `(t+1, b)` | returns `None` |
//! | `(t, a)` | `b.next = a`; CAS -> `(t+1, b)` | `n = a.next`; CAS -> `(t+1, n)`, returns `a` |
//!
//! Every successful CAS bumps the tag, so a pop that read `a.next` before
//! another process popped `a`, reused it and pushed it back fails its CAS
//! (the tag moved on) instead of installing a stale `next`: the classic ABA
//! problem. The tag is 32 bits; a pop would have to stall for 2^32
//! operations on one list for it to wrap.
//!
//! # Garbage tolerance
//! A free block's first 8 bytes hold its `next` link as an `AtomicU64`. A
//! pop may read that word after another process has already taken the block
//! and written its own data there; the value read is then garbage, but the
//! CAS rejects it (the head changed). The offset is bounds-checked before
//! the link is read, and every popped block is checked against the page map
//! and the allocation bitmap before it is handed out, so even a list a peer
//! corrupted cannot make the heap read outside the arena or give one block
//! to two owners.
//!
//! # Crash safety
//! Each operation is one CAS. A process killed before it has changed
//! nothing; killed after it, the list is consistent. What it can lose is
//! the block in its hands between the CAS and the bitmap update.
//!
//! (The link word is read with an atomic load while the block's new owner
//! may be writing it with plain stores: the same benign race every
//! lock-free allocator has. Across processes the Rust memory model does
//! not reach; the hardware gives us a torn-free 8-byte load, which the CAS
//! then validates.)

use std::sync::atomic::{AtomicU64, Ordering};

use super::class::GRANULE;
use super::SharedHeap;

/// A head word from a tag and a block offset.
#[inline]
pub(crate) fn pack(tag: u32, off: u64) -> u64 {
    (u64::from(tag) << 32) | (off / GRANULE)
}

/// The block offset in a head word (0 = empty).
#[inline]
pub(crate) fn head_offset(head: u64) -> u64 {
    (head & 0xffff_ffff) * GRANULE
}

#[inline]
fn tag(head: u64) -> u32 {
    (head >> 32) as u32
}

/// What a pop found.
pub(crate) enum Pop {
    /// The list was empty.
    Empty,
    /// A block (checked only to lie in the arena: the caller checks it
    /// against the page map), and the head value the pop installed.
    Block(u64, u64),
}

impl<'s> SharedHeap<'s> {
    /// The `next` link in the first 8 bytes of the block at `off`, if that
    /// lies in the arena and is 8-aligned.
    #[inline]
    pub(crate) fn link(&self, off: u64) -> Option<&'s AtomicU64> {
        let rel = off.wrapping_sub(self.geo.arena_start);
        if rel >= self.geo.arena_bytes() || off % GRANULE != 0 {
            return None;
        }
        // SAFETY: `off` is 8-aligned inside the arena, which lies inside the
        // live mapping (validated at attach); the mapping base is page
        // aligned, so the address is aligned for AtomicU64. Any bit pattern
        // is a valid AtomicU64 and all access to it is atomic.
        Some(unsafe { &*(self.base.as_ptr().add(off as usize) as *const AtomicU64) })
    }

    /// Pops from `head`. Returns the block and whether the first CAS lost a
    /// race (a hint to move to another shard).
    #[inline]
    pub(crate) fn pop(&self, head: &AtomicU64) -> (Pop, bool) {
        // Acquire: pairs with the Release CAS in push(), so the pushed
        // block's link and page map entries are visible before we read them.
        let mut cur = head.load(Ordering::Acquire);
        let mut contended = false;
        loop {
            let off = head_offset(cur);
            if off == 0 {
                return (Pop::Empty, contended);
            }
            let (next, garbage) = match self.link(off) {
                Some(link) => {
                    let n = link.load(Ordering::Relaxed);
                    // A link that cannot be a head value is garbage; if the
                    // CAS below confirms that the head did not move, the list
                    // really is corrupt: cut it here (its tail is leaked,
                    // never handed out twice).
                    if n > 0xffff_ffff {
                        (0, true)
                    } else {
                        (n, false)
                    }
                }
                None => {
                    // The head itself is garbage: empty the list.
                    self.note_corruption();
                    let _ = head.compare_exchange(
                        cur,
                        pack(tag(cur).wrapping_add(1), 0),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    return (Pop::Empty, true);
                }
            };
            let new = (u64::from(tag(cur).wrapping_add(1)) << 32) | next;
            // Acquire on both outcomes: a retry reads the link of the block
            // the new head names, published by its pusher's Release.
            match head.compare_exchange_weak(cur, new, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => {
                    if garbage {
                        self.note_corruption();
                    }
                    return (Pop::Block(off, new), contended);
                }
                Err(seen) => {
                    contended = true;
                    cur = seen;
                }
            }
        }
    }

    /// Pushes the chain `first ..= last` (already linked first -> last) onto
    /// `head`. Both blocks must lie in the arena. Returns whether the first
    /// CAS lost a race.
    #[inline]
    pub(crate) fn push_chain(&self, head: &AtomicU64, first: u64, last: u64) -> bool {
        let (Some(_), Some(last_link)) = (self.link(first), self.link(last)) else {
            return false;
        };
        let mut cur = head.load(Ordering::Relaxed);
        let mut contended = false;
        loop {
            last_link.store(cur & 0xffff_ffff, Ordering::Relaxed);
            let new = pack(tag(cur).wrapping_add(1), first);
            // Release: publishes the link just stored (and the chain's
            // links and page map entries) to the Acquire load in pop().
            match head.compare_exchange_weak(cur, new, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return contended,
                Err(seen) => {
                    contended = true;
                    cur = seen;
                }
            }
        }
    }

    /// Pushes one block.
    #[inline]
    pub(crate) fn push(&self, head: &AtomicU64, off: u64) -> bool {
        self.push_chain(head, off, off)
    }

    /// Cuts a list whose head is still `installed` (the value a pop that
    /// met a corrupt block installed): the rest of the chain is garbage, so
    /// it is dropped (leaked) rather than followed.
    pub(crate) fn cut(&self, head: &AtomicU64, installed: u64) {
        let _ = head.compare_exchange(
            installed,
            pack(tag(installed).wrapping_add(1), 0),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    pub(crate) fn note_corruption(&self) {
        self.header().corrupt_events.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::testing::TestRegion;

    #[test]
    fn head_words_round_trip() {
        let h = pack(7, 0x1_0000);
        assert_eq!(head_offset(h), 0x1_0000);
        assert_eq!(tag(h), 7);
        assert_eq!(head_offset(pack(u32::MAX, 0)), 0);
    }

    #[test]
    fn push_pop_is_lifo_and_bumps_the_tag() {
        let region = TestRegion::new(1 << 20);
        let heap = region.heap();
        let head = AtomicU64::new(0);
        let a = heap.geo.arena_start;
        let b = a + 64;
        heap.push(&head, a);
        heap.push(&head, b);
        assert_eq!(tag(head.load(Ordering::Relaxed)), 2);
        assert!(matches!(heap.pop(&head).0, Pop::Block(x, _) if x == b));
        assert!(matches!(heap.pop(&head).0, Pop::Block(x, _) if x == a));
        assert!(matches!(heap.pop(&head).0, Pop::Empty));
        assert_eq!(tag(head.load(Ordering::Relaxed)), 4);
    }

    #[test]
    fn garbage_heads_and_links_are_contained() {
        let region = TestRegion::new(1 << 20);
        let heap = region.heap();
        // A head pointing outside the arena is emptied, not followed.
        let head = AtomicU64::new(pack(3, 8));
        assert!(matches!(heap.pop(&head).0, Pop::Empty));
        assert_eq!(head_offset(head.load(Ordering::Relaxed)), 0);
        // A link that is not a head value cuts the list after its block.
        let a = heap.geo.arena_start;
        heap.push(&head, a);
        heap.link(a).unwrap().store(u64::MAX, Ordering::Relaxed);
        assert!(matches!(heap.pop(&head).0, Pop::Block(x, _) if x == a));
        assert!(matches!(heap.pop(&head).0, Pop::Empty));
        assert_eq!(heap.header().corrupt_events.load(Ordering::Relaxed), 2);
    }
}
