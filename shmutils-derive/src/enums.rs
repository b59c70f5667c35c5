//! `#[derive(SharedStruct)]` on a fieldless enum: `unsafe impl SharedEnum`,
//! so that it can be stored as `Checked<E>`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{DataEnum, DeriveInput, Fields, Ident};

use crate::repr::{Repr, ENUM_INTS};

/// Validates and emits; every problem found is reported at once.
pub fn expand(input: &DeriveInput, data: &DataEnum) -> syn::Result<TokenStream> {
    let repr = Repr::parse(&input.attrs)?;
    let name = &input.ident;
    let mut errors: Vec<syn::Error> = Vec::new();
    let int = match &repr.int {
        Some((int, span)) if ENUM_INTS.contains(&int.as_str()) => Some(Ident::new(int, *span)),
        Some((int, span)) => {
            errors.push(syn::Error::new(
                *span,
                format!(
                    "#[derive(SharedStruct)] does not accept `#[repr({int})]` on an enum: \
                     `usize`/`isize` differ in size between programs and 128-bit \
                     discriminants are not supported; use one of {}",
                    ENUM_INTS.join(", ")
                ),
            ));
            None
        }
        None => {
            errors.push(syn::Error::new_spanned(
                name,
                format!(
                    "#[derive(SharedStruct)] needs an explicit integer representation on enum \
                     `{name}`: `Checked<{name}>` stores the discriminant as that integer, so \
                     every program must agree on its size; add `#[repr(u8)]` (or one of {})",
                    ENUM_INTS.join(", ")
                ),
            ));
            None
        }
    };
    for variant in &data.variants {
        if !matches!(variant.fields, Fields::Unit) {
            errors.push(syn::Error::new_spanned(
                &variant.fields,
                format!(
                    "#[derive(SharedStruct)] supports only fieldless enums, but variant `{}` has \
                     fields: `Checked<{name}>` stores just the discriminant; use a `#[repr(C)]` \
                     struct holding a `Checked<Tag>` (a fieldless enum) and the payload fields",
                    variant.ident
                ),
            ));
        }
    }
    crate::combine(errors)?;
    let int = int.expect("an error was returned above when there is no integer repr");
    let int_str = int.to_string();
    let name_str = name.to_string();
    let (impl_g, ty_g, where_c) = input.generics.split_for_impl();
    let variants: Vec<&Ident> = data.variants.iter().map(|v| &v.ident).collect();
    let variant_names = variants.iter().map(|v| v.to_string());
    Ok(quote! {
        unsafe impl #impl_g ::shmutils::SharedEnum for #name #ty_g #where_c {
            type Repr = #int;
            const NAME: &'static str = #name_str;
            const FINGERPRINT: u64 = ::shmutils::shared::Fingerprint::new(#name_str)
                .str(#int_str)
                #(.str(#variant_names).u64(Self::#variants as u64))*
                .finish();

            #[inline]
            fn from_repr(repr: #int) -> ::core::option::Option<Self> {
                #(
                    if repr == Self::#variants as #int {
                        return ::core::option::Option::Some(Self::#variants);
                    }
                )*
                ::core::option::Option::None
            }

            #[inline]
            fn to_repr(self) -> #int {
                self as #int
            }
        }
    })
}
