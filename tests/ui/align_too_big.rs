use shmutils::SharedStruct;

#[derive(SharedStruct)]
#[repr(C, align(8192))]
struct Huge {
    id: u64,
}

fn main() {}
