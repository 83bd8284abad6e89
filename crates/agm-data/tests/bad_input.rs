//! Corrupt and hostile inputs for every loader format (npy, pickle, h5, wav, jpg, csv), written
//! to temporary folders: each must give a clean `Err` that names the file (or key) — no panic, no
//! hang, no huge allocation. Every case here was a panic, hang, abort or silent acceptance once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agm_data::loaders::array::{npy_bytes, write_npy};
use agm_data::loaders::h5::H5Dataset;
use agm_data::loaders::pickle::parse_pickle;
use agm_data::loaders::validate::validate_avmnist_mapped;
use agm_data::loaders::{DatasetId, LoadOptions};
use agm_data::{load, DataError};

mod common;

#[global_allocator]
static ALLOC: common::Capped = common::Capped;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Runs `f`, which must fail fast with an error whose message contains every one of `names`.
#[track_caller]
fn fails_naming<T>(f: impl FnOnce() -> agm_data::Result<T>, names: &[&str]) -> DataError {
    let t = Instant::now();
    let Err(e) = f() else { panic!("a corrupt input was accepted (expected an error naming {names:?})") };
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}: {e}", t.elapsed());
    let s = e.to_string();
    for n in names {
        assert!(s.contains(n), "error does not name {n:?}: {s}");
    }
    e
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ------------------------------------------------------------------ npy (AV-MNIST)

fn write_avmnist(root: &Path, ntr: usize, nte: usize) {
    for (split, n) in [("train", ntr), ("test", nte)] {
        write_npy(&root.join(format!("image/{split}_data.npy")), "|u1", &[n, 784], &vec![3u8; n * 784]).unwrap();
        write_npy(&root.join(format!("audio/{split}_data.npy")), "<f4", &[n, 4, 4], &f32s(&vec![1.0; n * 16])).unwrap();
        let lab: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        write_npy(&root.join(format!("{split}_labels.npy")), "|u1", &[n], &lab).unwrap();
    }
}

fn raw_npy(path: &Path, header_shape: &str, body: &[u8]) {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {header_shape}, }}");
    std::fs::write(path, agm_data::loaders::array::npy_bytes_with_header(&dict, body)).unwrap();
}

#[test]
fn npy_sizes_from_the_header_are_checked_against_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_avmnist(dir.path(), 20, 10);
    let audio = dir.path().join("audio/train_data.npy");
    let opts = LoadOptions::default();
    // (20, 2^32, 2^32) of f4 wraps to 0 bytes without checked arithmetic.
    for shape in
        ["(20, 4294967296, 4294967296)", "(0, 1099511627776, 1099511627776)", "(20, 4, 5)", "(99999999999999999999, 1)"]
    {
        raw_npy(&audio, shape, b"");
        fails_naming(|| load(DatasetId::AvMnist, dir.path(), &opts), &["audio/train_data.npy"]);
        fails_naming(|| validate_avmnist_mapped(dir.path(), &opts), &["audio/train_data.npy"]);
    }
    // Truncated body, bad magic, empty file.
    raw_npy(&audio, "(20, 4, 4)", &f32s(&[1.0; 100]));
    fails_naming(|| load(DatasetId::AvMnist, dir.path(), &opts), &["audio/train_data.npy", "truncated"]);
    for bytes in [&b"NUMPY"[..], b"", b"\x93NUMPY\x03\x00\xff\xff\xff\xff"] {
        std::fs::write(&audio, bytes).unwrap();
        fails_naming(|| load(DatasetId::AvMnist, dir.path(), &opts), &["audio/train_data.npy"]);
    }
}

#[test]
fn avmnist_non_finite_inputs_are_reported_by_load_and_data_check() {
    let dir = tempfile::tempdir().unwrap();
    write_avmnist(dir.path(), 20, 10);
    let mut v = vec![0.5f32; 20 * 16];
    v[3] = f32::NAN;
    v[17] = f32::INFINITY;
    v[18] = f32::NEG_INFINITY;
    write_npy(&dir.path().join("audio/train_data.npy"), "<f4", &[20, 4, 4], &f32s(&v)).unwrap();
    let opts = LoadOptions::default();
    let e = fails_naming(|| load(DatasetId::AvMnist, dir.path(), &opts), &["audio/train_data.npy", "NaN/Inf"]);
    assert!(matches!(e, DataError::NonFinite { count: 3, .. }), "{e}");
    let e = fails_naming(|| validate_avmnist_mapped(dir.path(), &opts), &["audio/train_data.npy", "NaN/Inf"]);
    assert!(matches!(e, DataError::NonFinite { count: 3, .. }), "{e}");
}

