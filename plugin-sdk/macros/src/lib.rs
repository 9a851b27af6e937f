//! Attribute macros of `warren-plugin-sdk`: `#[exchange]`, `#[filter]`, `#[idempotency]`.
//!
//! Each one checks the annotated function's signature (a spanned compile error otherwise), keeps the
//! function unchanged, and adds a private module that generates the guest bindings for its world of
//! `wit/warren-plugin.wit` (with `wit-bindgen`, reached through the SDK so a plugin needs no other
//! dependency) and exports a component that calls the function.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, ItemFn, Lit, Meta, Path, Token};

/// The WIT package the plugins target: the crate's own copy (`wit/` inside this crate, so the crate
/// builds from a registry without Warren's repository), kept equal to the repository's
/// `wit/warren-plugin.wit` by the test `wit_copy_equals_the_repository_package`.
const WIT: &str = include_str!("../wit/warren-plugin.wit");

/// The three plugin kinds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exchange,
    Filter,
    Idempotency,
}

impl Kind {
    /// "an exchange", "a filter", "an idempotency", for messages.
    fn article(self) -> &'static str {
        match self {
            Kind::Exchange => "an exchange",
            Kind::Filter => "a filter",
            Kind::Idempotency => "an idempotency",
        }
    }

    fn world(self) -> &'static str {
        match self {
            Kind::Exchange => "exchange-plugin",
            Kind::Filter => "filter-plugin",
            Kind::Idempotency => "idempotency-plugin",
        }
    }

    /// The expected signature, for error messages.
    fn signature(self) -> &'static str {
        match self {
            Kind::Exchange => {
                "fn(exchange: &Exchange, message: &Message) -> Vec<u32> (or Option<u32>)"
            }
            Kind::Filter => "fn(config: &Table, message: &Message) -> Decision (or bool)",
            Kind::Idempotency => {
                "fn(config: &Table, message: &Message) -> Option<Vec<u8>> (or Option<String>)"
            }
        }
    }

    /// Attribute keys besides `name` and `description`.
    fn hooks(self) -> &'static [&'static str] {
        match self {
            Kind::Exchange => &["init", "validate_binding", "schedule"],
            Kind::Filter | Kind::Idempotency => &["init"],
        }
    }
}

/// Parsed attribute arguments.
struct Args {
    name: String,
    description: String,
    hooks: Vec<(String, Path)>,
}

