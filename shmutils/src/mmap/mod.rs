//! Memory mappings: [`MappedMemory`] (relative addressing, every mapping)
//! and [`AbsoluteMemory`] (a mapping whose address peers agree on).
//!
//! One idea per file: `mod.rs` is the mapping itself (creation, RAII
//! unmapping, [`detach`](MappedMemory::detach), protections, page size) and
//! its checked byte copies; `typed.rs` places [`Shared`](crate::Shared)
//! values ([`MappedMemory::init`], [`MappedMemory::get`]); `placements.rs`
//! is the table that keeps those references sound; `registry.rs` is the
//! process's registry of mapped objects, which gives every mapping of one
//! object the same table and keeps raw mappings and segments apart;
//! `forksafe.rs` is the lock both live behind, which survives `fork` (the
//! registry of segments the lock resolver searches uses it too);
//! `absolute.rs` is [`AbsoluteMemory`].
//!
//! # Relative and absolute
//! Every access to a [`MappedMemory`] names an **offset** from the start of
//! the mapping, so the same code works whatever address the kernel chose in
//! each process. Absolute addresses are meaningful across processes only
//! when every process maps the object at the same address: that is an
//! [`AbsoluteMemory`], made at a fixed address with `MAP_FIXED_NOREPLACE`
//! (or adopted after `fork`, which keeps addresses). Only it has
//! [`abs_address_at`](AbsoluteMemory::abs_address_at),
//! [`relative_address_at`](AbsoluteMemory::relative_address_at) and
//! [`absolute_at`](AbsoluteMemory::absolute_at); it dereferences to
//! [`MappedMemory`], so it can be used wherever a relative mapping can.
//!
//! # Byte access
//! Another process may write the mapped bytes at any moment, so a `&[u8]`
//! into them would promise an immutability nobody can keep. Byte access is
//! therefore **copying**: [`MappedMemory::read`], [`MappedMemory::at`] and
//! [`MappedMemory::write`] copy through raw pointers, and a concurrent peer
//! write can at worst make the copy a mix of old and new bytes. The
//! borrowing view [`MappedMemory::bytes`] is `unsafe` and says why.
//!
//! # Typed placement
//! [`MappedMemory::init`] and [`MappedMemory::get`] hand out `&T` for
//! [`Shared`](crate::Shared) types, whose every bit pattern is valid and
//! whose mutation through `&T` goes through atomics or locks. Rust also
//! requires that while a `&T` lives its bytes (outside `UnsafeCell`) change
//! through no other path of the process, and that no non-atomic access
//! races an atomic one. A **placement table**, in process memory, therefore
//! records the values placed in the mapping (shared by every mapping of the
//! same object: [below](#one-object-mapped-twice)):
//!
//! - `init::<T>(&mut self, offset, value)` writes `value` and records "a
//!   `T` at `offset`", replacing every placement it overlaps: with `&mut
//!   self` no reference into the mapping is alive, so bytes may change type
//!   (unless another mapping of the object holds one of those placements:
//!   [below](#one-object-mapped-twice)).
//! - `get::<T>(&self, offset)` succeeds when a `T` is placed at exactly
//!   `offset` (the same reference again), or when nothing placed overlaps
//!   `offset..offset + size_of::<T>()`: the first typed view claims the
//!   bytes as a `T`. A placement of another type, or at another offset,
//!   over any of the bytes is an [`Error::TypeMismatch`]. So a process that
//!   opened the object by name gets the lock its creator placed, and no
//!   process gets a `&u64` and a `&AtomicU64` over the same bytes.
//! - Placements outlive the references: the bytes stay a `T` until `init`
//!   places something else, [`MappedMemory::clear_placements`] forgets
//!   them (both `&mut self`), or the mapping is dropped.
//! - [`write`](MappedMemory::write), and every other method that may change
//!   bytes, takes `&mut self`: the borrow checker refuses it while a `&T`
//!   from this mapping's `get`/`init` lives.
//! - Byte copies out ([`read`](MappedMemory::read), [`at`](MappedMemory::at),
//!   [`absolute_at`](AbsoluteMemory::absolute_at), and the unsafe
//!   [`bytes`](MappedMemory::bytes)) refuse every placed range with an
//!   [`Error::TypeMismatch`], whatever the type: stable Rust cannot tell a
//!   type with interior mutability (an atomic, a lock) from one without,
//!   and a non-atomic copy racing an atomic store is a data race.
//!
//! # One object mapped twice
//! A process may map one shared memory object several times (two
//! [`MappedMemory`] of one name, an [`AbsoluteMemory`] beside a relative
//! mapping, a [`Segment`](crate::Segment) opened twice). Those mappings are
//! not peers: a write through one changes the bytes under a `&T` from the
//! other, and the borrow checker sees two unrelated values. A process-wide
//! **registry** of mapped objects, keyed by the object's identity (device
//! and inode from `fstat`, so any name or descriptor of the object counts),
//! closes that path:
//!
//! - **Every raw mapping of an object in this process shares one placement
//!   table.** Placements are by offset in the object (a mapping always
//!   maps its object from offset 0), so `get`, `init` and the byte copies
//!   of one mapping see what the others placed: `m2.get::<AtomicU64>(0)`
//!   beside `m1.get::<u64>(0)` is [`Error::TypeMismatch`], and so is
//!   `m2.at(0..8)`; the same type at the same offset is the same value
//!   again. Each placement remembers which mappings handed out references
//!   to it; `&mut` to one mapping says nothing about another's references,
//!   so `write` or `init` through a mapping over bytes that another
//!   mapping holds a value on is [`Error::Aliased`]. A mapping lets its
//!   placements go when it is dropped or detached, or with
//!   [`clear_placements`](MappedMemory::clear_placements); a placement no
//!   mapping holds is forgotten. Private (`MapFlags::PRIVATE`) mappings of
//!   the object share the table too: until a page is copied on write they
//!   see the object's bytes.
//! - **Raw mappings and segments of one object never coexist in a
//!   process.** A segment's heap hands out `&T` into blocks the raw table
//!   knows nothing about, so [`MappedMemory::new`] (and
//!   [`AbsoluteMemory`]) of an object that a live `Segment` of this
//!   process maps is [`Error::InUseBySegment`], whatever the protection (a
//!   read-only mapping's byte copies would race the heap's atomic stores),
//!   and `Segment::open` / `open_or_create` of an object live raw mappings
//!   of this process map is [`Error::InUseByRawMapping`]. Change a
//!   segment's values through its heap; scribble on it raw from another
//!   process. Two segments of one object are fine: the heap writes only
//!   blocks private to the writer and reads typed blocks.
//! - An entry leaves the registry with the last mapping or segment of its
//!   object in the process (dropped, or [`detach`](MappedMemory::detach)ed),
//!   so a later mapping starts with an empty table. Anonymous mappings are
//!   in no entry: nothing else can map them in this process, and each keeps
//!   a table of its own, as does a mapping rebuilt with
//!   [`from_raw_parts`](MappedMemory::from_raw_parts) (whose contract makes
//!   the caller responsible for other mappings of its object).
//!
//! The table and the registry are process memory. A `fork`ed child
//! inherits both with the rest of the parent's memory (the parent's
//! mappings, segments and references are in the child's memory too), in a
//! consistent state even if another thread was changing them at the
//! moment of the fork: a child of a process with a live `Segment` cannot
//! map its object raw either, and a mapping the child makes by name shares
//! the inherited table (to write bytes an inherited mapping holds a value
//! on, the child clears that mapping's placements first). A spawned
//! process starts with an empty registry. What the registry cannot see is
//! a writer in another process: a peer, trusted to change shared values
//! only through atomics and locks (DESIGN.md rule 4); one that does
//! otherwise can make this process read wrong values.

