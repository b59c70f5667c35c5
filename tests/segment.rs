//! Segments: create / open / open_or_create / anonymous, header
//! validation against truncated, foreign and scribbled-over objects, and
//! the unlink rules.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmutils::{Error, MapFlags, MapProtections, MappedMemory, Mode, RelSlice, Segment, ShmFd};
use shmutils_workspace::{fork, Child, ShmName};

const SIZE: usize = 1 << 20;

/// Writes `bytes` at `offset` of the named object through a plain mapping,
/// as a peer would: no `Segment` of the object may be alive in this
/// process meanwhile (`Error::InUseBySegment`).
fn scribble(name: &str, offset: usize, bytes: &[u8]) {
    let fd = ShmFd::open(name, Mode::ReadWrite).unwrap();
    let mut m = MappedMemory::new(
        None,
        fd.size().unwrap() as usize,
        MapProtections::READ_WRITE,
        MapFlags::SHARED,
        Some(&fd),
    )
    .unwrap();
    m.write(offset, bytes).unwrap();
}

#[test]
fn create_then_open_sees_the_same_segment() {
    let name = ShmName::new("seg");
    let seg = Segment::create(&name, SIZE).unwrap();
    assert_eq!(seg.name(), Some(name.as_str()));
    assert_eq!(seg.size(), SIZE);
    assert!(seg.created());
    assert_eq!(seg.creator_pid(), std::process::id());
    let p = seg.heap().find_or_init("hello", || 1923u64).unwrap();
    let other = Segment::open(&name).unwrap();
    assert!(!other.created());
    assert_eq!(other.id(), seg.id());
    assert_eq!(other.heap().find::<u64>("hello").unwrap(), p);
    assert_eq!(*other.heap().get(p).unwrap(), 1923);
    // Another segment gets another random id.
    let name2 = ShmName::new("seg2");
    assert_ne!(Segment::create(&name2, SIZE).unwrap().id(), seg.id());
}

