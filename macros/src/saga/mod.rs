//! `#[derive(Saga)]`: [`ast`] reads the input, [`valid`] checks the
//! machine's shape, [`expand`] writes the `Saga` impl.
//!
//! The derive goes on an enum of unit variants, the saga's states. The
//! container attribute names the event, command and data types and how
//! events are correlated; each state's attribute declares how the saga
//! starts, moves, times out, issues commands and compensates.

mod ast;
mod expand;
mod valid;

use proc_macro2::TokenStream;
use quote::quote;
use syn::DeriveInput;

use crate::ctxt::Ctxt;

/// Entry point.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let ast = ast::Input::from_syn(&cx, input);
    let parsed = !cx.has_errors();
    valid::validate(&cx, &ast, parsed);
    if cx.has_errors() {
        let errors = cx.into_compile_errors();
        let fallback = expand::fallback(&ast);
        return quote!(#errors #fallback);
    }
    expand::expand(&ast)
}
