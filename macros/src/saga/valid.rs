//! The rules of `#[derive(Saga)]`, one `check_*` per rule: the machine's
//! shape, each mistake one error at its token. Rules that need types (a
//! correlation field's type, a command builder) are left to the compiler,
//! through generated code spanned at the attribute's tokens.

use std::collections::{HashMap, VecDeque};

use syn::Fields;

use super::ast::{parse_duration, Compensate, Correlate, Input, Shape, State, Target};
use crate::ctxt::Ctxt;

/// Checks the input. The rules on single values and shapes always run; the
/// rules about the machine as a whole only when every attribute parsed: a
/// misspelled `tiemout` is reported as misspelled, not also as a state
/// without a way out.
pub(crate) fn validate(cx: &Ctxt, input: &Input, parsed: bool) {
    check_not_generic(cx, input);
    check_is_enum(cx, input);
    check_has_states(cx, input);
    check_name(cx, input);
    for state in &input.states {
        check_unit_state(cx, state);
        check_timeout(cx, state);
        check_commands_named(cx, state);
        check_none_alone(cx, state);
    }
    if !parsed {
        return;
    }
    check_types_given(cx, input);
    let starts: Vec<&State> = input.states.iter().filter(|s| s.start.is_some()).collect();
    check_one_start(cx, input, &starts);
    // a typo'd target or a dead end makes other states look unreachable:
    // report the cause alone, and reachability once it is fixed
    let mut broken = false;
    for state in &input.states {
        if state.terminal.is_some() {
            check_terminal_state(cx, state);
            continue;
        }
        let before_state = cx.error_count();
        check_targets_exist(cx, input, state);
        check_way_out(cx, state);
        broken |= cx.error_count() > before_state;
        check_transitions_unique(cx, state);
        check_compensation(cx, state);
    }
    check_has_terminal(cx, input);
    if !broken {
        check_reachable(cx, input, &starts);
    }
    check_correlation_given(cx, input);
    check_correlation_used(cx, input);
}

fn check_not_generic(cx: &Ctxt, input: &Input) {
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(
            input.generics,
            "`#[derive(Saga)]` does not support generic types",
        );
    }
}

fn check_is_enum(cx: &Ctxt, input: &Input) {
    let message = "`#[derive(Saga)]` goes on an enum of states, one unit variant per state";
    match &input.shape {
        Shape::Enum => {}
        Shape::Struct(token) => cx.error_spanned_by(token, message),
        Shape::Union(token) => cx.error_spanned_by(token, message),
    }
}

fn check_has_states(cx: &Ctxt, input: &Input) {
    if matches!(input.shape, Shape::Enum) && input.states.is_empty() {
        cx.error_spanned_by(
            input.ident,
            "a saga needs states: one unit variant per state",
        );
    }
}

/// The longest saga name: the saga's projection is named `saga:{name}`,
/// and projection names hold at most 255 bytes
/// (`annals::store::limits::MAX_PROJECTION_NAME_BYTES`).
const MAX_SAGA_NAME_BYTES: usize = 250;

fn check_name(cx: &Ctxt, input: &Input) {
    let Some(lit) = &input.name else { return };
    let name = lit.value();
    if name.trim().is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        cx.error_spanned_by(lit, "a saga name cannot be empty or contain whitespace");
    } else if name.len() > MAX_SAGA_NAME_BYTES {
        cx.error_spanned_by(
            lit,
            format!(
                "a saga name holds at most {MAX_SAGA_NAME_BYTES} bytes (its projection is `saga:<name>`, at most 255); this one has {}",
                name.len()
            ),
        );
    }
}

fn check_unit_state(cx: &Ctxt, state: &State) {
    if !matches!(state.fields, Fields::Unit) {
        cx.error_spanned_by(
            state.fields,
            format!(
                "saga states are unit variants (`{}`): keep the saga's data in its `data = ...` type",
                state.ident
            ),
        );
    }
}

