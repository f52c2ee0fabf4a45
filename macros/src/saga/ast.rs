//! The derive input, read into typed slots.

use proc_macro2::TokenStream;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Data, DeriveInput, Fields, Generics, Ident, LitStr, Path, Token, Type};

use crate::attr::{self, Attr, BoolAttr, Scope};
use crate::ctxt::Ctxt;

/// An enum of states deriving `Saga`.
pub(crate) struct Input<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) generics: &'a Generics,
    pub(crate) shape: Shape,
    pub(crate) krate: Path,
    pub(crate) name: Option<LitStr>,
    pub(crate) event: Option<Path>,
    pub(crate) command: Option<Path>,
    pub(crate) data: Option<Type>,
    pub(crate) correlation: Option<Type>,
    /// `correlate = ...`: how every handled event names its saga.
    pub(crate) correlate: Option<Correlate>,
    /// `correlate(Event = ..., ...)`: per event, wins over `correlate`.
    pub(crate) overrides: Vec<(Ident, Correlate)>,
    pub(crate) states: Vec<State<'a>>,
}

/// What the derive was put on.
pub(crate) enum Shape {
    Enum,
    Struct(Token![struct]),
    Union(Token![union]),
}

/// Where an event's correlation id comes from.
pub(crate) enum Correlate {
    /// `lead_id`: a field of the event's payload, of the `correlation` type.
    Field(Ident),
    /// `envelope.aggregate_id`, `envelope.stream_id`,
    /// `envelope.correlation_id`: a part of the event's envelope, as text.
    Envelope(EnvelopeId),
    /// `with(path::to::fn)`: a `fn(&Envelope<Event>) -> Option<Correlation>`.
    With(Path),
}

#[derive(Clone, Copy, PartialEq, Eq)]
/// Which id of the envelope.
pub(crate) enum EnvelopeId {
    /// `envelope.aggregate_id`: `Envelope::aggregate_id()`.
    Aggregate,
    /// `envelope.stream_id`.
    Stream,
    /// `envelope.correlation_id`: the metadata's.
    Correlation,
}

pub(crate) const ENVELOPE_PARTS: &[&str] = &["aggregate_id", "stream_id", "correlation_id"];

impl Correlate {
    /// Whether the source reads a value of the declared `correlation` type.
    pub(crate) fn needs_correlation_type(&self) -> bool {
        !matches!(self, Correlate::Envelope(..))
    }
}

mod kw {
    syn::custom_keyword!(envelope);
    syn::custom_keyword!(with);
}

impl Parse for Correlate {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if input.peek(kw::with) && input.peek2(syn::token::Paren) {
            input.parse::<kw::with>()?;
            let content;
            syn::parenthesized!(content in input);
            return Ok(Correlate::With(content.parse()?));
        }
        if input.peek(kw::envelope) && input.peek2(Token![.]) {
            input.parse::<kw::envelope>()?;
            input.parse::<Token![.]>()?;
            let part: Ident = input.parse()?;
            let which = match part.to_string().as_str() {
                "aggregate_id" => EnvelopeId::Aggregate,
                "stream_id" => EnvelopeId::Stream,
                "correlation_id" => EnvelopeId::Correlation,
                other => {
                    let expected = "expected `aggregate_id`, `stream_id` or `correlation_id`";
                    let message = match attr::closest(other, ENVELOPE_PARTS) {
                        Some(s) => format!("unknown envelope part `{other}`; did you mean `{s}`?"),
                        None => format!("unknown envelope part `{other}`; {expected}"),
                    };
                    return Err(syn::Error::new(part.span(), message));
                }
            };
            return Ok(Correlate::Envelope(which));
        }
        Ok(Correlate::Field(input.parse()?))
    }
}

/// `Event = source` in `correlate(...)`.
struct CorrelateEntry {
    event: Path,
    source: Correlate,
}

impl Parse for CorrelateEntry {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let event = input.parse()?;
        input.parse::<Token![=]>()?;
        let source = input.parse()?;
        Ok(CorrelateEntry { event, source })
    }
}

/// One state (a variant).
pub(crate) struct State<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) fields: &'a Fields,
    pub(crate) start: Option<(TokenStream, Ident)>,
    pub(crate) terminal: Option<TokenStream>,
    /// The transitions of every `on(...)`, in order.
    pub(crate) on: Vec<Transition>,
    /// The first `on` key, for errors about the transitions as a whole.
    pub(crate) on_key: Option<Path>,
    pub(crate) timeout: Option<(TokenStream, Timeout)>,
    pub(crate) issue: Option<(TokenStream, Vec<Ident>)>,
    pub(crate) compensate: Option<(TokenStream, Compensate)>,
}

/// What undoes a state's commands.
pub(crate) enum Compensate {
    /// `compensate = A` / `compensate(A, B)`.
    Commands(Vec<Ident>),
    /// `compensate = none`: the commands need no undoing.
    None,
}

