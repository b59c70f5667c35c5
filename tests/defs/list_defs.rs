// The linked-list node shared by tests/handle.rs and src/bin/child-handle.rs
// (each compiles it separately, so the fingerprints must agree).

/// One node of a singly linked list in a shared heap.
#[derive(shmutils::SharedStruct, Clone, Copy, Debug)]
#[repr(C)]
pub struct Node<T: shmutils::Shared> {
    /// The payload.
    pub value: T,
    /// The next node, or null.
    pub next: shmutils::RelPtr<Node<T>>,
}

/// The short name of an error's variant, printed by the child and checked
/// by the parent.
pub fn error_kind(e: &shmutils::Error) -> &'static str {
    use shmutils::Error;
    match e {
        Error::InvalidHandle { .. } => "InvalidHandle",
        Error::WrongSegment { .. } => "WrongSegment",
        Error::HandleTypeMismatch { .. } => "HandleTypeMismatch",
        Error::FreedObject { .. } => "FreedObject",
        Error::NotFound { .. } => "NotFound",
        Error::InvalidPointer { .. } => "InvalidPointer",
        Error::OutOfBounds { .. } => "OutOfBounds",
        Error::Misaligned { .. } => "Misaligned",
        _ => "Other",
    }
}
