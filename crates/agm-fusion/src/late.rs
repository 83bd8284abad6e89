//! Late concat fusion: one encoder per modality, features concatenated, one linear head.

use agm_core::ModalitySet;
use candle_core::{DType, Device, Result};

use crate::{Encoder, EncoderLayer, FusionKind, FusionModel, ParamRole, ParamStore, SequentialEncoder};

/// One modality's encoder.
#[derive(Clone, Debug)]
pub struct EncoderSpec {
    /// The modality's name; the encoder's variables live under `<modality>_encoder`.
    pub modality: String,
    /// The encoder's layers, in order ([`SequentialEncoder`]).
    pub layers: Vec<EncoderLayer>,
}

/// A late concat fusion model: `head(cat(enc_1(x_1), ..., enc_M(x_M)))`.
#[derive(Clone, Debug)]
pub struct LateConcatConfig {
    /// One encoder per modality, in modality order.
    pub encoders: Vec<EncoderSpec>,
    /// Classes of the head.
    pub num_classes: usize,
    /// Name prefix of every variable (`"net"` reproduces the golden fixtures' names).
    pub prefix: String,
}

impl LateConcatConfig {
    /// The default AV-Digits model: a 2-layer MLP per modality (audio MFCC 1×13×32, image
    /// 1×28×28) into 128 features each, concatenated, then a linear head over 10 digits.
    pub fn av_digits() -> Self {
        let mlp = |in_dim: usize| {
            vec![
                EncoderLayer::Flatten,
                EncoderLayer::Linear { in_dim, out_dim: 128 },
                EncoderLayer::Relu,
                EncoderLayer::Linear { in_dim: 128, out_dim: 128 },
                EncoderLayer::Relu,
            ]
        };
        Self {
            encoders: vec![
                EncoderSpec { modality: "audio".into(), layers: mlp(13 * 32) },
                EncoderSpec { modality: "visual".into(), layers: mlp(28 * 28) },
            ],
            num_classes: 10,
            prefix: String::new(),
        }
    }

    /// The same model restricted to one modality (the uni-modal baseline of late fusion).
    pub fn only(&self, modality: &str) -> Option<Self> {
        let enc = self.encoders.iter().find(|e| e.modality == modality)?.clone();
        Some(Self { encoders: vec![enc], ..self.clone() })
    }
}

impl FusionModel {
    /// The late concat model of `cfg`: variable names `<prefix>.<modality>_encoder.<i>.*` and
    /// `<prefix>.head.fc.*`.
    pub fn late_concat(cfg: &LateConcatConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        Self::sequential(cfg, &FusionKind::LateConcat, seed, dtype, device)
    }

    /// The encoders of `cfg` joined by any fusion.
    pub fn sequential(
        cfg: &LateConcatConfig,
        fusion: &FusionKind,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let store = ParamStore::new();
        let root = store.builder(seed, dtype, device);
        let root = if cfg.prefix.is_empty() { root } else { root.pp(&cfg.prefix) };
        let mut encoders: Vec<Box<dyn Encoder>> = Vec::new();
        for (i, spec) in cfg.encoders.iter().enumerate() {
            let pb = root.pp(format!("{}_encoder", spec.modality)).with_role(ParamRole::Modality(i));
            encoders.push(Box::new(SequentialEncoder::new(&pb, &spec.layers)?));
        }
        let dims: Vec<usize> = encoders.iter().map(|e| e.out_dim()).collect();
        let modalities = ModalitySet::new(cfg.encoders.iter().map(|e| e.modality.clone()));
        let fusion = fusion.build(&root, modalities.names(), &dims, cfg.num_classes)?;
        FusionModel::from_parts(modalities, encoders, fusion, cfg.num_classes, store)
    }
}
