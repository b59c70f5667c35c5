use shmutils::SharedStruct;

#[derive(SharedStruct)]
#[repr(u8)]
enum Status {
    Active,
    Banned,
}

fn main() {}
