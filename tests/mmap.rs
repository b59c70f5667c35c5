//! Mappings of named memory across real processes: a forked child and a
//! spawned child (fresh exec) that opens the segment by name; and the
//! placement table that keeps typed references sound, across threads, a
//! fork and an exec.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmutils::{AbsoluteMemory, Error, Lock, MapFlags, MapProtections, MappedMemory, Mode, ShmFd};
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
    let mut m = AbsoluteMemory::map_shareable(len, RW, Some(&fd)).unwrap();
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
    let mut abs = AbsoluteMemory::from_inherited(m);
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

fn is_mismatch<T: std::fmt::Debug>(r: shmutils::Result<T>) -> bool {
    matches!(r, Err(Error::TypeMismatch { .. }))
}

#[test]
fn a_forked_child_inherits_the_placements() {
    let (_name, fd) = segment("fork-table", 4096);
    let m = MappedMemory::new(None, 4096, RW, MapFlags::SHARED, Some(&fd)).unwrap();
    let v = m.get::<AtomicU64>(64).unwrap();
    v.store(1923, Ordering::SeqCst);
    let child = fork(|| {
        // The parent's `v` is alive in the child's memory too, so the
        // child's table must still refuse other views of its bytes.
        let refused = is_mismatch(m.get::<u64>(64)) && is_mismatch(m.at(60..68));
        let same = std::ptr::eq(m.get::<AtomicU64>(64).unwrap(), v);
        let counted = v.swap(8900, Ordering::SeqCst) == 1923;
        let elsewhere = m.get::<u64>(72).is_ok() && m.at(0..64).is_ok();
        i32::from(!refused)
            | i32::from(!same) << 1
            | i32::from(!counted) << 2
            | i32::from(!elsewhere) << 3
    });
    assert_eq!(child.wait(), 0, "bit set = check failed in the child");
    assert_eq!(v.load(Ordering::SeqCst), 8900);
    // The child's placement at 72 was its own: the parent's table is unchanged.
    assert!(m.get::<AtomicU64>(72).is_ok());
}

#[test]
fn spawned_child_gets_the_lock_its_parent_placed() {
    let (name, fd) = segment("spawn-lock", 8192);
    let mut m = MappedMemory::new(None, 8192, RW, MapFlags::SHARED, Some(&fd)).unwrap();
    let lock = m.init(256, Lock::new(1923u64)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_child-mmap"))
        .args(["lock", &name, "256"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1923 TypeMismatch"
    );
    assert_eq!(*lock.lock().unwrap(), 1924);
}

/// The reviewer's third case: a byte copy while another thread stores
/// through a `&AtomicU64` from `get`. The copy is refused, every time;
/// copies beside the atomic go through.
#[test]
fn byte_copies_never_race_a_typed_store() {
    let m = MappedMemory::new(None, 4096, RW, MapFlags::SHARED, None).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let storer = s.spawn(|| {
            let v = m.get::<AtomicU64>(64).unwrap();
            let mut stores = 0u64;
            while !stop.load(Ordering::Relaxed) {
                stores += 1;
                v.store(stores, Ordering::Relaxed);
            }
            stores
        });
        let t0 = Instant::now();
        let mut refused = 0u32;
        while refused < 1000 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the storer never placed its atomic"
            );
            match m.at(0..128) {
                Err(Error::TypeMismatch { found, .. }) => {
                    assert!(found.ends_with("placed at bytes 64..72"), "{found}");
                    refused += 1;
                }
                // Only before the storer's `get` placed the atomic.
                Ok(_) => assert_eq!(refused, 0, "a copy went through after the placement"),
                Err(e) => panic!("{e}"),
            }
            assert_eq!(m.at(0..64).unwrap(), [0; 64]);
            assert_eq!(m.at(72..128).unwrap(), [0; 56]);
        }
        stop.store(true, Ordering::Relaxed);
        let stores = storer.join().unwrap();
        assert!(stores > 0);
        let v = m.get::<AtomicU64>(64).unwrap();
        assert_eq!(v.load(Ordering::Relaxed), stores);
    });
}

/// A child forked while another thread of the parent holds the mapping's
/// table lock (here: copying a 32 MiB range under it) is not stuck on that
/// lock: the thread does not exist in the child, which takes the lock over.
#[test]
fn a_child_forked_during_a_copy_is_not_stuck() {
    const LEN: usize = 32 << 20;
    let m = MappedMemory::new(None, LEN, RW, MapFlags::SHARED, None).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(m.at(4096..LEN).unwrap().len(), LEN - 4096);
            }
        });
        for round in 0..10 {
            std::thread::sleep(Duration::from_millis(3));
            let child = fork(|| {
                let typed = m
                    .get::<AtomicU64>(8)
                    .map(|v| v.fetch_add(1, Ordering::SeqCst));
                let bytes = m.at(16..24);
                i32::from(typed.is_err()) | i32::from(bytes.is_err()) << 1
            });
            let outcome = child.wait_timeout(Duration::from_secs(20));
            if outcome != Ok(0) {
                stop.store(true, Ordering::Relaxed);
                panic!("round {round}: child {outcome:?}");
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(m.get::<AtomicU64>(8).unwrap().load(Ordering::SeqCst), 10);
}
