//! Cross-process handles: [`Handle<T>`] names an object in a segment so that
//! any process can find it, without serde.
//!
//! A handle holds the segment's name, the segment's random id (so it never
//! resolves into a different segment that reuses the name), the object's
//! offset, and the fingerprint of `T`'s layout. It travels as text (argv,
//! environment variables) or as bytes (pipes, sockets).
//!
//! # Text form
//! `shm1.<fingerprint>.<segment id>.<offset>.<name>`: the three numbers in
//! lowercase hex, the segment name without its leading `/`, with every byte
//! outside `[A-Za-z0-9_.-]` written `%XX`. Only those characters occur, so a
//! token is safe in argv, environment variables and URLs.
//!
//! # Byte form
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `b"SHH1"` |
//! | 4..12 | type fingerprint, u64 little-endian |
//! | 12..20 | segment id, u64 little-endian |
//! | 20..28 | offset, u64 little-endian |
//! | 28 | name length `n` (1..=255, without the leading `/`) |
//! | 29..29+n | the name's bytes |
//!
//! Parsing either form never panics; every defect is an
//! [`Error::InvalidHandle`] that says what was wrong.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::heap::SharedHeap;
use crate::ptr::RelPtr;
use crate::segment::Segment;
use crate::shared::Shared;
use crate::shm::normalize_name;

/// Prefix of the text form.
const TEXT_PREFIX: &str = "shm1";
/// Magic of the byte form.
const BYTES_MAGIC: [u8; 4] = *b"SHH1";
/// Length of the byte form before the name.
const BYTES_HEADER: usize = 29;

/// Names a `T` inside a named segment, for any process. See the
/// [module docs](self) for its text and byte forms.
pub struct Handle<T> {
    name: String,
    segment_id: u64,
    offset: u64,
    fingerprint: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T: Shared> Handle<T> {
    /// A handle to the `T` at `offset` in the segment `name` with id
    /// `segment_id`. Usually made by the heap, which knows those.
    ///
    /// # Errors
    /// [`Error::InvalidName`] if `name` is not a valid shared memory name.
    pub fn new(name: &str, segment_id: u64, offset: u64) -> Result<Handle<T>> {
        Ok(Handle {
            name: normalize_name(name)?,
            segment_id,
            offset,
            fingerprint: T::FINGERPRINT,
            _type: PhantomData,
        })
    }

    /// Checks that the handle was made for `T` (same layout fingerprint).
    ///
    /// # Errors
    /// [`Error::HandleTypeMismatch`] naming `T` and both fingerprints.
    pub fn check_type(&self) -> Result<()> {
        if self.fingerprint == T::FINGERPRINT {
            Ok(())
        } else {
            Err(Error::HandleTypeMismatch {
                expected: T::NAME,
                expected_fingerprint: T::FINGERPRINT,
                found_fingerprint: self.fingerprint,
            })
        }
    }

    /// The byte form (see the [module docs](self)).
    pub fn to_bytes(&self) -> Vec<u8> {
        let name = self.bare_name().as_bytes();
        let mut out = Vec::with_capacity(BYTES_HEADER + name.len());
        out.extend_from_slice(&BYTES_MAGIC);
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.extend_from_slice(&self.segment_id.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        // normalize_name limits the bare name to 255 bytes.
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out
    }

    /// Parses the byte form. The fingerprint is kept as found; resolving
    /// checks it against `T`.
    ///
    /// # Errors
    /// [`Error::InvalidHandle`] for a wrong magic, a short or long buffer, or
    /// an invalid name.
    pub fn from_bytes(bytes: &[u8]) -> Result<Handle<T>> {
        let bad = |reason: String| Error::InvalidHandle { reason };
        let Some((header, name)) = bytes.split_at_checked(BYTES_HEADER) else {
            return Err(bad(format!(
                "expected at least {BYTES_HEADER} bytes, found {}",
                bytes.len()
            )));
        };
        if header[..4] != BYTES_MAGIC {
            return Err(bad(format!(
                "expected magic {BYTES_MAGIC:?}, found {:?}",
                &header[..4]
            )));
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let len = usize::from(header[28]);
        if name.len() != len {
            return Err(bad(format!(
                "the name length byte says {len}, but {} name bytes follow",
                name.len()
            )));
        }
        let name = std::str::from_utf8(name)
            .map_err(|_| bad("the segment name is not UTF-8".to_owned()))?;
        Handle::from_parts(name, word(12), word(20), word(4))
    }

    fn from_parts(name: &str, segment_id: u64, offset: u64, fingerprint: u64) -> Result<Handle<T>> {
        if name.starts_with('/') {
            return Err(Error::InvalidHandle {
                reason: "the segment name must be stored without its leading '/'".to_owned(),
            });
        }
        let name = normalize_name(name).map_err(|e| Error::InvalidHandle {
            reason: format!("bad segment name: {e}"),
        })?;
        Ok(Handle {
            name,
            segment_id,
            offset,
            fingerprint,
            _type: PhantomData,
        })
    }
}

impl<T> Handle<T> {
    /// The segment's name, with its leading `/`; give it to
    /// [`Segment::open`](crate::Segment::open).
    pub fn segment_name(&self) -> &str {
        &self.name
    }

    /// The segment's random id.
    pub fn segment_id(&self) -> u64 {
        self.segment_id
    }

    /// The object's offset in the segment.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The fingerprint of the type the handle was made for.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    fn bare_name(&self) -> &str {
        self.name.strip_prefix('/').unwrap_or(&self.name)
    }
}

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Handle {
            name: self.name.clone(),
            segment_id: self.segment_id,
            offset: self.offset,
            fingerprint: self.fingerprint,
            _type: PhantomData,
        }
    }
}