#[test]
fn avmnist_too_few_rows_is_an_empty_split_error_naming_the_labels() {
    let opts = LoadOptions::default();
    for (ntr, nte, file) in [
        (0, 10, "train_labels.npy"),
        (1, 10, "train_labels.npy"),
        (2, 10, "train_labels.npy"),
        (20, 1, "test_labels.npy"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_avmnist(dir.path(), ntr, nte);
        let e = fails_naming(|| load(DatasetId::AvMnist, dir.path(), &opts), &[file, "no samples"]);
        assert!(matches!(e, DataError::EmptySplit { .. }), "{e}");
        fails_naming(|| validate_avmnist_mapped(dir.path(), &opts), &[file, "no samples"]);
    }
    // The smallest folder that splits: 3 train rows (2 train, 1 validation) and 2 test rows.
    let dir = tempfile::tempdir().unwrap();
    write_avmnist(dir.path(), 3, 2);
    let d = load(DatasetId::AvMnist, dir.path(), &opts).unwrap();
    assert_eq!((d.train.len(), d.validation.len(), d.test.len()), (1, 1, 1));
    d.train.batch(&[0], &candle_core::Device::Cpu).unwrap();
    // An index past the end is an error, not a panic.
    assert!(d.train.batch(&[5], &candle_core::Device::Cpu).is_err());
}

/// Both the loader (`train`) and the mapped check (`data check`) must refuse `dir`.
#[track_caller]
fn avmnist_refused(dir: &Path, names: &[&str]) -> DataError {
    let opts = LoadOptions::default();
    fails_naming(|| validate_avmnist_mapped(dir, &opts), names);
    fails_naming(|| load(DatasetId::AvMnist, dir, &opts), names)
}

#[test]
fn avmnist_shapes_the_readme_does_not_allow_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_avmnist(dir.path(), 20, 10);
    let opts = LoadOptions::default();
    // A zero-size dimension, a flat (rank 2) spectrogram, two channels, rank 5; train and test
    // alike, so only the layout is wrong.
    for shape in [&[20, 0, 112][..], &[20, 12544], &[20, 2, 4, 4], &[20, 1, 4, 0], &[20, 1, 1, 4, 4]] {
        for (side, rows) in [("train", 20), ("test", 10)] {
            let shape: Vec<usize> = [rows].into_iter().chain(shape[1..].iter().copied()).collect();
            let n: usize = shape.iter().product();
            write_npy(&dir.path().join(format!("audio/{side}_data.npy")), "<f4", &shape, &f32s(&vec![1.0; n])).unwrap();
        }
        let e = avmnist_refused(dir.path(), &["audio/train_data.npy", &format!("{shape:?}"), "[N, 112, 112]"]);
        assert!(matches!(e, DataError::BadShape { .. }), "{e}");
    }
    // [N, 1, H, W] stays accepted, and so do other non-zero sides (the tests' 4 x 4).
    for side in ["train", "test"] {
        let n = if side == "train" { 20 } else { 10 };
        let p = dir.path().join(format!("audio/{side}_data.npy"));
        write_npy(&p, "<f4", &[n, 1, 4, 4], &f32s(&vec![1.0; n * 16])).unwrap();
    }
    let d = load(DatasetId::AvMnist, dir.path(), &opts).unwrap();
    assert_eq!(d.train.sample_shape(0), [1, 4, 4]);
    validate_avmnist_mapped(dir.path(), &opts).unwrap();
    // Images must be [N, 784]; [N, 28, 28] (rank 3) is not the documented layout.
    for shape in [&[20, 28, 28][..], &[20, 783], &[20, 784, 1]] {
        for (side, rows) in [("train", 20), ("test", 10)] {
            let shape: Vec<usize> = [rows].into_iter().chain(shape[1..].iter().copied()).collect();
            let n: usize = shape.iter().product();
            write_npy(&dir.path().join(format!("image/{side}_data.npy")), "|u1", &shape, &vec![3u8; n]).unwrap();
        }
        avmnist_refused(dir.path(), &["image/train_data.npy", &format!("{shape:?}"), "[N, 784]"]);
    }
}

#[test]
fn npy_errors_read_as_one_sentence_and_directories_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_avmnist(dir.path(), 20, 10);
    let labels = dir.path().join("train_labels.npy");
    // Object dtype, big-endian and Fortran order: one sentence, no empty field.
    for (descr, fortran, why) in
        [("|O", "False", "dtype |O is not supported"), (">f4", "False", "big-endian"), ("<f4", "True", "fortran order")]
    {
        let dict = format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': (20,), }}");
        std::fs::write(&labels, agm_data::loaders::array::npy_bytes_with_header(&dict, &[0u8; 80])).unwrap();
        let e = avmnist_refused(dir.path(), &["train_labels.npy is not a supported .npy array: ", why]).to_string();
        assert!(!e.contains(":  "), "{e}");
    }
    // A directory where the layout has a file: named as such, not "No such device".
    std::fs::remove_file(&labels).unwrap();
    std::fs::create_dir(&labels).unwrap();
    let e = avmnist_refused(dir.path(), &["train_labels.npy is a directory; expected the file train_labels.npy"]);
    assert!(matches!(e, DataError::IsDirectory { .. }), "{e}");
    // The same for a pickle and an HDF5 file.
    let uf = tempfile::tempdir().unwrap();
    std::fs::create_dir(uf.path().join("humor.pkl")).unwrap();
    fails_naming(
        || load(DatasetId::UrFunny, uf.path(), &LoadOptions::default()),
        &["humor.pkl is a directory; expected the file humor.pkl, a pickle"],
    );
    let ave = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("ave"), ave.path());
    let audio = ave.path().join("audio_feature.h5");
    std::fs::remove_file(&audio).unwrap();
    std::fs::create_dir(&audio).unwrap();
    fails_naming(
        || load(DatasetId::Ave, ave.path(), &LoadOptions::default()),
        &["audio_feature.h5 is a directory; expected the file audio_feature.h5, an HDF5 file"],
    );
}

