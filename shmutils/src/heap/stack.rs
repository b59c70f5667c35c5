//! The lock-free free lists: one Treiber stack per (shard, class), linked
//! through the blocks' meta words (`meta.rs`), never through the blocks.
//!
//! # Head word
//! ```text
//!  63          38 37                0
//! +--------------+-------------------+
//! |   ABA tag    |  block / 8        |     block / 8 == 0: the list is empty
//! +--------------+-------------------+
//! ```
//! 38 bits of position reach 2 TiB (the largest segment is 1 TiB); the
//! other 26 bits are the tag.
//!
//! | state | push(b) | pop |
//! |---|---|---|
//! | `(t, 0)` empty | `meta(b) = FREE(0)`; CAS -> `(t+1, b)` | returns `Empty` |
//! | `(t, a)` | `meta(b) = FREE(a)`; CAS -> `(t+1, b)` | `n = meta(a).next`; CAS -> `(t+1, n)`, returns `a` |
//!
//! Every successful CAS bumps the tag, so a pop that read `meta(a)` before
//! another thread popped `a`, reused it and pushed it back fails its CAS
//! (the tag moved on) instead of installing a stale `next`: the ABA
//! problem. The tag is 26 bits: a pop would have to stall while exactly a
//! multiple of 2^26 (67 million) operations complete on its one list, and
//! find its block back on top, to be fooled.
//!
//! # No data race
//! A pop reads the link of a block that another thread may have popped and
//! allocated in the meantime. The link lives in the block's meta word, an
//! atomic only the allocator touches, so that read races nothing but other
//! atomic accesses; the block's own bytes, which its new owner writes with
//! plain stores, are never read here.
//!
//! # Garbage tolerance
//! Every offset taken from a head or a link is located through the page
//! map before its meta word is read, and a meta word that does not say
//! "free" while the head still names its block ends the list there (the
//! rest is leaked, never handed out twice). Popped blocks are then claimed
//! by a CAS from the exact free word read, so even a list a peer corrupted
//! cannot make the heap read outside the arena or give one block to two
//! owners.
//!
//! # Crash safety
//! Each operation is one CAS. A process killed before it has changed
//! nothing; killed after it, the list is consistent. What it can lose is
//! the block in its hands between the pop and the claim of its meta word.
//!
//! # Model checking
//! `pop` and `push_chain` are written over two small traits (the crate's
//! atomic cell `Word`, and [`Nodes`], the blocks a list may name), so that
//! with `--cfg loom` the tests at the end of this file run the very same
//! code over `loom` atomics; the heap instantiates them with `std`'s.

use std::sync::atomic::{AtomicU64, Ordering};

use super::class::GRANULE;
use super::meta;
use super::{Block, SharedHeap};
use crate::sync::Word;

/// The blocks a free list may name.
pub(crate) trait Nodes<'a> {
    type W: Word + 'a;
    /// The block starting at `off` and its meta word, if `off` is the start
    /// of a block of class `class`.
    fn node(&self, off: u64, class: usize) -> Option<(Block, &'a Self::W)>;
    /// Counts a corrupt entry met on a list.
    fn note_corruption(&self);
}

impl<'s> Nodes<'s> for SharedHeap<'s> {
    type W = AtomicU64;

    /// One page map entry: the free word's seal, checked next by `pop`,
    /// says whether the word found is really that block's.
    #[inline(always)]
    fn node(&self, off: u64, class: usize) -> Option<(Block, &'s AtomicU64)> {
        let b = self
            .block_at(off)
            .filter(|b| b.class == class && b.start == off)?;
        self.meta_word(b).map(|m| (b, m))
    }

    fn note_corruption(&self) {
        SharedHeap::note_corruption(self);
    }
}

/// Bits of a head word that hold the block's position (offset / 8).
const POSITION_BITS: u32 = 38;
const POSITION_MASK: u64 = (1 << POSITION_BITS) - 1;

