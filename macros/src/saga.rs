//! `#[derive(Saga)]`: parse → validate → expand.
//!
//! The derive goes on an enum of unit variants, the saga's states. The
//! container attribute names the event, command and data types and how
//! events are correlated; each state's attribute declares how the saga
//! starts, moves, times out, issues commands and compensates. Validation
//! checks the machine's shape (every mistake one error at its token);
//! checks that need types (correlation fields, command builders) are left to
//! the compiler through generated code spanned at the attribute's tokens.

use std::collections::{HashMap, HashSet, VecDeque};

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitStr, Path, Token, Type};

use crate::ctxt::Ctxt;
use crate::util::{skip_value, snake_case};

/// Where a transition or timeout goes.
#[derive(Clone)]
enum TargetSpec {
    State(Ident),
    /// The `fail` keyword: compensate.
    Fail,
}

impl Parse for TargetSpec {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let ident: Ident = input.parse()?;
        if ident == "fail" {
            Ok(TargetSpec::Fail)
        } else {
            Ok(TargetSpec::State(ident))
        }
    }
}

/// `Event => Target`.
struct Transition {
    event: Ident,
    target: TargetSpec,
}

impl Parse for Transition {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let event: Ident = input.parse()?;
        input.parse::<Token![=>]>()?;
        let target = input.parse()?;
        Ok(Transition { event, target })
    }
}

struct Timeout {
    millis: Option<u64>,
    target: TargetSpec,
}

/// `"30s"` or `"30s" => Target`.
struct TimeoutArgs {
    lit: LitStr,
    target: Option<TargetSpec>,
}

impl Parse for TimeoutArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let lit: LitStr = input.parse()?;
        let target = if input.peek(Token![=>]) {
            input.parse::<Token![=>]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        Ok(TimeoutArgs { lit, target })
    }
}

#[derive(Default)]
struct ContainerAttrs {
    krate: Option<Path>,
    name: Option<LitStr>,
    event: Option<Path>,
    command: Option<Path>,
    data: Option<Type>,
    correlation: Option<Type>,
    /// The default correlation field of every handled event.
    correlate: Option<Ident>,
    /// `(event, field)`: per-event correlation fields.
    overrides: Vec<(Ident, Ident)>,
}

#[derive(Default)]
struct StateAttrs {
    start: Option<(Path, Ident)>,
    terminal: Option<Path>,
    on: Vec<Transition>,
    on_key: Option<Path>,
    timeout: Option<(Path, Timeout)>,
    issue: Option<(Path, Vec<Ident>)>,
    compensate: Option<(Path, Vec<Ident>)>,
}

struct State<'a> {
    ident: &'a Ident,
    attrs: StateAttrs,
}

const CONTAINER_KEYS: &str =
    "`event`, `command`, `data`, `correlation`, `correlate`, `name`, `crate`";
const STATE_KEYS: &str = "`start`, `on`, `timeout`, `issue`, `compensate`, `terminal`";

fn duplicate(cx: &Ctxt, path: &Path) {
    cx.error_spanned_by(
        path,
        format!(
            "duplicate `{}` attribute",
            path.to_token_stream().to_string().replace(' ', "")
        ),
    );
}

