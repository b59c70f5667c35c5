//! Typed placement: [`MappedMemory::init`], [`MappedMemory::get`] and
//! [`MappedMemory::clear_placements`], which hand out `&T` for [`Shared`]
//! types as the mapping's placement table allows. The rules, and why they
//! make every `&T` sound, are in the [`mmap` module docs](super#typed-placement).

use super::placements::Placement;
use super::MappedMemory;
use crate::error::{Error, Result};
use crate::shared::Shared;

impl MappedMemory {
    /// Checks that a `T` fits at `offset` and is aligned there, and returns
    /// its address. Placement is not checked: dereferencing the pointer is
    /// the caller's responsibility.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`].
    pub fn check_typed<T>(&self, offset: usize) -> Result<*mut T> {
        self.check_range(offset, std::mem::size_of::<T>())?;
        let align = std::mem::align_of::<T>();
        let addr = self.as_ptr() as usize + offset;
        if addr % align != 0 {
            return Err(Error::Misaligned { offset, align });
        }
        Ok(addr as *mut T)
    }

    /// Places `value` at `offset` and returns a reference to it. Whatever
    /// this mapping placed over those bytes before is forgotten: they are a
    /// `T` from now on ([typed placement](super#typed-placement)).
    ///
    /// `&mut self` makes this the only access to the mapping from this
    /// process; another mapping of the same object in this process that
    /// holds a value on the bytes makes it an [`Error::Aliased`]. Other
    /// processes must not use the bytes before the value is published to
    /// them (DESIGN.md rule 4).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use shmutils::{MapFlags, MapProtections, MappedMemory};
    /// let mut m = MappedMemory::new(None, 4096, MapProtections::READ_WRITE, MapFlags::SHARED, None)?;
    /// m.init(64, AtomicU64::new(1923))?;
    /// let v = m.get::<AtomicU64>(64)?;            // the same value again
    /// v.store(8900, Ordering::Relaxed);
    /// assert!(m.get::<u64>(64).is_err());         // not as another type
    /// assert!(m.at(64..72).is_err());             // nor as bytes
    /// # Ok::<(), shmutils::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::OutOfBounds`], [`Error::Misaligned`], [`Error::ReadOnly`];
    /// [`Error::Aliased`] when another mapping of the object in this
    /// process holds a value placed on any of the bytes.
    pub fn init<T: Shared>(&mut self, offset: usize, value: T) -> Result<&T> {
        self.check_writable()?;
        let p = self.check_typed::<T>(offset)?;
        // Held until the value is written, so no other mapping of the
        // object can hand out a reference to it (or copy its bytes) while
        // it is half-written.
        let mut table = self.claim.lock();
        table.replace(self.claim.id(), offset, Placement::of::<T>())?;
        // SAFETY: `p` is in bounds and aligned for T in the live writable
        // mapping; no reference into these bytes is alive in this process:
        // `&mut self` rules out this mapping's, the table showed no other
        // mapping of the object holds a value on them, the lock keeps any
        // from placing one until the write is done, and no `Segment` of the
        // object exists beside a raw mapping (registry).
        unsafe { p.write(value) };
        drop(table);
        // SAFETY: bit-validity: the bytes hold `value`, a T. Aliasing and
        // lifetime: the reference borrows `self` mutably, so until it dies
        // no other accessor of this mapping can run and the mapping cannot
        // be unmapped; another mapping of the object can only add a `&T`
        // to the same value (`get`), and cannot write or copy bytes this
        // mapping holds. Type: the table now records a T at `offset` held
        // by this mapping, so no mapping of the object in this process
        // hands out another type over these bytes.
        Ok(unsafe { &*p })
    }

