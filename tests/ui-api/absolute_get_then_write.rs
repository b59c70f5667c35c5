// The same through an AbsoluteMemory, which reaches `write` through
// `DerefMut`.
use std::sync::atomic::{AtomicU64, Ordering};

use shmutils::{AbsoluteMemory, MapProtections};

fn main() -> shmutils::Result<()> {
    let mut m = AbsoluteMemory::map_shareable(4096, MapProtections::READ_WRITE, None)?;
    let v = m.get::<AtomicU64>(64)?;
    m.write(64, &[1; 8])?;
    v.store(2, Ordering::Relaxed);
    Ok(())
}
