//! `#[hangar_runtime::main]`: turns `async fn main(#[Resource] x: T, ...)
//! -> hangar_runtime::Result<S>` into a program that loads the resources
//! Hangar provisioned, calls the function, and serves what it returns.

use proc_macro::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{parse_macro_input, FnArg, ItemFn, Pat};

/// The resource kinds a parameter can ask for, by the last segment of its
/// attribute's path (`#[hangar_runtime::Postgres]`, `#[Postgres]`).
const KINDS: [&str; 4] = ["Postgres", "Redis", "PubSub", "Secrets"];

/// Marks the app's entry point; see the `hangar_runtime` crate docs.
#[proc_macro_attribute]
pub fn main(_args: TokenStream, item: TokenStream) -> TokenStream {
    let mut user = parse_macro_input!(item as ItemFn);
    match expand(&mut user) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

fn expand(user: &mut ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    if user.sig.asyncness.is_none() {
        return Err(syn::Error::new(
            user.sig.fn_token.span(),
            "#[hangar_runtime::main] goes on an `async fn`",
        ));
    }
    let mut loads = Vec::new();
    let mut args = Vec::new();
    for (i, input) in user.sig.inputs.iter_mut().enumerate() {
        let FnArg::Typed(param) = input else {
            return Err(syn::Error::new(input.span(), "main takes no `self`"));
        };
        let mut kind = None;
        let mut kept = Vec::new();
        for attr in param.attrs.drain(..) {
            let last = attr
                .path()
                .segments
                .last()
                .map(|s| s.ident.to_string())
                .unwrap_or_default();
            if KINDS.contains(&last.as_str()) {
                if kind.is_some() {
                    return Err(syn::Error::new(
                        attr.span(),
                        "one resource attribute per parameter",
                    ));
                }
                kind = Some((last, attr.span()));
            } else {
                kept.push(attr);
            }
        }
        param.attrs = kept;
        let Some((kind, span)) = kind else {
            return Err(syn::Error::new(
                param.span(),
                "every parameter of main is a resource: mark it #[hangar_runtime::Postgres], #[hangar_runtime::Redis], #[hangar_runtime::PubSub] or #[hangar_runtime::Secrets]",
            ));
        };
        let name = match &*param.pat {
            Pat::Ident(p) => format_ident!("__hangar_{}", p.ident),
            _ => format_ident!("__hangar_arg{}", i),
        };
        let ty = &param.ty;
        let load = match kind.as_str() {
            "Postgres" => quote_spanned! {span=>
                let #name: #ty = __resources.postgres::<#ty>().await?;
            },
            "Redis" => quote_spanned! {span=>
                let #name: #ty = __resources.redis::<#ty>().await?;
            },
            "PubSub" => quote_spanned! {span=>
                let #name: #ty = __resources.pubsub::<#ty>().await?;
            },
            _ => quote_spanned! {span=>
                let #name: #ty = __resources.secrets::<#ty>();
            },
        };
        loads.push(load);
        args.push(name);
    }
    let mut inner = user.clone();
    inner.sig.ident = format_ident!("__hangar_main");
    let attrs = std::mem::take(&mut inner.attrs);
    let vis = &user.vis;
    Ok(quote! {
        #(#attrs)*
        #vis fn main() {
            #inner
            ::hangar_runtime::__private::run(|| async {
                let __resources = ::hangar_runtime::__private::Resources::load()?;
                #(#loads)*
                let __service = __hangar_main(#(#args),*).await?;
                ::hangar_runtime::__private::serve(__service).await
            })
        }
    })
}