#[test]
fn a_zero_size_sample_dimension_is_refused_for_any_dataset() {
    use agm_data::loaders::validate::validate_splits;
    use agm_data::SplitTensors;
    let ok = SplitTensors::new(vec![vec![1.0; 6]], vec![vec![3]], vec![0, 1]);
    let empty_dim = SplitTensors::new(vec![vec![]], vec![vec![8, 0]], vec![0, 1]);
    let root = Path::new("/data/humor.pkl");
    let parts: [(&str, &dyn agm_core::BatchSource); 2] = [("train", &ok), ("validation", &empty_dim)];
    let e = fails_naming(
        || validate_splits(DatasetId::UrFunny, root, &["visual"], &parts, &[]),
        &["humor.pkl", "valid/vision", "validation visual", "zero-size dimension"],
    );
    assert!(matches!(e, DataError::BadShape { .. }), "{e}");
}

// ------------------------------------------------------------------ pickle

/// A value for the tiny pickle writer below (protocol 4 opcodes, numpy arrays via `_frombuffer`).
enum P<'a> {
    S(&'a str),
    I(i64),
    D(Vec<(P<'a>, P<'a>)>),
    A(Vec<usize>, Vec<f32>),
}

fn pk(v: &P, out: &mut Vec<u8>) {
    match v {
        P::S(s) => {
            out.push(0x8c);
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
        P::I(i) => {
            out.push(0x8a);
            out.push(8);
            out.extend_from_slice(&i.to_le_bytes());
        }
        P::D(items) => {
            out.extend_from_slice(b"}(");
            for (k, v) in items {
                pk(k, out);
                pk(v, out);
            }
            out.push(b'u');
        }
        P::A(shape, data) => {
            out.extend_from_slice(b"cnumpy._core.numeric\n_frombuffer\n(");
            let bytes = f32s(data);
            out.push(b'B');
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&bytes);
            out.extend_from_slice(b"cnumpy\ndtype\n(");
            pk(&P::S("f4"), out);
            out.extend_from_slice(b"tR(");
            shape.iter().for_each(|&d| pk(&P::I(d as i64), out));
            out.push(b't');
            pk(&P::S("C"), out);
            out.extend_from_slice(b"tR");
        }
    }
}

fn pickle(v: &P) -> Vec<u8> {
    let mut out = vec![0x80, 4];
    pk(v, &mut out);
    out.push(b'.');
    out
}

