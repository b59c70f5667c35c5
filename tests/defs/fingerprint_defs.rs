// Type definitions compiled into two separate programs: the `derive` test
// binary and the `child-derive` helper binary both `include!` this file, so
// their fingerprints must agree. The variants of `Point` differ from `v1`
// in one way each (a renamed, a reordered, a retyped field), so their
// fingerprints must not.
//
// Included inside a module by each user; it names everything it needs.

use shmutils::{Checked, Shared, SharedEnum, SharedStruct};
use std::sync::atomic::AtomicU64;

/// The reference definition.
pub mod v1 {
    use super::*;
    #[derive(SharedStruct, Debug)]
    #[repr(C)]
    pub struct Point {
        pub x: u32,
        pub y: u32,
    }
}

/// `y` renamed to `z`.
pub mod renamed {
    use super::*;
    #[derive(SharedStruct)]
    #[repr(C)]
    pub struct Point {
        pub x: u32,
        pub z: u32,
    }
}

/// `x` and `y` swapped.
pub mod reordered {
    use super::*;
    #[derive(SharedStruct)]
    #[repr(C)]
    pub struct Point {
        pub y: u32,
        pub x: u32,
    }
}

/// `y` is now signed (same size, same offset).
pub mod retyped {
    use super::*;
    #[derive(SharedStruct)]
    #[repr(C)]
    pub struct Point {
        pub x: u32,
        pub y: i32,
    }
}

/// The same fields as a tuple struct.
pub mod tuple {
    use super::*;
    #[derive(SharedStruct)]
    #[repr(C)]
    pub struct Point(pub u32, pub u32);
}

#[derive(SharedStruct, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Active = 1,
    Banned = 2,
}

/// `Banned` renumbered.
pub mod renumbered {
    use super::*;
    #[derive(SharedStruct, Clone, Copy)]
    #[repr(u8)]
    pub enum Status {
        Active = 1,
        Banned = 3,
    }
}

/// A generic, nested record, placed in a segment by the tests and read by
/// the child.
#[derive(SharedStruct)]
#[repr(C)]
pub struct Record<T: Shared> {
    pub id: T,
    pub status: Checked<Status>,
    pub verified: Checked<bool>,
    pub corners: [v1::Point; 2],
    pub visits: AtomicU64,
}

/// Every fingerprint above, by name, in a fixed order.
pub fn fingerprints() -> Vec<(&'static str, u64)> {
    vec![
        ("v1::Point", v1::Point::FINGERPRINT),
        ("renamed::Point", renamed::Point::FINGERPRINT),
        ("reordered::Point", reordered::Point::FINGERPRINT),
        ("retyped::Point", retyped::Point::FINGERPRINT),
        ("tuple::Point", tuple::Point::FINGERPRINT),
        ("Status", <Status as SharedEnum>::FINGERPRINT),
        ("renumbered::Status", <renumbered::Status as SharedEnum>::FINGERPRINT),
        ("Checked<Status>", <Checked<Status>>::FINGERPRINT),
        ("Record<u64>", <Record<u64>>::FINGERPRINT),
        ("Record<u32>", <Record<u32>>::FINGERPRINT),
    ]
}
