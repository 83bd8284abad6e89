//! Loading the AV-Digits asset into standardised, optionally noised tensors.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use agm_core::ModalitySet;
use flate2::read::GzDecoder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::format::AssetHeader;
use super::{Origin, Split, ASSET, ASSET_PATH_IN_REPO, HEADER_LEN};
use crate::dataset::SplitTensors;
use crate::error::{DataError, Result};

/// How much Gaussian noise is added to each modality, which sets the modality imbalance, and
/// whether some digit classes share their audio.
///
/// Audio noise is in standardised-MFCC units, image noise in pixel units after scaling to
/// `[0, 1]` (noised pixels are not clipped).
///
/// # Ambiguous audio
/// `ambiguous:<pairs>,<audio_std>,<image_std>` makes the audio of the first `pairs` entries of
/// [`AMBIGUOUS_PAIRS`] indistinguishable: every sample
/// whose digit is one of a pair `(a, b)` gets, in place of its own recording, a recording drawn
/// uniformly (with replacement) from the pooled recordings of digits `a` and `b` *of the same
/// split*. The draw is made once, after standardisation and before noise, from a ChaCha8
/// generator seeded with the noise seed on stream 2, in asset order, so it is the same at every
/// load and each split draws only from its own clips (no recording crosses splits). The audio of
/// a sample of `a` then has exactly the distribution of the audio of a sample of `b`: audio
/// still tells the pair apart from the other digits but carries no information on which of the
/// two it is, while the image does. Other digits keep their own recordings. The standardisation
/// statistics are those of the original train recordings, and [`AvDigits::origins`] names the
/// clip each sample actually carries.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum NoisePreset {
    /// Clean data: audio learns faster and dominates (this crate's default; `cargo xtask train`
    /// uses [`NoisePreset::NoisyAudio`], see docs/av-digits-default.md).
    #[default]
    AudioDominant,
    /// Audio noise std 1.0: both modalities comparably useful.
    Balanced,
    /// Audio noise std 2.0: the image becomes dominant.
    ImageDominant,
    /// Explicit noise levels (`custom:<audio_std>,<image_std>`).
    Custom {
        /// Gaussian noise std added to the standardised MFCCs, at least 0.
        audio_noise_std: f32,
        /// Gaussian noise std added to the `[0, 1]` pixels, at least 0.
        image_noise_std: f32,
    },
    /// `noisy-audio`: audio noise std 1.25, clean images. Audio is still the modality joint
    /// training fits first, but each training recording carries its own fixed noise, which
    /// the audio encoder can memorise: joint training then fits the train set through audio and
    /// leaves the image encoder under-trained, although images carry the digit cleanly. The
    /// AV-Digits setting in which AGM's accuracy gain over joint training shows
    /// (`docs/av-digits-default.md`).
    NoisyAudio,
    /// Ambiguous audio for the first `pairs` digit pairs of [`AMBIGUOUS_PAIRS`] plus explicit
    /// noise levels (`ambiguous:<pairs>,<audio_std>,<image_std>`); see the type's doc.
    Ambiguous {
        /// How many entries of [`AMBIGUOUS_PAIRS`] pool their audio, 0 to 5.
        pairs: u8,
        /// Gaussian noise std added to the standardised MFCCs, at least 0.
        audio_noise_std: f32,
        /// Gaussian noise std added to the `[0, 1]` pixels, at least 0.
        image_noise_std: f32,
    },
}

/// The digit pairs whose audio [`NoisePreset::Ambiguous`] pools, in the order they are taken.
pub const AMBIGUOUS_PAIRS: [(u8, u8); 5] = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)];

impl NoisePreset {
    /// The four presets with a plain name (every preset but `custom:` and `ambiguous:`).
    pub const NAMED: [NoisePreset; 4] =
        [NoisePreset::AudioDominant, NoisePreset::Balanced, NoisePreset::ImageDominant, NoisePreset::NoisyAudio];

