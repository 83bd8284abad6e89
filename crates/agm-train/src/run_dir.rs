//! The run directory: everything a run writes, under one folder.
//!
//! ```text
//! <run-dir>/config.toml              the resolved configuration
//! <run-dir>/metrics.jsonl            one JSON object per finished epoch
//! <run-dir>/checkpoint.safetensors   the latest state (resume from here)
//! <run-dir>/best.safetensors         the weights of the best validation epoch
//! <run-dir>/summary.json             the final summary
//! <run-dir>/.lock                     held (advisory, exclusive) by the run writing here
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

/// The lock of a run directory ([`RunDir::lock`]); released on drop.
#[derive(Debug)]
pub struct RunLock {
    file: std::fs::File,
}

impl Drop for RunLock {
    /// Clears the holder's pid before the lock goes, so the next holder's file starts empty and
    /// a refused run never names a process that has ended.
    fn drop(&mut self) {
        // Best effort: the pid is only for messages.
        let _ = self.file.set_len(0);
    }
}

/// Paths of a run directory.
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Opens (and creates) a run directory.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        create_dirs(&root)?;
        Ok(Self { root })
    }

    /// Creates a new directory `<parent>/<stem>`, or `<stem>-2`, `<stem>-3`, … when the name is
    /// taken. The creation itself decides (no check-then-create race), so two runs started
    /// together never share a directory.
    pub fn create_unique(parent: &Path, stem: &str) -> Result<Self> {
        create_dirs(parent)?;
        for k in 1..=1000 {
            let root = parent.join(if k == 1 { stem.to_string() } else { format!("{stem}-{k}") });
            match std::fs::create_dir(&root) {
                Ok(()) => return Ok(Self { root }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(TrainError::io(&root, e)),
            }
        }
        Err(TrainError::io(
            parent.join(stem),
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, "1000 directories of this name exist; pass --out"),
        ))
    }

    /// Opens an existing run directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        if root.is_file() {
            return Err(TrainError::io(
                &root,
                std::io::Error::other(
                    "a file, not a run directory (a weights file is evaluated with `cargo xtask eval --weights`)",
                ),
            ));
        }
        if !root.is_dir() {
            return Err(TrainError::io(
                &root,
                std::io::Error::new(std::io::ErrorKind::NotFound, "run directory not found"),
            ));
        }
        Ok(Self { root })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the directory's exclusive lock for as long as the returned guard lives, so two
    /// runs can never write one directory; the operating system releases it when the process
    /// ends, however it ends.
    pub fn lock(&self) -> Result<RunLock> {
        let path = self.root.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {
                // The holder's process id, so a refused run can say which process to wait for.
                // Best effort: the lock itself is what excludes.
                let _ = file.set_len(0).and_then(|()| (&file).write_all(std::process::id().to_string().as_bytes()));
                self.remove_stale_temporaries();
                Ok(RunLock { file })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = Self::holder_pid(&path);
                Err(TrainError::Config(format!(
                    "{} is in use by another run ({}it holds {}); wait for that run to end or choose another --out",
                    self.root.display(),
                    holder.map_or_else(String::new, |pid| format!("pid {pid}; ")),
                    path.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(TrainError::io(&path, e)),
        }
    }

    /// The lock holder's pid, read from its `.lock`. A holder writes it just after taking the
    /// lock, so a run refused in that instant waits a little for it.
    fn holder_pid(path: &Path) -> Option<u32> {
        for _ in 0..20 {
            if let Some(pid) = std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse::<u32>().ok()) {
                return Some(pid);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        None
    }

    /// Removes what writers killed mid-write left: `<name>.<pid>.<k>.tmp` files of
    /// [`crate::checkpoint::write_atomic`] here and in `report/`. Only the lock holder calls
    /// this, so no live writer owns them.
    fn remove_stale_temporaries(&self) {
        for dir in [self.root.clone(), self.report()] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for path in entries.flatten().map(|e| e.path()) {
                if path.extension().is_some_and(|x| x == "tmp") && path.is_file() {
                    // Best effort: a leftover that cannot be removed harms nothing.
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }

    /// Removes what a run that never reached its first checkpoint wrote here (its config,
    /// metrics, best weights, report, lock and temporaries), then the directory itself if that
    /// leaves it empty. Best effort: anything else in the directory stays.
    pub fn remove_unstarted(&self) {
        let root = &self.root;
        for path in [self.config(), self.metrics(), self.metrics_csv(), self.best(), self.summary(), root.join(".lock")]
        {
            let _ = std::fs::remove_file(path);
        }
        self.remove_stale_temporaries();
        let _ = std::fs::remove_dir_all(self.report());
        let _ = std::fs::remove_dir(&self.root);
    }

    /// Whether the directory holds nothing but what a run killed before it wrote its
    /// `config.toml` leaves: its `.lock` and temporaries (an empty directory too).
    pub fn holds_only_leftovers(&self) -> bool {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return false };
        entries.flatten().all(|e| {
            let path = e.path();
            path.is_file() && (e.file_name() == ".lock" || path.extension().is_some_and(|x| x == "tmp"))
        })
    }

    /// Whether the directory holds anything a run wrote (a config, metrics or a checkpoint).
    pub fn holds_run_state(&self) -> bool {
        [self.config(), self.metrics(), self.checkpoint(), self.best()].iter().any(|p| p.exists())
    }
    /// `config.toml`: the resolved configuration the run trains with.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// `metrics.jsonl`: one JSON row per finished epoch ([`crate::EpochSummary`]).
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    /// Lines of `metrics.jsonl`, one per finished epoch (0 without the file).
    pub fn metrics_rows(&self) -> usize {
        std::fs::read_to_string(self.metrics()).map_or(0, |t| t.lines().count())
    }
    /// The per-epoch table the report writes beside `metrics.jsonl`.
    pub fn metrics_csv(&self) -> PathBuf {
        self.root.join("metrics.csv")
    }
    /// The report's folder (plots and tables).
    pub fn report(&self) -> PathBuf {
        self.root.join("report")
    }
    /// `checkpoint.safetensors`: the latest state, which a resume continues from.
    pub fn checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint.safetensors")
    }
    /// `best.safetensors`: the model and method variables of the best validation epoch, and the
    /// method's state of that epoch where it has one.
    pub fn best(&self) -> PathBuf {
        self.root.join("best.safetensors")
    }
    /// `summary.json`: a finished run's outcome ([`crate::run::RunOutcome`]).
    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }

    /// The run's recorded configuration (`config.toml`).
    pub fn read_config(&self) -> Result<crate::RunConfig> {
        let path = self.config();
        if !path.is_file() {
            for (file, kind) in [("study.json", "study"), ("reproduce.json", "reproduction")] {
                if self.root.join(file).is_file() {
                    let mut runs: Vec<PathBuf> = std::fs::read_dir(&self.root)
                        .into_iter()
                        .flatten()
                        .filter_map(|e| Some(e.ok()?.path()))
                        .filter(|p| p.join("config.toml").is_file())
                        .collect();
                    runs.sort();
                    let example = runs.into_iter().next();
                    return Err(TrainError::NotARunDirectory { dir: self.root.clone(), kind, example });
                }
            }
            return Err(TrainError::MissingRunFile { path, dir: self.root.clone() });
        }
        crate::RunConfig::from_toml_file(&path)
    }

    /// Appends one JSON line to `metrics.jsonl`.
    pub fn append_metrics<T: serde::Serialize>(&self, row: &T) -> Result<()> {
        let path = self.metrics();
        let line = serde_json::to_string(row).map_err(|e| TrainError::Config(format!("metrics row: {e}")))?;
        let mut f =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| TrainError::io(&path, e))?;
        writeln!(f, "{line}").map_err(|e| TrainError::io(&path, e))
    }

    /// Keeps only the metrics rows of epochs `<= last_epoch` (a resumed run writes the rest
    /// again). Nothing else is dropped: a line that does not read as a row is refused by number,
    /// except a torn last line after all the checkpoint's rows (a writer killed mid-append), and
    /// so is a missing file once epochs finished.
    pub fn truncate_metrics(&self, last_epoch: usize) -> Result<()> {
        let path = self.metrics();
        let refuse = |message: String| Err(TrainError::MetricsFile { path: path.clone(), message });
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && last_epoch == 0 => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return refuse(format!(
                    "missing, but the checkpoint is at the end of epoch {last_epoch}, and a resume cannot write \
                     those epochs' rows again: restore the file, or create it empty to resume without them"
                ))
            }
            Err(e) => return Err(TrainError::io(&path, e)),
        };
        let epoch_of = |l: &[u8]| {
            let row: serde_json::Value = serde_json::from_slice(l).ok()?;
            row.get("epoch")?.as_u64().map(|e| e as usize)
        };
        let lines: Vec<&[u8]> = match bytes.is_empty() {
            true => Vec::new(),
            false => bytes.strip_suffix(b"\n").unwrap_or(&bytes).split(|&b| b == b'\n').collect(),
        };
        let (mut kept, mut damaged) = (Vec::new(), Vec::new());
        for (i, line) in lines.iter().enumerate() {
            match epoch_of(line) {
                Some(epoch) if epoch <= last_epoch => kept.push((epoch, *line)),
                Some(_) => {}
                None => damaged.push(i + 1),
            }
        }
        let present: std::collections::BTreeSet<usize> = kept.iter().map(|&(e, _)| e).collect();
        let missing: Vec<usize> = (1..=last_epoch).filter(|e| !present.contains(e)).collect();
        // A writer killed mid-append tears only the row after the checkpoint's epochs, which
        // are then all there.
        if damaged.last() == Some(&lines.len()) && !bytes.ends_with(b"\n") && missing.is_empty() {
            damaged.pop();
        }
        let damaged: Vec<String> = damaged.iter().map(usize::to_string).collect();
        if !damaged.is_empty() {
            let (what, those) = match damaged.len() {
                1 => (format!("line {} is not a metrics row", damaged[0]), "that line"),
                _ => (format!("lines {} are not metrics rows", damaged.join(", ")), "those lines"),
            };
            return refuse(format!(
                "{what}, and a resume rewrites the file without such lines: restore it, or remove {those} to \
                 resume without them"
            ));
        }
        // Rows removed by hand stay removed: say which epochs the file lacks.
        if !missing.is_empty() {
            tracing::warn!("{} lacks the rows of epochs {missing:?} (removed lines)", path.display());
        }
        let kept: Vec<u8> = kept.iter().flat_map(|(_, l)| l.iter().copied().chain([b'\n'])).collect();
        crate::checkpoint::write_atomic(&path, &kept)
    }

    /// Reads every metrics row; a run that has none yet (no `metrics.jsonl` beside its
    /// `config.toml`) is an error saying so and how to continue it.
    pub fn read_metrics<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>> {
        let path = self.metrics();
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound if self.config().is_file() => {
                TrainError::NoFinishedEpoch { path: path.clone(), dir: self.root.clone() }
            }
            _ => TrainError::io(&path, e),
        })?;
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| TrainError::MetricsRow {
                    path: path.clone(),
                    line: i + 1,
                    reason: e.to_string(),
                })
            })
            .collect()
    }
}

