//! The per-thread allocation caches: the default path of every
//! allocation and free of a block up to 256 KiB, for a heap reached
//! through a [`Segment`](crate::Segment).
//!
//! Each thread that uses the heap claims a slot in the segment's registry
//! (`registry/`); per cached size class the slot holds a list of free
//! blocks, linked through their meta words like the shared lists, whose
//! head (`count << 40 | first`, offsets being below 2^40) only the slot's owner writes. An
//! allocation pops the list's first block and a free pushes the block, with
//! plain stores to the thread's own cache line and one plain store on the
//! block's meta word: to claim it, after checking that the word is a free
//! word of this very cache (its custody, `meta.rs`: no other claimer takes
//! such a block, and no other thread of this process uses this cache), and
//! to free it, after checking that it is allocated (a double free is caught
//! unless it races the first one within those few instructions). A
//! process-local [`Mirror`] of the list's top saves the page map lookup on
//! the way out. A list longer than its class's cap sends frees to the
//! shared lists; an empty one takes its next block from a shared list (or
//! a new span).
//!
//! # Crash safety
//! The blocks of a cache live in the segment, not in the process: a slot
//! whose owner died is reaped, and its cache stays with it, free, for the
//! next thread that claims the slot (an allocation that finds the arena
//! full takes blocks from free slots' caches as well). While it moves a
//! block between its cache and its caller, the owner records the block in
//! its slot first (`inflight`); a reaper reads the block's meta word and
//! the cache's head to tell which side of the move it was on and puts it
//! back in the cache if it was free. Pops from a shared list are recorded
//! the same way (`pop_off`), so the only free blocks a crash can cost are:
//! - a block a shared-list pop took in the few instructions before its
//!   claim, when the reaper cannot tell whether the pop happened (counted
//!   in `RegistryStats::unresolved`, never handed out twice);
//! - as before caches existed, a span being carved: its pages, if the
//!   crash came before they were published in the page map
//!   (`CheckReport::unpublished_pages`), or the rest of a new slab, if it
//!   came before that went onto a shared list (`leaked_blocks`).
//!
//! Blocks a dead process had allocated (and, for a free that had not
//! returned, the block being freed) are its own to lose.
//!
//! # Fork
//! The fork handler resets the forking thread's thread-local lookup in
//! the child (or, without the handler, the lookup carries the fork
//! generation), so a forked child never uses its parent's cache: it claims
//! a slot of its own.

use std::alloc::Layout;
use std::sync::atomic::{AtomicU64, Ordering};

use super::class::{block_size, NCLASSES, NSMALL, PAGE};
use super::layout::NSHARDS;
use super::meta;
use super::stack::{self, Pop};
use super::{current_shard, move_shard, Block, Carved, SharedHeap};
use crate::error::{Error, Result};
use crate::registry::local::Local;
use crate::registry::{my_identity, Registry, Slot, CACHE_HEADS};

/// Size classes the caches serve: every class whose blocks are at most
/// 256 KiB (the small classes and the smaller large ones).
pub(crate) const NCACHED: usize = ncached();

const fn ncached() -> usize {
    let mut c = 0;
    while c < NCLASSES && block_size_const(c) <= 256 << 10 {
        c += 1;
    }
    c
}

const fn block_size_const(c: usize) -> u64 {
    if c < NSMALL {
        super::class::SMALL[c] as u64
    } else {
        super::class::LARGE_PAGES[c - NSMALL] as u64 * PAGE
    }
}

const _: () = assert!(NCACHED <= CACHE_HEADS && NCACHED > NSMALL);

const POS_MASK: u64 = (1 << 40) - 1;

/// Blocks frees add to a cache of each class before they go to the shared
/// lists: 32 KiB of small blocks (8 to 64 of them), 512 KiB of large ones
/// (1 to 8).
const CAP: [u16; NCACHED] = caps();

