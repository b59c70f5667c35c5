//! Compile-fail tests of `#[derive(SharedStruct)]`.
//!
//! Each `tests/ui/*.rs` must fail to compile with exactly the diagnostics
//! in its `.stderr` (regenerate with
//! `TRYBUILD=overwrite cargo test --test derive_ui`, then read every
//! changed file). trybuild only type-checks, so the one rejection that
//! happens later, when a generic instance is built, has its own test that
//! builds a scratch crate.

use std::path::Path;
use std::process::Command;

#[test]
fn derive_rejections() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    // Not the derive's, but the same machinery: the library's API refuses
    // at compile time what would be unsound (DESIGN.md rule 2): freeing and
    // forging without `unsafe`, references outliving a box or a segment, a
    // byte write while a typed reference into a mapping lives, a reentrant
    // lock guard's `DerefMut`, absolute addressing on a relative mapping.
    t.compile_fail("tests/ui-api/*.rs");
}

#[test]
fn as_bytes_on_a_padded_generic_instance_fails_to_build() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("derive-build-fail");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"derive-build-fail\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             publish = false\n\n[dependencies]\nshmutils = {{ path = {:?} }}\n\n[workspace]\n",
            root.join("shmutils")
        ),
    )
    .unwrap();
    // Same dependency versions as the workspace, without the network.
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::copy(
        root.join("tests/build_fail/generic_padding.rs"),
        dir.join("src/main.rs"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet", "--color", "never"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the padded instance built:\n{stderr}"
    );
    assert!(
        stderr.contains("this instance of the struct has padding bytes, so it has no byte view"),
        "unexpected diagnostics:\n{stderr}"
    );
    // The error names the padded instance, and only that one.
    assert!(stderr.contains("Pair<u8, u32>"), "{stderr}");
    assert!(!stderr.contains("Pair<u32, u32>"), "{stderr}");
}