    /// Noise std added to the standardised MFCCs.
    pub fn audio_noise_std(self) -> f32 {
        match self {
            NoisePreset::AudioDominant => 0.0,
            NoisePreset::Balanced => 1.0,
            NoisePreset::ImageDominant => 2.0,
            NoisePreset::NoisyAudio => 1.25,
            NoisePreset::Custom { audio_noise_std, .. } | NoisePreset::Ambiguous { audio_noise_std, .. } => {
                audio_noise_std
            }
        }
    }

    /// Noise std added to the `[0, 1]` pixels.
    pub fn image_noise_std(self) -> f32 {
        match self {
            NoisePreset::Custom { image_noise_std, .. } | NoisePreset::Ambiguous { image_noise_std, .. } => {
                image_noise_std
            }
            _ => 0.0,
        }
    }

    /// The digit pairs whose audio is pooled (empty for the noise-only presets).
    pub fn ambiguous_pairs(self) -> &'static [(u8, u8)] {
        match self {
            NoisePreset::Ambiguous { pairs, .. } => &AMBIGUOUS_PAIRS[..(pairs as usize).min(AMBIGUOUS_PAIRS.len())],
            _ => &[],
        }
    }
}

impl fmt::Display for NoisePreset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoisePreset::AudioDominant => f.write_str("audio-dominant"),
            NoisePreset::Balanced => f.write_str("balanced"),
            NoisePreset::ImageDominant => f.write_str("image-dominant"),
            NoisePreset::NoisyAudio => f.write_str("noisy-audio"),
            NoisePreset::Custom { audio_noise_std, image_noise_std } => {
                write!(f, "custom:{audio_noise_std},{image_noise_std}")
            }
            NoisePreset::Ambiguous { pairs, audio_noise_std, image_noise_std } => {
                write!(f, "ambiguous:{pairs},{audio_noise_std},{image_noise_std}")
            }
        }
    }
}

/// The largest noise standard deviation a preset takes: the features are about unit scale, and
/// noise far beyond this (or one overflowing f32) only makes training diverge.
pub const MAX_NOISE_STD: f32 = 1e6;

impl FromStr for NoisePreset {
    type Err = DataError;

    /// `audio-dominant`, `balanced`, `image-dominant`, `noisy-audio`, `custom:<audio_std>,<image_std>` or
    /// `ambiguous:<pairs>,<audio_std>,<image_std>` (pairs 0 to 5).
    fn from_str(s: &str) -> Result<Self> {
        let bad = |problem: String| DataError::UnknownPreset { name: s.to_string(), problem };
        // The named presets, spelled as `Display` writes them.
        let named =
            [NoisePreset::AudioDominant, NoisePreset::Balanced, NoisePreset::ImageDominant, NoisePreset::NoisyAudio]
                .map(|p| (p.to_string(), p));
        let unknown = || {
            let hint = agm_core::suggest::did_you_mean(s.trim(), named.iter().map(|(n, _)| n.as_str()));
            bad(format!("not a known name{hint}"))
        };
        match named.iter().find(|(n, _)| n == s.trim()) {
            Some(&(_, preset)) => Ok(preset),
            None => {
                let other = s.trim();
                let std = |t: &str| {
                    let t = t.trim();
                    t.parse::<f32>()
                        .ok()
                        .filter(|x| (0.0..=MAX_NOISE_STD).contains(x))
                        .ok_or_else(|| bad(format!("noise std `{t}` is not a number from 0 to {MAX_NOISE_STD}")))
                };
                if let Some(rest) = other.strip_prefix("ambiguous:") {
                    let fields: Vec<&str> = rest.split(',').collect();
                    let [p, a, v] = fields[..] else { return Err(bad("it takes three numbers".into())) };
                    let pairs =
                        p.trim().parse::<u8>().ok().filter(|&k| k as usize <= AMBIGUOUS_PAIRS.len()).ok_or_else(
                            || bad(format!("pairs `{}` is not 0 to {}", p.trim(), AMBIGUOUS_PAIRS.len())),
                        )?;
                    return Ok(NoisePreset::Ambiguous { pairs, audio_noise_std: std(a)?, image_noise_std: std(v)? });
                }
                let rest = other.strip_prefix("custom:").ok_or_else(unknown)?;
                let (a, v) = rest.split_once(',').ok_or_else(|| bad("it takes two numbers".into()))?;
                Ok(NoisePreset::Custom { audio_noise_std: std(a)?, image_noise_std: std(v)? })
            }
        }
    }
}

