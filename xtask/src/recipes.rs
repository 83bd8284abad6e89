//! `cargo xtask recipes`: the paper experiments `--recipe` accepts, one line each.

use std::process::ExitCode;

use agm_train::recipes::RECIPES;

/// `name  summary` lines, grouped by dataset in registry order.
pub fn listing() -> Vec<String> {
    let width = RECIPES.iter().map(|r| r.name.len()).max().unwrap_or(0);
    RECIPES.iter().map(|r| format!("{:<width$}  {}", r.name, r.summary())).collect()
}

pub fn run() -> anyhow::Result<ExitCode> {
    println!("Paper experiments (configs/<name>.toml; `cargo xtask train --recipe <name> --data <path>`,");
    println!("`--print-config` shows every value and where it came from; docs/reproduce.md):");
    println!();
    for line in listing() {
        println!("  {line}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_recipe_has_a_line_with_its_summary() {
        let lines = super::listing();
        assert_eq!(lines.len(), agm_train::recipes::RECIPES.len());
        assert!(lines.iter().any(|l| l.starts_with("avmnist-agm-late") && l.contains("AV-MNIST, late fusion, AGM")));
        assert!(lines.iter().all(|l| l.split_whitespace().count() > 3), "{lines:#?}");
    }
}
