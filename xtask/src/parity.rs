//! `cargo xtask parity`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::ParityArgs;

pub fn run(args: ParityArgs) -> anyhow::Result<ExitCode> {
    let cases = case_dirs(&args.cases)?;
    let mut failed = 0;
    for dir in &cases {
        match agm_train::parity::run_case(dir) {
            Ok(report) => {
                println!("{report}");
                if !report.passed() {
                    failed += 1;
                }
            }
            Err(e) => {
                println!("{}: ERROR {e}", dir.display());
                failed += 1;
            }
        }
    }
    println!("{} passed, {} failed", cases.len() - failed, failed);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Whether `dir` is a case folder (it holds `case.json`).
fn is_case(dir: &Path) -> bool {
    dir.join("case.json").is_file()
}

/// The case folders `paths` name: a case folder as it is, and a folder of case folders (no
/// `case.json` of its own) as its subfolders that hold one, in sorted order; a `case.json` file as
/// its folder. Anything else is kept, so its replay reports what is wrong with it.
fn case_dirs(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut cases = Vec::new();
    for path in paths {
        // `…/case.json` names its folder.
        if path.is_file() && path.file_name() == Some(std::ffi::OsStr::new("case.json")) {
            cases.push(path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf));
            continue;
        }
        if !path.exists() {
            let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
            anyhow::bail!("{}: no such case folder (a relative path starts at {cwd})", path.display());
        }
        if !path.is_dir() || is_case(path) {
            cases.push(path.clone());
            continue;
        }
        let entries = std::fs::read_dir(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let mut inside: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| is_case(p)).collect();
        if inside.is_empty() {
            // A case folder without its case.json: the replay says so.
            cases.push(path.clone());
        }
        inside.sort();
        cases.extend(inside);
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_of_cases_expands_to_its_case_folders_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("golden");
        for case in ["b", "a", "c"] {
            std::fs::create_dir_all(root.join(case)).unwrap();
            std::fs::write(root.join(case).join("case.json"), "{}").unwrap();
        }
        // Not cases: a document and a folder without case.json.
        std::fs::write(root.join("FORMAT.md"), "# format").unwrap();
        std::fs::create_dir_all(root.join("notes")).unwrap();
        let expanded = case_dirs(std::slice::from_ref(&root)).unwrap();
        assert_eq!(expanded, ["a", "b", "c"].map(|c| root.join(c)));
        // Case folders given one by one stay as given, in their order.
        let given = [root.join("c"), root.join("a")];
        assert_eq!(case_dirs(&given).unwrap(), given);
        // A folder without case.json or cases stays, so its replay reports the missing case.json.
        assert_eq!(case_dirs(&[root.join("notes")]).unwrap(), [root.join("notes")]);
        // A case's case.json names its folder; another file stays, for the replay to refuse.
        assert_eq!(case_dirs(&[root.join("b/case.json")]).unwrap(), [root.join("b")]);
        assert_eq!(case_dirs(&[root.join("FORMAT.md")]).unwrap(), [root.join("FORMAT.md")]);
        let err = agm_train::parity::run_case(&root.join("FORMAT.md")).unwrap_err().to_string();
        assert!(err.contains("a file, not a case folder"), "{err}");
        // A path that does not exist is a mistake in the command, not a failed case.
        let err = case_dirs(&[root.join("gold")]).unwrap_err().to_string();
        assert!(err.contains("gold: no such case folder") && err.contains("relative path starts at"), "{err}");
    }

    #[test]
    fn the_committed_golden_folder_replays_as_the_readme_says() {
        let golden = crate::workspace_root().join("tests/fixtures/golden");
        let cases = case_dirs(std::slice::from_ref(&golden)).unwrap();
        assert!(cases.len() >= 5 && cases.iter().all(|c| is_case(c)), "{cases:?}");
        assert!(golden.join("FORMAT.md").is_file(), "tests/fixtures/golden/FORMAT.md, the cases' format, is missing");
    }
}
