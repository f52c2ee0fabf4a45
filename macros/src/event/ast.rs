//! The derive input, read into typed slots.

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Data, DeriveInput, Fields, Generics, Ident, LitInt, LitStr, Path, Token, Type};

use crate::attr::{self, Attr, Scope};
use crate::ctxt::Ctxt;
use crate::util::snake_case;

mod kw {
    syn::custom_keyword!(json);
}

/// A type deriving `Event`.
pub(crate) struct Input<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) generics: &'a Generics,
    pub(crate) krate: Path,
    pub(crate) body: Body<'a>,
    /// For a struct: its first field whose type is `Personal<…>`, which
    /// needs a subject to be sealed with.
    pub(crate) personal_field: Option<&'a Type>,
}

pub(crate) enum Body<'a> {
    /// One event type per variant.
    Enum {
        prefix: Option<LitStr>,
        variants: Vec<Variant<'a>>,
    },
    /// The struct is one event type.
    Struct(TypeAttrs),
    /// Not an event (reported by validation).
    Union(Token![union]),
}

/// A variant of an event enum.
pub(crate) struct Variant<'a> {
    pub(crate) ident: &'a Ident,
    /// The wrapped payload; `None` for a variant of another shape.
    pub(crate) payload: Option<Type>,
    /// The whole variant, for errors about its shape.
    pub(crate) original: &'a syn::Variant,
    pub(crate) attrs: TypeAttrs,
}

/// Attributes of one event type (a variant, or a struct).
#[derive(Default)]
pub(crate) struct TypeAttrs {
    pub(crate) name: Option<LitStr>,
    pub(crate) version: Option<(LitInt, u32)>,
    pub(crate) history: Vec<HistoryEntry>,
    pub(crate) subject: Option<SubjectAttr>,
}

/// `subject = field` or `subject = envelope.stream_id`: whose personal data
/// the event carries.
pub(crate) enum SubjectAttr {
    /// A field of the payload.
    Field(Ident),
    /// The stream the event is appended to.
    Stream,
}

impl Parse for SubjectAttr {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let expr: syn::Expr = input.parse()?;
        match &expr {
            syn::Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some() => {
                let ident = p.path.get_ident().cloned();
                ident.map(SubjectAttr::Field).ok_or_else(|| {
                    syn::Error::new_spanned(&expr, "expected a field of the payload")
                })
            }
            syn::Expr::Field(f)
                if matches!(&*f.base, syn::Expr::Path(b) if b.path.is_ident("envelope"))
                    && matches!(&f.member, syn::Member::Named(m) if m == "stream_id") =>
            {
                Ok(SubjectAttr::Stream)
            }
            _ => Err(syn::Error::new_spanned(
                &expr,
                "expected a field of the payload (`subject = patient_id`) or the stream (`subject = envelope.stream_id`)",
            )),
        }
    }
}

/// One entry of `history(...)`: how a stored old version reaches the next.
pub(crate) struct HistoryEntry {
    pub(crate) version_lit: LitInt,
    pub(crate) version: u32,
    pub(crate) link: Link,
}

pub(crate) enum Link {
    /// `N = TypeVN`: deserialize into the type, then `From` into the next.
    Type(Type),
    /// `N = json(path)`: a `fn(Value) -> Result<Value, UpcastError>` from
    /// version N's JSON to version N+1's.
    Json(Path),
}

impl Parse for HistoryEntry {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let version_lit: LitInt = input.parse()?;
        let version = version_lit.base10_parse::<u32>()?;
        input.parse::<Token![=]>()?;
        let link = if input.peek(kw::json) && input.peek2(syn::token::Paren) {
            input.parse::<kw::json>()?;
            let content;
            syn::parenthesized!(content in input);
            Link::Json(content.parse()?)
        } else {
            Link::Type(input.parse()?)
        };
        Ok(HistoryEntry {
            version_lit,
            version,
            link,
        })
    }
}

