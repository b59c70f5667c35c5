use shmutils::SharedStruct;

#[derive(SharedStruct)]
#[repr(C)]
struct Node {
    value: u64,
    next: *const Node,
    prev: *mut Node,
}

fn main() {}
