use shmutils::SharedStruct;
use std::rc::Rc;
use std::sync::Arc;

#[derive(SharedStruct)]
#[repr(C)]
struct Tree {
    left: Box<u64>,
    right: Rc<u64>,
    parent: Arc<u64>,
}

fn main() {}
