use shmutils::SharedStruct;

#[derive(SharedStruct)]
#[repr(C)]
struct User {
    scores: Vec<u32>,
    fullname: String,
}

fn main() {}
