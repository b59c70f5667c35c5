//! DESIGN.md rule 2, case by case: what a skeptical user tried in one
//! process to alias, dangle or mistype a reference through safe calls, and
//! the typed `Err` each attempt now gets. (The attempts that no longer
//! compile are the trybuild cases in `tests/ui-api/`; the lock and mapping
//! cases live in `tests/robust.rs` and `tests/mmap.rs`.)

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use shmutils::{Checked, Error, Handle, Lock, RLock, RelPtr, RelSlice, Segment, Shared};
use shmutils::{SharedHeap, SharedStruct};
use shmutils_workspace::ShmName;

/// A pointer made from a number, as a peer (or a parsed token) could make
/// one: every resolution must check it.
fn forge<T>(off: u64) -> RelPtr<T> {
    // SAFETY: these tests only resolve forged pointers, to see them refused
    // (or accepted when they name the right type); nothing is freed.
    unsafe { RelPtr::from_offset(off) }
}

fn forge_slice<T>(off: u64, len: u64) -> RelSlice<T> {
    // SAFETY: as in forge().
    unsafe { RelSlice::from_raw_parts(off, len) }
}

/// Case 1: `let r = heap.get(p)?; heap.delete(p)?; heap.new(99u64)?;` read
/// a block that was freed and reused through `r`. Freeing is now `unsafe`
/// (the compile-fail case `delete_is_unsafe`); the safe owner, SharedBox,
/// cannot be freed while a reference into it lives (`box_borrowed_past_drop`),
/// and a stale pointer after an (unsafe, correct) free resolves to nothing.
#[test]
fn a_stale_pointer_never_reaches_the_blocks_next_owner() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let heap = seg.heap();
    let b = heap.new_box(7u64).unwrap();
    let p = b.rel();
    drop(b); // frees the block
    assert!(matches!(heap.get(p), Err(Error::FreedObject { .. })));
    // The next owner of the same block, of another type: the old pointer
    // still resolves to nothing.
    let q = heap.new(AtomicU64::new(99)).unwrap();
    assert_eq!(q.offset(), p.offset(), "the block was reused");
    assert!(matches!(heap.get(p), Err(Error::TypeMismatch { .. })));
}

/// Case 2: `heap.get(p.cast::<AtomicU64>())` beside `heap.get(p)` (a
/// `&u64`), `RelPtr::from_offset(lock_offset + 8)` as a `&u64` over a
/// lock's data, `get_slice` beside a cast to `AtomicU32`. Casting and
/// forging are `unsafe` now (`cast_is_unsafe`, `from_offset_is_unsafe`),
/// and even a forged pointer is refused.
#[test]
fn no_second_view_of_a_block_as_another_type() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let heap = seg.heap();
    let p = heap.new(5u64).unwrap();
    let plain: &u64 = heap.get(p).unwrap();
    assert!(matches!(
        heap.get(forge::<AtomicU64>(p.offset())),
        Err(Error::TypeMismatch { .. })
    ));
    assert_eq!(*plain, 5);

    let lock = heap.new(Lock::new(0u64)).unwrap();
    let lock_ref = heap.get(lock).unwrap();
    let mut guard = lock_ref.lock().unwrap();
    *guard = 42;
    for inner in [8, 4, 16, 32] {
        assert!(
            heap.get(forge::<u64>(lock.offset() + inner)).is_err(),
            "a u64 at lock + {inner}"
        );
    }
    assert!(matches!(
        heap.get(forge::<u64>(lock.offset())),
        Err(Error::TypeMismatch { .. })
    ));
    drop(guard);

    let words = heap.new_slice(&[1u32, 2, 3, 4]).unwrap();
    let view = heap.get_slice(words).unwrap();
    assert!(matches!(
        heap.get(forge::<AtomicU32>(words.offset())),
        Err(Error::TypeMismatch { .. })
    ));
    assert!(heap.get(forge::<AtomicU32>(words.offset() + 4)).is_err());
    assert_eq!(view, &[1, 2, 3, 4]);
}

#[derive(SharedStruct, Clone, Copy, Debug, PartialEq)]
#[repr(u8)]
enum Status {
    Inactive = 0,
    Active = 1,
}

#[derive(SharedStruct)]
#[repr(C)]
struct User {
    id: u64,
    fullname: RelSlice<u8>,
    status: Checked<Status>,
}

#[derive(SharedStruct)]
#[repr(C)]
struct Counter {
    hits: AtomicU64,
    id: u64,
}

