//! The type table: which types live in a segment, so every block can say
//! what it holds.
//!
//! Each entry records a type's fingerprint, size, alignment, name and
//! whether it is a slice (`[T]`), plus a check word over all of them. A
//! block's meta word holds the index of its type's entry (`meta.rs`), and
//! a typed read compares the fingerprint behind that index with the one it
//! asks for. The table is also what lets a tool name the types of a
//! segment without the program's code.
//!
//! # Entry states
//!
//! ```text
//! state            meaning                         who moves it on
//! ---------------  ------------------------------  ----------------------------------
//! 0                empty                           a registrar: CAS 0 -> CLAIMED | tid
//! CLAIMED | tid    tid is writing the fields       tid: store READY (Release)
//!                                                  anyone, if tid is dead: CAS -> 0
//! READY            fields final, never change      nothing
//! ```
//!
//! Two processes registering the same type at once may make two entries
//! for it; reads compare fingerprints, not indices, so both work.
//!
//! # The process's copy
//! Every process keeps a [`TypeCache`]: for each index it has validated,
//! the fingerprint found there. Entries are final once ready, so after the
//! first look a peer that scribbles over the table cannot change what this
//! process believes a block holds; a scribbled entry not looked at yet
//! fails its check word and reads as an error, never as another type.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::shared::{Fingerprint, Shared};
use crate::sys;

/// Entries in a segment's type table (entry 0 is reserved for untyped
/// bytes from [`SharedHeap::alloc`](super::SharedHeap::alloc)).
pub const TYPE_CAPACITY: usize = 512;
/// Bytes of a type's name kept in the table (longer names are cut).
pub(crate) const MAX_TYPE_NAME: usize = 80;

const READY: u64 = 1;
const CLAIMED: u64 = 2 << 32;

/// Whether an entry state is a registrar's claim (`CLAIMED | tid`).
pub(crate) fn is_claim(state: u64) -> bool {
    state & !0xffff_ffff == CLAIMED
}

/// One entry: 128 bytes, all atomics (peers write them).
#[repr(C)]
pub(crate) struct TypeEntry {
    state: AtomicU64,
    fingerprint: AtomicU64,
    size: AtomicU64,
    align: AtomicU64,
    /// Name length, and bit 32 set for a slice type.
    shape: AtomicU64,
    check: AtomicU64,
    name: [AtomicU64; MAX_TYPE_NAME / 8],
}

pub(crate) const ENTRY_BYTES: u64 = std::mem::size_of::<TypeEntry>() as u64;
const _: () = assert!(ENTRY_BYTES == 128);

/// What identifies a type in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TypeKey {
    pub(crate) fingerprint: u64,
    pub(crate) size: u64,
    pub(crate) align: u64,
    pub(crate) name: &'static str,
    pub(crate) slice: bool,
}

/// The fingerprint of `[T]` (a block holding a run of `T`s).
struct SliceOf<T>(std::marker::PhantomData<T>);

impl<T: Shared> SliceOf<T> {
    const FINGERPRINT: u64 = Fingerprint::new("[T]").u64(T::FINGERPRINT).finish();
}

impl TypeKey {
    /// The key of `T`.
    pub(crate) const fn of<T: Shared>() -> TypeKey {
        TypeKey {
            fingerprint: T::FINGERPRINT,
            size: std::mem::size_of::<T>() as u64,
            align: std::mem::align_of::<T>() as u64,
            name: T::NAME,
            slice: false,
        }
    }

    /// The key of `[T]`.
    pub(crate) const fn slice_of<T: Shared>() -> TypeKey {
        TypeKey {
            fingerprint: SliceOf::<T>::FINGERPRINT,
            slice: true,
            ..TypeKey::of::<T>()
        }
    }

    /// `T (size 8, align 8, fingerprint 0x..)`, or `[T] (..)`.
    pub(crate) fn describe(&self) -> String {
        let (open, close) = if self.slice { ("[", "]") } else { ("", "") };
        format!(
            "{open}{}{close} (size {}, align {}, fingerprint {:#018x})",
            self.name, self.size, self.align, self.fingerprint
        )
    }
}

/// A type recorded in a segment's type table
/// ([`SharedHeap::types`](super::SharedHeap::types)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeRecord {
    /// [`Shared::FINGERPRINT`] of the type (or of `[T]` for a slice).
    pub fingerprint: u64,
    /// `size_of` the type (of one element for a slice).
    pub size: u64,
    /// `align_of` the type.
    pub align: u64,
    /// [`Shared::NAME`] of the type (of the element for a slice), cut to
    /// 80 bytes.
    pub name: String,
    /// Whether blocks of this entry hold a run of elements (`[T]`).
    pub slice: bool,
}

