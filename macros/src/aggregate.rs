//! `#[derive(Aggregate)]`: parse → validate → expand.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::{Data, DeriveInput, LitInt, LitStr, Path, Type};

use crate::ctxt::Ctxt;
use crate::util::{skip_value, snake_case};

#[derive(Default)]
struct Attrs {
    krate: Option<Path>,
    name: Option<LitStr>,
    event: Option<Type>,
    snapshot_every: Option<(LitInt, u64)>,
    codec_version: Option<(LitInt, u32)>,
}

const KEYS: &str = "`event`, `name`, `snapshot_every`, `codec_version`, `crate`";

fn parse(cx: &Ctxt, input: &DeriveInput) -> Attrs {
    let mut out = Attrs::default();
    for attr in input
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("aggregate"))
    {
        let res = attr.parse_nested_meta(|meta| {
            let key = meta.path.to_token_stream().to_string();
            let dup = |cx: &Ctxt| cx.error_spanned_by(&meta.path, format!("duplicate `{key}` attribute"));
            match key.as_str() {
                "event" => {
                    let ty: Type = meta.value()?.parse()?;
                    if out.event.is_some() { dup(cx) } else { out.event = Some(ty) }
                }
                "name" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    if lit.value().trim().is_empty() {
                        cx.error_spanned_by(&lit, "an aggregate name cannot be empty");
                    }
                    if out.name.is_some() { dup(cx) } else { out.name = Some(lit) }
                }
                "snapshot_every" => {
                    let lit: LitInt = meta.value()?.parse()?;
                    let n = lit.base10_parse::<u64>()?;
                    if n == 0 {
                        cx.error_spanned_by(&lit, "`snapshot_every` must be at least 1; leave it out to take no snapshots");
                    }
                    if out.snapshot_every.is_some() { dup(cx) } else { out.snapshot_every = Some((lit, n)) }
                }
                "codec_version" => {
                    let lit: LitInt = meta.value()?.parse()?;
                    let n = lit.base10_parse::<u32>()?;
                    if n == 0 {
                        cx.error_spanned_by(&lit, "codec versions start at 1");
                    }
                    if out.codec_version.is_some() { dup(cx) } else { out.codec_version = Some((lit, n)) }
                }
                "crate" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    match lit.parse::<Path>() {
                        Ok(p) if out.krate.is_none() => out.krate = Some(p),
                        Ok(_) => dup(cx),
                        Err(_) => cx.error_spanned_by(&lit, "`crate` must be a path, like \"::annals\""),
                    }
                }
                _ => {
                    cx.error_spanned_by(
                        &meta.path,
                        format!("unknown aggregate attribute `{key}`; expected one of {KEYS}"),
                    );
                    skip_value(&meta)?;
                }
            }
            Ok(())
        });
        if let Err(e) = res {
            cx.syn_error(e);
        }
    }
    out
}

/// Entry point.
pub(crate) fn expand_derive_aggregate(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let attrs = parse(&cx, input);
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(
            &input.generics,
            "`#[derive(Aggregate)]` does not support generic types",
        );
    }
    if let Data::Union(u) = &input.data {
        cx.error_spanned_by(
            u.union_token,
            "an aggregate's state must be a struct or an enum",
        );
    }
    if attrs.event.is_none() {
        cx.error_spanned_by(
            &input.ident,
            "missing event type: add `#[aggregate(event = YourEvent)]` naming the enum that derives `Event`",
        );
    }
    if cx.has_errors() {
        return cx.into_compile_errors();
    }
    let ident = &input.ident;
    let krate = attrs.krate.unwrap_or_else(|| syn::parse_quote!(::annals));
    let p = quote!(#krate::__private);
    let name = attrs
        .name
        .map(|l| l.value())
        .unwrap_or_else(|| snake_case(&ident.to_string()));
    let every = match attrs.snapshot_every {
        Some((_, n)) => quote!(::core::option::Option::Some(#n)),
        None => quote!(::core::option::Option::None),
    };
    let codec_version = attrs.codec_version.map(|(_, n)| n).unwrap_or(1);
    let event = attrs.event;
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
