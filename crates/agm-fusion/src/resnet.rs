//! ResNet-18 (torchvision's BasicBlock layout, no avgpool or fc) as a feature encoder.
//!
//! Variable names follow torchvision (`conv1.weight`, `layer2.0.downsample.0.weight`, ...) so a
//! PyTorch checkpoint of the reference's `resnet18` loads by name.

use agm_kernels::{Conv2dSpec, Pool2dSpec};
use candle_core::{Result, Tensor, Var};

use crate::{BatchNorm, Encoder, NormMode, ParamBuilder, ParamInit};

/// How the convolutions and batch norms start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResNetInit {
    /// The reference's `resnet.py`: conv kaiming_normal (fan_out, relu); BN weight ~ N(1, 0.02),
    /// bias 0.
    Reference,
    /// CREMA-D's `model.apply(weight_init)`: conv kaiming_uniform (fan_out, relu); BN weight 1,
    /// bias 0.
    WeightInit,
}

/// How a [`ResNet18`] is built: its input channels and initialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    /// 1 for audio spectrograms and grey images, 3 for RGB frames.
    pub in_channels: usize,
    /// How the convolutions and batch norms start.
    pub init: ResNetInit,
}

impl ResNetConfig {
    /// The reference's own initialisation (AV-MNIST and every dataset but CREMA-D).
    pub fn reference(in_channels: usize) -> Self {
        Self { in_channels, init: ResNetInit::Reference }
    }

    /// CREMA-D's `weight_init` initialisation.
    pub fn weight_init(in_channels: usize) -> Self {
        Self { in_channels, init: ResNetInit::WeightInit }
    }
}

/// Bias-free square convolution.
#[derive(Debug)]
struct Conv {
    weight: Var,
    spec: Conv2dSpec,
}

impl Conv {
    #[allow(clippy::too_many_arguments)]
    fn new(
        pb: &ParamBuilder,
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        init: ResNetInit,
    ) -> Result<Self> {
        // PyTorch's kaiming fan_out of a conv weight is out_channels · kernel area; relu gain √2.
        let fan_out = (out_ch * kernel * kernel) as f64;
        let pinit = match init {
            ResNetInit::Reference => ParamInit::Normal { mean: 0.0, std: (2.0 / fan_out).sqrt() },
            ResNetInit::WeightInit => ParamInit::Uniform { bound: (6.0 / fan_out).sqrt() },
        };
        let weight = pb.param((out_ch, in_ch, kernel, kernel), "weight", pinit)?;
        Ok(Self { weight, spec: Conv2dSpec::new(stride, padding) })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        agm_kernels::conv2d(x, self.weight.as_tensor(), self.spec)
    }
}

/// `BatchNorm2d(channels)` (eps 1e-5, momentum 0.1) with the chosen weight initialisation.
fn batch_norm(pb: &ParamBuilder, channels: usize, init: ResNetInit) -> Result<BatchNorm> {
    let bn = BatchNorm::new(pb, channels, 1e-5)?;
    if init == ResNetInit::Reference {
        let weight = pb
            .store()
            .get(&pb.path("weight"))
            .ok_or_else(|| candle_core::Error::Msg(format!("missing `{}`", pb.path("weight"))))?;
        weight.set(&pb.draw(channels, "weight", ParamInit::Normal { mean: 1.0, std: 0.02 })?)?;
    }
    Ok(bn)
}

/// Two 3×3 convolutions with a residual connection; a 1×1 strided conv + BN projects the
/// identity where the shape changes.
#[derive(Debug)]
struct BasicBlock {
    conv1: Conv,
    bn1: BatchNorm,
    conv2: Conv,
    bn2: BatchNorm,
    downsample: Option<(Conv, BatchNorm)>,
}

