// A SharedBox frees its block on drop: a reference into it cannot outlive
// it.
use shmutils::Segment;

fn main() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let heap = seg.heap();
    let b = heap.new_box(7u64).unwrap();
    let r: &u64 = &b;
    drop(b);
    assert_eq!(*r, 7);
}
