//! The registry across real processes: who is attached, per-thread caches
//! that live in the segment, and what a killed process leaves behind.

use std::alloc::Layout;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use shmutils::{RelPtr, Segment};
use shmutils_workspace::ledger::{self, Ledger};
use shmutils_workspace::{fork, ShmName};

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Polls `done` every 100 µs for at most 10 s.
fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    false
}

/// A spawned `child-registry attach NAME`, once it said it is ready.
struct Attached(std::process::Child);

impl Attached {
    fn spawn(name: &str) -> Attached {
        Attached::run("attach", name)
    }

    fn run(mode: &str, name: &str) -> Attached {
        let mut child = Command::new(env!("CARGO_BIN_EXE_child-registry"))
            .args([mode, name])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("ready"), "child said {line:?}");
        Attached(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn processes_lists_the_attached_and_forgets_the_dead() {
    let name = ShmName::new("reg-list");
    let seg = Segment::create(&name, 8 << 20).unwrap();
    let me = std::process::id();
    let ps = seg.processes();
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0].pid, me);
    let heap = seg.heap();
    let p = heap.alloc(Layout::new::<u64>()).unwrap();
    assert_eq!(seg.processes()[0].threads, 1, "this thread holds a cache");

    let mut a = Attached::spawn(&name);
    let mut b = Attached::spawn(&name);
    let pids: Vec<u32> = seg.processes().iter().map(|p| p.pid).collect();
    assert!(pids.contains(&a.pid()) && pids.contains(&b.pid()) && pids.contains(&me));
    assert_eq!(heap.stats().registry.processes, 3);

    // A killed process drops out of the list at once, and out of the
    // registry once reaped (its process slot and its thread's slot).
    let dead = a.pid();
    a.kill();
    assert!(!seg.processes().iter().any(|p| p.pid == dead));
    assert_eq!(seg.reap(), 2);
    let st = heap.stats().registry;
    assert_eq!((st.processes, st.threads, st.reaped), (2, 2, 2));
    // A second reap finds nothing.
    assert_eq!(seg.reap(), 0);

    // A forked child that drops its segment frees its slots itself.
    let child = fork(|| {
        let s = Segment::open(&name).unwrap();
        let h = s.heap();
        let q = h.alloc(Layout::new::<[u64; 4]>()).unwrap();
        let seen = s.processes().len();
        // SAFETY: our own block, never referenced.
        unsafe { h.free(q, Layout::new::<[u64; 4]>()) }.unwrap();
        drop(s);
        if seen == 3 {
            0
        } else {
            1
        }
    });
    assert_eq!(child.wait(), 0);
    assert_eq!(seg.reap(), 0, "nothing was left to reap");
    assert_eq!(heap.stats().registry.processes, 2);
    b.kill();
    assert_eq!(seg.reap(), 2);
    // SAFETY: our own untyped block.
    unsafe { heap.free(p, Layout::new::<u64>()) }.unwrap();
    let r = heap.check();
    assert!(r.is_clean(), "{r}");
}

/// What the killed children of [`kill_rounds`] may have cost, at most.
#[derive(Default, Debug)]
struct InFlight {
    /// Threads killed during an allocation not yet in their ledger.
    allocs: u64,
    /// Threads killed during a free.
    frees: u64,
}