#[test]
fn the_tiny_pickle_writer_round_trips() {
    let v = parse_pickle(&pickle(&P::D(vec![(P::S("a"), P::A(vec![2, 1], vec![1.0, 2.0]))])), Path::new("x")).unwrap();
    let a = match v.get("a") {
        Some(agm_data::loaders::pickle::Py::Array(a)) => a.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!((a.shape.clone(), a.to_f32()), (vec![2, 1], vec![1.0, 2.0]));
}

#[test]
fn pickle_memo_and_dup_bombs_fail_fast() {
    let path = Path::new("bomb.pkl");
    // 419 bytes: EMPTY_LIST, BINPUT 0, then (BINGET i, BINGET i, TUPLE2, BINPUT i+1) repeated.
    let mut memo = b"\x80\x02]q\x00".to_vec();
    let mut i = 0u8;
    while memo.len() + 7 <= 418 {
        memo.extend_from_slice(&[b'h', i, b'h', i, 0x86, b'q', i + 1]);
        i += 1;
    }
    memo.push(b'.');
    // 174 bytes: EMPTY_LIST, then (DUP, TUPLE2) doubling, never memoised.
    let mut dup = b"\x80\x02]".to_vec();
    while dup.len() + 2 <= 173 {
        dup.extend_from_slice(&[b'2', 0x86]);
    }
    dup.push(b'.');
    for bomb in [memo, dup] {
        fails_naming(|| parse_pickle(&bomb, path), &["bomb.pkl", "pickle bomb"]);
    }
    // Deep nesting: 100,000 empty lists appended into each other.
    let mut deep = b"\x80\x02".to_vec();
    deep.extend(std::iter::repeat_n(b']', 100_000));
    deep.extend(std::iter::repeat_n(b'a', 99_999));
    deep.push(b'.');
    fails_naming(|| parse_pickle(&deep, path), &["bomb.pkl", "nest deeper"]);
    // A memo index beyond any real file (LONG_BINPUT 2^32-1) is fine on its own; unset GETs fail.
    fails_naming(|| parse_pickle(b"\x80\x02]r\xff\xff\xff\xffj\x00\x00\x00\x01.", path), &["bomb.pkl", "memo"]);
}

#[test]
fn pickle_array_shapes_are_checked_arithmetic() {
    let path = Path::new("arr.pkl");
    // [12, 2^61, 8] of f4 with an empty buffer: 12·2^61·8·4 wraps to 0 bytes.
    let mut p = vec![0x80, 4];
    pk(&P::A(vec![1], vec![]), &mut p);
    let mut bad = vec![0x80, 4];
    let a = P::A(vec![12, 1 << 61, 8], vec![]);
    pk(&a, &mut bad);
    bad.push(b'.');
    fails_naming(|| parse_pickle(&bad, path), &["arr.pkl", "too large"]);
    for (shape, data) in [(vec![3usize, 4], vec![0.0f32; 11]), (vec![0, 1 << 62, 1 << 62], vec![])] {
        let mut b = vec![0x80, 4];
        pk(&P::A(shape, data), &mut b);
        b.push(b'.');
        fails_naming(|| parse_pickle(&b, path), &["arr.pkl"]);
    }
    // Truncation anywhere, and a forbidden global.
    let good = pickle(&P::D(vec![(P::S("x"), P::A(vec![2], vec![1.0, 2.0]))]));
    for cut in 0..good.len() - 1 {
        fails_naming(|| parse_pickle(&good[..cut], path), &["arr.pkl"]);
    }
    fails_naming(|| parse_pickle(b"\x80\x02cos\nsystem\n.", path), &["arr.pkl", "not allowed"]);
}

fn urfunny(text: f32, vision_nan: bool) -> Vec<u8> {
    let split = |n: usize| {
        let mut vision = vec![0.5f32; n * 2 * 3];
        if vision_nan {
            vision[4] = f32::NAN;
        }
        P::D(vec![
            (P::S("audio"), P::A(vec![n, 2, 3], vec![0.1; n * 6])),
            (P::S("vision"), P::A(vec![n, 2, 3], vision)),
            (P::S("text"), P::A(vec![n, 2, 4], vec![text; n * 8])),
            (P::S("labels"), P::A(vec![n], vec![1.0; n])),
        ])
    };
    pickle(&P::D(vec![(P::S("train"), split(3)), (P::S("valid"), split(2)), (P::S("test"), split(2))]))
}

/// A UR-Funny pickle whose `vision` has `widths[s]` features in split `s` (train, valid, test),
/// and whose train `labels` are `labels` (3 rows).
fn urfunny_widths(widths: [usize; 3], labels: P<'static>) -> Vec<u8> {
    let mut labels = Some(labels);
    let mut split = |n: usize, w: usize| {
        let lab = if n == 3 { labels.take().unwrap() } else { P::A(vec![n], vec![1.0; n]) };
        P::D(vec![
            (P::S("audio"), P::A(vec![n, 2, 3], vec![0.1; n * 6])),
            (P::S("vision"), P::A(vec![n, 2, w], vec![0.5; n * 2 * w])),
            (P::S("text"), P::A(vec![n, 2, 4], vec![1.0; n * 8])),
            (P::S("labels"), lab),
        ])
    };
    let (train, valid, test) = (split(3, widths[0]), split(2, widths[1]), split(2, widths[2]));
    pickle(&P::D(vec![(P::S("train"), train), (P::S("valid"), valid), (P::S("test"), test)]))
}

#[test]
fn urfunny_feature_widths_must_agree_across_splits_and_be_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("humor.pkl");
    let opts = LoadOptions::default();
    let labels = || P::A(vec![3], vec![0.0, 1.0, 2.0]);
    std::fs::write(&file, urfunny_widths([5, 5, 5], labels())).unwrap();
    assert_eq!(load(DatasetId::UrFunny, &file, &opts).unwrap().validation.sample_shape(1), [2, 5]);
    std::fs::write(&file, urfunny_widths([5, 6, 5], labels())).unwrap();
    let e = fails_naming(
        || load(DatasetId::UrFunny, &file, &opts),
        &["humor.pkl", "`valid/vision` has 6 features per step but `train/vision` has 5"],
    );
    assert!(matches!(e, DataError::BadShape { .. }), "{e}");
    std::fs::write(&file, urfunny_widths([5, 5, 4], labels())).unwrap();
    fails_naming(|| load(DatasetId::UrFunny, &file, &opts), &["humor.pkl", "`test/vision` has 4", "has 5"]);
    for widths in [[0, 0, 0], [5, 0, 5]] {
        std::fs::write(&file, urfunny_widths(widths, labels())).unwrap();
        let split = if widths[0] == 0 { "train" } else { "valid" };
        fails_naming(
            || load(DatasetId::UrFunny, &file, &opts),
            &["humor.pkl", &format!("`{split}/vision` must be [N, T, F]"), "one feature F"],
        );
    }
}