/// `T` at `off` through a token forged from text, as any process could.
fn token_resolves<T: Shared>(seg: &Segment, off: u64) -> bool {
    let bare = seg.name().unwrap().trim_start_matches('/');
    let text = format!("shm1.{:x}.{:x}.{:x}.{bare}", T::FINGERPRINT, seg.id(), off);
    let h: Handle<T> = text.parse().expect("a well-formed token");
    seg.resolve(&h).is_ok()
}

fn slice_resolves<T: Shared>(heap: &SharedHeap<'_>, off: u64) -> bool {
    heap.get_slice(forge_slice::<T>(off, 1)).is_ok()
}

/// Case 6, generalised: a handle token is just text. For 12 kinds of
/// object (plain integers, atomics, locks, derived structs, checked enums,
/// slices), the token of each object's offset forged for every other kind
/// must fail; only its own kind resolves.
#[test]
fn a_forged_token_resolves_only_as_the_true_type() {
    let name = ShmName::new("zoo");
    let seg = Segment::create(&name, 4 << 20).unwrap();
    let heap = seg.heap();
    let offsets: Vec<u64> = vec![
        heap.new(1u8).unwrap().offset(),
        heap.new(2u32).unwrap().offset(),
        heap.new(3u64).unwrap().offset(),
        heap.new(4i64).unwrap().offset(),
        heap.new(AtomicU32::new(5)).unwrap().offset(),
        heap.new(AtomicU64::new(6)).unwrap().offset(),
        heap.new(Lock::new(7u64)).unwrap().offset(),
        heap.new(RLock::new(8u64)).unwrap().offset(),
        User::with_heap(&heap)
            .new(User {
                id: 9,
                fullname: heap.new_slice(b"Autumn").unwrap(),
                status: Status::Active.into(),
            })
            .unwrap()
            .offset(),
        Counter::with_heap(&heap)
            .new(Counter {
                hits: AtomicU64::new(0),
                id: 10,
            })
            .unwrap()
            .offset(),
        heap.new(Checked::from(Status::Inactive)).unwrap().offset(),
        heap.new([11u64; 2]).unwrap().offset(),
        heap.new_slice(&[12u8; 8]).unwrap().offset(),
        heap.new_slice(&[13u64; 1]).unwrap().offset(),
    ];
    let seg = &seg;
    let kinds = offsets.len();
    let mut wrong = Vec::new();
    for (i, &off) in offsets.iter().enumerate() {
        let results = [
            token_resolves::<u8>(seg, off),
            token_resolves::<u32>(seg, off),
            token_resolves::<u64>(seg, off),
            token_resolves::<i64>(seg, off),
            token_resolves::<AtomicU32>(seg, off),
            token_resolves::<AtomicU64>(seg, off),
            token_resolves::<Lock<u64>>(seg, off),
            token_resolves::<RLock<u64>>(seg, off),
            token_resolves::<User>(seg, off),
            token_resolves::<Counter>(seg, off),
            token_resolves::<Checked<Status>>(seg, off),
            token_resolves::<[u64; 2]>(seg, off),
            slice_resolves::<u8>(&heap, off),
            slice_resolves::<u64>(&heap, off),
        ];
        assert_eq!(results.len(), kinds);
        for (j, &ok) in results.iter().enumerate() {
            if ok != (i == j) {
                wrong.push(format!("object {i} as kind {j}: resolved = {ok}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // And through the values themselves: each reads back.
    assert_eq!(
        heap.get(forge::<Counter>(offsets[9])).unwrap().id,
        10,
        "the true type resolves"
    );
    assert_eq!(
        heap.get(forge::<AtomicU64>(offsets[5]))
            .unwrap()
            .load(Ordering::Relaxed),
        6
    );
}

/// Named objects are typed the same way, whatever the directory says.
#[test]
fn a_named_object_read_as_another_type_is_an_error() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let heap = seg.heap();
    let p = heap.find_or_init("hits", || AtomicU64::new(3)).unwrap();
    assert!(matches!(
        heap.find::<u64>("hits"),
        Err(Error::TypeMismatch { .. })
    ));
    assert!(heap.get(forge::<u64>(p.offset())).is_err());
    // remove() unlinks the name; the object stays for those who hold it.
    let r = heap.get(p).unwrap();
    heap.remove("hits").unwrap();
    assert_eq!(r.load(Ordering::Relaxed), 3);
    assert!(heap.find::<AtomicU64>("hits").is_err());
}
