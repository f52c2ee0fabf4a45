//! `#[derive(Event)]`: parse → validate → expand.

use std::collections::{BTreeMap, HashMap};

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitInt, LitStr, Path, Token, Type};

use crate::ctxt::Ctxt;
use crate::util::{skip_value, snake_case};

mod kw {
    syn::custom_keyword!(json);
}

/// One entry of `history(...)`: how a stored old version reaches the next.
enum Link {
    /// `N = TypeVN`: deserialize into the type, then `From` into the next.
    Type(Type),
    /// `N = json(path)`: a `fn(Value) -> Result<Value, UpcastError>` from
    /// version N's JSON to version N+1's.
    Json(Path),
}

struct HistoryEntry {
    version_lit: LitInt,
    version: u32,
    link: Link,
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

/// Attributes of one event type (a variant, or a standalone struct).
#[derive(Default)]
struct TypeAttrs {
    name: Option<LitStr>,
    version: Option<(LitInt, u32)>,
    history: Option<(Span, Vec<HistoryEntry>)>,
}

/// Attributes of the container.
#[derive(Default)]
struct ContainerAttrs {
    krate: Option<Path>,
    prefix: Option<LitStr>,
    ty: TypeAttrs,
}

/// One event type, validated.
struct EventType<'a> {
    variant: Option<&'a Ident>,
    payload: Type,
    name: String,
    name_span: Span,
    version: u32,
    history: Vec<HistoryEntry>,
}

const TYPE_KEYS: &str = "`name`, `version`, `history`";

fn duplicate(cx: &Ctxt, path: &Path) {
    cx.error_spanned_by(
        path,
        format!(
            "duplicate `{}` attribute",
            path.to_token_stream().to_string().replace(' ', "")
        ),
    );
}

/// Parses the keys shared by variants and structs. Returns false for a key it
/// does not know.
fn parse_type_key(
    cx: &Ctxt,
    attrs: &mut TypeAttrs,
    meta: &syn::meta::ParseNestedMeta,
) -> syn::Result<bool> {
    if meta.path.is_ident("name") {
        let lit: LitStr = meta.value()?.parse()?;
        if attrs.name.is_some() {
            duplicate(cx, &meta.path);
        } else {
            attrs.name = Some(lit);
        }
    } else if meta.path.is_ident("version") {
        let lit: LitInt = meta.value()?.parse()?;
        let v = lit.base10_parse::<u32>()?;
        if attrs.version.is_some() {
            duplicate(cx, &meta.path);
        } else {
            attrs.version = Some((lit, v));
        }
    } else if meta.path.is_ident("history") {
        let content;
        syn::parenthesized!(content in meta.input);
        let entries = Punctuated::<HistoryEntry, Token![,]>::parse_terminated(&content)?;
        if attrs.history.is_some() {
            duplicate(cx, &meta.path);
        } else {
            attrs.history = Some((meta.path.span(), entries.into_iter().collect()));
        }
    } else {
        return Ok(false);
    }
    Ok(true)
}

fn parse_variant_attrs(cx: &Ctxt, attrs: &[syn::Attribute]) -> TypeAttrs {
    let mut out = TypeAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
        let res = attr.parse_nested_meta(|meta| {
            if parse_type_key(cx, &mut out, &meta)? {
                return Ok(());
            }
            let key = meta.path.to_token_stream().to_string();
            if key == "prefix" || key == "crate" {
                cx.error_spanned_by(
                    &meta.path,
                    format!("`{key}` belongs on the event enum, not on a variant"),
                );
            } else {
                cx.error_spanned_by(
                    &meta.path,
                    format!("unknown event attribute `{key}`; expected one of {TYPE_KEYS}"),
                );
            }
            skip_value(&meta)
        });
        if let Err(e) = res {
            cx.syn_error(e);
        }
    }
    out
}

