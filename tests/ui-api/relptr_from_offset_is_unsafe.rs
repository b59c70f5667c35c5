// Case 2: `RelPtr::from_offset(lock_offset + 8)` as a `&u64` over a lock's
// data. Forging a pointer from a number is unsafe.
use shmutils::{Lock, RelPtr, Segment};

fn main() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let heap = seg.heap();
    let lock = heap.new(Lock::new(0u64)).unwrap();
    let inner: RelPtr<u64> = RelPtr::from_offset(lock.offset() + 8);
    let _ = heap.get(inner);
}
