//! `hf://` references against a cache laid out by the test (no network).

use agm_data::hub::{parse_hf, resolve_checkpoint, resolve_data_path, HubOptions, HubRef};
use agm_data::DataError;

fn cache() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ds = dir.path().join("datasets--agm--avmnist-tiny");
    std::fs::create_dir_all(ds.join("refs")).unwrap();
    std::fs::write(ds.join("refs/main"), "0123abcd").unwrap();
    std::fs::create_dir_all(ds.join("snapshots/0123abcd/image")).unwrap();
    std::fs::write(ds.join("snapshots/0123abcd/train_labels.npy"), b"x").unwrap();
    let m = dir.path().join("models--agm--late-sum");
    std::fs::create_dir_all(m.join("refs")).unwrap();
    std::fs::write(m.join("refs/v1"), "feedbeef\n").unwrap();
    std::fs::create_dir_all(m.join("snapshots/feedbeef")).unwrap();
    std::fs::write(m.join("snapshots/feedbeef/model.safetensors"), b"st").unwrap();
    std::fs::write(m.join("snapshots/feedbeef/other.safetensors"), b"st").unwrap();
    dir
}

#[test]
fn parses_hf_references() {
    assert_eq!(parse_hf("hf://a/b"), Some(HubRef { repo_id: "a/b".into(), revision: "main".into(), file: None }));
    assert_eq!(
        parse_hf("hf://a/b@v2/sub/x.safetensors"),
        Some(HubRef { repo_id: "a/b".into(), revision: "v2".into(), file: Some("sub/x.safetensors".into()) })
    );
    assert_eq!(parse_hf("/data/avmnist"), None);
    assert_eq!(parse_hf("hf://only-owner"), None);
    // Malformed, it is an error, never a local folder of that name.
    let c = cache();
    let opts = HubOptions { cache_dir: c.path().to_path_buf(), offline: true };
    let err = resolve_data_path("hf://only-owner", &opts).unwrap_err().to_string();
    assert!(err.contains("hf://only-owner") && err.contains("hf://<owner>/<name>"), "{err}");
    assert!(resolve_checkpoint("hf://", &opts).is_err());
}

#[test]
fn resolves_a_cached_dataset_snapshot_offline() {
    let c = cache();
    let opts = HubOptions { cache_dir: c.path().to_path_buf(), offline: true };
    let p = resolve_data_path("hf://agm/avmnist-tiny", &opts).unwrap();
    assert_eq!(p, c.path().join("datasets--agm--avmnist-tiny/snapshots/0123abcd"));
    assert!(p.join("train_labels.npy").is_file());
    // a commit hash works as a revision; local paths pass through
    assert_eq!(resolve_data_path("hf://agm/avmnist-tiny@0123abcd", &opts).unwrap(), p);
    assert_eq!(resolve_data_path("/some/folder", &opts).unwrap(), std::path::PathBuf::from("/some/folder"));
}

#[test]
fn resolves_a_cached_checkpoint_offline() {
    let c = cache();
    let opts = HubOptions { cache_dir: c.path().to_path_buf(), offline: true };
    let p = resolve_checkpoint("hf://agm/late-sum@v1", &opts).unwrap();
    assert_eq!(p, c.path().join("models--agm--late-sum/snapshots/feedbeef/model.safetensors"));
    let p = resolve_checkpoint("hf://agm/late-sum@v1/other.safetensors", &opts).unwrap();
    assert!(p.ends_with("other.safetensors"));
}

#[test]
fn offline_without_a_cached_snapshot_is_a_clear_error() {
    let c = cache();
    let opts = HubOptions { cache_dir: c.path().to_path_buf(), offline: true };
    let e = resolve_data_path("hf://agm/missing", &opts).unwrap_err();
    assert!(matches!(e, DataError::Hub { .. }));
    let s = e.to_string();
    assert!(
        s.contains("hf://agm/missing") && s.contains("HF_HUB_OFFLINE") && s.contains(&c.path().display().to_string()),
        "{s}"
    );
    // the model exists but not at revision main
    let e = resolve_checkpoint("hf://agm/late-sum", &opts).unwrap_err();
    assert!(e.to_string().contains("model.safetensors"), "{e}");
}