fn check_timeout(cx: &Ctxt, state: &State) {
    let Some((_, timeout)) = &state.timeout else {
        return;
    };
    match parse_duration(&timeout.lit.value()) {
        Ok(0) => cx.error_spanned_by(&timeout.lit, "a timeout must be longer than zero"),
        Ok(_) => {}
        Err(e) => cx.error_spanned_by(
            &timeout.lit,
            format!("invalid timeout: {e}; write it like \"30s\", \"500ms\", \"1h30m\" or \"2d\""),
        ),
    }
}

fn check_commands_named(cx: &Ctxt, state: &State) {
    if let Some((key, commands)) = &state.issue {
        if commands.is_empty() {
            cx.error_spanned_by(key, "`issue()` names no command");
        }
    }
    if let Some((key, Compensate::Commands(commands))) = &state.compensate {
        if commands.is_empty() {
            cx.error_spanned_by(key, "`compensate()` names no command");
        }
    }
}

/// `none` is written `compensate = none`, never in a list of commands.
fn check_none_alone(cx: &Ctxt, state: &State) {
    if let Some((_, Compensate::Commands(commands))) = &state.compensate {
        for none in commands.iter().filter(|c| *c == "none") {
            cx.error_spanned_by(
                none,
                "`none` says that nothing undoes the state's commands: write it alone, as `compensate = none`",
            );
        }
    }
}

fn check_types_given(cx: &Ctxt, input: &Input) {
    let needs_correlation = input
        .handled_events()
        .into_iter()
        .filter_map(|e| input.correlate_of(e))
        .any(Correlate::needs_correlation_type);
    for (missing, message) in [
        (input.event.is_none(), "missing event type: add `event = YourEvent` (the enum that derives `Event`) to `#[saga(...)]`"),
        (input.command.is_none(), "missing command type: add `command = YourCommand` (an enum with one newtype variant per command) to `#[saga(...)]`"),
        (input.data.is_none(), "missing data type: add `data = YourData` (the type that implements `SagaData`) to `#[saga(...)]`"),
        (needs_correlation && input.correlation.is_none(), "missing correlation id type: add `correlation = Type` (e.g. `Uuid`, `String`, `u64`): the type of the event fields that name a saga instance"),
    ] {
        if missing {
            cx.error_spanned_by(input.ident, message);
        }
    }
}

fn check_one_start(cx: &Ctxt, input: &Input, starts: &[&State]) {
    let Some(first) = starts.first() else {
        if !input.states.is_empty() {
            cx.error_spanned_by(
                input.ident,
                "no start state: mark the state a saga begins in with `#[saga(start = EventVariant)]`",
            );
        }
        return;
    };
    let Some((_, first_event)) = &first.start else {
        return;
    };
    for extra in &starts[1..] {
        if let Some((key, _)) = &extra.start {
            cx.error_spanned_by(
                key,
                format!(
                    "a saga has one start state, and `{}` already starts on `{first_event}`",
                    first.ident
                ),
            );
        }
    }
}

/// A terminal state only ends the saga.
fn check_terminal_state(cx: &Ctxt, state: &State) {
    if let Some((key, _)) = &state.start {
        cx.error_spanned_by(
            key,
            "a terminal state cannot be the start state: the saga would end as it begins",
        );
    }
    if let Some(key) = &state.on_key {
        cx.error_spanned_by(
            key,
            "a terminal state ends the saga: it cannot have transitions",
        );
    }
    if let Some((key, _)) = &state.timeout {
        cx.error_spanned_by(
            key,
            "a terminal state ends the saga: it cannot have a timeout",
        );
    }
    if let Some((key, _)) = &state.issue {
        cx.error_spanned_by(key, "a terminal state ends the saga: it cannot issue commands (a failed command could no longer be compensated); issue them in the state before");
    }
    if let Some((key, _)) = &state.compensate {
        cx.error_spanned_by(key, "a terminal state issues nothing to compensate");
    }
}

