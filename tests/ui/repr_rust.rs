use shmutils::SharedStruct;

#[derive(SharedStruct)]
#[repr(Rust)]
struct User {
    id: u64,
}

fn main() {}