mod absolute;
pub(crate) mod forksafe;
mod placements;
mod registry;
mod typed;

use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use bitflags::bitflags;

pub use absolute::AbsoluteMemory;
use placements::{Claim, Placements};
use registry::{ObjectId, Registration, Role};

use crate::error::{Error, Result};
use crate::shm::ShmFd;
use crate::sys;

bitflags! {
    /// Page protections (`PROT_*`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct MapProtections: i32 {
        /// Pages may be read.
        const READ = libc::PROT_READ;
        /// Pages may be written.
        const WRITE = libc::PROT_WRITE;
        /// Pages may be executed.
        const EXEC = libc::PROT_EXEC;
        /// Read and write, the usual protection of shared data.
        const READ_WRITE = libc::PROT_READ | libc::PROT_WRITE;
    }
}

impl MapProtections {
    /// No access at all (`PROT_NONE`); the same value as
    /// `MapProtections::empty()`.
    pub const NONE: MapProtections = MapProtections::empty();
}

bitflags! {
    /// Mapping flags (`MAP_*`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct MapFlags: i32 {
        /// Writes are seen by every process mapping the object.
        const SHARED = libc::MAP_SHARED;
        /// Writes are private to this process (copy on write).
        const PRIVATE = libc::MAP_PRIVATE;
        /// Not backed by a named object; with `SHARED`, shared with forked
        /// children only.
        const ANONYMOUS = libc::MAP_ANONYMOUS;
        /// Map exactly at the hint, replacing what is there. Refused by
        /// [`MappedMemory::new`]: use `FIXED_NOREPLACE` / [`AbsoluteMemory`].
        const FIXED = libc::MAP_FIXED;
        /// Map exactly at the hint, or fail if anything is mapped there.
        const FIXED_NOREPLACE = libc::MAP_FIXED_NOREPLACE;
        /// Do not reserve swap for the mapping.
        const NORESERVE = libc::MAP_NORESERVE;
        /// Fault every page in now.
        const POPULATE = libc::MAP_POPULATE;
    }
}