impl Compensate {
    /// The compensating commands (none for `compensate = none`).
    pub(crate) fn commands(&self) -> &[Ident] {
        match self {
            Compensate::Commands(c) => c,
            Compensate::None => &[],
        }
    }
}

/// Where a transition or timeout goes.
#[derive(Clone)]
pub(crate) enum Target {
    State(Ident),
    /// The `fail` keyword: compensate.
    Fail,
}

impl Parse for Target {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let ident: Ident = input.parse()?;
        if ident == "fail" {
            Ok(Target::Fail)
        } else {
            Ok(Target::State(ident))
        }
    }
}

/// `Event => Target`.
pub(crate) struct Transition {
    pub(crate) event: Ident,
    pub(crate) target: Target,
}

impl Parse for Transition {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let event: Ident = input.parse()?;
        input.parse::<Token![=>]>()?;
        let target = input.parse()?;
        Ok(Transition { event, target })
    }
}

/// `"30s"` or `"30s" => Target`.
pub(crate) struct Timeout {
    pub(crate) lit: LitStr,
    pub(crate) target: Target,
}

impl Parse for Timeout {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let lit: LitStr = input.parse()?;
        let target = if input.peek(Token![=>]) {
            input.parse::<Token![=>]>()?;
            input.parse()?
        } else {
            Target::Fail
        };
        Ok(Timeout { lit, target })
    }
}

impl Timeout {
    /// The duration in milliseconds; `None` when it does not parse (a
    /// validation error).
    pub(crate) fn millis(&self) -> Option<u64> {
        parse_duration(&self.lit.value()).ok().filter(|ms| *ms > 0)
    }
}

const CONTAINER: Scope = Scope {
    attr: "saga",
    keys: &[
        "event",
        "command",
        "data",
        "correlation",
        "correlate",
        "name",
        "crate",
    ],
    elsewhere: &[
        (
            "start",
            "`start` belongs on a state (a variant of the saga enum), not on the enum",
        ),
        (
            "on",
            "`on` belongs on a state (a variant of the saga enum), not on the enum",
        ),
        (
            "timeout",
            "`timeout` belongs on a state (a variant of the saga enum), not on the enum",
        ),
        (
            "issue",
            "`issue` belongs on a state (a variant of the saga enum), not on the enum",
        ),
        (
            "compensate",
            "`compensate` belongs on a state (a variant of the saga enum), not on the enum",
        ),
        (
            "terminal",
            "`terminal` belongs on a state (a variant of the saga enum), not on the enum",
        ),
    ],
};

const STATE: Scope = Scope {
    attr: "saga",
    keys: &["start", "on", "timeout", "issue", "compensate", "terminal"],
    elsewhere: &[
        ("event", "`event` belongs on the saga enum, not on a state"),
        (
            "command",
            "`command` belongs on the saga enum, not on a state",
        ),
        ("data", "`data` belongs on the saga enum, not on a state"),
        (
            "correlation",
            "`correlation` belongs on the saga enum, not on a state",
        ),
        (
            "correlate",
            "`correlate` belongs on the saga enum, not on a state",
        ),
        ("name", "`name` belongs on the saga enum, not on a state"),
        ("crate", "`crate` belongs on the saga enum, not on a state"),
    ],
};

impl<'a> Input<'a> {
    pub(crate) fn from_syn(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        let mut krate = Attr::none(cx, "crate");
        let mut name = Attr::none(cx, "name");
        let mut event = Attr::none(cx, "event");
        let mut command = Attr::none(cx, "command");
        let mut data = Attr::none(cx, "data");
        let mut correlation = Attr::none(cx, "correlation");
        let mut correlate = Attr::none(cx, "correlate");
        let mut overrides: Vec<(Ident, Correlate)> = Vec::new();
        attr::parse(cx, &input.attrs, &CONTAINER, |key, meta| {
            match key {
                "crate" => {
                    if let Some(path) = attr::parse_crate(cx, meta)? {
                        krate.set(meta.path, path);
                    }
                }
                "name" => name.set(meta.path, meta.value()?.parse::<LitStr>()?),
                "event" => event.set(meta.path, meta.value()?.parse::<Path>()?),
                "command" => command.set(meta.path, meta.value()?.parse::<Path>()?),
                "data" => data.set(meta.path, meta.value()?.parse::<Type>()?),
                "correlation" => correlation.set(meta.path, meta.value()?.parse::<Type>()?),
                _ if meta.input.peek(Token![=]) => {
                    correlate.set(meta.path, meta.value()?.parse::<Correlate>()?);
                }
                _ => {
                    let content;
                    syn::parenthesized!(content in meta.input);
                    let entries =
                        Punctuated::<CorrelateEntry, Token![,]>::parse_terminated(&content)?;
                    for CorrelateEntry { event, source } in entries {
                        let Some(event) = event.get_ident().cloned() else {
                            cx.error_spanned_by(
                                &event,
                                "expected an event variant, like `correlate(SlotReserved = lead_id)`",
                            );
                            continue;
                        };
                        if overrides.iter().any(|(e, _)| *e == event) {
                            cx.error_spanned_by(
                                &event,
                                format!("duplicate correlation for `{event}`"),
                            );
                        } else {
                            overrides.push((event, source));
                        }
                    }
                }
            }
            Ok(())
        });
        let (shape, states) = match &input.data {
            Data::Enum(data) => (
                Shape::Enum,
                data.variants
                    .iter()
                    .map(|v| State::from_syn(cx, v))
                    .collect(),
            ),
            Data::Struct(s) => (Shape::Struct(s.struct_token), Vec::new()),
            Data::Union(u) => (Shape::Union(u.union_token), Vec::new()),
        };
        Input {
            ident: &input.ident,
            generics: &input.generics,
            shape,
            krate: krate.get().unwrap_or_else(|| syn::parse_quote!(::annals)),
            name: name.get(),
            event: event.get(),
            command: command.get(),
            data: data.get(),
            correlation: correlation.get(),
            correlate: correlate.get(),
            overrides,
            states,
        }
    }

