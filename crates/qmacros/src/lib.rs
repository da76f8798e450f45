//! # qmacros
//!
//! The [`#[task]`](macro@task) attribute of qtask: it turns an `async fn` or
//! a plain `fn` into a typed task — a unit struct implementing `qcore::Task`
//! that binds Celery's `args`/`kwargs` to the function's parameters, plus
//! helpers to build signatures and to call the function directly.
//!
//! Users normally reach it through the facade, as `qtask::task`; it works
//! just as well with only `qcore` as a dependency.
//!
//! ```
//! # mod qtask { pub use qcore::*; pub use qmacros::task; }
//! use qtask::task;
//!
//! /// Add two numbers.
//! #[task(name = "tasks.add")]
//! async fn add(x: i64, y: i64) -> i64 {
//!     x + y
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! assert_eq!(add::NAME, "tasks.add");
//! assert_eq!(add::call(2, 3).await, 5);
//! assert_eq!(add::s(2, 3).signature().args, [serde_json::json!(2), serde_json::json!(3)]);
//! # }
//! ```

mod attr;
mod expand;
mod func;
mod root;

use proc_macro::TokenStream;

#[doc = include_str!("../docs/task.md")]
#[proc_macro_attribute]
pub fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    match expand::expand(args.into(), item.clone()) {
        Ok(ts) => ts.into(),
        // Keep the function so that the error above is the only one.
        Err(e) => {
            let mut out = e.to_compile_error();
            out.extend(item);
            out.into()
        }
    }
}