/// The system page size in bytes.
pub fn page_size() -> usize {
    sys::page_size()
}

/// Rounds `n` up to a multiple of the page size (`0` stays `0`; saturates
/// at the largest page multiple).
///
/// ```
/// # let p = shmutils::mmap::page_size();
/// assert_eq!(shmutils::round_to_page_size(1), p);
/// assert_eq!(shmutils::round_to_page_size(p + 1), 2 * p);
/// ```
pub fn round_to_page_size(n: usize) -> usize {
    let p = page_size();
    n.checked_add(p - 1)
        .map_or(usize::MAX & !(p - 1), |m| m & !(p - 1))
}

/// Unmaps `addr..addr + len`, e.g. a range taken with
/// [`MappedMemory::detach`].
///
/// # Safety
/// The range must be a mapping the caller owns, and no reference into it
/// (including a live `MappedMemory`) may be used afterwards.
///
/// # Errors
/// [`Error::Io`] if the kernel refuses (e.g. `addr` not page-aligned).
pub unsafe fn munmap(addr: usize, len: usize) -> Result<()> {
    // SAFETY: forwarded to the caller.
    unsafe { sys::munmap(addr as *mut u8, len) }
        .map_err(|e| Error::io(format!("munmap of {len} bytes at {addr:#x}"), e))
}

/// A memory mapping that unmaps itself on drop. All access is by offset and
/// checked; see the [module docs](self) for what is shared and how.
///
/// ```
/// use shmutils::{MapFlags, MapProtections, MappedMemory};
/// let mut m = MappedMemory::new(None, 4096, MapProtections::READ_WRITE, MapFlags::SHARED, None)?;
/// m.write(100, b"hello")?;
/// assert_eq!(m.at(100..105)?, b"hello");
/// assert!(m.at(4090..4100).is_err());
/// # Ok::<(), shmutils::Error>(())
/// ```
#[derive(Debug)]
pub struct MappedMemory {
    // Fields drop in order: unmapped first, then this mapping's
    // placements are released, then it leaves the registry.
    region: Region,
    /// This mapping's share of the placement table of its object (or of
    /// its own table, for anonymous memory): what `init`/`get` placed
    /// where, in this process (typed.rs, placements.rs).
    claim: Claim,
    /// The mapping's entry in the process's registry of mapped objects;
    /// `None` for anonymous memory and `from_raw_parts`.
    registration: Option<Registration>,
}

/// The mapped pages themselves: unmapped when dropped.
#[derive(Debug)]
struct Region {
    ptr: NonNull<u8>,
    len: usize,
    prot: MapProtections,
}

// SAFETY: a Region is an owned range of raw memory with no thread affinity;
// it is only reached through `MappedMemory`, whose accessors are safe to
// call from any thread (byte copies through raw pointers, `Shared` values,
// which are Send + Sync, and a table behind its own lock).
unsafe impl Send for Region {}
// SAFETY: sharing `&Region` only shares the address and length; see Send.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: we own the mapping, and dropping it means the owning
        // `MappedMemory` is dropped, so no borrow of it (and no `&T` from
        // `get`) survives. An error here can only mean a bug; there is
        // nobody to report it to in drop.
        let _ = unsafe { sys::munmap(self.ptr.as_ptr(), self.len) };
    }
}

/// A segment's entry in the process's registry of mapped objects, taken
/// before its object is rewritten
/// ([`MappedMemory::claim_sole_segment`]); dropping it leaves the registry.
#[derive(Debug)]
pub(crate) struct SegmentClaim {
    registration: Registration,
    table: Arc<Placements>,
}

