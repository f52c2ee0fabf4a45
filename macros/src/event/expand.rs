//! The `Event` impl.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{Path, Type};

use super::ast::{EventType, Input, Link, SubjectAttr};

/// The impl of a checked input.
pub(crate) fn expand(input: &Input) -> TokenStream {
    let types = input.event_types();
    expand_types(input.ident, &input.krate, &types)
}

/// What goes with the errors of an input that did not check: an impl that
/// keeps the rest of the user's crate compiling, so that one mistake gives
/// one error.
pub(crate) fn fallback(input: &Input) -> TokenStream {
    if !input.generics.params.is_empty() || matches!(input.body, super::ast::Body::Union(_)) {
        return TokenStream::new();
    }
    let ident = input.ident;
    let krate = &input.krate;
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

fn expand_types(ident: &syn::Ident, krate: &Path, types: &[EventType]) -> TokenStream {
    let p = quote!(#krate::__private);

    let infos = types.iter().map(|t| {
        let name = &t.name;
        let version = t.version();
        let oldest = t.history().first().map_or(version, |h| h.version);
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
        let v = t.version();
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
        let version = t.version();
        let history = t.history();
        let current_value = wrap(t, quote!(__current));
        let mut version_arms = Vec::new();
        let decode_current = payload_call(&p, current, quote!(decode_payload));
        version_arms.push(quote! {
            #version => {
                let __current: #current = #decode_current(__event_type, __version, __payload)?;
                ::core::result::Result::Ok(#current_value)
            }
        });
        for (start, entry) in history.iter().enumerate() {
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
            for next in &history[start + 1..] {
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
        for h in t.history() {
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
        let v = t.version();
        let ty_name = ty.to_token_stream().to_string().replace(' ', "");
        let schema = payload_call(&p, ty, quote!(payload_schema));
        out.push(quote!(#p::EventSchema { event_type: #name, version: #v, schema: #schema(), rust_type: #ty_name }));
        out
    });

    // only when some type names a subject: the trait's default says
    // `Subject::None` for the rest
    let subject = types.iter().any(|t| t.attrs.subject.is_some()).then(|| {
        let arms = types.iter().map(|t| match &t.attrs.subject {
            None => {
                let pat = pattern(t, quote!(_));
                quote!(#pat => #p::Subject::None,)
            }
            Some(SubjectAttr::Stream) => {
                let pat = pattern(t, quote!(_));
                quote!(#pat => #p::Subject::Stream,)
            }
            // spanned at the field: an unknown one is one error there
            Some(SubjectAttr::Field(field)) => {
                let pat = pattern(t, quote!(__payload));
                let read = quote_spanned!(field.span()=> __payload.#field);
                quote!(#pat => #p::Subject::Field(::std::string::ToString::to_string(&#read)),)
            }
        });
        quote! {
            fn subject(&self) -> #p::Subject {
                match self { #(#arms)* }
            }
        }
    });

    quote! {
        const _: () = {
            #[automatically_derived]
            impl #p::Event for #ident {
                #subject

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
