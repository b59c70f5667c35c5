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
//! # Creation that a crash cannot wedge
//! A named object is created in place (no temporary names), by whoever
//! holds its **creation lock**: an exclusive `flock` on the object. The
//! creator takes it right after `shm_open(O_CREAT | O_EXCL)` and holds it
//! until the header is published; the kernel drops the lock of a process
//! that dies, whatever instruction it was at. So "not published, and
//! nobody holds the lock" means nobody is creating the object any more,
//! and the next [`Segment::open_or_create`] finishes the job: it takes the
//! lock and creates the segment again in place, as its creator of record.
//!
//! What an object's first bytes say (read with `pread`, never through a
//! mapping, while it is not published):
//!
//! | state | object | written by |
//! |---|---|---|
//! | empty | 0 bytes | the lock holder |
//! | creating | `"SHMUTNEW"`, then the writer's pid and the size it asked for | the lock holder |
//! | published | `"SHMUTSEG"` and a complete header | peers, through the heap; the library never truncates it |
//! | foreign | anything else | not us: never written, a typed error |
//!
//! The lock holder goes empty or creating → `ftruncate(0)` → empty →
//! `pwrite` of the creating header → creating → `ftruncate(size)`, map,
//! format the heap, fill the header → creating → store `"SHMUTSEG"`
//! (Release) → published, then unlocks. Killed at any instruction, it
//! leaves an empty or creating object (the next holder starts over from
//! `ftruncate(0)`, which also discards what it wrote) or a published one.
//! Nobody but the lock holder maps an object before it is published, so
//! the truncations never pull a page from under a mapping. Every state
//! read without the lock that is not clearly published or foreign (a read
//! may catch the magic half-written) is read again under the lock.
//!
//! The lock belongs to the open file description, so a child forked while
//! a creator holds it shares it. The creator releases it explicitly once
//! it has published; only if the creator dies first does the child keep
//! the name locked (until it exits or execs: the descriptor is
//! close-on-exec), and openers then time out instead of taking over. For
//! the same reason, anyone else's `flock` on an unpublished object (even
//! one taken by other code of this process, through another descriptor)
//! reads as a live creator.
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

use std::mem::offset_of;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::heap::layout::Geometry;
use crate::heap::{self, SharedHeap, TypeCache};
use crate::mmap::MappedMemory;
use crate::registry::local::{Attachment, RegistryMap};
use crate::registry::ProcessInfo;
#[cfg(test)]
use crate::registry::{Registry, Slot};
use crate::shm::{self, shm_unlink, FileLock, Mode, ShmFd};
use crate::sys;