impl TypeRecord {
    /// `name (size .., align .., fingerprint ..)`, `[name]` for a slice.
    pub fn describe(&self) -> String {
        let (open, close) = if self.slice { ("[", "]") } else { ("", "") };
        format!(
            "{open}{}{close} (size {}, align {}, fingerprint {:#018x})",
            self.name, self.size, self.align, self.fingerprint
        )
    }
}

fn check_word(index: usize, fp: u64, size: u64, align: u64, shape: u64, name: &[u64]) -> u64 {
    let mut f = Fingerprint::new("type entry")
        .u64(index as u64)
        .u64(fp)
        .u64(size)
        .u64(align)
        .u64(shape);
    for &w in name {
        f = f.u64(w);
    }
    // Never 0, so a zeroed entry never passes.
    f.finish() | 1
}

fn pack_name(name: &str) -> [u64; MAX_TYPE_NAME / 8] {
    let mut words = [0u64; MAX_TYPE_NAME / 8];
    for (i, b) in name.bytes().take(MAX_TYPE_NAME).enumerate() {
        words[i / 8] |= u64::from(b) << (8 * (i % 8));
    }
    words
}

impl TypeEntry {
    /// The entry's fields if it is ready and its check word matches.
    fn read(&self, index: usize) -> Option<TypeRecord> {
        // Acquire: pairs with the Release store of READY in `claim`.
        if self.state.load(Ordering::Acquire) != READY {
            return None;
        }
        let fp = self.fingerprint.load(Ordering::Relaxed);
        let size = self.size.load(Ordering::Relaxed);
        let align = self.align.load(Ordering::Relaxed);
        let shape = self.shape.load(Ordering::Relaxed);
        let name: Vec<u64> = self
            .name
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        if self.check.load(Ordering::Relaxed) != check_word(index, fp, size, align, shape, &name) {
            return None;
        }
        let len = (shape & 0xffff_ffff).min(MAX_TYPE_NAME as u64) as usize;
        let bytes: Vec<u8> = name
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .take(len)
            .collect();
        Some(TypeRecord {
            fingerprint: fp,
            size,
            align,
            name: String::from_utf8_lossy(&bytes).into_owned(),
            slice: shape >> 32 & 1 != 0,
        })
    }

    /// The fingerprint word, for tests that scribble over it.
    #[cfg(test)]
    pub(crate) fn fingerprint_for_tests(&self) -> &AtomicU64 {
        &self.fingerprint
    }

    fn matches(&self, index: usize, key: &TypeKey) -> bool {
        self.read(index).is_some_and(|r| {
            r.fingerprint == key.fingerprint
                && r.size == key.size
                && r.align == key.align
                && r.slice == key.slice
        })
    }

    /// Claims the empty entry for `key`; false if someone else has it.
    fn claim(&self, index: usize, key: &TypeKey) -> bool {
        let me = sys::gettid();
        // Acquire: nothing to see (the entry was empty); Relaxed would do,
        // but the fields below must not move above the claim.
        if self
            .state
            .compare_exchange(
                0,
                CLAIMED | u64::from(me),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return false;
        }
        let name = pack_name(key.name);
        let shape = key.name.len().min(MAX_TYPE_NAME) as u64 | u64::from(key.slice) << 32;
        self.fingerprint.store(key.fingerprint, Ordering::Relaxed);
        self.size.store(key.size, Ordering::Relaxed);
        self.align.store(key.align, Ordering::Relaxed);
        self.shape.store(shape, Ordering::Relaxed);
        for (w, v) in self.name.iter().zip(name) {
            w.store(v, Ordering::Relaxed);
        }
        self.check.store(
            check_word(index, key.fingerprint, key.size, key.align, shape, &name),
            Ordering::Relaxed,
        );
        // Release: publishes the fields to the Acquire load in `read`.
        self.state.store(READY, Ordering::Release);
        true
    }

