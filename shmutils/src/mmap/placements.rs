//! The placement table: which typed values this process has placed in a
//! shared memory object (or in an anonymous mapping), and through which of
//! its mappings, so that [`get`](super::MappedMemory::get) never hands out
//! two overlapping references of different types, byte copies never touch
//! bytes a typed reference may be storing to, and no mapping writes bytes
//! that a reference handed out by another mapping covers.
//!
//! Every mapping of one object in this process shares one table (the
//! registry, `registry.rs`, hands it out), so placements are by offset in
//! the object: a mapping always maps its object from offset 0. An
//! anonymous mapping, or one rebuilt with `from_raw_parts`, has a table of
//! its own.
//!
//! Each placement records its **holders**: the mappings that handed out a
//! reference to it (`get` or `init`). References borrow the mapping that
//! made them, so `&mut` to a mapping shows that none of *its* references
//! is alive, and nothing about the others'. Hence:
//!
//! - a write or an `init` through mapping X over placed bytes is allowed
//!   only when X is their only holder, and is [`Error::Aliased`] otherwise;
//! - `clear_placements` through X, and dropping (or detaching) X, removes X
//!   from the holders of what it covers; a placement with no holder left is
//!   forgotten.
//!
//! The table lives in process memory behind a [`ForkSafe`] lock, so a
//! `fork`ed child inherits it (with the parent's references) in a usable
//! state.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::forksafe::{self, ForkSafe};
use crate::error::{Error, Result};
use crate::shared::Shared;

/// A typed value placed at some offset of a mapping.
#[derive(Clone, Copy, Debug)]
pub(super) struct Placement {
    /// Bytes it covers; never 0 in the table.
    pub(super) size: usize,
    type_id: TypeId,
    name: &'static str,
    align: usize,
    fingerprint: u64,
}

impl Placement {
    /// The placement of a `T`.
    pub(super) fn of<T: Shared>() -> Placement {
        Placement {
            size: std::mem::size_of::<T>(),
            type_id: TypeId::of::<T>(),
            name: std::any::type_name::<T>(),
            align: std::mem::align_of::<T>(),
            fingerprint: T::FINGERPRINT,
        }
    }

    /// Whether it places the same type as `other`.
    pub(super) fn same_type(&self, other: &Placement) -> bool {
        self.type_id == other.type_id
    }

    /// The type, as error messages show it.
    pub(super) fn describe(&self) -> String {
        format!(
            "{} (size {}, align {}, fingerprint {:#018x})",
            self.name, self.size, self.align, self.fingerprint
        )
    }

    /// The type and the bytes it covers, starting at `start`.
    pub(super) fn describe_at(&self, start: usize) -> String {
        format!(
            "{} placed at bytes {start}..{}",
            self.describe(),
            start + self.size
        )
    }
}

/// The `object` of a [`Error::TypeMismatch`] about bytes of a mapping.
pub(super) fn bytes_object(range: &Range<usize>) -> String {
    format!("bytes {}..{} of the mapping", range.start, range.end)
}

/// A placement and the mappings whose references to it may be alive.
#[derive(Clone, Debug)]
struct Placed {
    what: Placement,
    /// Ids of the mappings that handed out a reference to it; never empty
    /// in the table, usually one.
    holders: Vec<MappingId>,
}

/// Placements by offset. They never overlap one another.
type Map = BTreeMap<usize, Placed>;

/// Identifies one `MappedMemory` value among the live ones of this
/// process (a counter, never reused).
pub(super) type MappingId = u64;

/// The placement table of one object (or anonymous mapping) in this
/// process, shared by its mappings.
#[derive(Debug)]
pub(super) struct Placements {
    table: ForkSafe<Map>,
    /// The object's shared memory name, for error messages; `None` for
    /// memory no other mapping can reach.
    name: Option<String>,
}

impl Placements {
    /// An empty table for the object `name` (`None`: a private table).
    pub(super) fn new(name: Option<String>) -> Placements {
        Placements {
            table: ForkSafe::new(Map::new(), Map::new()),
            name,
        }
    }

    /// Locks the table; waits (sleeping) while another thread of this
    /// process holds it.
    pub(super) fn lock(&self) -> Guard<'_> {
        Guard {
            inner: self.table.lock(),
            name: self.name.as_deref(),
        }
    }
}

/// A mapping's share of a placement table: its id, and, when it is
/// dropped, the release of everything it holds.
#[derive(Debug)]
pub(super) struct Claim {
    table: Arc<Placements>,
    id: MappingId,
}

