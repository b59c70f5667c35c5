//! Field types that can never live in shared memory, recognised by their
//! syntax so the error can name the shared alternative.
//!
//! Everything else is checked by the compiler (`Shared` bounds), whose
//! message comes from `#[diagnostic::on_unimplemented]` on `Shared`.

use syn::visit_mut::VisitMut;
use syn::{Type, TypePath};

/// `ty` with every `Self` replaced by `self_ty`, so that generated items
/// outside the struct's impls (where `Self` means nothing) can name it.
pub fn replace_self(ty: &Type, self_ty: &Type) -> Type {
    struct ReplaceSelf<'a>(&'a Type);
    impl VisitMut for ReplaceSelf<'_> {
        fn visit_type_mut(&mut self, ty: &mut Type) {
            if is_ident(ty, "Self") {
                *ty = self.0.clone();
            } else {
                syn::visit_mut::visit_type_mut(self, ty);
            }
        }
    }
    let mut ty = ty.clone();
    ReplaceSelf(self_ty).visit_type_mut(&mut ty);
    ty
}

/// Why `ty` cannot be a field of a shared struct, and what to use instead;
/// `None` when the syntax alone does not rule it out.
pub fn rejection(ty: &Type) -> Option<syn::Error> {
    let err = |msg: String| Some(syn::Error::new_spanned(ty, msg));
    match ty {
        Type::Reference(r) if is_ident(&r.elem, "str") => err(
            "`&str` points into this process's memory, which other processes cannot see; \
             store the bytes in the segment and keep a `RelSlice<u8>` here"
                .to_owned(),
        ),
        Type::Reference(_) => err(
            "a reference is a process-local address, meaningless in another process; \
             use `RelPtr<T>` (an offset into the segment) or, for many values, `RelSlice<T>`"
                .to_owned(),
        ),
        Type::Ptr(_) => err(
            "a raw pointer is a process-local address, meaningless in another process; \
             use `RelPtr<T>` (an offset into the segment)"
                .to_owned(),
        ),
        Type::BareFn(_) => err(
            "a function pointer is a process-local address (each process may load code \
             elsewhere); store a `Checked<E>` tag and choose the function from it"
                .to_owned(),
        ),
        Type::Tuple(t) if !t.elems.is_empty() => err(
            "a tuple has no guaranteed layout, so two programs may disagree on it; \
             use a `#[derive(SharedStruct)]` `#[repr(C)]` struct"
                .to_owned(),
        ),
        Type::Array(a) => rejection(&a.elem),
        Type::Paren(p) => rejection(&p.elem),
        Type::Group(g) => rejection(&g.elem),
        Type::Path(TypePath { qself: None, path }) => {
            let last = path.segments.last()?.ident.to_string();
            match last.as_str() {
                "Box" | "Rc" | "Arc" => err(format!(
                    "`{last}` points into this process's own heap, which other processes cannot \
                     see; allocate the value in a `SharedHeap` and store a `RelPtr<T>`"
                )),
                "Vec" => err(
                    "`Vec` keeps its elements in this process's own heap, which other processes \
                     cannot see; allocate them in a `SharedHeap` and store a `RelSlice<T>`"
                        .to_owned(),
                ),
                "String" => err(
                    "`String` keeps its bytes in this process's own heap, which other processes \
                     cannot see; store the bytes in a `SharedHeap` and keep a `RelSlice<u8>`"
                        .to_owned(),
                ),
                "bool" if path.segments.len() == 1 => err(
                    "`bool` is valid only as the bytes 0 and 1, and a peer may write any byte; \
                     use `Checked<bool>`, whose `get()` validates"
                        .to_owned(),
                ),
                "char" if path.segments.len() == 1 => err(
                    "`char` is not valid for every bit pattern, and a peer may write any bytes; \
                     store a `u32` and convert it with `char::from_u32`"
                        .to_owned(),
                ),
                _ => None,
            }
        }
        _ => None,
    }
}

fn is_ident(ty: &Type, name: &str) -> bool {
    matches!(ty, Type::Path(TypePath { qself: None, path }) if path.is_ident(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn message(ty: Type) -> Option<String> {
        rejection(&ty).map(|e| e.to_string())
    }

    #[test]
    fn rejects_address_holding_types_with_their_alternative() {
        let cases: Vec<(Type, &str)> = vec![
            (parse_quote!(&str), "RelSlice<u8>"),
            (parse_quote!(&'static u32), "RelPtr<T>"),
            (parse_quote!(&mut u32), "RelPtr<T>"),
            (parse_quote!(*const u8), "RelPtr<T>"),
            (parse_quote!(*mut Node), "RelPtr<T>"),
            (parse_quote!(Box<u32>), "RelPtr<T>"),
            (parse_quote!(std::rc::Rc<u32>), "RelPtr<T>"),
            (parse_quote!(Arc<u32>), "RelPtr<T>"),
            (parse_quote!(Vec<u64>), "RelSlice<T>"),
            (parse_quote!(String), "RelSlice<u8>"),
            (parse_quote!(bool), "Checked<bool>"),
            (parse_quote!([bool; 4]), "Checked<bool>"),
            (parse_quote!([[Box<u8>; 2]; 2]), "SharedHeap"),
            (parse_quote!(char), "char::from_u32"),
            (parse_quote!((u32, u32)), "#[repr(C)]"),
            (parse_quote!(fn(u32) -> u32), "Checked<E>"),
        ];
        for (ty, alternative) in cases {
            let shown = quote::quote!(#ty).to_string();
            let msg = message(ty).unwrap_or_else(|| panic!("`{shown}` was not rejected"));
            assert!(msg.contains(alternative), "`{shown}`: {msg}");
        }
    }

    #[test]
    fn replaces_self_at_any_depth() {
        let self_ty: Type = parse_quote!(Node<T, N>);
        let ty: Type = parse_quote!([RelPtr<Self>; 2]);
        let replaced = replace_self(&ty, &self_ty);
        let expected: Type = parse_quote!([RelPtr<Node<T, N>>; 2]);
        assert_eq!(
            quote::quote!(#replaced).to_string(),
            quote::quote!(#expected).to_string()
        );
        let plain: Type = parse_quote!(SelfDescribing<u8>);
        let kept = replace_self(&plain, &self_ty);
        assert_eq!(
            quote::quote!(#kept).to_string(),
            quote::quote!(#plain).to_string()
        );
    }

    #[test]
    fn leaves_other_types_to_the_compiler() {
        let ok: Vec<Type> = vec![
            parse_quote!(u64),
            parse_quote!(Checked<bool>),
            parse_quote!([u8; 16]),
            parse_quote!(RelPtr<Node<T>>),
            parse_quote!(core::sync::atomic::AtomicU32),
            parse_quote!(()),
            parse_quote!(T),
            parse_quote!(my::bool),
        ];
        for ty in ok {
            let shown = quote::quote!(#ty).to_string();
            assert!(message(ty).is_none(), "`{shown}` was rejected");
        }
    }
}
