//! Segments that never SIGBUS and stay sparse: a full `/dev/shm` is a typed
//! error, and huge segments cost what they hold, not what they could.

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use shmutils::Segment;
use shmutils_workspace::ShmName;

/// Runs `child-space fill NAME SIZE` in a private mount namespace whose
/// `/dev/shm` is a 64 MiB tmpfs; `None` (with a message) where that cannot
/// be made (not root, no `unshare`).
fn in_small_dev_shm(size: u64) -> Option<std::process::Output> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: a private /dev/shm needs root (CI runs as root)");
        return None;
    }
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=64m tmpfs /dev/shm && exec \"$0\" fill /space \"$1\"")
        .arg(env!("CARGO_BIN_EXE_child-space"))
        .arg(size.to_string())
        .output();
    match out {
        Ok(out) => Some(out),
        Err(e) => {
            eprintln!("skipped: cannot run unshare: {e}");
            None
        }
    }
}

fn fills_with_a_typed_error(size: u64) {
    let Some(out) = in_small_dev_shm(size) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "segment of {size} bytes in a 64 MiB /dev/shm: {:?} (a signal means SIGBUS)\n{stdout}{stderr}",
        out.status
    );
    assert!(
        stdout.contains("no space left in /dev/shm") || stdout.contains("create refused"),
        "{stdout}"
    );
}

#[test]
fn a_256_mib_segment_in_a_64_mib_dev_shm_fills_to_an_error() {
    fills_with_a_typed_error(256 << 20);
}

#[test]
fn an_8_gib_segment_in_a_64_mib_dev_shm_fills_to_an_error() {
    fills_with_a_typed_error(8 << 30);
}

#[test]
fn a_32_gib_segment_in_a_64_mib_dev_shm_fills_to_an_error() {
    fills_with_a_typed_error(32 << 30);
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Creates, opens, allocates a few objects in and checks a segment of
/// `size` bytes; returns (growth of this process's RSS, bytes the object
/// occupies in /dev/shm), both in KiB.
fn huge(size: u64) -> (u64, u64) {
    let name = ShmName::new("huge");
    let before = rss_kib();
    let seg = Segment::create(&name, size as usize).unwrap();
    let again = Segment::open(&name).unwrap();
    let heap = seg.heap();
    let values: Vec<_> = (0..100u64).map(|i| heap.new(i).unwrap()).collect();
    let slice = heap.new_slice(&[7u8; 100_000]).unwrap();
    for (i, &p) in values.iter().enumerate() {
        assert_eq!(*again.heap().get(p).unwrap(), i as u64);
    }
    assert_eq!(again.heap().get_slice(slice).unwrap().len(), 100_000);
    let report = again.heap().check();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.allocated_blocks, 101);
    let rss = rss_kib().saturating_sub(before);
    let used = std::fs::metadata(format!("/dev/shm{}", name.as_str()))
        .unwrap()
        .blocks()
        * 512
        / 1024;
    (rss, used)
}

#[test]
fn a_64_gib_segment_costs_what_it_holds() {
    let (rss, used) = huge(64 << 30);
    assert!(rss < 8 << 10, "RSS grew by {rss} KiB");
    assert!(used < 4 << 10, "/dev/shm holds {used} KiB");
}

#[test]
fn a_1_tib_segment_costs_what_it_holds() {
    let (rss, used) = huge(1 << 40);
    assert!(rss < 8 << 10, "RSS grew by {rss} KiB");
    assert!(used < 4 << 10, "/dev/shm holds {used} KiB");
}
