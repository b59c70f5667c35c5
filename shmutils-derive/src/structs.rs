//! `#[derive(SharedStruct)]` on a struct: validate, then emit.
//!
//! What is emitted, in pieces:
//! - [`shared_impl`]: `unsafe impl Shared` with `NAME` and `FINGERPRINT`;
//! - [`field_checks`]: one `field_fingerprint::<Field>()` per field, spanned
//!   at the field's type;
//! - [`layout_checks`]: compile-time assertions on the layout;
//! - [`inherent_impl`]: `sizeof()`, `as_bytes()`, `with_heap()` (the
//!   seed's `User.with_heap(page).new()`) and `ptr_in()` (a `&Self` back to
//!   its `RelPtr<Self>`);
//! - [`plain_impl`]: what `as_bytes()` needs to compile.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{
    parse_quote, DataStruct, DeriveInput, GenericParam, Generics, Index, Member, Type, WhereClause,
};

use crate::fields;
use crate::repr::Repr;

/// A field: how to name it in `offset_of!`, its name in the fingerprint
/// (the identifier, or the index of a tuple field), and its type with
/// `Self` spelled out (generated free items cannot say `Self`), spanned at
/// the type as written.
struct Field {
    member: Member,
    name: String,
    ty: Type,
    span: Span,
}

/// A struct that passed validation.
struct Valid<'a> {
    input: &'a DeriveInput,
    repr: Repr,
    fields: Vec<Field>,
    /// The struct's generics with `T: ::shmutils::Shared` added to each
    /// type parameter.
    generics: Generics,
    /// Whether it has type or const parameters.
    is_generic: bool,
}

/// Validates and emits; every problem found is reported at once.
pub fn expand(input: &DeriveInput, data: &DataStruct) -> syn::Result<TokenStream> {
    let valid = validate(input, data)?;
    Ok(emit(&valid))
}

fn validate<'a>(input: &'a DeriveInput, data: &DataStruct) -> syn::Result<Valid<'a>> {
    let repr = Repr::parse(&input.attrs)?;
    let mut errors = Vec::new();
    let name = &input.ident;
    if let Some(span) = repr.packed {
        errors.push(syn::Error::new(
            span,
            "#[derive(SharedStruct)] does not accept `#[repr(packed)]`: packed fields may sit at \
             unaligned offsets, where references to them (and atomics and locks) are undefined \
             behaviour; remove `packed` and add explicit padding fields such as `_pad: [u8; 3]` \
             if you need an exact layout",
        ));
    }
    if let (None, Some(span)) = (repr.kind, repr.rust) {
        errors.push(syn::Error::new(
            span,
            "#[derive(SharedStruct)] does not accept `#[repr(Rust)]`: it lets each compilation \
             order and offset the fields differently, so two programs sharing the memory would \
             disagree; use `#[repr(C)]`",
        ));
    } else if repr.kind.is_none() {
        errors.push(syn::Error::new_spanned(
            name,
            format!(
                "#[derive(SharedStruct)] needs `#[repr(C)]` (or `#[repr(transparent)]`) on \
                 `{name}`: otherwise each compilation may order and offset the fields \
                 differently, and two programs sharing the memory would disagree; add \
                 `#[repr(C)]` above the struct"
            ),
        ));
    }
    for param in &input.generics.params {
        if let GenericParam::Lifetime(l) = param {
            errors.push(syn::Error::new_spanned(
                l,
                "a shared struct cannot have lifetime parameters: they mean it borrows through \
                 references, which are process-local addresses; remove the lifetime and store \
                 `RelPtr<T>` or `RelSlice<T>` instead",
            ));
        }
    }
    errors.extend(data.fields.iter().filter_map(|f| fields::rejection(&f.ty)));
    let (_, ty_g, _) = input.generics.split_for_impl();
    let self_ty: Type = parse_quote!(#name #ty_g);
    let fields: Vec<Field> = data
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let span = f.ty.span();
            let member = match &f.ident {
                Some(ident) => Member::Named(ident.clone()),
                None => Member::Unnamed(Index {
                    index: i as u32,
                    span,
                }),
            };
            let name = match &f.ident {
                Some(ident) => ident.to_string(),
                None => i.to_string(),
            };
            Field {
                member,
                name,
                ty: fields::replace_self(&f.ty, &self_ty),
                span,
            }
        })
        .collect();
    crate::combine(errors)?;

    let mut generics = input.generics.clone();
    for param in generics.type_params_mut() {
        param.bounds.push(parse_quote!(::shmutils::Shared));
    }
    let is_generic =
        generics.type_params().next().is_some() || generics.const_params().next().is_some();
    Ok(Valid {
        input,
        repr,
        fields,
        generics,
        is_generic,
    })
}