const fn caps() -> [u16; NCACHED] {
    let mut out = [0u16; NCACHED];
    let mut c = 0;
    while c < NCACHED {
        let size = block_size_const(c);
        let (budget, lo, hi) = if c < NSMALL {
            (32_768, 8, 64)
        } else {
            (524_288, 1, 8)
        };
        let n = budget / size;
        out[c] = if n < lo {
            lo
        } else if n > hi {
            hi
        } else {
            n
        } as u16;
        c += 1;
    }
    out
}

/// Where each class's entries start in a [`Mirror`].
const MIRROR_AT: [usize; NCACHED + 1] = mirror_at();

const fn mirror_at() -> [usize; NCACHED + 1] {
    let mut out = [0usize; NCACHED + 1];
    let mut c = 0;
    while c < NCACHED {
        out[c + 1] = out[c] + CAP[c] as usize;
        c += 1;
    }
    out
}

/// This thread's process-local copy of the top of its cache's lists: the
/// blocks it pushed itself (checked when they were freed) with their meta
/// words, so that taking one back needs no page map lookup. The lists in
/// the slot stay the truth: a pop checks that the list's head is the
/// mirror's top and that its word is a free word of this cache (a peer may
/// have changed either), and falls back to the checked path otherwise.
pub(crate) struct Mirror {
    /// The slot (in the segment's mapping) and its custody number.
    pub(crate) slot: *const Slot,
    pub(crate) custody: u8,
    len: [u16; NCACHED],
    blocks: [(u64, *const AtomicU64); MIRROR_AT[NCACHED]],
}

impl Mirror {
    pub(crate) fn new(slot: &Slot, custody: u8) -> Mirror {
        Mirror {
            slot,
            custody,
            len: [0; NCACHED],
            blocks: [(0, std::ptr::null()); MIRROR_AT[NCACHED]],
        }
    }
}

#[inline]
fn head_word(first: u64, count: u64) -> u64 {
    count << 40 | first & POS_MASK
}

#[inline]
fn first_of(h: u64) -> u64 {
    h & POS_MASK
}

impl<'s> SharedHeap<'s> {
    /// The custody (`meta.rs`) of the blocks in slot `s`'s cache: its
    /// index + 1.
    #[inline]
    pub(crate) fn custody(&self, s: &Slot) -> u8 {
        let first = self.raw(self.geo.reg_off + 64) as usize;
        ((s as *const Slot as usize - first) / std::mem::size_of::<Slot>() + 1) as u8
    }

    /// Takes the first block of the cache's list of class `c` and marks it
    /// allocated as `ty`; `None` if the list is empty (or was garbage, and
    /// has been dropped).
    #[inline(always)]
    pub(crate) fn cache_pop(
        &self,
        l: Local<'s>,
        c: usize,
        ty: u32,
        private: bool,
    ) -> Option<(u64, &'s AtomicU64)> {
        let s = l.slot();
        let hw = &s.heads[c];
        let h = hw.load(Ordering::Relaxed);
        let off = first_of(h);
        if off == 0 {
            return None;
        }
        // SAFETY: the mirror is this thread's own (Local's contract); no
        // other reference to it exists during the call.
        let m = unsafe { &mut *l.mirror.as_ptr() };
        let k = usize::from(m.len[c]);
        let top = (k > 0).then(|| m.blocks[MIRROR_AT[c] + k - 1]);
        let word = match top {
            // SAFETY: the mirror holds only meta words of blocks this
            // thread freed into its cache, checked then; they lie in the
            // mapping, which lives while the caller holds the segment.
            Some((o, w)) if o == off => unsafe { &*w },
            _ => {
                m.len[c] = 0;
                return self.cache_pop_checked(l.slot(), l.custody(), c, ty, private);
            }
        };
        m.len[c] -= 1;
        // The word's address is the block's (the mirror's): state and
        // custody decide, no seal needed.
        let Some(next) = meta::held_link_at_own_word(word.load(Ordering::Relaxed), l.custody())
        else {
            m.len[c] = 0;
            return self.cache_pop_checked(l.slot(), l.custody(), c, ty, private);
        };
        Some(self.cache_take(s, hw, h, off, next, word, ty, private))
    }

