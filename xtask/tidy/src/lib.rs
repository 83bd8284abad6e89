//! The repository's conventions, checked: formatting, one ARCHITECTURE.md section per crate, no
//! absolute machine paths in the docs, a `//!` line atop every Rust file, no trailing
//! whitespace. A package of its own without dependencies, so `cargo tidy` runs in seconds after
//! any change to agm; `cargo xtask tidy` and `cargo test` run the same checks.

use std::path::{Path, PathBuf};

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
pub fn machine_path(line: &str) -> Option<&str> {
    const ROOTS: [&str; 4] = ["/work/", "/home/", "/root/", "/tmp/"];
    line.split(|c: char| c.is_whitespace() || "`'\"()[]".contains(c))
        .find(|word| ROOTS.iter().any(|r| word.starts_with(r)))
}

/// The agm workspace holding `start` (itself included): the nearest ancestor with
/// `xtask/Cargo.toml` and `Cargo.toml`.
pub fn find_workspace(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|dir| dir.join("xtask/Cargo.toml").is_file() && dir.join("Cargo.toml").is_file())
        .map(Path::to_path_buf)
}

/// The workspace a command works on: the one holding the current directory, else the one holding
/// the running binary. A binary copied or moved elsewhere works on where it runs, not on where it
/// was compiled.
pub fn workspace_of_this_process() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    cwd.as_deref().and_then(find_workspace).or_else(|| exe.as_deref().and_then(find_workspace))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().and_then(Path::parent).expect("xtask/tidy in the workspace")
    }

    #[test]
    fn tidy() {
        let problems = super::problems(root());
        assert!(problems.is_empty(), "cargo tidy found:\n{}", problems.join("\n"));
    }

    #[test]
    fn absolute_paths_of_a_machine_are_found_in_docs() {
        assert_eq!(super::machine_path("run from `/work/main`:"), Some("/work/main"));
        assert_eq!(super::machine_path("pip download -d /tmp/twheels torch"), Some("/tmp/twheels"));
        assert_eq!(super::machine_path("see docs/cuda.md and target/xtask/release/xtask"), None);
        assert_eq!(super::machine_path("cache in `~/.cache/agm-cuda-13.0`"), None);
    }

    #[test]
    fn the_workspace_is_found_from_a_folder_inside_it_and_not_from_elsewhere() {
        assert_eq!(super::find_workspace(&root().join("crates/agm-core/src")).as_deref(), Some(root()));
        let tmp = std::env::temp_dir().join(format!("xtask-tidy-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("xtask")).unwrap();
        assert_eq!(super::find_workspace(&tmp), None);
        // A copy of the workspace's layout elsewhere is found there, not at the build location.
        std::fs::write(tmp.join("Cargo.toml"), "[workspace]\n").unwrap();
        std::fs::write(tmp.join("xtask/Cargo.toml"), "[package]\n").unwrap();
        assert_eq!(super::find_workspace(&tmp.join("xtask")).as_deref(), Some(tmp.as_path()));
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