fn emit(v: &Valid) -> TokenStream {
    let mut out = TokenStream::new();
    out.extend(shared_impl(v));
    out.extend(field_checks(v));
    out.extend(layout_checks(v));
    out.extend(inherent_impl(v));
    out.extend(plain_impl(v));
    out
}

/// The lifetime used in `for<'..>` bounds that must not be evaluated at the
/// definition (a false bound there would be an error, not a missing impl).
fn hr_lifetime() -> syn::Lifetime {
    syn::Lifetime::new("'__shmutils", Span::call_site())
}

/// The assertion that the alignment holds in every process: a segment's
/// base is only guaranteed page-aligned.
fn align_assertion(v: &Valid, ty: TokenStream) -> TokenStream {
    let msg = format!(
        "`{}` needs an alignment above 4096 bytes, but a segment is mapped at a different \
         page-aligned address in each process, so only alignments up to 4096 hold everywhere; \
         lower its `align(..)` (or a field's)",
        v.input.ident
    );
    quote!(::core::assert!(::core::mem::align_of::<#ty>() <= 4096, #msg);)
}

fn shared_impl(v: &Valid) -> TokenStream {
    let name = &v.input.ident;
    let name_str = name.to_string();
    let repr_text = v.repr.fingerprint_text();
    let (impl_g, ty_g, where_c) = v.generics.split_for_impl();
    let fields = v.fields.iter().map(|f| {
        let (field_name, member) = (&f.name, &f.member);
        let field_fp = field_fingerprint(f);
        quote! {
            .str(#field_name)
            .u64(#field_fp)
            .u64(::core::mem::offset_of!(Self, #member) as u64)
        }
    });
    // A generic struct's layout is known only per instance: check it where
    // the fingerprint is computed (every placement of the type needs it).
    let generic_check = if v.is_generic {
        align_assertion(v, quote!(Self))
    } else {
        TokenStream::new()
    };
    quote! {
        unsafe impl #impl_g ::shmutils::Shared for #name #ty_g #where_c {
            const NAME: &'static str = #name_str;
            const FINGERPRINT: u64 = {
                #generic_check
                ::shmutils::shared::Fingerprint::new(#name_str)
                    .str(#repr_text)
                    #(#fields)*
                    .u64(::core::mem::size_of::<Self>() as u64)
                    .u64(::core::mem::align_of::<Self>() as u64)
                    .finish()
            };
        }
    }
}

/// The field type's fingerprint, spanned at the type as written so that a
/// field that is not `Shared` is reported there.
fn field_fingerprint(f: &Field) -> TokenStream {
    let ty = &f.ty;
    quote_spanned!(f.span=> ::shmutils::shared::derive_support::field_fingerprint::<#ty>())
}

/// Each field type must be `Shared`. The `Shared` impl cannot require it in
/// its where-clause: for `next: RelPtr<Node<T>>` that would ask
/// `Node<T>: Shared` while proving `Node<T>: Shared`, and overflow the
/// trait solver. So a separate function with the struct's own bounds names
/// every field type, spanned at it, so the error points at the field.
fn field_checks(v: &Valid) -> TokenStream {
    let (impl_g, _, where_c) = v.generics.split_for_impl();
    let asserts = v.fields.iter().map(|f| {
        let fp = field_fingerprint(f);
        quote!(let _ = #fp;)
    });
    quote! {
        const _: () = {
            #[allow(dead_code, clippy::extra_unused_type_parameters)]
            fn __shmutils_fields_are_shared #impl_g () #where_c {
                #(#asserts)*
            }
        };
    }
}

/// Layout assertions of a non-generic struct, evaluated at its definition.
fn layout_checks(v: &Valid) -> TokenStream {
    if v.is_generic {
        return TokenStream::new();
    }
    let check = align_assertion(v, v.input.ident.to_token_stream());
    quote!(const _: () = { #check };)
}

fn inherent_impl(v: &Valid) -> TokenStream {
    let name = &v.input.ident;
    let (impl_g, ty_g, where_c) = v.generics.split_for_impl();
    let hr = hr_lifetime();
    let (bound, body) = if v.is_generic {
        (
            quote!(for<#hr> Self: ::shmutils::shared::derive_support::PlainFields),
            quote!(::shmutils::shared::derive_support::bytes_of_fields(self)),
        )
    } else {
        (
            quote!(for<#hr> Self: ::shmutils::shared::Plain),
            quote!(::shmutils::shared::bytes_of(self)),
        )
    };
    let sizeof_doc = format!("The size of a `{name}` in bytes.");
    let as_bytes_doc = format!(
        "The bytes of this `{name}`. Compiles only where `{name}` has no padding and no \
         interior mutability (atomics, locks): see `shmutils::shared::Plain`."
    );
    let with_heap_doc = format!(
        "Constructors of `{name}` in a shared heap: `{name}::with_heap(&heap).new(value)`, \
         `.new_zeroed()`, `.new_default()`."
    );
    let ptr_in_doc = format!(
        "The relative pointer of this `{name}`, which must lie in `heap` (the reverse of \
         `heap.get(ptr)`).\n\n# Errors\nIf it does not lie in the heap's arena, or is misaligned."
    );
    quote! {
        impl #impl_g #name #ty_g #where_c {
            #[doc = #sizeof_doc]
            #[inline]
            pub const fn sizeof() -> usize {
                ::core::mem::size_of::<Self>()
            }

            #[doc = #as_bytes_doc]
            #[inline]
            pub fn as_bytes(&self) -> &[u8]
            where
                #bound,
            {
                #body
            }

            #[doc = #with_heap_doc]
            #[inline]
            pub fn with_heap<'__shm>(
                heap: &::shmutils::SharedHeap<'__shm>,
            ) -> ::shmutils::heap::WithHeap<'__shm, Self> {
                ::shmutils::heap::WithHeap::for_heap(*heap)
            }

            #[doc = #ptr_in_doc]
            #[inline]
            pub fn ptr_in(
                &self,
                heap: &::shmutils::SharedHeap<'_>,
            ) -> ::shmutils::Result<::shmutils::RelPtr<Self>> {
                heap.ptr_of(self)
            }
        }
    }
}

/// `Plain` for a non-generic struct whose fields are all `Plain` and leave
/// no gap; `PlainFields` (checked per instance where `as_bytes` is called)
/// for a generic one. See `shmutils::shared::Plain` for why.
fn plain_impl(v: &Valid) -> TokenStream {
    let name = &v.input.ident;
    let (impl_g, ty_g, where_c) = v.generics.split_for_impl();
    let hr = hr_lifetime();
    let tys: Vec<&Type> = v.fields.iter().map(|f| &f.ty).collect();
    let field_bytes = quote!(0usize #(+ ::core::mem::size_of::<#tys>())*);
    let mut where_c: WhereClause = where_c.cloned().unwrap_or_else(|| parse_quote!(where));
    for ty in &tys {
        where_c
            .predicates
            .push(parse_quote!(for<#hr> #ty: ::shmutils::shared::Plain));
    }
    if v.is_generic {
        quote! {
            unsafe impl #impl_g ::shmutils::shared::derive_support::PlainFields for #name #ty_g
            #where_c
            {
                const FIELD_BYTES: usize = #field_bytes;
            }
        }
    } else {
        where_c.predicates.push(parse_quote!(
            for<#hr> ::shmutils::shared::derive_support::PaddingCheck<{
                ::core::mem::size_of::<#name>() == #field_bytes
            }>: ::shmutils::shared::derive_support::NoPadding
        ));
        quote! {
            unsafe impl ::shmutils::shared::Plain for #name #where_c {}
        }
    }
}
