//! Loaders on tiny fixtures in the datasets' own on-disk formats: npy/csv/wav/jpg are written
//! here at test time, pickle and HDF5 fixtures are committed (tests/fixtures/make_fixtures.py).

use std::path::{Path, PathBuf};

use agm_data::loaders::array::write_npy;
use agm_data::loaders::audio::{log_stft, read_wav, resample, tile_and_clip, CLIP_SAMPLES, HOP, N_FFT};
use agm_data::loaders::frames::reference_frame_index;
use agm_data::loaders::{ave, avmnist, cremad, mosei, urfunny, DatasetId, LoadOptions};
use agm_data::{load, DataError};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn le<T: Copy>(v: &[T], f: impl Fn(T) -> Vec<u8>) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

// ------------------------------------------------------------------ AV-MNIST

fn write_avmnist(root: &Path, ntr: usize, nte: usize) {
    for (split, n) in [("train", ntr), ("test", nte)] {
        let img: Vec<f64> = (0..n * 784).map(|i| (i % 256) as f64).collect();
        write_npy(
            &root.join(format!("image/{split}_data.npy")),
            "<f8",
            &[n, 784],
            &le(&img, |x| x.to_le_bytes().to_vec()),
        )
        .unwrap();
        let aud: Vec<f32> = (0..n * 112 * 112).map(|i| ((i / (112 * 112)) * 10) as f32).collect();
        write_npy(
            &root.join(format!("audio/{split}_data.npy")),
            "<f4",
            &[n, 112, 112],
            &le(&aud, |x| x.to_le_bytes().to_vec()),
        )
        .unwrap();
        let lab: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        write_npy(&root.join(format!("{split}_labels.npy")), "|u1", &[n], &lab).unwrap();
    }
}