fn parse_container_attrs(cx: &Ctxt, input: &DeriveInput, is_enum: bool) -> ContainerAttrs {
    let mut out = ContainerAttrs::default();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
        let res = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                let lit: LitStr = meta.value()?.parse()?;
                if out.krate.is_some() {
                    duplicate(cx, &meta.path);
                } else {
                    match lit.parse::<Path>() {
                        Ok(p) => out.krate = Some(p),
                        Err(_) => cx.error_spanned_by(&lit, "`crate` must be a path, like \"::annals\""),
                    }
                }
                return Ok(());
            }
            if is_enum {
                if meta.path.is_ident("prefix") {
                    let lit: LitStr = meta.value()?.parse()?;
                    if out.prefix.is_some() {
                        duplicate(cx, &meta.path);
                    } else {
                        out.prefix = Some(lit);
                    }
                    return Ok(());
                }
                let key = meta.path.to_token_stream().to_string();
                if ["name", "version", "history"].contains(&key.as_str()) {
                    cx.error_spanned_by(
                        &meta.path,
                        format!("`{key}` belongs on a variant of an event enum: each variant is one event type"),
                    );
                } else {
                    cx.error_spanned_by(
                        &meta.path,
                        format!("unknown event attribute `{key}`; expected `prefix` or `crate` on an event enum"),
                    );
                }
                return skip_value(&meta);
            }
            if parse_type_key(cx, &mut out.ty, &meta)? {
                return Ok(());
            }
            let key = meta.path.to_token_stream().to_string();
            if key == "prefix" {
                cx.error_spanned_by(&meta.path, "`prefix` applies to event enums; give a struct its full `name`");
            } else {
                cx.error_spanned_by(
                    &meta.path,
                    format!("unknown event attribute `{key}`; expected one of {TYPE_KEYS}, `crate`"),
                );
            }
            skip_value(&meta)
        });
        if let Err(e) = res {
            cx.syn_error(e);
        }
    }
    out
}

/// Validates one event type's version and history; reports every problem.
fn check_type(cx: &Ctxt, attrs: TypeAttrs) -> (u32, Vec<HistoryEntry>) {
    let version = match &attrs.version {
        Some((lit, 0)) => {
            cx.error_spanned_by(lit, "event versions start at 1");
            1
        }
        Some((_, v)) => *v,
        None => 1,
    };
    let (history_span, mut history) = attrs.history.unwrap_or((Span::call_site(), Vec::new()));
    let _ = history_span;
    let mut seen: HashMap<u32, ()> = HashMap::new();
    let mut ok = Vec::new();
    for entry in history.drain(..) {
        if entry.version == 0 {
            cx.error_spanned_by(&entry.version_lit, "event versions start at 1");
        } else if entry.version >= version {
            cx.error_spanned_by(
                &entry.version_lit,
                format!(
                    "history version {} must be older than the current version {version}",
                    entry.version
                ),
            );
        } else if seen.insert(entry.version, ()).is_some() {
            cx.error_spanned_by(
                &entry.version_lit,
                format!("duplicate history version {}", entry.version),
            );
        } else {
            ok.push(entry);
        }
    }
    ok.sort_by_key(|e| e.version);
    let by_version: BTreeMap<u32, &HistoryEntry> = ok.iter().map(|e| (e.version, e)).collect();
    for e in &ok {
        let next = e.version + 1;
        if next != version && !by_version.contains_key(&next) {
            cx.error_spanned_by(
                &e.version_lit,
                format!(
                    "gap in the version history: version {next} is missing, so version {} has nothing to upcast into; add `{next} = ...` to `history(...)`",
                    e.version
                ),
            );
        } else if let (
            Link::Type(_),
            Some(HistoryEntry {
                link: Link::Json(_),
                ..
            }),
        ) = (&e.link, by_version.get(&next))
        {
            cx.error_spanned_by(
                &e.version_lit,
                format!(
                    "version {} is a type, but version {next} is a JSON upcaster without a type to convert into; make version {} a `json(...)` upcaster too, or give version {next} a type",
                    e.version, e.version
                ),
            );
        }
    }
    (version, ok)
}

fn check_name(cx: &Ctxt, lit: &LitStr) -> String {
    let name = lit.value();
    if name.is_empty() {
        cx.error_spanned_by(lit, "an event name cannot be empty");
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        cx.error_spanned_by(lit, "an event name cannot contain whitespace");
    }
    name
}

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