/// Rounds of: spawn a child with 1..=3 threads churning blocks of every
/// size class, kill it at a random moment, reap, free what its ledger says
/// it held; then check the heap and account for every block.
fn kill_rounds(rounds: u64, seed: u64) {
    let name = ShmName::new("reg-kill");
    let seg = Segment::create(&name, 24 << 20).unwrap();
    let heap = seg.heap();
    let ledger: &Ledger = heap
        .get(
            heap.find_or_init::<Ledger>("ledger", ledger::empty)
                .unwrap(),
        )
        .unwrap();
    let base = heap.stats();
    let mut rng = seed;
    let mut inflight = InFlight::default();
    let exe = env!("CARGO_BIN_EXE_child-registry");
    for round in 0..rounds {
        let threads = 1 + (xorshift(&mut rng) % 3) as usize;
        let mut child = Command::new(exe)
            .args([
                "churn",
                &name,
                &threads.to_string(),
                &xorshift(&mut rng).to_string(),
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let ready = wait_for(|| {
            (0..threads).all(|t| ledger::Thread::new(ledger, t).is_ready())
                || child.try_wait().unwrap().is_some()
        });
        assert!(ready, "round {round}: the child never got going");
        assert!(
            child.try_wait().unwrap().is_none(),
            "round {round}: the child exited on its own"
        );
        std::thread::sleep(Duration::from_micros(xorshift(&mut rng) % 2000));
        child.kill().unwrap();
        child.wait().unwrap();

        let reaped = seg.reap();
        // Its process slot, its main thread's and its threads' slots, and
        // any free slot a thread had borrowed to take a block from its
        // cache (the arena was full) when the kill came.
        assert!(
            (threads + 2..=2 * threads + 2).contains(&reaped),
            "round {round}: {reaped} slots reaped for {threads} threads; now {:?}",
            heap.stats().registry
        );
        for t in 0..threads {
            let th = ledger::Thread::new(ledger, t);
            let pending = th.pending_op();
            let freeing =
                (pending & ledger::FREE_PENDING != 0).then_some(pending & ((1 << 40) - 1));
            if pending == ledger::ALLOC_PENDING {
                inflight.allocs += 1;
            }
            if freeing.is_some() {
                inflight.frees += 1;
            }
            let mut entries: Vec<(u64, u64)> = (0..th.count()).map(|i| th.entry(i)).collect();
            // A kill inside remove() can leave an entry twice.
            entries.sort_unstable();
            entries.dedup();
            for (off, l) in entries {
                // SAFETY: blocks the dead child allocated and recorded; it
                // made no reference to them, and nobody else knows them.
                let freed = unsafe { heap.free(RelPtr::from_offset(off), ledger::layout_of(l)) };
                match freed {
                    Ok(()) => {}
                    // The child freed it and was killed before it took the
                    // entry out.
                    Err(shmutils::Error::DoubleFree { .. }) if freeing == Some(off) => {}
                    Err(e) => panic!("round {round}: block {off:#x} of the ledger: {e}"),
                }
            }
            th.clear();
        }
        let r = heap.check();
        assert!(r.is_consistent(), "round {round}: {r}");
        let st = heap.stats();
        let lost_allocs = st.in_use_blocks - base.in_use_blocks;
        let unresolved = st.registry.unresolved;
        assert!(
            lost_allocs <= inflight.allocs,
            "round {round}: {lost_allocs} blocks still allocated, but only {} allocations were under way at the kills",
            inflight.allocs
        );
        assert!(
            r.leaked_blocks <= inflight.frees + unresolved,
            "round {round}: {} blocks leaked, but only {} frees were under way and {unresolved} pops unresolved\n{r}",
            r.leaked_blocks,
            inflight.frees
        );
    }
    let r = heap.check();
    let st = heap.stats();
    eprintln!(
        "{rounds} kills: {} blocks of unrecorded allocations still allocated ({} allocations were under way), {} leaked ({} frees under way, {} pops unresolved), {} unpublished pages; {}",
        st.in_use_blocks - base.in_use_blocks,
        inflight.allocs,
        r.leaked_blocks,
        inflight.frees,
        st.registry.unresolved,
        r.unpublished_pages,
        r
    );
}

#[test]
fn killed_processes_lose_only_what_they_had_in_hand() {
    let rounds = std::env::var("SHMUTILS_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    kill_rounds(rounds, 0x5eed_1234_abcd_0001);
}

#[test]
fn eight_threads_in_each_of_four_processes_each_get_a_cache() {
    const PROCS: u64 = 4;
    const THREADS: usize = 8;
    let name = ShmName::new("reg-threads");
    let seg = Segment::create(&name, 32 << 20).unwrap();
    let heap = seg.heap();
    // [threads holding their slot, go]
    let flags = heap
        .get(
            heap.find_or_init::<[AtomicU64; 2]>("flags", Default::default)
                .unwrap(),
        )
        .unwrap();
    let children: Vec<_> = (0..PROCS)
        .map(|k| {
            let name = name.to_string();
            fork(move || {
                let s = Segment::open(&name).unwrap();
                let h = s.heap();
                let flags = h.get(h.find::<[AtomicU64; 2]>("flags").unwrap()).unwrap();
                let bar = Barrier::new(THREADS);
                let ok = std::thread::scope(|sc| {
                    let hs: Vec<_> = (0..THREADS)
                        .map(|t| {
                            let (h, bar) = (&h, &bar);
                            sc.spawn(move || {
                                let mut rng = 0x1234_5678 ^ (k * 64 + t as u64 + 1);
                                let mut held = Vec::new();
                                for _ in 0..2000 {
                                    let r = xorshift(&mut rng);
                                    if held.len() < 32 && r % 3 != 0 {
                                        let l = ledger::random_layout(r >> 4);
                                        if let Ok(p) = h.alloc(l) {
                                            held.push((p, l));
                                        }
                                    } else if let Some((p, l)) = held.pop() {
                                        // SAFETY: this thread's block, never referenced.
                                        if unsafe { h.free(p, l) }.is_err() {
                                            return false;
                                        }
                                    }
                                }
                                for (p, l) in held {
                                    // SAFETY: as above.
                                    if unsafe { h.free(p, l) }.is_err() {
                                        return false;
                                    }
                                }
                                // Hold the slot until the parent has looked.
                                bar.wait();
                                flags[0].fetch_add(1, Ordering::SeqCst);
                                while flags[1].load(Ordering::SeqCst) == 0 {
                                    std::thread::sleep(Duration::from_millis(1));
                                }
                                true
                            })
                        })
                        .collect();
                    hs.into_iter().all(|h| h.join().unwrap())
                });
                // Every thread has exited: its slot is free again.
                let threads_now = h.stats().registry.threads;
                drop(s);
                match (ok, threads_now) {
                    (false, _) => 1,
                    // The parent's thread and this one hold one each; other
                    // children's threads may still be exiting.
                    (true, n) if n <= 2 + (PROCS as usize - 1) * (THREADS + 1) => 0,
                    _ => 2,
                }
            })
        })
        .collect();
    assert!(wait_for(
        || flags[0].load(Ordering::SeqCst) == PROCS * THREADS as u64
    ));
    let st = heap.stats().registry;
    // Theirs, their main threads' (seg.heap()) and this thread's.
    assert_eq!(st.threads, PROCS as usize * (THREADS + 1) + 1, "{st:?}");
    assert_eq!(st.processes, 1 + PROCS as usize, "{st:?}");
    assert_eq!(st.full_events, 0);
    flags[1].store(1, Ordering::SeqCst);
    for c in children {
        assert_eq!(c.wait(), 0);
    }
    let st = heap.stats();
    assert_eq!(
        (st.registry.threads, st.registry.processes),
        (1, 1),
        "{:?}",
        st.registry
    );
    assert_eq!(seg.reap(), 0, "the children left nothing to reap");
    let r = heap.check();
    assert!(r.is_clean(), "{r}");
    assert!(
        r.cached_blocks > 0,
        "the exited threads' caches stay in their slots: {r}"
    );
    // Their cached blocks are free: the heap holds only the flags.
    assert_eq!(st.in_use_blocks, 1);
}

#[test]
fn more_threads_than_slots_fall_back_to_the_shared_lists() {
    const THREADS: usize = shmutils::registry::SLOTS + 40;
    let seg = Segment::anonymous(64 << 20).unwrap();
    let heap = seg.heap();
    let bar = Barrier::new(THREADS);
    let ok = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let (heap, bar) = (&heap, &bar);
                std::thread::Builder::new()
                    .stack_size(64 << 10)
                    .spawn_scoped(sc, move || {
                        let l = Layout::from_size_align(16 + t % 200, 8).unwrap();
                        // Every thread allocates while all of them live.
                        bar.wait();
                        let ps: Vec<_> = (0..10).map(|_| heap.alloc(l)).collect();
                        bar.wait();
                        ps.into_iter().all(|p| match p {
                            // SAFETY: this thread's block, never referenced.
                            Ok(p) => unsafe { heap.free(p, l) }.is_ok(),
                            Err(_) => false,
                        })
                    })
                    .unwrap()
            })
            .collect();
        hs.into_iter().all(|h| h.join().unwrap())
    });
    assert!(ok, "every allocation and free succeeded");
    let st = heap.stats();
    // The process slot and this thread's were taken too.
    assert!(
        st.registry.full_events >= (THREADS + 2 - shmutils::registry::SLOTS) as u64,
        "{:?}",
        st.registry
    );
    assert!(wait_for(|| heap.stats().registry.threads == 1));
    assert_eq!(st.in_use_blocks, 0);
    let r = heap.check();
    assert!(r.is_clean(), "{r}");
}