#[test]
fn avmnist_loads_splits_shapes_and_scaling() {
    let dir = tempfile::tempdir().unwrap();
    write_avmnist(dir.path(), 20, 10);
    let d = load(DatasetId::AvMnist, dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(d.modalities.names(), ["audio", "visual"]);
    assert_eq!(d.classes, 10);
    // int(0.9*20) = 18 train rows, 1 carved for validation; test int(0.9*10) = 9; dep 2 + 1.
    assert_eq!((d.train.len(), d.validation.len(), d.test.len(), d.dep.as_ref().unwrap().len()), (17, 1, 9, 3));
    assert_eq!(d.train.sample_shape(0), [1, 112, 112]);
    assert_eq!(d.train.sample_shape(1), [1, 28, 28]);
    // test row 3: audio value 30/255, image pixel i -> (i % 256)/255, label 3.
    assert_eq!(d.test.labels()[3], 3);
    assert!((d.test.sample_data(0, 3)[0] - 30.0 / 255.0).abs() < 1e-6);
    assert!((d.test.sample_data(1, 0)[5] - 5.0 / 255.0).abs() < 1e-6);
    // dep = train rows 18, 19 then test row 9.
    assert_eq!(d.holdout(), d.dep.as_ref(), "AV-MNIST's dep is disjoint from test: methods may hold it out");
    assert_eq!(d.dep.unwrap().labels(), [8, 9, 9]);
    let mut all: Vec<u32> = d.train.labels().iter().chain(d.validation.labels()).copied().collect();
    all.sort();
    assert_eq!(all.len(), 18);
}

#[test]
fn avmnist_mapped_splits_match_the_in_memory_ones() {
    use agm_core::BatchSource;
    let dir = tempfile::tempdir().unwrap();
    write_avmnist(dir.path(), 20, 10);
    let d = load(DatasetId::AvMnist, dir.path(), &LoadOptions::default()).unwrap();
    let [train, val, test, dep] = avmnist::MappedSplit::splits(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(train.to_tensors(), d.train);
    assert_eq!(val.to_tensors(), d.validation);
    assert_eq!(test.labels(), d.test.labels());
    assert_eq!(dep.len(), 3);
    let b = test.batch(&[4, 1], &candle_core::Device::Cpu).unwrap();
    let want = d.test.batch(&[4, 1], &candle_core::Device::Cpu).unwrap();
    assert_eq!(
        b.inputs[0].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        want.inputs[0].flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    assert_eq!(b.labels.to_vec1::<u32>().unwrap(), [4, 1]);
    // An index past the split is an error, as for the in-memory split, not a panic.
    let err = test.batch(&[0, test.len()], &candle_core::Device::Cpu).unwrap_err().to_string();
    assert!(err.contains(&format!("sample index {} out of bounds", test.len())), "{err}");
}

#[test]
fn cremad_uses_precomputed_spectrograms() {
    let dir = tempfile::tempdir().unwrap();
    let ids = write_cremad(dir.path());
    let spec: Vec<f32> = (0..257 * 188).map(|i| i as f32).collect();
    // test row 0 (clip 10): replace its wav by a precomputed [257, 188] spectrogram
    std::fs::remove_file(dir.path().join(format!("Audio/{}.wav", ids[10]))).unwrap();
    write_npy(
        &dir.path().join(format!("Spectrogram/{}.npy", ids[10])),
        "<f4",
        &[257, 188],
        &le(&spec, |x| x.to_le_bytes().to_vec()),
    )
    .unwrap();
    let d = load(DatasetId::CremaD, dir.path(), &LoadOptions { frame_size: 8, ..LoadOptions::default() }).unwrap();
    assert_eq!(d.test.sample_data(0, 0), &spec[..]);
}

#[test]
fn avmnist_accepts_other_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    write_avmnist(dir.path(), 4, 3);
    let img: Vec<u8> = vec![255; 4 * 784];
    write_npy(&dir.path().join("image/train_data.npy"), "|u1", &[4, 784], &img).unwrap();
    let lab: Vec<i64> = vec![0, 1, 2, 9];
    write_npy(&dir.path().join("train_labels.npy"), "<i8", &[4], &le(&lab, |x| x.to_le_bytes().to_vec())).unwrap();
    let d = load(DatasetId::AvMnist, dir.path(), &LoadOptions::default()).unwrap();
    assert!(d.train.sample_data(1, 0).iter().all(|&v| (v - 1.0).abs() < 1e-6));
    assert_eq!(d.dep.unwrap().labels()[0], 9);
}

#[test]
fn avmnist_bad_inputs_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_avmnist(dir.path(), 4, 3);
    // label out of range
    write_npy(&dir.path().join("test_labels.npy"), "|u1", &[3], &[1, 12, 0]).unwrap();
    let e = load(DatasetId::AvMnist, dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(matches!(e, DataError::LabelOutOfRange { row: 1, label: 12.0, .. }), "{e}");
    assert!(e.to_string().contains("test_labels.npy"), "{e}");
    // Fractions and NaN are reported as read, not truncated to a class.
    for (value, shown) in [(2.5f32, "label 2.5 at row 1"), (f32::NAN, "label NaN at row 1")] {
        let bytes: Vec<u8> = [1.0f32, value, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        write_npy(&dir.path().join("test_labels.npy"), "<f4", &[3], &bytes).unwrap();
        let e = load(DatasetId::AvMnist, dir.path(), &LoadOptions::default()).unwrap_err().to_string();
        assert!(e.contains(shown), "{e}");
    }
    write_npy(&dir.path().join("test_labels.npy"), "|u1", &[3], &[1, 2, 0]).unwrap();
    // truncated npy
    let p = dir.path().join("audio/test_data.npy");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let e = load(DatasetId::AvMnist, dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("audio/test_data.npy") && e.to_string().contains("truncated"), "{e}");
    std::fs::write(&p, &bytes[..20]).unwrap();
    let e = load(DatasetId::AvMnist, dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("audio/test_data.npy"), "{e}");
    // missing files: every one is named at once
    std::fs::remove_file(&p).unwrap();
    let e = load(DatasetId::AvMnist, dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(matches!(e, DataError::MissingFiles { .. }) && e.to_string().contains("audio/test_data.npy"), "{e}");
    let labels = dir.path().join("train_labels.npy");
    let label_bytes = std::fs::read(&labels).unwrap();
    std::fs::remove_file(&labels).unwrap();
    let e = load(DatasetId::AvMnist, dir.path(), &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("lacks these 2 files: train_labels.npy, audio/test_data.npy"), "{e}");
    std::fs::write(&labels, label_bytes).unwrap();
    // wrong row count
    write_npy(&p, "<f4", &[2, 112, 112], &vec![0u8; 2 * 112 * 112 * 4]).unwrap();
    let e = load(DatasetId::AvMnist, dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(matches!(e, DataError::BadShape { .. }) && e.to_string().contains("expected 3 rows"), "{e}");
    let _ = avmnist::CLASSES;
}

// ------------------------------------------------------------------ CREMA-D

fn write_wav(path: &Path, rate: u32, secs: f32, freq: f32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let spec =
        hound::WavSpec { channels: 1, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..(rate as f32 * secs) as usize {
        let v = 0.5 * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin();
        w.write_sample((v * 32767.0) as i16).unwrap();
    }
    w.finalize().unwrap();
}

fn write_jpg(path: &Path, shade: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(40, 30, |x, _| image::Rgb([shade, (x * 6) as u8, 128]));
    img.save_with_format(path, image::ImageFormat::Jpeg).unwrap();
}

const EMOS: [&str; 6] = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"];

/// 10 train clips (one without media), 4 test clips; train.csv has a BOM, both use CRLF.
fn write_cremad(root: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    let mut train = String::from("\u{feff}");
    let mut test = String::new();
    for i in 0..14 {
        let emo = EMOS[i % 6];
        let id = format!("10{:02}_DFA_{emo}_XX", i + 1);
        let rate = if i % 2 == 0 { 16_000 } else { 22_050 };
        if i != 4 {
            write_wav(&root.join(format!("Audio/{id}.wav")), rate, 0.5 + 0.1 * i as f32, 440.0);
            for f in 0..(1 + i % 3) {
                write_jpg(&root.join(format!("Image-01-FPS/{id}/{:05}.jpg", f * 30)), (f * 100) as u8);
            }
        }
        let row = format!("{id},{emo}\r\n");
        if i < 10 {
            train.push_str(&row)
        } else {
            test.push_str(&row)
        }
        ids.push(id);
    }
    std::fs::create_dir_all(root.join("CREMAD")).unwrap();
    std::fs::write(root.join("CREMAD/train.csv"), train).unwrap();
    std::fs::write(root.join("CREMAD/test.csv"), test).unwrap();
    ids
}

#[test]
fn cremad_loads_csv_wav_and_frames() {
    let dir = tempfile::tempdir().unwrap();
    write_cremad(dir.path());
    let opts = LoadOptions { frame_size: 16, ..LoadOptions::default() };
    let d = load(DatasetId::CremaD, dir.path(), &opts).unwrap();
    assert_eq!(d.classes, 6);
    // 9 present train rows -> int(8.1) = 8 (1 validation), test 4 -> 3, dep 1 + 1.
    assert_eq!((d.train.len(), d.validation.len(), d.test.len(), d.dep.as_ref().unwrap().len()), (7, 1, 3, 2));
    assert_eq!(d.train.sample_shape(0), [1, 257, 188]);
    assert_eq!(d.train.sample_shape(1), [3, 1, 16, 16]);
    assert_eq!(d.notes.len(), 1, "{:?}", d.notes);
    assert!(d.notes[0].contains("1005_DFA_DIS_XX"), "{:?}", d.notes);
    // test rows are clips 11..13 (labels in class_dict order NEU 0 .. ANG 5)
    assert_eq!(d.test.labels(), [4, 5, 0]);
    assert!(d.train.modality_data(0).iter().all(|v| v.is_finite()));
    // the visual channel 2 is the constant 128 -> (128/255 - 0.406)/0.225
    let v = d.test.sample_data(1, 0);
    let want = (128.0 / 255.0 - 0.406) / 0.225;
    let mean = v[2 * 256..].iter().sum::<f32>() / 256.0; // jpeg is lossy: compare the mean
    assert!((mean - want).abs() < 0.05, "{mean} vs {want}");
}

/// Folders smaller than the release are named from their index files; the release's sizes pass.
#[test]
fn data_smaller_than_the_release_is_named_from_its_index_files() {
    use agm_data::loaders::smaller_than_release;
    let dir = tempfile::tempdir().unwrap();
    write_cremad(dir.path());
    let note = smaller_than_release(DatasetId::CremaD, dir.path()).unwrap().unwrap();
    assert_eq!(note, "the data holds 10 / 4 train.csv / test.csv rows; the released CREMA-D has 6698 / 744");
    let note = smaller_than_release(DatasetId::Ave, &fixtures().join("ave")).unwrap().unwrap();
    assert!(note.contains("train / val / test videos; the released AVE has 3339 / 402 / 402"), "{note}");
    // A release-sized CREMA-D list is not flagged (the media are not read).
    let full: String = (0..6_698).map(|i| format!("{},NEU\n", 1001 + i)).collect();
    std::fs::write(dir.path().join("CREMAD/train.csv"), full).unwrap();
    let test: String = (0..744).map(|i| format!("{},SAD\n", 9001 + i)).collect();
    std::fs::write(dir.path().join("CREMAD/test.csv"), test).unwrap();
    assert_eq!(smaller_than_release(DatasetId::CremaD, dir.path()).unwrap(), None);
    // Sizes agm does not pin are not guessed.
    assert_eq!(smaller_than_release(DatasetId::UrFunny, dir.path()).unwrap(), None);
}

#[test]
fn cremad_frame_choice_follows_the_reference_table() {
    // numpy: [np.random.seed(999) or np.random.choice(n, 1, replace=False)[0] for n in 1..39]
    let want = [
        0, 1, 1, 2, 3, 2, 3, 3, 7, 6, 2, 4, 2, 2, 2, 2, 2, 14, 6, 7, 4, 11, 12, 14, 14, 15, 9, 10, 14, 14, 14, 14, 12,
        12, 23, 23, 23, 23, 17,
    ];
    for (n, w) in (1..=39).zip(want) {
        assert_eq!(reference_frame_index(n), w, "n = {n}");
    }
}

#[test]
fn cremad_bad_inputs_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let ids = write_cremad(dir.path());
    // strict: the row without media is an error naming the csv, line and missing wav
    let strict = LoadOptions { frame_size: 8, strict_media: true, ..LoadOptions::default() };
    let e = load(DatasetId::CremaD, dir.path(), &strict).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("train.csv") && s.contains("line 5") && s.contains(&format!("Audio/{}.wav", ids[4])), "{s}");
    // a frame folder without frames
    let frames = dir.path().join(format!("Image-01-FPS/{}", ids[2]));
    for f in std::fs::read_dir(&frames).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let e = load(DatasetId::CremaD, dir.path(), &LoadOptions { frame_size: 8, ..LoadOptions::default() }).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("train.csv: line 3") && s.contains("no jpg frame"), "{s}");
    // bad label
    std::fs::write(dir.path().join("CREMAD/test.csv"), "1011_DFA_NEU_XX,XYZ\n").unwrap();
    write_jpg(&frames.join("00000.jpg"), 1);
    let e = load(DatasetId::CremaD, dir.path(), &LoadOptions { frame_size: 8, ..LoadOptions::default() }).unwrap_err();
    assert!(e.to_string().contains("test.csv: line 1") && e.to_string().contains("XYZ"), "{e}");
    // missing csv
    std::fs::remove_file(dir.path().join("CREMAD/test.csv")).unwrap();
    let e = load(DatasetId::CremaD, dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("CREMAD/test.csv"), "{e}");
    let _ = cremad::CLASSES;
}

#[test]
fn stft_of_a_sine_peaks_at_its_bin_with_the_expected_magnitude() {
    // 20 * 22050 / 512 Hz sits exactly on bin 20; a Hann window of 512 sums to 256, so the
    // magnitude there is A * 256 / 2.
    let f = 20.0 * 22_050.0 / 512.0;
    let a = 0.5f64;
    let x: Vec<f32> =
        (0..CLIP_SAMPLES).map(|i| (a * (2.0 * std::f64::consts::PI * f * i as f64 / 22_050.0).sin()) as f32).collect();
    let (spec, bins, frames) = log_stft(&x, N_FFT, HOP);
    assert_eq!((bins, frames), (257, 188));
    for t in [5, 94, 180] {
        let col: Vec<f32> = (0..bins).map(|b| spec[b * frames + t]).collect();
        let peak = col.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
        assert_eq!(peak, 20, "frame {t}");
        let mag = col[20].exp();
        assert!((mag as f64 - a * 128.0).abs() < 0.05, "magnitude {mag}");
    }
    // centring zero-pads: the first frame sees half a window
    let mag0 = spec[20 * frames].exp();
    assert!(mag0 < 0.75 * a as f32 * 128.0 && mag0 > 0.25 * a as f32 * 128.0, "{mag0}");
    // silence gives log(1e-7)
    let (s0, _, _) = log_stft(&[0.0; 1000], N_FFT, HOP);
    assert!((s0[0] - (1e-7f32).ln()).abs() < 1e-3);
}

#[test]
fn resampling_keeps_a_tone_and_tiling_fills_three_seconds() {
    let x: Vec<f32> = (0..16_000).map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16_000.0).sin()).collect();
    let y = resample(&x, 16_000, 22_050);
    assert_eq!(y.len(), 22_050);
    // a 1 kHz tone at 22.05 kHz: compare the middle against the analytic signal
    let err = (5000..17_000)
        .map(|i| (y[i] - (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 22_050.0).sin()).abs())
        .fold(0f32, f32::max);
    assert!(err < 0.02, "max error {err}");
    let t = tile_and_clip(&[2.0, -0.5]);
    assert_eq!(t.len(), CLIP_SAMPLES);
    assert_eq!(&t[..6], &[1.0, -0.5, 1.0, -0.5, 1.0, -0.5]);
    assert!(t[6..].iter().all(|&v| v == 0.0));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.wav");
    write_wav(&p, 22_050, 0.1, 440.0);
    let (w, rate) = read_wav(&p).unwrap();
    assert_eq!((w.len(), rate), (2205, 22_050));
}

// ------------------------------------------------------------------ UR-Funny

#[test]
fn urfunny_pickles_protocol_2_numpy1_and_protocol_4_numpy2_agree() {
    let a = urfunny::load(&fixtures().join("urfunny/humor_p2_np1.pkl")).unwrap();
    let b = urfunny::load(&fixtures().join("urfunny/humor_p4.pkl")).unwrap();
    for (x, y) in [(&a.train, &b.train), (&a.validation, &b.validation), (&a.test, &b.test)] {
        assert_eq!(x, y);
    }
    assert_eq!(a.modalities.names(), ["audio", "visual", "text"]);
    // train: 5 rows, row 1 has all-zero text -> dropped
    assert_eq!((a.train.len(), a.validation.len(), a.test.len()), (4, 3, 4));
    assert_eq!(a.dep.as_ref().unwrap(), &a.test);
    assert!(a.holdout().is_none(), "UR-Funny's dep is its test split: no method may hold it out");
    assert_eq!(a.train.sample_shape(0), [8, 4]);
    assert_eq!(a.train.sample_shape(1), [8, 5]);
    assert_eq!(a.train.sample_shape(2), [8, 3]);
    // labels: train i % 2 over kept rows 0,2,3,4; valid {-1,1} -> {0,1}
    assert_eq!(a.train.labels(), [0, 0, 1, 0]);
    assert_eq!(a.validation.labels(), [0, 1, 0]);
    // text of train row 0 had 3 words at the end (start = 5): now at the front, zeros after
    let t = a.train.sample_data(2, 0);
    assert!(t[..9].iter().all(|&v| (v - 0.01).abs() < 1e-6) && t[9..].iter().all(|&v| v == 0.0));
    // train row 2 (kept index 1): 5 words -> start 3; its audio -inf at step 7 became 0 at step 4
    let au = a.train.sample_data(0, 1);
    assert_eq!(au[4 * 4], 0.0);
    assert!(au.iter().all(|v| v.is_finite()));
    assert!(a.notes.iter().any(|n| n.contains("dropped 1 `train`")), "{:?}", a.notes);
}

#[test]
fn urfunny_batches_are_cut_to_their_longest_valid_sequence() {
    use agm_core::BatchSource;
    let d = load(DatasetId::UrFunny, &fixtures().join("urfunny/humor_p4.pkl"), &LoadOptions::default()).unwrap();
    // T = 8 and row i holds 3 + i words; train row 1 (all-zero text) is dropped.
    assert_eq!(d.train.valid_lengths(), Some(&[3, 5, 6, 7][..]));
    assert_eq!(d.validation.valid_lengths(), Some(&[3, 4, 5][..]));
    assert_eq!(d.test.valid_lengths(), Some(&[3, 4, 5, 6][..]));
    assert_eq!(d.dep.as_ref().unwrap().valid_lengths(), d.test.valid_lengths());
    let widths = [4, 5, 3];
    for (split, lengths) in [(&d.train, [3, 5, 6, 7]), (&d.test, [3, 4, 5, 6])] {
        // The steps a batch cuts off hold nothing.
        for (i, &len) in lengths.iter().enumerate() {
            for (m, w) in widths.iter().enumerate() {
                assert!(split.sample_data(m, i)[len * w..].iter().all(|&v| v == 0.0), "sample {i} modality {m}");
            }
        }
    }
    // Through the trait object every caller holds, in any order, the last batch included.
    let source: &dyn BatchSource = &d.train;
    assert!(source.pads_per_batch());
    for (indices, steps) in [(vec![0], 3), (vec![0, 1], 5), (vec![1, 0], 5), (vec![3, 0, 2], 7), (vec![2], 6)] {
        let batch = source.batch(&indices, &candle_core::Device::Cpu).unwrap();
        for (m, w) in widths.iter().enumerate() {
            assert_eq!(batch.inputs[m].dims(), [indices.len(), steps, *w], "{indices:?} modality {m}");
            let values = batch.inputs[m].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let stored: Vec<f32> =
                indices.iter().flat_map(|&i| d.train.sample_data(m, i)[..steps * w].to_vec()).collect();
            assert_eq!(values, stored, "{indices:?} modality {m}");
        }
        let labels = batch.labels.to_vec1::<u32>().unwrap();
        assert_eq!(labels, indices.iter().map(|&i| d.train.labels()[i]).collect::<Vec<_>>());
    }
}

/// A batch of `split` holds its stored samples at their stored shape, bit for bit.
#[track_caller]
fn batches_as_stored(name: &str, split: &agm_data::SplitTensors) {
    use agm_core::BatchSource;
    assert!(!BatchSource::pads_per_batch(&split), "{name}");
    assert_eq!(split.valid_lengths(), None, "{name}");
    let indices: Vec<usize> = (0..split.len()).rev().collect();
    let batch = split.batch(&indices, &candle_core::Device::Cpu).unwrap();
    for m in 0..split.num_modalities() {
        let dims: Vec<usize> = [&[indices.len()], split.sample_shape(m)].concat();
        assert_eq!(batch.inputs[m].dims(), dims.as_slice(), "{name} modality {m}");
        let values = batch.inputs[m].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let stored: Vec<f32> = indices.iter().flat_map(|&i| split.sample_data(m, i).iter().copied()).collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&values), bits(&stored), "{name} modality {m}");
    }
}

