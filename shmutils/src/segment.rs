//! [`Segment`]: a named shared memory object, its mapping, a header, and
//! the heap inside it.
//!
//! ```text
//! 0     SegmentHeader (64 B): magic (published last), format version,
//!       header size, size, creator pid, random segment id, heap offset
//! 64    the heap (see the heap module): header, free lists, directory,
//!       page map, bitmap, then the page-aligned arena
//! ```
//!
//! ```
//! use shmutils::Segment;
//! # let name = format!("/shmutils-doc-segment-{}", std::process::id());
//! let seg = Segment::create(&name, 1 << 20)?;
//! let n = seg.heap().find_or_init("answer", || 42u64)?;
//! let again = Segment::open(&name)?;
//! assert_eq!(*again.heap().get(again.heap().find::<u64>("answer")?)?, 42);
//! assert_eq!(again.id(), seg.id());
//! # let _ = n;
//! seg.unlink()?;
//! # Ok::<(), shmutils::Error>(())
//! ```

use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::heap::layout::Geometry;
use crate::heap::{self, SharedHeap, TypeCache};
use crate::mmap::{MapFlags, MapProtections, MappedMemory};
use crate::shm::{shm_unlink, Mode, ShmFd};
use crate::sys;

/// "SHMUTSEG", little-endian: the first eight bytes of every segment.
pub(crate) const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"SHMUTSEG");
/// The segment format this build writes and the newest it reads.
pub const SEGMENT_VERSION: u32 = 1;
/// Bytes of the segment header; the heap starts right after it.
const HEADER_BYTES: u64 = 64;
/// How long `open_or_create` waits for a peer that is creating the segment.
const CREATE_WAIT: Duration = Duration::from_secs(2);

/// The segment header. Atomics throughout: peers may write it any time.
#[repr(C)]
struct SegmentHeader {
    /// [`SEGMENT_MAGIC`], stored last (Release) when the segment is ready.
    magic: AtomicU64,
    version: AtomicU32,
    header_size: AtomicU32,
    size: AtomicU64,
    creator_pid: AtomicU32,
    _pad: AtomicU32,
    id: AtomicU64,
    heap_offset: AtomicU64,
    _reserved: [AtomicU64; 2],
}

const _: () = assert!(std::mem::size_of::<SegmentHeader>() as u64 == HEADER_BYTES);

/// A shared memory segment with a heap: what processes share.
///
/// Create it in one process ([`create`](Self::create),
/// [`open_or_create`](Self::open_or_create), or [`anonymous`](Self::anonymous)
/// before `fork`), open it by name in the others ([`open`](Self::open)),
/// and reach its contents through [`heap`](Self::heap). The mapping is
/// unmapped on drop; the name stays until [`unlink`](Self::unlink) (or
/// drop, if the creator asked with [`unlink_on_drop`](Self::unlink_on_drop)).
///
/// # Trust model
/// Every process attached to a segment can write all of it, so its bytes
/// are untrusted input: every offset, length, tag, type id and
/// discriminant is checked before use, and the library reads its own
/// metadata only through atomics.
///
/// - A peer that is buggy, crashed half-way or hostile **can** make you
///   read wrong values, fill the heap, leak blocks, remove names, give you
///   typed errors (`HeapCorrupt`, `TypeMismatch`, `FreedObject`,
///   `OwnerDied`, ...), shrink the object so that your next access to a lost
///   page raises `SIGBUS`, and, by forging consistent bookkeeping, make the
///   heap hand one block to two owners.
/// - It **can never** make this process read or write outside the mapping
///   through the library, make the library panic, or hang a lock forever.
/// - You **rely on** peers to change shared values only through atomics and
///   lock guards, and to free only blocks nobody uses: a peer that writes
///   plain bytes under a `&T` you hold breaks Rust's aliasing rules in your
///   process, and no library can stop that in shared memory.
///
/// In one process, safe code is sound whatever the segment holds: typed
/// reads check each block's type, freeing is `unsafe` (or done by a
/// [`SharedBox`](crate::SharedBox)), forging pointers is `unsafe`, and no
/// raw [`MappedMemory`] of the segment's object exists in the process
/// while a `Segment` of it does (either is refused while the other lives:
/// [`Error::InUseBySegment`], [`Error::InUseByRawMapping`]), so nothing in
/// this process writes under the heap's references. Opening one segment
/// several times is fine.
#[derive(Debug)]
pub struct Segment {
    map: MappedMemory,
    name: Option<String>,
    id: u64,
    creator_pid: u32,
    geo: Geometry,
    /// The object (kept open so the heap can reserve pages in it before it
    /// writes them); `None` for an anonymous segment.
    fd: Option<ShmFd>,
    /// This process's validated copy of the segment's type table.
    types: TypeCache,
    created: bool,
    /// `Some(fork generation)` of the process that asked to unlink on
    /// drop: a forked child's copy of the `Segment` leaves the name alone.
    unlink_on_drop: Option<u64>,
}

