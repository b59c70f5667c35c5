use shmutils::SharedStruct;

#[derive(SharedStruct)]
#[repr(C)]
union Either {
    a: u32,
    b: f32,
}

fn main() {}
