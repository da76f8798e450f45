//! `cargo xtask tidy`: the dependency direction of ARCHITECTURE.md, checked
//! on the manifests of `crates/*`.
//!
//! Every crate under `crates/` has one line in [`RULES`]: which project
//! crates and which other crates its normal and build dependencies (also
//! target-specific ones) may name, and which tokio features it may enable
//! (features its own `[features]` turn on through `tokio/...` included).
//! Dev-dependencies are only checked for project crates: besides what the
//! rule allows, tests may use `qcore`, the conformance suites
//! (`qconformance`), the in-memory adapters (`qmemory`) and the crate itself.
//! A crate under `crates/` without a line fails the check, so a new crate
//! gets its rule when it is added.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The crates a dependency list may name (a trailing `*` matches a prefix).
#[derive(Clone, Copy, Debug)]
enum Allow {
    /// Any crate.
    Any,
    /// Only these.
    Only(&'static [&'static str]),
    /// Any crate but these.
    AnyBut(&'static [&'static str]),
}

use Allow::{Any, AnyBut, Only};

impl Allow {
    fn permits(self, name: &str) -> bool {
        match self {
            Any => true,
            Only(list) => matches(list, name),
            AnyBut(list) => !matches(list, name),
        }
    }

    fn describe(self) -> String {
        match self {
            Any => "any".to_string(),
            Only([]) => "none".to_string(),
            Only(list) => format!("only {}", list.join(", ")),
            AnyBut(list) => format!("none of {}", list.join(", ")),
        }
    }
}

fn matches(list: &[&str], name: &str) -> bool {
    list.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => *p == name,
    })
}

/// What one crate may depend on.
#[derive(Debug)]
struct Rule {
    krate: &'static str,
    /// Project crates (`crates/*`).
    project: Allow,
    /// Crates from outside the project.
    external: Allow,
    /// Features of `tokio`.
    tokio: Allow,
    /// The invariant, as ARCHITECTURE.md words it.
    why: &'static str,
}

const fn rule(krate: &'static str, project: Allow, external: Allow, tokio: Allow, why: &'static str) -> Rule {
    Rule { krate, project, external, tokio, why }
}

/// qcore's dependencies today; anything else (a server client, an HTTP
/// stack) would be I/O of its own.
const QCORE_DEPS: &[&str] = &[
    "async-trait",
    "serde",
    "serde_json",
    "rmp-serde",
    "tokio",
    "tracing",
    "thiserror",
    "chrono",
    "uuid",
    "toml",
    "fastrand",
    // "did you mean" for unknown setting names.
    "strsim",
    // Node-name patterns of remote-control requests (`pcre`, `glob`).
    "regex",
];

/// Server clients and HTTP stacks: the I/O of the adapters and the facade.
const SERVER_IO: &[&str] = &["sqlx*", "redis*", "deadpool*", "lapin", "reqwest", "hyper*", "axum*", "tower*"];

/// The same without axum and tower (qmonitor serves its web UI with them)
/// and without sqlx (its own history store, not a broker or a backend).
const SERVER_IO_BUT_WEB_AND_STORE: &[&str] = &["redis*", "deadpool*", "lapin", "reqwest", "hyper*"];

const CORE: Allow = Only(&["qcore"]);
const NONE: Allow = Only(&[]);
const QCORE_TOKIO: Allow = Only(&["sync", "time", "macros", "rt"]);
const PROC_MACRO: Allow = Only(&["syn", "quote", "proc-macro2", "proc-macro-crate"]);
const ADAPTER: &str = "an adapter depends on qcore only, never on another adapter, qworker or qtask";

/// The dependency direction, one line per crate: the crate, the project
/// crates and the other crates it may depend on, its tokio features, and
/// the invariant a breach would break.
const RULES: &[Rule] = &[
    rule("qcore", NONE, Only(QCORE_DEPS), QCORE_TOKIO, "qcore does no I/O of its own"),
    rule("qmacros", NONE, PROC_MACRO, NONE, "qmacros uses proc-macro crates only"),
    rule("qworker", CORE, AnyBut(SERVER_IO), Any, "qworker knows no adapter"),
    rule("qconformance", CORE, AnyBut(SERVER_IO), Any, "the conformance suites know no adapter"),
    rule("qmemory", CORE, Any, Any, ADAPTER),
    rule("qredis", CORE, Any, Any, ADAPTER),
    rule("qamqp", CORE, Any, Any, ADAPTER),
    rule("qsql", CORE, Any, Any, ADAPTER),
    rule("qtask", Any, Any, Any, "the facade sees everything"),
    rule("qbeat", CORE, AnyBut(SERVER_IO), Any, "qbeat sends through the App and knows no adapter"),
    rule(
        "qmonitor",
        CORE,
        AnyBut(SERVER_IO_BUT_WEB_AND_STORE),
        Any,
        "qmonitor knows no adapter (axum/tower serve its UI; sqlx holds its own history, never a broker's or backend's tables)",
    ),
];