#[test]
fn a_thread_that_exits_frees_its_slot_and_leaves_its_cache_to_the_next() {
    let seg = Segment::anonymous(8 << 20).unwrap();
    let heap = seg.heap();
    let l = Layout::from_size_align(48, 8).unwrap();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let ps: Vec<_> = (0..20).map(|_| heap.alloc(l).unwrap()).collect();
            // This thread's slot and the test thread's (seg.heap()).
            assert_eq!(heap.stats().registry.threads, 2);
            for p in ps {
                // SAFETY: this thread's blocks, never referenced.
                unsafe { heap.free(p, l) }.unwrap();
            }
        });
    });
    // The thread frees its slot in a thread-local destructor, which may
    // run just after the scope sees it finish.
    assert!(wait_for(|| heap.stats().registry.threads == 1));
    let r = heap.check();
    assert!(r.is_clean(), "{r}");
    assert!(r.cached_blocks >= 20, "{r}");
    // The next thread gets blocks (from that cache, or fresh ones).
    let p = heap.alloc(l).unwrap();
    // SAFETY: as above.
    unsafe { heap.free(p, l) }.unwrap();
    assert!(heap.check().is_clean());
}

/// Pid reuse: a process killed while attached, whose pid a new process got
/// (forced through `ns_last_pid`, as root): the new process is not taken
/// for it; opening reaps the dead one's slots and gives the new one its own.
#[test]
fn a_recycled_pid_is_not_the_dead_process() {
    const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || std::fs::metadata(NS_LAST_PID).is_err() {
        eprintln!("skipped: forcing a pid needs root ({NS_LAST_PID})");
        return;
    }
    let name = ShmName::new("reg-pid");
    let seg = Segment::create(&name, 8 << 20).unwrap();
    for attempt in 0..20 {
        let mut a = Attached::spawn(&name);
        let pid = a.pid();
        // Kernel start times count 10 ms ticks: a process that reuses the
        // pid within the dead one's tick is told apart only by its token
        // (see the lock tests); here the new one starts ticks later.
        std::thread::sleep(Duration::from_millis(30));
        a.kill();
        drop(a);
        if std::fs::write(NS_LAST_PID, (pid - 1).to_string()).is_err() {
            eprintln!("skipped: {NS_LAST_PID} is not writable");
            return;
        }
        let name2 = name.to_string();
        let child = fork(move || {
            // SAFETY: getpid has no preconditions.
            if unsafe { libc::getpid() } as u32 != pid {
                return 3; // the pid did not land: try again
            }
            let s = Segment::open(&name2).unwrap();
            // Opening reaped the dead process's two slots.
            let ps = s.processes();
            let mine: Vec<_> = ps.iter().filter(|p| p.pid == pid).collect();
            let h = s.heap();
            let q = h.alloc(Layout::new::<u64>()).unwrap();
            // SAFETY: our block.
            unsafe { h.free(q, Layout::new::<u64>()) }.unwrap();
            let st = h.stats().registry;
            match (mine.len(), st.reaped, st.threads) {
                (1, 2.., 1) => 0,
                (n, r, t) => {
                    // Not eprintln!: the test harness captures that.
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr(),
                        "pid {pid}: {n} entries, {r} reaped, {t} threads: {ps:?}"
                    );
                    1
                }
            }
        });
        match child.wait() {
            3 => continue,
            code => {
                assert_eq!(code, 0, "attempt {attempt}");
                assert_eq!(seg.reap(), 0);
                assert_eq!(seg.processes().len(), 1);
                return;
            }
        }
    }
    eprintln!("skipped: the pid did not land in 20 tries");
}

