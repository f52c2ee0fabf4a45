//! The derive input, read into typed slots.

use syn::{Data, DeriveInput, Generics, Ident, LitInt, LitStr, Path, Type};

use crate::attr::{self, Attr, Scope};
use crate::ctxt::Ctxt;

/// A state deriving `Aggregate`, as its attributes describe it.
pub(crate) struct Input<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) generics: &'a Generics,
    pub(crate) data: &'a Data,
    pub(crate) krate: Path,
    pub(crate) event: Option<Type>,
    pub(crate) name: Option<LitStr>,
    pub(crate) snapshot_every: Option<(LitInt, u64)>,
    pub(crate) codec_version: Option<(LitInt, u32)>,
}

const SCOPE: Scope = Scope {
    attr: "aggregate",
    keys: &["event", "name", "snapshot_every", "codec_version", "crate"],
    elsewhere: &[],
};

impl<'a> Input<'a> {
    pub(crate) fn from_syn(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        let mut krate = Attr::none(cx, "crate");
        let mut event = Attr::none(cx, "event");
        let mut name = Attr::none(cx, "name");
        let mut snapshot_every = Attr::none(cx, "snapshot_every");
        let mut codec_version = Attr::none(cx, "codec_version");
        attr::parse(cx, &input.attrs, &SCOPE, |key, meta| {
            match key {
                "event" => event.set(meta.path, meta.value()?.parse::<Type>()?),
                "name" => name.set(meta.path, meta.value()?.parse::<LitStr>()?),
                "snapshot_every" => {
                    let lit: LitInt = meta.value()?.parse()?;
                    let n = lit.base10_parse()?;
                    snapshot_every.set(meta.path, (lit, n));
                }
                "codec_version" => {
                    let lit: LitInt = meta.value()?.parse()?;
                    let n = lit.base10_parse()?;
                    codec_version.set(meta.path, (lit, n));
                }
                "crate" => {
                    if let Some(path) = attr::parse_crate(cx, meta)? {
                        krate.set(meta.path, path);
                    }
                }
                _ => unreachable!("a key of SCOPE"),
            }
            Ok(())
        });
        Input {
            ident: &input.ident,
            generics: &input.generics,
            data: &input.data,
            krate: krate.get().unwrap_or_else(|| syn::parse_quote!(::annals)),
            event: event.get(),
            name: name.get(),
            snapshot_every: snapshot_every.get(),
            codec_version: codec_version.get(),
        }
    }
}
