//! `cargo xtask tidy`: formatting and repository conventions. Also a test, so `cargo test`
//! enforces it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "target" || n.to_string_lossy().starts_with('.')) {
                continue;
            }
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every problem found, one line each.
pub fn problems(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let fmt = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["fmt", "--all", "--check"])
        .current_dir(root)
        .output();
    match fmt {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let listing = String::from_utf8_lossy(&o.stdout);
            let files: Vec<&str> = listing.lines().filter(|l| l.starts_with("Diff in")).collect();
            problems.push(format!("code is not formatted (run `cargo fmt --all`): {}", files.join("; ")));
        }
        Err(e) => problems.push(format!("cannot run `cargo fmt`: {e}")),
    }
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap_or_default();
    if let Ok(crates) = std::fs::read_dir(root.join("crates")) {
        for c in crates.flatten() {
            let name = c.file_name().to_string_lossy().to_string();
            if !architecture.contains(&format!("### `{name}`")) {
                problems.push(format!("crates/{name} has no `### `{name}`` section in ARCHITECTURE.md"));
            }
        }
    }
    // The docs speak to users on any machine: no absolute paths of this one.
    let mut docs = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    if let Ok(entries) = std::fs::read_dir(root.join("docs")) {
        docs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "md")));
    }
    for doc in docs {
        let text = std::fs::read_to_string(&doc).unwrap_or_default();
        let rel = doc.strip_prefix(root).unwrap_or(&doc).display().to_string();
        for (i, line) in text.lines().enumerate() {
            if let Some(path) = machine_path(line) {
                problems.push(format!(
                    "{rel}:{}: absolute path of one machine (`{path}`); use a path in the repository or a placeholder",
                    i + 1
                ));
            }
        }
    }
    let mut files = Vec::new();
    for dir in ["crates", "xtask", "benches"] {
        rust_files(&root.join(dir), &mut files);
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let rel = f.strip_prefix(root).unwrap_or(&f).display().to_string();
        if !text.starts_with("//!") {
            problems.push(format!("{rel}: must start with a `//!` doc line saying what the file is for"));
        }
        if let Some((i, _)) = text.lines().enumerate().find(|(_, l)| l.ends_with(' ') || l.ends_with('\t')) {
            problems.push(format!("{rel}:{}: trailing whitespace", i + 1));
        }
    }
    problems
}

/// An absolute path of a particular machine in a line of documentation, if any.
fn machine_path(line: &str) -> Option<&str> {
    const ROOTS: [&str; 4] = ["/work/", "/home/", "/root/", "/tmp/"];
    line.split(|c: char| c.is_whitespace() || "`'\"()[]".contains(c))
        .find(|word| ROOTS.iter().any(|r| word.starts_with(r)))
}

pub fn run() -> anyhow::Result<ExitCode> {
    let problems = problems(&crate::workspace_root());
    for p in &problems {
        println!("{p}");
    }
    if problems.is_empty() {
        println!("tidy: ok");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("tidy: {} problem(s)", problems.len());
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tidy() {
        let problems = super::problems(&crate::workspace_root());
        assert!(problems.is_empty(), "cargo xtask tidy found:\n{}", problems.join("\n"));
    }

    #[test]
    fn absolute_paths_of_a_machine_are_found_in_docs() {
        assert_eq!(super::machine_path("run from `/work/main`:"), Some("/work/main"));
        assert_eq!(super::machine_path("pip download -d /tmp/twheels torch"), Some("/tmp/twheels"));
        assert_eq!(super::machine_path("see docs/cuda.md and target/xtask/release/xtask"), None);
        assert_eq!(super::machine_path("cache in `~/.cache/agm-cuda-13.0`"), None);
    }
}
