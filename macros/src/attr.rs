//! The one attribute mechanism every derive parses with.
//!
//! Each level of an input (the container, a variant) reads its
//! `#[name(key = value, ...)]` attributes through [`parse`] with the [`Scope`]
//! of keys it knows: a known key goes to the derive's parser, which stores
//! its value in an [`Attr`] slot (a second value for a slot is "duplicate
//! attribute"); a key that belongs on another level gets that level's
//! message; any other key is "unknown attribute", with a suggestion when a
//! known key is close. All of these are parse errors: a derive whose
//! attributes did not parse does not go on to check their meaning.
//!
//! A misspelled key is read as the key it is closest to (quietly: a value
//! that does not fit is skipped, with no second error), so that the
//! derive's fallback impl has what the user meant and the rest of their
//! crate compiles without a cascade of errors.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::parse::discouraged::Speculative;
use syn::parse::ParseBuffer;
use syn::Path;

use crate::ctxt::Ctxt;

/// A slot for the value of one attribute key, as in serde_derive.
pub(crate) struct Attr<'c, T> {
    cx: &'c Ctxt,
    name: &'static str,
    tokens: TokenStream,
    value: Option<T>,
}

impl<'c, T> Attr<'c, T> {
    /// An empty slot for the key `name`.
    pub(crate) fn none(cx: &'c Ctxt, name: &'static str) -> Self {
        Attr {
            cx,
            name,
            tokens: TokenStream::new(),
            value: None,
        }
    }

    /// Fills the slot; the second time reports "duplicate attribute" at
    /// `key` and keeps the first value.
    pub(crate) fn set<K: ToTokens>(&mut self, key: K, value: T) {
        let tokens = key.into_token_stream();
        if self.value.is_some() {
            self.cx
                .error_spanned_by(tokens, format!("duplicate attribute `{}`", self.name));
        } else {
            self.tokens = tokens;
            self.value = Some(value);
        }
    }

    /// The value, if the key was given.
    pub(crate) fn get(self) -> Option<T> {
        self.value
    }

    /// The value with the tokens of its key, for errors about it.
    pub(crate) fn get_with_tokens(self) -> Option<(TokenStream, T)> {
        let Attr { tokens, value, .. } = self;
        value.map(|v| (tokens, v))
    }
}

/// A key without a value, like `#[saga(terminal)]`.
pub(crate) struct BoolAttr<'c>(Attr<'c, ()>);

impl<'c> BoolAttr<'c> {
    pub(crate) fn none(cx: &'c Ctxt, name: &'static str) -> Self {
        BoolAttr(Attr::none(cx, name))
    }

    pub(crate) fn set_true<K: ToTokens>(&mut self, key: K) {
        self.0.set(key, ());
    }

    /// The key's tokens, if it was given.
    pub(crate) fn get_tokens(self) -> Option<TokenStream> {
        self.0.get_with_tokens().map(|(tokens, ())| tokens)
    }
}

/// The keys one level of an input reads.
pub(crate) struct Scope {
    /// The attribute's name: `event` in `#[event(...)]`.
    pub(crate) attr: &'static str,
    /// The keys this level knows.
    pub(crate) keys: &'static [&'static str],
    /// Keys of another level, with the message that says where they go.
    pub(crate) elsewhere: &'static [(&'static str, &'static str)],
}

/// One `key ...` of an attribute: the key and the tokens after it.
pub(crate) struct Meta<'m> {
    pub(crate) path: &'m Path,
    pub(crate) input: &'m ParseBuffer<'m>,
}

impl<'m> Meta<'m> {
    /// The value of `key = value`.
    pub(crate) fn value(&self) -> syn::Result<&'m ParseBuffer<'m>> {
        self.input.parse::<syn::Token![=]>()?;
        Ok(self.input)
    }
}

