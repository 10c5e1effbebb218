//! Workspace conventions that no compiler checks. `cargo test` runs them too (see the test at
//! the bottom), so they cannot silently rot.

use std::{fs, path::Path};

/// Checks every library crate under `crates/`; returns one line per problem.
pub(crate) fn check(root: &Path) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let crates = fs::read_dir(root.join("crates")).map_err(|e| vec![format!("crates/: {e}")])?;
    for entry in crates.flatten() {
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        for file in ["README.md", "CHANGELOG.md", "Cargo.toml", "src/lib.rs"] {
            if !dir.join(file).is_file() {
                problems.push(format!("crates/{name}: missing {file}"));
            }
        }
        let manifest = fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
        if !manifest.contains("\ndescription = ") {
            problems.push(format!("crates/{name}/Cargo.toml: no description"));
        }
        if !manifest.contains("[lints]\nworkspace = true") {
            problems.push(format!(
                "crates/{name}/Cargo.toml: does not use the workspace lints"
            ));
        }
        let lib = fs::read_to_string(dir.join("src/lib.rs")).unwrap_or_default();
        if !lib.contains("#![deny(missing_docs)]") {
            problems.push(format!(
                "crates/{name}/src/lib.rs: no #![deny(missing_docs)]"
            ));
        }
        if !lib.starts_with("//!") {
            problems.push(format!(
                "crates/{name}/src/lib.rs: no crate docs at the top"
            ));
        }
        let changelog = fs::read_to_string(dir.join("CHANGELOG.md")).unwrap_or_default();
        if !changelog.contains("# Unreleased") {
            problems.push(format!(
                "crates/{name}/CHANGELOG.md: no `# Unreleased` section"
            ));
        }
        check_sources(&dir.join("src"), &name, &mut problems);
        // The test kit's client is tokio-tungstenite by design, behind our own types; it is
        // checked like the rest.
        check_public_signatures(&dir.join("src"), &mut problems);
    }
    if !root.join("ARCHITECTURE.md").is_file() {
        problems.push("ARCHITECTURE.md is missing".to_owned());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Every source file opens with its module docs; library code logs through `tracing`, never
/// straight to the terminal.
fn check_sources(dir: &Path, crate_name: &str, problems: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            check_sources(&path, crate_name, problems);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path).unwrap_or_default();
            if !text.starts_with("//!") {
                problems.push(format!(
                    "{}: no module docs (`//!`) at the top",
                    path.display()
                ));
            }
            for (number, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                if ["println!(", "eprintln!(", "dbg!("]
                    .iter()
                    .any(|m| code.contains(m))
                {
                    problems.push(format!(
                        "{}:{}: print in library code ({crate_name}); log with tracing",
                        path.display(),
                        number + 1
                    ));
                }
            }
        }
    }
}

/// Crates whose types must not appear in our public API: the engines and transports under
/// it, which we may swap without a breaking change (ARCHITECTURE.md, "Cross-cutting
/// concerns: Public types"). axum, http, bytes, serde, tokio, tower, futures and tracing
/// types are allowed: they are the documented surface users already program against.
const HIDDEN_DEPENDENCIES: [&str; 20] = [
    "sockudo_ws",
    "tungstenite",
    "tokio_tungstenite",
    "redis",
    "flate2",
    "zlib_rs",
    "hyper",
    "hyper_util",
    "rustls",
    "tokio_rustls",
    "webpki_roots",
    "backon",
    "simdutf8",
    "hmac",
    "sha1",
    "sha2",
    "base64",
    "getrandom",
    "bytestring",
    "metrics_exporter_prometheus",
];

/// Flags a hidden dependency's path in a public item's signature (`pub fn`, `pub struct` and
/// its `pub` fields, `pub type`, `pub use`, ...) or in an `impl` header (`impl From<dep::X>
/// for Ours` is public whenever `Ours` is). Items reachable only inside the crate are
/// `pub(crate)` here (the workspace denies `unreachable_pub`), so `pub` means public.
fn check_public_signatures(dir: &Path, problems: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            check_public_signatures(&path, problems);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path).unwrap_or_default();
            for (line, signature) in public_signatures(&text) {
                if let Some(dependency) = hidden_dependency_in(&signature) {
                    problems.push(format!(
                        "{}:{line}: `{dependency}::` type in a public signature; wrap it in \
                         one of ours",
                        path.display()
                    ));
                }
            }
        }
    }
}

