//! The AVE model: the PSP audio-visual event localisation network as the AGM reference builds it.

use std::cell::Cell;

use agm_core::{ForwardOpts, ModalitySet, ModelOutput, MultimodalModel, ParamGroups};
use candle_core::{DType, Device, Result, Tensor, D};

use crate::{dropout, LayerNorm, Linear, Lstm, ParamBuilder, ParamInit, ParamRole, ParamStore};

/// A `Linear` whose weight starts Xavier-uniform (`torch.nn.init.xavier_uniform_`, gain 1) and
/// whose bias, if any, keeps PyTorch's default: the reference re-initialises only the weights.
fn xavier_linear(pb: &ParamBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
    let layer = Linear::new(pb, in_dim, out_dim, bias)?;
    let bound = (6.0 / (in_dim + out_dim) as f64).sqrt();
    layer.weight().set(&pb.draw((out_dim, in_dim), "weight", ParamInit::Uniform { bound })?)?;
    Ok(layer)
}

/// Dropout masks for one pass: each call site draws from its own seed, derived from the pass's
/// seed and the order of the calls, so a pass is reproducible and its masks independent.
pub(crate) struct DropoutSites {
    p: f64,
    train: bool,
    seed: u64,
    next: Cell<u64>,
}

impl DropoutSites {
    pub(crate) fn new(p: f64, train: bool, seed: u64) -> Self {
        Self { p, train, seed, next: Cell::new(0) }
    }

    pub(crate) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if !self.train || self.p == 0.0 {
            return Ok(x.clone());
        }
        let site = self.next.get();
        self.next.set(site + 1);
        dropout(x, self.p, true, agm_kernels::mix_seed(self.seed, site))
    }
}

/// Audio-guided visual attention (`AVGA`).
struct Avga {
    affine_audio: Linear,
    affine_video: Linear,
    affine_v: Linear,
    affine_g: Linear,
    affine_h: Linear,
}

impl Avga {
    /// `audio` `[B, S, 128]` (after `fa`), `video` `[B, S, H, W, C]` -> `[B, S, C]`.
    fn forward(&self, audio: &Tensor, video: &Tensor) -> Result<Tensor> {
        let (b, s) = (video.dim(0)?, video.dim(1)?);
        let c = video.dim(D::Minus1)?;
        let v = video.reshape((b * s, (), c))?;
        let v_t = self.affine_video.forward(&v)?.relu()?;
        let a_t = self.affine_audio.forward(&audio.reshape((b * s, audio.dim(D::Minus1)?))?)?.relu()?;
        // The audio term is one scalar per map position, broadcast along the last axis, exactly
        // as the reference's `unsqueeze(2)` does.
        let content = self.affine_v.forward(&v_t)?.broadcast_add(&self.affine_g.forward(&a_t)?.unsqueeze(2)?)?;
        let z = self.affine_h.forward(&content.tanh()?)?.squeeze(2)?;
        let alpha = agm_kernels::softmax_last_dim(&z)?.unsqueeze(1)?;
        alpha.matmul(&v)?.reshape((b, s, c))
    }
}

/// Positive sample propagation (`PSP`).
struct Psp {
    v_l1: Linear,
    v_l2: Linear,
    v_fc: Linear,
    a_l1: Linear,
    a_l2: Linear,
    a_fc: Linear,
    layer_norm: LayerNorm,
}

/// Divides each row by its sum plus 1e-8.
fn row_normalise(x: &Tensor) -> Result<Tensor> {
    x.broadcast_div(&(x.sum_keepdim(D::Minus1)? + 1e-8)?)
}

/// Keeps the entries above `thr` (the mask carries no gradient) and renormalises the rows.
fn threshold_rows(beta: &Tensor, thr: f64) -> Result<Tensor> {
    let beta = row_normalise(beta)?;
    let keep = beta.gt(thr)?.to_dtype(beta.dtype())?;
    row_normalise(&(keep * beta)?)
}

