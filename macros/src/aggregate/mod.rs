//! `#[derive(Aggregate)]`: [`ast`] reads the input, [`valid`] checks it,
//! [`expand`] writes the `AggregateState` impl.

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
