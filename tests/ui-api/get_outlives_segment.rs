// A reference from the heap lives no longer than the segment's mapping.
use shmutils::Segment;

fn main() {
    let r: &u64 = {
        let seg = Segment::anonymous(1 << 20).unwrap();
        let p = seg.heap().new(5u64).unwrap();
        seg.heap().get(p).unwrap()
    };
    assert_eq!(*r, 5);
}