impl Psp {
    /// `a`, `v` `[B, S, 256]` -> (fusion, v_psp, a_psp), each `[B, S, 256]`.
    fn forward(&self, a: &Tensor, v: &Tensor, thr: f64, drop: &DropoutSites) -> Result<(Tensor, Tensor, Tensor)> {
        let branch = |l: &Linear, x: &Tensor| drop.apply(&l.forward(x)?.relu()?);
        let v1 = branch(&self.v_l1, v)?;
        let v2 = branch(&self.v_l2, v)?;
        let a1 = branch(&self.a_l1, a)?;
        let a2 = branch(&self.a_l2, a)?;
        let scale = (v2.dim(D::Minus1)? as f64).sqrt();
        let beta_va = (v2.matmul(&a1.transpose(1, 2)?.contiguous()?)? / scale)?.relu()?;
        // Transposed before either is normalised, as in the reference.
        let beta_av = beta_va.transpose(1, 2)?.contiguous()?;
        let gamma_va = threshold_rows(&beta_va, thr)?;
        let gamma_av = threshold_rows(&beta_av, thr)?;
        let v_psp = (v + gamma_va.matmul(&a2)?)?;
        let a_psp = (a + gamma_av.matmul(&v1)?)?;
        let v_psp = self.layer_norm.forward(&branch(&self.v_fc, &v_psp)?)?;
        let a_psp = self.layer_norm.forward(&branch(&self.a_fc, &a_psp)?)?;
        let fusion = ((&v_psp + &a_psp)? * 0.5)?;
        Ok((fusion, v_psp, a_psp))
    }
}

/// `F.normalize(x, dim=-1)`: `x / max(‖x‖₂, 1e-12)`.
fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?)
}

/// The AVE network of the AGM reference: `psp_net(a_dim=128, v_dim=512, hidden_dim=128,
/// category_num=29)` from `model/AVE_net.py`, with the reference's variable names and
/// initialisation (Xavier-uniform weights for the AVGA linears, PSP, `Classify` and `L1`–`L4`;
/// PyTorch defaults elsewhere, biases included), 1,667,251 parameters.
///
/// Flow per 10-segment clip: `fa` (two bias-free linears 128→256→128) on the audio; audio-guided
/// attention over the 7×7 VGG map; `fv` (512→256→128); one bidirectional LSTM per modality
/// (128→2×128, zero initial state); PSP (dropout 0.1 in training, threshold 0.099, a shared
/// `LayerNorm(256, eps 1e-6)`); `cross_att` = cosine of the two PSP outputs; the classifier
/// `L2(relu(L1(fusion)))` over 29 classes (28 = background).
///
/// The reference also creates `linear_v`, `v_classify`, `a_classify`, `L3` and `L4` and never
/// uses them. They are kept so names and the parameter count match (1,548,657 parameters are
/// used); they never receive a gradient.
///
/// Inputs: audio `[B, 10, 128]` and visual `[B, 10, 7, 7, 512]`, float. An absent modality is
/// fed as zeros of its input shape. Outputs have the segments as rows, so scores and accuracy run
/// over `B·10` segments as in the reference: `logits` `[B·10, 29]`, `fused_feature` the PSP
/// fusion `[B·10, 256]`, `encoder_features` the two LSTM outputs `[B·10, 256]` (audio, visual),
/// `aux` = `cross_att` `[B, 10]` for [`MultimodalModel::aux_loss`] (`100 · AVPS`).
///
/// Parameter groups:
/// * audio: `fa`, `attention.affine_audio`, `attention.affine_g`, `lstm_a_v.lstm_audio`,
///   `psp.a_L1`, `psp.a_L2`, `psp.a_fc`, `a_classify`;
/// * visual: `fv`, `attention.affine_video`, `attention.affine_v`, `attention.affine_h`,
///   `lstm_a_v.lstm_video`, `psp.v_L1`, `psp.v_L2`, `psp.v_fc`, `linear_v`, `v_classify`;
/// * shared: `psp.layer_norm`, `L1`, `L2` (the head weight), `L3`, `L4`.
pub struct AvePspNet {
    modalities: ModalitySet,
    store: ParamStore,
    fa: [Linear; 2],
    fv: [Linear; 2],
    attention: Avga,
    lstm_audio: Lstm,
    lstm_video: Lstm,
    psp: Psp,
    l1: Linear,
    l2: Linear,
}