/// How [`MappedMemory::map`] enters the registry (for a descriptor).
enum Registering {
    /// Registers now, in this role.
    Role(Role),
    /// Already registered (as a segment) by a claim.
    Claimed(SegmentClaim),
}

/// A plain (relative) mapping; the same type as [`MappedMemory`].
pub type RelativeMemory = MappedMemory;

impl MappedMemory {
    /// A mapping with a placement table of its own, in no registry entry.
    fn unregistered(ptr: NonNull<u8>, len: usize, prot: MapProtections) -> MappedMemory {
        MappedMemory {
            region: Region { ptr, len, prot },
            claim: Claim::new(Arc::new(Placements::new(None))),
            registration: None,
        }
    }
}

impl MappedMemory {
    /// Maps `len` bytes: of `fd` from its start, or anonymous memory when
    /// `fd` is `None` (`ANONYMOUS` is then implied). `addr_hint` is only a
    /// hint unless `flags` has `FIXED_NOREPLACE`, in which case the mapping
    /// is made there or not at all.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a zero `len`, neither or both of
    /// `SHARED`/`PRIVATE`, `ANONYMOUS` with an `fd`, plain `FIXED`, or a
    /// writable shared mapping of a read-only descriptor;
    /// [`Error::PastEnd`] when `len` exceeds the object's size (mapping it
    /// would let a touch of the excess raise `SIGBUS`);
    /// [`Error::AddressInUse`] when `FIXED_NOREPLACE` cannot be honoured;
    /// [`Error::Io`] when `mmap` fails.
    pub fn new(
        addr_hint: Option<usize>,
        len: usize,
        prot: MapProtections,
        flags: MapFlags,
        fd: Option<&ShmFd>,
    ) -> Result<MappedMemory> {
        MappedMemory::map(
            addr_hint,
            len,
            prot,
            flags,
            fd,
            Registering::Role(Role::Raw),
        )
    }

    /// Maps all `len` bytes of `fd` read-write and shared, as a
    /// [`Segment`](crate::Segment)'s mapping: the registry lets it beside
    /// other segments of the object, never beside raw mappings.
    ///
    /// # Errors
    /// As [`new`](Self::new); [`Error::InUseByRawMapping`] instead of
    /// [`Error::InUseBySegment`].
    pub(crate) fn for_segment(len: usize, fd: &ShmFd) -> Result<MappedMemory> {
        MappedMemory::map(
            None,
            len,
            MapProtections::READ_WRITE,
            MapFlags::SHARED,
            Some(fd),
            Registering::Role(Role::Segment),
        )
    }

    /// Takes a [`Segment`](crate::Segment)'s place in the process's
    /// registry for `fd`'s object before the object is written from
    /// scratch (truncated and initialized): from here until the claim is
    /// dropped (or its mapping is), no raw mapping of the object can be
    /// made in this process. `None` if a live segment of this process maps
    /// the object already: rewriting it would change bytes under that
    /// segment's references.
    ///
    /// # Errors
    /// [`Error::InUseByRawMapping`] while live raw mappings of this
    /// process map the object; [`Error::Io`] if `fstat` fails.
    pub(crate) fn claim_sole_segment(fd: &ShmFd) -> Result<Option<SegmentClaim>> {
        let stat = fd.stat()?;
        let claimed = registry::register_only_segment(fd.name(), ObjectId::of(&stat))?;
        Ok(claimed.map(|(registration, table)| SegmentClaim {
            registration,
            table,
        }))
    }

    /// [`for_segment`](Self::for_segment) with the registry entry taken
    /// beforehand by [`claim_sole_segment`](Self::claim_sole_segment) on
    /// the same descriptor.
    ///
    /// # Errors
    /// As [`for_segment`](Self::for_segment), without the registry's.
    pub(crate) fn for_claimed_segment(
        len: usize,
        fd: &ShmFd,
        claim: SegmentClaim,
    ) -> Result<MappedMemory> {
        MappedMemory::map(
            None,
            len,
            MapProtections::READ_WRITE,
            MapFlags::SHARED,
            Some(fd),
            Registering::Claimed(claim),
        )
    }

