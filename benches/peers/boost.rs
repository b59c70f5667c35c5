//! Boost.Interprocess as a benchmark peer, shared by `benches/locks.rs` and
//! `benches/heap.rs` (each includes this file with
//! `#[path = "peers/boost.rs"] mod boost;`).
//!
//! [`Boost::new`] compiles `benches/peers/boost_peer.cpp` with the system
//! C++ compiler (`$CXX`, else `c++`, `g++`, `clang++`) into
//! `<target dir>/bench-peers/boost_peer`, only when that binary is missing
//! or older than the source. [`Boost::run`] (or [`Boost::run_args`]) runs
//! one subcommand of it and parses its `name value unit` lines. Without a compiler or without the
//! Boost headers, one line says why the peer is skipped and every Boost
//! cell of the tables reads `n/a`: the benches still run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The compiled peer, or the reason it is not available.
pub struct Boost {
    bin: Result<PathBuf, String>,
}

/// The results one subcommand printed: `(name, value, unit)` per line.
pub struct Results(Vec<(String, f64, String)>);

impl Results {
    /// The value printed under `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|&(_, v, _)| v)
    }
}

impl Boost {
    /// Builds the peer if needed; prints one line if it is skipped.
    pub fn new() -> Boost {
        let bin = build();
        if let Err(reason) = &bin {
            println!("Boost.Interprocess peer skipped: {reason} (apt-get install libboost-dev)");
        }
        Boost { bin }
    }

    /// Runs `boost_peer <cmd> <n>` and parses its output; `None` if the peer
    /// is unavailable or the run failed (which is reported on stdout).
    #[allow(dead_code)] // used by heap.rs, not by locks.rs
    pub fn run(&self, cmd: &str, n: u64) -> Option<Results> {
        self.run_args(cmd, &[n])
    }

    /// Runs `boost_peer <cmd> <args...>` (a count, then what the
    /// subcommand takes besides) and parses its output, as [`run`](Self::run).
    pub fn run_args(&self, cmd: &str, args: &[u64]) -> Option<Results> {
        let bin = self.bin.as_ref().ok()?;
        let args: Vec<String> = args.iter().map(u64::to_string).collect();
        let n = args.join(" ");
        let out = match Command::new(bin).arg(cmd).args(&args).output() {
            Ok(out) => out,
            Err(e) => {
                println!("Boost.Interprocess peer: cannot run {}: {e}", bin.display());
                return None;
            }
        };
        if !out.status.success() {
            println!(
                "Boost.Interprocess peer: `{cmd} {n}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut rows = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(name), Some(value), Some(unit), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                println!("Boost.Interprocess peer: `{cmd}` printed an unexpected line {line:?}");
                return None;
            };
            let Ok(value) = value.parse::<f64>() else {
                println!("Boost.Interprocess peer: `{cmd}` printed a bad number in {line:?}");
                return None;
            };
            rows.push((name.to_owned(), value, unit.to_owned()));
        }
        Some(Results(rows))
    }
}

/// Where compiled peers go: `$CARGO_TARGET_DIR/bench-peers`, else beside
/// the profile directory this bench binary runs from
/// (`target/release/deps/<bench>` gives `target/bench-peers`).
fn peers_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("bench-peers");
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench-peers")
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The first C++ compiler that answers `--version`.
fn compiler() -> Result<String, String> {
    let candidates: Vec<String> = std::env::var("CXX")
        .ok()
        .into_iter()
        .chain(["c++", "g++", "clang++"].map(String::from))
        .collect();
    candidates
        .iter()
        .find(|cxx| {
            Command::new(cxx)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .cloned()
        .ok_or_else(|| format!("no C++ compiler found (tried {})", candidates.join(", ")))
}

fn build() -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/boost_peer.cpp");
    let src_time = modified(&src).ok_or_else(|| format!("{} not found", src.display()))?;
    let dir = peers_dir();
    let bin = dir.join("boost_peer");
    if modified(&bin).is_some_and(|t| t >= src_time) {
        return Ok(bin);
    }
    let cxx = compiler()?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // Compile to a private name, then rename: a concurrent bench never
    // runs a half-written binary.
    let tmp = dir.join(format!("boost_peer.{}.tmp", std::process::id()));
    println!("compiling the Boost.Interprocess peer with {cxx} ...");
    let out = Command::new(&cxx)
        .args(["-O2", "-std=c++17", "-pthread", "-o"])
        .arg(&tmp)
        .arg(&src)
        .output()
        .map_err(|e| format!("cannot run {cxx}: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let missing = stderr.contains("No such file") || stderr.contains("file not found");
        if missing && stderr.contains("boost/interprocess") {
            return Err(format!("Boost.Interprocess headers not found by {cxx}"));
        }
        let first = stderr
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or("no message");
        return Err(format!("{cxx} failed on {}: {first}", src.display()));
    }
    std::fs::rename(&tmp, &bin).map_err(|e| format!("cannot move the peer into place: {e}"))?;
    Ok(bin)
}