impl AvePspNet {
    /// PSP's positive-sample threshold (`AVE_Config.threshold`).
    pub const THRESHOLD: f64 = 0.099;
    /// Weight of the AVPS loss (`AVE_Config.LAMBDA`).
    pub const AVPS_WEIGHT: f64 = 100.0;
    /// Classes per segment: 28 events and the background.
    pub const NUM_CLASSES: usize = 29;
    /// The background class.
    pub const BACKGROUND: u32 = 28;
    /// Segments per clip, each with its own label.
    pub const SEGMENTS: usize = 10;
    const DROPOUT: f64 = 0.1;

    /// The network with every variable drawn from `seed`.
    pub fn new(seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        let (a_dim, v_dim, hidden, classes) = (128, 512, 128, Self::NUM_CLASSES);
        let store = ParamStore::new();
        let root = store.builder(seed, dtype, device);
        let audio = root.with_role(ParamRole::Modality(0));
        let visual = root.with_role(ParamRole::Modality(1));
        let shared = root.with_role(ParamRole::Shared);

        let fa = [
            Linear::new(&audio.pp("fa").pp("0"), a_dim, 256, false)?,
            Linear::new(&audio.pp("fa").pp("1"), 256, 128, false)?,
        ];
        let fv = [
            Linear::new(&visual.pp("fv").pp("0"), v_dim, 256, false)?,
            Linear::new(&visual.pp("fv").pp("1"), 256, 128, false)?,
        ];
        Linear::new(&visual.pp("linear_v"), v_dim, a_dim, true)?;
        let (att_a, att_v) = (audio.pp("attention"), visual.pp("attention"));
        let attention = Avga {
            affine_audio: xavier_linear(&att_a.pp("affine_audio"), a_dim, 512, true)?,
            affine_video: xavier_linear(&att_v.pp("affine_video"), v_dim, 512, true)?,
            affine_v: xavier_linear(&att_v.pp("affine_v"), 512, 49, false)?,
            affine_g: xavier_linear(&att_a.pp("affine_g"), 512, 49, false)?,
            affine_h: xavier_linear(&att_v.pp("affine_h"), 49, 1, false)?,
        };
        let lstm_audio = Lstm::new(&audio.pp("lstm_a_v").pp("lstm_audio"), a_dim, hidden, true)?;
        let lstm_video = Lstm::new(&visual.pp("lstm_a_v").pp("lstm_video"), hidden, hidden, true)?;
        let (psp_a, psp_v) = (audio.pp("psp"), visual.pp("psp"));
        let d = 2 * hidden;
        let psp = Psp {
            v_l1: xavier_linear(&psp_v.pp("v_L1"), d, d, false)?,
            v_l2: xavier_linear(&psp_v.pp("v_L2"), d, d, false)?,
            v_fc: xavier_linear(&psp_v.pp("v_fc"), d, d, false)?,
            a_l1: xavier_linear(&psp_a.pp("a_L1"), d, d, false)?,
            a_l2: xavier_linear(&psp_a.pp("a_L2"), d, d, false)?,
            a_fc: xavier_linear(&psp_a.pp("a_fc"), d, d, false)?,
            layer_norm: LayerNorm::new(&shared.pp("psp").pp("layer_norm"), d, 1e-6)?,
        };
        // `Classify(hidden_dim=256)` keeps its default of 28 categories; never used.
        for (pb, name) in [(&visual, "v_classify"), (&audio, "a_classify")] {
            xavier_linear(&pb.pp(name).pp("L1"), 256, 64, false)?;
            xavier_linear(&pb.pp(name).pp("L2"), 64, 28, false)?;
        }
        let l1 = xavier_linear(&shared.pp("L1"), d, 64, false)?;
        let l2 = xavier_linear(&shared.pp("L2"), 64, classes, false)?;
        xavier_linear(&shared.pp("L3"), 256, 64, true)?;
        xavier_linear(&shared.pp("L4"), 64, 2, true)?;
        store.set_head_weight("L2.weight");
        Ok(Self {
            modalities: ModalitySet::new(["audio", "visual"]),
            store,
            fa,
            fv,
            attention,
            lstm_audio,
            lstm_video,
            psp,
            l1,
            l2,
        })
    }

    /// The store that holds every variable of the network.
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// Loads every variable by name (a checkpoint or the reference's initial values).
    pub fn load(&self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        self.store.load(tensors)
    }

