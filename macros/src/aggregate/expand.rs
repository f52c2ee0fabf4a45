//! The `AggregateState` impl.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::Data;

use super::ast::Input;
use crate::util::snake_case;

/// The impl of a checked input.
pub(crate) fn expand(input: &Input) -> TokenStream {
    let ident = input.ident;
    let krate = &input.krate;
    let p = quote!(#krate::__private);
    let name = input
        .name
        .as_ref()
        .map(|l| l.value())
        .unwrap_or_else(|| snake_case(&ident.to_string()));
    let every = match &input.snapshot_every {
        Some((_, n)) => quote!(::core::option::Option::Some(#n)),
        None => quote!(::core::option::Option::None),
    };
    let codec_version = input.codec_version.as_ref().map_or(1, |(_, n)| *n);
    let event = &input.event;
    // every use of the state's codec goes through one trait, spanned at the
    // type's name: a state without serde/schemars gets one clear error
    let codec = quote_spanned!(ident.span()=> #p::state_codec::<#ident>());
    quote! {
        const _: () = {
            #[automatically_derived]
            impl #p::AggregateState for #ident {
                const TYPE: &'static str = #name;
                const SNAPSHOT_EVERY: ::core::option::Option<u64> = #every;
                const CODEC_VERSION: u32 = #codec_version;
                type Event = #event;

                fn state_fingerprint() -> &'static str {
                    static FINGERPRINT: ::std::sync::OnceLock<::std::string::String> = ::std::sync::OnceLock::new();
                    FINGERPRINT.get_or_init(#codec.fingerprint).as_str()
                }

                fn encode_state(&self) -> ::core::result::Result<::std::boxed::Box<#p::serde_json::value::RawValue>, #p::serde_json::Error> {
                    (#codec.encode)(self)
                }

                fn decode_state(state: &#p::serde_json::value::RawValue) -> ::core::result::Result<Self, #p::serde_json::Error> {
                    (#codec.decode)(state)
                }
            }
        };
    }
}

/// What goes with the errors of an input that did not check: an impl with
/// the declared event type, so that the rest of the crate (the `Aggregate`
/// impl, repositories) compiles and the derive's errors are the only ones.
/// Without an event type there is nothing sound to fall back to.
pub(crate) fn fallback(input: &Input) -> TokenStream {
    let Some(event) = &input.event else {
        return TokenStream::new();
    };
    if !input.generics.params.is_empty() || matches!(input.data, Data::Union(_)) {
        return TokenStream::new();
    }
    let ident = input.ident;
    let krate = &input.krate;
    let p = quote!(#krate::__private);
    quote! {
        const _: () = {
            impl #p::AggregateState for #ident {
                const TYPE: &'static str = "";
                const SNAPSHOT_EVERY: ::core::option::Option<u64> = ::core::option::Option::None;
                const CODEC_VERSION: u32 = 1;
                type Event = #event;
                fn state_fingerprint() -> &'static str { ::core::unreachable!() }
                fn encode_state(&self) -> ::core::result::Result<::std::boxed::Box<#p::serde_json::value::RawValue>, #p::serde_json::Error> { ::core::unreachable!() }
                fn decode_state(_: &#p::serde_json::value::RawValue) -> ::core::result::Result<Self, #p::serde_json::Error> { ::core::unreachable!() }
            }
        };
    }
}