/// Entry point.
pub(crate) fn expand_derive_event(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let is_enum = matches!(input.data, Data::Enum(_));
    let container = parse_container_attrs(&cx, input, is_enum);
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(
            &input.generics,
            "`#[derive(Event)]` does not support generic types",
        );
    }
    let mut types: Vec<EventType> = Vec::new();
    match &input.data {
        Data::Enum(data) => {
            if data.variants.is_empty() {
                cx.error_spanned_by(&input.ident, "an event enum needs at least one variant");
            }
            let prefix = container
                .prefix
                .as_ref()
                .map(|p| p.value())
                .unwrap_or_else(|| default_prefix(&input.ident));
            for variant in &data.variants {
                let attrs = parse_variant_attrs(&cx, &variant.attrs);
                let payload = match &variant.fields {
                    Fields::Unnamed(f) if f.unnamed.len() == 1 => Some(f.unnamed[0].ty.clone()),
                    _ => {
                        cx.error_spanned_by(
                            variant,
                            format!(
                                "event variants must wrap exactly one payload type, like `{}({}{})`",
                                variant.ident, input.ident.to_string().trim_end_matches("Event"), variant.ident
                            ),
                        );
                        None
                    }
                };
                let (name, name_span) = match &attrs.name {
                    Some(lit) => (check_name(&cx, lit), lit.span()),
                    None => {
                        let v = snake_case(&variant.ident.to_string());
                        let name = if prefix.is_empty() {
                            v
                        } else {
                            format!("{prefix}.{v}")
                        };
                        (name, variant.ident.span())
                    }
                };
                let (version, history) = check_type(&cx, attrs);
                if let Some(payload) = payload {
                    types.push(EventType {
                        variant: Some(&variant.ident),
                        payload,
                        name,
                        name_span,
                        version,
                        history,
                    });
                }
            }
        }
        Data::Struct(_) => {
            let TypeAttrs {
                name,
                version,
                history,
            } = container.ty;
            let (name, name_span) = match &name {
                Some(lit) => (check_name(&cx, lit), lit.span()),
                None => (snake_case(&input.ident.to_string()), input.ident.span()),
            };
            let (version, history) = check_type(
                &cx,
                TypeAttrs {
                    name: None,
                    version,
                    history,
                },
            );
            let ident = &input.ident;
            types.push(EventType {
                variant: None,
                payload: syn::parse_quote!(#ident),
                name,
                name_span,
                version,
                history,
            });
        }
        Data::Union(u) => {
            cx.error_spanned_by(
                u.union_token,
                "`#[derive(Event)]` works on enums (one variant per event type) and structs, not unions",
            );
        }
    }
    // two event types with the same name
    let mut names: HashMap<&str, &EventType> = HashMap::new();
    for t in &types {
        if let Some(first) = names.get(t.name.as_str()) {
            let first_desc = match first.variant {
                Some(v) => format!("variant `{v}`"),
                None => "another event type".to_owned(),
            };
            cx.error_at(
                t.name_span,
                format!(
                    "duplicate event name `{}`: {first_desc} already uses it",
                    t.name
                ),
            );
        } else {
            names.insert(&t.name, t);
        }
    }

    let krate = container
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::annals));
    if cx.has_errors() {
        let errors = cx.into_compile_errors();
        let stub = stub_impl(input, &krate);
        return quote! { #errors #stub };
    }
    expand(input, &krate, &types)
}

