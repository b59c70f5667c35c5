use shmutils::SharedStruct;

#[derive(SharedStruct)]
#[repr(C)]
struct Borrowing<'a> {
    id: u64,
    name: &'a [u8],
}

fn main() {}