/// Context switches of thread `tid` of this process so far.
fn switches(tid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    status
        .lines()
        .filter(|l| l.contains("ctxt_switches"))
        .map(|l| l.split_whitespace().last().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A waiter blocked behind a lock held by a live thread of another process
/// sleeps on the holder's death token: it does not wake while the holder
/// lives, and gets `OwnerDied` as soon as the kernel marks the token.
#[test]
fn a_waiter_behind_a_live_holder_sleeps_until_its_death() {
    let name = ShmName::new("reg-token");
    let seg = Segment::create(&name, 8 << 20).unwrap();
    let heap = seg.heap();
    let lock = heap
        .get(
            heap.find_or_init("lock", || shmutils::Lock::new(0u64))
                .unwrap(),
        )
        .unwrap();
    let mut holder = Attached::run("hold", &name);
    let tid = AtomicU64::new(0);
    let outcome = std::thread::scope(|sc| {
        let waiter = sc.spawn(|| {
            // SAFETY: gettid has no preconditions.
            tid.store(unsafe { libc::gettid() } as u64, Ordering::SeqCst);
            let r = lock.lock();
            let at = Instant::now();
            let got = match r {
                Err(shmutils::LockError::OwnerDied(g)) => Some(*g),
                _ => None,
            };
            (got, at)
        });
        assert!(wait_for(|| tid.load(Ordering::SeqCst) != 0));
        let tid = tid.load(Ordering::SeqCst) as i32;
        // Let it go to sleep, then count its wake-ups for 2 s.
        std::thread::sleep(Duration::from_millis(200));
        let before = switches(tid);
        std::thread::sleep(Duration::from_secs(2));
        let woke = switches(tid) - before;
        let killed = Instant::now();
        holder.kill();
        let (got, at) = waiter.join().unwrap();
        (woke, got, at.duration_since(killed))
    });
    let (woke, got, latency) = outcome;
    eprintln!(
        "blocked 2 s behind a live holder: {woke} wake-ups; kill -> OwnerDied in {latency:?}"
    );
    assert!(woke <= 5, "the waiter woke {woke} times in 2 s");
    assert_eq!(got, Some(7), "OwnerDied, with the dead holder's write");
}

/// `Segment::reap` is safe to call at any time: while threads of this
/// process allocate, free and check their blocks' contents, repeated
/// reaps find nothing to reap and no block reaches two owners.
#[test]
fn reaping_while_live_threads_allocate_touches_nothing_of_theirs() {
    let seg = Segment::anonymous(32 << 20).unwrap();
    let heap = seg.heap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let reaped = std::thread::scope(|sc| {
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let (heap, stop) = (&heap, &stop);
                sc.spawn(move || {
                    let mut rng = 0x9e37_79b9 ^ (t + 1);
                    let mut held: Vec<(RelPtr<u8>, Layout, u8)> = Vec::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) || n < 10_000 {
                        n += 1;
                        let r = xorshift(&mut rng);
                        if held.len() < 64 && r % 2 == 0 {
                            let l = ledger::random_layout(r >> 4);
                            let p = heap.alloc(l).unwrap();
                            let tag = (r >> 56) as u8;
                            // SAFETY: a block this thread just allocated,
                            // l.size() bytes, reached by nobody else.
                            unsafe {
                                std::ptr::write_bytes(heap.as_ptr(p).unwrap(), tag, l.size())
                            };
                            held.push((p, l, tag));
                        } else if let Some((p, l, tag)) = held.pop() {
                            // SAFETY: as above; only this thread wrote it.
                            let bytes = unsafe {
                                std::slice::from_raw_parts(heap.as_ptr(p).unwrap(), l.size())
                            };
                            assert!(
                                bytes.iter().all(|&b| b == tag),
                                "a block changed under its owner"
                            );
                            // SAFETY: our block; the slice above is dead.
                            unsafe { heap.free(p, l) }.unwrap();
                        }
                    }
                    for (p, l, _) in held {
                        // SAFETY: as above.
                        unsafe { heap.free(p, l) }.unwrap();
                    }
                })
            })
            .collect();
        let mut reaped = 0;
        for _ in 0..200 {
            reaped += seg.reap();
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        reaped
    });
    assert_eq!(reaped, 0, "live threads' slots were reaped");
    let r = heap.check();
    assert!(r.is_clean(), "{r}");
    assert_eq!(heap.stats().in_use_blocks, 0);
}