    /// The checked pop, from the cache of slot `s` (custody `custody`),
    /// which the caller holds: the head located through the page map. A
    /// list that leads to garbage is dropped (leaked).
    #[inline(never)]
    fn cache_pop_checked(
        &self,
        s: &'s Slot,
        custody: u8,
        c: usize,
        ty: u32,
        private: bool,
    ) -> Option<(u64, &'s AtomicU64)> {
        let hw = &s.heads[c];
        let h = hw.load(Ordering::Relaxed);
        let off = first_of(h);
        if off == 0 {
            return None;
        }
        let found = self
            .block_at(off)
            .filter(|b| b.class == c && b.start == off)
            .and_then(|b| self.meta_word(b))
            .and_then(|w| meta::held_link(w.load(Ordering::Relaxed), off, custody).map(|n| (w, n)));
        let Some((word, next)) = found else {
            // A peer scribbled over the list (or its head): leak the rest
            // rather than follow it.
            self.note_corruption();
            hw.store(0, Ordering::Relaxed);
            return None;
        };
        Some(self.cache_take(s, hw, h, off, next, word, ty, private))
    }

    /// Takes the block `off` (whose word `word` said "free in this cache,
    /// next `next`") off the head `h` of list `hw`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn cache_take(
        &self,
        s: &Slot,
        hw: &AtomicU64,
        h: u64,
        off: u64,
        next: u64,
        word: &'s AtomicU64,
        ty: u32,
        private: bool,
    ) -> (u64, &'s AtomicU64) {
        // The three stores are ordered (Release) so that a reaper, after
        // this thread died anywhere between them, finds the block either
        // still first in the list, or recorded in `inflight` and still
        // free, or allocated (see the module docs).
        s.inflight.store(off, Ordering::Relaxed);
        hw.store(
            head_word(next, (h >> 40).saturating_sub(1)),
            Ordering::Release,
        );
        // A store, not a CAS: the word said "free, in this slot's cache",
        // and no other claimer takes a block of that custody (a shared pop
        // claims only custody 0, other caches only theirs; no other thread
        // of this process uses this slot: registry/local.rs). Only a peer
        // writing the word at this very moment could race it, which is a
        // peer writing into our blocks (the trust model).
        word.store(meta::allocated(ty, off, private), Ordering::Release);
        s.inflight.store(0, Ordering::Release);
        (off, word)
    }

    /// Frees the allocated block `b` into the cache. `Ok(false)`: the list
    /// is at its cap (the caller frees to a shared list).
    ///
    /// # Errors
    /// [`Error::DoubleFree`] if the block is not allocated (or its word is
    /// not `expect`).
    #[inline(always)]
    pub(crate) fn cache_push(&self, l: Local<'s>, b: Block, expect: Option<u64>) -> Result<bool> {
        let s = l.slot();
        let hw = &s.heads[b.class];
        let h = hw.load(Ordering::Relaxed);
        let count = h >> 40;
        if count >= u64::from(CAP[b.class]) {
            return Ok(false);
        }
        let Some(word) = self.meta_word(b) else {
            return Err(Error::DoubleFree { offset: b.start });
        };
        let cur = word.load(Ordering::Relaxed);
        if !meta::is_allocated(cur, b.start) || expect.is_some_and(|e| e != cur) {
            return Err(Error::DoubleFree { offset: b.start });
        }
        s.inflight.store(b.start, Ordering::Relaxed);
        // A store, not a CAS (the one read-modify-write of an alloc + free
        // pair is the claim in cache_pop): a second free of the block,
        // made before this store lands, finds it allocated too and is not
        // caught here; every later one is. No block can reach two owners
        // that way: every claim is a CAS from an exact free word. Release:
        // the record before the word changes (for a reaper).
        word.store(
            meta::held(b.start, first_of(h), l.custody()),
            Ordering::Release,
        );
        hw.store(head_word(b.start, count + 1), Ordering::Release);
        s.inflight.store(0, Ordering::Release);
        // SAFETY: as in cache_pop().
        let m = unsafe { &mut *l.mirror.as_ptr() };
        let k = usize::from(m.len[b.class]);
        if k < usize::from(CAP[b.class]) {
            m.blocks[MIRROR_AT[b.class] + k] = (b.start, word as *const AtomicU64);
            m.len[b.class] += 1;
        }
        Ok(true)
    }

    /// An allocation of class `c` that missed the cache: a block from a
    /// shared list, else a new span (the rest of a new slab goes to a
    /// shared list), else a block from a free slot's cache.
    pub(crate) fn refill(
        &self,
        s: &Slot,
        c: usize,
        ty: u32,
        private: bool,
        layout: Layout,
    ) -> Result<(u64, &'s AtomicU64)> {
        let shard = current_shard();
        for k in 0..NSHARDS {
            let sh = (shard + k) % NSHARDS;
            let head = self.head(sh, c);
            s.pop_where
                .store((c as u64) << 8 | sh as u64, Ordering::Relaxed);
            let note = |seen: u64, off: u64| {
                s.pop_seen.store(seen, Ordering::Relaxed);
                // Release: the record (and where) before the pop's CAS.
                s.pop_off.store(off, Ordering::Release);
            };
            let (p, contended) = stack::pop(self, head, c, note);
            if contended && k == 0 {
                move_shard();
            }
            if let Pop::Block {
                block,
                seen,
                installed,
            } = p
            {
                let claimed = self.meta_word(block).filter(|w| {
                    w.compare_exchange(
                        seen,
                        meta::allocated(ty, block.start, private),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                });
                s.pop_off.store(0, Ordering::Release);
                if let Some(w) = claimed {
                    return Ok((block.start, w));
                }
                self.note_corruption();
                stack::cut(head, installed);
            }
        }
        s.pop_off.store(0, Ordering::Release);
        for _ in 0..super::MAX_SKIPS {
            match self.carve(c, shard, ty, private) {
                Carved::Block(off, w) => return Ok((off, w)),
                Carved::Taken => self.note_corruption(),
                Carved::NoSpace(e) => return Err(e),
                Carved::Full => {
                    return self.adopt(c, ty, private).ok_or(Error::OutOfMemory {
                        size: layout.size(),
                        align: layout.align(),
                    })
                }
            }
        }
        Err(Error::HeapCorrupt {
            what: format!(
                "fresh pages for {}-byte blocks were taken {} times in a row",
                block_size(c),
                super::MAX_SKIPS
            ),
        })
    }

    /// A block of class `c` from the cache of a free slot (the arena is
    /// full): claims the slot, pops, frees the slot.
    pub(crate) fn adopt(&self, c: usize, ty: u32, private: bool) -> Option<(u64, &'s AtomicU64)> {
        if c >= NCACHED {
            return None;
        }
        let reg = self.registry();
        // Dead threads' caches count too, but reaping reads /proc for every
        // slot in use: at most once per ten clock ticks (100 ms) per
        // process on this path.
        static LAST_REAP: AtomicU64 = AtomicU64::new(0);
        let now = crate::sys::boot_ticks_now();
        let last = LAST_REAP.load(Ordering::Relaxed);
        if now >= last + 10
            && LAST_REAP
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.reap_dead();
        }
        let me = my_identity();
        for (i, s) in reg.slots.iter().enumerate() {
            if s.owner.load(Ordering::Relaxed) != 0
                || first_of(s.heads[c].load(Ordering::Relaxed)) == 0
            {
                continue;
            }
            // Acquire: pairs with the Release that freed the slot, so its
            // cache as left is visible.
            if s.owner
                .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // Never a cache a thread of this process uses (a peer zeroed
            // its owner word): put the word back as found.
            if self.att.is_some_and(|a| !a.take_local(i, me)) {
                reg.release(s, me);
                continue;
            }
            let got = self.cache_pop_checked(s, self.custody(s), c, ty, private);
            if let Some(a) = self.att {
                a.drop_local(i, me);
            }
            reg.release(s, me);
            if got.is_some() {
                return got;
            }
        }
        None
    }

    /// Reaps every slot whose owner (or reaper) is dead; returns how many.
    pub(crate) fn reap_dead(&self) -> usize {
        let reg = self.registry();
        let me = my_identity();
        let mut n = 0;
        for (i, s) in reg.slots.iter().enumerate() {
            // A slot a thread of this process uses is alive, whatever its
            // owner word says (a peer may have written it).
            if self.att.is_some_and(|a| a.is_local(i)) {
                continue;
            }
            if let Some(mine) = reg.take_dead(s, me) {
                self.settle(s, reg);
                reg.release(s, mine);
                reg.header.reaped.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }
        n
    }

    /// Finishes, for a slot whose owner died, what the owner was doing with
    /// its cache (see the module docs). Idempotent: a reaper that dies in
    /// here leaves records the next one settles the same way.
    pub(crate) fn settle(&self, s: &Slot, reg: Registry<'_>) {
        // Acquire: the dead owner's stores are all visible (it is gone);
        // the reaper's own earlier settle, if it died in here, too.
        let custody = self.custody(s);
        let off = s.inflight.load(Ordering::Acquire);
        if off != 0 {
            if let Some(b) = self
                .block_at(off)
                .filter(|b| b.start == off && b.class < NCACHED)
            {
                let hw = &s.heads[b.class];
                let h = hw.load(Ordering::Relaxed);
                let word = self.meta_word(b);
                let seen = word.map_or(0, |w| w.load(Ordering::Relaxed));
                let free = meta::held_link(seen, off, custody).is_some();
                // Free and out of the list: it was moving; put it back (a
                // CAS from the word read: never over a claim).
                if first_of(h) != off
                    && free
                    && word.is_some_and(|w| {
                        w.compare_exchange(
                            seen,
                            meta::held(off, first_of(h), custody),
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                    })
                {
                    hw.store(head_word(off, (h >> 40) + 1), Ordering::Release);
                }
            }
            s.inflight.store(0, Ordering::Release);
        }
        let rec = s.pop_off.load(Ordering::Acquire);
        if rec != 0 {
            let at = s.pop_where.load(Ordering::Relaxed);
            let (c, sh) = ((at >> 8) as usize, (at & 0xff) as usize);
            let free = self
                .block_at(rec)
                .filter(|b| b.start == rec && b.class == c)
                .and_then(|b| self.meta_word(b))
                .is_some_and(|w| meta::free_link(w.load(Ordering::Relaxed), rec).is_some());
            let unchanged = c < NCLASSES
                && sh < NSHARDS
                && self.head(sh, c).load(Ordering::Acquire) == s.pop_seen.load(Ordering::Relaxed);
            // Free, and the list moved on: popped by the dead owner, or by
            // someone else whose claim is still to come. Leave it.
            if free && !unchanged {
                reg.header.unresolved.fetch_add(1, Ordering::Relaxed);
            }
        }
        s.pop_off.store(0, Ordering::Release);
    }

    /// Blocks held by caches (of live or free slots), by walking them: for
    /// `check`, which needs every one of them.
    pub(crate) fn cached_blocks(&self, mut each: impl FnMut(usize, u64, Option<&'static str>)) {
        let reg = self.registry();
        for (i, s) in reg.slots.iter().enumerate() {
            let custody = self.custody(s);
            for c in 0..NCACHED {
                let mut off = first_of(s.heads[c].load(Ordering::Acquire));
                let mut steps = 0u64;
                while off != 0 {
                    steps += 1;
                    let b = self
                        .block_at(off)
                        .filter(|b| b.class == c && b.start == off);
                    let link = b
                        .and_then(|b| self.meta_word(b))
                        .and_then(|w| meta::held_link(w.load(Ordering::Acquire), off, custody));
                    match (b, link) {
                        (Some(_), Some(next)) if steps <= 1 << 24 => {
                            each(i, off, None);
                            off = next;
                        }
                        _ => {
                            each(
                                i,
                                off,
                                Some("is in a cache but is not a free block of its class"),
                            );
                            break;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::testing::TestRegion;
    use crate::registry::{identity_word, Kind};
    use std::ptr::NonNull;

    /// An identity no thread has (pid and tid past any pid_max in use).
    const DEAD: u64 = 0x3f_fff0;

    /// A slot of `heap`'s registry claimed for a dead thread, with a cache
    /// of `n` 64-byte blocks (freed into it through the cache path).
    fn dead_cache<'s>(heap: &SharedHeap<'s>, n: usize) -> (Local<'s>, Vec<u64>) {
        let reg = heap.registry();
        let s = reg
            .claim(
                Kind::Thread,
                identity_word(DEAD as u32, DEAD as u32 + 1, 0),
                0,
            )
            .unwrap();
        // Leaked: a test's few mirrors.
        let mirror = Box::leak(Box::new(Mirror::new(s, heap.custody(s))));
        // SAFETY: this thread's own mirror (leaked: it lives for ever) of
        // a slot of the region, which lives as long as `heap`.
        let l = unsafe { Local::new(NonNull::from(mirror)) };
        let layout = Layout::from_size_align(64, 8).unwrap();
        let offs: Vec<u64> = (0..n)
            .map(|_| heap.alloc(layout).unwrap().offset())
            .collect();
        for &o in &offs {
            let b = heap.block_at(o).unwrap();
            assert!(heap.cache_push(l, b, None).unwrap());
        }
        (l, offs)
    }

    /// Stages a thread that died taking the first block of its cache of
    /// 64-byte blocks, after moving the head and before claiming the word:
    /// returns the block and its word.
    fn die_taking<'s>(heap: &SharedHeap<'s>, l: Local<'s>) -> (u64, &'s AtomicU64) {
        let c = class64();
        let h = l.slot().heads[c].load(Ordering::Relaxed);
        let top = first_of(h);
        let w = heap.meta_word(heap.block_at(top).unwrap()).unwrap();
        let next = meta::held_link(w.load(Ordering::Relaxed), top, l.custody()).unwrap();
        l.slot().inflight.store(top, Ordering::Relaxed);
        l.slot().heads[c].store(head_word(next, (h >> 40) - 1), Ordering::Relaxed);
        (top, w)
    }

    fn class64() -> usize {
        super::super::class::class_of(Layout::from_size_align(64, 8).unwrap()).unwrap()
    }

    #[test]
    fn a_reaper_puts_back_a_block_a_dead_thread_was_taking() {
        let region = TestRegion::new(1 << 20);
        let heap = region.heap();
        let (l, offs) = dead_cache(&heap, 4);
        // Died between moving the head and claiming the word: the block is
        // free and in no list.
        let (top, _) = die_taking(&heap, l);
        assert_eq!(top, offs[3]);
        assert_eq!(heap.check().leaked_blocks, 1);
        assert_eq!(heap.reap_dead(), 1);
        let r = heap.check();
        assert!(r.is_clean(), "{r}");
        assert_eq!((r.cached_blocks, heap.stats().in_use_blocks), (4, 0));
        assert_eq!(
            l.slot().owner.load(Ordering::Relaxed),
            0,
            "the slot is free"
        );
    }

    #[test]
    fn a_reaper_leaves_a_block_a_dead_thread_had_claimed() {
        let region = TestRegion::new(1 << 20);
        let heap = region.heap();
        let (l, _) = dead_cache(&heap, 4);
        let c = class64();
        // Died after claiming, before clearing the record: the block is
        // the dead thread's (allocated, never published): it stays so.
        let (top, w) = die_taking(&heap, l);
        w.store(meta::allocated(meta::RAW, top, false), Ordering::Relaxed);
        assert_eq!(heap.reap_dead(), 1);
        let r = heap.check();
        assert!(r.is_consistent() && r.leaked_blocks == 0, "{r}");
        assert_eq!((r.cached_blocks, heap.stats().in_use_blocks), (3, 1));
        // Killed before moving the head: the record names the block still
        // first in the list; nothing moves.
        let l2 = dead_cache(&heap, 2).0.slot();
        let top2 = first_of(l2.heads[c].load(Ordering::Relaxed));
        l2.inflight.store(top2, Ordering::Relaxed);
        assert_eq!(heap.reap_dead(), 1);
        let r = heap.check();
        assert!(r.is_consistent() && r.leaked_blocks == 0, "{r}");
        assert_eq!(r.cached_blocks, 5);
    }

    #[test]
    fn a_reaper_puts_back_a_block_a_dead_thread_was_freeing() {
        let region = TestRegion::new(1 << 20);
        let heap = region.heap();
        let (l, _) = dead_cache(&heap, 2);
        let c = class64();
        let x = heap
            .alloc(Layout::from_size_align(64, 8).unwrap())
            .unwrap()
            .offset();
        // Died after freeing the word, before pushing it: free, in no list.
        let h = l.slot().heads[c].load(Ordering::Relaxed);
        let w = heap.meta_word(heap.block_at(x).unwrap()).unwrap();
        l.slot().inflight.store(x, Ordering::Relaxed);
        w.store(meta::held(x, first_of(h), l.custody()), Ordering::Relaxed);
        assert_eq!(heap.check().leaked_blocks, 1);
        assert_eq!(heap.reap_dead(), 1);
        let r = heap.check();
        assert!(r.is_clean(), "{r}");
        assert_eq!((r.cached_blocks, heap.stats().in_use_blocks), (3, 0));
        // Settling twice (a reaper killed in settle) changes nothing more.
        l.slot().inflight.store(x, Ordering::Relaxed);
        heap.settle(l.slot(), heap.registry());
        let again = heap.check();
        assert!(again.is_clean(), "{again}");
        assert_eq!(again.cached_blocks, 3);
    }

    #[test]
    fn a_shared_pop_the_reaper_cannot_attribute_is_left_alone_and_counted() {
        let region = TestRegion::new(1 << 20);
        let heap = region.heap();
        let layout = Layout::from_size_align(64, 8).unwrap();
        let c = class64();
        // A free block on shard 0's list.
        let x = heap.alloc(layout).unwrap();
        // SAFETY: an untyped block nobody references.
        unsafe { heap.free(x, layout) }.unwrap();
        let shard = (0..NSHARDS)
            .find(|&sh| {
                super::super::stack::head_offset(heap.head(sh, c).load(Ordering::Relaxed)) != 0
            })
            .unwrap();
        let head = heap.head(shard, c).load(Ordering::Relaxed);
        let (l, _) = dead_cache(&heap, 0);
        let record = |seen: u64| {
            l.slot()
                .pop_where
                .store((c as u64) << 8 | shard as u64, Ordering::Relaxed);
            l.slot().pop_seen.store(seen, Ordering::Relaxed);
            l.slot()
                .pop_off
                .store(super::super::stack::head_offset(head), Ordering::Relaxed);
        };
        // The list did not move: the pop never happened.
        record(head);
        assert_eq!(heap.reap_dead(), 1);
        assert_eq!(heap.registry().stats().unresolved, 0);
        // The list moved on and the block is still free: unattributable.
        let (l, _) = dead_cache(&heap, 0);
        let _ = l;
        record(head ^ (1 << 40));
        assert_eq!(heap.reap_dead(), 1);
        assert_eq!(heap.registry().stats().unresolved, 1);
        let r = heap.check();
        assert!(r.is_clean(), "{r}");
    }
}
