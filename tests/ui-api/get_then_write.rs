// A `&u64` from `get` and a byte write cannot coexist: the write would
// change the bytes under a live `&u64` (issue 8, "Raw mappings").
use shmutils::{MapFlags, MapProtections, MappedMemory};

fn main() -> shmutils::Result<()> {
    let mut m = MappedMemory::new(None, 4096, MapProtections::READ_WRITE, MapFlags::SHARED, None)?;
    let r = m.get::<u64>(0)?;
    m.write(0, &[1; 8])?;
    assert_eq!(*r, 0);
    Ok(())
}
