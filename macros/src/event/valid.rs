//! The rules of `#[derive(Event)]`, one `check_*` per rule.

use std::collections::{BTreeMap, HashMap};

use super::ast::{Body, EventType, HistoryEntry, Input, Link};
use crate::ctxt::Ctxt;

/// Checks the input. The rules on single values and shapes always run; the
/// rules that compare attributes with each other (history against version,
/// names across event types) only when every attribute parsed, so that a
/// misspelled `verison = 2` is reported as misspelled and not also as a
/// history that is not older than the default version 1.
pub(crate) fn validate(cx: &Ctxt, input: &Input, parsed: bool) {
    check_not_generic(cx, input);
    check_not_union(cx, input);
    check_has_variants(cx, input);
    check_variant_shapes(cx, input);
    check_personal_has_subject(cx, input);
    let types = input.event_types();
    for t in &types {
        check_name(cx, t);
        check_version(cx, t);
        check_history_versions(cx, t);
    }
    if !parsed {
        return;
    }
    for t in &types {
        // each rule reads the history as the earlier ones left it valid
        let before = cx.error_count();
        check_history_older(cx, t);
        check_history_unique(cx, t);
        if cx.error_count() == before {
            check_history_gaps(cx, t);
            check_history_links(cx, t);
        }
    }
    check_unique_names(cx, &types);
}

fn check_not_generic(cx: &Ctxt, input: &Input) {
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(
            input.generics,
            "`#[derive(Event)]` does not support generic types",
        );
    }
}

fn check_not_union(cx: &Ctxt, input: &Input) {
    if let Body::Union(token) = &input.body {
        cx.error_spanned_by(
            token,
            "`#[derive(Event)]` works on enums (one variant per event type) and structs, not unions",
        );
    }
}

fn check_has_variants(cx: &Ctxt, input: &Input) {
    if let Body::Enum { variants, .. } = &input.body {
        if variants.is_empty() {
            cx.error_spanned_by(input.ident, "an event enum needs at least one variant");
        }
    }
}

/// A struct event with a `Personal<…>` field must say whose data it is.
/// (An enum's payload types are not visible here: appending one of its
/// personal events without a subject is a typed error at run time.)
fn check_personal_has_subject(cx: &Ctxt, input: &Input) {
    if let (Body::Struct(attrs), Some(ty)) = (&input.body, input.personal_field) {
        if attrs.subject.is_none() {
            cx.error_spanned_by(
                ty,
                "this field is personal data, but the event names no subject whose key seals it: add `#[event(subject = <field>)]` or `#[event(subject = envelope.stream_id)]`",
            );
        }
    }
}

fn check_variant_shapes(cx: &Ctxt, input: &Input) {
    let Body::Enum { variants, .. } = &input.body else {
        return;
    };
    for v in variants.iter().filter(|v| v.payload.is_none()) {
        cx.error_spanned_by(
            v.original,
            format!(
                "event variants must wrap exactly one payload type, like `{}({}{})`",
                v.ident,
                input.ident.to_string().trim_end_matches("Event"),
                v.ident
            ),
        );
    }
}

/// Whether a written event name is usable (the default names always are).
fn name_is_valid(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn check_name(cx: &Ctxt, t: &EventType) {
    let Some(lit) = t.name_lit else { return };
    if t.name.is_empty() {
        cx.error_spanned_by(lit, "an event name cannot be empty");
    } else if !name_is_valid(&t.name) {
        cx.error_spanned_by(lit, "an event name cannot contain whitespace");
    }
}

fn check_version(cx: &Ctxt, t: &EventType) {
    if let Some((lit, 0)) = &t.attrs.version {
        cx.error_spanned_by(lit, "event versions start at 1");
    }
}

fn check_history_versions(cx: &Ctxt, t: &EventType) {
    for entry in t.attrs.history.iter().filter(|e| e.version == 0) {
        cx.error_spanned_by(&entry.version_lit, "event versions start at 1");
    }
}

/// Every history version is older than the current one.
fn check_history_older(cx: &Ctxt, t: &EventType) {
    let version = t.version();
    if version == 0 {
        return; // reported by check_version
    }
    for entry in &t.attrs.history {
        if entry.version != 0 && entry.version >= version {
            cx.error_spanned_by(
                &entry.version_lit,
                format!(
                    "history version {} must be older than the current version {version}",
                    entry.version
                ),
            );
        }
    }
}

fn check_history_unique(cx: &Ctxt, t: &EventType) {
    let mut seen = HashMap::new();
    for entry in &t.attrs.history {
        if seen.insert(entry.version, ()).is_some() {
            cx.error_spanned_by(
                &entry.version_lit,
                format!("duplicate history version {}", entry.version),
            );
        }
    }
}

/// Every history version has the next one to upcast into.
fn check_history_gaps(cx: &Ctxt, t: &EventType) {
    let version = t.version();
    let by_version: BTreeMap<u32, &HistoryEntry> =
        t.attrs.history.iter().map(|e| (e.version, e)).collect();
    for e in t.history() {
        let next = e.version + 1;
        if next != version && !by_version.contains_key(&next) {
            cx.error_spanned_by(
                &e.version_lit,
                format!(
                    "gap in the version history: version {next} is missing, so version {} has nothing to upcast into; add `{next} = ...` to `history(...)`",
                    e.version
                ),
            );
        }
    }
}

/// A typed version is followed by a typed one: a JSON upcaster has no type
/// to convert from.
fn check_history_links(cx: &Ctxt, t: &EventType) {
    let by_version: BTreeMap<u32, &HistoryEntry> =
        t.attrs.history.iter().map(|e| (e.version, e)).collect();
    for e in t.history() {
        let next = e.version + 1;
        if let (
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
}

/// Two event types never share a name.
fn check_unique_names(cx: &Ctxt, types: &[EventType]) {
    let mut names: HashMap<&str, &EventType> = HashMap::new();
    for t in types.iter().filter(|t| name_is_valid(&t.name)) {
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
}