impl Segment {
    /// The smallest segment size that works (header, heap bookkeeping and
    /// one 64 KiB slab).
    pub fn min_size() -> usize {
        Geometry::min_total(HEADER_BYTES) as usize
    }

    /// Creates the named segment `name` of `size` bytes; fails if the name
    /// exists.
    ///
    /// # Errors
    /// [`Error::SegmentTooSmall`] below [`min_size`](Self::min_size) (checked
    /// before anything is created); [`Error::InvalidArgument`] above 1 TiB;
    /// [`Error::Exists`], [`Error::InvalidName`] and the OS's errors. A
    /// failed create leaves no name behind.
    pub fn create(name: &str, size: usize) -> Result<Segment> {
        Geometry::compute(size as u64, HEADER_BYTES)?;
        let fd = ShmFd::open(name, Mode::CreateExclusive)?;
        Segment::initialize_named(fd, size)
    }

    /// Opens the existing segment `name`, validating its header before
    /// trusting anything in it.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Truncated`] if the object is shorter
    /// than a segment (e.g. zero-length) or than its header says;
    /// [`Error::NotASegment`] if the magic number is wrong (including a
    /// segment whose creator has not finished: use
    /// [`open_or_create`](Self::open_or_create) to wait);
    /// [`Error::UnsupportedVersion`]; [`Error::CorruptHeader`] or
    /// [`Error::HeapCorrupt`] for impossible header fields;
    /// [`Error::InUseByRawMapping`] while a raw [`MappedMemory`] of the
    /// object is alive in this process. Nothing is mapped past the end of
    /// the object: its size is read first.
    pub fn open(name: &str) -> Result<Segment> {
        let fd = ShmFd::open(name, Mode::ReadWrite)?;
        let size = fd.size()?;
        Segment::check_size(fd.name(), size)?;
        let map = Segment::map(&fd, size)?;
        Segment::from_mapping(map, Some(fd), false)
    }