    /// How `event` is correlated: its own source, else the default.
    pub(crate) fn correlate_of(&self, event: &Ident) -> Option<&Correlate> {
        self.overrides
            .iter()
            .find(|(e, _)| e == event)
            .map(|(_, c)| c)
            .or(self.correlate.as_ref())
    }

    /// Every event the saga handles (start or transition), first mention
    /// first.
    pub(crate) fn handled_events(&self) -> Vec<&Ident> {
        let mut out: Vec<&Ident> = Vec::new();
        let mentions = self.states.iter().flat_map(|s| {
            s.start
                .iter()
                .map(|(_, e)| e)
                .chain(s.on.iter().map(|t| &t.event))
        });
        for e in mentions {
            if !out.contains(&e) {
                out.push(e);
            }
        }
        out
    }
}

impl<'a> State<'a> {
    fn from_syn(cx: &Ctxt, variant: &'a syn::Variant) -> Self {
        let mut start = Attr::none(cx, "start");
        let mut terminal = BoolAttr::none(cx, "terminal");
        let mut on = Vec::new();
        let mut on_key: Option<Path> = None;
        let mut timeout = Attr::none(cx, "timeout");
        let mut issue = Attr::none(cx, "issue");
        let mut compensate = Attr::none(cx, "compensate");
        attr::parse(cx, &variant.attrs, &STATE, |key, meta| {
            match key {
                "start" => start.set(meta.path, meta.value()?.parse::<Ident>()?),
                "terminal" => terminal.set_true(meta.path),
                "on" => {
                    let content;
                    syn::parenthesized!(content in meta.input);
                    on.extend(Punctuated::<Transition, Token![,]>::parse_terminated(
                        &content,
                    )?);
                    on_key.get_or_insert_with(|| meta.path.clone());
                }
                "timeout" => {
                    let timeout_value = if meta.input.peek(Token![=]) {
                        Timeout {
                            lit: meta.value()?.parse()?,
                            target: Target::Fail,
                        }
                    } else {
                        let content;
                        syn::parenthesized!(content in meta.input);
                        content.parse::<Timeout>()?
                    };
                    timeout.set(meta.path, timeout_value);
                }
                "issue" => issue.set(meta.path, parse_idents(meta)?),
                _ => {
                    let value = if meta.input.peek(Token![=]) {
                        let command: Ident = meta.value()?.parse()?;
                        if command == "none" {
                            Compensate::None
                        } else {
                            Compensate::Commands(vec![command])
                        }
                    } else {
                        Compensate::Commands(parse_idents(meta)?)
                    };
                    compensate.set(meta.path, value);
                }
            }
            Ok(())
        });
        State {
            ident: &variant.ident,
            fields: &variant.fields,
            start: start.get_with_tokens(),
            terminal: terminal.get_tokens(),
            on,
            on_key,
            timeout: timeout.get_with_tokens(),
            issue: issue.get_with_tokens(),
            compensate: compensate.get_with_tokens(),
        }
    }
}

/// `key = Ident` or `key(Ident, Ident, ...)`.
fn parse_idents(meta: &attr::Meta) -> syn::Result<Vec<Ident>> {
    if meta.input.peek(Token![=]) {
        Ok(vec![meta.value()?.parse()?])
    } else {
        let content;
        syn::parenthesized!(content in meta.input);
        Ok(Punctuated::<Ident, Token![,]>::parse_terminated(&content)?
            .into_iter()
            .collect())
    }
}

/// `"30s"`, `"500ms"`, `"1h30m"`, `"2d"` → milliseconds.
pub(crate) fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(format!("expected a number at `{rest}`"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| "number too large".to_owned())?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let factor = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("`{number}` needs a unit: ms, s, m, h or d")),
            other => return Err(format!("unknown unit `{other}`: use ms, s, m, h or d")),
        };
        total = number
            .checked_mul(factor)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| "duration too large".to_owned())?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("2d"), Ok(172_800_000));
        assert_eq!(parse_duration("1m 5s"), Ok(65_000));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("30 seconds").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
    }
}
