//! `#[derive(SharedStruct)]` for shmutils.
//!
//! This crate is re-exported by `shmutils`; depend on `shmutils` instead.
//!
//! The derive parses the item, validates it (representation, generics,
//! field types) and only then emits code; every failure is a
//! `syn::Error` spanned at the offending token, and all of them are
//! reported together. See [`SharedStruct`] for what it accepts and emits.

use proc_macro::TokenStream;
use syn::{parse_macro_input, Data, DeriveInput};

mod enums;
mod fields;
mod repr;
mod structs;

/// Makes a `#[repr(C)]` struct storable in shared memory, or a fieldless
/// `#[repr(u8)]` (etc.) enum storable as `Checked<E>`.
///
/// For a struct (named, tuple or unit fields; `#[repr(C)]` or
/// `#[repr(transparent)]`, optionally with `align(N)`; generic or not) it
/// emits:
/// - `unsafe impl Shared`, bounded by `T: Shared` on each type parameter,
///   with `NAME` and the layout `FINGERPRINT` (name, representation, each
///   field's name, fingerprint and offset, then size and alignment);
/// - a check, spanned at each field's type, that the field is `Shared`
///   (references, raw pointers, `Box`, `Rc`, `Arc`, `Vec`, `String`,
///   `bool`, `char`, tuples and function pointers are rejected by name with
///   the shared alternative);
/// - `sizeof()`, and `as_bytes()`, which compiles only where the struct has
///   no padding and no interior mutability (see `shmutils::shared::Plain`);
/// - a compile-time check that the alignment is at most 4096 bytes.
///
/// For a fieldless enum with an integer `#[repr]` it emits
/// `unsafe impl SharedEnum` (the enum must also derive `Clone, Copy`).
#[proc_macro_derive(SharedStruct)]
pub fn derive_shared_struct(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// All of `errors` as one error (each still at its own span), or `Ok` when
/// there are none.
fn combine(errors: Vec<syn::Error>) -> syn::Result<()> {
    match errors.into_iter().reduce(|mut all, e| {
        all.combine(e);
        all
    }) {
        Some(all) => Err(all),
        None => Ok(()),
    }
}

fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    match &input.data {
        Data::Struct(data) => structs::expand(input, data),
        Data::Enum(data) => enums::expand(input, data),
        Data::Union(data) => Err(syn::Error::new_spanned(
            data.union_token,
            "#[derive(SharedStruct)] does not support unions: which field is live cannot be \
             checked when a peer writes the bytes; use a `#[repr(C)]` struct with a \
             `Checked<Tag>` field saying which of its fields is meaningful",
        )),
    }
}
