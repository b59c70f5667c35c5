//! The process-wide registry of mapped shared memory objects: which
//! objects this process maps, how (raw [`MappedMemory`](super::MappedMemory)
//! or [`Segment`](crate::Segment)), and the one placement table that all
//! raw mappings of an object share.
//!
//! An object is known by its identity (`st_dev`, `st_ino` from `fstat`),
//! not its name: two names can never reach one object, and a name unlinked
//! and created again is another object. Entries exist only while a mapping
//! of the object does, and a mapped object keeps its inode, so an identity
//! in the registry is never reused by another object.
//!
//! The rule it enforces, per object and process: **raw mappings and
//! segments never coexist.** A segment's heap hands out `&T` into blocks
//! whose placement the raw table cannot see, so a raw mapping beside a
//! live segment could write plain bytes under those references (or copy
//! bytes while a reference stores through an atomic); the registry refuses
//! it instead ([`Error::InUseBySegment`], [`Error::InUseByRawMapping`]).
//! Segments of one object may be opened many times (the heap writes only
//! blocks private to the writer and reads typed blocks), and raw mappings
//! of one object may be many too (they share one placement table).
//!
//! The registry is process memory behind a [`ForkSafe`] lock: a `fork`ed
//! child inherits it, consistent with the mappings and segments it
//! inherits, even if another thread of the parent was changing it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::forksafe::{ForkSafe, Guard};
use super::placements::Placements;
use crate::error::{Error, Result};
use crate::sys::FileStat;

/// A shared memory object's identity: the same for every descriptor and
/// mapping of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct ObjectId {
    dev: u64,
    ino: u64,
}

impl ObjectId {
    /// The identity `fstat` reported.
    pub(super) fn of(stat: &FileStat) -> ObjectId {
        ObjectId {
            dev: stat.dev,
            ino: stat.ino,
        }
    }
}

/// How a mapping uses its object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// A [`MappedMemory`](super::MappedMemory) the caller reads, writes and
    /// places values in (also inside an
    /// [`AbsoluteMemory`](super::AbsoluteMemory)).
    Raw,
    /// The mapping of a [`Segment`](crate::Segment), reached only through
    /// its heap.
    Segment,
}

/// What this process maps of one object.
#[derive(Clone, Debug)]
struct Entry {
    /// The placement table of every raw mapping of the object.
    table: Arc<Placements>,
    /// Live raw mappings.
    raw: usize,
    /// Live segment mappings.
    segments: usize,
}

impl Entry {
    fn count(&mut self, role: Role) -> &mut usize {
        match role {
            Role::Raw => &mut self.raw,
            Role::Segment => &mut self.segments,
        }
    }
}

type Objects = BTreeMap<ObjectId, Entry>;

/// Every object this process maps.
static OBJECTS: ForkSafe<Objects> = ForkSafe::new(BTreeMap::new(), BTreeMap::new());

/// One mapping's entry in the registry; leaves it when dropped.
#[derive(Debug)]
pub(super) struct Registration {
    object: ObjectId,
    role: Role,
}

/// Registers a new mapping of `object` (whose name is `name`) in `role`,
/// and returns the placement table its raw mappings share.
///
/// # Errors
/// [`Error::InUseBySegment`] for a raw mapping of an object a live
/// `Segment` of this process maps; [`Error::InUseByRawMapping`] for a
/// segment of an object live raw mappings of this process map.
pub(super) fn register(
    name: &str,
    object: ObjectId,
    role: Role,
) -> Result<(Registration, Arc<Placements>)> {
    register_locked(&mut OBJECTS.lock(), name, object, role)
}

/// [`register`] under the registry's lock, held by the caller.
fn register_locked(
    objects: &mut Guard<'_, Objects>,
    name: &str,
    object: ObjectId,
    role: Role,
) -> Result<(Registration, Arc<Placements>)> {
    let table = match objects.get().get(&object) {
        Some(e) => {
            match role {
                Role::Raw if e.segments > 0 => {
                    return Err(Error::InUseBySegment {
                        name: name.to_owned(),
                    })
                }
                Role::Segment if e.raw > 0 => {
                    return Err(Error::InUseByRawMapping {
                        name: name.to_owned(),
                        mappings: e.raw,
                    })
                }
                _ => {}
            }
            let table = e.table.clone();
            objects.change(|map| {
                if let Some(e) = map.get_mut(&object) {
                    *e.count(role) += 1;
                }
            });
            table
        }
        None => {
            let table = Arc::new(Placements::new(Some(name.to_owned())));
            let mut entry = Entry {
                table: table.clone(),
                raw: 0,
                segments: 0,
            };
            *entry.count(role) = 1;
            objects.change(|map| {
                map.insert(object, entry.clone());
            });
            table
        }
    };
    Ok((Registration { object, role }, table))
}