    /// Opens `name`, creating it with `size` bytes if it does not exist.
    /// Safe when several processes race: exactly one creates and
    /// initializes it, the others wait (at most 2 s) for its header to be
    /// published. An existing segment keeps its own size.
    ///
    /// # Errors
    /// As [`create`](Self::create) and [`open`](Self::open);
    /// [`Error::Timeout`] if the creator did not publish the header in time
    /// (e.g. it died while creating).
    pub fn open_or_create(name: &str, size: usize) -> Result<Segment> {
        Geometry::compute(size as u64, HEADER_BYTES)?;
        let fd = ShmFd::open(name, Mode::ReadWriteCreate)?;
        if fd.created() {
            return Segment::initialize_named(fd, size);
        }
        let deadline = Instant::now() + CREATE_WAIT;
        loop {
            let size = fd.size()?;
            if size != 0 {
                Segment::check_size(fd.name(), size)?;
                let map = Segment::map(&fd, size)?;
                // Acquire: pairs with the Release store of the magic in
                // initialize().
                let magic = header(&map).magic.load(Ordering::Acquire);
                if magic != 0 {
                    return Segment::from_mapping(map, Some(fd), false);
                }
                if Instant::now() >= deadline {
                    return Err(Error::Timeout {
                        what: format!(
                            "segment {:?} to be initialized by its creator (sized, but no header after {CREATE_WAIT:?})",
                            fd.name()
                        ),
                    });
                }
            } else if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "segment {:?} to be sized by its creator (still 0 bytes after {CREATE_WAIT:?})",
                        fd.name()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// An unnamed segment of `size` bytes, shared with children forked
    /// after this call (and nobody else).
    ///
    /// # Errors
    /// As [`create`](Self::create), without the naming errors.
    pub fn anonymous(size: usize) -> Result<Segment> {
        Geometry::compute(size as u64, HEADER_BYTES)?;
        let map = MappedMemory::new(
            None,
            size,
            MapProtections::READ_WRITE,
            MapFlags::SHARED,
            None,
        )?;
        Segment::initialize(&map)?;
        let mut seg = Segment::from_mapping(map, None, true)?;
        seg.created = true;
        Ok(seg)
    }

    fn check_size(name: &str, size: u64) -> Result<()> {
        let min = Geometry::min_total(HEADER_BYTES);
        if size < min {
            return Err(Error::Truncated {
                name: name.to_owned(),
                size,
                expected: min,
            });
        }
        Ok(())
    }

    fn map(fd: &ShmFd, size: u64) -> Result<MappedMemory> {
        let len = usize::try_from(size).map_err(|_| Error::InvalidArgument {
            what: format!("a segment of {size} bytes does not fit the address space"),
        })?;
        MappedMemory::for_segment(len, fd)
    }

    /// Sizes, maps and initializes a segment this process just created;
    /// unlinks the name again if any step fails.
    fn initialize_named(fd: ShmFd, size: usize) -> Result<Segment> {
        let name = fd.name().to_owned();
        let made = (|| {
            fd.truncate(size as u64)?;
            // Before the first write: a full /dev/shm is an error here,
            // never a SIGBUS below.
            heap::reserve_fixed(fd.as_fd(), size as u64, HEADER_BYTES, Some(&name))?;
            let map = Segment::map(&fd, size as u64)?;
            Segment::initialize(&map)?;
            Ok(map)
        })()
        .and_then(|map| Segment::from_mapping(map, Some(fd), true));
        if made.is_err() {
            let _ = shm_unlink(&name);
        }
        let mut seg = made?;
        seg.created = true;
        Ok(seg)
    }

    /// Writes the heap and the header into a fresh (zeroed) mapping; the
    /// magic goes last.
    fn initialize(map: &MappedMemory) -> Result<()> {
        let base = NonNull::new(map.as_ptr()).ok_or_else(|| Error::InvalidArgument {
            what: "a mapping at address 0".to_owned(),
        })?;
        // SAFETY: the mapping is live, read-write, page-aligned and
        // map.len() long, and all zero (a fresh object or anonymous
        // memory); the segment is not published (magic is 0), so no peer
        // uses it yet: openers stop at the magic.
        unsafe { SharedHeap::format(base, map.len(), HEADER_BYTES)? };
        let mut id = [0u8; 8];
        sys::getrandom(&mut id).map_err(|e| Error::io("getrandom", e))?;
        let h = header(map);
        h.version.store(SEGMENT_VERSION, Ordering::Relaxed);
        h.header_size.store(HEADER_BYTES as u32, Ordering::Relaxed);
        h.size.store(map.len() as u64, Ordering::Relaxed);
        h.creator_pid.store(sys::getpid(), Ordering::Relaxed);
        h.id.store(u64::from_le_bytes(id) | 1, Ordering::Relaxed);
        h.heap_offset.store(HEADER_BYTES, Ordering::Relaxed);
        // Release: publishes the header and the heap to the Acquire load of
        // the magic in from_mapping() and open_or_create().
        h.magic.store(SEGMENT_MAGIC, Ordering::Release);
        Ok(())
    }

    /// Validates the header and heap of a mapping.
    fn from_mapping(map: MappedMemory, fd: Option<ShmFd>, created: bool) -> Result<Segment> {
        let name = fd.as_ref().map(|f| f.name().to_owned());
        let label = name.clone().unwrap_or_else(|| "anonymous".to_owned());
        let h = header(&map);
        // Acquire: pairs with the Release store in initialize().
        let magic = h.magic.load(Ordering::Acquire);
        if magic != SEGMENT_MAGIC {
            return Err(Error::NotASegment {
                name: label,
                found: magic,
            });
        }
        let version = h.version.load(Ordering::Relaxed);
        if version > SEGMENT_VERSION {
            return Err(Error::UnsupportedVersion {
                name: label,
                found: version,
                supported: SEGMENT_VERSION,
            });
        }
        let corrupt = |what: String| Error::CorruptHeader {
            name: label.clone(),
            what,
        };
        if version == 0 {
            return Err(corrupt(
                "format version: expected 1 or more, found 0".to_owned(),
            ));
        }
        let header_size = h.header_size.load(Ordering::Relaxed);
        if u64::from(header_size) != HEADER_BYTES {
            return Err(corrupt(format!(
                "header size: expected {HEADER_BYTES}, found {header_size}"
            )));
        }
        let size = h.size.load(Ordering::Relaxed);
        let actual = map.len() as u64;
        if size > actual {
            return Err(Error::Truncated {
                name: label,
                size: actual,
                expected: size,
            });
        }
        if size != actual {
            return Err(corrupt(format!(
                "size: the object holds {actual} bytes, the header says {size}"
            )));
        }
        let heap_offset = h.heap_offset.load(Ordering::Relaxed);
        if heap_offset != HEADER_BYTES {
            return Err(corrupt(format!(
                "heap offset: expected {HEADER_BYTES}, found {heap_offset}"
            )));
        }
        let id = h.id.load(Ordering::Relaxed);
        if id == 0 {
            return Err(corrupt(
                "segment id: expected a random non-zero id, found 0".to_owned(),
            ));
        }
        let creator_pid = h.creator_pid.load(Ordering::Relaxed);
        let base = NonNull::new(map.as_ptr()).ok_or_else(|| corrupt("mapped at 0".to_owned()))?;
        let types = TypeCache::new();
        // SAFETY: the mapping is live, read-write and page-aligned; the view
        // is dropped at once (only the validated geometry is kept).
        let geo =
            unsafe { SharedHeap::attach(base, map.len(), HEADER_BYTES, &types, None, None, None)? }
                .geometry();
        Ok(Segment {
            map,
            name,
            id,
            creator_pid,
            geo,
            fd,
            types,
            created,
            unlink_on_drop: None,
        })
    }

    /// The heap inside the segment: a cheap view, valid while the segment
    /// lives.
    pub fn heap(&self) -> SharedHeap<'_> {
        // SAFETY: MappedMemory::as_ptr comes from a NonNull. `geo` was
        // validated against this mapping when the segment was made; the
        // mapping and the type cache live as long as the borrow of self;
        // the mapping is read-write and page-aligned, and everything in it
        // is reached through atomics and blocks the heap checked.
        unsafe {
            let base = NonNull::new_unchecked(self.map.as_ptr());
            SharedHeap::from_parts(
                base,
                self.geo,
                &self.types,
                self.fd.as_ref().map(|f| f.as_fd()),
                self.name.as_deref(),
                Some(self.id),
            )
        }
    }

    /// The shared memory name (with its leading `/`); `None` if anonymous.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The segment's random 64-bit id, chosen by its creator: two segments
    /// that happen to get the same name over time have different ids.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The segment's size in bytes.
    pub fn size(&self) -> usize {
        self.map.len()
    }

    /// The process id of the segment's creator (as recorded in the header).
    pub fn creator_pid(&self) -> u32 {
        self.creator_pid
    }

    /// Whether this process created the segment.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Removes the segment's name; mappings (this one and peers') stay
    /// valid until dropped.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an anonymous segment; the errors of
    /// [`shm_unlink`].
    pub fn unlink(&self) -> Result<()> {
        match &self.name {
            Some(name) => shm_unlink(name),
            None => Err(Error::InvalidArgument {
                what: "an anonymous segment has no name to unlink".to_owned(),
            }),
        }
    }

    /// Asks that dropping this `Segment` unlinks its name (opt-in, for the
    /// creator only; errors in drop are ignored). Only this process does: a
    /// child forked from it drops its copy without unlinking.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if this process did not create the
    /// segment.
    pub fn unlink_on_drop(&mut self, yes: bool) -> Result<()> {
        if !self.created {
            return Err(Error::InvalidArgument {
                what: "only the segment's creator may unlink it on drop".to_owned(),
            });
        }
        self.unlink_on_drop = yes.then(crate::process::fork_generation);
        Ok(())
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.unlink_on_drop == Some(crate::process::fork_generation()) {
            if let Some(name) = &self.name {
                let _ = shm_unlink(name);
            }
        }
    }
}

fn header(map: &MappedMemory) -> &SegmentHeader {
    // SAFETY: every mapping handed here is at least min_total bytes (checked
    // before mapping), page-aligned, read-write and live for the borrow;
    // the header is all atomics, valid for any bytes.
    unsafe { &*(map.as_ptr() as *const SegmentHeader) }
}