/// `key = Ident` or `key(Ident, Ident, ...)`.
fn parse_idents(meta: &syn::meta::ParseNestedMeta) -> syn::Result<Vec<Ident>> {
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

fn parse_container(cx: &Ctxt, input: &DeriveInput) -> ContainerAttrs {
    let mut out = ContainerAttrs::default();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("saga")) {
        let res = attr.parse_nested_meta(|meta| {
            let key = meta.path.to_token_stream().to_string();
            match key.as_str() {
                "crate" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    match lit.parse::<Path>() {
                        Ok(_) if out.krate.is_some() => duplicate(cx, &meta.path),
                        Ok(p) => out.krate = Some(p),
                        Err(_) => cx.error_spanned_by(&lit, "`crate` must be a path, like \"::annals\""),
                    }
                }
                "name" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    let name = lit.value();
                    if name.trim().is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        cx.error_spanned_by(&lit, "a saga name cannot be empty or contain whitespace");
                    }
                    if out.name.is_some() { duplicate(cx, &meta.path) } else { out.name = Some(lit) }
                }
                "event" => {
                    let p: Path = meta.value()?.parse()?;
                    if out.event.is_some() { duplicate(cx, &meta.path) } else { out.event = Some(p) }
                }
                "command" => {
                    let p: Path = meta.value()?.parse()?;
                    if out.command.is_some() { duplicate(cx, &meta.path) } else { out.command = Some(p) }
                }
                "data" => {
                    let t: Type = meta.value()?.parse()?;
                    if out.data.is_some() { duplicate(cx, &meta.path) } else { out.data = Some(t) }
                }
                "correlation" => {
                    let t: Type = meta.value()?.parse()?;
                    if out.correlation.is_some() { duplicate(cx, &meta.path) } else { out.correlation = Some(t) }
                }
                "correlate" => {
                    if meta.input.peek(Token![=]) {
                        let field: Ident = meta.value()?.parse()?;
                        if out.correlate.is_some() { duplicate(cx, &meta.path) } else { out.correlate = Some(field) }
                    } else {
                        meta.parse_nested_meta(|inner| {
                            let Some(event) = inner.path.get_ident().cloned() else {
                                cx.error_spanned_by(&inner.path, "expected an event variant, like `correlate(SlotReserved = lead_id)`");
                                return skip_value(&inner);
                            };
                            let field: Ident = inner.value()?.parse()?;
                            if out.overrides.iter().any(|(e, _)| *e == event) {
                                cx.error_spanned_by(&event, format!("duplicate correlation field for `{event}`"));
                            } else {
                                out.overrides.push((event, field));
                            }
                            Ok(())
                        })?;
                    }
                }
                _ => {
                    cx.error_spanned_by(
                        &meta.path,
                        if STATE_KEYS.contains(&format!("`{key}`")) {
                            format!("`{key}` belongs on a state (a variant of the saga enum), not on the enum")
                        } else {
                            format!("unknown saga attribute `{key}`; expected one of {CONTAINER_KEYS}")
                        },
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

/// `"30s"`, `"500ms"`, `"1h30m"`, `"2d"` → milliseconds.
fn parse_duration(text: &str) -> Result<u64, String> {
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

fn parse_state(cx: &Ctxt, attrs: &[syn::Attribute]) -> StateAttrs {
    let mut out = StateAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("saga")) {
        let res = attr.parse_nested_meta(|meta| {
            let key = meta.path.to_token_stream().to_string();
            match key.as_str() {
                "start" => {
                    let event: Ident = meta.value()?.parse()?;
                    if out.start.is_some() { duplicate(cx, &meta.path) } else { out.start = Some((meta.path.clone(), event)) }
                }
                "terminal" => {
                    if out.terminal.is_some() { duplicate(cx, &meta.path) } else { out.terminal = Some(meta.path.clone()) }
                }
                "on" => {
                    let content;
                    syn::parenthesized!(content in meta.input);
                    let transitions = Punctuated::<Transition, Token![,]>::parse_terminated(&content)?;
                    out.on.extend(transitions);
                    out.on_key.get_or_insert_with(|| meta.path.clone());
                }
                "timeout" => {
                    let args = if meta.input.peek(Token![=]) {
                        TimeoutArgs { lit: meta.value()?.parse()?, target: None }
                    } else {
                        let content;
                        syn::parenthesized!(content in meta.input);
                        content.parse::<TimeoutArgs>()?
                    };
                    let millis = match parse_duration(&args.lit.value()) {
                        Ok(0) => {
                            cx.error_spanned_by(&args.lit, "a timeout must be longer than zero");
                            None
                        }
                        Ok(ms) => Some(ms),
                        Err(e) => {
                            cx.error_spanned_by(&args.lit, format!("invalid timeout: {e}; write it like \"30s\", \"500ms\", \"1h30m\" or \"2d\""));
                            None
                        }
                    };
                    let timeout = Timeout { millis, target: args.target.unwrap_or(TargetSpec::Fail) };
                    if out.timeout.is_some() { duplicate(cx, &meta.path) } else { out.timeout = Some((meta.path.clone(), timeout)) }
                }
                "issue" => {
                    let commands = parse_idents(&meta)?;
                    if commands.is_empty() {
                        cx.error_spanned_by(&meta.path, "`issue()` names no command");
                    }
                    if out.issue.is_some() { duplicate(cx, &meta.path) } else { out.issue = Some((meta.path.clone(), commands)) }
                }
                "compensate" => {
                    let commands = parse_idents(&meta)?;
                    if commands.is_empty() {
                        cx.error_spanned_by(&meta.path, "`compensate()` names no command");
                    }
                    if out.compensate.is_some() { duplicate(cx, &meta.path) } else { out.compensate = Some((meta.path.clone(), commands)) }
                }
                _ => {
                    cx.error_spanned_by(
                        &meta.path,
                        if CONTAINER_KEYS.contains(&format!("`{key}`")) {
                            format!("`{key}` belongs on the saga enum, not on a state")
                        } else {
                            format!("unknown saga state attribute `{key}`; expected one of {STATE_KEYS}")
                        },
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

/// Checks the machine's shape; reports every problem at its token.
fn check(cx: &Ctxt, input: &DeriveInput, container: &ContainerAttrs, states: &[State]) {
    let ident = &input.ident;
    let names: HashSet<String> = states.iter().map(|s| s.ident.to_string()).collect();
    let list = states
        .iter()
        .map(|s| format!("`{}`", s.ident))
        .collect::<Vec<_>>()
        .join(", ");
    // a typo'd target or a dead-end state makes other states look
    // unreachable: report the cause alone, and reachability once it is fixed
    let broken = std::cell::Cell::new(false);
    let check_target = |t: &TargetSpec| {
        if let TargetSpec::State(target) = t {
            if !names.contains(&target.to_string()) {
                broken.set(true);
                cx.error_spanned_by(
                    target,
                    format!("no state `{target}` in `{ident}`: the states are {list}; or use `fail` to compensate"),
                );
            }
        }
    };

    for (key, what) in [
        (container.event.is_none(), "missing event type: add `event = YourEvent` (the enum that derives `Event`) to `#[saga(...)]`"),
        (container.command.is_none(), "missing command type: add `command = YourCommand` (an enum with one newtype variant per command) to `#[saga(...)]`"),
        (container.data.is_none(), "missing data type: add `data = YourData` (the type that implements `SagaData`) to `#[saga(...)]`"),
        (container.correlation.is_none(), "missing correlation id type: add `correlation = Type` (e.g. `Uuid`, `String`, `u64`): the type of the event fields that name a saga instance"),
    ] {
        if key {
            cx.error_spanned_by(ident, what);
        }
    }

    // start states
    let starts: Vec<&State> = states.iter().filter(|s| s.attrs.start.is_some()).collect();
    if starts.is_empty() && !states.is_empty() {
        cx.error_spanned_by(
            ident,
            "no start state: mark the state a saga begins in with `#[saga(start = EventVariant)]`",
        );
    }
    for extra in starts.iter().skip(1) {
        if let (Some((key, _)), Some((_, first_event))) =
            (&extra.attrs.start, &starts[0].attrs.start)
        {
            cx.error_spanned_by(
                key,
                format!(
                    "a saga has one start state, and `{}` already starts on `{first_event}`",
                    starts[0].ident
                ),
            );
        }
    }

    for state in states {
        let a = &state.attrs;
        let name = state.ident;
        if let Some(terminal) = &a.terminal {
            let mut misplaced: Vec<(&Path, &str)> = Vec::new();
            if let Some((k, _)) = &a.start {
                misplaced.push((
                    k,
                    "a terminal state cannot be the start state: the saga would end as it begins",
                ));
            }
            if let Some(k) = &a.on_key {
                misplaced.push((
                    k,
                    "a terminal state ends the saga: it cannot have transitions",
                ));
            }
            if let Some((k, _)) = &a.timeout {
                misplaced.push((
                    k,
                    "a terminal state ends the saga: it cannot have a timeout",
                ));
            }
            if let Some((k, _)) = &a.issue {
                misplaced.push((k, "a terminal state ends the saga: it cannot issue commands (a failed command could no longer be compensated); issue them in the state before"));
            }
            if let Some((k, _)) = &a.compensate {
                misplaced.push((k, "a terminal state issues nothing to compensate"));
            }
            for (k, msg) in misplaced {
                cx.error_spanned_by(k, msg);
            }
            let _ = terminal;
            continue;
        }
        // targets exist
        for t in &a.on {
            check_target(&t.target);
        }
        if let Some((_, timeout)) = &a.timeout {
            check_target(&timeout.target);
        }
        // one transition per (state, event)
        let mut seen: HashMap<String, &Transition> = HashMap::new();
        for t in &a.on {
            let key = t.event.to_string();
            if let Some(first) = seen.get(&key) {
                let first_target = match &first.target {
                    TargetSpec::State(s) => format!("to `{s}`"),
                    TargetSpec::Fail => "to `fail`".to_owned(),
                };
                cx.error_spanned_by(
                    &t.event,
                    format!("state `{name}` already has a transition on `{key}` ({first_target}); a state handles each event once"),
                );
            } else {
                seen.insert(key, t);
            }
        }
        // a way out
        if a.on.is_empty() && a.timeout.is_none() {
            broken.set(true);
            cx.error_spanned_by(
                name,
                format!("state `{name}` is not terminal and has no way out: add `on(Event => State)`, a `timeout`, or mark it `#[saga(terminal)]`"),
            );
        }
        // compensation
        match (&a.issue, &a.compensate) {
            (Some((key, commands)), None) => cx.error_spanned_by(
                key,
                format!(
                    "state `{name}` issues {} but has no compensation: add `compensate = ...` naming the command that undoes it (it runs, in reverse order of the steps, when a later step fails or times out)",
                    commands.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
                ),
            ),
            (None, Some((key, _))) => cx.error_spanned_by(
                key,
                format!("state `{name}` issues no command, so there is nothing to compensate: add `issue = ...` or remove `compensate`"),
            ),
            _ => {}
        }
    }

    if !states.is_empty() && !states.iter().any(|s| s.attrs.terminal.is_some()) {
        cx.error_spanned_by(
            ident,
            "a saga needs a terminal state: mark the state(s) where it ends with `#[saga(terminal)]`",
        );
    }

    // reachability from the (one) start state
    if starts.len() == 1 && !broken.get() {
        let index: HashMap<String, usize> = states
            .iter()
            .enumerate()
            .map(|(i, s)| (s.ident.to_string(), i))
            .collect();
        let start = index[&starts[0].ident.to_string()];
        let mut reached = vec![false; states.len()];
        reached[start] = true;
        let mut queue = VecDeque::from([start]);
        while let Some(i) = queue.pop_front() {
            let a = &states[i].attrs;
            let targets =
                a.on.iter()
                    .map(|t| &t.target)
                    .chain(a.timeout.iter().map(|(_, t)| &t.target));
            for t in targets {
                if let TargetSpec::State(s) = t {
                    if let Some(&j) = index.get(&s.to_string()) {
                        if !reached[j] {
                            reached[j] = true;
                            queue.push_back(j);
                        }
                    }
                }
            }
        }
        for (state, reached) in states.iter().zip(reached) {
            if !reached {
                cx.error_spanned_by(
                    state.ident,
                    format!(
                        "state `{}` is unreachable: no transition or timeout leads to it from the start state `{}`",
                        state.ident, starts[0].ident
                    ),
                );
            }
        }
    }

    // correlation: every handled event has a field, every override is used
    let handled = handled_events(states);
    if container.correlate.is_none() {
        for event in &handled {
            if !container.overrides.iter().any(|(e, _)| e == *event) {
                cx.error_spanned_by(
                    event,
                    format!("event `{event}` has no correlation field: add `correlate = field` (for every event) or `correlate({event} = field)` to `#[saga(...)]`, naming the field that holds the saga's correlation id"),
                );
            }
        }
    }
    for (event, _) in &container.overrides {
        if !handled.contains(&event) {
            cx.error_spanned_by(
                event,
                format!(
                    "`{event}` has a correlation field, but no state starts on it or handles it"
                ),
            );
        }
    }
}

/// Every event the saga handles (start or transition), first mention first.
fn handled_events<'a>(states: &'a [State]) -> Vec<&'a Ident> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mentions = states.iter().flat_map(|s| {
        s.attrs
            .start
            .iter()
            .map(|(_, e)| e)
            .chain(s.attrs.on.iter().map(|t| &t.event))
    });
    for e in mentions {
        if seen.insert(e.to_string()) {
            out.push(e);
        }
    }
    out
}

/// Entry point.
pub(crate) fn expand_derive_saga(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let container = parse_container(&cx, input);
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(
            &input.generics,
            "`#[derive(Saga)]` does not support generic types",
        );
    }
    let mut states = Vec::new();
    match &input.data {
        Data::Enum(data) => {
            if data.variants.is_empty() {
                cx.error_spanned_by(
                    &input.ident,
                    "a saga needs states: one unit variant per state",
                );
            }
            for variant in &data.variants {
                if !matches!(variant.fields, Fields::Unit) {
                    cx.error_spanned_by(
                        &variant.fields,
                        format!("saga states are unit variants (`{}`): keep the saga's data in its `data = ...` type", variant.ident),
                    );
                }
                states.push(State {
                    ident: &variant.ident,
                    attrs: parse_state(&cx, &variant.attrs),
                });
            }
        }
        Data::Struct(s) => cx.error_spanned_by(
            s.struct_token,
            "`#[derive(Saga)]` goes on an enum of states, one unit variant per state",
        ),
        Data::Union(u) => cx.error_spanned_by(
            u.union_token,
            "`#[derive(Saga)]` goes on an enum of states, one unit variant per state",
        ),
    }
    check(&cx, input, &container, &states);
    let krate = container
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::annals));
    if cx.has_errors() {
        let errors = cx.into_compile_errors();
        let stub = stub_impl(input, &krate, &container);
        return quote! { #errors #stub };
    }
    expand(input, &krate, &container, &states)
}

/// An impl that keeps the rest of the user's crate compiling while the
/// derive reports its errors, so that one mistake gives one error.
fn stub_impl(input: &DeriveInput, krate: &Path, container: &ContainerAttrs) -> TokenStream {
    let (Some(event), Some(command), Some(data)) =
        (&container.event, &container.command, &container.data)
    else {
        return TokenStream::new();
    };
    if !input.generics.params.is_empty() || !matches!(input.data, Data::Enum(_)) {
        return TokenStream::new();
    }
    let ident = &input.ident;
    let p = quote!(#krate::__private);
    quote! {
        const _: () = {
            impl #p::Saga for #ident {
                const NAME: &'static str = "";
                type Event = #event;
                type Command = #command;
                type Data = #data;
                fn definition() -> &'static #p::SagaDefinition { ::core::unreachable!() }
                fn state_name(self) -> &'static str { ::core::unreachable!() }
                fn from_state_name(_: &str) -> ::core::option::Option<Self> { ::core::unreachable!() }
                fn correlation_id(_: &Self::Event) -> ::core::option::Option<::std::string::String> { ::core::unreachable!() }
                fn start(_: &Self::Event) -> ::core::option::Option<Self> { ::core::unreachable!() }
                fn on(self, _: &Self::Event) -> ::core::option::Option<#p::Target<Self>> { ::core::unreachable!() }
                fn timeout(self) -> ::core::option::Option<(::core::time::Duration, #p::Target<Self>)> { ::core::unreachable!() }
                fn is_terminal(self) -> bool { ::core::unreachable!() }
                fn commands(self, _: &Self::Data) -> ::std::vec::Vec<#p::NamedCommand<Self::Command>> { ::core::unreachable!() }
                fn compensation(self, _: &Self::Data) -> ::std::vec::Vec<#p::NamedCommand<Self::Command>> { ::core::unreachable!() }
            }
        };
    }
}

fn expand(
    input: &DeriveInput,
    krate: &Path,
    container: &ContainerAttrs,
    states: &[State],
) -> TokenStream {
    let ident = &input.ident;
    let p = quote!(#krate::__private);
    let (Some(event), Some(command), Some(data), Some(correlation)) = (
        &container.event,
        &container.command,
        &container.data,
        &container.correlation,
    ) else {
        return TokenStream::new(); // rejected by validation
    };
    let name = container
        .name
        .as_ref()
        .map(|l| l.value())
        .unwrap_or_else(|| snake_case(&ident.to_string()));
    let opt = quote!(::core::option::Option);

    let target = |t: &TargetSpec| match t {
        TargetSpec::State(s) => quote!(#p::Target::State(Self::#s)),
        TargetSpec::Fail => quote!(#p::Target::Fail),
    };
    let target_name = |t: &TargetSpec| match t {
        TargetSpec::State(s) => {
            let s = s.to_string();
            quote!(#p::Target::State(#s))
        }
        TargetSpec::Fail => quote!(#p::Target::Fail),
    };

    // the static definition
    let definitions = states.iter().map(|s| {
        let a = &s.attrs;
        let state_name = s.ident.to_string();
        let start_on = match &a.start {
            Some((_, e)) => {
                let e = e.to_string();
                quote!(#opt::Some(#e))
            }
            None => quote!(#opt::None),
        };
        let terminal = a.terminal.is_some();
        let transitions = a.on.iter().map(|t| {
            let e = t.event.to_string();
            let tn = target_name(&t.target);
            quote!((#e, #tn))
        });
        let timeout = match &a.timeout {
            Some((_, t)) => {
                let ms = t.millis.unwrap_or(0);
                let tn = target_name(&t.target);
                quote!(#opt::Some((::core::time::Duration::from_millis(#ms), #tn)))
            }
            None => quote!(#opt::None),
        };
        let names = |list: &Option<(Path, Vec<Ident>)>| {
            let names: Vec<String> = list
                .iter()
                .flat_map(|(_, c)| c.iter().map(|c| c.to_string()))
                .collect();
            quote!(&[#(#names),*])
        };
        let issues = names(&a.issue);
        let compensates = names(&a.compensate);
        quote! {
            #p::StateDefinition {
                name: #state_name,
                start_on: #start_on,
                terminal: #terminal,
                transitions: &[#(#transitions),*],
                timeout: #timeout,
                issues: #issues,
                compensates: #compensates,
            }
        }
    });

    let state_idents: Vec<&Ident> = states.iter().map(|s| s.ident).collect();
    let state_strs: Vec<String> = states.iter().map(|s| s.ident.to_string()).collect();

    // correlation: one arm per handled event, the field read with the
    // declared type (spanned so that a missing field or a wrong type points
    // at the attribute that names it)
    let correlation_arms = handled_events(states).into_iter().map(|ev| {
        let (field, span) = match container.overrides.iter().find(|(e, _)| e == ev) {
            Some((_, field)) => (field.clone(), field.span()),
            // the default field, reported at this event's mention
            None => {
                let default = container
                    .correlate
                    .as_ref()
                    .map(|f| f.to_string())
                    .unwrap_or_default();
                (Ident::new(&default, ev.span()), ev.span())
            }
        };
        let read = quote_spanned!(span=> &(*__payload).#field);
        let expected = quote_spanned!(correlation.span()=> &#correlation);
        let call = quote_spanned!(correlation.span()=> #p::correlation::<#correlation>);
        quote! {
            #event::#ev(__payload) => {
                let __id: #expected = #read;
                #call(__id)
            }
        }
    });

    let start_arms = states.iter().filter_map(|s| {
        s.attrs.start.as_ref().map(|(_, ev)| {
            let st = s.ident;
            quote!(#event::#ev(_) => #opt::Some(Self::#st),)
        })
    });

    let on_arms = states.iter().flat_map(|s| {
        let st = s.ident;
        let (opt, target) = (&opt, &target);
        s.attrs.on.iter().map(move |t| {
            let ev = &t.event;
            let tg = target(&t.target);
            quote!((Self::#st, #event::#ev(_)) => #opt::Some(#tg),)
        })
    });

    let timeout_arms = states.iter().filter_map(|s| {
        s.attrs.timeout.as_ref().map(|(_, t)| {
            let st = s.ident;
            let ms = t.millis.unwrap_or(0);
            let tg = target(&t.target);
            quote!(Self::#st => #opt::Some((::core::time::Duration::from_millis(#ms), #tg)),)
        })
    });

    let terminal_arms = states
        .iter()
        .filter(|s| s.attrs.terminal.is_some())
        .map(|s| {
            let st = s.ident;
            quote!(Self::#st => true,)
        });

    let command_list = |commands: &[Ident]| {
        let items = commands.iter().map(|c| {
            let c_name = c.to_string();
            // the payload type comes from the variant's constructor (through
            // its fn pointer, so that it is known when the `Issue` bound is
            // checked); a missing `Issue` impl is reported once per payload
            // type, at the data type
            let ctor = respan(quote!(#command::#c), c.span());
            let build_call =
                quote_spanned!(data.span()=> <_ as #p::BuildCommand<#data>>::build(__ctor, __data));
            let build = quote!({
                let __ctor: fn(_) -> _ = #ctor;
                #build_call
            });
            quote!(#p::NamedCommand { command_type: #c_name, command: #build })
        });
        quote!(::std::vec![#(#items),*])
    };
    let issue_arms = states.iter().filter_map(|s| {
        s.attrs.issue.as_ref().map(|(_, c)| {
            let st = s.ident;
            let list = command_list(c);
            quote!(Self::#st => #list,)
        })
    });
    let compensate_arms = states.iter().filter_map(|s| {
        s.attrs.compensate.as_ref().map(|(_, c)| {
            let st = s.ident;
            let list = command_list(c);
            quote!(Self::#st => #list,)
        })
    });

    let data_type = quote_spanned!(data.span()=> type Data = #data;);
    let event_type = quote_spanned!(event.span()=> type Event = #event;);
    let command_type = quote_spanned!(command.span()=> type Command = #command;);

    quote! {
        const _: () = {
            #[automatically_derived]
            impl #p::Saga for #ident {
                const NAME: &'static str = #name;
                #event_type
                #command_type
                #data_type

                fn definition() -> &'static #p::SagaDefinition {
                    static DEFINITION: #p::SagaDefinition = #p::SagaDefinition {
                        name: #name,
                        states: &[#(#definitions),*],
                    };
                    &DEFINITION
                }

                fn state_name(self) -> &'static str {
                    match self { #(Self::#state_idents => #state_strs,)* }
                }

                fn from_state_name(__name: &str) -> #opt<Self> {
                    match __name {
                        #(#state_strs => #opt::Some(Self::#state_idents),)*
                        _ => #opt::None,
                    }
                }

                #[allow(unreachable_patterns)]
                fn correlation_id(__event: &Self::Event) -> #opt<::std::string::String> {
                    match __event {
                        #(#correlation_arms)*
                        _ => #opt::None,
                    }
                }

                #[allow(unreachable_patterns)]
                fn start(__event: &Self::Event) -> #opt<Self> {
                    match __event {
                        #(#start_arms)*
                        _ => #opt::None,
                    }
                }

                #[allow(unreachable_patterns)]
                fn on(self, __event: &Self::Event) -> #opt<#p::Target<Self>> {
                    match (self, __event) {
                        #(#on_arms)*
                        _ => #opt::None,
                    }
                }

                #[allow(unreachable_patterns)]
                fn timeout(self) -> #opt<(::core::time::Duration, #p::Target<Self>)> {
                    match self {
                        #(#timeout_arms)*
                        _ => #opt::None,
                    }
                }

                #[allow(unreachable_patterns)]
                fn is_terminal(self) -> bool {
                    match self {
                        #(#terminal_arms)*
                        _ => false,
                    }
                }

                #[allow(unreachable_patterns, unused_variables)]
                fn commands(self, __data: &Self::Data) -> ::std::vec::Vec<#p::NamedCommand<Self::Command>> {
                    match self {
                        #(#issue_arms)*
                        _ => ::std::vec::Vec::new(),
                    }
                }

                #[allow(unreachable_patterns, unused_variables)]
                fn compensation(self, __data: &Self::Data) -> ::std::vec::Vec<#p::NamedCommand<Self::Command>> {
                    match self {
                        #(#compensate_arms)*
                        _ => ::std::vec::Vec::new(),
                    }
                }
            }
        };
    }
}

/// `tokens` with every token at `span`, so that an error about the whole
/// path (an unknown variant) underlines one token of the attribute.
fn respan(tokens: TokenStream, span: proc_macro2::Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut t| {
            if let proc_macro2::TokenTree::Group(g) = &t {
                let mut group = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                t = proc_macro2::TokenTree::Group(group);
            } else {
                t.set_span(span);
            }
            t
        })
        .collect()
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