/// A head word from a tag (its low 26 bits) and a block offset.
#[inline]
pub(crate) fn pack(tag: u32, off: u64) -> u64 {
    (u64::from(tag) << POSITION_BITS) | ((off / GRANULE) & POSITION_MASK)
}

/// The block offset a head word names (0 for an empty list).
#[inline]
pub(crate) fn head_offset(head: u64) -> u64 {
    (head & POSITION_MASK) * GRANULE
}

#[inline]
fn tag(head: u64) -> u32 {
    (head >> POSITION_BITS) as u32
}

/// What [`pop`] found.
pub(crate) enum Pop {
    /// The list is empty (or was garbage and has been emptied).
    Empty,
    /// A block taken off the list, with the free meta word that was read
    /// for it (the claim CASes from exactly this) and the head value the
    /// pop installed (for [`cut`]).
    Block {
        block: Block,
        seen: u64,
        installed: u64,
    },
}

/// Pops a block of class `class` from `head`. The flag says whether a CAS
/// race was lost on the way (the caller then moves to another shard).
/// `note(head, block)` is called before each CAS that would take `block`
/// off the list by replacing `head` (a thread with a registry slot records
/// it there for a reaper).
#[inline]
pub(crate) fn pop<'a, N: Nodes<'a>>(
    heap: &N,
    head: &N::W,
    class: usize,
    note: impl Fn(u64, u64),
) -> (Pop, bool) {
    // Acquire: pairs with the Release CAS in push_chain(), so the link
    // stored into the meta word before the push is visible.
    let mut cur = head.load(Ordering::Acquire);
    let mut contended = false;
    loop {
        let off = head_offset(cur);
        if off == 0 {
            return (Pop::Empty, contended);
        }
        let Some((block, word)) = heap.node(off, class) else {
            // Not a block of this list: a peer corrupted the head.
            heap.note_corruption();
            cut(head, cur);
            return (Pop::Empty, true);
        };
        let seen = word.load(Ordering::Acquire);
        let next = match meta::free_link(seen, off) {
            Some(next) if next / GRANULE <= POSITION_MASK => next,
            _ => {
                // Either someone popped and claimed the block since we read
                // the head (the head moved: retry), or the word is garbage.
                // A plain load could still return the old head (nothing
                // orders it after the claim we saw; loom finds that
                // interleaving), so ask with a read-modify-write, which
                // reads the latest value.
                match head.compare_exchange(cur, cur, Ordering::Acquire, Ordering::Acquire) {
                    Err(now) => {
                        cur = now;
                        contended = true;
                        continue;
                    }
                    Ok(_) => {
                        heap.note_corruption();
                        cut(head, cur);
                        return (Pop::Empty, true);
                    }
                }
            }
        };
        let new = pack(tag(cur).wrapping_add(1), next);
        note(cur, off);
        // Acquire: as the load above, for the value we install.
        match head.compare_exchange_weak(cur, new, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => {
                return (
                    Pop::Block {
                        block,
                        seen,
                        installed: new,
                    },
                    contended,
                )
            }
            Err(seen_head) => {
                contended = true;
                cur = seen_head;
            }
        }
    }
}

/// Pushes the chain `first ..= last` (already linked through their meta
/// words; `last_word`, the word of the block at `last`, is linked here)
/// onto `head`. Returns whether a CAS race was lost.
#[inline]
pub(crate) fn push_chain<W: Word>(head: &W, first: u64, last: u64, last_word: &W) -> bool {
    let mut cur = head.load(Ordering::Relaxed);
    let mut contended = false;
    loop {
        last_word.store(meta::free(last, head_offset(cur)), Ordering::Relaxed);
        let new = pack(tag(cur).wrapping_add(1), first);
        // Release: publishes the meta words of the chain to the Acquire
        // load in pop().
        match head.compare_exchange_weak(cur, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return contended,
            Err(seen) => {
                contended = true;
                cur = seen;
            }
        }
    }
}

