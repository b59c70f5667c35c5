//! Support shared by the workspace's cross-process tests and examples:
//! unique shared memory names that are unlinked even when a test fails, and
//! forked children whose outcome the parent collects.

use std::sync::atomic::{AtomicU32, Ordering};

pub mod ledger;

/// A unique shared memory name, unlinked when dropped (also when a test
/// panics, since unwinding drops it). Names carry the process id and a
/// counter, so parallel tests and test binaries never collide.
#[derive(Debug)]
pub struct ShmName(String);

impl ShmName {
    /// A fresh name `/shmutils-test-{tag}-{pid}-{n}`.
    pub fn new(tag: &str) -> ShmName {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        ShmName(format!("/shmutils-test-{tag}-{}-{n}", std::process::id()))
    }

    /// The name, with its leading `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for ShmName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for ShmName {
    fn drop(&mut self) {
        // The name may already be gone (a test unlinked it on purpose).
        let _ = shmutils::shm_unlink(&self.0);
    }
}

/// A forked child process.
#[derive(Debug)]
pub struct Child {
    pid: libc::pid_t,
}

/// Forks; the child runs `f` and exits with its return value as status
/// (a panic in the child exits with 101). The child never returns into the
/// caller's code, so test harness state is not run twice.
pub fn fork(f: impl FnOnce() -> i32) -> Child {
    // SAFETY: fork has no memory-safety preconditions; in the child we only
    // run `f` and then `_exit`, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: _exit ends the child at once, skipping atexit handlers and
        // destructors that belong to the parent's state.
        unsafe { libc::_exit(code) };
    }
    Child { pid }
}

impl Child {
    /// The child's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the child; returns its exit code, or `128 + signal` if a
    /// signal ended it.
    pub fn wait(self) -> i32 {
        let mut status = 0;
        loop {
            // SAFETY: `status` is a valid out-pointer; the pid is our child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid {
                break;
            }
            let e = std::io::Error::last_os_error();
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::Interrupted,
                "waitpid failed: {e}"
            );
        }
        std::mem::forget(self);
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        }
    }

    /// Waits for the child at most `limit`: its exit code (or `128 +
    /// signal`), or, if it is still running then, kills it and says so.
    pub fn wait_timeout(self, limit: std::time::Duration) -> Result<i32, String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let mut status = 0;
            // SAFETY: a valid out-pointer; the pid is our unreaped child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid {
                std::mem::forget(self); // reaped: Drop must not signal the pid
                return Ok(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                });
            }
            let e = std::io::Error::last_os_error();
            assert!(
                r == 0 || e.kind() == std::io::ErrorKind::Interrupted,
                "waitpid failed: {e}"
            );
            if std::time::Instant::now() >= deadline {
                self.kill();
                return Err(format!("hung: still running after {limit:?}, killed"));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Sends `SIGKILL` and reaps the child.
    pub fn kill(self) -> i32 {
        // SAFETY: signalling our own child has no memory-safety effect.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        self.wait()
    }
}

impl Drop for Child {
    /// A child that was neither waited for nor killed (the test failed
    /// early) is killed and reaped, so no stray process outlives the test.
    fn drop(&mut self) {
        // SAFETY: as in `kill` and `wait`; the pid is our unreaped child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// The `main` of a spawned child helper binary: runs `run` on the
/// command-line arguments (without the program name); on error prints
/// `NAME: error` to stderr and exits with status 1.
pub fn child_main<E: std::fmt::Display>(
    name: &str,
    run: impl FnOnce(&[String]) -> Result<(), E>,
) -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Tries to make the kernel give `tid` to a new thread of this process:
/// writes `tid - 1` to `/proc/sys/kernel/ns_last_pid`, spawns, checks.
/// Other processes creating threads race with it, so a few tries. `None`
/// (with a message) when not root or the tid would not land.
pub fn with_recycled_tid<R: Send>(tid: u32, body: impl FnOnce() -> R + Send) -> Option<R> {
    const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: forcing a tid needs root ({NS_LAST_PID})");
        return None;
    }
    let mut body = Some(body);
    for _ in 0..50 {
        if std::fs::write(NS_LAST_PID, (tid - 1).to_string()).is_err() {
            eprintln!("skipped: {NS_LAST_PID} is not writable");
            return None;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<bool>();
        let slot = &mut body;
        let result = std::thread::scope(|sc| {
            let h = sc.spawn(move || {
                // SAFETY: gettid has no preconditions.
                tx.send(unsafe { libc::gettid() } as u32).unwrap();
                if go_rx.recv().unwrap() {
                    Some(slot.take().unwrap()())
                } else {
                    None
                }
            });
            let got = rx.recv().unwrap();
            go_tx.send(got == tid).unwrap();
            h.join().unwrap()
        });
        if let Some(r) = result {
            return Some(r);
        }
    }
    eprintln!("skipped: tid {tid} did not land in 50 tries");
    None
}