/// "SHMUTSEG", little-endian: the first eight bytes of every segment.
pub(crate) const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"SHMUTSEG");
/// The segment format this build writes and the newest it reads.
pub const SEGMENT_VERSION: u32 = 1;
/// Bytes of the segment header; the heap starts right after it.
const HEADER_BYTES: u64 = 64;
/// "SHMUTNEW", little-endian: the magic of a segment being created (module
/// docs, "creating"), replaced by [`SEGMENT_MAGIC`] when it is published.
const CREATING_MAGIC: u64 = u64::from_le_bytes(*b"SHMUTNEW");
/// How long `create`, `open` and `open_or_create` wait for a live process
/// that holds a segment's creation lock to publish it.
const CREATE_WAIT: Duration = Duration::from_secs(2);
/// The first and the longest pause between two looks at a segment that a
/// live process is creating (a creator needs well under a millisecond).
const POLL_FIRST: Duration = Duration::from_micros(20);
const POLL_MAX: Duration = Duration::from_millis(1);

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
/// A name holds a complete segment or one a crash left recoverable: a
/// process killed while creating a segment (at any instruction) leaves it
/// for the next [`open_or_create`](Self::open_or_create), which creates it
/// again in place as fast as a plain create; [`open`](Self::open) waits
/// for a live creator and reports a dead one's segment as
/// [`Error::Unfinished`] (see the module docs for the protocol).
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
///   `OwnerDied`, ...), shrink a named segment's object so that your next
///   access to a lost page raises `SIGBUS` (named objects cannot be sealed;
///   an [`anonymous`](Self::anonymous) segment is sealed against
///   shrinking), make a segment's header read "being created" so that the
///   next [`open_or_create`](Self::open_or_create) creates it again (as
///   good as removing its name), and, by forging consistent bookkeeping,
///   make the heap hand one block to two owners.
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
    /// The sealed memfd of an anonymous segment; `None` for a named one.
    /// Not handed to the heap for page reservations: like anonymous
    /// memory, it lives on the kernel's internal mount, which has no size
    /// of its own to run out of.
    memfd: Option<OwnedFd>,
    /// This process's side of the segment's registry.
    att: Arc<Attachment>,
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
    /// The creation holds the object's creation lock from `shm_open` until
    /// the header is published (module docs): if this process dies half-way,
    /// the name is left for the next [`open_or_create`](Self::open_or_create)
    /// to finish, never wedged.
    ///
    /// # Errors
    /// [`Error::SegmentTooSmall`] below [`min_size`](Self::min_size) (checked
    /// before anything is created); [`Error::InvalidArgument`] above 1 TiB;
    /// [`Error::Exists`] if the name is taken (also when a racing
    /// [`open_or_create`](Self::open_or_create) found the new object still
    /// empty and created the segment itself, between this call's
    /// `shm_open` and its lock); [`Error::InvalidName`] and the OS's errors.
    /// A create that fails on its own object leaves no name behind.
    pub fn create(name: &str, size: usize) -> Result<Segment> {
        Geometry::compute(size as u64, HEADER_BYTES)?;
        let deadline = Instant::now() + CREATE_WAIT;
        loop {
            let fd = ShmFd::open(name, Mode::CreateExclusive)?;
            if let Some(seg) = Segment::attach(fd, Attach::Create(size), deadline)? {
                return Ok(seg);
            }
            // Someone unlinked the object before this call could lock it:
            // the name is free again.
            renamed_too_often(name, deadline)?;
        }
    }

    /// Opens the existing segment `name`, validating its header before
    /// trusting anything in it.
    ///
    /// A segment that a live process is creating (it holds the creation
    /// lock) is waited for, at most 2 s. One whose creation stopped (the
    /// creator died; nobody holds the lock) is reported at once as
    /// [`Error::Unfinished`]; `open` has no size to create it with, so it
    /// leaves it for [`open_or_create`](Self::open_or_create).
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Unfinished`] as above (also for an
    /// empty object whose creator has not yet taken its lock, in the few
    /// microseconds after its `shm_open`); [`Error::Timeout`] if a live
    /// creator did not publish within 2 s; [`Error::Truncated`] if the
    /// object is shorter than a segment or than its header says;
    /// [`Error::NotASegment`] if the magic number is wrong;
    /// [`Error::UnsupportedVersion`]; [`Error::CorruptHeader`] or
    /// [`Error::HeapCorrupt`] for impossible header fields;
    /// [`Error::InUseByRawMapping`] while a raw [`MappedMemory`] of the
    /// object is alive in this process. Nothing is mapped past the end of
    /// the object: its size is read first.
    pub fn open(name: &str) -> Result<Segment> {
        let deadline = Instant::now() + CREATE_WAIT;
        loop {
            let fd = ShmFd::open(name, Mode::ReadWrite)?;
            if let Some(seg) = Segment::attach(fd, Attach::Open, deadline)? {
                return Ok(seg);
            }
            // The unfinished object lost its name: look at the name again.
            renamed_too_often(name, deadline)?;
        }
    }

    /// Opens `name`, creating it with `size` bytes if it does not exist.
    /// Safe when several processes race: exactly one creates and
    /// initializes it, the others wait (at most 2 s) for its header to be
    /// published. An existing segment keeps its own size.
    ///
    /// If the name holds a segment whose creation stopped half-way (its
    /// creator died at any point, even while itself finishing another
    /// dead creator's job), this call creates it again in place, with
    /// `size` bytes, and is its creator of record
    /// ([`created`](Self::created) is `true`, [`creator_pid`](Self::creator_pid)
    /// is this process). That takes as long as a plain create: no waiting
    /// for a dead process.
    ///
    /// # Errors
    /// As [`create`](Self::create) and [`open`](Self::open), without
    /// [`Error::Exists`] and [`Error::Unfinished`]; [`Error::Timeout`] if a
    /// live process holds the creation lock for more than 2 s without
    /// publishing; a foreign object (not a segment, not one being created)
    /// is [`Error::NotASegment`] or [`Error::Truncated`], and is never
    /// written.
    pub fn open_or_create(name: &str, size: usize) -> Result<Segment> {
        Geometry::compute(size as u64, HEADER_BYTES)?;
        let deadline = Instant::now() + CREATE_WAIT;
        loop {
            let fd = ShmFd::open(name, Mode::ReadWriteCreate)?;
            if let Some(seg) = Segment::attach(fd, Attach::OpenOrCreate(size), deadline)? {
                return Ok(seg);
            }
            renamed_too_often(name, deadline)?;
        }
    }

    /// An unnamed segment of `size` bytes, shared with children forked
    /// after this call, and with any process its [`memfd`](Self::memfd) is
    /// handed to.
    ///
    /// It lives in a `memfd_create` object sealed with `F_SEAL_SHRINK`
    /// (and `F_SEAL_SEAL`, so the seals stay as they are): no process that
    /// holds a descriptor of it, this one included, can shrink it, so no
    /// peer can make an access to it raise `SIGBUS`. It is not sealed
    /// against growing, which takes nothing from a mapping.
    ///
    /// # Errors
    /// As [`create`](Self::create), without the naming errors.
    pub fn anonymous(size: usize) -> Result<Segment> {
        Geometry::compute(size as u64, HEADER_BYTES)?;
        let memfd = shm::sealed_anonymous(size as u64)?;
        let map = MappedMemory::for_memfd(size, memfd.as_fd())?;
        Segment::initialize(&map)?;
        Segment::from_mapping(map, None, Some(memfd), true)
    }

    /// Opens, waits for, takes over or creates the object behind `fd`, as
    /// `how` says (module docs). `Ok(None)`: the object is unfinished and
    /// has lost its name (its last creator failed and unlinked it, or
    /// someone else did); the caller opens the name again.
    fn attach(fd: ShmFd, how: Attach, deadline: Instant) -> Result<Option<Segment>> {
        let mut pause = POLL_FIRST;
        loop {
            match (read_state(&fd, false)?, how) {
                (State::Published | State::Foreign, Attach::Create(_)) => {
                    return Err(Error::Exists {
                        name: fd.name().to_owned(),
                    })
                }
                (State::Published | State::Foreign, _) => {
                    return Segment::open_existing(fd).map(Some)
                }
                _ => {}
            }
            match Segment::under_lock(&fd, how)? {
                Some(Locked::Existing) => return Segment::open_existing(fd).map(Some),
                Some(Locked::Created(map)) => {
                    return Segment::from_mapping(map, Some(fd), None, true).map(Some)
                }
                Some(Locked::Gone) => return Ok(None),
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "segment {:?} to be published by its creator (a live process has held \
                         its creation lock without publishing the header for {CREATE_WAIT:?})",
                        fd.name()
                    ),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(POLL_MAX);
        }
    }

    /// The part of [`attach`](Self::attach) done holding the creation lock,
    /// if it is free (`None` if a live process holds it). The lock is
    /// released before this returns: a created segment is published by
    /// then, and from then on its name is a complete segment.
    fn under_lock(fd: &ShmFd, how: Attach) -> Result<Option<Locked>> {
        let Some(lock) = fd.try_lock()? else {
            return Ok(None);
        };
        // Under the lock, nobody else changes an unpublished object: this
        // read is settled.
        let pid = match (read_state(fd, true)?, how) {
            (State::Empty, _) => None,
            (State::Creating { pid }, _) => Some(pid),
            (_, Attach::Create(_)) => {
                return Err(Error::Exists {
                    name: fd.name().to_owned(),
                })
            }
            _ => return Ok(Some(Locked::Existing)),
        };
        if !fd.name_still_refers_here()? {
            return Ok(Some(Locked::Gone));
        }
        match how {
            Attach::Open => Err(Error::Unfinished {
                name: fd.name().to_owned(),
                creator_pid: pid,
            }),
            Attach::Create(size) | Attach::OpenOrCreate(size) => {
                Segment::create_locked(fd, &lock, size).map(|map| Some(Locked::Created(map)))
            }
        }
    }

    /// Maps and validates an object that is not being created (published,
    /// or foreign: the validation then says what is wrong with it).
    fn open_existing(fd: ShmFd) -> Result<Segment> {
        let size = fd.size()?;
        Segment::check_size(fd.name(), size)?;
        let map = Segment::map(&fd, size)?;
        Segment::from_mapping(map, Some(fd), None, false)
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
        let len = Segment::mapping_len(size)?;
        MappedMemory::for_segment(len, fd)
    }

    fn mapping_len(size: u64) -> Result<usize> {
        usize::try_from(size).map_err(|_| Error::InvalidArgument {
            what: format!("a segment of {size} bytes does not fit the address space"),
        })
    }

    /// Creates the segment in `fd`'s object from scratch, whatever an
    /// earlier (dead) holder of its creation lock left there, while this
    /// process holds the lock (`_lock`) and the object is empty or being
    /// created; returns its mapping, published. If a step fails, unlinks
    /// the name (when it still designates the object) before the lock is
    /// released, so waiters start over and a failed create leaves no name.
    fn create_locked(fd: &ShmFd, _lock: &FileLock<'_>, size: usize) -> Result<MappedMemory> {
        // Before anything is written: refuses raw mappings of the object in
        // this process (which a truncation would leave past its end), and
        // keeps new ones out until the segment is mapped.
        let claim = MappedMemory::claim_sole_segment(fd)?.ok_or_else(|| Error::CorruptHeader {
            name: fd.name().to_owned(),
            what: format!(
                "magic: expected {:?} in a segment this process has open, found {:?} \
                 (a peer overwrote its header); it is not created again",
                String::from_utf8_lossy(&SEGMENT_MAGIC.to_le_bytes()),
                String::from_utf8_lossy(&CREATING_MAGIC.to_le_bytes()),
            ),
        })?;
        let made = (|| {
            let len = size as u64;
            // Discards what a dead holder wrote: fresh pages read as zero.
            fd.truncate(0)?;
            fd.write_at(&creating_header(len), 0).map_err(|e| match e {
                Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                    Error::NoSpace {
                        segment: format!("segment {:?} of {len} bytes", fd.name()),
                        what: format!(
                            "the {HEADER_BYTES} bytes of its header could not be written"
                        ),
                    }
                }
                e => e,
            })?;
            fd.truncate(len)?;
            // Before the first write through the mapping: a full /dev/shm
            // is an error here, never a SIGBUS below.
            heap::reserve_fixed(fd.as_fd(), len, HEADER_BYTES, Some(fd.name()))?;
            let map = MappedMemory::for_claimed_segment(size, fd, claim)?;
            Segment::initialize(&map)?;
            Ok(map)
        })();
        if made.is_err() && fd.name_still_refers_here().unwrap_or(false) {
            let _ = fd.unlink();
        }
        made
    }

    /// Writes the heap and the header into a mapping whose bytes past the
    /// header are zero; the magic goes last.
    fn initialize(map: &MappedMemory) -> Result<()> {
        let base = NonNull::new(map.as_ptr()).ok_or_else(|| Error::InvalidArgument {
            what: "a mapping at address 0".to_owned(),
        })?;
        // SAFETY: the mapping is live, read-write, page-aligned and
        // map.len() long, and all zero past the header (a fresh memfd, or
        // an object truncated to 0 and sized again); the segment is not
        // published (its magic is 0 or CREATING_MAGIC), so no peer maps it
        // (only the holder of the creation lock maps an unpublished object,
        // and that is us) and no other mapping of it exists in this process
        // (a fresh memfd, or the registry claim of create_locked).
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
        #[cfg(feature = "test-hooks")]
        test_hooks::pause();
        // Release: publishes the header and the heap to the Acquire load of
        // the magic in from_mapping() (which every opener runs before it
        // trusts a field; a `pread` that sees the magic only sends the
        // opener there).
        h.magic.store(SEGMENT_MAGIC, Ordering::Release);
        Ok(())
    }

    /// Validates the header and heap of a mapping.
    fn from_mapping(
        map: MappedMemory,
        fd: Option<ShmFd>,
        memfd: Option<OwnedFd>,
        created: bool,
    ) -> Result<Segment> {
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
        let view =
            unsafe { SharedHeap::attach(base, map.len(), HEADER_BYTES, &types, None, None, None)? };
        let geo = view.geometry();
        // The registry mapped a second time, for the threads' tokens.
        let object = match (&fd, &memfd) {
            (Some(fd), _) => fd.as_fd(),
            (None, Some(memfd)) => memfd.as_fd(),
            (None, None) => {
                return Err(Error::InvalidArgument {
                    what: "a segment needs the descriptor of its object".to_owned(),
                })
            }
        };
        let reg_map = RegistryMap::new(object, geo.reg_off)
            .map_err(|e| Error::io("mapping the segment's registry for thread tokens", e))?;
        let st = sys::fstat(object).map_err(|e| Error::io("fstat of the segment's object", e))?;
        let range = (map.as_ptr() as usize, map.as_ptr() as usize + map.len());
        // SAFETY: the registry lies inside the mapping `range`, which the
        // Segment keeps until its Drop has detached the attachment; all
        // atomics; reg_map maps the same object's registry.
        let att =
            unsafe { Attachment::new(view.registry_header(), range, reg_map, (st.dev, st.ino)) };
        let seg = Segment {
            map,
            name,
            id,
            creator_pid,
            geo,
            fd,
            types,
            created,
            unlink_on_drop: None,
            memfd,
            att,
        };
        // Slots whose owners died are reaped at open, and this process
        // says it is attached (its threads attach when they use the heap).
        let heap = seg.view();
        heap.reap();
        seg.att.attach_process(&heap);
        Ok(seg)
    }

    /// The heap inside the segment: a cheap view, valid while the segment
    /// lives. The calling thread attaches (a registry slot, its allocation
    /// cache, and the death token that lock waiters in other processes
    /// watch) the first time; later calls find it in one thread-local
    /// lookup.
    pub fn heap(&self) -> SharedHeap<'_> {
        let heap = self.view();
        let _ = self.att.slot(&heap);
        heap
    }

    /// The heap view, without attaching the calling thread.
    fn view(&self) -> SharedHeap<'_> {
        // SAFETY: MappedMemory::as_ptr comes from a NonNull. `geo` was
        // validated against this mapping when the segment was made; the
        // mapping, the type cache and the attachment (made for this
        // mapping's registry) live as long as the borrow of self; the
        // mapping is read-write and page-aligned, and everything in it is
        // reached through atomics and blocks the heap checked.
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
            .with_attachment(&self.att)
        }
    }

    /// The live processes attached to the segment (each process that made
    /// or opened it and has not dropped it), read from its registry.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        self.view().registry().processes()
    }

    /// Reaps the registry slots of dead processes and threads now (it also
    /// happens at `open`, and when a thread finds no free slot): what they
    /// were doing with their allocation caches is settled, and their
    /// cached blocks become free for the next claimer. Returns how many
    /// slots were reaped.
    pub fn reap(&self) -> usize {
        self.view().reap()
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

    /// Whether this process created the segment: it published the header,
    /// as its first creator or because it created it again after the
    /// creator died half-way ([`open_or_create`](Self::open_or_create)).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The descriptor of an anonymous segment's memfd, sealed against
    /// shrinking (see [`anonymous`](Self::anonymous)); `None` for a named
    /// segment. Another process that gets it (inherited across `exec`
    /// once `FD_CLOEXEC` is cleared on a duplicate, or passed over a Unix
    /// socket) can map the same memory, and cannot shrink it either.
    pub fn memfd(&self) -> Option<BorrowedFd<'_>> {
        self.memfd.as_ref().map(|fd| fd.as_fd())
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
        // Before the mapping goes: free this process's slots.
        self.att.detach();
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

/// What `attach` was asked to do with a name's object.
#[derive(Clone, Copy, Debug)]
enum Attach {
    /// Open a published segment (wait for a live creator).
    Open,
    /// Open it, or create it with this many bytes if empty or unfinished.
    OpenOrCreate(usize),
    /// This call made the object: create the segment in it with this many
    /// bytes, unless someone else already did.
    Create(usize),
}

/// After an unfinished object lost its name (see [`Segment::attach`]):
/// [`Error::Timeout`] once that has gone on past the deadline.
fn renamed_too_often(name: &str, deadline: Instant) -> Result<()> {
    if Instant::now() < deadline {
        return Ok(());
    }
    Err(Error::Timeout {
        what: format!(
            "shared memory {name:?} to keep one object: it was unlinked each time before \
             its creation could finish, for {CREATE_WAIT:?}"
        ),
    })
}

/// How [`Segment::under_lock`] left the object.
enum Locked {
    /// Published (or foreign): open it as it is.
    Existing,
    /// This call created the segment: its mapping, published.
    Created(MappedMemory),
    /// Unfinished, and no longer the name's object.
    Gone,
}

/// What an object's first bytes say about it (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Zero bytes.
    Empty,
    /// Being created by the holder of the creation lock, or left so by one
    /// that died: `pid` wrote the creating header.
    Creating { pid: u32 },
    /// The segment's magic: complete (its header is validated on mapping).
    Published,
    /// Read without the lock: every byte of the magic is 0 or one of the
    /// two magics' (a write in progress may be caught half-done).
    Unsettled,
    /// Anything else: not ours.
    Foreign,
}

/// Reads the state of `fd`'s object with `pread` (an unpublished object is
/// never mapped but by the lock holder). `locked`: this process holds the
/// creation lock, so nobody changes an unpublished object meanwhile.
fn read_state(fd: &ShmFd, locked: bool) -> Result<State> {
    let mut buf = [0u8; HEADER_BYTES as usize];
    let n = fd.read_at(&mut buf, 0)?;
    Ok(classify(&buf, n, locked))
}

/// The state of an object whose first `n` bytes (at most 64) are in `buf`
/// (the rest zero).
fn classify(buf: &[u8; HEADER_BYTES as usize], n: usize, locked: bool) -> State {
    if n == 0 {
        return State::Empty;
    }
    let magic = u64::from_ne_bytes(field(buf, 0));
    if magic == SEGMENT_MAGIC {
        return State::Published;
    }
    if magic == CREATING_MAGIC && n == buf.len() {
        let at = offset_of!(SegmentHeader, creator_pid);
        return State::Creating {
            pid: u32::from_ne_bytes(field(buf, at)),
        };
    }
    let (creating, published) = (CREATING_MAGIC.to_ne_bytes(), SEGMENT_MAGIC.to_ne_bytes());
    let torn = magic
        .to_ne_bytes()
        .iter()
        .enumerate()
        .all(|(i, &b)| b == 0 || b == creating[i] || b == published[i]);
    if torn && !locked {
        State::Unsettled
    } else {
        State::Foreign
    }
}

/// `N` bytes of `buf` from `at` (inside the 64-byte header buffer).
fn field<const N: usize>(buf: &[u8; HEADER_BYTES as usize], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[at..at + N]);
    out
}

/// The header a creator writes with `pwrite` before it sizes the object:
/// [`CREATING_MAGIC`], the format, the size asked for and its pid.
fn creating_header(size: u64) -> [u8; HEADER_BYTES as usize] {
    let mut buf = [0u8; HEADER_BYTES as usize];
    let mut put = |at: usize, bytes: &[u8]| buf[at..at + bytes.len()].copy_from_slice(bytes);
    put(
        offset_of!(SegmentHeader, magic),
        &CREATING_MAGIC.to_ne_bytes(),
    );
    put(
        offset_of!(SegmentHeader, version),
        &SEGMENT_VERSION.to_ne_bytes(),
    );
    put(
        offset_of!(SegmentHeader, header_size),
        &(HEADER_BYTES as u32).to_ne_bytes(),
    );
    put(offset_of!(SegmentHeader, size), &size.to_ne_bytes());
    put(
        offset_of!(SegmentHeader, creator_pid),
        &sys::getpid().to_ne_bytes(),
    );
    buf
}

/// A pause inside segment creation, for the crash tests (the `test-hooks`
/// feature, which only the workspace's tests enable).
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod test_hooks {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    static PAUSE_NANOS: AtomicU64 = AtomicU64::new(0);

    /// Makes every segment creation of this process sleep `pause` right
    /// before it publishes the header (holding the creation lock, with the
    /// object sized and the heap formatted): a slow creator, or one to kill
    /// at a known point.
    pub fn pause_before_publish(pause: Duration) {
        let nanos = u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX);
        PAUSE_NANOS.store(nanos, Ordering::Relaxed);
    }

    pub(crate) fn pause() {
        let nanos = PAUSE_NANOS.load(Ordering::Relaxed);
        if nanos > 0 {
            std::thread::sleep(Duration::from_nanos(nanos));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stages a peer's write: every other free slot of `reg` taken (in the
    /// name of `mine`'s owner, who lives), then `mine`'s owner word zeroed,
    /// so that a claim can only find `mine`. Returns that owner word and
    /// the slots taken, for [`unstage`].
    fn stage_peer_zeroing<'a>(reg: Registry<'a>, mine: &'a Slot) -> (u64, Vec<&'a Slot>) {
        let me_word = mine.owner.load(Ordering::Relaxed);
        let others: Vec<&Slot> = reg
            .slots
            .iter()
            .filter(|s| !std::ptr::eq(*s, mine) && s.owner.load(Ordering::Relaxed) == 0)
            .collect();
        for s in &others {
            s.owner.store(me_word, Ordering::Relaxed);
        }
        mine.owner.store(0, Ordering::Relaxed);
        (me_word, others)
    }

    /// Frees the slots [`stage_peer_zeroing`] took.
    fn unstage(others: &[&Slot]) {
        for s in others {
            s.owner.store(0, Ordering::Relaxed);
        }
    }

    /// The same through two `Segment`s of one object in this process.
    #[test]
    fn a_slot_is_never_shared_through_two_segments_of_one_object() {
        let name = format!("/shmutils-test-unit-twice-{}", std::process::id());
        let mut one = Segment::create(&name, 4 << 20).unwrap();
        one.unlink_on_drop(true).unwrap();
        let two = Segment::open(&name).unwrap();
        let (h1, h2) = (one.heap(), two.heap());
        let l = std::alloc::Layout::from_size_align(64, 8).unwrap();
        let p = h1.alloc(l).unwrap();
        // SAFETY: an untyped block nobody references.
        unsafe { h1.free(p, l) }.unwrap();
        let mine: &Slot = h1.slot().unwrap().slot();
        let custody = h1.custody(mine);
        let (me_word, others) = stage_peer_zeroing(h1.registry(), mine);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let q = h2.alloc(l).unwrap();
                assert!(h2.slot().is_none_or(|t| h2.custody(t.slot()) != custody));
                // SAFETY: as above.
                unsafe { h2.free(q, l) }.unwrap();
            });
        });
        unstage(&others);
        mine.owner.store(me_word, Ordering::Relaxed);
    }

    /// A peer zeroes the owner word of a slot a live thread of this
    /// process uses: no other thread of this process may get that slot
    /// (two threads on one cache would claim blocks with plain stores),
    /// and no reaper of this process touches it.
    #[test]
    fn a_slot_a_peer_freed_under_a_live_thread_is_never_shared_in_this_process() {
        let seg = Segment::anonymous(4 << 20).unwrap();
        let heap = seg.heap();
        let l = std::alloc::Layout::from_size_align(64, 8).unwrap();
        let p = heap.alloc(l).unwrap();
        // SAFETY: an untyped block nobody references.
        unsafe { heap.free(p, l) }.unwrap();
        let mine: &Slot = heap.slot().unwrap().slot();
        let (me_word, others) = stage_peer_zeroing(heap.registry(), mine);
        // Another thread finds no slot it may use: it allocates without a
        // cache, never through this one.
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let q = heap.alloc(l).unwrap();
                assert!(heap.slot().is_none_or(|t| !std::ptr::eq(t.slot(), mine)));
                // SAFETY: as above.
                unsafe { heap.free(q, l) }.unwrap();
            });
        });
        unstage(&others);
        // A reaper of this process leaves it alone, whatever it says.
        mine.owner.store(me_word ^ 1, Ordering::Relaxed); // a dead "owner"
        seg.reap();
        let q = heap.alloc(l).unwrap();
        assert!(std::ptr::eq(heap.slot().unwrap().slot(), mine));
        // SAFETY: as above.
        unsafe { heap.free(q, l) }.unwrap();
        mine.owner.store(me_word, Ordering::Relaxed);
        // The heap is intact; the skipped slot was counted as corruption.
        let r = heap.check();
        assert!(
            r.corruption.len() == 1 && r.corruption[0].contains("corrupt"),
            "{r}"
        );
        assert_eq!(r.leaked_blocks, 0);
    }

    fn header_with(magic: &[u8]) -> [u8; HEADER_BYTES as usize] {
        let mut buf = [0u8; HEADER_BYTES as usize];
        buf[..magic.len()].copy_from_slice(magic);
        buf
    }

    #[test]
    fn the_creating_header_reads_back_as_creating_by_this_process() {
        let buf = creating_header(1 << 20);
        let me = sys::getpid();
        for locked in [false, true] {
            assert_eq!(
                classify(&buf, buf.len(), locked),
                State::Creating { pid: me }
            );
        }
        let size = offset_of!(SegmentHeader, size);
        assert_eq!(u64::from_ne_bytes(field(&buf, size)), 1 << 20);
        // Cut short, it is not something a creator of ours leaves.
        assert_eq!(classify(&buf, 32, true), State::Foreign);
    }

    #[test]
    fn states_from_the_first_bytes() {
        let zero = [0u8; HEADER_BYTES as usize];
        assert_eq!(classify(&zero, 0, false), State::Empty);
        assert_eq!(classify(&zero, 0, true), State::Empty);
        let published = header_with(&SEGMENT_MAGIC.to_ne_bytes());
        assert_eq!(classify(&published, 64, false), State::Published);
        let elf = header_with(b"\x7fELF\x02\x01\x01\x00");
        assert_eq!(classify(&elf, 64, false), State::Foreign);
        assert_eq!(classify(&elf, 64, true), State::Foreign);
    }

    #[test]
    fn a_magic_caught_half_written_is_read_again_under_the_lock() {
        // Bytes of "SHMUTNEW" and "SHMUTSEG" mixed, or not yet written:
        // unsettled without the lock, foreign once settled like that.
        for magic in [
            b"SHMUTSEW",
            b"SHMUTNEG",
            b"SHM\0\0\0\0\0",
            b"\0\0\0\0\0\0\0\0",
        ] {
            let buf = header_with(magic);
            assert_eq!(classify(&buf, 64, false), State::Unsettled, "{magic:?}");
            assert_eq!(classify(&buf, 64, true), State::Foreign, "{magic:?}");
        }
        let buf = header_with(b"SHMUTXYZ");
        assert_eq!(classify(&buf, 64, false), State::Foreign);
    }
}
