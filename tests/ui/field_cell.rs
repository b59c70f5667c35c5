use shmutils::SharedStruct;
use std::cell::Cell;

#[derive(SharedStruct)]
#[repr(C)]
struct Counter {
    hits: Cell<u64>,
}

fn main() {}
