use shmutils::SharedStruct;
use std::sync::atomic::AtomicU64;

#[derive(SharedStruct)]
#[repr(C)]
struct Counter {
    hits: AtomicU64,
}

fn main() {
    let c = Counter { hits: AtomicU64::new(0) };
    let _ = c.as_bytes();
}
