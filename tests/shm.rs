//! Named shared memory: creation modes, typed errors, sizes, permissions.

use shmutils::{shm_unlink, Error, Mode, ShmFd};
use shmutils_workspace::ShmName;

#[test]
fn exclusive_create_twice_is_exists() {
    let name = ShmName::new("excl");
    let _fd = ShmFd::open(&name, Mode::CreateExclusive).unwrap();
    for mode in [Mode::CreateExclusive, Mode::ReadWriteCreateExclusive] {
        match ShmFd::open(&name, mode) {
            Err(Error::Exists { name: n }) => assert_eq!(n, name.as_str()),
            other => panic!("expected Exists, got {other:?}"),
        }
    }
    let e = ShmFd::open(&name, Mode::CreateExclusive).unwrap_err();
    assert!(
        e.to_string().contains(name.as_str()),
        "message names the segment: {e}"
    );
}

#[test]
fn opening_a_missing_name_is_not_found() {
    let name = ShmName::new("missing");
    for mode in [Mode::ReadOnly, Mode::ReadWrite] {
        match ShmFd::open(&name, mode) {
            Err(Error::NotFound { name: n }) => assert_eq!(n, name.as_str()),
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
}

#[test]
fn truncate_then_size() {
    let name = ShmName::new("size");
    let fd = ShmFd::open(&name, Mode::ReadWriteCreate).unwrap();
    assert!(fd.created());
    assert_eq!(fd.size().unwrap(), 0);
    fd.truncate(4096 * 100).unwrap();
    assert_eq!(fd.size().unwrap(), 4096 * 100);
    let again = ShmFd::open(&name, Mode::ReadWriteCreate).unwrap();
    assert!(!again.created());
    assert_eq!(again.size().unwrap(), 4096 * 100, "w+ keeps the contents");
    let trunc = ShmFd::open(&name, Mode::CreateTruncate).unwrap();
    assert_eq!(trunc.size().unwrap(), 0, "w truncates");
}

#[test]
fn read_only_descriptor_refuses_truncate() {
    let name = ShmName::new("ro");
    let _fd = ShmFd::open(&name, Mode::CreateExclusive).unwrap();
    let ro = ShmFd::open(&name, Mode::ReadOnly).unwrap();
    assert!(matches!(ro.truncate(4096), Err(Error::ReadOnly)));
}

#[test]
fn permissions_default_to_0600_and_can_be_chosen() {
    let name = ShmName::new("perm");
    let fd = ShmFd::open(&name, Mode::CreateExclusive).unwrap();
    assert_eq!(fd.permissions().unwrap(), 0o600);
    let name2 = ShmName::new("perm2");
    // 0o666 would be cut by a typical umask of 022; the exact bits are kept.
    let fd2 = ShmFd::open_with_permissions(&name2, Mode::CreateExclusive, 0o666).unwrap();
    assert_eq!(fd2.permissions().unwrap(), 0o666);
    fd2.set_permissions(0o640).unwrap();
    assert_eq!(fd2.permissions().unwrap(), 0o640);
    assert!(matches!(
        ShmFd::open_with_permissions(&name2, Mode::ReadWrite, 0o1777),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn unlink_twice_is_not_found() {
    let name = ShmName::new("unlink");
    drop(ShmFd::open(&name, Mode::CreateExclusive).unwrap());
    shm_unlink(&name).unwrap();
    match shm_unlink(&name) {
        Err(Error::NotFound { name: n }) => assert_eq!(n, name.as_str()),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[test]
fn names_without_slash_are_the_same_object() {
    let name = ShmName::new("slash");
    let fd = ShmFd::open(&name, Mode::CreateExclusive).unwrap();
    fd.truncate(123).unwrap();
    let bare = name.trim_start_matches('/');
    let other = ShmFd::open(bare, Mode::ReadOnly).unwrap();
    assert_eq!(other.name(), name.as_str());
    assert_eq!(other.size().unwrap(), 123);
}