impl Claim {
    /// A new mapping's share of `table`, under a fresh id.
    pub(super) fn new(table: Arc<Placements>) -> Claim {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Claim {
            table,
            id: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// This mapping's id in the table.
    pub(super) fn id(&self) -> MappingId {
        self.id
    }

    /// Locks the shared table.
    pub(super) fn lock(&self) -> Guard<'_> {
        self.table.lock()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // The mapping is going away with every reference it made.
        self.table.lock().release(self.id, 0..usize::MAX);
    }
}

/// The placements in `map` that overlap `range`, last first. Empty ranges
/// overlap nothing.
fn overlapping<'m>(
    map: &'m Map,
    range: &Range<usize>,
) -> impl Iterator<Item = (usize, &'m Placed)> + 'm {
    let start = range.start;
    // Placements do not overlap, so they are sorted by end as well as by
    // start: walking back from the last one that starts before
    // `range.end`, the first that ends at or before `range.start` ends the
    // walk.
    let candidates = if range.start < range.end {
        Some(map.range(..range.end).rev())
    } else {
        None
    };
    candidates
        .into_iter()
        .flatten()
        .take_while(move |(&s, p)| s + p.what.size > start)
        .map(|(&s, p)| (s, p))
}

/// The locked table. Unlocks on drop.
pub(super) struct Guard<'a> {
    inner: forksafe::Guard<'a, Map>,
    name: Option<&'a str>,
}