    /// Returns a reference to the `T` at `offset`: the one placed there
    /// with [`init`](Self::init) or an earlier `get` (through this mapping
    /// or another mapping of the same object in this process), or, if
    /// nothing placed overlaps its bytes, the bytes as they are (any bytes
    /// make a valid `T`, [`Shared`]), which are a `T` from now on.
    ///
    /// ```
    /// use shmutils::{Error, MapFlags, MapProtections, MappedMemory, RawLock};
    /// let m = MappedMemory::new(None, 4096, MapProtections::READ_WRITE, MapFlags::SHARED, None)?;
    /// let lock = m.get::<RawLock>(0)?;            // zeroed bytes: an unlocked lock
    /// assert!(std::ptr::eq(lock, m.get::<RawLock>(0)?));
    /// assert!(matches!(m.get::<u32>(0), Err(Error::TypeMismatch { .. })));
    /// # Ok::<(), shmutils::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::OutOfBounds`], [`Error::Misaligned`];
    /// [`Error::TypeMismatch`] when a value of another type, or at another
    /// offset, is placed over any of the bytes (the message names both);
    /// [`Error::ReadOnly`] for a mapping that is not read-write (a `Shared`
    /// type may mutate through `&T`, which would fault on a read-only page).
    pub fn get<T: Shared>(&self, offset: usize) -> Result<&T> {
        self.check_writable()?;
        let p = self.check_typed::<T>(offset)?;
        self.claim
            .lock()
            .claim(self.claim.id(), offset, Placement::of::<T>())?;
        // SAFETY: `p` is in bounds, aligned for T, in the live read-write
        // mapping. Bit-validity: every bit pattern is a valid T (Shared).
        // Aliasing and lifetime: the reference borrows `self`, so the
        // mapping stays mapped and its writers that take `&mut self`
        // (`write`, `init`, `clear_placements`, drop) cannot run while it
        // lives. The table, shared by every raw mapping of the object in
        // this process, holds a T at exactly `offset` with this mapping
        // among its holders: every other reference any of them hands out
        // over these bytes is a `&T` to the same value (mutating only
        // through T's own atomics or locks), byte copies refuse them, and
        // the other mappings' `write` and `init` refuse them until this
        // mapping releases its hold (`clear_placements`, drop, detach:
        // none can run while the reference lives). No `Segment` of the
        // object exists beside a raw mapping (registry). Type: the bytes
        // were placed as a T by `init`/`get`, or were unclaimed and are
        // claimed as a T now. Writers in other processes (peers) mutate
        // through atomics and locks only (module docs).
        Ok(unsafe { &*p })
    }

    /// Forgets this mapping's placements overlapping `range`, so their
    /// bytes can be read as bytes or placed as another type. With `&mut
    /// self`, no reference this mapping handed out is alive. A placement
    /// that another mapping of the same object in this process also holds
    /// stays, until that mapping lets it go too.
    ///
    /// ```
    /// use shmutils::{MapFlags, MapProtections, MappedMemory};
    /// let mut m = MappedMemory::new(None, 4096, MapProtections::READ_WRITE, MapFlags::SHARED, None)?;
    /// m.get::<u64>(8)?;
    /// assert!(m.at(0..16).is_err());
    /// m.clear_placements(0..16);
    /// assert_eq!(m.at(0..16)?, [0; 16]);
    /// # Ok::<(), shmutils::Error>(())
    /// ```
    pub fn clear_placements(&mut self, range: std::ops::Range<usize>) {
        self.claim.lock().release(self.claim.id(), range);
    }
}

#[cfg(test)]
mod tests {
    use crate::lock::RawMutex;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    use crate::error::Error;
    use crate::mmap::tests::anon;

    fn mismatch<T: std::fmt::Debug>(r: crate::Result<T>) -> (String, String, String) {
        match r {
            Err(Error::TypeMismatch {
                object,
                expected,
                found,
            }) => (object, expected, found),
            other => panic!("expected TypeMismatch, got {other:?}"),
        }
    }