#[test]
fn only_urfunny_pads_per_batch_other_datasets_batch_their_stored_shapes() {
    let dir = tempfile::tempdir().unwrap();
    write_avmnist(dir.path(), 20, 10);
    let avmnist = load(DatasetId::AvMnist, dir.path(), &LoadOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_cremad(dir.path());
    let cremad = load(DatasetId::CremaD, dir.path(), &LoadOptions { frame_size: 8, ..LoadOptions::default() }).unwrap();
    // MOSEI's mels and tokens end in zero padding, which the reference keeps at 60 steps.
    let mosei = load(DatasetId::Mosei, &fixtures().join("mosei"), &LoadOptions::default()).unwrap();
    let ave = load(DatasetId::Ave, &fixtures().join("ave"), &LoadOptions::default()).unwrap();
    for d in [&avmnist, &cremad, &mosei, &ave] {
        for (name, split) in [("train", &d.train), ("validation", &d.validation), ("test", &d.test)] {
            batches_as_stored(&format!("{} {name}", d.id.as_str()), split);
        }
        if let Some(dep) = &d.dep {
            batches_as_stored(&format!("{} dep", d.id.as_str()), dep);
        }
    }
}

#[test]
fn urfunny_pickle_with_a_missing_key_names_file_and_key() {
    let e = urfunny::load(&fixtures().join("urfunny/humor_missing_audio.pkl")).unwrap_err();
    assert!(matches!(&e, DataError::MissingKey { key, .. } if key == "valid/audio"), "{e}");
    assert!(e.to_string().contains("humor_missing_audio.pkl"), "{e}");
    let e = urfunny::load(&fixtures().join("urfunny/nope.pkl")).unwrap_err();
    assert!(e.to_string().contains("nope.pkl"), "{e}");
    // truncated pickle
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("humor.pkl");
    let bytes = std::fs::read(fixtures().join("urfunny/humor_p4.pkl")).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load(DatasetId::UrFunny, dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(matches!(e, DataError::Pickle { .. }) && e.to_string().contains("humor.pkl"), "{e}");
}

#[test]
fn pickle_reader_rejects_arbitrary_globals() {
    // protocol 0/2 style: cos\nsystem\n(S'echo hi'\ntR.
    let e = agm_data::loaders::pickle::parse_pickle(b"\x80\x02cos\nsystem\nq\x00.", Path::new("evil.pkl")).unwrap_err();
    assert!(e.to_string().contains("os.system is not allowed"), "{e}");
}

// ------------------------------------------------------------------ CMU-MOSEI

#[test]
fn mosei_loads_tokens_mels_and_binary_sentiment() {
    let root = fixtures().join("mosei");
    let d = load(DatasetId::Mosei, &root, &LoadOptions::default()).unwrap();
    assert_eq!(d.modalities.names(), ["audio", "text"]);
    assert_eq!((d.train.len(), d.validation.len(), d.test.len()), (3, 2, 2));
    assert!(d.dep.is_none());
    assert!(d.notes.iter().any(|n| n.contains("t3st[5]")), "{:?}", d.notes);
    assert_eq!(d.train.sample_shape(0), [60, 80]);
    assert_eq!(d.train.sample_shape(1), [60]);
    // sentiment 1.5 (numpy scalar), -0.5, [0.0] -> 1, 0, 1 (0 counts as positive)
    assert_eq!(d.train.labels(), [1, 0, 1]);
    assert_eq!(d.validation.labels(), [0, 1]);
    // token_to_ix.pkl: "Hello world ." -> hello 2, world 3; "." is cleaned away; pad 0
    let t = d.train.sample_data(1, 0);
    assert_eq!(&t[..3], &[2.0, 3.0, 0.0]);
    // "It's a well-made film!" -> its 4, a 5, "well made" 6, film 7
    assert_eq!(&d.train.sample_data(1, 1)[..5], &[4.0, 5.0, 6.0, 7.0, 0.0]);
    // unknown word -> 1
    assert_eq!(&d.validation.sample_data(1, 0)[..3], &[2.0, 1.0, 0.0]);
    // mels: 4 rows kept then zero padding; 62 rows truncated to 60 (no zero row)
    let m = d.train.sample_data(0, 0);
    assert!(m[..4 * 80].iter().any(|&v| v != 0.0) && m[4 * 80..].iter().all(|&v| v == 0.0));
    let m = d.train.sample_data(0, 1);
    assert!(m.chunks(80).all(|row| row.iter().any(|&v| v != 0.0)));
}

#[test]
fn mosei_builds_its_vocabulary_from_train_without_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixtures().join("mosei")).unwrap() {
        let p = f.unwrap().path();
        if p.file_name().unwrap() != "token_to_ix.pkl" {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let d = mosei::load(dir.path()).unwrap();
    // the reference's quirk: the first word ("hello") gets id len({'UNK': 1}) = 1
    assert_eq!(&d.train.sample_data(1, 0)[..3], &[1.0, 2.0, 0.0]);
    assert_eq!(mosei::vocab_size(dir.path()).unwrap(), 8);
    std::fs::remove_file(dir.path().join("valid_mels.p")).unwrap();
    let e = mosei::load(dir.path()).unwrap_err();
    assert!(e.to_string().contains("valid_mels.p"), "{e}");
}

/// The MOSEI fixture in a temporary folder, with `train_glove.npy` of `rows` x `dim` values
/// `i / 8` where given, and without `token_to_ix.pkl` where `vocab_cache` is false.
fn mosei_folder(glove: Option<(usize, usize)>, vocab_cache: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixtures().join("mosei")).unwrap() {
        let p = f.unwrap().path();
        if vocab_cache || p.file_name().unwrap() != "token_to_ix.pkl" {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    if let Some((rows, dim)) = glove {
        let body: Vec<u8> = (0..rows * dim).flat_map(|i| (i as f32 / 8.0).to_le_bytes()).collect();
        write_npy(&dir.path().join("train_glove.npy"), "<f4", &[rows, dim], &body).unwrap();
    }
    dir
}

#[test]
fn mosei_reads_the_reference_s_glove_cache_as_word_vectors() {
    // Without the cache the embedding keeps its random start.
    assert!(mosei::load(mosei_folder(None, true).path()).unwrap().word_vectors.is_none());
    let dir = mosei_folder(Some((9, 3)), true);
    let v = mosei::load(dir.path()).unwrap().word_vectors.unwrap();
    assert_eq!((v.rows, v.dim, v.values.len()), (9, 3, 27));
    assert_eq!((v.values[0], v.values[26]), (0.0, 26.0 / 8.0));
    assert!(v.source.ends_with("train_glove.npy"));
    // token_to_ix.pkl has ids up to 8: 5 rows cannot embed them.
    let e = mosei::load(mosei_folder(Some((5, 3)), true).path()).unwrap_err().to_string();
    assert!(e.contains("train_glove.npy") && e.contains("ids up to 8"), "{e}");
    // The rows follow token_to_ix.pkl's ids, so it must be there too.
    let e = mosei::load(mosei_folder(Some((9, 3)), false).path()).unwrap_err().to_string();
    assert!(e.contains("train_glove.npy") && e.contains("token_to_ix.pkl, which is missing"), "{e}");
    // Non-finite and integer vectors are refused, naming the file.
    let dir = mosei_folder(None, true);
    let mut body: Vec<u8> = (0..27).flat_map(|i| (i as f32).to_le_bytes()).collect();
    body[4 * 13..4 * 14].copy_from_slice(&f32::NAN.to_le_bytes());
    write_npy(&dir.path().join("train_glove.npy"), "<f4", &[9, 3], &body).unwrap();
    let e = mosei::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("train_glove.npy") && e.contains("row 4 holds NaN"), "{e}");
    write_npy(&dir.path().join("train_glove.npy"), "<i8", &[9, 1], &[0u8; 72]).unwrap();
    let e = mosei::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("train_glove.npy") && e.contains("expected float"), "{e}");
}

// ------------------------------------------------------------------ AVE

#[test]
fn ave_loads_hdf5_features_orders_and_segment_labels() {
    let d = load(DatasetId::Ave, &fixtures().join("ave"), &LoadOptions::default()).unwrap();
    assert_eq!(d.classes, 29);
    assert_eq!((d.train.len(), d.validation.len(), d.test.len()), (4, 1, 1));
    assert_eq!(d.train.sample_shape(0), [10, 128]);
    assert_eq!(d.train.sample_shape(1), [10, 7, 7, 512]);
    // train order [0, 2, 3, 5]: event classes 0 (bell), 2 (bark), 0, 27 (mandolin)
    assert_eq!(d.train.labels(), [0, 2, 0, 27]);
    assert_eq!(d.validation.labels(), [1]);
    let seg = d.segment_labels.as_ref().unwrap();
    assert_eq!(seg.segments, 10);
    // video 1: male speech on [2, 5)
    assert_eq!(seg.validation, [28, 28, 1, 1, 1, 28, 28, 28, 28, 28]);
    // f64 audio: row i, segment t = i + t/10; gzip-chunked f32 visual: i * 0.5, [t,0,0,0] = -1
    let a = d.train.sample_data(0, 1); // video 2
    assert!((a[3 * 128] - 2.3).abs() < 1e-6);
    let v = d.train.sample_data(1, 3); // video 5
    assert_eq!(v[0], -1.0);
    assert_eq!(v[1], 2.5);
    let _ = ave::BACKGROUND;
}

#[test]
fn ave_bad_inputs_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixtures().join("ave")).unwrap() {
        let p = f.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    std::fs::remove_file(dir.path().join("val_order.h5")).unwrap();
    let e = load(DatasetId::Ave, dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("val_order.h5"), "{e}");
    std::fs::copy(dir.path().join("test_order.h5"), dir.path().join("val_order.h5")).unwrap();
    // a truncated HDF5 file
    let p = dir.path().join("audio_feature.h5");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    let e = load(DatasetId::Ave, dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("audio_feature.h5"), "{e}");
}

