//! Mappings of named memory across real processes: a forked child and a
//! spawned child (fresh exec) that opens the segment by name.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use shmutils::{AbsoluteMemory, Error, MapFlags, MapProtections, MappedMemory, Mode, ShmFd};
use shmutils_workspace::{fork, ShmName};

const RW: MapProtections = MapProtections::READ_WRITE;

fn segment(tag: &str, len: u64) -> (ShmName, ShmFd) {
    let name = ShmName::new(tag);
    let fd = ShmFd::open(&name, Mode::CreateExclusive).unwrap();
    fd.truncate(len).unwrap();
    (name, fd)
}

#[test]
fn forked_child_counts_to_8900() {
    let (_name, fd) = segment("fork", 4096 * 100);
    let mut m = MappedMemory::new(None, 4096 * 100, RW, MapFlags::SHARED, Some(&fd)).unwrap();
    m.init(64, AtomicU64::new(1923)).unwrap();
    let child = fork(|| {
        let v = m.get::<AtomicU64>(64).unwrap();
        let was = v.load(Ordering::SeqCst);
        for i in was..=8900 {
            v.store(i, Ordering::SeqCst);
        }
        if was == 1923 {
            0
        } else {
            1
        }
    });
    assert_eq!(child.wait(), 0, "child saw 1923 first");
    assert_eq!(m.get::<AtomicU64>(64).unwrap().load(Ordering::SeqCst), 8900);
}

#[test]
fn spawned_child_opens_by_name_and_counts() {
    let (name, fd) = segment("spawn", 8192);
    let mut m = MappedMemory::new(None, 8192, RW, MapFlags::SHARED, Some(&fd)).unwrap();
    m.init(128, AtomicU64::new(1923)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_child-mmap"))
        .args(["count", &name, "128", "8900"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1923");
    assert_eq!(
        m.get::<AtomicU64>(128).unwrap().load(Ordering::SeqCst),
        8900
    );
}

#[test]
fn spawned_child_maps_at_the_same_fixed_address() {
    let len = 4 * 4096;
    let (name, fd) = segment("fixed", len as u64);
    let m = AbsoluteMemory::map_shareable(len, RW, Some(&fd)).unwrap();
    m.write(256, b"parent!!").unwrap();
    let expected_abs = m.abs_address_at(256).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_child-mmap"))
        .args([
            "fixed",
            &name,
            &format!("{:#x}", m.address()),
            &len.to_string(),
            "256",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut words = stdout.split_whitespace();
    assert_eq!(
        words.next(),
        Some(format!("{expected_abs:#x}").as_str()),
        "same absolute address"
    );
    assert_eq!(
        words.next(),
        Some("706172656e742121"),
        "child read b\"parent!!\" there"
    );
    assert_eq!(m.at(264..272).unwrap(), b"child ok");
}

#[test]
fn fixed_address_in_use_is_a_clear_error() {
    let (_name, fd) = segment("taken", 4096);
    let first = AbsoluteMemory::map_shareable(4096, RW, Some(&fd)).unwrap();
    let err = AbsoluteMemory::map_at(first.address(), 4096, RW, MapFlags::empty(), Some(&fd))
        .unwrap_err();
    assert!(
        matches!(err, Error::AddressInUse { addr, len: 4096 } if addr == first.address()),
        "{err}"
    );
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn mapping_past_the_end_is_refused_before_mmap() {
    let (name, fd) = segment("pastend", 4096);
    match MappedMemory::new(None, 8192, RW, MapFlags::SHARED, Some(&fd)) {
        Err(Error::PastEnd {
            name: n,
            requested: 8192,
            size: 4096,
        }) => assert_eq!(n, name.as_str()),
        other => panic!("expected PastEnd, got {other:?}"),
    }
}

#[test]
fn read_only_descriptor_cannot_be_mapped_writable() {
    let (name, _fd) = segment("rofd", 4096);
    let ro = ShmFd::open(&name, Mode::ReadOnly).unwrap();
    assert!(matches!(
        MappedMemory::new(None, 4096, RW, MapFlags::SHARED, Some(&ro)),
        Err(Error::ReadOnly)
    ));
    let m = MappedMemory::new(
        None,
        4096,
        MapProtections::READ,
        MapFlags::SHARED,
        Some(&ro),
    )
    .unwrap();
    assert_eq!(m.at(0..8).unwrap(), [0; 8]);
}

#[test]
fn inherited_mapping_keeps_its_address_in_a_forked_child() {
    let (_name, fd) = segment("inherit", 4096);
    let m = MappedMemory::new(None, 4096, RW, MapFlags::SHARED, Some(&fd)).unwrap();
    let abs = AbsoluteMemory::from_inherited(m);
    let addr = abs.abs_address_at(100).unwrap();
    let child = fork(|| {
        // Same address in the child: the absolute address reads what the
        // parent meant.
        abs.write(100, b"forked").unwrap();
        if abs.absolute_at(addr..addr + 6).unwrap() == b"forked" {
            0
        } else {
            1
        }
    });
    assert_eq!(child.wait(), 0);
    assert_eq!(abs.at(100..106).unwrap(), b"forked");
}
