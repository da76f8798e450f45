//! What `#[task]` needs to know about the function it decorates, with a
//! clear compile error for every shape it cannot turn into a task.

use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, Ident, ItemFn, Pat, PathArguments, ReturnType, Type};

/// How the first parameter takes the task context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CtxParam {
    /// `ctx: TaskContext`
    Owned,
    /// `ctx: &TaskContext`
    Borrowed,
}

/// A parameter bound from the message's args/kwargs.
pub(crate) struct Param {
    /// The parameter's identifier as written (without `mut`, raw `r#` kept).
    pub(crate) ident: Ident,
    /// The name used for kwargs and error messages (raw `r#` stripped).
    pub(crate) name: String,
    /// Its type.
    pub(crate) ty: Type,
}

/// How the return value becomes a task outcome.
pub(crate) enum Output {
    /// `-> T` (or no return type: `()`): always a success.
    Plain(Box<Type>),
    /// `-> Result<T, E>` with `E: Into<TaskError>`: `T` is the success type.
    Result { ok: Box<Type>, full: Box<Type> },
    /// `-> TaskResult`: the success value is already JSON.
    TaskResult,
}

/// The analysed function.
pub(crate) struct TaskFn {
    pub(crate) item: ItemFn,
    pub(crate) ctx: Option<CtxParam>,
    pub(crate) params: Vec<Param>,
    pub(crate) output: Output,
}

impl TaskFn {
    pub(crate) fn ident(&self) -> &Ident {
        &self.item.sig.ident
    }

    pub(crate) fn is_async(&self) -> bool {
        self.item.sig.asyncness.is_some()
    }

    /// Doc comments, which document the generated struct.
    pub(crate) fn doc_attrs(&self) -> impl Iterator<Item = &Attribute> {
        self.item.attrs.iter().filter(|a| a.path().is_ident("doc"))
    }

    /// `#[cfg]`s, which apply to every generated item.
    pub(crate) fn cfg_attrs(&self) -> impl Iterator<Item = &Attribute> {
        self.item.attrs.iter().filter(|a| a.path().is_ident("cfg"))
    }

    /// Every other attribute (`#[allow]`, `#[tracing::instrument]`...),
    /// which stays on the function itself (`call`).
    pub(crate) fn fn_attrs(&self) -> impl Iterator<Item = &Attribute> {
        self.item.attrs.iter().filter(|a| !a.path().is_ident("doc") && !a.path().is_ident("cfg"))
    }
}

/// Analyse `item`, rejecting what cannot be a task.
pub(crate) fn analyse(item: ItemFn) -> syn::Result<TaskFn> {
    let sig = &item.sig;
    if let Some(u) = &sig.unsafety {
        return Err(syn::Error::new(u.span(), "#[task] cannot be used on an `unsafe fn`"));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new(abi.span(), "#[task] cannot be used on an `extern` fn"));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "#[task] functions cannot be generic: a worker must know the concrete argument and result types",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new(v.span(), "#[task] functions cannot be variadic"));
    }

    let mut ctx = None;
    let mut params = Vec::new();
    for (i, input) in sig.inputs.iter().enumerate() {
        let pat_type = match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new(
                    r.span(),
                    "#[task] goes on a free function: `self` parameters are not supported",
                ))
            }
            FnArg::Typed(t) => t,
        };
        if let Some(kind) = ctx_kind(&pat_type.ty)? {
            if i != 0 {
                return Err(syn::Error::new(pat_type.ty.span(), "the `TaskContext` parameter must come first"));
            }
            ctx = Some(kind);
            continue;
        }
        let ident = match &*pat_type.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "task parameters must be plain names (`x: i64`): the name is the keyword argument's name",
                ))
            }
        };
        check_arg_type(&pat_type.ty)?;
        let name = ident.unraw().to_string();
        params.push(Param { ident, name, ty: (*pat_type.ty).clone() });
    }

    let output = match &sig.output {
        ReturnType::Default => Output::Plain(Box::new(syn::parse_quote!(()))),
        ReturnType::Type(_, ty) => output_kind(ty)?,
    };

    Ok(TaskFn { item, ctx, params, output })
}

/// `Some` when `ty` is `TaskContext` / `&TaskContext` (by the last path segment).
fn ctx_kind(ty: &Type) -> syn::Result<Option<CtxParam>> {
    match strip_groups(ty) {
        Type::Reference(r) if is_task_context(&r.elem) => {
            if r.mutability.is_some() {
                return Err(syn::Error::new(
                    r.span(),
                    "take the context as `TaskContext` or `&TaskContext`, not `&mut`",
                ));
            }
            Ok(Some(CtxParam::Borrowed))
        }
        t if is_task_context(t) => Ok(Some(CtxParam::Owned)),
        _ => Ok(None),
    }
}

fn is_task_context(ty: &Type) -> bool {
    matches!(last_segment(ty), Some(seg) if seg.ident == "TaskContext" && seg.arguments.is_none())
}

fn strip_groups(ty: &Type) -> &Type {
    match ty {
        Type::Group(g) => strip_groups(&g.elem),
        Type::Paren(p) => strip_groups(&p.elem),
        other => other,
    }
}

fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match strip_groups(ty) {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last(),
        _ => None,
    }
}

