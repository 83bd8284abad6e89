//! A model made of one encoder per modality and a fusion.

use agm_core::{ForwardOpts, ModalitySet, ModelOutput, MultimodalModel, ParamGroups, ShapleyMode, Subset};
use candle_core::{Result, Tensor};

use crate::{Encoder, Fusion, FusionOutput, ParamStore};

/// `fusion(enc_1(x_1), ..., enc_M(x_M))`. An absent modality is fed as zeros of its input shape.
pub struct FusionModel {
    modalities: ModalitySet,
    encoders: Vec<Box<dyn Encoder>>,
    fusion: Box<dyn Fusion>,
    num_classes: usize,
    store: ParamStore,
}

impl FusionModel {
    /// Joins encoders (in modality order) and a fusion whose variables all live in `store`.
    pub fn from_parts(
        modalities: ModalitySet,
        encoders: Vec<Box<dyn Encoder>>,
        fusion: Box<dyn Fusion>,
        num_classes: usize,
        store: ParamStore,
    ) -> Result<Self> {
        if encoders.len() != modalities.len() {
            candle_core::bail!("{} encoders for {} modalities", encoders.len(), modalities.len());
        }
        Ok(Self { modalities, encoders, fusion, num_classes, store })
    }

    /// The store that holds every variable of the model.
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// Loads every variable by name (a checkpoint or golden initial values).
    pub fn load(&self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        self.store.load(tensors)
    }

    fn check_inputs(&self, inputs: &[Tensor]) -> Result<()> {
        if inputs.len() != self.encoders.len() {
            candle_core::bail!("the model has {} modalities but got {} inputs", self.encoders.len(), inputs.len());
        }
        Ok(())
    }

    fn encoder_seed(dropout_seed: u64, m: usize) -> u64 {
        dropout_seed.wrapping_mul(31).wrapping_add(m as u64)
    }

    fn fusion_seed(&self, dropout_seed: u64) -> u64 {
        Self::encoder_seed(dropout_seed, self.encoders.len())
    }

    /// Encoder `m`'s input under `opts` and its dropout seed. The reference pads a muted
    /// modality with zeros of its input shape.
    fn encoder_input(m: usize, x: &Tensor, opts: &ForwardOpts) -> Result<(Tensor, u64)> {
        let x = if opts.present.contains(m) { x.clone() } else { x.zeros_like()? };
        Ok((x, Self::encoder_seed(opts.dropout_seed, m)))
    }

    fn encode(&self, inputs: &[Tensor], opts: &ForwardOpts) -> Result<Vec<Tensor>> {
        let mut feats = Vec::with_capacity(inputs.len());
        for (m, (enc, x)) in self.encoders.iter().zip(inputs).enumerate() {
            let (x, seed) = Self::encoder_input(m, x, opts)?;
            feats.push(enc.forward_t(&x, opts.train, seed)?);
        }
        Ok(feats)
    }

    /// Runs the fusion once over several feature sets stacked along the batch and splits the
    /// logits back, one `[B, K]` per set.
    fn fuse_stacked(&self, sets: &[Vec<Tensor>], train: bool, seed: u64) -> Result<Vec<FusionOutput>> {
        let b = sets[0][0].dim(0)?;
        let stacked = (0..self.encoders.len())
            .map(|m| Tensor::cat(&sets.iter().map(|s| s[m].clone()).collect::<Vec<_>>(), 0))
            .collect::<Result<Vec<_>>>()?;
        let out = self.fusion.forward_t(&stacked, train, seed)?;
        (0..sets.len())
            .map(|i| {
                Ok(FusionOutput { logits: out.logits.narrow(0, i * b, b)?, fused: out.fused.narrow(0, i * b, b)? })
            })
            .collect()
    }

    /// The full pass and the masked passes of the reference, the masked ones in evaluation mode
    /// after it. Evaluation mode is deterministic and acts per sample, so each encoder runs once
    /// on its real inputs (shared by every subset that keeps the modality) and once on one zero
    /// sample (broadcast to every subset that mutes it), and the fusion runs once over all
    /// subsets stacked: the same function as one full pass per subset, with one evaluation pass
    /// per encoder instead of 2^M − 2. In training, each encoder's evaluation inputs ride along
    /// with its training pass where the encoder can carry them
    /// ([`Encoder::forward_train_then_eval`]).
    fn faithful_passes(
        &self,
        inputs: &[Tensor],
        masked: &[Subset],
        opts: &ForwardOpts,
    ) -> Result<(ModelOutput, Vec<Tensor>)> {
        if masked.is_empty() {
            return Ok((self.forward(inputs, opts)?, Vec::new()));
        }
        let mut feats = Vec::with_capacity(inputs.len());
        let mut kept = Vec::with_capacity(inputs.len());
        let mut muted = Vec::with_capacity(inputs.len());
        for (m, (enc, x)) in self.encoders.iter().zip(inputs).enumerate() {
            let (any_keeps, any_mutes) = (masked.iter().any(|s| s.contains(m)), masked.iter().any(|s| !s.contains(m)));
            let (input, seed) = Self::encoder_input(m, x, opts)?;
            let (features, eval, zero) = if opts.train && any_keeps {
                let (f, e, z) = enc.forward_train_then_eval(&input, seed, x, any_mutes)?;
                (f, Some(e), z)
            } else {
                let features = enc.forward_t(&input, opts.train, seed)?;
                // Both from one evaluation-mode pass where both are needed: the zero sample rides along.
                match (any_keeps, any_mutes) {
                    (true, true) => {
                        let (e, z) = enc.forward_with_zero_feature(x, false, 0)?;
                        (features, Some(e), Some(z))
                    }
                    (true, false) => (features, Some(enc.forward_t(x, false, 0)?), None),
                    (false, true) => (features, None, Some(enc.zero_feature(&x.dims()[1..], x.dtype(), x.device())?)),
                    (false, false) => (features, None, None),
                }
            };
            feats.push(features);
            kept.push(eval);
            muted.push(zero.map(|z| z.broadcast_as((x.dim(0)?, enc.out_dim()))).transpose()?);
        }
        let full = self.fusion.forward_t(&feats, opts.train, self.fusion_seed(opts.dropout_seed))?;
        let sets: Vec<Vec<Tensor>> = masked
            .iter()
            .map(|s| {
                (0..inputs.len())
                    .map(|m| if s.contains(m) { kept[m].clone() } else { muted[m].clone() }.expect("computed above"))
                    .collect()
            })
            .collect();
        let masked_logits = self.fuse_stacked(&sets, false, 0)?.into_iter().map(|o| o.logits).collect();
        Ok((ModelOutput::new(full.logits, full.fused, feats), masked_logits))
    }

