use shmutils::SharedStruct;

#[derive(SharedStruct)]
#[repr(C)]
struct Padded {
    tag: u8,
    id: u64,
}

#[derive(SharedStruct)]
#[repr(C)]
struct Outer {
    inner: Padded,
}

fn main() {
    let p = Padded { tag: 1, id: 2 };
    let _ = p.as_bytes();
    let o = Outer { inner: p };
    let _ = o.as_bytes();
}
