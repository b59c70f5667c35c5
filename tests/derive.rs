//! Run-pass tests of `#[derive(SharedStruct)]` and `Checked<E>`: layouts,
//! fingerprints, byte views, and derived structs in real shared mappings
//! read by a forked child and by a spawned child (a separately compiled
//! program that opens the segment by name).

use std::mem::offset_of;
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use shmutils::{
    Checked, Error, MapFlags, MapProtections, MappedMemory, Mode, Shared, SharedEnum, SharedStruct,
    ShmFd,
};
use shmutils_workspace::{fork, ShmName};

mod defs {
    include!("defs/fingerprint_defs.rs");
}
use defs::{v1, Record, Status};

#[derive(SharedStruct)]
#[repr(C)]
struct User {
    id: u64,
    status: Checked<Status>,
    verified: Checked<bool>,
    _pad: [u8; 6],
}

#[derive(SharedStruct)]
#[repr(C)]
struct Rgb(u8, u8, u8);

#[derive(SharedStruct)]
#[repr(transparent)]
struct Meters(u64);

#[derive(SharedStruct)]
#[repr(C)]
struct Marker;

#[derive(SharedStruct)]
#[repr(C, align(64))]
struct CacheLine {
    hits: AtomicU64,
}

/// Nested derived structs, arrays of them, and arrays of arrays.
#[derive(SharedStruct)]
#[repr(C)]
struct Shape {
    corners: [v1::Point; 4],
    origin: v1::Point,
    grid: [[u16; 2]; 3],
}

/// Generic over a type and a length, holding atomics and nested structs;
/// with a where-clause of its own, which the generated impls keep.
#[derive(SharedStruct)]
#[repr(C)]
struct Stats<T: Copy, const N: usize>
where
    [T; N]: Shared,
{
    count: AtomicU32,
    samples: [T; N],
    last: v1::Point,
}

#[derive(SharedStruct)]
#[repr(C)]
struct Pair<A, B> {
    a: A,
    b: B,
}

/// A stand-in for the heap layer's `RelPtr<T>`: an offset whose
/// fingerprint names its target without using the target's fingerprint (so
/// recursive types have no const cycle).
#[repr(transparent)]
struct Link<T> {
    _offset: u32,
    _target: std::marker::PhantomData<T>,
}

// SAFETY: a u32 is valid for every bit pattern and is not an address.
unsafe impl<T: Shared> Shared for Link<T> {
    const NAME: &'static str = "Link";
    const FINGERPRINT: u64 = shmutils::shared::Fingerprint::new("Link")
        .str(T::NAME)
        .finish();
}

// SAFETY: a u32: no padding, no interior mutability.
unsafe impl<T: Shared> shmutils::shared::Plain for Link<T> {}

/// The shape of the list node in DESIGN.md: a field whose type names the
/// struct itself. Bounds on field types would overflow the trait solver
/// here; the derive bounds only the type parameters.
#[derive(SharedStruct)]
#[repr(C)]
struct Node<T: Shared> {
    value: T,
    next: Link<Node<T>>,
}

/// `Self` in field types, in a non-generic and a generic struct.
#[derive(SharedStruct)]
#[repr(C)]
struct List {
    head: Link<Self>,
    len: u32,
}

#[derive(SharedStruct)]
#[repr(C)]
struct Tree<T: Shared> {
    children: [Link<Self>; 2],
    value: T,
}

const BASE: i16 = 100;

#[derive(SharedStruct, Clone, Copy, Debug, PartialEq)]
#[repr(i16)]
enum Level {
    Low = -3,
    Mid,
    High = BASE + 1,
    Top = 1 << 10,
    Next,
}

#[derive(SharedStruct, Clone, Copy, Debug, PartialEq)]
#[repr(u32)]
enum Implicit {
    A,
    B,
    C,
}