/// Empties a list whose head (`installed`, the value a pop installed or
/// saw) leads to garbage: the rest of the list is leaked rather than
/// followed. A no-op if the head has moved on.
pub(crate) fn cut<W: Word>(head: &W, installed: u64) {
    let _ = head.compare_exchange(
        installed,
        pack(tag(installed).wrapping_add(1), 0),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::testing::TestRegion;
    use std::alloc::Layout;

    #[test]
    fn head_words_round_trip() {
        let h = pack(7, 0x1_0000);
        assert_eq!(head_offset(h), 0x1_0000);
        assert_eq!(tag(h), 7);
        assert_eq!(head_offset(pack(u32::MAX, 0)), 0);
        // Positions reach past 1 TiB; the tag wraps at 2^26.
        let far = (1u64 << 40) + 4096;
        assert_eq!(head_offset(pack(9, far)), far);
        assert_eq!(tag(pack((1 << 26) - 1, far).wrapping_add(1 << 38)), 0);
    }

    #[test]
    fn garbage_heads_and_links_are_contained() {
        let region = TestRegion::new(1 << 20);
        let heap = region.heap();
        let l = Layout::new::<u64>();
        let c = super::super::class::class_of(l).unwrap();
        // A head pointing outside the arena is emptied, not followed.
        let head = AtomicU64::new(pack(3, 8));
        assert!(matches!(pop(&heap, &head, c, |_, _| {}).0, Pop::Empty));
        assert_eq!(head_offset(head.load(Ordering::Relaxed)), 0);
        // A head naming an allocated block is cut, the block not handed out.
        let p = heap.alloc(l).unwrap().offset();
        head.store(pack(4, p), Ordering::Relaxed);
        assert!(matches!(pop(&heap, &head, c, |_, _| {}).0, Pop::Empty));
        assert_eq!(head_offset(head.load(Ordering::Relaxed)), 0);
        // A link that is garbage ends the list after its block.
        let b = heap.locate(p).unwrap();
        let word = heap.meta_word(b).unwrap();
        word.store(meta::free(p, 0), Ordering::Relaxed);
        head.store(pack(5, p), Ordering::Relaxed);
        word.store(u64::MAX, Ordering::Relaxed);
        assert!(matches!(pop(&heap, &head, c, |_, _| {}).0, Pop::Empty));
        assert_eq!(heap.header().corrupt_events.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn push_pop_is_lifo_and_bumps_the_tag() {
        let region = TestRegion::new(1 << 20);
        let heap = region.heap();
        let l = Layout::new::<u64>();
        let c = super::super::class::class_of(l).unwrap();
        let a = heap.alloc(l).unwrap().offset();
        let b = heap.alloc(l).unwrap().offset();
        let head = AtomicU64::new(0);
        for off in [a, b] {
            let word = heap.meta_word(heap.locate(off).unwrap()).unwrap();
            word.store(meta::free(off, 0), Ordering::Relaxed);
            push_chain(&head, off, off, word);
        }
        assert_eq!(tag(head.load(Ordering::Relaxed)), 2);
        assert!(
            matches!(pop(&heap, &head, c, |_, _| {}).0, Pop::Block { block, .. } if block.start == b)
        );
        assert!(
            matches!(pop(&heap, &head, c, |_, _| {}).0, Pop::Block { block, .. } if block.start == a)
        );
        assert!(matches!(pop(&heap, &head, c, |_, _| {}).0, Pop::Empty));
        assert_eq!(tag(head.load(Ordering::Relaxed)), 4);
    }
}

/// Model checks of the list protocol, run with
/// `RUSTFLAGS="--cfg loom" cargo test -p shmutils --release --lib loom`.
///
/// They cover, in one process, every interleaving (up to loom's bounds) of
/// `pop`, the claim CAS of `alloc_as`, the release CAS of `unclaim` and
/// `push_chain`, with the orderings the heap uses: that a block is never
/// held by two threads at once (an ABA pop would do that), and that every
/// block is back on the list at the end.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::{AtomicBool, AtomicU64 as LoomU64};
    use loom::sync::Arc;

    /// `n` blocks at offsets 64, 128, ..., with their meta words and a
    /// flag each that says who holds it.
    struct Model {
        head: LoomU64,
        words: Vec<LoomU64>,
        held: Vec<AtomicBool>,
    }

    fn start(i: usize) -> u64 {
        (i as u64 + 1) * 64
    }

    impl Model {
        /// All `n` blocks on the list, in order.
        fn new(n: usize) -> Model {
            let words = (0..n)
                .map(|i| {
                    let next = if i + 1 < n { start(i + 1) } else { 0 };
                    LoomU64::new(meta::free(start(i), next))
                })
                .collect();
            Model {
                head: LoomU64::new(pack(0, start(0))),
                words,
                held: (0..n).map(|_| AtomicBool::new(false)).collect(),
            }
        }

        /// `alloc_as` on the model: pop, claim, mark held (never twice).
        fn alloc(&self) -> Option<usize> {
            let Pop::Block { block, seen, .. } = pop(&self, &self.head, 0, |_, _| {}).0 else {
                return None;
            };
            let i = block.index as usize;
            self.words[i]
                .compare_exchange(
                    seen,
                    meta::allocated(meta::RAW, block.start, false),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .expect("a popped block's word changed: two owners");
            assert!(
                !self.held[i].swap(true, Ordering::Relaxed),
                "block {i} held twice"
            );
            Some(i)
        }

        /// `release` on the model: unmark, unclaim, push.
        fn free(&self, i: usize) {
            self.held[i].store(false, Ordering::Relaxed);
            let w = &self.words[i];
            let cur = w.load(Ordering::Relaxed);
            assert!(meta::is_allocated(cur, start(i)));
            w.compare_exchange(
                cur,
                meta::free(start(i), 0),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .expect("a held block's word changed");
            push_chain(&self.head, start(i), start(i), w);
        }

        /// Walks the list: the blocks on it, each once.
        fn listed(&self) -> Vec<usize> {
            let mut out = Vec::new();
            let mut off = head_offset(self.head.load(Ordering::Acquire));
            while off != 0 {
                let i = (off / 64 - 1) as usize;
                assert!(!out.contains(&i), "block {i} listed twice");
                out.push(i);
                off = meta::free_link(self.words[i].load(Ordering::Acquire), off)
                    .expect("a listed block is free");
            }
            out.sort_unstable();
            out
        }
    }

    impl<'a> Nodes<'a> for &'a Model {
        type W = LoomU64;

        fn node(&self, off: u64, class: usize) -> Option<(Block, &'a LoomU64)> {
            let i = (off / 64).checked_sub(1)? as usize;
            (class == 0 && off % 64 == 0 && i < self.words.len()).then(|| {
                let block = Block {
                    class: 0,
                    start: off,
                    span_page: 0,
                    index: i as u64,
                };
                (block, &self.words[i])
            })
        }

        fn note_corruption(&self) {
            panic!("the model's lists are never corrupt");
        }
    }

    #[test]
    fn loom_two_threads_alloc_and_free_never_share_a_block() {
        loom::model(|| {
            let m = Arc::new(Model::new(2));
            let t = {
                let m = m.clone();
                loom::thread::spawn(move || {
                    if let Some(i) = m.alloc() {
                        m.free(i);
                    }
                })
            };
            if let Some(i) = m.alloc() {
                m.free(i);
            }
            t.join().unwrap();
            assert_eq!(m.listed(), vec![0, 1]);
        });
    }

    #[test]
    fn loom_the_aba_tag_stops_a_stale_pop() {
        // One thread pops while the other pops two blocks and pushes them
        // back in another order: the first pop's view of the head is then
        // stale (same block at the top, another next), the ABA case.
        loom::model(|| {
            let m = Arc::new(Model::new(3));
            let t = {
                let m = m.clone();
                loom::thread::spawn(move || {
                    let a = m.alloc();
                    let b = m.alloc();
                    for i in a.into_iter().chain(b) {
                        m.free(i);
                    }
                })
            };
            if let Some(i) = m.alloc() {
                m.free(i);
            }
            t.join().unwrap();
            assert_eq!(m.listed(), vec![0, 1, 2]);
        });
    }
}