#[test]
fn urfunny_non_finite_and_non_array_labels_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("humor.pkl");
    let opts = LoadOptions::default();
    for (bad, shown) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf"), (f32::NEG_INFINITY, "-inf")] {
        std::fs::write(&file, urfunny_widths([5, 5, 5], P::A(vec![3], vec![0.0, bad, 1.0]))).unwrap();
        fails_naming(
            || load(DatasetId::UrFunny, &file, &opts),
            &["humor.pkl", &format!("`train/labels` sample 1 is {shown}"), "finite"],
        );
    }
    // Labels that are a Python int, not an array: "an int", with its article.
    std::fs::write(&file, urfunny_widths([5, 5, 5], P::I(1))).unwrap();
    fails_naming(|| load(DatasetId::UrFunny, &file, &opts), &["humor.pkl", "`train/labels` is an int, not a"]);
}

#[test]
fn urfunny_all_zero_text_and_nan_features_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("humor.pkl");
    std::fs::write(&file, urfunny(1.0, false)).unwrap();
    let d = load(DatasetId::UrFunny, &file, &LoadOptions::default()).unwrap();
    assert_eq!(d.train.len(), 3);
    std::fs::write(&file, urfunny(0.0, false)).unwrap();
    let e =
        fails_naming(|| load(DatasetId::UrFunny, &file, &LoadOptions::default()), &["humor.pkl", "train", "all zero"]);
    assert!(matches!(e, DataError::EmptySplit { .. }), "{e}");
    std::fs::write(&file, urfunny(1.0, true)).unwrap();
    fails_naming(
        || load(DatasetId::UrFunny, &file, &LoadOptions::default()),
        &["humor.pkl", "train/vision", "1 NaN/Inf"],
    );
}

fn copy_dir(from: &Path, to: &Path) {
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}

#[test]
fn mosei_disjoint_keys_huge_token_ids_and_nan_mels_are_refused() {
    let opts = LoadOptions::default();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("mosei"), dir.path());
    load(DatasetId::Mosei, dir.path(), &opts).unwrap();
    // token_to_ix id 4e9: the embedding would need terabytes.
    let good_vocab = std::fs::read(dir.path().join("token_to_ix.pkl")).unwrap();
    std::fs::write(dir.path().join("token_to_ix.pkl"), pickle(&P::D(vec![(P::S("film"), P::I(4_000_000_000))])))
        .unwrap();
    fails_naming(|| load(DatasetId::Mosei, dir.path(), &opts), &["token_to_ix.pkl", "film", "4000000000"]);
    std::fs::write(dir.path().join("token_to_ix.pkl"), good_vocab).unwrap();
    // NaN in mels of a valid key.
    let sentences = agm_data::loaders::pickle::read_pickle(&dir.path().join("valid_sentences.p")).unwrap();
    let keys: Vec<String> = match &sentences {
        agm_data::loaders::pickle::Py::Dict(d) => d
            .iter()
            .map(|(k, _)| if let agm_data::loaders::pickle::Py::Str(s) = k { s.clone() } else { panic!() })
            .collect(),
        _ => panic!(),
    };
    let mels = |v: f32| P::D(keys.iter().map(|k| (P::S(k), P::A(vec![3, 80], vec![v; 240]))).collect());
    std::fs::write(dir.path().join("valid_mels.p"), pickle(&mels(f32::INFINITY))).unwrap();
    fails_naming(|| load(DatasetId::Mosei, dir.path(), &opts), &["valid_mels.p", "NaN/Inf"]);
    // No key in common between the three files of a split.
    std::fs::write(
        dir.path().join("valid_mels.p"),
        pickle(&P::D(vec![(P::S("other"), P::A(vec![1, 80], vec![0.0; 80]))])),
    )
    .unwrap();
    let e =
        fails_naming(|| load(DatasetId::Mosei, dir.path(), &opts), &["valid_sentences.p", "validation", "share keys"]);
    assert!(matches!(e, DataError::EmptySplit { .. }), "{e}");
}