    #[test]
    fn typed_placement_checks_alignment_and_bounds() {
        let mut m = anon(4096);
        assert_eq!(*m.init(8, 1923u64).unwrap(), 1923);
        assert_eq!(*m.get::<u64>(8).unwrap(), 1923);
        assert!(matches!(
            m.get::<u64>(4),
            Err(Error::Misaligned {
                offset: 4,
                align: 8
            })
        ));
        assert!(matches!(m.get::<u64>(4092), Err(Error::OutOfBounds { .. })));
        assert!(matches!(m.init(4081, 1u64), Err(Error::Misaligned { .. })));
    }

    #[test]
    fn another_type_at_the_same_offset_is_refused() {
        let m = anon(4096);
        let plain = m.get::<u64>(0).unwrap();
        let (object, expected, found) = mismatch(m.get::<AtomicU64>(0));
        assert_eq!(object, "bytes 0..8 of the mapping");
        assert!(
            expected.contains("AtomicU64 (size 8, align 8"),
            "{expected}"
        );
        assert!(found.contains("u64 (size 8, align 8"), "{found}");
        assert!(!found.contains("Atomic"), "{found}");
        assert!(found.ends_with("placed at bytes 0..8"), "{found}");
        assert_eq!(*plain, 0);
        // The other way round, elsewhere.
        m.get::<AtomicU64>(64).unwrap().store(5, Ordering::Relaxed);
        mismatch(m.get::<u64>(64));
        // A smaller type inside a placed one, at its start or further in.
        mismatch(m.get::<AtomicU32>(64));
        mismatch(m.get::<AtomicU32>(68));
    }

    #[test]
    fn an_overlap_at_another_offset_is_refused() {
        let m = anon(4096);
        m.get::<u64>(8).unwrap();
        let (object, _, found) = mismatch(m.get::<[u32; 2]>(4));
        assert_eq!(object, "bytes 4..12 of the mapping");
        assert!(found.ends_with("placed at bytes 8..16"), "{found}");
        // Same type, shifted by 4 (u32-aligned view of the same type).
        m.get::<u32>(32).unwrap();
        m.get::<u32>(36).unwrap();
        let (object, _, found) = mismatch(m.get::<u64>(32));
        assert_eq!(object, "bytes 32..40 of the mapping");
        assert!(found.ends_with("placed at bytes 36..40"), "{found}");
        // A wider type straddling two placements.
        mismatch(m.get::<[u64; 2]>(0));
        // Next to a placement is fine.
        m.get::<u64>(0).unwrap();
        m.get::<u64>(16).unwrap();
    }

    #[test]
    fn the_same_type_at_the_same_offset_is_the_same_reference() {
        let m = anon(4096);
        let a = m.get::<AtomicU64>(128).unwrap();
        let b = m.get::<AtomicU64>(128).unwrap();
        assert!(std::ptr::eq(a, b));
        a.store(1923, Ordering::Relaxed);
        assert_eq!(b.load(Ordering::Relaxed), 1923);
    }

    #[test]
    fn byte_copies_refuse_placed_ranges_only() {
        let mut m = anon(4096);
        m.write(0, b"abcdefgh").unwrap();
        m.get::<AtomicU32>(16).unwrap();
        for range in [12..17, 16..20, 19..24, 0..4096] {
            let (object, expected, found) = mismatch(m.at(range.clone()));
            assert_eq!(
                object,
                format!("bytes {}..{} of the mapping", range.start, range.end)
            );
            assert!(expected.starts_with("raw bytes"), "{expected}");
            assert!(found.ends_with("placed at bytes 16..20"), "{found}");
            let mut buf = vec![0; range.len()];
            mismatch(m.read(range.start, &mut buf));
        }
        assert_eq!(m.at(0..8).unwrap(), b"abcdefgh");
        assert_eq!(m.at(8..16).unwrap(), [0; 8]);
        assert_eq!(m.at(20..24).unwrap(), [0; 4]);
        assert_eq!(m.at(16..16).unwrap(), Vec::<u8>::new());
        // Writing needs `&mut`, so no reference is alive; the placement
        // stays, and so does the refusal.
        m.write(16, &7u32.to_ne_bytes()).unwrap();
        mismatch(m.at(16..20));
        assert_eq!(m.get::<AtomicU32>(16).unwrap().load(Ordering::Relaxed), 7);
        // SAFETY: the slice is never made (the call refuses).
        mismatch(unsafe { m.bytes(0..4096) });
        m.clear_placements(18..19);
        assert_eq!(m.at(16..20).unwrap(), 7u32.to_ne_bytes());
    }

