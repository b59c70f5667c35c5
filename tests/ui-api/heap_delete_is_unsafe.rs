// Case 1 of the soundness issue: `let r = heap.get(p)?; heap.delete(p)?;
// heap.new(99u64)?;` left `r` reading a reused block. Freeing a block that
// others may still reference is unsafe: this does not compile.
use shmutils::Segment;

fn main() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let heap = seg.heap();
    let p = heap.new(1923u64).unwrap();
    let r = heap.get(p).unwrap();
    heap.delete(p).unwrap();
    heap.new(99u64).unwrap();
    assert_eq!(*r, 1923);
}