/// Each public item's signature (from `pub` or `impl` to the first `{` or `;`, so bodies are
/// skipped; a field to the end of its line; a `pub enum` or `pub trait` with its whole body,
/// whose variants and methods are public without `pub`), with the line it starts on. Test
/// modules (after `#[cfg(test)]`) are left out.
fn public_signatures(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    // The item being read: its first line, its text, and for a whole body the brace depth.
    let mut current: Option<(usize, String, Option<i32>)> = None;
    for (number, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        if current.is_none() {
            let public = code.starts_with("pub ") && !code.starts_with("pub mod ");
            let implementation = code.starts_with("impl ") || code.starts_with("impl<");
            if !(public || implementation) {
                continue;
            }
            let whole_body = code.starts_with("pub enum ") || code.starts_with("pub trait ");
            current = Some((number + 1, String::new(), whole_body.then_some(0)));
        }
        let Some((start, mut signature, depth)) = current.take() else {
            continue;
        };
        if let Some(depth) = depth {
            signature.push_str(code);
            signature.push(' ');
            let opened = code.matches('{').count() as i32 - code.matches('}').count() as i32;
            let depth = depth + opened;
            if depth <= 0 && (code.contains('}') || code.ends_with(';')) {
                found.push((start, signature));
            } else {
                current = Some((start, signature, Some(depth)));
            }
            continue;
        }
        let end = code.find(['{', ';']).unwrap_or(code.len());
        signature.push_str(&code[..end]);
        signature.push(' ');
        // A field (`pub name: Type,`) ends with its line.
        let field = signature
            .strip_prefix("pub ")
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(name, _)| name.chars().all(|c| c.is_alphanumeric() || c == '_'));
        if end < code.len() || field {
            found.push((start, signature));
        } else {
            current = Some((start, signature, None));
        }
    }
    found
}

/// The first hidden dependency named as a path (`dep::`) in `signature`.
fn hidden_dependency_in(signature: &str) -> Option<&'static str> {
    HIDDEN_DEPENDENCIES.into_iter().find(|dependency| {
        signature
            .match_indices(&format!("{dependency}::"))
            .any(|(at, _)| {
                // A whole path segment: `redis::` but not `ws_backplane_redis::`.
                !signature[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
            })
    })
}

#[cfg(test)]
mod tests {
    use super::{hidden_dependency_in, public_signatures};

    #[test]
    fn a_dependency_type_in_a_public_signature_is_found() {
        let source = "\
pub fn dial(\n    url: &str,\n) -> Result<tokio_tungstenite::WebSocketStream<S>, Error> {\n    todo\n}
impl From<redis::RedisError> for Error {}
pub struct Options {
    pub config: ws_backplane_redis::Settings,
}
fn private(e: redis::RedisError) {}
pub(crate) fn internal(e: redis::RedisError) {}
pub enum RedisBackplaneError {
    Url {
        url: String,
        source: redis::RedisError,
    },
}
pub fn after() {}
pub trait Engine {
    fn socket(&self) -> &hyper::upgrade::Upgraded;
}
";
        let source = source.replace("\\n", "\n");
        let hits: Vec<_> = public_signatures(&source)
            .into_iter()
            .filter_map(|(line, signature)| hidden_dependency_in(&signature).map(|d| (line, d)))
            .collect();
        assert_eq!(
            hits,
            [
                (1, "tokio_tungstenite"),
                (6, "redis"),
                (12, "redis"),
                (19, "hyper")
            ]
        );
    }

    #[test]
    fn workspace_is_tidy() {
        if let Err(problems) = super::check(&crate::project_root()) {
            panic!("tidy found problems:\n{}", problems.join("\n"));
        }
    }
}