/// Project crates every crate's tests may use.
const DEV_PROJECT: &[&str] = &["qcore", "qconformance", "qmemory"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Normal,
    Build,
    Dev,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Normal => "dependency",
            Kind::Build => "build-dependency",
            Kind::Dev => "dev-dependency",
        }
    }
}

/// One dependency of a manifest.
#[derive(Debug)]
struct Dep {
    /// The key in the manifest (what `[features]` refer to).
    key: String,
    /// The package (`package = "..."` when renamed).
    name: String,
    kind: Kind,
    /// A `path` dependency (after workspace inheritance).
    path: bool,
    features: BTreeSet<String>,
}

/// The parts of a `Cargo.toml` the rules look at.
#[derive(Debug)]
struct Manifest {
    name: String,
    deps: Vec<Dep>,
}

fn str_list(v: Option<&toml::Value>) -> impl Iterator<Item = String> + '_ {
    v.and_then(toml::Value::as_array).into_iter().flatten().filter_map(|f| f.as_str().map(str::to_string))
}

/// Read a member's manifest; `workspace` is the root manifest, for
/// `workspace = true` dependencies.
fn parse_manifest(text: &str, workspace: &toml::Table) -> Result<Manifest> {
    let doc: toml::Table = text.parse()?;
    let name = doc
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(toml::Value::as_str)
        .context("no [package] name")?
        .to_string();
    let inherited = workspace.get("workspace").and_then(|w| w.get("dependencies")).and_then(toml::Value::as_table);
    let mut tables: Vec<&toml::Table> = vec![&doc];
    if let Some(targets) = doc.get("target").and_then(toml::Value::as_table) {
        tables.extend(targets.values().filter_map(toml::Value::as_table));
    }
    let mut deps = Vec::new();
    for table in tables {
        for (section, kind) in [
            ("dependencies", Kind::Normal),
            ("build-dependencies", Kind::Build),
            ("build_dependencies", Kind::Build),
            ("dev-dependencies", Kind::Dev),
            ("dev_dependencies", Kind::Dev),
        ] {
            let Some(list) = table.get(section).and_then(toml::Value::as_table) else { continue };
            for (key, spec) in list {
                let mut dep = Dep { key: key.clone(), name: key.clone(), kind, path: false, features: BTreeSet::new() };
                let mut specs = vec![spec];
                if spec.get("workspace").and_then(toml::Value::as_bool) == Some(true) {
                    let base = inherited
                        .and_then(|t| t.get(key))
                        .with_context(|| format!("`{key}` is not in [workspace.dependencies]"))?;
                    specs.push(base);
                }
                for s in specs {
                    if let Some(package) = s.get("package").and_then(toml::Value::as_str) {
                        dep.name = package.to_string();
                    }
                    dep.path |= s.get("path").is_some();
                    dep.features.extend(str_list(s.get("features")));
                }
                deps.push(dep);
            }
        }
    }
    // `[features]` entries `dep/feature` and `dep?/feature` turn on features of a dependency.
    let features = doc.get("features").and_then(toml::Value::as_table);
    for value in features.into_iter().flat_map(|t| t.values()).flat_map(|v| str_list(Some(v))) {
        let Some((key, feature)) = value.split_once('/') else { continue };
        let key = key.trim_end_matches('?');
        for dep in deps.iter_mut().filter(|d| d.key == key && d.kind != Kind::Dev) {
            dep.features.insert(feature.to_string());
        }
    }
    Ok(Manifest { name, deps })
}

/// The breaches of the rules in one manifest, one line each naming the crate
/// and the dependency; `project` are the names of the project's crates.
fn check(manifest: &Manifest, project: &BTreeSet<String>) -> Vec<String> {
    let krate = manifest.name.as_str();
    let Some(rule) = RULES.iter().find(|r| r.krate == krate) else {
        return vec![format!("{krate}: no dependency rule; add one line for it to RULES in xtask/src/tidy.rs")];
    };
    let mut errors = Vec::new();
    for dep in &manifest.deps {
        let name = dep.name.as_str();
        let kind = dep.kind.describe();
        let own = dep.path || project.contains(name);
        let allowed = match (own, dep.kind) {
            (true, Kind::Dev) => name == krate || DEV_PROJECT.contains(&name) || rule.project.permits(name),
            (true, _) => rule.project.permits(name),
            (false, Kind::Dev) => true,
            (false, _) => rule.external.permits(name),
        };
        if !allowed {
            let list = if own { rule.project } else { rule.external };
            errors.push(format!(
                "{krate}: {kind} `{name}` is not allowed ({} crates allowed: {}): {}",
                if own { "project" } else { "other" },
                list.describe(),
                rule.why
            ));
        }
        if name == "tokio" && dep.kind != Kind::Dev {
            for feature in dep.features.iter().filter(|f| !rule.tokio.permits(f)) {
                errors.push(format!(
                    "{krate}: {kind} `tokio` with feature `{feature}` is not allowed (tokio features allowed: {}): {}",
                    rule.tokio.describe(),
                    rule.why
                ));
            }
        }
    }
    errors
}