    #[test]
    fn init_replaces_what_it_overlaps() {
        let mut m = anon(4096);
        m.get::<u64>(0).unwrap();
        m.get::<u64>(8).unwrap();
        m.get::<u64>(24).unwrap();
        assert_eq!(
            m.init(4, AtomicU32::new(9))
                .unwrap()
                .load(Ordering::Relaxed),
            9
        );
        // 0..8 is gone (replaced), 8..16 and 24..32 are untouched.
        assert_eq!(m.get::<AtomicU32>(4).unwrap().load(Ordering::Relaxed), 9);
        mismatch(m.get::<u64>(0));
        assert_eq!(m.at(0..4).unwrap(), [0; 4]);
        m.get::<u64>(8).unwrap();
        m.get::<u64>(24).unwrap();
        // A wide value swallows several placements.
        m.init(0, [1u64; 4]).unwrap();
        assert_eq!(*m.get::<[u64; 4]>(0).unwrap(), [1; 4]);
        mismatch(m.get::<u64>(8));
        mismatch(m.get::<u64>(24));
        // And `init` over an identical placement simply writes.
        m.init(0, [2u64; 4]).unwrap();
        assert_eq!(*m.get::<[u64; 4]>(0).unwrap(), [2; 4]);
    }

    /// Threads racing to claim the same bytes as different types: for each
    /// offset exactly one type wins, and every loser gets a TypeMismatch.
    #[test]
    fn racing_claims_agree_on_one_type() {
        let m = anon(4096);
        let wins: Vec<Vec<bool>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|k| {
                    let m = &m;
                    s.spawn(move || {
                        (0..256)
                            .map(|i| {
                                let off = i * 16;
                                let r = if k % 2 == 0 {
                                    m.get::<AtomicU64>(off).map(|_| ())
                                } else {
                                    m.get::<u64>(off).map(|_| ())
                                };
                                match r {
                                    Ok(()) => true,
                                    Err(Error::TypeMismatch { .. }) => false,
                                    Err(e) => panic!("{e}"),
                                }
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let [a0, p1, a2, p3] = &wins[..] else {
            panic!("four threads")
        };
        for i in 0..256 {
            let (atomic, plain) = (a0[i] || a2[i], p1[i] || p3[i]);
            assert!(atomic != plain, "offset {}: both or neither won", i * 16);
            assert_eq!((a0[i], p1[i]), (a2[i], p3[i]), "offset {}", i * 16);
        }
    }

    #[test]
    fn raw_locks_from_a_mapping_go_through_the_table() {
        use crate::lock::{RawLock, RawRLock};
        let m = anon(4096);
        let a = RawLock::from_mapping(&m, 64).unwrap();
        assert!(std::ptr::eq(a, RawLock::from_mapping(&m, 64).unwrap()));
        // An RLock over the same bytes, or a plain word, is another type.
        mismatch(RawRLock::from_mapping(&m, 64));
        mismatch(m.get::<u32>(64));
        m.get::<u32>(128).unwrap();
        mismatch(RawLock::from_mapping(&m, 128));
        a.lock().unwrap();
        assert!(a.is_held_by_current_thread());
        // SAFETY: this thread holds the lock.
        unsafe { a.unlock() };
    }
}