    /// Maps all `len` bytes of an anonymous segment's memfd read-write and
    /// shared. Like anonymous memory it is in no registry entry: no name
    /// reaches the object, so nothing else in this process can map it
    /// through the library.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a zero `len`; [`Error::Io`] when
    /// `mmap` fails.
    pub(crate) fn for_memfd(len: usize, fd: BorrowedFd<'_>) -> Result<MappedMemory> {
        if len == 0 {
            return Err(Error::InvalidArgument {
                what: "a mapping needs a length above zero".to_owned(),
            });
        }
        let prot = MapProtections::READ_WRITE;
        // SAFETY: not MAP_FIXED: the mmap only creates a new mapping and
        // replaces nothing.
        let p = unsafe { sys::mmap(0, len, prot.bits(), MapFlags::SHARED.bits(), Some(fd), 0) }
            .map_err(|e| Error::io(format!("mmap of {len} bytes of an anonymous segment"), e))?;
        let ptr = NonNull::new(p).ok_or_else(|| Error::InvalidArgument {
            what: "the kernel mapped address 0".to_owned(),
        })?;
        Ok(MappedMemory::unregistered(ptr, len, prot))
    }

    fn map(
        addr_hint: Option<usize>,
        len: usize,
        prot: MapProtections,
        flags: MapFlags,
        fd: Option<&ShmFd>,
        registering: Registering,
    ) -> Result<MappedMemory> {
        let invalid = |what: &str| {
            Err(Error::InvalidArgument {
                what: what.to_owned(),
            })
        };
        if len == 0 {
            return invalid("a mapping needs a length above zero");
        }
        if flags.contains(MapFlags::SHARED) == flags.contains(MapFlags::PRIVATE) {
            return invalid(
                "a mapping needs exactly one of MapFlags::SHARED and MapFlags::PRIVATE",
            );
        }
        if flags.contains(MapFlags::FIXED) {
            return invalid(
                "MapFlags::FIXED would replace whatever is mapped at the address; \
                 use MapFlags::FIXED_NOREPLACE or AbsoluteMemory::map_at",
            );
        }
        let mut flags = flags;
        let mut what = String::from("anonymous memory");
        let mut registered = None;
        if let Some(fd) = fd {
            if flags.contains(MapFlags::ANONYMOUS) {
                return invalid("MapFlags::ANONYMOUS cannot map a shared memory descriptor");
            }
            if prot.contains(MapProtections::WRITE)
                && flags.contains(MapFlags::SHARED)
                && !fd.mode().is_writable()
            {
                return Err(Error::ReadOnly);
            }
            let stat = fd.stat()?;
            if len as u64 > stat.size {
                return Err(Error::PastEnd {
                    name: fd.name().to_owned(),
                    requested: len as u64,
                    size: stat.size,
                });
            }
            // Before mapping: a refused mapping is never made. Dropped (and
            // so undone) if the mmap below fails.
            registered = Some(match registering {
                Registering::Role(role) => {
                    registry::register(fd.name(), ObjectId::of(&stat), role)?
                }
                Registering::Claimed(claim) => (claim.registration, claim.table),
            });
            what = format!("shared memory {:?}", fd.name());
        } else {
            flags |= MapFlags::ANONYMOUS;
        }
        let fixed = flags.contains(MapFlags::FIXED_NOREPLACE);
        let addr = addr_hint.unwrap_or(0);
        if fixed && (addr == 0 || addr % page_size() != 0) {
            return invalid("MapFlags::FIXED_NOREPLACE needs a non-zero, page-aligned address");
        }
        // SAFETY: plain FIXED was refused above, so this mmap cannot replace
        // an existing mapping; FIXED_NOREPLACE fails instead of replacing.
        let p = unsafe {
            sys::mmap(
                addr,
                len,
                prot.bits(),
                flags.bits(),
                fd.map(|f| f.as_fd()),
                0,
            )
        }
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EEXIST) if fixed => Error::AddressInUse { addr, len },
            _ => Error::io(format!("mmap of {len} bytes of {what}"), e),
        })?;
        let ptr = NonNull::new(p).ok_or_else(|| Error::InvalidArgument {
            what: "the kernel mapped address 0".to_owned(),
        })?;
        let m = match registered {
            Some((registration, table)) => MappedMemory {
                region: Region { ptr, len, prot },
                claim: Claim::new(table),
                registration: Some(registration),
            },
            None => MappedMemory::unregistered(ptr, len, prot),
        };
        if fixed && p as usize != addr {
            // Kernels before 4.17 treat FIXED_NOREPLACE as a hint; `m` unmaps
            // the misplaced mapping on drop.
            return Err(Error::AddressInUse { addr, len });
        }
        Ok(m)
    }

    /// Takes ownership of a mapping, e.g. one given up with
    /// [`detach`](Self::detach). It starts with an empty placement table of
    /// its own, and is in no entry of the process's registry of mapped
    /// objects: the library does not know which object it maps.
    ///
    /// # Safety
    /// `addr..addr + len` must be a live mapping with protection `prot`
    /// that nothing else owns or unmaps, and `addr` must not be 0. No
    /// reference into it made before (by an earlier owner, or through the
    /// address) may be used while the new owner lives: its table does not
    /// know them. If it maps a shared memory object that this process also
    /// maps otherwise (another `MappedMemory`, a `Segment`, now or later
    /// while the new owner lives), the caller takes over the registry's
    /// job: no typed reference or byte copy through one of them may cover
    /// bytes that the other writes or places a value of another type on.
    pub unsafe fn from_raw_parts(addr: usize, len: usize, prot: MapProtections) -> MappedMemory {
        // SAFETY: the caller guarantees a non-null live mapping.
        let ptr = unsafe { NonNull::new_unchecked(addr as *mut u8) };
        MappedMemory::unregistered(ptr, len, prot)
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.region.len
    }

    /// Whether the mapping is empty (never true: zero-length mappings are
    /// refused).
    pub fn is_empty(&self) -> bool {
        self.region.len == 0
    }

    /// Address of the first byte, for FFI. Storing it in shared memory is
    /// what relative pointers exist to avoid; writing through it while a
    /// reference from [`get`](Self::get) lives breaks that reference.
    pub fn as_ptr(&self) -> *mut u8 {
        self.region.ptr.as_ptr()
    }

    /// The protection the mapping was made with.
    pub fn protections(&self) -> MapProtections {
        self.region.prot
    }

    /// The system page size; the same as [`page_size`].
    pub fn page_size() -> usize {
        page_size()
    }

    /// Rounds up to the page size; the same as [`round_to_page_size`].
    pub fn round_to_page_size(n: usize) -> usize {
        round_to_page_size(n)
    }

    /// Checks that `offset..offset + len` lies inside the mapping.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] otherwise (also when the sum overflows).
    pub fn check_range(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(Error::OutOfBounds {
                offset,
                len,
                size: self.len(),
            }),
        }
    }

    fn check_readable(&self) -> Result<()> {
        if self.region.prot.contains(MapProtections::READ) {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                what: "the mapping is not readable".to_owned(),
            })
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.region.prot.contains(MapProtections::READ_WRITE) {
            Ok(())
        } else {
            Err(Error::ReadOnly)
        }
    }

    /// The offsets `range` covers, checked to lie in the mapping.
    fn checked_range(&self, range: Range<usize>) -> Result<Range<usize>> {
        let len = range
            .end
            .checked_sub(range.start)
            .ok_or(Error::OutOfBounds {
                offset: range.start,
                len: 0,
                size: self.len(),
            })?;
        self.check_range(range.start, len)?;
        Ok(range)
    }

    /// Copies `buf.len()` bytes starting at `offset` into `buf`.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`]; [`Error::InvalidArgument`] if the mapping is
    /// not readable; [`Error::TypeMismatch`] if a typed value is placed on
    /// any of the bytes (by [`init`](Self::init) or [`get`](Self::get)):
    /// the copy could race a store through it. Byte copies refuse every
    /// placed type, atomic or not ([module docs](self#typed-placement)).
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check_readable()?;
        self.check_range(offset, buf.len())?;
        let range = offset..offset + buf.len();
        // Held during the copy, so no `get`, `init` or `write` through any
        // mapping of the object can place a value on these bytes or write
        // them until the copy is done.
        let table = self.claim.lock();
        table.check_untyped(&range)?;
        // SAFETY: the range is inside the live, readable mapping and `buf`
        // is a distinct Rust buffer. In this process nothing writes these
        // bytes during the copy: no typed reference covers them, and every
        // write and `init` through any raw mapping of the object takes the
        // same table lock, held here until the copy ends; no `Segment` of
        // the object exists beside a raw mapping (registry). A peer
        // writing concurrently can only make the copy a mix of old and new
        // bytes (module docs).
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), buf.as_mut_ptr(), buf.len())
        };
        drop(table);
        Ok(())
    }

    /// Copies the bytes of `range` out of the mapping (the seed's `at`).
    ///
    /// # Errors
    /// As [`read`](Self::read); also [`Error::OutOfBounds`] for a reversed
    /// range.
    pub fn at(&self, range: Range<usize>) -> Result<Vec<u8>> {
        let range = self.checked_range(range)?;
        let mut v = vec![0u8; range.len()];
        self.read(range.start, &mut v)?;
        Ok(v)
    }

    /// Copies `bytes` into the mapping at `offset`.
    ///
    /// `&mut self`: no reference from this mapping's [`get`](Self::get) or
    /// [`init`](Self::init) may live across a write, since the write may
    /// change its bytes. Placements stay: writing bytes into a placed value
    /// (a lock word, a field) does not change its type. Bytes that
    /// another mapping of the same object in this process placed a value
    /// on are refused: its references may be alive
    /// ([module docs](self#one-object-mapped-twice)).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`]; [`Error::ReadOnly`] if the mapping is not
    /// read-write; [`Error::Aliased`] if another mapping of the object in
    /// this process holds a typed value on any of the bytes.
    pub fn write(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, bytes.len())?;
        // Held during the copy, so no other mapping of the object places a
        // value on these bytes, or copies them out, until it is done.
        let table = self.claim.lock();
        table.check_unshared(self.claim.id(), &(offset..offset + bytes.len()))?;
        // SAFETY: the range is inside the live, writable mapping. No
        // reference into these bytes is alive in this process: `&mut self`
        // shows that none from this mapping's `get`/`init` (and no slice
        // from `bytes`) is; the table, locked until the copy ends, shows
        // that no other raw mapping of the object holds a value on them
        // and lets none place one meanwhile; and no `Segment` of the
        // object exists beside a raw mapping (registry).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.as_ptr().add(offset), bytes.len())
        };
        drop(table);
        Ok(())
    }

    /// Borrows the bytes of `range` without copying.
    ///
    /// # Safety
    /// While the slice lives, nothing may write those bytes: no other
    /// process or other mapping of the object (in this process, another
    /// mapping's `write` and `init` are not checked against this slice),
    /// and no value placed on them with [`get`](Self::get) after this call,
    /// through this mapping or another of the object (a `&T` may store
    /// through atomics). This mapping's `write` and `init` take `&mut
    /// self` and are ruled out by the borrow.
    ///
    /// # Errors
    /// As [`at`](Self::at), including [`Error::TypeMismatch`] when a typed
    /// value is already placed on any of the bytes.
    pub unsafe fn bytes(&self, range: Range<usize>) -> Result<&[u8]> {
        self.check_readable()?;
        let range = self.checked_range(range)?;
        self.claim.lock().check_untyped(&range)?;
        // SAFETY: in bounds of the live mapping, which the slice borrows;
        // u8 is valid for any byte; no typed reference covers the range
        // now, and the caller rules out writes while the slice lives.
        Ok(unsafe { std::slice::from_raw_parts(self.as_ptr().add(range.start), range.len()) })
    }

    /// Changes the protection of the pages covering `range`.
    ///
    /// # Safety
    /// Removing `READ` or `WRITE` from pages makes later accesses to them
    /// fault; the caller must not use any accessor of this mapping, or any
    /// `&T` obtained from it, on those pages while they are protected so.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`], [`Error::Misaligned`] if `range.start` is not
    /// page-aligned, [`Error::Io`] from `mprotect`.
    pub unsafe fn protect(&mut self, range: Range<usize>, prot: MapProtections) -> Result<()> {
        let len = range.end.saturating_sub(range.start);
        self.check_range(range.start, len)?;
        if range.start % page_size() != 0 {
            return Err(Error::Misaligned {
                offset: range.start,
                align: page_size(),
            });
        }
        // SAFETY: in bounds of the owned mapping; the caller accepts the
        // new protection.
        unsafe { sys::mprotect(self.as_ptr().add(range.start), len, prot.bits()) }
            .map_err(|e| Error::io(format!("mprotect of {len} bytes"), e))?;
        if range.start == 0 && round_to_page_size(len) >= round_to_page_size(self.len()) {
            self.region.prot = prot;
        }
        Ok(())
    }

    /// Tells the kernel that `range` will not be needed soon
    /// (`MADV_DONTNEED`); for shared mappings the contents stay, private
    /// ones go back to the object's contents (or zeros), which is why it
    /// takes `&mut self`: no `&T` from [`get`](Self::get) may see that.
    ///
    /// # Errors
    /// As [`protect`](Self::protect).
    pub fn advise_dont_need(&mut self, range: Range<usize>) -> Result<()> {
        let len = range.end.saturating_sub(range.start);
        self.check_range(range.start, len)?;
        if range.start % page_size() != 0 {
            return Err(Error::Misaligned {
                offset: range.start,
                align: page_size(),
            });
        }
        // SAFETY: in bounds of the owned mapping; for a SHARED mapping
        // MADV_DONTNEED only drops this process's page table entries, and for
        // a PRIVATE one it resets pages to the object's contents, which
        // `&mut self` shows no reference of this process is looking at.
        unsafe { sys::madvise(self.as_ptr().add(range.start), len, libc::MADV_DONTNEED) }
            .map_err(|e| Error::io(format!("madvise of {len} bytes"), e))
    }

    /// Gives up ownership: the mapping stays mapped and the caller must
    /// eventually [`munmap`] it (or rebuild it with
    /// [`from_raw_parts`](Self::from_raw_parts)). Returns `(address, len)`.
    /// Consuming `self` ends every reference `get` handed out, so the
    /// mapping's placements are released, and it leaves the process's
    /// registry of mapped objects: from now on the library no longer knows
    /// it maps its object (see `from_raw_parts` for what that asks of the
    /// caller).
    pub fn detach(self) -> (usize, usize) {
        let MappedMemory {
            region,
            claim,
            registration,
        } = self;
        drop(claim);
        drop(registration);
        let parts = (region.ptr.as_ptr() as usize, region.len);
        std::mem::forget(region);
        parts
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A read-write anonymous shared mapping of `len` bytes.
    pub(crate) fn anon(len: usize) -> MappedMemory {
        MappedMemory::new(
            None,
            len,
            MapProtections::READ_WRITE,
            MapFlags::SHARED,
            None,
        )
        .unwrap()
    }

    #[test]
    fn page_rounding() {
        let p = page_size();
        assert_eq!(round_to_page_size(0), 0);
        assert_eq!(round_to_page_size(1), p);
        assert_eq!(round_to_page_size(p), p);
        assert_eq!(round_to_page_size(p + 1), 2 * p);
        assert_eq!(round_to_page_size(2 * p - 1), 2 * p);
        assert_eq!(round_to_page_size(usize::MAX) % p, 0);
        if p == 4096 {
            assert_eq!(round_to_page_size(4097), 8192);
            assert_eq!(round_to_page_size(8191), 8192);
        }
    }

    #[test]
    fn read_write_round_trip_and_bounds() {
        let mut m = anon(4096);
        m.write(4090, b"abcdef").unwrap();
        assert_eq!(m.at(4090..4096).unwrap(), b"abcdef");
        assert!(matches!(
            m.write(4091, b"abcdef"),
            Err(Error::OutOfBounds {
                offset: 4091,
                len: 6,
                size: 4096
            })
        ));
        assert!(matches!(m.at(4000..4097), Err(Error::OutOfBounds { .. })));
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 10..5;
        assert!(matches!(m.at(reversed), Err(Error::OutOfBounds { .. })));
        assert!(matches!(
            m.at(usize::MAX - 1..usize::MAX),
            Err(Error::OutOfBounds { .. })
        ));
        let mut buf = [0u8; 2];
        assert!(m.read(usize::MAX, &mut buf).is_err());
    }

    #[test]
    fn invalid_arguments_are_refused() {
        let rw = MapProtections::READ_WRITE;
        assert!(matches!(
            MappedMemory::new(None, 0, rw, MapFlags::SHARED, None),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            MappedMemory::new(None, 4096, rw, MapFlags::empty(), None),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            MappedMemory::new(None, 4096, rw, MapFlags::SHARED | MapFlags::PRIVATE, None),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            MappedMemory::new(
                Some(0x1000_0000),
                4096,
                rw,
                MapFlags::SHARED | MapFlags::FIXED,
                None
            ),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn read_only_mapping_refuses_writes() {
        let mut m =
            MappedMemory::new(None, 4096, MapProtections::READ, MapFlags::PRIVATE, None).unwrap();
        assert!(matches!(m.write(0, b"x"), Err(Error::ReadOnly)));
        assert!(matches!(m.get::<u32>(0), Err(Error::ReadOnly)));
        assert_eq!(m.at(0..4).unwrap(), [0, 0, 0, 0]);
    }

    #[test]
    fn detach_then_munmap() {
        let mut m = anon(8192);
        m.write(0, b"q").unwrap();
        m.get::<u64>(8).unwrap();
        let (addr, len) = m.detach();
        assert_eq!(len, 8192);
        // SAFETY: we own the detached mapping and hold no reference into it.
        let back = unsafe { MappedMemory::from_raw_parts(addr, len, MapProtections::READ_WRITE) };
        // A new owner, a new table: the u64 placed at 8 is forgotten.
        assert_eq!(back.at(0..16).unwrap(), b"q\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
        let (addr, len) = back.detach();
        // SAFETY: as above.
        unsafe { munmap(addr, len) }.unwrap();
    }
}