/// The breaches in the workspace at `root`, or nothing.
fn check_tree(root: &Path) -> Result<Vec<String>> {
    let read = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
    let workspace: toml::Table = read(&root.join("Cargo.toml"))?.parse().context("the root Cargo.toml")?;
    let mut manifests = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(root.join("crates"))?.collect::<Result<_, _>>()?;
    dirs.sort_by_key(|d| d.file_name());
    for dir in dirs {
        let path = dir.path().join("Cargo.toml");
        if path.exists() {
            let m = parse_manifest(&read(&path)?, &workspace).with_context(|| format!("in {}", path.display()))?;
            manifests.push(m);
        }
    }
    let project: BTreeSet<String> =
        manifests.iter().map(|m| m.name.clone()).chain(RULES.iter().map(|r| r.krate.to_string())).collect();
    Ok(manifests.iter().flat_map(|m| check(m, &project)).collect())
}

/// `cargo xtask tidy`.
pub(crate) fn tidy(root: &Path) -> Result<()> {
    let errors = check_tree(root)?;
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("xtask tidy: {e}");
        }
        bail!(
            "{} dependency-direction breach(es) (see ARCHITECTURE.md, \"Dependency direction\"; rules in xtask/src/tidy.rs)",
            errors.len()
        );
    }
    eprintln!("xtask tidy: the dependency direction holds");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKSPACE: &str = r#"
        [workspace.dependencies]
        qcore = { path = "crates/qcore" }
        qamqp = { path = "crates/qamqp" }
        qmemory = { path = "crates/qmemory" }
        qconformance = { path = "crates/qconformance" }
        tokio = { version = "1", default-features = false }
        lapin = "4"
    "#;

    fn errors(manifest: &str) -> Vec<String> {
        let workspace: toml::Table = WORKSPACE.parse().unwrap();
        let m = parse_manifest(manifest, &workspace).unwrap();
        let project = RULES.iter().map(|r| r.krate.to_string()).collect();
        check(&m, &project)
    }

    #[test]
    fn an_adapter_importing_another_adapter_fails() {
        let e = errors(
            r#"
            [package]
            name = "qredis"
            [dependencies]
            qcore.workspace = true
            qamqp.workspace = true
            "#,
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("qredis: dependency `qamqp` is not allowed"), "{e:?}");
    }

    #[test]
    fn adapters_test_with_the_conformance_suites_but_not_with_other_adapters() {
        let ok = errors(
            r#"
            [package]
            name = "qsql"
            [dependencies]
            qcore.workspace = true
            [dev-dependencies]
            qconformance.workspace = true
            qmemory.workspace = true
            qsql = { path = "." }
            "#,
        );
        assert!(ok.is_empty(), "{ok:?}");
        let e = errors(
            r#"
            [package]
            name = "qsql"
            [dev-dependencies]
            qamqp.workspace = true
            "#,
        );
        assert!(e.len() == 1 && e[0].contains("dev-dependency `qamqp`"), "{e:?}");
    }

    #[test]
    fn qcore_doing_io_fails() {
        let e = errors(
            r#"
            [package]
            name = "qcore"
            [features]
            files = ["tokio/fs"]
            [dependencies]
            tokio = { workspace = true, features = ["sync", "net"] }
            [target.'cfg(unix)'.dependencies]
            amqp = { package = "lapin", version = "4" }
            [dev-dependencies]
            tokio = { workspace = true, features = ["rt-multi-thread"] }
            "#,
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e.iter().any(|e| e.contains("`tokio` with feature `net`")), "{e:?}");
        assert!(e.iter().any(|e| e.contains("`tokio` with feature `fs`")), "{e:?}");
        assert!(e.iter().any(|e| e.contains("dependency `lapin`")), "{e:?}");
    }

    #[test]
    fn the_worker_knows_no_adapter_and_macros_only_proc_macro_crates() {
        let e =
            errors("[package]\nname = \"qworker\"\n[dependencies]\nqcore.workspace = true\nqmemory.workspace = true");
        assert!(e.len() == 1 && e[0].contains("`qmemory`"), "{e:?}");
        let e = errors("[package]\nname = \"qmacros\"\n[build-dependencies]\ntokio = \"1\"");
        assert!(e.len() == 1 && e[0].contains("build-dependency `tokio`"), "{e:?}");
    }

    #[test]
    fn a_crate_without_a_rule_fails() {
        let e = errors("[package]\nname = \"qnew\"");
        assert!(e.len() == 1 && e[0].contains("no dependency rule"), "{e:?}");
    }

    #[test]
    fn the_tree_keeps_the_direction() {
        let errors = check_tree(&crate::workspace_root()).unwrap();
        assert!(errors.is_empty(), "{errors:#?}");
    }
}