/// `create_dir_all`, naming the file that stands where a folder is needed.
fn create_dirs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| file_in_the_way(dir, "run directory").unwrap_or(TrainError::io(dir, e)))
}

/// The error for a file that stands where the folder `dir` (a `what`) or one above it must be.
pub(crate) fn file_in_the_way(dir: &Path, what: &str) -> Option<TrainError> {
    let file = dir.ancestors().find(|a| a.exists()).filter(|a| !a.is_dir())?;
    let why = if file == dir {
        format!("a file, not a folder, has this name; choose another {what}")
    } else {
        format!("{} is a file, so no folder can be made in it; choose another {what}", file.display())
    };
    Some(TrainError::io(dir, std::io::Error::other(why)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_where_the_run_directory_goes_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("taken");
        std::fs::write(&file, "mine").unwrap();
        let err = RunDir::create(&file).unwrap_err().to_string();
        assert!(err.contains("a file, not a folder, has this name"), "{err}");
        let err = RunDir::create_unique(&file.join("runs"), "run").unwrap_err().to_string();
        assert!(err.contains(&format!("{} is a file", file.display())), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
        let err = RunDir::open(&file).unwrap_err().to_string();
        assert!(err.contains("a file, not a run directory") && err.contains("--weights"), "{err}");
    }

    #[test]
    fn two_runs_of_the_same_name_get_different_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let names: Vec<PathBuf> = (0..3)
            .map(|_| RunDir::create_unique(tmp.path(), "av-digits-late-agm-seed0").unwrap().root().to_path_buf())
            .collect();
        let expected = ["av-digits-late-agm-seed0", "av-digits-late-agm-seed0-2", "av-digits-late-agm-seed0-3"];
        assert_eq!(names, expected.map(|n| tmp.path().join(n)));
        // Concurrent creations: each thread gets its own directory.
        let dirs: Vec<PathBuf> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| RunDir::create_unique(tmp.path(), "same").unwrap().root().to_path_buf()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let unique: std::collections::BTreeSet<_> = dirs.iter().collect();
        assert_eq!(unique.len(), 8);
    }

    #[test]
    fn a_locked_run_directory_refuses_a_second_run_until_the_first_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::create(tmp.path()).unwrap();
        let first = dir.lock().unwrap();
        let err = RunDir::open(tmp.path()).unwrap().lock().unwrap_err().to_string();
        assert!(err.contains("in use by another run") && err.contains(".lock"), "{err}");
        assert!(err.contains(&format!("(pid {}; ", std::process::id())), "the holder's pid: {err}");
        drop(first);
        assert_eq!(std::fs::read_to_string(tmp.path().join(".lock")).unwrap(), "", "a released lock names nobody");
        // A run refused in the instant between the holder's lock and its pid still names it.
        let held = std::fs::OpenOptions::new().write(true).open(tmp.path().join(".lock")).unwrap();
        held.try_lock().unwrap();
        let late_pid = std::thread::spawn({
            let path = tmp.path().join(".lock");
            move || {
                std::thread::sleep(std::time::Duration::from_millis(30));
                std::fs::write(path, "4242").unwrap();
            }
        });
        let err = dir.lock().unwrap_err().to_string();
        late_pid.join().unwrap();
        assert!(err.contains("(pid 4242; "), "the pid written after the refusal began: {err}");
        drop(held);
        // Taking the lock clears temporaries that killed writers left behind.
        std::fs::write(tmp.path().join("metrics.csv.1152.22.tmp"), "partial").unwrap();
        std::fs::create_dir_all(tmp.path().join("report")).unwrap();
        std::fs::write(tmp.path().join("report/loss.svg.7.0.tmp"), "partial").unwrap();
        dir.lock().unwrap();
        assert!(!tmp.path().join("metrics.csv.1152.22.tmp").exists());
        assert!(!tmp.path().join("report/loss.svg.7.0.tmp").exists());
    }

    #[test]
    fn a_missing_config_and_a_bad_metrics_line_are_named_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::create(tmp.path()).unwrap();
        let err = dir.read_config().unwrap_err().to_string();
        assert!(err.contains("config.toml not found") && err.contains("cargo xtask train"), "{err}");
        // A run stopped in its first epoch has a config but no metrics yet.
        std::fs::write(dir.config(), "").unwrap();
        let err = dir.read_metrics::<serde_json::Value>().unwrap_err().to_string();
        assert!(err.contains("has no finished epoch yet") && err.contains("train --resume"), "{err}");
        dir.append_metrics(&serde_json::json!({ "epoch": 1 })).unwrap();
        std::fs::OpenOptions::new().append(true).open(dir.metrics()).unwrap().write_all(b"{bad\n").unwrap();
        let err = dir.read_metrics::<serde_json::Value>().unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl line 2") && err.contains("remove that line"), "{err}");
    }

    #[test]
    fn a_resume_keeps_finished_rows_drops_a_torn_append_and_refuses_to_drop_anything_else() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::create(tmp.path()).unwrap();
        let rows = |dir: &RunDir| std::fs::read_to_string(dir.metrics()).unwrap();
        for epoch in 1..=3 {
            dir.append_metrics(&serde_json::json!({ "epoch": epoch })).unwrap();
        }
        // A writer killed mid-append of epoch 4's row; the checkpoint is at epoch 2.
        std::fs::OpenOptions::new().append(true).open(dir.metrics()).unwrap().write_all(b"{\"epo").unwrap();
        dir.truncate_metrics(2).unwrap();
        assert_eq!(rows(&dir), "{\"epoch\":1}\n{\"epoch\":2}\n");
        // A last line cut short where the checkpoint's own row should be is damage, not a crash.
        std::fs::write(dir.metrics(), "{\"epoch\":1}\n{\"epoch\":2,\"lr\"").unwrap();
        let err = dir.truncate_metrics(2).unwrap_err().to_string();
        assert!(err.contains("line 2 is not a metrics row"), "{err}");
        // A damaged line that is not the last one is refused, and the file kept.
        let damaged = "{\"epoch\":1}\n{bad\n{\"epoch\":2}\nnot json\n{\"epoch\":3}\n";
        std::fs::write(dir.metrics(), damaged).unwrap();
        let err = dir.truncate_metrics(3).unwrap_err().to_string();
        assert!(err.contains("lines 2, 4 are not metrics rows") && err.contains("remove those lines"), "{err}");
        assert_eq!(rows(&dir), damaged);
        // Rows removed by hand stay removed; nothing to keep and no file is fine.
        std::fs::write(dir.metrics(), "{\"epoch\":2}\n{\"epoch\":3}\n").unwrap();
        dir.truncate_metrics(2).unwrap();
        assert_eq!(rows(&dir), "{\"epoch\":2}\n");
        std::fs::remove_file(dir.metrics()).unwrap();
        dir.truncate_metrics(0).unwrap();
        assert!(dir
            .truncate_metrics(1)
            .unwrap_err()
            .to_string()
            .contains("missing, but the checkpoint is at the end of epoch 1"));
    }
}