#[test]
fn dataset_ids_parse() {
    for id in DatasetId::ALL {
        assert_eq!(id.as_str().parse::<DatasetId>().unwrap(), id);
    }
    assert_eq!("CREMA-D".parse::<DatasetId>().unwrap(), DatasetId::CremaD);
    assert!("mnist".parse::<DatasetId>().is_err());
}

#[test]
fn an_empty_folder_names_every_file_each_dataset_needs() {
    let dir = tempfile::tempdir().unwrap();
    for (id, count) in [(DatasetId::AvMnist, 6), (DatasetId::CremaD, 3), (DatasetId::Ave, 6), (DatasetId::Mosei, 9)] {
        let e = load(id, dir.path(), &LoadOptions::default()).unwrap_err();
        let DataError::MissingFiles { listing, .. } = &e else { panic!("{id:?}: {e}") };
        assert!(listing.starts_with(&format!("these {count} files: ")), "{id:?}: {e}");
    }
    let e = load(DatasetId::UrFunny, dir.path(), &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("lacks humor.pkl"), "{e}");
    // A path that does not exist is named as such, for a folder dataset and for UR-Funny's file.
    let nowhere = dir.path().join("nowhere");
    for id in [DatasetId::AvMnist, DatasetId::UrFunny] {
        let e = load(id, &nowhere, &LoadOptions::default()).unwrap_err();
        assert!(matches!(e, DataError::NotFound { .. }) && e.to_string().contains("nowhere does not exist"), "{e}");
    }
    // One of a dataset's files passed where its folder goes is named as a file.
    let file = dir.path().join("train_labels.npy");
    std::fs::write(&file, b"x").unwrap();
    let e = load(DatasetId::AvMnist, &file, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(e, DataError::NotAFolder { .. }) && e.to_string().contains("is a file; pass the dataset's folder")
    );
}