impl<T> PartialEq for Handle<T> {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.segment_id == other.segment_id
            && self.offset == other.offset
            && self.fingerprint == other.fingerprint
    }
}

impl<T> Eq for Handle<T> {}

impl<T> fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("segment", &self.name)
            .field("segment_id", &format_args!("{:#018x}", self.segment_id))
            .field("offset", &self.offset)
            .field("fingerprint", &format_args!("{:#018x}", self.fingerprint))
            .finish()
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

impl<T> fmt::Display for Handle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TEXT_PREFIX}.{:x}.{:x}.{:x}.",
            self.fingerprint, self.segment_id, self.offset
        )?;
        for &b in self.bare_name().as_bytes() {
            if is_token_byte(b) {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if is_token_byte(b) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    Some(out)
}

impl<T: Shared> FromStr for Handle<T> {
    type Err = Error;

    /// Parses the text form. The fingerprint is kept as found; resolving
    /// checks it against `T`.
    fn from_str(s: &str) -> Result<Handle<T>> {
        let bad = |reason: String| Error::InvalidHandle { reason };
        let mut parts = s.splitn(5, '.');
        let (Some(prefix), Some(fp), Some(id), Some(off), Some(name)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad(format!(
                "expected {TEXT_PREFIX}.<fingerprint>.<segment id>.<offset>.<name>, found {s:?}"
            )));
        };
        if prefix != TEXT_PREFIX {
            return Err(bad(format!(
                "expected the prefix {TEXT_PREFIX:?}, found {prefix:?}"
            )));
        }
        let hex = |what: &str, v: &str| {
            // from_str_radix accepts a leading '+', which the format never
            // writes; insist on plain hex digits.
            if v.is_empty() || v.len() > 16 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!(
                    "expected the {what} as 1 to 16 hex digits, found {v:?}"
                )));
            }
            u64::from_str_radix(v, 16).map_err(|e| bad(format!("bad {what} {v:?}: {e}")))
        };
        let (fp, id, off) = (
            hex("fingerprint", fp)?,
            hex("segment id", id)?,
            hex("offset", off)?,
        );
        let name = percent_decode(name)
            .ok_or_else(|| bad(format!("bad percent-encoding in segment name {name:?}")))?;
        let name =
            String::from_utf8(name).map_err(|_| bad("the segment name is not UTF-8".to_owned()))?;
        Handle::from_parts(&name, id, off, fp)
    }
}

