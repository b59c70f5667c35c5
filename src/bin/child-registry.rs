//! A spawned child (fresh exec) for the registry tests (tests/registry.rs):
//! it opens a segment by name and works in it until it is killed.
//!
//! - `churn NAME THREADS SEED`: THREADS threads allocate and free blocks of
//!   every size class at random, each keeping a ledger of what it holds in
//!   the named object `"ledger"` (see [`Ledger`]), until killed.
//! - `attach NAME`: opens the segment, allocates one block (so this thread
//!   claims a cache), prints `ready`, then sleeps until killed.
//! - `hold NAME`: takes the named `Lock<u64>` `"lock"`, stores 7 in it,
//!   prints `ready`, then sleeps holding it until killed.

use std::alloc::Layout;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shmutils::Segment;
use shmutils_workspace::ledger::{self, Ledger};

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// One churning thread: random allocs and frees, each announced in the
/// thread's ledger before it starts and recorded after it ends.
fn churn(seg: &Segment, ledger: &Ledger, t: usize, mut rng: u64) -> ! {
    let heap = seg.heap();
    let me = ledger::Thread::new(ledger, t);
    let mut ops = 0u64;
    loop {
        let r = xorshift(&mut rng);
        let n = me.count();
        if n < ledger::CAP.min(48) && (n == 0 || r % 2 == 0) {
            let layout = ledger::random_layout(r >> 8);
            me.pending(ledger::ALLOC_PENDING);
            if let Ok(p) = heap.alloc(layout) {
                me.push(p.offset(), layout);
            }
            me.pending(0);
        } else {
            let i = (r >> 16) as usize % n;
            let (off, size) = me.entry(i);
            // Announced, freed, then taken out of the ledger: after a kill
            // the parent finds the block still listed unless it was freed.
            me.pending(ledger::FREE_PENDING | off);
            // SAFETY: a block this thread allocated and never made a
            // reference to.
            let _ =
                unsafe { heap.free(shmutils::RelPtr::from_offset(off), ledger::layout_of(size)) };
            me.remove(i);
            me.pending(0);
        }
        ops += 1;
        if ops == 64 {
            me.ready();
        }
    }
}

fn run(args: &[String]) -> shmutils::Result<()> {
    let usage = || shmutils::Error::InvalidArgument {
        what: format!("usage: churn NAME THREADS SEED | attach NAME | hold NAME, got {args:?}"),
    };
    let num = |s: &String| s.parse::<u64>().map_err(|_| usage());
    match args.first().map(String::as_str) {
        Some("churn") if args.len() == 4 => {
            let seg = Segment::open(&args[1])?;
            let threads = num(&args[2])? as usize;
            let seed = num(&args[3])?;
            let heap = seg.heap();
            let ledger: &Ledger = heap.get(heap.find::<Ledger>("ledger")?)?;
            if threads == 0 || threads > ledger::THREADS {
                return Err(usage());
            }
            std::thread::scope(|s| {
                for t in 0..threads {
                    let (seg, ledger) = (&seg, ledger);
                    s.spawn(move || churn(seg, ledger, t, seed ^ ((t as u64 + 1) * 0x9e37_79b9)));
                }
            });
            Ok(())
        }
        Some("attach") if args.len() == 2 => {
            let seg = Segment::open(&args[1])?;
            let heap = seg.heap();
            let p = heap.alloc(Layout::new::<u64>())?;
            println!("ready {}", p.offset());
            let _keep = AtomicU64::new(p.offset());
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let _ = _keep.load(Ordering::Relaxed);
            }
        }
        Some("hold") if args.len() == 2 => {
            let seg = Segment::open(&args[1])?;
            let heap = seg.heap();
            let lock = heap.get(heap.find::<shmutils::Lock<u64>>("lock")?)?;
            let mut g = lock.lock().map_err(|e| shmutils::Error::InvalidArgument {
                what: format!("lock: {e}"),
            })?;
            *g = 7;
            println!("ready");
            loop {
                std::thread::sleep(Duration::from_secs(1));
                std::hint::black_box(&mut *g);
            }
        }
        _ => Err(usage()),
    }
}

fn main() -> ExitCode {
    shmutils_workspace::child_main("child-registry", run)
}