    /// Each encoder once in training mode on the real inputs; absent modalities take the
    /// evaluation-mode encoding of one zero row, broadcast; the fusion runs once over every
    /// combination when it has no mode-dependent layers (otherwise the full pass in training
    /// mode and the masked ones stacked in evaluation mode).
    fn fast_passes(
        &self,
        inputs: &[Tensor],
        masked: &[Subset],
        opts: &ForwardOpts,
    ) -> Result<(ModelOutput, Vec<Tensor>)> {
        let mut feats = Vec::with_capacity(inputs.len());
        let mut zero_feats = Vec::with_capacity(inputs.len());
        for (m, (enc, x)) in self.encoders.iter().zip(inputs).enumerate() {
            let (x, seed) = Self::encoder_input(m, x, opts)?;
            if masked.iter().all(|s| s.contains(m)) {
                feats.push(enc.forward_t(&x, opts.train, seed)?);
                zero_feats.push(None);
            } else {
                let (f, z) = enc.forward_with_zero_feature(&x, opts.train, seed)?;
                zero_feats.push(Some(z.broadcast_as(f.shape())?));
                feats.push(f);
            }
        }
        let set_for = |s: Subset| -> Vec<Tensor> {
            (0..feats.len())
                .map(|m| if s.contains(m) { feats[m].clone() } else { zero_feats[m].clone().expect("zero feature") })
                .collect()
        };
        let masked_sets: Vec<Vec<Tensor>> = masked.iter().map(|&s| set_for(s)).collect();
        let seed = self.fusion_seed(opts.dropout_seed);
        let (full, masked_logits) = if self.fusion.mode_dependent() {
            let full = self.fusion.forward_t(&feats, opts.train, seed)?;
            let rest = if masked_sets.is_empty() {
                Vec::new()
            } else {
                self.fuse_stacked(&masked_sets, false, 0)?.into_iter().map(|o| o.logits).collect()
            };
            (full, rest)
        } else {
            let mut sets = vec![feats.clone()];
            sets.extend(masked_sets);
            let mut outs = self.fuse_stacked(&sets, opts.train, seed)?.into_iter();
            let full = outs.next().expect("the full pass");
            (full, outs.map(|o| o.logits).collect())
        };
        Ok((ModelOutput::new(full.logits, full.fused, feats), masked_logits))
    }
}

impl MultimodalModel for FusionModel {
    fn modalities(&self) -> &ModalitySet {
        &self.modalities
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn forward(&self, inputs: &[Tensor], opts: &ForwardOpts) -> Result<ModelOutput> {
        self.check_inputs(inputs)?;
        let feats = self.encode(inputs, opts)?;
        let out = self.fusion.forward_t(&feats, opts.train, self.fusion_seed(opts.dropout_seed))?;
        Ok(ModelOutput::new(out.logits, out.fused, feats))
    }

    fn param_groups(&self) -> ParamGroups {
        self.store.groups(self.encoders.len())
    }

    /// The fusion over the given features (the fusion's dropout seed derived from
    /// `dropout_seed` as in [`MultimodalModel::forward`]).
    fn fuse(&self, features: &[Tensor], train: bool, dropout_seed: u64) -> Result<Option<Tensor>> {
        if features.len() != self.encoders.len() {
            candle_core::bail!("the model has {} modalities but got {} features", self.encoders.len(), features.len());
        }
        for (m, (enc, f)) in self.encoders.iter().zip(features).enumerate() {
            if f.rank() != 2 || f.dim(1)? != enc.out_dim() {
                candle_core::bail!("feature {m} has shape {:?}, the fusion takes [B, {}]", f.dims(), enc.out_dim());
            }
        }
        Ok(Some(self.fusion.forward_t(features, train, self.fusion_seed(dropout_seed))?.logits))
    }

    fn modality_logits(&self, full: &ModelOutput) -> Result<Option<Vec<Tensor>>> {
        self.fusion.modality_logits(&full.encoder_features)
    }

    /// The fast path runs encoders in training mode, so it is exact only without batch norm or
    /// dropout in them.
    fn fast_shapley(&self) -> agm_core::FastShapley {
        if self.encoders.iter().all(|e| !e.mode_dependent()) {
            agm_core::FastShapley::Exact
        } else {
            agm_core::FastShapley::Approximate
        }
    }

    fn shapley_passes(
        &self,
        inputs: &[Tensor],
        masked: &[Subset],
        opts: &ForwardOpts,
        mode: ShapleyMode,
    ) -> Result<(ModelOutput, Vec<Tensor>)> {
        self.check_inputs(inputs)?;
        match mode {
            ShapleyMode::Faithful => self.faithful_passes(inputs, masked, opts),
            ShapleyMode::Fast => self.fast_passes(inputs, masked, opts),
        }
    }
}