impl Guard<'_> {
    fn map(&self) -> &Map {
        self.inner.get()
    }

    /// The placement at exactly `offset`, if any.
    #[cfg(test)]
    pub(super) fn at(&self, offset: usize) -> Option<Placement> {
        self.map().get(&offset).map(|p| p.what)
    }

    /// A placement overlapping `range`, if any (the last one).
    pub(super) fn overlapping(&self, range: &Range<usize>) -> Option<(usize, Placement)> {
        overlapping(self.map(), range)
            .next()
            .map(|(s, p)| (s, p.what))
    }

    /// How many placements there are.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map().len()
    }

    /// `Ok` if no placement overlaps `range`: its bytes may be copied
    /// without racing a store made through a typed reference.
    ///
    /// # Errors
    /// [`Error::TypeMismatch`] naming the placement found.
    pub(super) fn check_untyped(&self, range: &Range<usize>) -> Result<()> {
        match self.overlapping(range) {
            None => Ok(()),
            Some((start, p)) => Err(Error::TypeMismatch {
                object: bytes_object(range),
                expected: "raw bytes, with no typed value placed on them \
                           (a copy could race a store through that value)"
                    .to_owned(),
                found: p.describe_at(start),
            }),
        }
    }

    /// `Ok` if every placement overlapping `range` is held by mapping `me`
    /// alone: a caller with `&mut` to that mapping may change the bytes,
    /// since none of its references is alive.
    ///
    /// # Errors
    /// [`Error::Aliased`] naming a placement another mapping holds.
    pub(super) fn check_unshared(&self, me: MappingId, range: &Range<usize>) -> Result<()> {
        let shared =
            overlapping(self.map(), range).find(|(_, p)| p.holders.iter().any(|&h| h != me));
        match shared {
            None => Ok(()),
            Some((start, p)) => Err(Error::Aliased {
                object: match self.name {
                    Some(name) => format!(
                        "bytes {}..{} of shared memory {name:?}",
                        range.start, range.end
                    ),
                    None => bytes_object(range),
                },
                found: format!(
                    "{} through another mapping of it in this process",
                    p.what.describe_at(start)
                ),
            }),
        }
    }

    /// Places `want` at `offset` for mapping `me`, as `get` does: the
    /// same type at the same offset gains `me` as a holder; untyped bytes
    /// become a `want` held by `me`.
    ///
    /// # Errors
    /// [`Error::TypeMismatch`] when a placement of another type, or at
    /// another offset, overlaps the bytes.
    pub(super) fn claim(&mut self, me: MappingId, offset: usize, want: Placement) -> Result<()> {
        if want.size == 0 {
            return Ok(());
        }
        let range = offset..offset + want.size;
        match self.map().get(&offset) {
            Some(found) if found.what.same_type(&want) => {
                if !found.holders.contains(&me) {
                    self.inner.change(|map| {
                        if let Some(p) = map.get_mut(&offset) {
                            p.holders.push(me);
                        }
                    });
                }
                Ok(())
            }
            _ => match self.overlapping(&range) {
                Some((start, found)) => Err(Error::TypeMismatch {
                    object: bytes_object(&range),
                    expected: want.describe(),
                    found: found.describe_at(start),
                }),
                None => {
                    self.inner.change(|map| {
                        map.insert(
                            offset,
                            Placed {
                                what: want,
                                holders: vec![me],
                            },
                        );
                    });
                    Ok(())
                }
            },
        }
    }

    /// Places `p` at `offset` for mapping `me`, as `init` does, replacing
    /// every placement it overlaps.
    ///
    /// # Errors
    /// [`Error::Aliased`] when another mapping holds one of them (this
    /// mapping's `&mut` says nothing about that mapping's references).
    pub(super) fn replace(&mut self, me: MappingId, offset: usize, p: Placement) -> Result<()> {
        if p.size == 0 {
            return Ok(());
        }
        let range = offset..offset + p.size;
        self.check_unshared(me, &range)?;
        self.inner.change(|map| {
            let old: Vec<usize> = overlapping(map, &range).map(|(s, _)| s).collect();
            for start in old {
                map.remove(&start);
            }
            map.insert(
                offset,
                Placed {
                    what: p,
                    holders: vec![me],
                },
            );
        });
        Ok(())
    }

    /// Removes mapping `me` from the holders of every placement that
    /// overlaps `range`; a placement left with no holder is forgotten.
    pub(super) fn release(&mut self, me: MappingId, range: Range<usize>) {
        let touched = overlapping(self.map(), &range).any(|(_, p)| p.holders.contains(&me));
        if !touched {
            return;
        }
        self.inner.change(|map| {
            let held: Vec<usize> = overlapping(map, &range)
                .filter(|(_, p)| p.holders.contains(&me))
                .map(|(s, _)| s)
                .collect();
            for start in held {
                if let Some(p) = map.get_mut(&start) {
                    p.holders.retain(|&h| h != me);
                    if p.holders.is_empty() {
                        map.remove(&start);
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p<T: Shared>() -> Placement {
        Placement::of::<T>()
    }

    #[test]
    fn overlap_finds_the_placements_that_reach_in() {
        let t = Placements::new(None);
        let mut g = t.lock();
        g.claim(1, 0, p::<u64>()).unwrap();
        g.claim(1, 16, p::<u32>()).unwrap();
        assert_eq!(g.overlapping(&(8..16)).map(|(s, _)| s), None);
        assert_eq!(g.overlapping(&(7..8)).map(|(s, _)| s), Some(0));
        assert_eq!(g.overlapping(&(0..100)).map(|(s, _)| s), Some(16));
        assert_eq!(g.overlapping(&(19..20)).map(|(s, _)| s), Some(16));
        assert_eq!(g.overlapping(&(20..24)).map(|(s, _)| s), None);
        assert_eq!(g.overlapping(&(4..4)).map(|(s, _)| s), None);
        assert_eq!(overlapping(g.map(), &(0..100)).count(), 2);
        assert!(g.check_untyped(&(8..16)).is_ok());
        match g.check_untyped(&(4..12)) {
            Err(Error::TypeMismatch { object, found, .. }) => {
                assert_eq!(object, "bytes 4..12 of the mapping");
                assert!(found.contains("u64 (size 8, align 8"), "{found}");
                assert!(found.ends_with("placed at bytes 0..8"), "{found}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn replace_removes_every_overlapped_placement() {
        let t = Placements::new(None);
        let mut g = t.lock();
        for off in (0..64).step_by(8) {
            g.replace(1, off, p::<u64>()).unwrap();
        }
        assert_eq!(g.len(), 8);
        g.replace(1, 4, p::<[u64; 3]>()).unwrap();
        // 0..8, 8..16, 16..24 and 24..32 overlap 4..28.
        assert_eq!(g.len(), 5);
        assert!(g.at(4).is_some_and(|q| q.same_type(&p::<[u64; 3]>())));
        assert!(g.at(0).is_none());
        assert!(g.at(32).is_some());
        g.release(1, 0..usize::MAX);
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn holders_decide_who_may_change_placed_bytes() {
        let t = Placements::new(Some("/obj".to_owned()));
        let mut g = t.lock();
        g.claim(1, 0, p::<u64>()).unwrap();
        // Its only holder may change it; another mapping may not.
        assert!(g.check_unshared(1, &(0..8)).is_ok());
        match g.check_unshared(2, &(4..12)) {
            Err(Error::Aliased { object, found }) => {
                assert_eq!(object, "bytes 4..12 of shared memory \"/obj\"");
                assert!(
                    found.contains("placed at bytes 0..8 through another mapping"),
                    "{found}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            g.replace(2, 0, p::<u32>()),
            Err(Error::Aliased { .. })
        ));
        // The same type at the same offset: a second holder, and then
        // neither may change it alone.
        g.claim(2, 0, p::<u64>()).unwrap();
        assert!(matches!(
            g.check_unshared(1, &(0..8)),
            Err(Error::Aliased { .. })
        ));
        assert!(matches!(
            g.claim(2, 0, p::<AtomicU64>()),
            Err(Error::TypeMismatch { .. })
        ));
        // Releasing one holder keeps the placement for the other.
        g.release(1, 0..8);
        assert_eq!(g.len(), 1);
        assert!(g.check_unshared(2, &(0..8)).is_ok());
        assert!(g.check_untyped(&(0..8)).is_err());
        // A release by a mapping that holds nothing changes nothing.
        g.release(3, 0..usize::MAX);
        assert_eq!(g.len(), 1);
        g.release(2, 0..usize::MAX);
        assert_eq!(g.len(), 0);
        assert!(g.check_untyped(&(0..8)).is_ok());
    }

    #[test]
    fn a_dropped_claim_releases_what_it_held() {
        let t = Arc::new(Placements::new(None));
        let a = Claim::new(t.clone());
        let b = Claim::new(t.clone());
        assert_ne!(a.id(), b.id());
        a.lock().claim(a.id(), 0, p::<u64>()).unwrap();
        a.lock().claim(a.id(), 8, p::<u64>()).unwrap();
        b.lock().claim(b.id(), 8, p::<u64>()).unwrap();
        drop(a);
        let g = t.lock();
        assert!(g.at(0).is_none());
        assert!(g.at(8).is_some());
        drop(g);
        drop(b);
        assert_eq!(t.lock().len(), 0);
    }
}
