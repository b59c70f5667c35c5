use shmutils::SharedStruct;

#[derive(SharedStruct, Clone, Copy)]
#[repr(u8)]
enum Shape {
    Empty,
    Circle(u32),
    Rect { w: u32, h: u32 },
}

fn main() {}