/// One event type with its name resolved: what validation compares and
/// expansion writes.
pub(crate) struct EventType<'i> {
    pub(crate) variant: Option<&'i Ident>,
    pub(crate) payload: Type,
    pub(crate) name: String,
    /// The written `name = "..."`, if any (it may be invalid).
    pub(crate) name_lit: Option<&'i LitStr>,
    pub(crate) name_span: Span,
    pub(crate) attrs: &'i TypeAttrs,
}

impl EventType<'_> {
    /// The current version (default 1).
    pub(crate) fn version(&self) -> u32 {
        self.attrs.version.as_ref().map_or(1, |(_, v)| *v)
    }

    /// The history, oldest first.
    pub(crate) fn history(&self) -> Vec<&HistoryEntry> {
        let mut history: Vec<&HistoryEntry> = self.attrs.history.iter().collect();
        history.sort_by_key(|e| e.version);
        history
    }
}

const ENUM: Scope = Scope {
    attr: "event",
    keys: &["prefix", "crate"],
    elsewhere: &[
        (
            "subject",
            "`subject` belongs on a variant of an event enum: each variant is one event type",
        ),
        (
            "name",
            "`name` belongs on a variant of an event enum: each variant is one event type",
        ),
        (
            "version",
            "`version` belongs on a variant of an event enum: each variant is one event type",
        ),
        (
            "history",
            "`history` belongs on a variant of an event enum: each variant is one event type",
        ),
    ],
};

const VARIANT: Scope = Scope {
    attr: "event",
    keys: &["name", "version", "history", "subject"],
    elsewhere: &[
        (
            "prefix",
            "`prefix` belongs on the event enum, not on a variant",
        ),
        (
            "crate",
            "`crate` belongs on the event enum, not on a variant",
        ),
    ],
};

const STRUCT: Scope = Scope {
    attr: "event",
    keys: &["name", "version", "history", "subject", "crate"],
    elsewhere: &[(
        "prefix",
        "`prefix` applies to event enums; give a struct its full `name`",
    )],
};

/// Whether a field's type is `Personal<…>` (by its last path segment: the
/// derive sees tokens, not resolved types).
fn is_personal(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p.path.segments.last().is_some_and(|s| {
            s.ident == "Personal" && matches!(s.arguments, syn::PathArguments::AngleBracketed(_))
        }),
        _ => false,
    }
}

impl<'a> Input<'a> {
    pub(crate) fn from_syn(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        let mut krate = Attr::none(cx, "crate");
        let body = match &input.data {
            Data::Enum(data) => {
                let mut prefix = Attr::none(cx, "prefix");
                attr::parse(cx, &input.attrs, &ENUM, |key, meta| {
                    match key {
                        "prefix" => prefix.set(meta.path, meta.value()?.parse::<LitStr>()?),
                        _ => parse_crate(cx, &mut krate, meta)?,
                    }
                    Ok(())
                });
                let variants = data
                    .variants
                    .iter()
                    .map(|variant| Variant::from_syn(cx, variant))
                    .collect();
                Body::Enum {
                    prefix: prefix.get(),
                    variants,
                }
            }
            Data::Struct(_) => {
                let mut slots = TypeSlots::new(cx);
                attr::parse(cx, &input.attrs, &STRUCT, |key, meta| match key {
                    "crate" => parse_crate(cx, &mut krate, meta),
                    _ => slots.parse(key, meta),
                });
                Body::Struct(slots.get())
            }
            Data::Union(u) => Body::Union(u.union_token),
        };
        let personal_field = match &input.data {
            Data::Struct(data) => data.fields.iter().map(|f| &f.ty).find(|ty| is_personal(ty)),
            _ => None,
        };
        Input {
            ident: &input.ident,
            generics: &input.generics,
            krate: krate.get().unwrap_or_else(|| syn::parse_quote!(::annals)),
            body,
            personal_field,
        }
    }