/// How [`load`] prepares the data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AvDigitsConfig {
    /// Noise levels and ambiguous digit pairs.
    pub preset: NoisePreset,
    /// MFCC frames kept per sample (1 to 32; the asset stores 32).
    pub frames: usize,
    /// Seed of the noise generator. Keep the default so every run sees the same data.
    pub noise_seed: u64,
}

impl AvDigitsConfig {
    /// The fixed default noise seed.
    pub const DEFAULT_NOISE_SEED: u64 = 0x00A6_D161_7500_0001;

    /// The default: clean data (audio-dominant), 32 frames, the fixed noise seed.
    pub fn default_preset() -> Self {
        Self::with_preset(NoisePreset::AudioDominant)
    }

    /// `preset` with 32 frames and the fixed noise seed.
    pub fn with_preset(preset: NoisePreset) -> Self {
        Self { preset, frames: super::FRAMES, noise_seed: Self::DEFAULT_NOISE_SEED }
    }
}

impl Default for AvDigitsConfig {
    fn default() -> Self {
        Self::default_preset()
    }
}

/// The loaded AV-Digits set.
///
/// Modalities `["audio", "visual"]` (audio first): audio `[1, 13, frames]` standardised MFCCs,
/// visual `[1, 28, 28]` pixels in `[0, 1]` (before any image noise). Within each split, samples
/// keep asset order (audio clip order).
#[derive(Clone, Debug)]
pub struct AvDigits {
    modalities: ModalitySet,
    header: AssetHeader,
    config: AvDigitsConfig,
    splits: Vec<SplitTensors>,
    origins: Vec<Vec<Origin>>,
    audio_mean: Vec<f32>,
    audio_std: Vec<f32>,
}

impl AvDigits {
    /// `["audio", "visual"]`.
    pub fn modalities(&self) -> &ModalitySet {
        &self.modalities
    }

    /// Number of classes (10 digits).
    pub fn num_classes(&self) -> usize {
        self.header.num_classes
    }

    /// Samples over all splits.
    pub fn num_samples(&self) -> usize {
        self.header.num_samples
    }

    /// The samples of `split`.
    pub fn split(&self, split: Split) -> &SplitTensors {
        &self.splits[split as usize]
    }

    /// Where each sample of `split` came from, in the split's sample order.
    pub fn origins(&self, split: Split) -> &[Origin] {
        &self.origins[split as usize]
    }

    /// The asset's decoded header.
    pub fn header(&self) -> &AssetHeader {
        &self.header
    }

    /// The configuration the set was loaded with.
    pub fn config(&self) -> &AvDigitsConfig {
        &self.config
    }

    /// Per-coefficient mean of the raw train MFCCs used for standardisation.
    pub fn audio_mean(&self) -> &[f32] {
        &self.audio_mean
    }

    /// Per-coefficient std of the raw train MFCCs used for standardisation.
    pub fn audio_std(&self) -> &[f32] {
        &self.audio_std
    }
}

/// Loads the embedded asset.
///
/// Audio is standardised per MFCC coefficient with the mean and (population) std of the train
/// split, computed over all `cfg.frames` frames of every train sample, zero padding included.
/// Noise is then added once, from a ChaCha8 generator seeded with `cfg.noise_seed` (stream 0
/// for audio, 1 for images), drawn for every sample in asset order, so each split's noise does
/// not depend on the other splits' presence and the two modalities' noise are independent.
pub fn load(cfg: &AvDigitsConfig) -> Result<AvDigits> {
    decode(ASSET, Path::new(ASSET_PATH_IN_REPO), cfg)
}

