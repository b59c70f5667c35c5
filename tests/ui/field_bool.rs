use shmutils::SharedStruct;

#[derive(SharedStruct)]
#[repr(C)]
struct Flags {
    active: bool,
    history: [bool; 8],
}

fn main() {}
