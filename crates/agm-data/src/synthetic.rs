//! Seeded synthetic data of any modality shapes, for smoke runs of every model preset.
//!
//! Each class has a fixed random pattern per modality; a sample is its class pattern plus
//! Gaussian noise, so models can learn from every modality. Token modalities hold ids in
//! `1..vocab` (0 stays the pad id) with a class-dependent first token.

use agm_core::ModalitySet;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::loaders::{DatasetId, LoadedDataset};
use crate::SplitTensors;

/// One modality of a synthetic set.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticModality {
    /// Modality name.
    pub name: String,
    /// Shape of one sample, without the batch dimension.
    pub shape: Vec<usize>,
    /// `Some(vocab)` for token ids, `None` for real values.
    pub vocab: Option<usize>,
}

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticSpec {
    /// The modalities, in model order.
    pub modalities: Vec<SyntheticModality>,
    /// Number of classes; labels are drawn uniformly.
    pub classes: usize,
    /// Labels per sample: 1, or a segment count (AVE-shaped tasks).
    pub segments: usize,
    /// Samples in train, validation and test.
    pub sizes: [usize; 3],
    /// Noise standard deviation relative to the class patterns.
    pub noise: f64,
    /// Seed of the class patterns, labels and noise.
    pub seed: u64,
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Generates train / validation / test splits; no file is read or written.
pub fn generate(spec: &SyntheticSpec) -> LoadedDataset {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let patterns: Vec<Vec<Vec<f32>>> = spec
        .modalities
        .iter()
        .map(|m| {
            let per: usize = m.shape.iter().product();
            (0..spec.classes).map(|_| (0..per).map(|_| normal(&mut rng) as f32).collect()).collect()
        })
        .collect();
    let mut split = |n: usize| {
        let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..spec.classes as u32)).collect();
        let data = spec
            .modalities
            .iter()
            .zip(&patterns)
            .map(|(m, pats)| {
                let mut buf = Vec::with_capacity(n * pats[0].len());
                for &y in &labels {
                    let pat = &pats[y as usize];
                    match m.vocab {
                        Some(vocab) => {
                            let vocab = vocab.max(2) as u32;
                            buf.push((1 + y % (vocab - 1)) as f32);
                            buf.extend((1..pat.len()).map(|_| rng.random_range(1..vocab) as f32));
                        }
                        None => buf.extend(pat.iter().map(|&p| p + (spec.noise * normal(&mut rng)) as f32)),
                    }
                }
                buf
            })
            .collect();
        let shapes = spec.modalities.iter().map(|m| m.shape.clone()).collect();
        let split = SplitTensors::new(data, shapes, labels.clone());
        if spec.segments > 1 {
            let seg = labels.iter().flat_map(|&y| std::iter::repeat_n(y, spec.segments)).collect();
            split.with_segment_labels(seg, spec.segments)
        } else {
            split
        }
    };
    let train = split(spec.sizes[0]);
    let validation = split(spec.sizes[1]);
    let test = split(spec.sizes[2]);
    LoadedDataset {
        id: DatasetId::Synthetic,
        modalities: ModalitySet::new(spec.modalities.iter().map(|m| m.name.clone())),
        classes: spec.classes,
        train,
        validation,
        test,
        dep: None,
        segment_labels: None,
        notes: vec![format!("synthetic data, seed {}", spec.seed)],
        word_vectors: None,
    }
}
