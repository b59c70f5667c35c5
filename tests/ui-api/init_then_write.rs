// The reference `init` returns keeps the mapping borrowed: no byte write
// while it lives.
use shmutils::{MapFlags, MapProtections, MappedMemory};

fn main() -> shmutils::Result<()> {
    let mut m = MappedMemory::new(None, 4096, MapProtections::READ_WRITE, MapFlags::SHARED, None)?;
    let r = m.init(0, 1923u64)?;
    m.write(0, &[1; 8])?;
    assert_eq!(*r, 1923);
    Ok(())
}
