//! Handles across real processes: a spawned child (fresh exec) gets a token
//! on its command line, opens the segment by name and resolves it.

use std::process::Command;

use shmutils::{Error, Handle, RelPtr, Segment};
use shmutils_workspace::ShmName;

include!("defs/list_defs.rs");

/// Runs the child; returns its stdout, trimmed.
fn child(cmd: &str, token: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_child-handle"))
        .args([cmd, token])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() || out.status.code() == Some(2),
        "child crashed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Builds a list of `values` (first value at the head); returns the head.
fn build_list(seg: &Segment, values: impl DoubleEndedIterator<Item = u64>) -> RelPtr<Node<u64>> {
    let alloc = Node::<u64>::with_heap(&seg.heap());
    let mut next = RelPtr::null();
    for value in values.rev() {
        next = alloc.new(Node { value, next }).unwrap();
    }
    next
}

#[test]
fn spawned_child_walks_a_10000_node_list() {
    let name = ShmName::new("list");
    let seg = Segment::create(&name, 4 << 20).unwrap();
    let head = build_list(&seg, 1..=10_000);
    let token = seg.heap().handle(head).unwrap().to_string();
    assert_eq!(child("sum", &token), "50005000 10000");
}

#[test]
fn each_bad_handle_gets_its_own_error_in_the_child() {
    let name = ShmName::new("badhandles");
    let seg = Segment::create(&name, 1 << 20).unwrap();
    let heap = seg.heap();
    let live = build_list(&seg, [7].into_iter());
    let token = heap.handle(live).unwrap().to_string();
    assert_eq!(child("resolve", &token), "ok 7");

    // Wrong type: the object is a Node<u64>.
    assert!(child("resolve-u32", &token).starts_with("error HandleTypeMismatch:"));

    // Garbled token.
    let garbled = token.replacen("shm1.", "shm1.zz", 1);
    assert!(child("resolve", &garbled).starts_with("error InvalidHandle:"));

    // A freed block.
    let freed = build_list(&seg, [8].into_iter());
    let freed_token = heap.handle(freed).unwrap().to_string();
    // SAFETY: nothing in this process refers to the list any more.
    unsafe { heap.delete(freed) }.unwrap();
    assert!(child("resolve", &freed_token).starts_with("error FreedObject:"));

    // An offset the heap never handed out (forged from a real token).
    let forged: Handle<Node<u64>> = Handle::new(&name, seg.id(), 8).unwrap();
    assert!(child("resolve", &forged.to_string()).starts_with("error InvalidPointer:"));
}

#[test]
fn a_handle_never_resolves_in_a_recreated_segment() {
    let name = ShmName::new("recreated");
    let old = Segment::create(&name, 1 << 20).unwrap();
    let p = build_list(&old, [1].into_iter());
    let token = old.heap().handle(p).unwrap().to_string();
    old.unlink().unwrap();
    drop(old);
    // Same name, same layout, same offsets: only the random id differs.
    let new = Segment::create(&name, 1 << 20).unwrap();
    let q = build_list(&new, [2].into_iter());
    assert_eq!(q.offset(), p.offset(), "the new segment reuses the offset");
    assert!(child("resolve", &token).starts_with("error WrongSegment:"));
    let h: Handle<Node<u64>> = token.parse().unwrap();
    match new.resolve(&h) {
        Err(Error::WrongSegment {
            handle_id,
            segment_id,
            ..
        }) => {
            assert_eq!(segment_id, new.id());
            assert_ne!(handle_id, segment_id);
        }
        other => panic!("expected WrongSegment, got {other:?}"),
    }
}

#[test]
fn byte_form_resolves_in_this_process_too() {
    let name = ShmName::new("bytes");
    let seg = Segment::create(&name, 1 << 20).unwrap();
    let p = build_list(&seg, [5, 6].into_iter());
    let h = seg.heap().handle(p).unwrap();
    let back = Handle::<Node<u64>>::from_bytes(&h.to_bytes()).unwrap();
    assert_eq!(back, h);
    let node = seg.resolve(&back).unwrap();
    assert_eq!(node.value, 5);
    assert_eq!(seg.heap().get(node.next).unwrap().value, 6);
    // The reverse of resolve: a &Node back to its pointer.
    assert_eq!(node.ptr_in(&seg.heap()).unwrap(), p);
    let local = Node::<u64> {
        value: 0,
        next: RelPtr::null(),
    };
    assert!(
        local.ptr_in(&seg.heap()).is_err(),
        "a value outside the heap has no pointer"
    );
}

#[test]
fn anonymous_segments_have_no_handles() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let p = seg.heap().new(1u64).unwrap();
    assert!(matches!(
        seg.heap().handle(p),
        Err(Error::InvalidArgument { .. })
    ));
}
