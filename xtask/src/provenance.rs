//! What only the driver knows of a run's provenance: the command line and the commit.

use std::time::SystemTime;

use agm_train::run::Provenance;

/// The provenance of a run this process starts (it started at `started`).
pub fn of_this_process(started: SystemTime) -> Provenance {
    let commit = env!("AGM_GIT_COMMIT");
    Provenance {
        started: humantime::format_rfc3339_seconds(started).to_string(),
        ..Provenance::started_now(command_line(), (!commit.is_empty()).then(|| commit.to_string()))
    }
}

/// The command line as the user typed it: `cargo xtask …` (no path of this machine).
fn command_line() -> Vec<String> {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(program) = args.first_mut() {
        let name = std::path::Path::new(program.as_str()).file_stem().map(|n| n.to_string_lossy().into_owned());
        *program = match name.as_deref() {
            Some("xtask") => "cargo xtask".into(),
            Some(other) => other.into(),
            None => program.clone(),
        };
    }
    args
}