/// Like [`load`], from the gzip bytes of an asset (a rebuilt or a corrupted one).
pub fn load_from_bytes(bytes: &[u8], cfg: &AvDigitsConfig) -> Result<AvDigits> {
    decode(bytes, Path::new("<in-memory asset>"), cfg)
}

fn decode(gz: &[u8], path: &Path, cfg: &AvDigitsConfig) -> Result<AvDigits> {
    let bad = |reason: String| DataError::BadAsset { path: PathBuf::from(path), reason };
    let invalid = |option: &str, reason: String| DataError::InvalidConfig { option: option.into(), reason };
    let (a_std, i_std) = (cfg.preset.audio_noise_std(), cfg.preset.image_noise_std());
    if !(a_std.is_finite() && a_std >= 0.0) {
        return Err(invalid("audio_noise_std", format!("{a_std} is not a finite number ≥ 0")));
    }
    if !(i_std.is_finite() && i_std >= 0.0) {
        return Err(invalid("image_noise_std", format!("{i_std} is not a finite number ≥ 0")));
    }

    let mut raw = Vec::new();
    GzDecoder::new(gz).read_to_end(&mut raw).map_err(|e| bad(format!("cannot decompress the gzip stream ({e})")))?;
    let header = AssetHeader::decode(&raw, path)?;
    let expected = header.body_len().ok_or_else(|| bad("header sizes overflow".into()))?;
    let body = &raw[HEADER_LEN..];
    if body.len() != expected {
        return Err(bad(format!("body holds {} bytes but the header's sizes need {expected}", body.len())));
    }
    if cfg.frames == 0 || cfg.frames > header.frames {
        return Err(invalid(
            "frames",
            format!("{} is out of range; the asset stores 1 to {} frames", cfg.frames, header.frames),
        ));
    }

    let n = header.num_samples;
    let (h, w, coeffs, stored_t, t) =
        (header.image_height, header.image_width, header.mfcc_coeffs, header.frames, cfg.frames);
    let pixels = h * w;
    let (images_raw, rest) = body.split_at(n * pixels);
    let (audio_raw, rest) = rest.split_at(n * coeffs * stored_t * 4);
    let (labels, rest) = rest.split_at(n);
    let (split_codes, rest) = rest.split_at(n);
    let (rows_raw, rest) = rest.split_at(2 * n);
    let (clips_raw, lens_raw) = rest.split_at(2 * n);
    let u16s = |b: &[u8]| -> Vec<u16> { b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect() };
    let (rows, clips, lens) = (u16s(rows_raw), u16s(clips_raw), u16s(lens_raw));

    if let Some(&l) = labels.iter().find(|&&l| l as usize >= header.num_classes) {
        return Err(bad(format!("label {l} is not below the {} classes", header.num_classes)));
    }
    let mut counts = [0usize; 4];
    for &s in split_codes {
        let split = Split::from_code(s).ok_or_else(|| bad(format!("split code {s} is not 0–3")))?;
        counts[split as usize] += 1;
    }
    if counts != header.split_counts {
        return Err(bad(format!("split sizes are {counts:?} but the header says {:?}", header.split_counts)));
    }

    // Audio: crop to `t` frames, layout [c][t] per sample.
    let mut audio = Vec::with_capacity(n * coeffs * t);
    for s in 0..n {
        for c in 0..coeffs {
            let base = ((s * coeffs + c) * stored_t) * 4;
            for k in 0..t {
                let o = base + 4 * k;
                audio.push(f32::from_le_bytes([audio_raw[o], audio_raw[o + 1], audio_raw[o + 2], audio_raw[o + 3]]));
            }
        }
    }
    if audio.iter().any(|v| !v.is_finite()) {
        return Err(bad("audio holds a non-finite value".into()));
    }

    // Train statistics per coefficient (f64 accumulation).
    let mut sum = vec![0f64; coeffs];
    let mut sum_sq = vec![0f64; coeffs];
    let mut count = 0usize;
    for s in (0..n).filter(|&s| split_codes[s] == Split::Train.code()) {
        for c in 0..coeffs {
            for &v in &audio[(s * coeffs + c) * t..(s * coeffs + c + 1) * t] {
                sum[c] += v as f64;
                sum_sq[c] += (v as f64) * (v as f64);
            }
        }
        count += t;
    }
    if count == 0 {
        return Err(bad("the train split is empty".into()));
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / count as f64).collect();
    let std: Vec<f64> = sum_sq
        .iter()
        .zip(&mean)
        .map(|(sq, m)| {
            let var = (sq / count as f64 - m * m).max(0.0);
            if var > 0.0 {
                var.sqrt()
            } else {
                1.0
            }
        })
        .collect();
    for (i, v) in audio.iter_mut().enumerate() {
        let c = (i / t) % coeffs;
        *v = ((*v as f64 - mean[c]) / std[c]) as f32;
    }

    let mut images: Vec<f32> = images_raw.iter().map(|&p| p as f32 / 255.0).collect();

    // Ambiguous pairs: each sample of a pair carries a clip drawn from its split's pooled clips.
    let mut carried: Vec<usize> = (0..n).collect();
    let pairs = cfg.preset.ambiguous_pairs();
    if !pairs.is_empty() {
        let pair_of = |l: u8| pairs.iter().position(|&(a, b)| l == a || l == b);
        let mut pools: Vec<Vec<Vec<usize>>> = vec![vec![Vec::new(); pairs.len()]; 4];
        for s in 0..n {
            if let Some(p) = pair_of(labels[s]) {
                pools[split_codes[s] as usize][p].push(s);
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.noise_seed);
        rng.set_stream(2);
        for (s, c) in carried.iter_mut().enumerate() {
            if let Some(p) = pair_of(labels[s]) {
                let pool = &pools[split_codes[s] as usize][p];
                *c = pool[rng.random_range(0..pool.len())];
            }
        }
        let audio_per = coeffs * t;
        let own = audio.clone();
        for (s, &c) in carried.iter().enumerate() {
            if c != s {
                audio[s * audio_per..(s + 1) * audio_per].copy_from_slice(&own[c * audio_per..(c + 1) * audio_per]);
            }
        }
    }

    add_noise(&mut audio, a_std, cfg.noise_seed, 0);
    add_noise(&mut images, i_std, cfg.noise_seed, 1);

    // Split.
    let audio_per = coeffs * t;
    let mut splits = Vec::with_capacity(4);
    let mut origins = Vec::with_capacity(4);
    for split in Split::ALL {
        let members: Vec<usize> = (0..n).filter(|&s| split_codes[s] == split.code()).collect();
        let mut a = Vec::with_capacity(members.len() * audio_per);
        let mut v = Vec::with_capacity(members.len() * pixels);
        for &s in &members {
            a.extend_from_slice(&audio[s * audio_per..(s + 1) * audio_per]);
            v.extend_from_slice(&images[s * pixels..(s + 1) * pixels]);
        }
        let l = members.iter().map(|&s| labels[s] as u32).collect();
        splits.push(SplitTensors::new(vec![a, v], vec![vec![1, coeffs, t], vec![1, h, w]], l));
        origins.push(
            members
                .iter()
                .map(|&s| Origin { image_row: rows[s], audio_clip: clips[carried[s]], audio_frames: lens[carried[s]] })
                .collect(),
        );
    }

    Ok(AvDigits {
        modalities: ModalitySet::new(["audio", "visual"]),
        header,
        config: *cfg,
        splits,
        origins,
        audio_mean: mean.iter().map(|&m| m as f32).collect(),
        audio_std: std.iter().map(|&s| s as f32).collect(),
    })
}

/// Adds `std × N(0, 1)` to every value, from ChaCha8(`seed`) on `stream`; nothing when `std` is 0.
fn add_noise(values: &mut [f32], std: f32, seed: u64, stream: u64) {
    if std == 0.0 {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    for v in values {
        let z: f32 = rng.sample(StandardNormal);
        *v += std * z;
    }
}