/// Arguments are deserialized from the message, so they must be owned
/// and concrete.
fn check_arg_type(ty: &Type) -> syn::Result<()> {
    match strip_groups(ty) {
        Type::Reference(r) => Err(syn::Error::new(
            r.span(),
            "task arguments are decoded from the message and must be owned types \
             (`String` instead of `&str`, `Vec<T>` instead of `&[T]`)",
        )),
        Type::ImplTrait(t) => Err(syn::Error::new(
            t.span(),
            "`impl Trait` arguments are not supported: use a concrete type that implements Deserialize",
        )),
        _ => Ok(()),
    }
}

/// Detect `Result<T, E>` / `TaskResult` syntactically.
fn output_kind(ty: &Type) -> syn::Result<Output> {
    if let Type::ImplTrait(t) = strip_groups(ty) {
        return Err(syn::Error::new(t.span(), "`impl Trait` return types are not supported: use a concrete type"));
    }
    let Some(seg) = last_segment(ty) else {
        return Ok(Output::Plain(Box::new(ty.clone())));
    };
    if seg.ident == "TaskResult" && seg.arguments.is_none() {
        return Ok(Output::TaskResult);
    }
    if seg.ident != "Result" {
        return Ok(Output::Plain(Box::new(ty.clone())));
    }
    let ok = match &seg.arguments {
        PathArguments::AngleBracketed(args) => args.args.iter().find_map(|a| match a {
            syn::GenericArgument::Type(t) => Some(t.clone()),
            _ => None,
        }),
        _ => None,
    };
    match ok {
        Some(ok) => Ok(Output::Result { ok: Box::new(ok), full: Box::new(ty.clone()) }),
        None => Err(syn::Error::new(
            seg.span(),
            "#[task] cannot tell the success type of this `Result`: write it as `Result<T, E>`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use quote::{quote, ToTokens};

    use super::*;

    fn ok(ts: proc_macro2::TokenStream) -> TaskFn {
        match analyse(syn::parse2(ts).unwrap()) {
            Ok(f) => f,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    fn err(ts: proc_macro2::TokenStream) -> String {
        match analyse(syn::parse2(ts).unwrap()) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    fn text(t: &impl ToTokens) -> String {
        t.to_token_stream().to_string()
    }

    #[test]
    fn finds_context_params_and_output() {
        let f = ok(quote!(
            async fn a(ctx: qtask::TaskContext, mut x: i64, r#type: String) -> Result<u8, E> {}
        ));
        assert_eq!(f.ctx, Some(CtxParam::Owned));
        assert_eq!(f.params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["x", "type"]);
        assert!(matches!(&f.output, Output::Result { ok, .. } if text(ok) == "u8"));
        assert!(f.is_async());

        let f = ok(quote!(
            fn b(ctx: &TaskContext) -> std::io::Result<Vec<u8>> {}
        ));
        assert_eq!(f.ctx, Some(CtxParam::Borrowed));
        assert!(f.params.is_empty());
        assert!(matches!(&f.output, Output::Result { ok, .. } if text(ok) == "Vec < u8 >"));

        let f = ok(quote!(
            fn c(x: Option<String>) {}
        ));
        assert_eq!(f.ctx, None);
        assert!(matches!(&f.output, Output::Plain(t) if text(t) == "()"));

        let f = ok(quote!(
            fn d() -> qcore::TaskResult {}
        ));
        assert!(matches!(&f.output, Output::TaskResult));

        let f = ok(quote!(
            fn e() -> Vec<Result<u8, E>> {}
        ));
        assert!(matches!(&f.output, Output::Plain(_)));
    }

    #[test]
    fn rejects_what_cannot_be_a_task() {
        assert_eq!(
            err(quote!(
                fn a<T>(x: T) {}
            ))
            .split(':')
            .next(),
            Some("#[task] functions cannot be generic")
        );
        assert_eq!(
            err(quote!(
                fn a(x: i64)
                where
                    i64: Copy,
                {
                }
            ))
            .split(':')
            .next(),
            Some("#[task] functions cannot be generic")
        );
        assert!(err(quote!(
            fn a(&self) {}
        ))
        .contains("`self` parameters are not supported"));
        assert_eq!(
            err(quote!(
                unsafe fn a() {}
            )),
            "#[task] cannot be used on an `unsafe fn`"
        );
        assert_eq!(
            err(quote!(
                extern "C" fn a() {}
            )),
            "#[task] cannot be used on an `extern` fn"
        );
        assert_eq!(
            err(quote!(
                fn a(x: i64, ctx: TaskContext) {}
            )),
            "the `TaskContext` parameter must come first"
        );
        assert!(err(quote!(
            fn a(ctx: &mut TaskContext) {}
        ))
        .contains("not `&mut`"));
        assert!(err(quote!(
            fn a((x, y): (i64, i64)) {}
        ))
        .starts_with("task parameters must be plain names"));
        assert!(err(quote!(
            fn a(_: i64) {}
        ))
        .starts_with("task parameters must be plain names"));
        assert!(err(quote!(
            fn a(ref x: i64) {}
        ))
        .starts_with("task parameters must be plain names"));
        assert!(err(quote!(
            fn a(x: &str) {}
        ))
        .starts_with("task arguments are decoded from the message"));
        assert!(err(quote!(
            fn a(x: impl Into<String>) {}
        ))
        .starts_with("`impl Trait` arguments are not supported"));
        assert!(err(quote!(
            fn a() -> impl Send {}
        ))
        .starts_with("`impl Trait` return types are not supported"));
        assert!(err(quote!(
            fn a() -> Result {}
        ))
        .starts_with("#[task] cannot tell the success type"));
    }
}
