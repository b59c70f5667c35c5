// Built (not only checked) by `tests/derive_ui.rs`: a generic struct's
// padding depends on its type arguments, so `as_bytes` on a padded instance
// fails when the program is built, at the instance that is called.
use shmutils::SharedStruct;

#[derive(SharedStruct)]
#[repr(C)]
struct Pair<A, B> {
    a: A,
    b: B,
}

fn main() {
    // No padding: fine.
    let fine = Pair { a: 1u32, b: 2u32 };
    let _ = fine.as_bytes();
    // Three bytes of padding after `a`: rejected.
    let padded = Pair { a: 1u8, b: 2u32 };
    let _ = padded.as_bytes();
}
