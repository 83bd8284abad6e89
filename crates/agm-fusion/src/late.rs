//! Late concat fusion: one encoder per modality, features concatenated, one linear head.

use agm_core::{ForwardOpts, ModalitySet, ModelOutput, MultimodalModel, ParamGroups};
use candle_core::{DType, Device, Result, Tensor};

use crate::{EncoderLayer, Linear, ParamRole, ParamStore, SequentialEncoder};

/// One modality's encoder.
#[derive(Clone, Debug)]
pub struct EncoderSpec {
    pub modality: String,
    pub layers: Vec<EncoderLayer>,
}

/// A late concat fusion model: `head(cat(enc_1(x_1), ..., enc_M(x_M)))`.
#[derive(Clone, Debug)]
pub struct LateConcatConfig {
    pub encoders: Vec<EncoderSpec>,
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

/// See [`LateConcatConfig`].
pub struct LateConcatModel {
    modalities: ModalitySet,
    encoders: Vec<SequentialEncoder>,
    head: Linear,
    num_classes: usize,
    store: ParamStore,
}

impl LateConcatModel {
    pub fn new(cfg: &LateConcatConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        let store = ParamStore::new();
        let root = store.builder(seed, dtype, device);
        let root = if cfg.prefix.is_empty() { root } else { root.pp(&cfg.prefix) };
        let mut encoders = Vec::new();
        for (i, spec) in cfg.encoders.iter().enumerate() {
            let pb = root.pp(format!("{}_encoder", spec.modality)).with_role(ParamRole::Modality(i));
            encoders.push(SequentialEncoder::new(&pb, &spec.layers)?);
        }
        let fused: usize = encoders.iter().map(SequentialEncoder::out_dim).sum();
        let head_pb = root.pp("head").pp("fc").with_role(ParamRole::Shared);
        let head = Linear::new(&head_pb, fused, cfg.num_classes, true)?;
        store.set_head_weight(&head_pb.path("weight"));
        Ok(Self {
            modalities: ModalitySet::new(cfg.encoders.iter().map(|e| e.modality.clone())),
            encoders,
            head,
            num_classes: cfg.num_classes,
            store,
        })
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// Loads every variable by name (a checkpoint or golden initial values).
    pub fn load(&self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        self.store.load(tensors)
    }
}

impl MultimodalModel for LateConcatModel {
    fn modalities(&self) -> &ModalitySet {
        &self.modalities
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn forward(&self, inputs: &[Tensor], opts: &ForwardOpts) -> Result<ModelOutput> {
        if inputs.len() != self.encoders.len() {
            candle_core::bail!("the model has {} modalities but got {} inputs", self.encoders.len(), inputs.len());
        }
        let mut feats = Vec::with_capacity(inputs.len());
        for (m, (enc, x)) in self.encoders.iter().zip(inputs).enumerate() {
            // The reference pads a muted modality with zeros of its input shape.
            let x = if opts.present.contains(m) { x.clone() } else { x.zeros_like()? };
            let seed = opts.dropout_seed.wrapping_mul(31).wrapping_add(m as u64);
            feats.push(enc.forward_t(&x, opts.train, seed)?);
        }
        let fused = Tensor::cat(&feats, 1)?;
        let logits = self.head.forward(&fused)?;
        Ok(ModelOutput::new(logits, fused, feats))
    }

    fn param_groups(&self) -> ParamGroups {
        self.store.groups(self.encoders.len())
    }
}
