//! The `Saga` impl.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, Path, Type};

use super::ast::{Correlate, EnvelopeId, Input, Shape, Target};
use crate::util::snake_case;

/// The impl of a checked input.
pub(crate) fn expand(input: &Input) -> TokenStream {
    let ident = input.ident;
    let krate = &input.krate;
    let p = quote!(#krate::__private);
    let (Some(event), Some(command), Some(data)) = (&input.event, &input.command, &input.data)
    else {
        return TokenStream::new(); // rejected by validation
    };
    let name = input
        .name
        .as_ref()
        .map(|l| l.value())
        .unwrap_or_else(|| snake_case(&ident.to_string()));
    let opt = quote!(::core::option::Option);

    let target = |t: &Target| match t {
        Target::State(s) => quote!(#p::Target::State(Self::#s)),
        Target::Fail => quote!(#p::Target::Fail),
    };
    let target_name = |t: &Target| match t {
        Target::State(s) => {
            let s = s.to_string();
            quote!(#p::Target::State(#s))
        }
        Target::Fail => quote!(#p::Target::Fail),
    };

    // the static definition
    let definitions = input.states.iter().map(|s| {
        let state_name = s.ident.to_string();
        let start_on = match &s.start {
            Some((_, e)) => {
                let e = e.to_string();
                quote!(#opt::Some(#e))
            }
            None => quote!(#opt::None),
        };
        let terminal = s.terminal.is_some();
        let transitions = s.on.iter().map(|t| {
            let e = t.event.to_string();
            let tn = target_name(&t.target);
            quote!((#e, #tn))
        });
        let timeout = match &s.timeout {
            Some((_, t)) => {
                let ms = t.millis().unwrap_or(0);
                let tn = target_name(&t.target);
                quote!(#opt::Some((::core::time::Duration::from_millis(#ms), #tn)))
            }
            None => quote!(#opt::None),
        };
        let names = |list: &[Ident]| {
            let names = list.iter().map(Ident::to_string);
            quote!(&[#(#names),*])
        };
        let issues = names(s.issue.as_ref().map_or(&[], |(_, c)| c.as_slice()));
        let compensates = names(s.compensate.as_ref().map_or(&[], |(_, c)| c.commands()));
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

    let state_idents: Vec<&Ident> = input.states.iter().map(|s| s.ident).collect();
    let state_strs: Vec<String> = input.states.iter().map(|s| s.ident.to_string()).collect();

    // correlation: one arm per handled event
    let correlation_arms = input.handled_events().into_iter().map(|ev| {
        let source = input.correlate_of(ev);
        // an event's own source is reported at its tokens; the default one,
        // at this event's mention (where it is wrong for this event)
        let own = input.overrides.iter().any(|(e, _)| e == ev);
        let at = if own { None } else { Some(ev.span()) };
        let read = correlation_read(&p, input.correlation.as_ref(), source, at);
        let bind = match source {
            Some(Correlate::Field(_)) | None => quote!(__payload),
            _ => quote!(_),
        };
        quote!(#event::#ev(#bind) => { #read })
    });

    let start_arms = input.states.iter().filter_map(|s| {
        s.start.as_ref().map(|(_, ev)| {
            let st = s.ident;
            quote!(#event::#ev(_) => #opt::Some(Self::#st),)
        })
    });

    let on_arms = input.states.iter().flat_map(|s| {
        let st = s.ident;
        let (opt, target) = (&opt, &target);
        s.on.iter().map(move |t| {
            let ev = &t.event;
            let tg = target(&t.target);
            quote!((Self::#st, #event::#ev(_)) => #opt::Some(#tg),)
        })
    });

    let timeout_arms = input.states.iter().filter_map(|s| {
        s.timeout.as_ref().map(|(_, t)| {
            let st = s.ident;
            let ms = t.millis().unwrap_or(0);
            let tg = target(&t.target);
            quote!(Self::#st => #opt::Some((::core::time::Duration::from_millis(#ms), #tg)),)
        })
    });

    let terminal_arms = input
        .states
        .iter()
        .filter(|s| s.terminal.is_some())
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
    let issue_arms = input.states.iter().filter_map(|s| {
        s.issue.as_ref().map(|(_, c)| {
            let st = s.ident;
            let list = command_list(c);
            quote!(Self::#st => #list,)
        })
    });
    let compensate_arms = input.states.iter().filter_map(|s| {
        s.compensate
            .as_ref()
            .filter(|(_, c)| !c.commands().is_empty())
            .map(|(_, c)| {
                let st = s.ident;
                let list = command_list(c.commands());
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
                fn correlation_id(__event: &#p::Envelope<Self::Event>) -> #opt<::std::string::String> {
                    match &__event.payload {
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

/// The body of one event's correlation arm. A payload field is read with
/// the declared type, spanned so that a missing field or a wrong type points
/// at the attribute that names it (or at `at`, the event's mention, for the
/// default field); `with(f)` is checked against its signature, spanned at
/// `f`.
fn correlation_read(
    p: &TokenStream,
    correlation: Option<&Type>,
    source: Option<&Correlate>,
    at: Option<Span>,
) -> TokenStream {
    let opt = quote!(::core::option::Option);
    // the id's text, through the public trait (so that a type that is not a
    // correlation id gets that trait's message, at the declared type)
    let typed = |span: Span| match correlation {
        Some(ty) => (
            quote_spanned!(ty.span()=> #ty),
            quote_spanned!(ty.span()=> <#ty as #p::CorrelationId>::correlation_id),
        ),
        // rejected by validation
        None => (
            quote_spanned!(span=> _),
            quote!(#p::CorrelationId::correlation_id),
        ),
    };
    match source {
        Some(Correlate::Field(field)) => {
            let span = at.unwrap_or_else(|| field.span());
            let field = Ident::new(&field.to_string(), span);
            let read = quote_spanned!(span=> &(*__payload).#field);
            let (ty, call) = typed(span);
            // `&Type` at the declared type: "expected due to this" points there
            let amp = quote_spanned!(correlation.map_or(span, |t| t.span())=> &);
            let ty = quote!(#amp #ty);
            quote! {
                let __id: #ty = #read;
                #opt::Some(#call(__id))
            }
        }
        Some(Correlate::Envelope(part)) => match part {
            EnvelopeId::Aggregate => {
                quote!(#opt::Some(::std::string::ToString::to_string(__event.aggregate_id())))
            }
            EnvelopeId::Stream => {
                quote!(#opt::Some(::std::clone::Clone::clone(&__event.stream_id)))
            }
            EnvelopeId::Correlation => quote! {
                __event.metadata.correlation_id.map(|__id| ::std::string::ToString::to_string(&__id))
            },
        },
        Some(Correlate::With(path)) => {
            let (ty, call) = typed(path.span());
            let f = quote_spanned!(path.span()=> {
                let __f: fn(&#p::Envelope<Self::Event>) -> #opt<#ty> = #path;
                __f
            });
            quote! {
                match #f(__event) {
                    #opt::Some(__id) => #opt::Some(#call(&__id)),
                    #opt::None => #opt::None,
                }
            }
        }
        // rejected by validation
        None => quote!(#opt::None),
    }
}

/// What goes with the errors of an input that did not check: an impl that
/// keeps the rest of the user's crate compiling, so that one mistake gives
/// one error.
pub(crate) fn fallback(input: &Input) -> TokenStream {
    let (Some(event), Some(command), Some(data)) = (&input.event, &input.command, &input.data)
    else {
        return TokenStream::new();
    };
    if !input.generics.params.is_empty() || !matches!(input.shape, Shape::Enum) {
        return TokenStream::new();
    }
    let ident = input.ident;
    let krate: &Path = &input.krate;
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
                fn correlation_id(_: &#p::Envelope<Self::Event>) -> ::core::option::Option<::std::string::String> { ::core::unreachable!() }
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

/// `tokens` with every token at `span`, so that an error about the whole
/// path (an unknown variant) underlines one token of the attribute.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
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
