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

/// Library code logs through `tracing`, never straight to the terminal.
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

#[cfg(test)]
mod tests {
    #[test]
    fn workspace_is_tidy() {
        if let Err(problems) = super::check(&crate::project_root()) {
            panic!("tidy found problems:\n{}", problems.join("\n"));
        }
    }
}