/// The keys of a MOSEI pickle (a dict with str keys), in order.
fn pickle_keys(path: &Path) -> Vec<String> {
    match agm_data::loaders::pickle::read_pickle(path).unwrap() {
        agm_data::loaders::pickle::Py::Dict(d) => d
            .iter()
            .map(|(k, _)| if let agm_data::loaders::pickle::Py::Str(s) = k { s.clone() } else { panic!() })
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn mosei_mels_must_be_t_by_80_and_the_odd_key_is_named() {
    let opts = LoadOptions::default();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("mosei"), dir.path());
    let keys = pickle_keys(&dir.path().join("train_sentences.p"));
    assert!(keys.len() >= 2);
    let mels = |odd: (usize, usize), others: (usize, usize)| {
        P::D(
            keys.iter()
                .enumerate()
                .map(|(i, k)| {
                    let (t, w) = if i == 0 { odd } else { others };
                    (P::S(k), P::A(vec![t, w], vec![0.5; t * w]))
                })
                .collect(),
        )
    };
    // The first key 79 wide, the rest 80: the error names the first (the odd one), not the next.
    for (odd, others) in [((3, 79), (3, 80)), ((3, 79), (3, 79)), ((0, 80), (3, 80)), ((3, 81), (3, 80))] {
        std::fs::write(dir.path().join("train_mels.p"), pickle(&mels(odd, others))).unwrap();
        let e = fails_naming(
            || load(DatasetId::Mosei, dir.path(), &opts),
            &["train_mels.p", &format!("[{}, {}]", odd.0, odd.1), &format!("mels of `{}` must be [T, 80]", keys[0])],
        );
        assert!(!e.to_string().contains(&format!("`{}`", keys[1])), "{e}");
    }
    std::fs::write(dir.path().join("train_mels.p"), pickle(&mels((3, 80), (2, 80)))).unwrap();
    load(DatasetId::Mosei, dir.path(), &opts).unwrap();
}

// ------------------------------------------------------------------ h5 (AVE)

#[test]
fn ave_truncated_garbage_and_nan_h5_files_are_refused() {
    let opts = LoadOptions::default();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("ave"), dir.path());
    load(DatasetId::Ave, dir.path(), &opts).unwrap();
    let audio = dir.path().join("audio_feature.h5");
    let good = std::fs::read(&audio).unwrap();
    // NaN: overwrite the first stored feature value (found by its bytes) with a NaN.
    // The fixture stores f64 (make_fixtures.py).
    let first = H5Dataset::open(&audio, "avadataset").unwrap().all_f32().unwrap();
    // The first run of four equal non-zero values (zeros also occur in the metadata).
    let k = first.iter().position(|&v| v != 0.0).unwrap();
    let pattern: Vec<u8> =
        first[k..k + 4].iter().flat_map(|v| v.to_string().parse::<f64>().unwrap().to_le_bytes()).collect();
    let at = good.windows(32).position(|w| w == pattern.as_slice()).expect("contiguous f64 storage");
    let mut nan = good.clone();
    nan[at..at + 8].copy_from_slice(&f64::NAN.to_le_bytes());
    std::fs::write(&audio, &nan).unwrap();
    fails_naming(|| load(DatasetId::Ave, dir.path(), &opts), &["audio_feature.h5", "NaN/Inf"]);
    // Truncated (the data section cut off), cut to the superblock, and garbage.
    for bytes in [&good[..at + 8], &good[..64], &b"not an hdf5 file at all"[..], &[]] {
        std::fs::write(&audio, bytes).unwrap();
        fails_naming(|| load(DatasetId::Ave, dir.path(), &opts), &["audio_feature.h5"]);
    }
}

/// Size fields of the chunked, deflated visual features made to point past the file. The reader
/// sizes its buffers from them before reading, so each once aborted the process with a
/// multi-gigabyte allocation.
#[test]
fn ave_h5_chunks_and_chunk_shapes_past_the_file_are_refused() {
    let opts = LoadOptions::default();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("ave"), dir.path());
    let visual = dir.path().join("visual_feature.h5");
    let good = std::fs::read(&visual).unwrap();
    let ds = hdf5_pure::File::open(&visual).unwrap().dataset("avadataset").unwrap();
    let chunk = &ds.chunks().unwrap()[0];
    // A B-tree v1 key: stored size (u32), filter mask (u32), rank + 1 offsets (u64), then the
    // chunk's address (u64; the fixture's base address is 0).
    let mut key = (chunk.storage_size as u32).to_le_bytes().to_vec();
    key.extend(chunk.filter_mask.to_le_bytes());
    key.extend(vec![0u8; 8 * (chunk.offset.len() + 1)]);
    key.extend(chunk.address.to_le_bytes());
    let at = good.windows(key.len()).position(|w| w == key.as_slice()).expect("the first chunk's key");
    let address_at = at + key.len() - 8;
    // The chunk shape in the layout message, one u32 per dimension.
    let dims: Vec<u8> = ds.chunk_shape().unwrap().unwrap().iter().flat_map(|&d| (d as u32).to_le_bytes()).collect();
    let dims_at = good.windows(dims.len()).position(|w| w == dims.as_slice()).expect("the chunk shape");
    let patches: [(usize, Vec<u8>); 3] = [
        (at, 3_539_442_121u32.to_le_bytes().to_vec()),
        (address_at, (u64::MAX - 4).to_le_bytes().to_vec()),
        (dims_at + 4, u32::MAX.to_le_bytes().to_vec()),
    ];
    let patched = patches.into_iter().map(|(pos, bytes)| {
        let mut bad = good.clone();
        bad[pos..pos + bytes.len()].copy_from_slice(&bytes);
        bad
    });
    // Found by the fuzz test: 35 bytes repeated inside the chunk index make a 2.9 GB chunk.
    let repeated = agm_data::fuzz::apply(
        &good,
        &[agm_data::fuzz::Mutation::Duplicate { from: 993_335_322, len: 35, at: 1_256_239_205 }],
    );
    for bad in std::iter::once(repeated).chain(patched) {
        let in_memory = || H5Dataset::from_bytes(bad.clone(), Path::new("in-memory.h5"), "avadataset")?.all_f32();
        fails_naming(in_memory, &["in-memory.h5", "corrupt"]);
        std::fs::write(&visual, &bad).unwrap();
        fails_naming(|| load(DatasetId::Ave, dir.path(), &opts), &["visual_feature.h5", "corrupt"]);
    }
}

