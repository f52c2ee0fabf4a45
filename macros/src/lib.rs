//! Derive macros of [annals](https://docs.rs/annals): `Event`, `Aggregate`
//! and `Saga`.
//!
//! Use the macros through the `annals` facade (`annals::Event`,
//! `annals::Aggregate`, `annals::Saga`), whose crate docs list every
//! attribute with examples; the generated code refers to `::annals` (or the
//! path given with `crate = "..."`).
//!
//! Each derive runs in phases, as thiserror's and serde's do:
//!
//! 1. `ast`: the input is read into typed slots through one attribute
//!    mechanism (`attr`): a key given twice is "duplicate attribute", an
//!    unknown key is "unknown attribute" with a "did you mean" when a known
//!    key is close, a key of another level says where it belongs.
//! 2. `valid`: one `check_*` function per rule. The rules about single
//!    values always run; the rules that relate attributes to each other run
//!    only when every attribute parsed, so one mistake gives one error.
//! 3. `expand`: the impl. When the input has errors, the errors go out with
//!    a fallback impl (when the declared types allow one), so that the rest
//!    of the user's crate compiles and reports nothing more.

mod aggregate;
mod attr;
mod ctxt;
mod event;
mod saga;
mod util;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Derives `annals::Event`. See the `annals` crate documentation.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    event::derive(&input).into()
}

/// Derives `annals::AggregateState` (type name, snapshot policy, snapshot
/// codec). See the `annals` crate documentation.
#[proc_macro_derive(Aggregate, attributes(aggregate))]
pub fn derive_aggregate(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    aggregate::derive(&input).into()
}

/// Derives `annals::Saga` for an enum of states, checking the saga's shape
/// at compile time. See the `annals` crate documentation.
#[proc_macro_derive(Saga, attributes(saga))]
pub fn derive_saga(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    saga::derive(&input).into()
}