fn parse_args(kind: Kind, attr: TokenStream2) -> syn::Result<Args> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr.clone())?;
    let mut name = None;
    let mut description = String::new();
    let mut hooks = Vec::new();
    for meta in metas {
        let Meta::NameValue(nv) = &meta else {
            return Err(syn::Error::new_spanned(
                &meta,
                "expected `key = value`, e.g. name = \"x-my-type\"",
            ));
        };
        let key = nv
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        match (key.as_str(), &nv.value) {
            (
                "name",
                Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }),
            ) => name = Some((s.value(), s.span())),
            (
                "description",
                Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }),
            ) => description = s.value(),
            (k, Expr::Path(p)) if kind.hooks().contains(&k) => hooks.push((key, p.path.clone())),
            _ => {
                let mut allowed = vec!["name = \"…\"", "description = \"…\""];
                allowed.extend(kind.hooks().iter().map(|h| match *h {
                    "init" => "init = function",
                    "schedule" => "schedule = function",
                    _ => "validate_binding = function",
                }));
                return Err(syn::Error::new_spanned(
                    &meta,
                    format!(
                        "unknown or malformed argument; expected {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
    }
    let Some((name, span)) = name else {
        return Err(syn::Error::new(
            attr.span(),
            "missing `name = \"…\"`: the exchange type or plugin name clients use",
        ));
    };
    if kind == Kind::Exchange && !name.starts_with("x-") {
        return Err(syn::Error::new(
            span,
            "an exchange type name must start with `x-` (e.g. \"x-consistent-hash\")",
        ));
    }
    if name.is_empty() || name.len() > 255 {
        return Err(syn::Error::new(span, "a plugin name has 1 to 255 octets"));
    }
    Ok(Args {
        name,
        description,
        hooks,
    })
}

fn check_signature(kind: Kind, f: &ItemFn) -> syn::Result<()> {
    let sig = &f.sig;
    let wrong = |span: Span, what: &str| {
        Err(syn::Error::new(
            span,
            format!(
                "{what}; {} plugin function is `{}`",
                kind.article(),
                kind.signature()
            ),
        ))
    };
    if sig.asyncness.is_some() {
        return wrong(sig.asyncness.span(), "plugin functions cannot be async");
    }
    if !sig.generics.params.is_empty() {
        return wrong(sig.generics.span(), "plugin functions cannot be generic");
    }
    if sig.inputs.len() != 2 {
        return wrong(sig.inputs.span(), "expected exactly two parameters");
    }
    for input in &sig.inputs {
        match input {
            syn::FnArg::Receiver(r) => return wrong(r.span(), "expected a free function"),
            syn::FnArg::Typed(t) if !matches!(*t.ty, syn::Type::Reference(_)) => {
                return wrong(t.ty.span(), "expected a reference parameter");
            }
            syn::FnArg::Typed(_) => {}
        }
    }
    if matches!(sig.output, syn::ReturnType::Default) {
        return wrong(sig.span(), "missing return type");
    }
    Ok(())
}

/// The glue shared by all kinds: bindings generation and the message view adapter.
fn common(kind: Kind) -> TokenStream2 {
    let world = kind.world();
    quote! {
        ::warren_plugin_sdk::__private::wit_bindgen::generate!({
            inline: #WIT,
            world: #world,
            runtime_path: "::warren_plugin_sdk::__private::wit_bindgen::rt",
        });

        use warren::plugin::types as __types;
        use ::warren_plugin_sdk::__private::{MessageSource as __MessageSource, Table as __Table, Value as __Value};

        fn __value(v: __types::FieldValue) -> __Value {
            match v {
                __types::FieldValue::Boolean(b) => __Value::Boolean(b),
                __types::FieldValue::Integer(n) => __Value::Integer(n),
                __types::FieldValue::Float(n) => __Value::Float(n),
                __types::FieldValue::Decimal((s, n)) => __Value::Decimal(s, n),
                __types::FieldValue::Text(s) => __Value::Text(s),
                __types::FieldValue::Bytes(b) => __Value::Bytes(b),
                __types::FieldValue::Timestamp(t) => __Value::Timestamp(t),
                __types::FieldValue::Table(t) => __Value::Table(__Table::decode(&t).unwrap_or_default()),
                __types::FieldValue::Array(a) => __Value::Array(
                    ::warren_plugin_sdk::__private::decode_array(&a).unwrap_or_default(),
                ),
                __types::FieldValue::Void => __Value::Void,
            }
        }

        struct __Source<'a>(&'a __types::Message);

        impl __MessageSource for __Source<'_> {
            fn exchange(&self) -> String { self.0.exchange() }
            fn routing_key(&self) -> String { self.0.routing_key() }
            fn body_size(&self) -> u64 { self.0.body_size() }
            fn body(&self) -> Vec<u8> { self.0.body() }
            fn property(&self, name: &str) -> Option<__Value> { self.0.property(name).map(__value) }
            fn header(&self, name: &str) -> Option<__Value> { self.0.header(name).map(__value) }
            fn headers(&self) -> __Table { __Table::decode(&self.0.headers()).unwrap_or_default() }
        }

        /// Message `.1` of a `message-run`.
        struct __RunSource<'a>(&'a __types::MessageRun, u32);

        impl __MessageSource for __RunSource<'_> {
            fn exchange(&self) -> String { self.0.exchange(self.1) }
            fn routing_key(&self) -> String { self.0.routing_key(self.1) }
            fn body_size(&self) -> u64 { self.0.body_size(self.1) }
            fn body(&self) -> Vec<u8> { self.0.body(self.1) }
            fn property(&self, name: &str) -> Option<__Value> { self.0.property(self.1, name).map(__value) }
            fn header(&self, name: &str) -> Option<__Value> { self.0.header(self.1, name).map(__value) }
            fn headers(&self) -> __Table { __Table::decode(&self.0.headers(self.1)).unwrap_or_default() }
        }

        fn __info(name: &str, description: &str) -> __types::PluginInfo {
            __types::PluginInfo {
                name: name.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                description: description.to_string(),
            }
        }

        struct __Component;
        export!(__Component);
    }
}