    /// The AVPS target of the reference (`get_segment_wise_relation` in
    /// `dataloader/AVE_loader.py`) for segment labels `[B·S]`: in each clip, the segments of the
    /// smallest class present (the event class, or background when the clip has no event) get
    /// `1/count`, the others 0. The reference's buffer is never cleared between batches (quirk
    /// Q15); this target is built fresh, without that leak (docs/known-differences.md).
    pub fn avps_target(labels: &[u32], segments: usize) -> Vec<f64> {
        let mut target = vec![0.0; labels.len()];
        for (clip, out) in labels.chunks(segments).zip(target.chunks_mut(segments)) {
            let Some(&c) = clip.iter().min() else { continue };
            let count = clip.iter().filter(|&&l| l == c).count() as f64;
            for (o, &l) in out.iter_mut().zip(clip) {
                if l == c {
                    *o = 1.0 / count;
                }
            }
        }
        target
    }
}

impl MultimodalModel for AvePspNet {
    fn modalities(&self) -> &ModalitySet {
        &self.modalities
    }

    fn num_classes(&self) -> usize {
        Self::NUM_CLASSES
    }

    fn forward(&self, inputs: &[Tensor], opts: &ForwardOpts) -> Result<ModelOutput> {
        let [audio, video] = inputs else {
            candle_core::bail!("the AVE model takes audio and visual inputs, got {} tensors", inputs.len());
        };
        let (b, s, _) = audio.dims3()?;
        if video.rank() != 5 || video.dims()[..2] != [b, s] {
            candle_core::bail!("visual input {:?} does not match audio {:?}", video.dims(), audio.dims());
        }
        // The reference pads a muted modality with zeros of its input shape.
        let audio = if opts.present.contains(0) { audio.clone() } else { audio.zeros_like()? };
        let video = if opts.present.contains(1) { video.clone() } else { video.zeros_like()? };
        let drop = DropoutSites::new(Self::DROPOUT, opts.train, opts.dropout_seed);

        let fa = self.fa[1].forward(&self.fa[0].forward(&audio)?)?;
        let video_t = self.attention.forward(&fa, &video)?;
        let fv = self.fv[1].forward(&self.fv[0].forward(&video_t)?)?;
        let lstm_a = self.lstm_audio.forward(&fa)?;
        let lstm_v = self.lstm_video.forward(&fv)?;
        let (fusion, v_psp, a_psp) = self.psp.forward(&lstm_a, &lstm_v, Self::THRESHOLD, &drop)?;
        let cross_att = (l2_normalise(&v_psp)? * l2_normalise(&a_psp)?)?.sum(D::Minus1)?;
        let encoded = self.l1.forward(&fusion)?.relu()?;
        let out = self.l2.forward(&encoded)?;

        let rows = |x: &Tensor| x.reshape((b * s, ()));
        Ok(ModelOutput {
            logits: rows(&out)?,
            fused_feature: rows(&fusion)?,
            encoder_features: vec![rows(&lstm_a)?, rows(&lstm_v)?],
            aux: Some(cross_att),
        })
    }

    fn param_groups(&self) -> ParamGroups {
        self.store.groups(2)
    }

    /// `100 · AVPS` (`AVPSLoss` of `run/AVE_main.py`): the mean squared error between
    /// `relu(cross_att)` normalised over each clip's segments (sum + 1e-8) and
    /// [`AvePspNet::avps_target`] of `labels` (segment labels `[B·10]`, integer or float class
    /// ids). In the reference AGM does not modulate this term.
    fn aux_loss(&self, full: &ModelOutput, labels: &Tensor) -> Result<Option<Tensor>> {
        let Some(cross_att) = &full.aux else {
            candle_core::bail!("the AVE output carries no cross attention");
        };
        let (b, s) = cross_att.dims2()?;
        let labels = labels.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        if labels.len() != b * s {
            candle_core::bail!("{} segment labels for a cross attention of shape [{b}, {s}]", labels.len());
        }
        let target =
            Tensor::from_vec(Self::avps_target(&labels, s), (b, s), cross_att.device())?.to_dtype(cross_att.dtype())?;
        let att = cross_att.relu()?;
        let avg = att.broadcast_div(&(att.sum_keepdim(1)? + 1e-8)?)?;
        let avps = (avg - target)?.sqr()?.mean_all()?;
        Ok(Some((avps * Self::AVPS_WEIGHT)?))
    }
}