impl BasicBlock {
    fn new(pb: &ParamBuilder, in_ch: usize, out_ch: usize, stride: usize, init: ResNetInit) -> Result<Self> {
        let downsample = if stride != 1 || in_ch != out_ch {
            let ds = pb.pp("downsample");
            Some((Conv::new(&ds.pp("0"), in_ch, out_ch, 1, stride, 0, init)?, batch_norm(&ds.pp("1"), out_ch, init)?))
        } else {
            None
        };
        Ok(Self {
            conv1: Conv::new(&pb.pp("conv1"), in_ch, out_ch, 3, stride, 1, init)?,
            bn1: batch_norm(&pb.pp("bn1"), out_ch, init)?,
            conv2: Conv::new(&pb.pp("conv2"), out_ch, out_ch, 3, 1, 1, init)?,
            bn2: batch_norm(&pb.pp("bn2"), out_ch, init)?,
            downsample,
        })
    }

    fn forward(&self, x: &Tensor, mode: NormMode) -> Result<Tensor> {
        let h = self.bn1.forward_mode(&self.conv1.forward(x)?, mode, true)?;
        let h = self.bn2.forward_mode(&self.conv2.forward(&h)?, mode, false)?;
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward_mode(&conv.forward(x)?, mode, false)?,
            None => x.clone(),
        };
        agm_kernels::add_relu(&h, &identity)
    }
}

/// The reference's `resnet18(modality)`: conv 7×7/2 → BN → ReLU → maxpool 3/2/1 → four stages
/// of two BasicBlocks (64, 128, 256, 512 channels), then a global average pool to `[B, 512]`.
///
/// A 4-D input `[B, C, H, W]` is one image per sample. A 5-D input `[B, C, T, H, W]` is `T`
/// frames per sample: they run as a `B·T` batch (batch norm sees every frame) and the feature
/// averages over frames and positions, as the reference's `adaptive_avg_pool3d` does.
#[derive(Debug)]
pub struct ResNet18 {
    conv1: Conv,
    bn1: BatchNorm,
    layers: Vec<BasicBlock>,
    in_channels: usize,
}

impl ResNet18 {
    /// Feature width: layer4's channels.
    pub const OUT_DIM: usize = 512;

    /// The network under `pb`, with torchvision's names (`conv1.weight`, `layer1.0.bn1.weight`,
    /// ...) and `cfg`'s initialisation.
    pub fn new(pb: &ParamBuilder, cfg: &ResNetConfig) -> Result<Self> {
        let init = cfg.init;
        let conv1 = Conv::new(&pb.pp("conv1"), cfg.in_channels, 64, 7, 2, 3, init)?;
        let bn1 = batch_norm(&pb.pp("bn1"), 64, init)?;
        let mut layers = Vec::with_capacity(8);
        let mut in_ch = 64;
        for (stage, out_ch) in [64usize, 128, 256, 512].into_iter().enumerate() {
            let stride = if stage == 0 { 1 } else { 2 };
            let spb = pb.pp(format!("layer{}", stage + 1));
            layers.push(BasicBlock::new(&spb.pp("0"), in_ch, out_ch, stride, init)?);
            layers.push(BasicBlock::new(&spb.pp("1"), out_ch, out_ch, 1, init)?);
            in_ch = out_ch;
        }
        Ok(Self { conv1, bn1, layers, in_channels: cfg.in_channels })
    }

    /// The layer4 map `[N, 512, h, w]` of a 4-D batch.
    pub fn feature_map(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.feature_map_mode(x, NormMode::from_train(train))
    }

    fn feature_map_mode(&self, x: &Tensor, mode: NormMode) -> Result<Tensor> {
        let h = self.bn1.forward_mode(&self.conv1.forward(x)?, mode, true)?;
        let mut h = agm_kernels::max_pool2d(&h, Pool2dSpec::new(3, 2, 1))?;
        for block in &self.layers {
            h = block.forward(&h, mode)?;
        }
        Ok(h)
    }

