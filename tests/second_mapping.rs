//! One shared memory object mapped twice in one process (DESIGN.md rule 2):
//! every raw mapping of an object shares one placement table, and raw
//! mappings and segments of one object never coexist in a process. Each
//! way of aliasing a `&T` through a second mapping gets a typed `Err`; the
//! uses that do not conflict (two raw mappings, a segment opened twice, a
//! forked or spawned child mapping by name, a mapping after the last one
//! was dropped) still work.

use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use shmutils::{
    AbsoluteMemory, Error, Lock, MapFlags, MapProtections, MappedMemory, Mode, Segment, ShmFd,
};
use shmutils_workspace::{fork, ShmName};

const RW: MapProtections = MapProtections::READ_WRITE;
const SEG: usize = 1 << 20;

/// A fresh object of `len` bytes, unlinked when the name drops.
fn object(tag: &str, len: u64) -> (ShmName, ShmFd) {
    let name = ShmName::new(tag);
    let fd = ShmFd::open(&name, Mode::CreateExclusive).unwrap();
    fd.truncate(len).unwrap();
    (name, fd)
}

/// A read-write shared mapping of all of `fd`.
fn map(fd: &ShmFd) -> shmutils::Result<MappedMemory> {
    MappedMemory::new(None, fd.size()? as usize, RW, MapFlags::SHARED, Some(fd))
}

fn in_use_by_segment<T: std::fmt::Debug>(r: shmutils::Result<T>, name: &str) {
    match r {
        Err(Error::InUseBySegment { name: n }) => assert_eq!(n, name),
        other => panic!("expected InUseBySegment, got {other:?}"),
    }
}

fn in_use_by_raw<T: std::fmt::Debug>(r: shmutils::Result<T>, name: &str, mappings: usize) {
    match r {
        Err(Error::InUseByRawMapping {
            name: n,
            mappings: k,
        }) => assert_eq!((n.as_str(), k), (name, mappings)),
        other => panic!("expected InUseByRawMapping, got {other:?}"),
    }
}

fn aliased<T: std::fmt::Debug>(r: shmutils::Result<T>) -> (String, String) {
    match r {
        Err(Error::Aliased { object, found }) => (object, found),
        other => panic!("expected Aliased, got {other:?}"),
    }
}

fn mismatch<T: std::fmt::Debug>(r: shmutils::Result<T>) -> String {
    match r {
        Err(Error::TypeMismatch { found, .. }) => found,
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
}

/// The soundness hole itself: a typed reference from a segment's heap,
/// then a raw mapping of the same object that could write under it. The
/// raw mapping is refused, in every form, and the reference keeps its value.
#[test]
fn a_segment_refuses_raw_mappings_of_its_object() {
    let name = ShmName::new("seg-raw");
    let seg = Segment::create(&name, SEG).unwrap();
    let p = seg.heap().new(5u64).unwrap();
    let r: &u64 = seg.heap().get(p).unwrap();
    let fd = ShmFd::open(&name, Mode::ReadWrite).unwrap();

    let e = MappedMemory::new(None, seg.size(), RW, MapFlags::SHARED, Some(&fd)).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(name.as_str()), "{msg}");
    assert!(msg.contains("heap"), "{msg}");
    in_use_by_segment(Err::<(), _>(e), &name);

    // Read-only, private, at a fixed address, through a read-only
    // descriptor: each could read bytes the heap's references store to.
    let ro = ShmFd::open(&name, Mode::ReadOnly).unwrap();
    for (prot, flags, fd) in [
        (MapProtections::READ, MapFlags::SHARED, &fd),
        (RW, MapFlags::PRIVATE, &fd),
        (MapProtections::READ, MapFlags::PRIVATE, &fd),
        (MapProtections::READ, MapFlags::SHARED, &ro),
    ] {
        in_use_by_segment(MappedMemory::new(None, 4096, prot, flags, Some(fd)), &name);
    }
    in_use_by_segment(AbsoluteMemory::map_shareable(SEG, RW, Some(&fd)), &name);
    assert_eq!(*r, 5);

    // Another segment of the object is fine, and sees the same value.
    let again = Segment::open(&name).unwrap();
    assert_eq!(*again.heap().get(p).unwrap(), 5);
    drop(again);
    drop(seg);
    // With no segment left, the object may be mapped raw.
    let m = map(&fd).unwrap();
    assert_eq!(
        m.at(p.offset() as usize..p.offset() as usize + 8).unwrap(),
        5u64.to_ne_bytes()
    );
}