fn check_targets_exist(cx: &Ctxt, input: &Input, state: &State) {
    let targets = state
        .on
        .iter()
        .map(|t| &t.target)
        .chain(state.timeout.iter().map(|(_, t)| &t.target));
    for target in targets {
        let Target::State(target) = target else {
            continue;
        };
        if !input.states.iter().any(|s| s.ident == target) {
            let list = input
                .states
                .iter()
                .map(|s| format!("`{}`", s.ident))
                .collect::<Vec<_>>()
                .join(", ");
            cx.error_spanned_by(
                target,
                format!(
                    "no state `{target}` in `{}`: the states are {list}; or use `fail` to compensate",
                    input.ident
                ),
            );
        }
    }
}

/// One transition per (state, event).
fn check_transitions_unique(cx: &Ctxt, state: &State) {
    let mut seen: HashMap<String, &Target> = HashMap::new();
    for t in &state.on {
        let key = t.event.to_string();
        if let Some(first) = seen.get(&key) {
            let first_target = match first {
                Target::State(s) => format!("to `{s}`"),
                Target::Fail => "to `fail`".to_owned(),
            };
            cx.error_spanned_by(
                &t.event,
                format!(
                    "state `{}` already has a transition on `{key}` ({first_target}); a state handles each event once",
                    state.ident
                ),
            );
        } else {
            seen.insert(key, &t.target);
        }
    }
}

fn check_way_out(cx: &Ctxt, state: &State) {
    if state.on.is_empty() && state.timeout.is_none() {
        let name = state.ident;
        cx.error_spanned_by(
            name,
            format!("state `{name}` is not terminal and has no way out: add `on(Event => State)`, a `timeout`, or mark it `#[saga(terminal)]`"),
        );
    }
}

/// A state that issues commands says what undoes them, or that nothing
/// needs to (`compensate = none`); a state that issues none compensates
/// nothing.
fn check_compensation(cx: &Ctxt, state: &State) {
    let name = state.ident;
    match (&state.issue, &state.compensate) {
        (Some((key, commands)), None) if !commands.is_empty() => cx.error_spanned_by(
            key,
            format!(
                "state `{name}` issues {} but has no compensation: add `compensate = ...` naming the command that undoes it (it runs, in reverse order of the steps, when a later step fails or times out), or `compensate = none` if nothing needs undoing",
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

fn check_has_terminal(cx: &Ctxt, input: &Input) {
    if !input.states.is_empty() && !input.states.iter().any(|s| s.terminal.is_some()) {
        cx.error_spanned_by(
            input.ident,
            "a saga needs a terminal state: mark the state(s) where it ends with `#[saga(terminal)]`",
        );
    }
}

/// Every state is reachable from the (one) start state.
fn check_reachable(cx: &Ctxt, input: &Input, starts: &[&State]) {
    let [start] = starts else { return };
    let states = &input.states;
    let index = |ident: &syn::Ident| states.iter().position(|s| s.ident == ident);
    let Some(start) = index(start.ident) else {
        return;
    };
    let mut reached = vec![false; states.len()];
    reached[start] = true;
    let mut queue = VecDeque::from([start]);
    while let Some(i) = queue.pop_front() {
        let s = &states[i];
        let targets =
            s.on.iter()
                .map(|t| &t.target)
                .chain(s.timeout.iter().map(|(_, t)| &t.target));
        for t in targets {
            if let Target::State(target) = t {
                if let Some(j) = index(target) {
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
                    state.ident, states[start].ident
                ),
            );
        }
    }
}

/// Every handled event says how it names its saga.
fn check_correlation_given(cx: &Ctxt, input: &Input) {
    for event in input.handled_events() {
        if input.correlate_of(event).is_none() {
            cx.error_spanned_by(
                event,
                format!("event `{event}` has no correlation: add `correlate = field` (for every event) or `correlate({event} = field)` to `#[saga(...)]`, naming the field that holds the saga's correlation id (or `envelope.aggregate_id`, or `with(function)`)"),
            );
        }
    }
}

/// Every per-event correlation is for an event the saga handles.
fn check_correlation_used(cx: &Ctxt, input: &Input) {
    let handled = input.handled_events();
    for (event, _) in &input.overrides {
        if !handled.contains(&event) {
            cx.error_spanned_by(
                event,
                format!("`{event}` has a correlation, but no state starts on it or handles it"),
            );
        }
    }
}
