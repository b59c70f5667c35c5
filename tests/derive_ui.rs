//! Compile-fail tests of `#[derive(SharedStruct)]`: each `tests/ui/*.rs`
//! must fail to compile with exactly the diagnostics in its `.stderr`
//! (regenerate with `TRYBUILD=overwrite cargo test --test derive_ui`, then
//! read every changed file).

#[test]
fn derive_rejections() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
