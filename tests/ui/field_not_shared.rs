use shmutils::SharedStruct;

#[derive(Clone, Copy)]
#[repr(u8)]
enum Status {
    Active,
    Banned,
}

#[derive(SharedStruct)]
#[repr(C)]
struct User {
    id: u64,
    status: Status,
    maybe: Option<u32>,
}

fn main() {}