/// Writes dataset `avadataset` of `shape` (f32 zeros but for a ramp) to `path`.
fn write_h5(path: &Path, shape: &[usize]) {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let mut b = hdf5_pure::FileBuilder::new();
    b.create_dataset("avadataset")
        .with_f32_data(&values)
        .with_shape(&shape.iter().map(|&d| d as u64).collect::<Vec<_>>());
    b.write(path).unwrap();
}

#[test]
fn ave_features_of_other_shapes_than_the_documented_ones_are_refused() {
    let opts = LoadOptions::default();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("ave"), dir.path());
    let (audio, visual) = (dir.path().join("audio_feature.h5"), dir.path().join("visual_feature.h5"));
    // The writer here makes files the loader reads: the documented shapes load.
    write_h5(&audio, &[6, 10, 128]);
    load(DatasetId::Ave, dir.path(), &opts).unwrap();
    let good_visual = std::fs::read(&visual).unwrap();
    for (file, shape, want) in [
        (&audio, &[6, 10, 127][..], "audio features (VGGish) must be [N, 10, 128]"),
        (&audio, &[6, 10, 0], "[N, 10, 128]"),
        (&audio, &[6, 10, 128, 1], "[N, 10, 128]"),
        (&visual, &[6, 10, 128], "visual features (VGG-19 pool5) must be [N, 10, 7, 7, 512]"),
        (&visual, &[6, 10, 7, 7, 511], "[N, 10, 7, 7, 512]"),
    ] {
        write_h5(file, shape);
        let name = file.file_name().unwrap().to_str().unwrap();
        let e = fails_naming(|| load(DatasetId::Ave, dir.path(), &opts), &[name, &format!("{shape:?}"), want]);
        assert!(matches!(e, DataError::BadShape { .. }), "{e}");
        write_h5(&audio, &[6, 10, 128]);
        std::fs::write(&visual, &good_visual).unwrap();
    }
    // Labels with another segment count than 10.
    let labels = dir.path().join("right_labels.h5");
    let good_labels = std::fs::read(&labels).unwrap();
    write_h5(&labels, &[6, 5, 29]);
    fails_naming(|| load(DatasetId::Ave, dir.path(), &opts), &["right_labels.h5", "[6, 5, 29]", "[N, 10, 29]"]);
    // One-hot rows whose one entry is NaN or negative are no labels (the NaN became its class).
    for (bad, shown) in [(f32::NAN, "is NaN"), (-1.0, "is -1")] {
        let mut values = vec![0f32; 6 * 10 * 29];
        for row in values.chunks_exact_mut(29) {
            row[3] = 1.0;
        }
        values[29 * 13 + 3] = bad;
        let mut b = hdf5_pure::FileBuilder::new();
        b.create_dataset("avadataset").with_f32_data(&values).with_shape(&[6, 10, 29]);
        b.write(&labels).unwrap();
        fails_naming(|| load(DatasetId::Ave, dir.path(), &opts), &["right_labels.h5", "row 1 segment 3", shown]);
    }
    std::fs::write(&labels, &good_labels).unwrap();
    load(DatasetId::Ave, dir.path(), &opts).unwrap();
}

// ------------------------------------------------------------------ wav, jpg, csv (CREMA-D)

fn wav_bytes(rate: u32, samples: usize) -> Vec<u8> {
    let spec =
        hound::WavSpec { channels: 1, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut cur = std::io::Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut cur, spec).unwrap();
    for i in 0..samples {
        w.write_sample(((i as f32 * 0.1).sin() * 1000.0) as i16).unwrap();
    }
    w.finalize().unwrap();
    cur.into_inner()
}

fn jpg_bytes() -> Vec<u8> {
    let img = image::RgbImage::from_fn(12, 10, |x, y| image::Rgb([(x * 20) as u8, (y * 20) as u8, 90]));
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80).encode_image(&img).unwrap();
    out
}

/// A CREMA-D folder with 3 train and 2 test clips (the fewest that split); returns clip ids.
fn write_cremad(root: &Path) -> Vec<String> {
    let ids: Vec<String> = (0..5).map(|i| format!("10{i:02}_DFA_NEU_XX")).collect();
    for id in &ids {
        std::fs::create_dir_all(root.join("Audio")).unwrap();
        std::fs::write(root.join(format!("Audio/{id}.wav")), wav_bytes(8_000, 800)).unwrap();
        std::fs::create_dir_all(root.join(format!("Image-01-FPS/{id}"))).unwrap();
        std::fs::write(root.join(format!("Image-01-FPS/{id}/00000.jpg")), jpg_bytes()).unwrap();
    }
    std::fs::create_dir_all(root.join("CREMAD")).unwrap();
    let rows = |r: &[String]| r.iter().map(|id| format!("{id},NEU\n")).collect::<String>();
    std::fs::write(root.join("CREMAD/train.csv"), rows(&ids[..3])).unwrap();
    std::fs::write(root.join("CREMAD/test.csv"), rows(&ids[3..])).unwrap();
    ids
}

