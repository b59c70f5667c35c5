use shmutils::SharedStruct;

#[derive(SharedStruct)]
struct User {
    id: u64,
    age: u32,
}

fn main() {}
