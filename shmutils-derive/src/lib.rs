//! `#[derive(SharedStruct)]` for shmutils.
//!
//! This crate is re-exported by `shmutils`; depend on `shmutils` instead.
