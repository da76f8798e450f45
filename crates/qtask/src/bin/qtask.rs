//! The `qtask` command line: [`qtask::cli`] without tasks, so every command
//! but `worker` (a worker runs in the binary that holds the tasks).
//!
//! ```text
//! qtask [-b URL] [--backend URL] call NAME [-a JSON] [-k JSON] [-Q QUEUE] [--countdown SECS] [--wait SECS]
//! qtask [-b URL] [--backend URL] result ID
//! qtask [-b URL] purge [-Q QUEUES] [-X QUEUES] [-f]
//! qtask [-b URL] events [--dump]
//! qtask report
//! ```
//!
//! Settings come from the TOML file named by `QTASK_CONFIG`, then the
//! environment (`QTASK_<SETTING>`, then `CELERY_<SETTING>`); the URL flags
//! win over both. With no URL anywhere, the embedded default
//! `sqlite://qtask.db` (in the working directory) for both. An unknown
//! setting is an error naming the closest one.

use std::process::ExitCode;

fn main() -> ExitCode {
    qtask::cli::Cli::new("qtask").run()
}
