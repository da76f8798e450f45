//! Which path the generated code uses to reach qcore's items: `::qtask`
//! (the facade), `::qcore`, `crate` (inside those crates), or the
//! `crate = "..."` override.

use proc_macro2::{Span, TokenStream};
use proc_macro_crate::{crate_name, Error, FoundCrate};
use quote::quote;

/// The crates that export everything the generated code names, in order of preference.
const CANDIDATES: [&str; 2] = ["qtask", "qcore"];

/// The root path, from `Cargo.toml` of the crate being compiled.
pub(crate) fn detect() -> syn::Result<TokenStream> {
    let env = |k: &str| std::env::var(k).ok();
    let mut manifest_error = None;
    let mut in_own_library = false;
    for name in CANDIDATES {
        match crate_name(name) {
            Ok(found) => {
                match path_for(
                    name,
                    found,
                    env("CARGO_CRATE_NAME").as_deref(),
                    env("CARGO_BIN_NAME").is_some(),
                    env("UNSTABLE_RUSTDOC_TEST_PATH").is_some(),
                ) {
                    Some(path) => return Ok(path),
                    // Inside qtask's library, `crate::__private::async_trait` would go through
                    // `pub use qcore::*` at the root while the root still has macros to expand,
                    // which rustc cannot resolve: use qcore itself when it is a dependency.
                    None => in_own_library = true,
                }
            }
            Err(Error::CrateNotFound { .. }) => {}
            Err(e) => manifest_error = Some(e),
        }
    }
    if in_own_library {
        return Ok(quote!(crate));
    }
    match manifest_error {
        // No readable Cargo.toml (a build without cargo): assume the facade.
        Some(_) => Ok(quote!(::qtask)),
        None => Err(syn::Error::new(
            Span::call_site(),
            "#[task] could not find `qtask` or `qcore` in this crate's Cargo.toml dependencies; \
             add one of them, or name the path with `#[task(crate = \"...\")]`",
        )),
    }
}

/// The path for a found crate, `None` for "the library being compiled is
/// `name`" (reached as `crate`). `Itself` means the package being compiled
/// is `name`: its library is `crate`, while its binaries, examples,
/// integration tests, benches and doctests are other crates that link the
/// library as `::name`.
fn path_for(
    name: &str,
    found: FoundCrate,
    crate_name: Option<&str>,
    is_bin: bool,
    is_doctest: bool,
) -> Option<TokenStream> {
    let ident = match found {
        FoundCrate::Name(n) => n,
        FoundCrate::Itself => {
            let lib = name.replace('-', "_");
            if crate_name == Some(lib.as_str()) && !is_bin && !is_doctest {
                return None;
            }
            lib
        }
    };
    let ident = syn::Ident::new(&ident, Span::call_site());
    Some(quote!(::#ident))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ts: Option<TokenStream>) -> String {
        ts.map_or_else(|| "crate".into(), |t| t.to_string())
    }

    #[test]
    fn dependency_names_are_absolute() {
        assert_eq!(s(path_for("qtask", FoundCrate::Name("qtask".into()), Some("app"), false, false)), ":: qtask");
        assert_eq!(s(path_for("qtask", FoundCrate::Name("tasks_rt".into()), Some("app"), true, true)), ":: tasks_rt");
    }

    #[test]
    fn itself_is_crate_only_in_its_library() {
        assert_eq!(s(path_for("qtask", FoundCrate::Itself, Some("qtask"), false, false)), "crate");
        // `cargo test` of the library itself (unit tests) is the same crate.
        assert_eq!(s(path_for("qcore", FoundCrate::Itself, Some("qcore"), false, false)), "crate");
        // The `qtask` CLI binary has the same crate name but links the library.
        assert_eq!(s(path_for("qtask", FoundCrate::Itself, Some("qtask"), true, false)), ":: qtask");
        // Integration tests, examples and benches have their own crate names.
        assert_eq!(s(path_for("qtask", FoundCrate::Itself, Some("smoke"), false, false)), ":: qtask");
        // Doctests carry the library's crate name but are separate crates.
        assert_eq!(s(path_for("qtask", FoundCrate::Itself, Some("qtask"), false, true)), ":: qtask");
    }

    #[test]
    fn detects_qcore_from_this_crates_dev_dependencies() {
        // qmacros's own Cargo.toml has qcore (not qtask) as a dev-dependency.
        assert_eq!(detect().unwrap().to_string(), ":: qcore");
    }
}