/// The other order: a raw mapping first, then a `Segment` of the object.
#[test]
fn a_raw_mapping_refuses_segments_of_its_object() {
    let name = ShmName::new("raw-seg");
    let id = Segment::create(&name, SEG).unwrap().id();
    let fd = ShmFd::open(&name, Mode::ReadWrite).unwrap();
    let m = map(&fd).unwrap();
    let e = Segment::open(&name).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(name.as_str()), "{msg}");
    assert!(msg.contains("MappedMemory"), "{msg}");
    in_use_by_raw(Err::<(), _>(e), &name, 1);
    in_use_by_raw(Segment::open_or_create(&name, SEG), &name, 1);

    // A read-only mapping and an absolute one count too.
    let ro = MappedMemory::new(
        None,
        4096,
        MapProtections::READ,
        MapFlags::SHARED,
        Some(&fd),
    )
    .unwrap();
    let abs = AbsoluteMemory::map_shareable(SEG, RW, Some(&fd)).unwrap();
    in_use_by_raw(Segment::open(&name), &name, 3);
    drop((m, ro));
    in_use_by_raw(Segment::open(&name), &name, 1);
    drop(abs);
    assert_eq!(Segment::open(&name).unwrap().id(), id);
}

/// Issue 8's third case across two values: `m1.get::<u64>(0)` and a write
/// or another type through `m2`. Both mappings share one table, so each
/// sees what the other placed.
#[test]
fn two_raw_mappings_share_one_placement_table() {
    let (name, fd) = object("twice", 8192);
    let m1 = map(&fd).unwrap();
    let mut m2 = map(&fd).unwrap();
    m2.write(0, &5u64.to_ne_bytes()).unwrap(); // nothing placed yet
    let r = m1.get::<u64>(0).unwrap();

    let (object, found) = aliased(m2.write(0, &9u64.to_ne_bytes()));
    assert_eq!(
        object,
        format!("bytes 0..8 of shared memory {:?}", name.as_str())
    );
    assert!(found.contains("u64 (size 8, align 8"), "{found}");
    assert!(
        found.contains("placed at bytes 0..8 through another mapping"),
        "{found}"
    );
    aliased(m2.write(7, &[1, 2]));
    aliased(m2.init(0, 9u64));
    aliased(m2.init(4, AtomicU32::new(9)));
    assert!(mismatch(m2.get::<AtomicU64>(0)).ends_with("placed at bytes 0..8"));
    mismatch(m2.get::<AtomicU32>(4));
    mismatch(m2.at(0..8));
    mismatch(m2.read(4, &mut [0; 8]));
    assert_eq!(*r, 5);

    // The same type at the same offset is the same value through either.
    assert_eq!(*m2.get::<u64>(0).unwrap(), 5);
    // What m2 places, m1 sees.
    let a = m2.get::<AtomicU32>(64).unwrap();
    a.store(7, Ordering::Relaxed);
    mismatch(m1.get::<u32>(64));
    mismatch(m1.at(62..66));
    assert_eq!(m1.get::<AtomicU32>(64).unwrap().load(Ordering::Relaxed), 7);
    // Unplaced bytes stay bytes for both.
    m2.write(128, b"both").unwrap();
    assert_eq!(m1.at(128..132).unwrap(), b"both");
    assert_eq!(*r, 5);

    // Letting go: m2's hold on bytes 0..8 goes, m1's stays.
    m2.clear_placements(0..8);
    aliased(m2.write(0, &9u64.to_ne_bytes()));
    // m1 holds both placements (0..8 alone, 64..68 with m2); dropping it
    // forgets the first and leaves the second to m2.
    drop(m1);
    m2.write(0, &9u64.to_ne_bytes()).unwrap();
    assert_eq!(m2.at(0..8).unwrap(), 9u64.to_ne_bytes());
    mismatch(m2.at(64..68));
    m2.write(64, &8u32.to_ne_bytes()).unwrap();
    assert_eq!(m2.get::<AtomicU32>(64).unwrap().load(Ordering::Relaxed), 8);
}

/// A lock placed through one mapping: another mapping can neither write
/// its bytes nor view them as another type, and gets the same lock.
#[test]
fn a_lock_placed_through_one_mapping_is_the_same_lock_through_another() {
    let (_name, fd) = object("lock-twice", 4096);
    let mut m1 = map(&fd).unwrap();
    let mut m2 = map(&fd).unwrap();
    let lock = m1.init(256, Lock::new(1923u64)).unwrap();
    let guard = lock.lock().unwrap();
    aliased(m2.write(256, &[0; 4]));
    mismatch(m2.get::<AtomicU32>(256));
    mismatch(m2.get::<Lock<u32>>(256));
    let same = m2.get::<Lock<u64>>(256).unwrap();
    assert!(same.try_lock().is_err(), "held through the other mapping");
    drop(guard);
    *same.lock().unwrap() += 1;
    assert_eq!(*lock.lock().unwrap(), 1924);
}