impl<'s> SharedHeap<'s> {
    /// A handle to the object at `ptr`, for any process: see
    /// [`Segment::resolve`].
    ///
    /// ```
    /// use shmutils::{Handle, Segment};
    /// # let name = format!("/shmutils-doc-handle-{}", std::process::id());
    /// let seg = Segment::create(&name, 1 << 20)?;
    /// let p = seg.heap().new(1923u64)?;
    /// let token = seg.heap().handle(p)?.to_string();
    /// // ... in another process:
    /// let h: Handle<u64> = token.parse()?;
    /// let other = Segment::open(h.segment_name())?;
    /// assert_eq!(*other.resolve(&h)?, 1923);
    /// # seg.unlink()?;
    /// # Ok::<(), shmutils::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a heap that is not in a named segment
    /// (an anonymous one cannot be opened by another process); the errors of
    /// [`get`](SharedHeap::get) if `ptr` is not a published `T` of this
    /// heap.
    pub fn handle<T: Shared>(&self, ptr: RelPtr<T>) -> Result<Handle<T>> {
        let (Some(name), Some(id)) = (self.segment_name(), self.segment_id()) else {
            return Err(Error::InvalidArgument {
                what: "handles need a named segment; this heap's segment is anonymous".to_owned(),
            });
        };
        self.get(ptr)?;
        Handle::new(name, id, ptr.offset())
    }

    /// Resolves a handle made by [`handle`](Self::handle) in any process.
    ///
    /// Checks, in this order: the segment (name and random id), the
    /// handle's type (fingerprint), then everything [`get`](SharedHeap::get)
    /// checks: bounds, alignment, that the block is allocated, published
    /// and holds a `T`.
    ///
    /// A block freed and then allocated again for another `T` passes: the
    /// heap keeps no generation per block.
    ///
    /// # Errors
    /// [`Error::WrongSegment`], [`Error::HandleTypeMismatch`], the errors of
    /// [`get`](SharedHeap::get) ([`Error::InvalidPointer`],
    /// [`Error::OutOfBounds`], [`Error::Misaligned`],
    /// [`Error::FreedObject`], [`Error::TypeMismatch`]) — each its own
    /// variant.
    pub fn resolve<T: Shared>(&self, handle: &Handle<T>) -> Result<&'s T> {
        let (name, id) = (
            self.segment_name().unwrap_or(""),
            self.segment_id().unwrap_or(0),
        );
        if handle.segment_name() != name || handle.segment_id() != id {
            return Err(Error::WrongSegment {
                handle_segment: handle.segment_name().to_owned(),
                handle_id: handle.segment_id(),
                segment: if name.is_empty() {
                    "(anonymous)".to_owned()
                } else {
                    name.to_owned()
                },
                segment_id: id,
            });
        }
        handle.check_type()?;
        self.get(RelPtr::<T>::from_heap(handle.offset()))
    }
}

