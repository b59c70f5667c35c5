// A relative mapping has no absolute addressing at all (the seed's roadmap:
// "disallow abs_address_at, absolute_at on relative only mappings").
use shmutils::{MapFlags, MapProtections, MappedMemory};

fn main() {
    let m = MappedMemory::new(None, 4096, MapProtections::READ_WRITE, MapFlags::SHARED, None).unwrap();
    let _ = m.abs_address_at(64);
    let _ = m.relative_address_at(0x1000);
    let _ = m.absolute_at(0..8);
}