/// An `AbsoluteMemory` is a raw mapping like any other: it shares the
/// table of a relative mapping of the same object.
#[test]
fn absolute_and_relative_mappings_of_one_object_share_the_table() {
    let (_name, fd) = object("abs-rel", 4 * 4096);
    let rel = map(&fd).unwrap();
    let mut abs = AbsoluteMemory::map_shareable(4 * 4096, RW, Some(&fd)).unwrap();
    rel.get::<AtomicU64>(64)
        .unwrap()
        .store(1923, Ordering::Relaxed);
    let at = abs.abs_address_at(64).unwrap();
    mismatch(abs.absolute_at(at..at + 8));
    aliased(abs.write(64, &[0; 8]));
    mismatch(abs.get::<u64>(64));
    assert_eq!(
        abs.get::<AtomicU64>(64).unwrap().load(Ordering::Relaxed),
        1923
    );
    abs.write(128, b"abs").unwrap();
    assert_eq!(rel.at(128..131).unwrap(), b"abs");
}

/// A private mapping reads the object's pages until it writes them, so it
/// shares the table too.
#[test]
fn private_mappings_of_the_object_share_the_table() {
    let (_name, fd) = object("private", 4096);
    let shared = map(&fd).unwrap();
    let mut private = MappedMemory::new(None, 4096, RW, MapFlags::PRIVATE, Some(&fd)).unwrap();
    let v = shared.get::<AtomicU64>(0).unwrap();
    mismatch(private.get::<u64>(0));
    mismatch(private.at(0..8));
    aliased(private.write(0, &[1; 8]));
    v.store(5, Ordering::Relaxed);
    private.write(8, &[1; 8]).unwrap();
    assert_eq!(
        shared.at(8..16).unwrap(),
        [0; 8],
        "private writes stay private"
    );
}

