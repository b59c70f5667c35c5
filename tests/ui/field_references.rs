use shmutils::SharedStruct;

#[derive(SharedStruct)]
#[repr(C)]
struct User {
    id: &'static u64,
    counter: &'static mut u64,
    name: &'static str,
}

fn main() {}