    /// Frees an entry whose claimer died before it was ready.
    fn reap(&self) {
        let s = self.state.load(Ordering::Relaxed);
        if is_claim(s) && !sys::thread_alive(s as u32) {
            let _ = self
                .state
                .compare_exchange(s, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

/// How many fingerprints the process remembers by hash for registration.
const HINTS: usize = 64;

/// A process's validated view of one segment's type table.
pub(crate) struct TypeCache {
    /// Index -> fingerprint of the entry, 0 until validated.
    by_index: Box<[AtomicU64; TYPE_CAPACITY]>,
    /// Fingerprint hash -> an index holding it (checked against
    /// `by_index` before use), 0 for none.
    hints: Box<[AtomicU32]>,
    /// Serializes this process's registrations, so its threads never make
    /// two entries for one type.
    register: Mutex<()>,
}

impl std::fmt::Debug for TypeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let known = self
            .by_index
            .iter()
            .filter(|f| f.load(Ordering::Relaxed) != 0)
            .count();
        f.debug_struct("TypeCache").field("known", &known).finish()
    }
}

impl Default for TypeCache {
    fn default() -> Self {
        TypeCache::new()
    }
}

impl TypeCache {
    pub(crate) fn new() -> TypeCache {
        TypeCache {
            by_index: Box::new([const { AtomicU64::new(0) }; TYPE_CAPACITY]),
            hints: (0..HINTS).map(|_| AtomicU32::new(0)).collect(),
            register: Mutex::new(()),
        }
    }

    /// The fingerprint this process knows for `index`, 0 if not yet known.
    #[inline]
    pub(crate) fn known(&self, index: u32) -> u64 {
        self.by_index
            .get(index as usize)
            .map_or(0, |f| f.load(Ordering::Relaxed))
    }

    /// The index this process uses for `key`, if it has one.
    #[inline]
    pub(crate) fn hinted(&self, key: &TypeKey) -> Option<u32> {
        let i = self.hints[key.fingerprint as usize % HINTS].load(Ordering::Relaxed);
        (i != 0 && self.known(i) == key.fingerprint).then_some(i)
    }

    fn remember(&self, index: usize, fp: u64) {
        self.by_index[index].store(fp, Ordering::Relaxed);
    }
}

/// A segment's type table together with this process's copy.
#[derive(Clone, Copy)]
pub(crate) struct TypeTable<'s> {
    pub(crate) entries: &'s [TypeEntry],
    pub(crate) cache: &'s TypeCache,
}

impl<'s> TypeTable<'s> {
    /// The index of `key`'s entry, registering it if the table has none.
    ///
    /// # Errors
    /// [`Error::TypeTableFull`] when every entry is taken.
    pub(crate) fn index_of(&self, key: &TypeKey) -> Result<u32> {
        if let Some(i) = self.cache.hinted(key) {
            return Ok(i);
        }
        self.register(key)
    }

    #[cold]
    fn register(&self, key: &TypeKey) -> Result<u32> {
        let _one = self
            .cache
            .register
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            let mut empty = None;
            for (i, e) in self.entries.iter().enumerate().skip(1) {
                if e.matches(i, key) {
                    self.cache.remember(i, key.fingerprint);
                    self.cache.hints[key.fingerprint as usize % HINTS]
                        .store(i as u32, Ordering::Relaxed);
                    return Ok(i as u32);
                }
                e.reap();
                if empty.is_none() && e.state.load(Ordering::Relaxed) == 0 {
                    empty = Some(i);
                }
            }
            let Some(i) = empty else {
                return Err(Error::TypeTableFull {
                    capacity: TYPE_CAPACITY - 1,
                });
            };
            // A lost race for the entry: scan again (the winner may have
            // registered this very type).
            if self.entries[i].claim(i, key) {
                self.cache.remember(i, key.fingerprint);
                self.cache.hints[key.fingerprint as usize % HINTS]
                    .store(i as u32, Ordering::Relaxed);
                return Ok(i as u32);
            }
        }
    }

    /// The fingerprint of the type at `index`: this process's copy, or the
    /// entry read, checked and remembered. 0 if the entry is not a valid,
    /// ready entry.
    #[inline]
    pub(crate) fn fingerprint(&self, index: u32) -> u64 {
        match self.cache.known(index) {
            0 => self.learn(index),
            fp => fp,
        }
    }

    #[cold]
    fn learn(&self, index: u32) -> u64 {
        let i = index as usize;
        match self
            .entries
            .get(i)
            .filter(|_| i != 0)
            .and_then(|e| e.read(i))
        {
            Some(r) => {
                self.cache.remember(i, r.fingerprint);
                r.fingerprint
            }
            None => 0,
        }
    }