fn expect_invalid<T: std::fmt::Debug>(r: shmutils::Result<T>, name: &str, value: i128) {
    match r {
        Err(e @ Error::InvalidDiscriminant { .. }) => {
            let Error::InvalidDiscriminant {
                type_name,
                value: v,
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((*type_name, *v), (name, value));
            let msg = e.to_string();
            assert!(
                msg.contains(name) && msg.contains(&value.to_string()),
                "message names neither type nor value: {msg}"
            );
        }
        other => panic!("expected InvalidDiscriminant for {name} {value}, got {other:?}"),
    }
}

#[test]
fn named_struct_layout_sizeof_and_bytes() {
    assert_eq!(User::sizeof(), 16);
    assert_eq!(User::sizeof(), std::mem::size_of::<User>());
    assert_eq!(<User as Shared>::NAME, "User");
    let u = User {
        id: 0x0102_0304_0506_0708,
        status: Status::Banned.into(),
        verified: true.into(),
        _pad: [0; 6],
    };
    let mut expected = 0x0102_0304_0506_0708u64.to_ne_bytes().to_vec();
    expected.extend([2, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(u.as_bytes(), &expected[..]);
    assert_eq!(u.status.get().unwrap(), Status::Banned);
    assert!(u.verified.get().unwrap());
}

#[test]
fn tuple_transparent_and_unit_structs() {
    let c = Rgb(10, 20, 30);
    assert_eq!(Rgb::sizeof(), 3);
    assert_eq!(c.as_bytes(), &[10, 20, 30]);
    assert_eq!(<Rgb as Shared>::NAME, "Rgb");

    let m = Meters(42);
    assert_eq!(Meters::sizeof(), 8);
    assert_eq!(m.as_bytes(), &42u64.to_ne_bytes());
    assert_ne!(Meters::FINGERPRINT, u64::FINGERPRINT);

    assert_eq!(Marker::sizeof(), 0);
    assert!(Marker.as_bytes().is_empty());
    assert_ne!(Marker::FINGERPRINT, <()>::FINGERPRINT);
}

#[test]
fn align_attribute_is_honoured() {
    assert_eq!(std::mem::align_of::<CacheLine>(), 64);
    assert_eq!(CacheLine::sizeof(), 64);
    let c = CacheLine {
        hits: AtomicU64::new(3),
    };
    assert_eq!(c.hits.fetch_add(1, Ordering::Relaxed), 3);
}

#[test]
fn nested_structs_and_arrays() {
    assert_eq!(Shape::sizeof(), 4 * 8 + 8 + 12);
    let s = Shape {
        corners: [
            v1::Point { x: 1, y: 2 },
            v1::Point { x: 3, y: 4 },
            v1::Point { x: 5, y: 6 },
            v1::Point { x: 7, y: 8 },
        ],
        origin: v1::Point { x: 9, y: 10 },
        grid: [[11, 12], [13, 14], [15, 16]],
    };
    let bytes = s.as_bytes();
    assert_eq!(bytes.len(), Shape::sizeof());
    assert_eq!(&bytes[..4], &1u32.to_ne_bytes());
    assert_eq!(&bytes[32..36], &9u32.to_ne_bytes());
    assert_eq!(&bytes[bytes.len() - 2..], &16u16.to_ne_bytes());
    assert_eq!(offset_of!(Shape, grid), 40);
}

#[test]
fn generic_structs() {
    type S3 = Stats<u64, 3>;
    assert_eq!(<S3 as Shared>::NAME, "Stats");
    assert_eq!(S3::sizeof(), 8 + 24 + 8);
    let s = S3 {
        count: AtomicU32::new(0),
        samples: [1, 2, 3],
        last: v1::Point { x: 0, y: 0 },
    };
    s.count.fetch_add(2, Ordering::Relaxed);
    assert_eq!(s.count.load(Ordering::Relaxed), 2);
    // Every instance has its own fingerprint.
    let fps = [
        Stats::<u64, 3>::FINGERPRINT,
        Stats::<u64, 4>::FINGERPRINT,
        Stats::<u32, 3>::FINGERPRINT,
        Stats::<i64, 3>::FINGERPRINT,
    ];
    for (i, a) in fps.iter().enumerate() {
        for b in &fps[i + 1..] {
            assert_ne!(a, b);
        }
    }
    // A generic instance without padding or atomics has a byte view.
    let p = Pair {
        a: 7u32,
        b: [1u8; 4],
    };
    assert_eq!(Pair::<u32, [u8; 4]>::sizeof(), 8);
    assert_eq!(&p.as_bytes()[..4], &7u32.to_ne_bytes());
    assert_eq!(&p.as_bytes()[4..], &[1; 4]);
    // Derived non-generic structs nest into a generic one's byte view.
    let nested = Pair {
        a: Meters(5),
        b: [v1::Point { x: 6, y: 7 }],
    };
    assert_eq!(nested.as_bytes().len(), 16);
    assert_eq!(&nested.as_bytes()[12..], &7u32.to_ne_bytes());
}

#[test]
fn recursive_and_self_referencing_structs() {
    assert_ne!(Node::<u64>::FINGERPRINT, Node::<u32>::FINGERPRINT);
    assert_eq!(Node::<u64>::sizeof(), 16);
    let n = Node {
        value: 5u32,
        next: Link {
            _offset: 64,
            _target: std::marker::PhantomData,
        },
    };
    assert_eq!(&n.as_bytes()[4..], &64u32.to_ne_bytes());

    assert_eq!(List::sizeof(), 8);
    let l = List {
        head: Link {
            _offset: 9,
            _target: std::marker::PhantomData,
        },
        len: 1,
    };
    assert_eq!(&l.as_bytes()[..4], &9u32.to_ne_bytes());
    assert_ne!(List::FINGERPRINT, Node::<u32>::FINGERPRINT);
    assert_eq!(Tree::<u64>::sizeof(), 16);
    assert_ne!(Tree::<u64>::FINGERPRINT, Tree::<u32>::FINGERPRINT);
}

#[test]
fn enums_round_trip_through_checked() {
    assert_eq!(Level::Mid as i16, -2);
    assert_eq!(Level::Next as i16, 1025);
    for l in [Level::Low, Level::Mid, Level::High, Level::Top, Level::Next] {
        let c = Checked::from(l);
        assert_eq!(c.raw(), l as i16);
        assert_eq!(c.get().unwrap(), l);
        assert_eq!(Level::from_repr(l.to_repr()), Some(l));
    }
    for bad in [-4i16, -1, 0, 100, 102, 1023, 1026, i16::MIN, i16::MAX] {
        assert_eq!(Level::from_repr(bad), None, "{bad} was accepted");
    }
    assert_eq!(std::mem::size_of::<Checked<Level>>(), 2);
    assert_eq!(std::mem::size_of::<Checked<Implicit>>(), 4);
    assert_eq!(Implicit::from_repr(2), Some(Implicit::C));
    assert_eq!(Implicit::from_repr(3), None);

    let mut c = Checked::new(Implicit::A);
    c.set(Implicit::B);
    assert_eq!(c.get().unwrap(), Implicit::B);
    assert_eq!(format!("{c:?}"), "Checked<Implicit>(B)");
    assert_eq!(<Level as SharedEnum>::NAME, "Level");
    assert_ne!(
        <Level as SharedEnum>::FINGERPRINT,
        <Implicit as SharedEnum>::FINGERPRINT
    );
    assert_ne!(
        <Checked<Level>>::FINGERPRINT,
        <Checked<Implicit>>::FINGERPRINT
    );
}

#[test]
fn checked_get_rejects_an_unknown_discriminant_written_into_a_mapping() {
    let mut m = MappedMemory::new(
        None,
        4096,
        MapProtections::READ_WRITE,
        MapFlags::SHARED,
        None,
    )
    .unwrap();
    m.init(
        0,
        User {
            id: 12345,
            status: Status::Active.into(),
            verified: false.into(),
            _pad: [0; 6],
        },
    )
    .unwrap();
    // A peer scribbles over the status and the flag.
    m.write(offset_of!(User, status), &[9]).unwrap();
    m.write(offset_of!(User, verified), &[2]).unwrap();
    let u = m.get::<User>(0).unwrap();
    assert_eq!(u.id, 12345);
    expect_invalid(u.status.get(), "Status", 9);
    expect_invalid(u.verified.get(), "bool", 2);
    // The field is part of the placed `User`: reached through it, never as
    // a second placement of another type over the same bytes.
    assert!(matches!(
        m.get::<Checked<Status>>(offset_of!(User, status)),
        Err(Error::TypeMismatch { .. })
    ));
    let direct = &u.status;
    expect_invalid(direct.get(), "Status", 9);
    assert_eq!(format!("{direct:?}"), "Checked<Status>(invalid 9)");

    // A wider, signed repr: the value is reported as the integer it is.
    m.write(256, &(-7i16).to_ne_bytes()).unwrap();
    expect_invalid(m.get::<Checked<Level>>(256).unwrap().get(), "Level", -7);
    m.write(256, &1025i16.to_ne_bytes()).unwrap();
    assert_eq!(
        m.get::<Checked<Level>>(256).unwrap().get().unwrap(),
        Level::Next
    );
}

fn make_record(name: &ShmName) -> (ShmFd, MappedMemory) {
    let fd = ShmFd::open(name, Mode::CreateExclusive).unwrap();
    fd.truncate(4096).unwrap();
    let mut m = MappedMemory::new(
        None,
        4096,
        MapProtections::READ_WRITE,
        MapFlags::SHARED,
        Some(&fd),
    )
    .unwrap();
    m.init(
        128,
        Record {
            id: 1923u64,
            status: Status::Active.into(),
            verified: true.into(),
            corners: [v1::Point { x: 1, y: 2 }, v1::Point { x: 3, y: 4 }],
            visits: AtomicU64::new(0),
        },
    )
    .unwrap();
    (fd, m)
}

#[test]
fn derived_struct_in_a_shared_mapping_is_read_by_a_forked_child() {
    let name = ShmName::new("derive-fork");
    let (_fd, mut m) = make_record(&name);
    let path = name.to_string();
    let inherited = &mut m;
    // The child maps the object again, by name, at an address of the
    // kernel's choosing, and checks every field through the typed view.
    let child = fork(move || {
        let mut run = || -> shmutils::Result<i32> {
            let fd = ShmFd::open(&path, Mode::ReadWrite)?;
            let mut m = MappedMemory::new(
                None,
                4096,
                MapProtections::READ_WRITE,
                MapFlags::SHARED,
                Some(&fd),
            )?;
            let r = m.get::<Record<u64>>(128)?;
            let ok = r.id == 1923
                && r.status.get()? == Status::Active
                && r.verified.get()?
                && (r.corners[1].x, r.corners[1].y) == (3, 4);
            if !ok {
                return Ok(2);
            }
            r.visits.fetch_add(10, Ordering::SeqCst);
            // Publish a status the parent must reject. The child's copy of
            // the parent's mapping holds the record too (its references
            // would be in the child's memory), so the write is refused
            // until the child lets that mapping's placements go, which
            // `&mut` to it shows is sound.
            let status = 128 + offset_of!(Record<u64>, status);
            if !matches!(m.write(status, &[77]), Err(Error::Aliased { .. })) {
                return Ok(4);
            }
            inherited.clear_placements(0..4096);
            m.write(status, &[77])?;
            Ok(0)
        };
        run().unwrap_or(3)
    });
    assert_eq!(child.wait(), 0);
    let r = m.get::<Record<u64>>(128).unwrap();
    assert_eq!(r.visits.load(Ordering::SeqCst), 10);
    expect_invalid(r.status.get(), "Status", 77);
}

#[test]
fn derived_struct_in_a_shared_mapping_is_read_by_a_spawned_program() {
    let name = ShmName::new("derive-spawn");
    let (_fd, m) = make_record(&name);
    let out = Command::new(env!("CARGO_BIN_EXE_child-derive"))
        .args(["visit", &name, "128"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1923 Active true 1 2 3 4\n"
    );
    let r = m.get::<Record<u64>>(128).unwrap();
    assert_eq!(r.visits.load(Ordering::SeqCst), 1);
}

#[test]
fn fingerprints_agree_across_separately_compiled_programs() {
    let out = Command::new(env!("CARGO_BIN_EXE_child-derive"))
        .arg("fingerprints")
        .output()
        .unwrap();
    assert!(out.status.success());
    let theirs: Vec<(String, u64)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (name, hex) = l.split_once(' ').unwrap();
            (name.to_owned(), u64::from_str_radix(hex, 16).unwrap())
        })
        .collect();
    let ours: Vec<(String, u64)> = defs::fingerprints()
        .into_iter()
        .map(|(n, f)| (n.to_owned(), f))
        .collect();
    assert_eq!(ours.len(), 10);
    assert_eq!(theirs, ours);
}

#[test]
fn fingerprints_differ_when_a_field_is_renamed_reordered_or_retyped() {
    let all = defs::fingerprints();
    let get = |name: &str| all.iter().find(|(n, _)| *n == name).unwrap().1;
    let v1 = get("v1::Point");
    for variant in [
        "renamed::Point",
        "reordered::Point",
        "retyped::Point",
        "tuple::Point",
    ] {
        assert_ne!(v1, get(variant), "{variant} has v1's fingerprint");
    }
    assert_ne!(get("Status"), get("renumbered::Status"));
    assert_ne!(get("Record<u64>"), get("Record<u32>"));
    // All ten are distinct.
    for (i, (a, fa)) in all.iter().enumerate() {
        for (b, fb) in &all[i + 1..] {
            assert_ne!(fa, fb, "{a} and {b} share a fingerprint");
        }
    }
    // The same definition under another module path is the same type as
    // far as the layout is concerned.
    #[derive(SharedStruct)]
    #[repr(C)]
    struct Point {
        x: u32,
        y: u32,
    }
    assert_eq!(Point::FINGERPRINT, v1);
}

/// A derived struct holding the library's own shared types: a lock, a
/// relative slice, a relative pointer to another derived struct, atomics
/// and checked values.
#[derive(SharedStruct)]
#[repr(C)]
struct Account {
    balance: shmutils::Lock<u64>,
    history: shmutils::RelSlice<u64>,
    owner: shmutils::RelPtr<User>,
    hits: [AtomicU32; 4],
    frozen: Checked<bool>,
}

/// A derived struct with `Default`, for `with_heap(..).new_default()`.
#[derive(SharedStruct, Default, Debug, PartialEq)]
#[repr(C)]
struct Settings {
    retries: u32,
    timeout_ms: u32,
}

/// The list node of DESIGN.md with the real `RelPtr`.
#[derive(SharedStruct)]
#[repr(C)]
struct Chain<T: Shared> {
    value: T,
    next: shmutils::RelPtr<Chain<T>>,
}

#[test]
fn structs_holding_locks_and_relative_pointers_live_in_a_heap() {
    use shmutils::{Lock, RelPtr, Segment};

    // Layout: the fingerprint sees the field types, so a different lock
    // payload or pointer target is a different type.
    assert_ne!(
        shmutils::RelPtr::<User>::FINGERPRINT,
        shmutils::RelPtr::<Account>::FINGERPRINT
    );
    assert_ne!(Chain::<u64>::FINGERPRINT, Chain::<u32>::FINGERPRINT);
    assert_eq!(Chain::<u64>::sizeof(), 16);
    let link = Chain::<u64> {
        value: 3,
        // SAFETY: a value for its bytes only; never resolved.
        next: unsafe { RelPtr::from_offset(4096) },
    };
    assert_eq!(
        &link.as_bytes()[8..],
        &4096u64.to_ne_bytes(),
        "RelPtr is plain bytes"
    );

    let name = ShmName::new("derive-heap");
    let seg = Segment::create(&name, 1 << 20).unwrap();
    let heap = seg.heap();
    let owner = User::with_heap(&heap)
        .new(User {
            id: 7,
            status: Status::Active.into(),
            verified: true.into(),
            _pad: [0; 6],
        })
        .unwrap();
    let zeroed = User::with_heap(&heap).new_zeroed().unwrap();
    assert_eq!(heap.get(zeroed).unwrap().id, 0);
    let builder = Settings::with_heap(&heap);
    let defaults = builder.new_default().unwrap();
    let custom = builder
        .new(Settings {
            retries: 3,
            timeout_ms: 250,
        })
        .unwrap();
    assert_eq!(heap.get(defaults).unwrap(), &Settings::default());
    assert_eq!(
        heap.get(custom).unwrap(),
        &Settings {
            retries: 3,
            timeout_ms: 250
        }
    );
    assert_ne!(defaults, custom);
    let acct = Account::with_heap(&heap)
        .new(Account {
            balance: Lock::new(100),
            history: heap.new_slice(&[100u64, 50, -50i64 as u64]).unwrap(),
            owner,
            hits: Default::default(),
            frozen: false.into(),
        })
        .unwrap();
    let a = heap.get(acct).unwrap();
    assert_eq!(a.ptr_in(&heap).unwrap(), acct);
    assert_eq!(heap.get(a.owner).unwrap().id, 7);
    assert_eq!(
        heap.get_slice(a.history).unwrap(),
        &[100, 50, -50i64 as u64]
    );

    // A forked child updates the account under its lock.
    let child = fork(|| {
        let a = heap.get(acct).unwrap();
        *a.balance.lock().unwrap() += 23;
        a.hits[2].fetch_add(1, Ordering::SeqCst);
        0
    });
    assert_eq!(child.wait(), 0);
    assert_eq!(*a.balance.lock().unwrap(), 123);
    assert_eq!(a.hits[2].load(Ordering::SeqCst), 1);
    assert!(!a.frozen.get().unwrap());
    assert_eq!(
        heap.get(owner).unwrap().status.get().unwrap(),
        Status::Active
    );
}
