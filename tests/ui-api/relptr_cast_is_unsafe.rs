// Case 2: `heap.get(p.cast::<AtomicU64>())` beside `heap.get(p)`. Casting
// a relative pointer to another type is unsafe (and resolving it is
// type-checked anyway).
use shmutils::{RelPtr, Segment};
use std::sync::atomic::AtomicU64;

fn main() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let heap = seg.heap();
    let p: RelPtr<u64> = heap.new(5).unwrap();
    let q: RelPtr<AtomicU64> = p.cast();
    let _ = heap.get(q);
}
