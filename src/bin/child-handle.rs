//! A spawned child (fresh exec) for the handle tests: it gets a handle token
//! on its command line and opens the segment by name.
//!
//! - `sum TOKEN`: walks the `Node<u64>` list starting at the handle and
//!   prints `SUM COUNT`.
//! - `resolve TOKEN`: resolves a `Handle<Node<u64>>`, prints `ok VALUE`.
//! - `resolve-u32 TOKEN`: resolves it as a `Handle<Node<u32>>` instead.
//!
//! On a shmutils error it prints `error KIND: MESSAGE` and exits with 2.

use std::process::ExitCode;

use shmutils::{Handle, Segment, Shared};

include!("../../tests/defs/list_defs.rs");

fn resolve<T: Shared>(token: &str) -> shmutils::Result<(Segment, Handle<Node<T>>)> {
    let h: Handle<Node<T>> = token.parse()?;
    let seg = Segment::open(h.segment_name())?;
    seg.resolve(&h)?;
    Ok((seg, h))
}

fn run(cmd: &str, token: &str) -> shmutils::Result<String> {
    match cmd {
        "sum" => {
            let (seg, h) = resolve::<u64>(token)?;
            let heap = seg.heap();
            let mut node = seg.resolve(&h)?;
            let (mut sum, mut count) = (0u64, 0u64);
            loop {
                sum = sum.wrapping_add(node.value);
                count += 1;
                if node.next.is_null() {
                    break;
                }
                // A list written by a peer may be cyclic: bound the walk.
                if count > 1_000_000 {
                    return Err(shmutils::Error::InvalidArgument {
                        what: "the list does not end".into(),
                    });
                }
                node = heap.get_checked(node.next)?;
            }
            Ok(format!("{sum} {count}"))
        }
        "resolve" => {
            let (seg, h) = resolve::<u64>(token)?;
            Ok(format!("ok {}", seg.resolve(&h)?.value))
        }
        "resolve-u32" => {
            let (seg, h) = resolve::<u32>(token)?;
            Ok(format!("ok {}", seg.resolve(&h)?.value))
        }
        _ => Err(shmutils::Error::InvalidArgument {
            what: format!("unknown command {cmd:?}"),
        }),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cmd, token] = args.as_slice() else {
        eprintln!("usage: child-handle sum|resolve|resolve-u32 TOKEN");
        return ExitCode::FAILURE;
    };
    match run(cmd, token) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error {}: {e}", error_kind(&e));
            ExitCode::from(2)
        }
    }
}
