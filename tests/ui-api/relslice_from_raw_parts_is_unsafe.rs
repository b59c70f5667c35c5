// Building a relative slice from parts is forging too: unsafe.
use shmutils::{RelSlice, Segment};

fn main() {
    let seg = Segment::anonymous(1 << 20).unwrap();
    let heap = seg.heap();
    let s = heap.new_slice(&[1u32, 2]).unwrap();
    let wider: RelSlice<u32> = RelSlice::from_raw_parts(s.offset(), 4);
    let _ = heap.get_slice(wider);
}
