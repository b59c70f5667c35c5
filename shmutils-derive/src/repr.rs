//! Parsing `#[repr(..)]` attributes.

use proc_macro2::Span;
use syn::{parenthesized, Attribute, LitInt};

/// Everything the `#[repr(..)]` attributes of an item say.
#[derive(Debug, Default)]
pub struct Repr {
    /// `C` or `transparent`, with the token's span.
    pub kind: Option<(Kind, Span)>,
    /// An integer representation (`u8` ...), with its span.
    pub int: Option<(String, Span)>,
    /// `align(N)`.
    pub align: Option<u64>,
    /// The span of a `packed` or `packed(N)`.
    pub packed: Option<Span>,
    /// The span of an explicit `Rust`.
    pub rust: Option<Span>,
}

/// The layout-defining representations a struct may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    C,
    Transparent,
}

/// Integer representations accepted for enums.
pub const ENUM_INTS: [&str; 8] = ["u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64"];

/// Other integer representations Rust knows (rejected for enums: their
/// size differs between targets, or they exceed a 64-bit fingerprint).
const OTHER_INTS: [&str; 4] = ["usize", "isize", "u128", "i128"];

impl Repr {
    /// Reads every `#[repr(..)]` among `attrs`.
    pub fn parse(attrs: &[Attribute]) -> syn::Result<Repr> {
        let mut repr = Repr::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident("repr")) {
            attr.parse_nested_meta(|meta| {
                let span = syn::spanned::Spanned::span(&meta.path);
                let Some(ident) = meta.path.get_ident() else {
                    return Err(meta.error("unknown representation"));
                };
                let name = ident.to_string();
                match name.as_str() {
                    "C" => repr.kind = Some((Kind::C, span)),
                    "transparent" => repr.kind = Some((Kind::Transparent, span)),
                    "Rust" => repr.rust = Some(span),
                    "packed" => {
                        if meta.input.peek(syn::token::Paren) {
                            let content;
                            parenthesized!(content in meta.input);
                            content.parse::<LitInt>()?;
                        }
                        repr.packed = Some(span);
                    }
                    "align" => {
                        let content;
                        parenthesized!(content in meta.input);
                        repr.align = Some(content.parse::<LitInt>()?.base10_parse()?);
                    }
                    n if ENUM_INTS.contains(&n) || OTHER_INTS.contains(&n) => {
                        repr.int = Some((name, span));
                    }
                    _ => return Err(meta.error("unknown representation")),
                }
                Ok(())
            })?;
        }
        Ok(repr)
    }

    /// The representation as it enters a fingerprint, e.g. `C` or
    /// `C,align(16)`.
    pub fn fingerprint_text(&self) -> String {
        let mut s = match self.kind {
            Some((Kind::C, _)) => "C".to_owned(),
            Some((Kind::Transparent, _)) => "transparent".to_owned(),
            None => String::new(),
        };
        if let Some((int, _)) = &self.int {
            if !s.is_empty() {
                s.push(',');
            }
            s.push_str(int);
        }
        if let Some(n) = self.align {
            s.push_str(&format!(",align({n})"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn parse(attrs: Vec<Attribute>) -> Repr {
        Repr::parse(&attrs).unwrap()
    }

    #[test]
    fn reads_kind_align_and_packed() {
        let r = parse(vec![parse_quote!(#[repr(C, align(16))])]);
        assert_eq!(r.kind.map(|k| k.0), Some(Kind::C));
        assert_eq!(r.align, Some(16));
        assert!(r.packed.is_none());
        assert_eq!(r.fingerprint_text(), "C,align(16)");

        let r = parse(vec![
            parse_quote!(#[repr(C)]),
            parse_quote!(#[repr(packed(2))]),
        ]);
        assert!(r.packed.is_some());

        let r = parse(vec![parse_quote!(#[repr(transparent)])]);
        assert_eq!(r.kind.map(|k| k.0), Some(Kind::Transparent));
        assert_eq!(r.fingerprint_text(), "transparent");
    }

    #[test]
    fn reads_integer_reprs_and_ignores_other_attributes() {
        let r = parse(vec![
            parse_quote!(#[derive(Clone)]),
            parse_quote!(#[repr(i16)]),
        ]);
        assert_eq!(r.int.as_ref().map(|i| i.0.as_str()), Some("i16"));
        assert!(r.kind.is_none());
        assert_eq!(r.fingerprint_text(), "i16");

        let r = parse(vec![parse_quote!(#[repr(Rust)])]);
        assert!(r.rust.is_some() && r.kind.is_none());
    }

    #[test]
    fn rejects_unknown_representations() {
        let attrs: Vec<Attribute> = vec![parse_quote!(#[repr(simd)])];
        assert!(Repr::parse(&attrs).is_err());
    }
}
