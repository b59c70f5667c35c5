// Publishing a SharedBox ends its private access: a `&mut` taken from it
// cannot be used once others may read the value.
use shmutils::Segment;

fn main() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let heap = seg.heap();
    let mut b = heap.new_box(7u64).unwrap();
    let r: &mut u64 = &mut b;
    let p = b.into_rel();
    *r = 8;
    let _ = heap.get(p);
}