/// Threads claiming the same bytes as different types through two
/// mappings: for each offset exactly one type wins, whichever mapping it
/// went through.
#[test]
fn racing_claims_through_two_mappings_agree_on_one_type() {
    let (_name, fd) = object("race-twice", 4096);
    let (m1, m2) = (map(&fd).unwrap(), map(&fd).unwrap());
    let wins: Vec<Vec<bool>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|k| {
                let m = if k < 2 { &m1 } else { &m2 };
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
    // Threads 0 and 2 asked for AtomicU64 (through m1 and m2), 1 and 3
    // for u64 (likewise).
    let [a0, p1, a2, p3] = &wins[..] else {
        panic!("four threads")
    };
    let outcomes = a0.iter().zip(a2).zip(p1.iter().zip(p3));
    for (i, ((a0, a2), (p1, p3))) in outcomes.enumerate() {
        let off = i * 16;
        assert!(
            a0 == a2 && p1 == p3,
            "offset {off}: a type won through one mapping only"
        );
        assert!(a0 != p1, "offset {off}: both types or neither won");
    }
}

/// Two `Segment`s of one object are fine: each sees the other's blocks,
/// and either survives the other.
#[test]
fn a_segment_opened_twice_works() {
    let name = ShmName::new("seg-twice");
    let seg = Segment::create(&name, SEG).unwrap();
    let again = Segment::open(&name).unwrap();
    let third = Segment::open_or_create(&name, SEG).unwrap();
    assert!(!third.created());
    let p = seg.heap().new(AtomicU64::new(1)).unwrap();
    again.heap().get(p).unwrap().fetch_add(1, Ordering::SeqCst);
    assert_eq!(third.heap().get(p).unwrap().load(Ordering::SeqCst), 2);
    let q = again.heap().new(7u64).unwrap();
    assert_eq!(*seg.heap().get(q).unwrap(), 7);
    drop(seg);
    assert_eq!(*again.heap().get(q).unwrap(), 7);
    let fd = ShmFd::open(&name, Mode::ReadWrite).unwrap();
    in_use_by_segment(map(&fd), &name);
    drop((again, third));
    assert!(map(&fd).is_ok());
}

/// Registry entries go with the last mapping: a later mapping starts with
/// an empty table, and the other kind of mapping is allowed again. A
/// detached mapping leaves the registry at once.
#[test]
fn the_last_mapping_dropped_or_detached_leaves_the_registry() {
    let (_name, fd) = object("last", 4096);
    let m1 = map(&fd).unwrap();
    m1.get::<AtomicU64>(0)
        .unwrap()
        .store(1923, Ordering::Relaxed);
    drop(m1);
    let m2 = map(&fd).unwrap();
    // The AtomicU64 placement went with m1: the bytes are free to claim.
    assert_eq!(m2.at(0..8).unwrap(), 1923u64.to_ne_bytes());
    assert_eq!(*m2.get::<u64>(0).unwrap(), 1923);
    drop(m2);

    let name = ShmName::new("last-seg");
    drop(Segment::create(&name, SEG).unwrap());
    let sfd = ShmFd::open(&name, Mode::ReadWrite).unwrap();
    drop(map(&sfd).unwrap());
    drop(Segment::open(&name).unwrap());
    let raw = map(&sfd).unwrap();
    in_use_by_raw(Segment::open(&name), &name, 1);
    let (addr, len) = raw.detach();
    let seg = Segment::open(&name).unwrap();
    assert_eq!(seg.name(), Some(name.as_str()));
    // SAFETY: the detached mapping is ours, and nothing references it.
    unsafe { shmutils::munmap(addr, len) }.unwrap();
    drop(seg);
    assert!(map(&sfd).is_ok());
}

/// Anonymous mappings have no object to share: each keeps its own table.
#[test]
fn anonymous_mappings_are_unaffected() {
    let anon = || MappedMemory::new(None, 4096, RW, MapFlags::SHARED, None).unwrap();
    let (m1, mut m2) = (anon(), anon());
    assert_eq!(*m1.get::<u64>(0).unwrap(), 0);
    m2.get::<AtomicU64>(0).unwrap();
    m2.write(0, &[1; 8]).unwrap();
    assert_eq!(m1.at(8..16).unwrap(), [0; 8]);
    let seg = Segment::anonymous(Segment::min_size()).unwrap();
    assert!(seg.heap().new(1u64).is_ok());
    assert!(anon().get::<AtomicU64>(0).is_ok());
}

/// A forked child inherits the registry with the parent's mappings and
/// segments: it cannot map the segment's object raw, may open it as a
/// segment, and a mapping it makes of the raw-mapped object by name shares
/// the parent's table (the parent's references are in its memory).
#[test]
fn a_forked_child_inherits_the_registry() {
    let seg_name = ShmName::new("fork-seg");
    let seg = Segment::create(&seg_name, SEG).unwrap();
    let p = seg.heap().new(AtomicU64::new(1)).unwrap();
    let (raw_name, fd) = object("fork-raw", SEG as u64);
    let m = map(&fd).unwrap();
    let v = m.get::<AtomicU64>(64).unwrap();
    v.store(10, Ordering::SeqCst);
    let child = fork(|| {
        let mut failed = 0;
        let seg_fd = ShmFd::open(&seg_name, Mode::ReadWrite).unwrap();
        if !matches!(map(&seg_fd), Err(Error::InUseBySegment { .. })) {
            failed |= 1;
        }
        match Segment::open(&seg_name) {
            Ok(s) => {
                s.heap().get(p).unwrap().fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => failed |= 2,
        }
        if !matches!(
            Segment::open(&raw_name),
            Err(Error::InUseByRawMapping { mappings: 1, .. })
        ) {
            failed |= 4;
        }
        let Ok(mut mine) = map(&ShmFd::open(&raw_name, Mode::ReadWrite).unwrap()) else {
            return failed | 8;
        };
        if !matches!(mine.get::<u64>(64), Err(Error::TypeMismatch { .. }))
            || !matches!(mine.write(64, &[0; 8]), Err(Error::Aliased { .. }))
        {
            failed |= 16;
        }
        match mine.get::<AtomicU64>(64) {
            Ok(w) if std::ptr::eq(w, v) => failed |= 32, // another address, same value
            Ok(w) => {
                w.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => failed |= 32,
        }
        failed
    });
    assert_eq!(child.wait(), 0, "bit set = check failed in the child");
    assert_eq!(seg.heap().get(p).unwrap().load(Ordering::SeqCst), 2);
    assert_eq!(v.load(Ordering::SeqCst), 11);
}

/// A spawned child starts with an empty registry: it maps by name, raw,
/// an object that a `Segment` of this process maps. It is a peer.
#[test]
fn a_spawned_child_maps_raw_what_a_segment_here_maps() {
    let name = ShmName::new("spawn-seg");
    let seg = Segment::create(&name, SEG).unwrap();
    let p = seg.heap().new(AtomicU64::new(1923)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_child-mmap"))
        .args(["count", &name, &p.offset().to_string(), "8900"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1923");
    assert_eq!(seg.heap().get(p).unwrap().load(Ordering::SeqCst), 8900);
}
