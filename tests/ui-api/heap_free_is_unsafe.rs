// Freeing raw blocks is unsafe too.
use shmutils::Segment;
use std::alloc::Layout;

fn main() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let heap = seg.heap();
    let p = heap.alloc(Layout::new::<u64>()).unwrap();
    heap.free(p, Layout::new::<u64>()).unwrap();
}
