use shmutils::SharedStruct;

#[derive(SharedStruct, Clone, Copy)]
enum Status {
    Active,
    Banned,
}

#[derive(SharedStruct, Clone, Copy)]
#[repr(usize)]
enum Wide {
    A,
}

fn main() {}