    /// The checked record at `index` (for error messages and tools).
    pub(crate) fn record(&self, index: u32) -> Option<TypeRecord> {
        let i = index as usize;
        self.entries.get(i).filter(|_| i != 0)?.read(i)
    }

    /// Every ready, valid entry: (index, record).
    pub(crate) fn records(&self) -> Vec<(u32, TypeRecord)> {
        (1..self.entries.len())
            .filter_map(|i| self.entries[i].read(i).map(|r| (i as u32, r)))
            .collect()
    }

    /// Entries that are neither empty nor a valid ready entry (a claimer
    /// that died, or scribbles): (index, what was found).
    pub(crate) fn damaged(&self) -> Vec<(u32, u64)> {
        (1..self.entries.len())
            .filter_map(|i| {
                let e = &self.entries[i];
                let s = e.state.load(Ordering::Acquire);
                (s != 0 && e.read(i).is_none()).then_some((i as u32, s))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> (Vec<TypeEntry>, TypeCache) {
        let entries = (0..TYPE_CAPACITY)
            .map(|_| TypeEntry {
                state: AtomicU64::new(0),
                fingerprint: AtomicU64::new(0),
                size: AtomicU64::new(0),
                align: AtomicU64::new(0),
                shape: AtomicU64::new(0),
                check: AtomicU64::new(0),
                name: Default::default(),
            })
            .collect();
        (entries, TypeCache::new())
    }

    #[test]
    fn registration_is_idempotent_and_records_the_type() {
        let (entries, cache) = table();
        let t = TypeTable {
            entries: &entries,
            cache: &cache,
        };
        let a = t.index_of(&TypeKey::of::<u64>()).unwrap();
        let b = t.index_of(&TypeKey::of::<u32>()).unwrap();
        let s = t.index_of(&TypeKey::slice_of::<u64>()).unwrap();
        assert_eq!(a, 1);
        assert_eq!((b, s), (2, 3));
        assert_eq!(t.index_of(&TypeKey::of::<u64>()).unwrap(), a);
        assert_eq!(t.fingerprint(a), u64::FINGERPRINT);
        let r = t.record(s).unwrap();
        assert!(r.slice && r.name == "u64" && r.size == 8, "{r:?}");
        assert_eq!(r.describe(), TypeKey::slice_of::<u64>().describe());
        // Another process (a fresh cache) finds the same entries.
        let other = TypeCache::new();
        let t2 = TypeTable {
            entries: &entries,
            cache: &other,
        };
        assert_eq!(t2.fingerprint(b), u32::FINGERPRINT);
        assert_eq!(t2.index_of(&TypeKey::of::<u32>()).unwrap(), b);
        assert_eq!(t.records().len(), 3);
    }

    #[test]
    fn a_scribbled_entry_reads_as_nothing_and_a_learned_one_stays() {
        let (entries, cache) = table();
        let t = TypeTable {
            entries: &entries,
            cache: &cache,
        };
        let a = t.index_of(&TypeKey::of::<u64>()).unwrap();
        let b = t.index_of(&TypeKey::of::<i64>()).unwrap();
        // A peer rewrites both fingerprints.
        entries[a as usize]
            .fingerprint
            .store(i64::FINGERPRINT, Ordering::Relaxed);
        entries[b as usize]
            .fingerprint
            .store(u64::FINGERPRINT, Ordering::Relaxed);
        // This process learned them before: unchanged.
        assert_eq!(t.fingerprint(a), u64::FINGERPRINT);
        // A process that had not: the check word refuses them.
        let fresh = TypeCache::new();
        let t2 = TypeTable {
            entries: &entries,
            cache: &fresh,
        };
        assert_eq!(t2.fingerprint(a), 0);
        assert_eq!(t2.fingerprint(b), 0);
        assert_eq!(t2.damaged().len(), 2);
        // Out of range and the reserved entry are nothing.
        assert_eq!(t2.fingerprint(0), 0);
        assert_eq!(t2.fingerprint(u32::MAX), 0);
    }

    #[test]
    fn a_full_table_is_an_error() {
        let (entries, cache) = table();
        let t = TypeTable {
            entries: &entries[..4],
            cache: &cache,
        };
        t.index_of(&TypeKey::of::<u8>()).unwrap();
        t.index_of(&TypeKey::of::<u16>()).unwrap();
        t.index_of(&TypeKey::of::<u32>()).unwrap();
        assert!(matches!(
            t.index_of(&TypeKey::of::<u64>()),
            Err(Error::TypeTableFull { .. })
        ));
    }
}