    /// The feature `[B, 512]` of a 4-D or 5-D input (see [`ResNet18`]); `train` selects batch
    /// norm's mode. Errs on any other rank.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_mode(x, NormMode::from_train(train))
    }

    /// [`Self::forward_t`] with every batch norm in `mode`. In
    /// [`NormMode::TrainWithEvalTail`] the tail counts samples: a 5-D input's frames are
    /// handled here.
    pub fn forward_mode(&self, x: &Tensor, mode: NormMode) -> Result<Tensor> {
        match x.rank() {
            4 => self.feature_map_mode(x, mode)?.mean((2, 3)),
            5 => {
                let (b, c, t, h, w) = x.dims5()?;
                // Frames become batch entries, frame-major within each sample as in the reference.
                let frames = x.permute((0, 2, 1, 3, 4))?.contiguous()?.reshape((b * t, c, h, w))?;
                // Every frame's map has the same size, so the mean of per-frame means is the mean
                // over frames and positions.
                let mode = match mode {
                    NormMode::TrainWithEvalTail(n) => NormMode::TrainWithEvalTail(n * t),
                    m => m,
                };
                let per_frame = self.feature_map_mode(&frames, mode)?.mean((2, 3))?;
                per_frame.reshape((b, t, Self::OUT_DIM))?.mean(1)
            }
            r => candle_core::bail!(
                "ResNet18 expects [B, {0}, H, W] or [B, {0}, T, H, W], got rank {r}",
                self.in_channels
            ),
        }
    }
}

impl Encoder for ResNet18 {
    fn forward_t(&self, x: &Tensor, train: bool, _dropout_seed: u64) -> Result<Tensor> {
        ResNet18::forward_t(self, x, train)
    }

    fn out_dim(&self) -> usize {
        Self::OUT_DIM
    }

    fn mode_dependent(&self) -> bool {
        true
    }

    /// The zero sample rides along with the batch as one extra evaluation-mode sample: every
    /// layer but batch norm acts per sample, and batch norm normalises that sample with the
    /// running statistics this batch leaves, as the separate evaluation pass after it would.
    fn forward_with_zero_feature(&self, x: &Tensor, train: bool, dropout_seed: u64) -> Result<(Tensor, Tensor)> {
        let b = x.dim(0)?;
        if b == 0 {
            let z = self.zero_feature(&x.dims()[1..], x.dtype(), x.device())?;
            return Ok((Encoder::forward_t(self, x, train, dropout_seed)?, z));
        }
        let zero = Tensor::zeros([&[1], &x.dims()[1..]].concat(), x.dtype(), x.device())?;
        let mode = if train { NormMode::TrainWithEvalTail(1) } else { NormMode::Eval };
        let both = self.forward_mode(&Tensor::cat(&[x, &zero], 0)?, mode)?;
        Ok((both.narrow(0, 0, b)?, both.narrow(0, b, 1)?))
    }

    /// The evaluation samples (and the zero sample) ride along with the training batch as its
    /// evaluation-mode tail, for the reason given at [`Self::forward_with_zero_feature`].
    fn forward_train_then_eval(
        &self,
        x: &Tensor,
        dropout_seed: u64,
        eval_x: &Tensor,
        with_zero: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let (b, e) = (x.dim(0)?, eval_x.dim(0)?);
        if b == 0 || x.dims()[1..] != eval_x.dims()[1..] {
            return crate::encoder::train_then_eval_apart(self, x, dropout_seed, eval_x, with_zero);
        }
        let mut rows = vec![x.clone(), eval_x.clone()];
        if with_zero {
            rows.push(Tensor::zeros([&[1], &x.dims()[1..]].concat(), x.dtype(), x.device())?);
        }
        let tail = e + usize::from(with_zero);
        let all = self.forward_mode(&Tensor::cat(&rows, 0)?, NormMode::TrainWithEvalTail(tail))?;
        let zero = with_zero.then(|| all.narrow(0, b + e, 1)).transpose()?;
        Ok((all.narrow(0, 0, b)?, all.narrow(0, b, e)?, zero))
    }
}