/// Reads every `#[scope.attr(...)]` in `attrs`, calling `f` with each known
/// key and its [`Meta`]; `f` parses the value. Unknown and misplaced keys
/// are reported here, and their values skipped so that the rest of the
/// attribute is still read.
pub(crate) fn parse(
    cx: &Ctxt,
    attrs: &[syn::Attribute],
    scope: &Scope,
    mut f: impl FnMut(&str, &Meta<'_>) -> syn::Result<()>,
) {
    for attr in attrs.iter().filter(|a| a.path().is_ident(scope.attr)) {
        let res = attr.parse_nested_meta(|meta| {
            let key = meta.path.to_token_stream().to_string().replace(' ', "");
            if let Some(known) = scope.keys.iter().find(|k| **k == key) {
                return f(
                    known,
                    &Meta {
                        path: &meta.path,
                        input: meta.input,
                    },
                );
            }
            if let Some((_, message)) = scope.elsewhere.iter().find(|(k, _)| *k == key) {
                cx.error_spanned_by(&meta.path, message);
                return skip_value(meta.input);
            }
            let suggestion = closest(&key, scope.keys);
            cx.error_spanned_by(&meta.path, unknown_key(&key, suggestion, scope.keys));
            if let Some(meant) = suggestion {
                let fork = meta.input.fork();
                let guess = Meta {
                    path: &meta.path,
                    input: &fork,
                };
                let fits = cx.quietly(|| f(meant, &guess).is_ok())
                    && (fork.is_empty() || fork.peek(syn::Token![,]));
                if fits {
                    meta.input.advance_to(&fork);
                    return Ok(());
                }
            }
            skip_value(meta.input)
        });
        if let Err(e) = res {
            cx.syn_error(e);
        }
    }
}

/// "unknown attribute `verison`; did you mean `version`?"
fn unknown_key(key: &str, suggestion: Option<&str>, known: &[&str]) -> String {
    match suggestion {
        Some(suggestion) => format!("unknown attribute `{key}`; did you mean `{suggestion}`?"),
        None => format!(
            "unknown attribute `{key}`; expected one of {}",
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The known key closest to `key`, if it is close enough to be a typo: at
/// most one edit per three characters (one for short keys).
pub(crate) fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (distance(key, k), *k))
        .filter(|(d, k)| *d <= (k.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Optimal string alignment distance: Levenshtein plus adjacent swaps, so
/// that `verison` is one edit from `version`.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Skips the value of a key that was reported, so that parsing goes on and
/// later mistakes are reported too.
pub(crate) fn skip_value(input: &ParseBuffer) -> syn::Result<()> {
    if input.peek(syn::Token![=]) {
        input.parse::<syn::Token![=]>()?;
        input.parse::<syn::Expr>()?;
    } else if input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in input);
        content.parse::<TokenStream>()?;
    }
    Ok(())
}

/// `crate = "path"`: where the `annals` crate is.
pub(crate) fn parse_crate(cx: &Ctxt, meta: &Meta) -> syn::Result<Option<syn::Path>> {
    let lit: syn::LitStr = meta.value()?.parse()?;
    match lit.parse::<syn::Path>() {
        Ok(path) => Ok(Some(path)),
        Err(_) => {
            cx.error_spanned_by(&lit, "`crate` must be a path, like \"::annals\"");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{closest, distance, unknown_key};

    #[test]
    fn distances() {
        assert_eq!(distance("verison", "version"), 1);
        assert_eq!(distance("snapshot_evry", "snapshot_every"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("same", "same"), 0);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggestions() {
        let keys = ["event", "name", "snapshot_every", "codec_version", "crate"];
        assert_eq!(
            closest("verison", &["name", "version", "history"]),
            Some("version")
        );
        assert_eq!(closest("snapshot_evry", &keys), Some("snapshot_every"));
        assert_eq!(closest("evnt", &keys), Some("event"));
        assert_eq!(closest("colour", &keys), None);
        assert_eq!(closest("retries", &["on", "start"]), None);
        let keys = ["name", "version"];
        assert_eq!(
            unknown_key("verison", closest("verison", &keys), &keys),
            "unknown attribute `verison`; did you mean `version`?"
        );
        assert_eq!(
            unknown_key("colour", None, &keys),
            "unknown attribute `colour`; expected one of `name`, `version`"
        );
    }
}
