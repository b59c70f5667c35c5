use shmutils::SharedStruct;

#[derive(SharedStruct)]
#[repr(C, packed)]
struct User {
    tag: u8,
    id: u64,
}

fn main() {}