#[test]
fn create_is_exclusive_and_open_needs_the_name() {
    let name = ShmName::new("excl");
    let _seg = Segment::create(&name, SIZE).unwrap();
    assert!(matches!(
        Segment::create(&name, SIZE),
        Err(Error::Exists { .. })
    ));
    let missing = ShmName::new("missing");
    assert!(matches!(
        Segment::open(&missing),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn zero_length_and_one_page_segments_are_typed_errors() {
    let min = Segment::min_size() as u64;
    for size in [0usize, 4096] {
        let name = ShmName::new("tiny");
        match Segment::create(&name, size) {
            Err(Error::SegmentTooSmall { size: s, min: m }) => {
                assert_eq!((s, m), (size as u64, min))
            }
            other => panic!("create of {size} bytes gave {other:?}"),
        }
        // Checked before anything was created.
        assert!(matches!(
            ShmFd::open(&name, Mode::ReadOnly),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            Segment::anonymous(size),
            Err(Error::SegmentTooSmall { .. })
        ));
        // An existing object of that size is refused before it is mapped;
        // an empty one is what a creator killed right after shm_open
        // leaves.
        let fd = ShmFd::open(&name, Mode::CreateExclusive).unwrap();
        fd.truncate(size as u64).unwrap();
        match Segment::open(&name) {
            Err(Error::Unfinished {
                name: n,
                creator_pid: None,
            }) if size == 0 => assert_eq!(n, name.as_str()),
            Err(Error::Truncated {
                name: n,
                size: s,
                expected,
            }) if size > 0 => {
                assert_eq!((n.as_str(), s, expected), (name.as_str(), size as u64, min));
            }
            other => panic!("open of a {size}-byte object gave {other:?}"),
        }
    }
    assert!(Segment::anonymous(Segment::min_size()).is_ok());
}

#[test]
fn a_foreign_object_is_not_a_segment() {
    let name = ShmName::new("foreign");
    let fd = ShmFd::open(&name, Mode::CreateExclusive).unwrap();
    fd.truncate(SIZE as u64).unwrap();
    scribble(&name, 0, b"\x7fELF\x02\x01\x01\x00");
    let e = Segment::open(&name).unwrap_err();
    match &e {
        Error::NotASegment { name: n, found } => {
            assert_eq!(n, name.as_str());
            assert_eq!(found.to_le_bytes(), *b"\x7fELF\x02\x01\x01\x00");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("not a shmutils segment"), "{e}");
}

#[test]
fn a_header_overwritten_with_random_bytes_is_refused() {
    let name = ShmName::new("random");
    // Created, then closed: this process scribbles as a peer.
    drop(Segment::create(&name, SIZE).unwrap());
    let mut noise = [0u8; 64];
    let mut x = 0x1234_5678_9abc_def0u64 ^ u64::from(std::process::id());
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    scribble(&name, 0, &noise);
    assert!(matches!(
        Segment::open(&name),
        Err(Error::NotASegment { .. })
    ));
}

#[test]
fn header_fields_are_validated_one_by_one() {
    let name = ShmName::new("fields");
    // Created, then closed: this process scribbles as a peer.
    let id = Segment::create(&name, SIZE).unwrap().id();
    let fresh = || {
        let fd = ShmFd::open(&name, Mode::ReadWrite).unwrap();
        let m = MappedMemory::new(
            None,
            SIZE,
            MapProtections::READ_WRITE,
            MapFlags::SHARED,
            Some(&fd),
        )
        .unwrap();
        m.at(0..SIZE).unwrap()
    };
    let original = fresh();
    let restore = || scribble(&name, 0, &original[..4096]);

    // A newer format version.
    scribble(&name, 8, &2u32.to_le_bytes());
    match Segment::open(&name) {
        Err(Error::UnsupportedVersion {
            found: 2,
            supported: 1,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    restore();
    // A header that claims more bytes than the object has.
    scribble(&name, 16, &(SIZE as u64 + 4096).to_le_bytes());
    match Segment::open(&name) {
        Err(Error::Truncated { size, expected, .. }) => {
            assert_eq!((size, expected), (SIZE as u64, SIZE as u64 + 4096))
        }
        other => panic!("{other:?}"),
    }
    restore();
    // A header size or heap offset of another layout.
    scribble(&name, 12, &128u32.to_le_bytes());
    assert!(matches!(
        Segment::open(&name),
        Err(Error::CorruptHeader { .. })
    ));
    restore();
    scribble(&name, 40, &4096u64.to_le_bytes());
    assert!(matches!(
        Segment::open(&name),
        Err(Error::CorruptHeader { .. })
    ));
    restore();
    // A scribbled heap header.
    scribble(&name, 64, b"NOTAHEAP");
    match Segment::open(&name) {
        Err(Error::HeapCorrupt { what }) => assert!(what.contains("magic"), "{what}"),
        other => panic!("{other:?}"),
    }
    restore();
    assert_eq!(Segment::open(&name).unwrap().id(), id);
}

#[test]
fn a_truncated_object_is_refused_without_mapping_past_its_end() {
    let name = ShmName::new("trunc");
    let seg = Segment::create(&name, SIZE).unwrap();
    drop(seg);
    let fd = ShmFd::open(&name, Mode::ReadWrite).unwrap();
    fd.truncate(SIZE as u64 / 2).unwrap();
    match Segment::open(&name) {
        Err(Error::Truncated { size, expected, .. }) => {
            assert_eq!((size, expected), (SIZE as u64 / 2, SIZE as u64))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn racing_open_or_create_initializes_exactly_once() {
    let name = ShmName::new("race");
    let go = Segment::anonymous(Segment::min_size()).unwrap();
    let flag = go.heap().new(AtomicU64::new(0)).unwrap();
    let flag_heap = go.heap();
    let children: Vec<Child> = (0..4)
        .map(|_| {
            let name = name.as_str().to_owned();
            fork(move || {
                let flag = flag_heap.get(flag).unwrap();
                while flag.load(Ordering::Acquire) == 0 {
                    std::hint::spin_loop();
                }
                let seg = match Segment::open_or_create(&name, SIZE) {
                    Ok(s) => s,
                    Err(_) => return 2,
                };
                let ids = seg
                    .heap()
                    .find_or_init::<[AtomicU64; 4]>("ids", Default::default)
                    .unwrap();
                let ids = seg.heap().get(ids).unwrap();
                let slot = ids.iter().position(|s| {
                    s.compare_exchange(0, seg.id(), Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                });
                match (slot, seg.created()) {
                    (None, _) => 3,
                    (Some(_), true) => 10,
                    (Some(_), false) => 0,
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    flag_heap.get(flag).unwrap().store(1, Ordering::Release);
    let codes: Vec<i32> = children.into_iter().map(Child::wait).collect();
    assert_eq!(codes.iter().filter(|&&c| c == 10).count(), 1, "{codes:?}");
    assert!(codes.iter().all(|&c| c == 0 || c == 10), "{codes:?}");
    let seg = Segment::open(&name).unwrap();
    let ids = seg
        .heap()
        .get(seg.heap().find::<[AtomicU64; 4]>("ids").unwrap())
        .unwrap();
    assert!(ids.iter().all(|i| i.load(Ordering::SeqCst) == seg.id()));
}

#[test]
fn a_sized_object_without_a_header_is_foreign_at_once() {
    let name = ShmName::new("headless");
    // Sized with nothing written: no creator of ours leaves this (it writes
    // its "being created" header before it sizes the object), so it is
    // another program's object, refused at once and never written.
    let fd = ShmFd::open(&name, Mode::CreateExclusive).unwrap();
    fd.truncate(SIZE as u64).unwrap();
    let t = Instant::now();
    assert!(matches!(
        Segment::open_or_create(&name, SIZE),
        Err(Error::NotASegment { found: 0, .. })
    ));
    assert!(matches!(
        Segment::open(&name),
        Err(Error::NotASegment { found: 0, .. })
    ));
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(fd.size().unwrap(), SIZE as u64);
}

#[test]
fn unlink_on_drop_is_the_creators_opt_in() {
    let name = ShmName::new("unlink");
    let mut seg = Segment::create(&name, SIZE).unwrap();
    let mut other = Segment::open(&name).unwrap();
    assert!(matches!(
        other.unlink_on_drop(true),
        Err(Error::InvalidArgument { .. })
    ));
    drop(other);
    assert!(
        ShmFd::open(&name, Mode::ReadOnly).is_ok(),
        "no unlink by default"
    );
    seg.unlink_on_drop(true).unwrap();
    // A forked child that drops its copy of the creator's Segment is not
    // the creator: the name stays.
    let child = fork(|| {
        let copy = std::mem::replace(&mut seg, Segment::anonymous(SIZE).unwrap());
        drop(copy);
        0
    });
    assert_eq!(child.wait(), 0);
    assert!(
        ShmFd::open(&name, Mode::ReadOnly).is_ok(),
        "a forked child's drop unlinked the name"
    );
    drop(seg);
    assert!(matches!(
        ShmFd::open(&name, Mode::ReadOnly),
        Err(Error::NotFound { .. })
    ));
    let anon = Segment::anonymous(SIZE).unwrap();
    assert!(matches!(anon.unlink(), Err(Error::InvalidArgument { .. })));
    let name = ShmName::new("unlink2");
    let seg = Segment::create(&name, SIZE).unwrap();
    seg.unlink().unwrap();
    assert!(matches!(Segment::open(&name), Err(Error::NotFound { .. })));
    // The mapping outlives the name.
    assert!(seg.heap().new(5u32).is_ok());
}

#[test]
fn an_anonymous_segment_is_shared_with_forked_children() {
    let seg = Segment::anonymous(SIZE).unwrap();
    assert_eq!(seg.name(), None);
    let heap = seg.heap();
    let child = fork(|| {
        let p = heap.new_slice(b"from the child").unwrap();
        match heap.find_or_init("msg", || p) {
            Ok(_) => 0,
            Err(_) => 1,
        }
    });
    assert_eq!(child.wait(), 0);
    let msg = heap.get(heap.find::<RelSlice<u8>>("msg").unwrap()).unwrap();
    assert_eq!(heap.get_slice(*msg).unwrap(), b"from the child");
}
