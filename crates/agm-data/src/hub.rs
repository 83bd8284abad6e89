//! `hf://<repo-id>[@revision][/file]` references, resolved through the hf-hub crate and its
//! cache (blocking `ureq` client, rustls; no OpenSSL).
//!
//! Offline (`HF_HUB_OFFLINE=1`, or [`HubOptions::offline`]) only the cache is consulted, laid
//! out as the Python `huggingface_hub` does: `<cache>/datasets--<owner>--<name>/refs/<rev>`
//! holds the commit, `snapshots/<commit>/` the files.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{DataError, Result};

/// Where the cache is and whether the network may be used.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// The hub cache (`$HF_HOME/hub`, or `~/.cache/huggingface/hub` when unset).
    pub cache_dir: PathBuf,
    /// Only read the cache (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
}

impl HubOptions {
    /// From the environment: `HF_HUB_CACHE`, else `HF_HOME/hub`, else the default cache;
    /// `HF_HUB_OFFLINE` set to `1`/`true` means offline.
    pub fn from_env() -> Self {
        let cache_dir = match std::env::var_os("HF_HUB_CACHE") {
            Some(p) => PathBuf::from(p),
            None => Cache::from_env().path().clone(),
        };
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"));
        Self { cache_dir, offline }
    }
}

/// A parsed `hf://` reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubRef {
    /// The repository, `owner/name`.
    pub repo_id: String,
    /// Branch, tag or commit; `main` when the reference names none.
    pub revision: String,
    /// A file inside the repo, if the reference names one.
    pub file: Option<String>,
}

/// Parses `hf://owner/name[@revision][/path/in/repo]`; `None` if `spec` is not an `hf://` reference.
pub fn parse_hf(spec: &str) -> Option<HubRef> {
    let rest = spec.strip_prefix("hf://")?;
    let mut parts = rest.splitn(3, '/');
    let owner = parts.next().filter(|s| !s.is_empty())?;
    let name_rev = parts.next().filter(|s| !s.is_empty())?;
    let file = parts.next().filter(|s| !s.is_empty()).map(str::to_string);
    let (name, revision) = match name_rev.split_once('@') {
        Some((n, r)) => (n, r.to_string()),
        None => (name_rev, "main".to_string()),
    };
    Some(HubRef { repo_id: format!("{owner}/{name}"), revision, file })
}

/// [`parse_hf`], with a malformed `hf://` reference an error instead of a local path.
fn hub_ref(spec: &str) -> Result<Option<HubRef>> {
    match parse_hf(spec) {
        None if spec.starts_with("hf://") => Err(hub_err(
            spec,
            "an hf:// reference names a repository as hf://<owner>/<name>[@revision][/file], e.g. hf://user/avmnist",
        )),
        parsed => Ok(parsed),
    }
}

fn hub_err(spec: &str, reason: impl Into<String>) -> DataError {
    DataError::Hub { spec: spec.to_string(), reason: reason.into() }
}

fn snapshot_dir(cache: &Path, repo: &Repo) -> Option<PathBuf> {
    let base = cache.join(repo.folder_name());
    let rev = repo.revision();
    // A revision may be a commit hash itself.
    let commit = std::fs::read_to_string(base.join("refs").join(rev))
        .ok()
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| rev.to_string());
    let dir = base.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

/// Resolves a `--data` argument: a local path is returned as is; `hf://owner/name[@rev]` gives the
/// local snapshot folder of that *dataset* repo, downloading it first when online and not cached.
pub fn resolve_data_path(spec: &str, opts: &HubOptions) -> Result<PathBuf> {
    let Some(r) = hub_ref(spec)? else { return Ok(PathBuf::from(spec)) };
    let repo = Repo::with_revision(r.repo_id.clone(), RepoType::Dataset, r.revision.clone());
    if let Some(dir) = snapshot_dir(&opts.cache_dir, &repo) {
        return Ok(match &r.file {
            Some(f) => dir.join(f),
            None => dir,
        });
    }
    if opts.offline {
        return Err(hub_err(
            spec,
            format!(
                "offline (HF_HUB_OFFLINE) and no snapshot of dataset {}@{} in the cache {}",
                r.repo_id,
                r.revision,
                opts.cache_dir.display()
            ),
        ));
    }
    let api = ApiBuilder::from_cache(Cache::new(opts.cache_dir.clone()))
        .with_progress(false)
        .build()
        .map_err(|e| hub_err(spec, e.to_string()))?;
    let api_repo = api.repo(repo.clone());
    let info = api_repo.info().map_err(|e| hub_err(spec, e.to_string()))?;
    for s in &info.siblings {
        if r.file.as_deref().is_none_or(|f| s.rfilename == f || s.rfilename.starts_with(&format!("{f}/"))) {
            api_repo.get(&s.rfilename).map_err(|e| hub_err(spec, format!("{}: {e}", s.rfilename)))?;
        }
    }
    let dir = snapshot_dir(&opts.cache_dir, &repo)
        .or_else(|| {
            let d = opts.cache_dir.join(repo.folder_name()).join("snapshots").join(&info.sha);
            d.is_dir().then_some(d)
        })
        .ok_or_else(|| hub_err(spec, "download finished but no snapshot folder was found"))?;
    Ok(match &r.file {
        Some(f) => dir.join(f),
        None => dir,
    })
}

/// Resolves an `--init` argument: a local path as is; `hf://owner/name[@rev][/file]` gives the
/// cached (or downloaded) safetensors file of that *model* repo (`model.safetensors` by default).
pub fn resolve_checkpoint(spec: &str, opts: &HubOptions) -> Result<PathBuf> {
    let Some(r) = hub_ref(spec)? else { return Ok(PathBuf::from(spec)) };
    let file = r.file.clone().unwrap_or_else(|| "model.safetensors".to_string());
    let repo = Repo::with_revision(r.repo_id.clone(), RepoType::Model, r.revision.clone());
    if let Some(p) = snapshot_dir(&opts.cache_dir, &repo).map(|d| d.join(&file)).filter(|p| p.is_file()) {
        return Ok(p);
    }
    if opts.offline {
        return Err(hub_err(
            spec,
            format!(
                "offline (HF_HUB_OFFLINE) and {file} of model {}@{} is not in the cache {}",
                r.repo_id,
                r.revision,
                opts.cache_dir.display()
            ),
        ));
    }
    let api = ApiBuilder::from_cache(Cache::new(opts.cache_dir.clone()))
        .with_progress(false)
        .build()
        .map_err(|e| hub_err(spec, e.to_string()))?;
    api.repo(repo).get(&file).map_err(|e| hub_err(spec, e.to_string()))
}