/// Registers the mapping of a [`Segment`](crate::Segment) whose object is
/// about to be (re)written from scratch, which is only sound if nothing in
/// this process maps the object: `Ok(None)` if a live segment of this
/// process maps it (only a peer's scribble makes a mapped segment look
/// unfinished).
///
/// # Errors
/// [`Error::InUseByRawMapping`] if live raw mappings of this process map
/// it.
pub(super) fn register_only_segment(
    name: &str,
    object: ObjectId,
) -> Result<Option<(Registration, Arc<Placements>)>> {
    // One lock: nothing can map the object between the check and the
    // registration.
    let mut objects = OBJECTS.lock();
    if objects.get().get(&object).is_some_and(|e| e.segments > 0) {
        return Ok(None);
    }
    // Refuses live raw mappings.
    register_locked(&mut objects, name, object, Role::Segment).map(Some)
}

impl Drop for Registration {
    fn drop(&mut self) {
        let (object, role) = (self.object, self.role);
        OBJECTS.lock().change(|map| {
            if let Some(e) = map.get_mut(&object) {
                let n = e.count(role);
                *n = n.saturating_sub(1);
                if e.raw == 0 && e.segments == 0 {
                    map.remove(&object);
                }
            }
        });
    }
}

/// `(raw, segments)` mappings of `object` in this process; `None` when the
/// registry has no entry for it.
#[cfg(test)]
pub(super) fn counts(object: ObjectId) -> Option<(usize, usize)> {
    OBJECTS
        .lock()
        .get()
        .get(&object)
        .map(|e| (e.raw, e.segments))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// An identity no real object has (unit tests share the registry with
    /// every other test of the process, so each takes its own).
    fn fake() -> ObjectId {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        ObjectId {
            dev: u64::MAX,
            ino: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }

    #[test]
    fn raw_mappings_share_one_table_and_leave_with_the_last() {
        let id = fake();
        let (a, ta) = register("/a", id, Role::Raw).unwrap();
        let (b, tb) = register("/a", id, Role::Raw).unwrap();
        assert!(Arc::ptr_eq(&ta, &tb));
        assert_eq!(counts(id), Some((2, 0)));
        drop(a);
        assert_eq!(counts(id), Some((1, 0)));
        drop(b);
        assert_eq!(counts(id), None);
        // A later mapping gets a fresh table.
        let (_c, tc) = register("/a", id, Role::Raw).unwrap();
        assert!(!Arc::ptr_eq(&ta, &tc));
    }

    #[test]
    fn a_segment_rewritten_from_scratch_must_be_alone() {
        let id = fake();
        let (claim, _) = register_only_segment("/c", id).unwrap().unwrap();
        assert_eq!(counts(id), Some((0, 1)));
        // While claimed: no raw mapping, and no second claim.
        assert!(matches!(
            register("/c", id, Role::Raw),
            Err(Error::InUseBySegment { .. })
        ));
        assert!(register_only_segment("/c", id).unwrap().is_none());
        drop(claim);
        assert_eq!(counts(id), None);
        let (raw, _) = register("/c", id, Role::Raw).unwrap();
        match register_only_segment("/c", id) {
            Err(Error::InUseByRawMapping { name, mappings: 1 }) => assert_eq!(name, "/c"),
            other => panic!("{other:?}"),
        }
        drop(raw);
        assert_eq!(counts(id), None);
    }

    #[test]
    fn raw_mappings_and_segments_exclude_each_other() {
        let id = fake();
        let (s1, _) = register("/s", id, Role::Segment).unwrap();
        let (s2, _) = register("/s", id, Role::Segment).unwrap();
        match register("/s", id, Role::Raw) {
            Err(Error::InUseBySegment { name }) => assert_eq!(name, "/s"),
            other => panic!("{other:?}"),
        }
        assert_eq!(counts(id), Some((0, 2)));
        drop((s1, s2));
        let (r, _) = register("/s", id, Role::Raw).unwrap();
        match register("/s", id, Role::Segment) {
            Err(Error::InUseByRawMapping { name, mappings: 1 }) => assert_eq!(name, "/s"),
            other => panic!("{other:?}"),
        }
        drop(r);
        assert_eq!(counts(id), None);
        assert!(register("/s", id, Role::Segment).is_ok());
        assert_eq!(counts(id), None, "the Ok's registration was dropped");
    }
}
