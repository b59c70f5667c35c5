use shmutils::{Checked, Shared, SharedStruct};
use std::sync::atomic::AtomicU32;

#[derive(SharedStruct, Clone, Copy, Debug, PartialEq)]
#[repr(u8)]
enum Status {
    Active = 1,
    Banned = 4,
}

#[derive(SharedStruct)]
#[repr(C)]
struct User {
    id: u64,
    status: Checked<Status>,
    flag: Checked<bool>,
    pad: [u8; 6],
}

#[derive(SharedStruct)]
#[repr(C)]
struct Pair<T> {
    a: T,
    b: [T; 2],
    c: AtomicU32,
}

#[test]
fn smoke() {
    let u = User {
        id: 1,
        status: Status::Active.into(),
        flag: true.into(),
        pad: [0; 6],
    };
    assert_eq!(User::sizeof(), 16);
    assert_eq!(u.as_bytes().len(), 16);
    assert_ne!(User::FINGERPRINT, 0);
    assert_ne!(Pair::<u8>::FINGERPRINT, Pair::<u16>::FINGERPRINT);
}