fn opts8() -> LoadOptions {
    LoadOptions { frame_size: 8, ..LoadOptions::default() }
}

#[test]
fn wav_sample_rates_outside_the_range_and_lying_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ids = write_cremad(dir.path());
    load(DatasetId::CremaD, dir.path(), &opts8()).unwrap();
    let wav = dir.path().join(format!("Audio/{}.wav", ids[1]));
    let good = wav_bytes(8_000, 800);
    // Rates 0, 1, 999 and 10 MHz with a consistent byte rate (offset 24: rate, 28: byte rate).
    for rate in [0u32, 1, 999, 10_000_000] {
        let mut b = good.clone();
        b[24..28].copy_from_slice(&rate.to_le_bytes());
        b[28..32].copy_from_slice(&(rate.wrapping_mul(2)).to_le_bytes());
        std::fs::write(&wav, &b).unwrap();
        fails_naming(|| load(DatasetId::CremaD, dir.path(), &opts8()), &[&format!("{}.wav", ids[1]), "sample rate"]);
    }
    // The data chunk claims 4 GB; the data are cut short; the file is garbage or empty.
    let mut huge = good.clone();
    huge[40..44].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    for b in [huge, good[..good.len() - 301].to_vec(), b"RIFF\x00\x00\x00\x00WAVE".to_vec(), Vec::new()] {
        std::fs::write(&wav, &b).unwrap();
        fails_naming(|| load(DatasetId::CremaD, dir.path(), &opts8()), &[&format!("{}.wav", ids[1]), "clip again"]);
    }
}

#[test]
fn jpg_garbage_truncation_and_huge_sides_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ids = write_cremad(dir.path());
    let jpg = dir.path().join(format!("Image-01-FPS/{}/00000.jpg", ids[0]));
    let good = jpg_bytes();
    // SOF0 claiming 65,000 x 65,000 pixels.
    let sof = good.windows(2).position(|w| w == [0xff, 0xc0]).expect("baseline jpeg");
    let mut huge = good.clone();
    huge[sof + 5..sof + 7].copy_from_slice(&65_000u16.to_be_bytes());
    huge[sof + 7..sof + 9].copy_from_slice(&65_000u16.to_be_bytes());
    for b in [huge, good[..good.len() / 3].to_vec(), b"\xff\xd8\xff garbage".to_vec(), Vec::new()] {
        std::fs::write(&jpg, &b).unwrap();
        fails_naming(|| load(DatasetId::CremaD, dir.path(), &opts8()), &["00000.jpg", "jpeg"]);
    }
}

#[test]
fn csv_empty_all_media_missing_one_row_and_bad_text_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ids = write_cremad(dir.path());
    let train = dir.path().join("CREMAD/train.csv");
    for text in ["", "\u{feff}\r\n\r\n", &format!("{},NEU\n", ids[0])] {
        std::fs::write(&train, text).unwrap();
        let e = fails_naming(|| load(DatasetId::CremaD, dir.path(), &opts8()), &["CREMAD/train.csv", "no samples"]);
        assert!(matches!(e, DataError::EmptySplit { .. }), "{e}");
    }
    // Every row's media missing: the error also quotes what was skipped.
    std::fs::write(&train, "9001_X_NEU_XX,NEU\n9002_X_NEU_XX,NEU\n9003_X_NEU_XX,NEU\n").unwrap();
    fails_naming(|| load(DatasetId::CremaD, dir.path(), &opts8()), &["CREMAD/train.csv", "no samples", "skipped 3"]);
    for (text, why) in [
        (&b"\xff\xfe1001,NEU\n"[..], "utf-8"),
        (b"../../etc/passwd,NEU\n", "plain file name"),
        (b"1001_DFA_NEU_XX\n", "clip,EMOTION"),
    ] {
        std::fs::write(&train, text).unwrap();
        fails_naming(|| load(DatasetId::CremaD, dir.path(), &opts8()), &["CREMAD/train.csv", "line 1", why]);
    }
    // NaN in a precomputed spectrogram.
    write_cremad(dir.path());
    let mut spec = vec![0.0f32; 257 * 188];
    spec[7] = f32::NAN;
    write_npy(&dir.path().join(format!("Spectrogram/{}.npy", ids[2])), "<f4", &[257, 188], &f32s(&spec)).unwrap();
    fails_naming(|| load(DatasetId::CremaD, dir.path(), &opts8()), &["CREMAD/train.csv", "audio", "1 NaN/Inf"]);
    let _ = npy_bytes;
}