fn hook(args: &Args, key: &str, default: TokenStream2) -> TokenStream2 {
    match args.hooks.iter().find(|(k, _)| k == key) {
        Some((_, path)) => quote!(#path),
        None => default,
    }
}

fn expand(kind: Kind, attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let args = parse_args(kind, attr)?;
    let f: ItemFn = syn::parse2(item)?;
    check_signature(kind, &f)?;
    let fn_name = &f.sig.ident;
    // Calls to the user's function carry its span, so a type mismatch points at the function.
    let call = quote_spanned!(f.sig.span()=> super::#fn_name);
    // The conversion of its answer carries the return type's span: a wrong type is reported there.
    let output = match &f.sig.output {
        syn::ReturnType::Type(_, ty) => ty.span(),
        syn::ReturnType::Default => f.sig.span(),
    };
    let into_route = quote_spanned!(output=> ::warren_plugin_sdk::exchange::IntoRoute::into_route);
    let into_decision =
        quote_spanned!(output=> ::warren_plugin_sdk::filter::IntoDecision::into_decision);
    let into_key = quote_spanned!(output=> ::warren_plugin_sdk::idempotency::IntoKey::into_key);
    let (name, description) = (&args.name, &args.description);
    let common = common(kind);
    let glue = match kind {
        Kind::Exchange => {
            let init = hook(
                &args,
                "init",
                quote!(::warren_plugin_sdk::exchange::runtime::accept_any),
            );
            let validate = hook(
                &args,
                "validate_binding",
                quote!(::warren_plugin_sdk::exchange::runtime::accept_binding),
            );
            let schedule = match args.hooks.iter().find(|(k, _)| k == "schedule") {
                Some((_, path)) => quote!(Some(#path)),
                None => quote!(None),
            };
            quote! {
                use exports::warren::plugin::exchange as __x;
                use ::warren_plugin_sdk::exchange::{runtime as __rt, Due as __Due, Hooks as __Hooks, RoutesOn as __RoutesOn};
                use ::warren_plugin_sdk::store as __store;
                use warren::plugin::host as __host;

                const __HOOKS: __Hooks = __Hooks {
                    init: #init,
                    validate_binding: #validate,
                    route: |x, m| #into_route(#call(x, m)),
                    schedule: #schedule,
                };

                /// The exchange's key-value store in the broker.
                struct __HostStore;

                impl __store::Backend for __HostStore {
                    fn configure(&self, o: __store::Options) {
                        __host::kv_configure(__host::KvOptions { max_entries: o.max_entries, persistent: o.persistent })
                    }
                    fn get(&self, key: &[u8]) -> Option<Vec<u8>> { __host::kv_get(key) }
                    fn set(&self, key: &[u8], value: &[u8], ttl_ms: Option<u64>) -> Result<(), __store::StoreError> {
                        __host::kv_set(key, value, ttl_ms).map_err(|e| match e {
                            __host::KvError::QuotaExceeded => __store::StoreError::QuotaExceeded,
                            __host::KvError::TooLarge => __store::StoreError::TooLarge,
                        })
                    }
                    fn delete(&self, key: &[u8]) -> bool { __host::kv_delete(key) }
                    fn entries(&self) -> u64 { __host::kv_len() }
                    fn now_ms(&self) -> u64 { __host::now_ms() }
                }

                impl __x::Guest for __Component {
                    fn describe() -> __types::PluginInfo { __info(#name, #description) }
                    fn init(arguments: Vec<u8>) -> Result<__x::ExchangeOptions, String> {
                        __store::install(Box::new(__HostStore));
                        __rt::init(&__HOOKS, &arguments).map(|(r, schedules)| __x::ExchangeOptions {
                            routes_on: match r {
                                __RoutesOn::RoutingKey => __x::RoutesOn::RoutingKey,
                                __RoutesOn::Message => __x::RoutesOn::Message,
                            },
                            schedules,
                        })
                    }
                    fn schedule(message: &__types::Message) -> __x::Due {
                        match __rt::schedule(&__HOOKS, &__Source(message)) {
                            __Due::Now => __x::Due::Now,
                            __Due::After(ms) => __x::Due::After(ms),
                            __Due::At(ms) => __x::Due::At(ms),
                            __Due::Refuse(text) => __x::Due::Refuse(text),
                        }
                    }
                    fn validate_binding(b: __x::Binding) -> Result<(), String> {
                        __rt::validate_binding(&__HOOKS, b.id, b.destination, b.key, &b.arguments)
                    }
                    fn add_binding(b: __x::Binding) { __rt::add_binding(b.id, b.destination, b.key, &b.arguments) }
                    fn remove_binding(id: u32) { __rt::remove_binding(id) }
                    fn route(message: &__types::Message, routing_key: String) -> Vec<u32> {
                        __rt::route(&__HOOKS, &__Source(message), &routing_key)
                    }
                    fn route_keys(keys: Vec<u8>, key_ends: Vec<u32>) -> __x::RoutedKeys {
                        let (ids, id_ends) = __rt::route_keys(&__HOOKS, &keys, &key_ends);
                        __x::RoutedKeys { ids, id_ends }
                    }
                    fn route_messages(
                        messages: &__types::MessageRun,
                        keys: Vec<u8>,
                        key_ends: Vec<u32>,
                    ) -> __x::RoutedKeys {
                        let (ids, id_ends) = __rt::route_messages(
                            &__HOOKS,
                            |i| __RunSource(messages, i),
                            &keys,
                            &key_ends,
                        );
                        __x::RoutedKeys { ids, id_ends }
                    }
                }
            }
        }
        Kind::Filter => {
            let init = hook(
                &args,
                "init",
                quote!(::warren_plugin_sdk::filter::runtime::accept),
            );
            quote! {
                use exports::warren::plugin::filter as __f;
                use ::warren_plugin_sdk::filter::{runtime as __rt, Hooks as __Hooks, Decision as __Decision};

                const __HOOKS: __Hooks = __Hooks {
                    init: #init,
                    filter: |c, m| #into_decision(#call(c, m)),
                };

                impl __f::Guest for __Component {
                    fn describe() -> __types::PluginInfo { __info(#name, #description) }
                    fn init(config: Vec<u8>) -> Result<(), String> { __rt::init(&__HOOKS, &config) }
                    fn filter(message: &__types::Message) -> __f::Decision {
                        match __rt::filter(&__HOOKS, &__Source(message)) {
                            __Decision::Deliver => __f::Decision::Deliver,
                            __Decision::Skip => __f::Decision::Skip,
                            __Decision::Reject => __f::Decision::Reject,
                        }
                    }
                }
            }
        }
        Kind::Idempotency => {
            let init = hook(
                &args,
                "init",
                quote!(::warren_plugin_sdk::idempotency::runtime::accept),
            );
            quote! {
                use exports::warren::plugin::idempotency as __i;
                use ::warren_plugin_sdk::idempotency::{runtime as __rt, Hooks as __Hooks};

                const __HOOKS: __Hooks = __Hooks {
                    init: #init,
                    key: |c, m| #into_key(#call(c, m)),
                };

                impl __i::Guest for __Component {
                    fn describe() -> __types::PluginInfo { __info(#name, #description) }
                    fn init(config: Vec<u8>) -> Result<(), String> { __rt::init(&__HOOKS, &config) }
                    fn key(message: &__types::Message) -> Option<Vec<u8>> {
                        __rt::key(&__HOOKS, &__Source(message))
                    }
                }
            }
        }
    };
    Ok(quote! {
        #f

        #[doc(hidden)]
        #[allow(warnings, clippy::all, unsafe_code)]
        mod __warren_plugin {
            use super::*;
            #common
            #glue
        }
    })
}

fn run(kind: Kind, attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = TokenStream2::from(item);
    expand(kind, attr.into(), item.clone())
        .unwrap_or_else(|e| refused(&e, item))
        .into()
}

/// The output for a refused attribute or signature: the error, and the function unchanged (marked
/// as possibly unused), so that the error is the only message — without the function, its imports
/// would be reported unused and its callers unresolved.
fn refused(error: &syn::Error, item: TokenStream2) -> TokenStream2 {
    let error = error.to_compile_error();
    match syn::parse2::<ItemFn>(item) {
        Ok(mut f) => {
            // An `async` function would add an error of its own (the message's elided lifetime).
            f.sig.asyncness = None;
            quote! {
            #error
            #[allow(dead_code)]
            #f
            }
        }
        // Not a function: rustc reports what is wrong with the item itself.
        Err(_) => error,
    }
}

/// Makes the function the routing logic of an exchange type.
///
/// `#[exchange(name = "x-…", description = "…", init = f, validate_binding = g, schedule = h)]` on
/// `fn(&Exchange, &Message) -> Vec<u32>` (or `Option<u32>`): the ids of the bindings to route to.
/// `init: fn(&Table) -> Result<RoutesOn, String>` checks the declare arguments;
/// `validate_binding: fn(&Exchange, &Binding) -> Result<(), String>` checks each binding. Errors reach
/// the client as `406 PRECONDITION_FAILED`. `schedule: fn(&Exchange, &Message) -> Due` makes the
/// broker ask, for each publish, when to route it (`Due::After(ms)` keeps it until then).
#[proc_macro_attribute]
pub fn exchange(attr: TokenStream, item: TokenStream) -> TokenStream {
    run(Kind::Exchange, attr, item)
}

/// Makes the function a consumer filter.
///
/// `#[filter(name = "…", description = "…", init = f)]` on `fn(&Table, &Message) -> Decision` (or
/// `bool`: deliver or skip); the table is the consumer's `x-filter-args`.
#[proc_macro_attribute]
pub fn filter(attr: TokenStream, item: TokenStream) -> TokenStream {
    run(Kind::Filter, attr, item)
}

/// Makes the function the key derivation of an idempotency plugin.
///
/// `#[idempotency(name = "…", description = "…", init = f)]` on
/// `fn(&Table, &Message) -> Option<Vec<u8>>`; the table is the queue's `x-idempotency-args`.
#[proc_macro_attribute]
pub fn idempotency(attr: TokenStream, item: TokenStream) -> TokenStream {
    run(Kind::Idempotency, attr, item)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn error(kind: Kind, attr: TokenStream2, item: TokenStream2) -> String {
        match expand(kind, attr, item) {
            Ok(_) => panic!("expected a compile error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn wit_copy_equals_the_repository_package() {
        let repository = concat!(env!("CARGO_MANIFEST_DIR"), "/../../wit/warren-plugin.wit");
        let text = std::fs::read_to_string(repository).expect("the repository's WIT package");
        assert!(
            text == WIT,
            "plugin-sdk/macros/wit/warren-plugin.wit differs from wit/warren-plugin.wit: copy it over"
        );
    }

    #[test]
    fn accepts_each_kind() {
        let ok = |kind, attr, item| expand(kind, attr, item).expect("expands");
        ok(
            Kind::Exchange,
            quote!(name = "x-a", init = init),
            quote!(
                fn route(x: &Exchange, m: &Message) -> Vec<u32> {
                    vec![]
                }
            ),
        );
        ok(
            Kind::Filter,
            quote!(name = "f"),
            quote!(
                fn f(c: &Table, m: &Message) -> Decision {
                    Decision::Deliver
                }
            ),
        );
        ok(
            Kind::Idempotency,
            quote!(name = "k", description = "d"),
            quote!(
                fn k(c: &Table, m: &Message) -> Option<Vec<u8>> {
                    None
                }
            ),
        );
    }

    #[test]
    fn refuses_wrong_signatures_and_arguments() {
        let item = quote!(
            fn route(x: &Exchange, m: &Message) -> Vec<u32> {
                vec![]
            }
        );
        assert!(error(Kind::Exchange, quote!(), item.clone()).contains("missing `name"));
        assert!(
            error(Kind::Exchange, quote!(name = "plain"), item.clone()).contains("start with `x-`")
        );
        assert!(error(
            Kind::Exchange,
            quote!(name = "x-a", colour = "red"),
            item.clone()
        )
        .contains("unknown or malformed argument"));
        assert!(
            error(Kind::Filter, quote!(name = "f", validate_binding = v), item)
                .contains("unknown or malformed argument")
        );
        let one = quote!(
            fn route(x: &Exchange) -> Vec<u32> {
                vec![]
            }
        );
        assert!(error(Kind::Exchange, quote!(name = "x-a"), one).contains("exactly two parameters"));
        let by_value = quote!(
            fn f(c: Table, m: &Message) -> Decision {
                Decision::Skip
            }
        );
        assert!(error(Kind::Filter, quote!(name = "f"), by_value).contains("reference parameter"));
        let no_ret = quote!(
            fn k(c: &Table, m: &Message) {}
        );
        assert!(
            error(Kind::Idempotency, quote!(name = "k"), no_ret).contains("missing return type")
        );
        let asynchronous = quote!(
            async fn k(c: &Table, m: &Message) -> Option<Vec<u8>> {
                None
            }
        );
        assert!(
            error(Kind::Idempotency, quote!(name = "k"), asynchronous).contains("cannot be async")
        );
    }
}
