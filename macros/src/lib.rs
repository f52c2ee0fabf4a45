//! Derive macros of [annals](https://docs.rs/annals): `Event`, `Aggregate`
//! and `Saga`.
//!
//! This crate is a thin shim: each derive parses its input, validates it
//! (collecting every error with its span) and expands it. Use the macros
//! through the `annals` facade, whose docs describe the attributes.

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
