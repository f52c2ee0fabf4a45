//! The rules of `#[derive(Aggregate)]`, one `check_*` per rule.

use syn::Data;

use super::ast::Input;
use crate::ctxt::Ctxt;

/// Checks the input. The rules on single values always run; the rules that
/// read the input as a whole (a required key is missing) only when every
/// attribute parsed: a misspelled `event` is reported as misspelled, not
/// also as missing.
pub(crate) fn validate(cx: &Ctxt, input: &Input, parsed: bool) {
    check_not_generic(cx, input);
    check_not_union(cx, input);
    check_name(cx, input);
    check_snapshot_every(cx, input);
    check_codec_version(cx, input);
    if parsed {
        check_event_given(cx, input);
    }
}

fn check_not_generic(cx: &Ctxt, input: &Input) {
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(
            input.generics,
            "`#[derive(Aggregate)]` does not support generic types",
        );
    }
}

fn check_not_union(cx: &Ctxt, input: &Input) {
    if let Data::Union(u) = input.data {
        cx.error_spanned_by(
            u.union_token,
            "an aggregate's state must be a struct or an enum",
        );
    }
}

/// The name is the first part of every stream id (`{name}-{id}`), and
/// `Envelope::aggregate_type` reads it back up to the first `-`.
fn check_name(cx: &Ctxt, input: &Input) {
    let Some(lit) = &input.name else { return };
    let name = lit.value();
    if name.trim().is_empty() {
        cx.error_spanned_by(lit, "an aggregate name cannot be empty");
    } else if name.contains('-') {
        cx.error_spanned_by(
            lit,
            format!(
                "an aggregate name cannot contain `-`: streams are named `{{name}}-{{id}}` and an envelope's `aggregate_type()` is the part before the first `-`; write `{}`",
                name.replace('-', "_")
            ),
        );
    }
}

fn check_snapshot_every(cx: &Ctxt, input: &Input) {
    if let Some((lit, 0)) = &input.snapshot_every {
        cx.error_spanned_by(
            lit,
            "`snapshot_every` must be at least 1; leave it out to take no snapshots",
        );
    }
}

fn check_codec_version(cx: &Ctxt, input: &Input) {
    if let Some((lit, 0)) = &input.codec_version {
        cx.error_spanned_by(lit, "codec versions start at 1");
    }
}

fn check_event_given(cx: &Ctxt, input: &Input) {
    if input.event.is_none() {
        cx.error_spanned_by(
            input.ident,
            "missing event type: add `#[aggregate(event = YourEvent)]` naming the enum that derives `Event`",
        );
    }
}