    /// The event types, with their names resolved.
    pub(crate) fn event_types(&self) -> Vec<EventType<'_>> {
        match &self.body {
            Body::Enum { prefix, variants } => {
                let prefix = prefix
                    .as_ref()
                    .map(LitStr::value)
                    .unwrap_or_else(|| default_prefix(self.ident));
                variants
                    .iter()
                    .filter_map(|v| {
                        let payload = v.payload.clone()?;
                        let (name, name_span) = match &v.attrs.name {
                            Some(lit) => (lit.value(), lit.span()),
                            None => {
                                let snake = snake_case(&v.ident.to_string());
                                let name = if prefix.is_empty() {
                                    snake
                                } else {
                                    format!("{prefix}.{snake}")
                                };
                                (name, v.ident.span())
                            }
                        };
                        Some(EventType {
                            variant: Some(v.ident),
                            payload,
                            name,
                            name_lit: v.attrs.name.as_ref(),
                            name_span,
                            attrs: &v.attrs,
                        })
                    })
                    .collect()
            }
            Body::Struct(attrs) => {
                let ident = self.ident;
                let (name, name_span) = match &attrs.name {
                    Some(lit) => (lit.value(), lit.span()),
                    None => (snake_case(&ident.to_string()), ident.span()),
                };
                vec![EventType {
                    variant: None,
                    payload: syn::parse_quote!(#ident),
                    name,
                    name_lit: attrs.name.as_ref(),
                    name_span,
                    attrs,
                }]
            }
            Body::Union(_) => Vec::new(),
        }
    }
}

impl<'a> Variant<'a> {
    fn from_syn(cx: &Ctxt, variant: &'a syn::Variant) -> Self {
        let mut slots = TypeSlots::new(cx);
        attr::parse(cx, &variant.attrs, &VARIANT, |key, meta| {
            slots.parse(key, meta)
        });
        let payload = match &variant.fields {
            Fields::Unnamed(f) if f.unnamed.len() == 1 => Some(f.unnamed[0].ty.clone()),
            _ => None,
        };
        Variant {
            ident: &variant.ident,
            payload,
            original: variant,
            attrs: slots.get(),
        }
    }
}

/// The slots of the keys every event type has.
struct TypeSlots<'c> {
    name: Attr<'c, LitStr>,
    version: Attr<'c, (LitInt, u32)>,
    history: Attr<'c, Vec<HistoryEntry>>,
    subject: Attr<'c, SubjectAttr>,
}

impl<'c> TypeSlots<'c> {
    fn new(cx: &'c Ctxt) -> Self {
        TypeSlots {
            name: Attr::none(cx, "name"),
            version: Attr::none(cx, "version"),
            history: Attr::none(cx, "history"),
            subject: Attr::none(cx, "subject"),
        }
    }

    fn parse(&mut self, key: &str, meta: &attr::Meta) -> syn::Result<()> {
        match key {
            "name" => self.name.set(meta.path, meta.value()?.parse()?),
            "subject" => self.subject.set(meta.path, meta.value()?.parse()?),
            "version" => {
                let lit: LitInt = meta.value()?.parse()?;
                let v = lit.base10_parse()?;
                self.version.set(meta.path, (lit, v));
            }
            _ => {
                let content;
                syn::parenthesized!(content in meta.input);
                let entries = Punctuated::<HistoryEntry, Token![,]>::parse_terminated(&content)?;
                self.history.set(meta.path, entries.into_iter().collect());
            }
        }
        Ok(())
    }

    fn get(self) -> TypeAttrs {
        TypeAttrs {
            name: self.name.get(),
            version: self.version.get(),
            history: self.history.get().unwrap_or_default(),
            subject: self.subject.get(),
        }
    }
}

fn parse_crate(cx: &Ctxt, krate: &mut Attr<Path>, meta: &attr::Meta) -> syn::Result<()> {
    if let Some(path) = attr::parse_crate(cx, meta)? {
        krate.set(meta.path, path);
    }
    Ok(())
}

/// `LeadEvent` → `lead`, `LeadEvents` → `lead`, `Audit` → `audit`.
fn default_prefix(ident: &Ident) -> String {
    let snake = snake_case(&ident.to_string());
    for suffix in ["_events", "_event"] {
        if let Some(stripped) = snake.strip_suffix(suffix) {
            if !stripped.is_empty() {
                return stripped.to_owned();
            }
        }
    }
    snake
}