impl Segment {
    /// Resolves a handle into this segment: the same as
    /// `self.heap().resolve(handle)`.
    ///
    /// # Errors
    /// As [`SharedHeap::resolve`].
    pub fn resolve<T: Shared>(&self, handle: &Handle<T>) -> Result<&T> {
        self.heap().resolve(handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str) -> Handle<u64> {
        Handle::new(name, 0x0123_4567_89ab_cdef, 4096).unwrap()
    }

    #[test]
    fn text_round_trip() {
        for name in [
            "/users",
            "users",
            "/a.b-c_d",
            "/with space:and%percent",
            "/ünïcödé",
        ] {
            let a = h(name);
            let token = a.to_string();
            assert!(
                token.bytes().all(|b| is_token_byte(b) || b == b'%'),
                "{token}"
            );
            let b: Handle<u64> = token.parse().unwrap();
            assert_eq!(a, b, "{token}");
            assert_eq!(b.segment_name(), normalize_name(name).unwrap());
        }
        assert!(h("/users").to_string().starts_with("shm1."));
    }

    #[test]
    fn bytes_round_trip() {
        let a = h("/users");
        let bytes = a.to_bytes();
        assert_eq!(&bytes[..4], b"SHH1");
        assert_eq!(bytes.len(), BYTES_HEADER + 5);
        assert_eq!(Handle::<u64>::from_bytes(&bytes).unwrap(), a);
        let long = h(&"n".repeat(255));
        assert_eq!(Handle::<u64>::from_bytes(&long.to_bytes()).unwrap(), long);
    }

    #[test]
    fn garbled_tokens_are_invalid_handles() {
        let good = h("/users").to_string();
        let cases = [
            String::new(),
            "shm1".to_owned(),
            good.replacen("shm1", "shm2", 1),
            good.replacen(".1000.", ".zz.", 1),
            format!("{good}%"),
            format!("{good}%G0"),
            format!("{good}/x"),
            "shm1.1.2.3.".to_owned(),
            "shm1.+1.2.3.x".to_owned(),
            "shm1.11111111111111111.2.3.x".to_owned(),
            "shm1.1.2.3.%2Fx".to_owned(),
        ];
        for c in cases {
            match c.parse::<Handle<u64>>() {
                Err(Error::InvalidHandle { reason }) => assert!(!reason.is_empty()),
                other => panic!("{c:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn garbled_bytes_are_invalid_handles() {
        let good = h("/users").to_bytes();
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        let mut bad_len = good.clone();
        bad_len[28] = 9;
        let mut bad_name = good.clone();
        bad_name[BYTES_HEADER] = b'/';
        let mut empty_name = good[..BYTES_HEADER].to_vec();
        empty_name[28] = 0;
        for c in [
            vec![],
            good[..10].to_vec(),
            bad_magic,
            bad_len,
            bad_name,
            empty_name,
        ] {
            assert!(
                matches!(
                    Handle::<u64>::from_bytes(&c),
                    Err(Error::InvalidHandle { .. })
                ),
                "{c:?}"
            );
        }
    }

    #[test]
    fn type_is_checked_by_fingerprint() {
        let a = h("/users");
        assert!(a.check_type().is_ok());
        let other: Handle<u32> = a.to_string().parse().unwrap();
        match other.check_type() {
            Err(Error::HandleTypeMismatch { expected, .. }) => assert_eq!(expected, "u32"),
            r => panic!("{r:?}"),
        }
    }

    /// xorshift64*: a small deterministic generator for the fuzz test.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// 100,000 inputs to each parser: half pure noise, half valid encodings
    /// with a few bytes mutated, so the parsers' deeper branches run too.
    /// Neither may panic, and whatever parses must re-encode to itself.
    #[test]
    fn parsers_never_panic_on_random_input() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let alphabet = b"shm1.0123456789abcdefABCDEF%/-_xyz\0\xff";
        let valid_text = h("/users-01").to_string().into_bytes();
        let valid_bytes = h("/users-01").to_bytes();
        let (mut parsed_text, mut parsed_bytes) = (0, 0);
        for i in 0..100_000 {
            let mutate = |rng: &mut Rng, base: &[u8], pick: &dyn Fn(&mut Rng) -> u8| {
                let mut v = base.to_vec();
                for _ in 0..1 + rng.below(3) {
                    match rng.below(3) {
                        0 if !v.is_empty() => {
                            let j = rng.below(v.len());
                            v[j] = pick(rng);
                        }
                        1 if !v.is_empty() => {
                            v.truncate(rng.below(v.len()));
                        }
                        _ => v.push(pick(rng)),
                    }
                }
                v
            };
            let text: Vec<u8> = if i % 2 == 0 {
                (0..rng.below(64))
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect()
            } else {
                mutate(&mut rng, &valid_text, &|r| {
                    alphabet[r.below(alphabet.len())]
                })
            };
            let text = String::from_utf8_lossy(&text);
            if let Ok(handle) = text.parse::<Handle<u64>>() {
                parsed_text += 1;
                assert_eq!(handle.to_string().parse::<Handle<u64>>().unwrap(), handle);
            }
            let bytes: Vec<u8> = if i % 2 == 0 {
                (0..rng.below(80)).map(|_| rng.next() as u8).collect()
            } else {
                mutate(&mut rng, &valid_bytes, &|r| r.next() as u8)
            };
            if let Ok(handle) = Handle::<u64>::from_bytes(&bytes) {
                parsed_bytes += 1;
                assert_eq!(handle.to_bytes(), bytes);
            }
        }
        // The mutations must exercise the success path too, or the test
        // would only ever see the first check fail.
        assert!(
            parsed_text > 0 && parsed_bytes > 0,
            "{parsed_text} {parsed_bytes}"
        );
    }
}
