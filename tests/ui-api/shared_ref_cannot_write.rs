// A mapping shared between threads (`&MappedMemory`: it is `Sync`) can be
// read and typed-accessed from each, but written through by none: a write
// needs `&mut`, which no thread has while another may hold a `&T` from `get`.
use std::sync::atomic::AtomicU64;

use shmutils::{MapFlags, MapProtections, MappedMemory};

fn writer(m: &MappedMemory) -> shmutils::Result<()> {
    m.write(0, &[1; 8])
}

fn main() -> shmutils::Result<()> {
    let m = MappedMemory::new(None, 4096, MapProtections::READ_WRITE, MapFlags::SHARED, None)?;
    std::thread::scope(|s| {
        s.spawn(|| m.get::<AtomicU64>(0).map(|_| ()));
        s.spawn(|| writer(&m));
    });
    Ok(())
}