/// An impl that keeps the rest of the user's crate compiling while the derive
/// reports its errors, so that one mistake gives one error.
fn stub_impl(input: &DeriveInput, krate: &Path) -> TokenStream {
    if !input.generics.params.is_empty() {
        return TokenStream::new();
    }
    let ident = &input.ident;
    let p = quote!(#krate::__private);
    quote! {
        const _: () = {
            impl #p::Event for #ident {
                const TYPES: &'static [#p::EventTypeInfo] = &[];
                fn event_type(&self) -> &'static str { ::core::unreachable!() }
                fn schema_version(&self) -> u32 { ::core::unreachable!() }
                fn encode(&self) -> ::core::result::Result<::std::boxed::Box<#p::serde_json::value::RawValue>, #p::serde_json::Error> { ::core::unreachable!() }
                fn decode(_: &str, _: u32, _: &#p::serde_json::value::RawValue) -> ::core::result::Result<Self, #p::DecodeError> { ::core::unreachable!() }
                fn schemas() -> ::std::vec::Vec<#p::EventSchema> { ::core::unreachable!() }
            }
        };
    }
}

fn expand(input: &DeriveInput, krate: &Path, types: &[EventType]) -> TokenStream {
    let ident = &input.ident;
    let p = quote!(#krate::__private);

    let infos = types.iter().map(|t| {
        let name = &t.name;
        let version = t.version;
        let oldest = t.history.first().map(|h| h.version).unwrap_or(t.version);
        quote!(#p::EventTypeInfo { name: #name, version: #version, oldest_version: #oldest })
    });

    let pattern = |t: &EventType, bind: TokenStream| match t.variant {
        Some(v) => quote!(Self::#v(#bind)),
        None => quote!(#bind),
    };

    let name_arms = types.iter().map(|t| {
        let pat = pattern(t, quote!(_));
        let name = &t.name;
        quote!(#pat => #name,)
    });
    let version_arms = types.iter().map(|t| {
        let pat = pattern(t, quote!(_));
        let v = t.version;
        quote!(#pat => #v,)
    });
    let encode_arms = types.iter().map(|t| {
        let pat = pattern(t, quote!(__payload));
        let call = payload_call(&p, &t.payload, quote!(encode_payload));
        quote!(#pat => #call(__payload),)
    });
    let wrap = |t: &EventType, value: TokenStream| match t.variant {
        Some(v) => quote!(Self::#v(#value)),
        None => value,
    };

    let decode_arms = types.iter().enumerate().map(|(index, t)| {
        let name = &t.name;
        let current = &t.payload;
        let version = t.version;
        let current_value = wrap(t, quote!(__current));
        let mut version_arms = Vec::new();
        let decode_current = payload_call(&p, current, quote!(decode_payload));
        version_arms.push(quote! {
            #version => {
                let __current: #current = #decode_current(__event_type, __version, __payload)?;
                ::core::result::Result::Ok(#current_value)
            }
        });
        for (start, entry) in t.history.iter().enumerate() {
            let v = entry.version;
            let mut body = Vec::new();
            // what we hold: typed (with its type) or JSON, at version `at`
            let mut typed: Option<&Type> = None;
            match &entry.link {
                Link::Type(ty) => {
                    let call = payload_call(&p, ty, quote!(decode_payload));
                    body.push(quote!(let __v: #ty = #call(__event_type, __version, __payload)?;));
                    typed = Some(ty);
                }
                Link::Json(path) => {
                    let f = json_fn(&p, path);
                    body.push(quote! {
                        let __j = #p::parse_value(__event_type, __version, __payload)?;
                        let __j = #p::upcast_json(__event_type, #v, #f, __j)?;
                    });
                }
            }
            for next in &t.history[start + 1..] {
                let nv = next.version;
                match (&next.link, typed) {
                    (Link::Type(ty), Some(prev)) => {
                        let conv = from_call(&p, prev, ty);
                        body.push(quote!(let __v: #ty = #conv;));
                        typed = Some(ty);
                    }
                    (Link::Type(ty), None) => {
                        let call = payload_call(&p, ty, quote!(decode_payload_value));
                        body.push(quote!(let __v: #ty = #call(__event_type, #nv, __j)?;));
                        typed = Some(ty);
                    }
                    (Link::Json(path), None) => {
                        let f = json_fn(&p, path);
                        body.push(quote!(let __j = #p::upcast_json(__event_type, #nv, #f, __j)?;));
                    }
                    (Link::Json(_), Some(_)) => {
                        // rejected by validation
                        return TokenStream::new();
                    }
                }
            }
            match typed {
                Some(prev) => {
                    let conv = from_call(&p, prev, current);
                    body.push(quote!(let __current: #current = #conv;));
                }
                None => {
                    let call = payload_call(&p, current, quote!(decode_payload_value));
                    body.push(quote!(let __current: #current = #call(__event_type, #version, __j)?;));
                }
            }
            version_arms.push(quote! {
                #v => {
                    #(#body)*
                    ::core::result::Result::Ok(#current_value)
                }
            });
        }
        quote! {
            #name => match __version {
                #(#version_arms)*
                _ => ::core::result::Result::Err(#p::bad_version(__event_type, __version, &<Self as #p::Event>::TYPES[#index])),
            },
        }
    });

    let schemas = types.iter().flat_map(|t| {
        let name = &t.name;
        let mut out = Vec::new();
        for h in &t.history {
            let v = h.version;
            match &h.link {
                Link::Type(ty) => {
                    let ty_name = ty.to_token_stream().to_string().replace(' ', "");
                    let schema = payload_call(&p, ty, quote!(payload_schema));
                    out.push(quote!(#p::EventSchema { event_type: #name, version: #v, schema: #schema(), rust_type: #ty_name }));
                }
                Link::Json(path) => {
                    let fn_name = format!("json({})", path.to_token_stream().to_string().replace(' ', ""));
                    out.push(quote!(#p::EventSchema { event_type: #name, version: #v, schema: #p::any_schema(), rust_type: #fn_name }));
                }
            }
        }
        let ty = &t.payload;
        let v = t.version;
        let ty_name = ty.to_token_stream().to_string().replace(' ', "");
        let schema = payload_call(&p, ty, quote!(payload_schema));
        out.push(quote!(#p::EventSchema { event_type: #name, version: #v, schema: #schema(), rust_type: #ty_name }));
        out
    });

    quote! {
        const _: () = {
            #[automatically_derived]
            impl #p::Event for #ident {
                const TYPES: &'static [#p::EventTypeInfo] = &[#(#infos),*];

                fn event_type(&self) -> &'static str {
                    match self { #(#name_arms)* }
                }

                fn schema_version(&self) -> u32 {
                    match self { #(#version_arms)* }
                }

                fn encode(&self) -> ::core::result::Result<::std::boxed::Box<#p::serde_json::value::RawValue>, #p::serde_json::Error> {
                    match self { #(#encode_arms)* }
                }

                fn decode(
                    __event_type: &str,
                    __version: u32,
                    __payload: &#p::serde_json::value::RawValue,
                ) -> ::core::result::Result<Self, #p::DecodeError> {
                    <Self as #p::Event>::decode_json(__event_type, __version, __payload.get())
                }

                fn decode_json(
                    __event_type: &str,
                    __version: u32,
                    __payload: &str,
                ) -> ::core::result::Result<Self, #p::DecodeError> {
                    match __event_type {
                        #(#decode_arms)*
                        _ => ::core::result::Result::Err(#p::unknown_type(__event_type, <Self as #p::Event>::TYPES)),
                    }
                }

                fn schemas() -> ::std::vec::Vec<#p::EventSchema> {
                    ::std::vec![#(#schemas),*]
                }
            }

        };
    }
}

/// `<Prev as UpcastInto<Next>>::upcast(__v)`, spanned at `Prev` so that a
/// missing link points at the historical type that lacks it.
fn from_call(p: &TokenStream, prev: &Type, next: &Type) -> TokenStream {
    quote_spanned!(prev.span()=> <#prev as #p::UpcastInto<#next>>::upcast(__v))
}

/// `<Ty as EventPayload>::method`, spanned at the type: every use of a
/// payload type carries the same obligation at the same span, so a type that
/// is not a payload gets one (deduplicated) error.
fn payload_call(p: &TokenStream, ty: &Type, method: TokenStream) -> TokenStream {
    quote_spanned!(ty.span()=> <#ty as #p::EventPayload>::#method)
}

/// The upcaster as a function pointer, spanned at its path so that a wrong
/// signature points there.
fn json_fn(p: &TokenStream, path: &Path) -> TokenStream {
    quote_spanned!(path.span()=> {
        let __f: fn(#p::serde_json::Value) -> ::core::result::Result<#p::serde_json::Value, #p::UpcastError> = #path;
        __f
    })
}
