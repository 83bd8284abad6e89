//! Encoders, fusions and model presets for agm.
//!
//! Models own a [`ParamStore`]: every variable is created through a [`ParamBuilder`] that knows
//! its checkpoint name, its role (a modality's encoder, shared, or a buffer) and draws its initial
//! value from a seeded generator keyed by the run seed and the name, so initialisation is
//! reproducible and independent of construction order.
//!
//! ```
//! # fn main() -> candle_core::Result<()> {
//! use agm_core::{ForwardOpts, MultimodalModel};
//! use agm_fusion::{LateConcatConfig, FusionModel};
//! use candle_core::{DType, Device, Tensor};
//! let cfg = LateConcatConfig::av_digits();
//! let model = FusionModel::late_concat(&cfg, 7, DType::F32, &Device::Cpu)?;
//! let audio = Tensor::zeros((4, 1, 13, 32), DType::F32, &Device::Cpu)?;
//! let image = Tensor::zeros((4, 1, 28, 28), DType::F32, &Device::Cpu)?;
//! let out = model.forward(&[audio, image], &ForwardOpts::eval(2))?;
//! assert_eq!(out.logits.dims(), &[4, 10]);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod ave;
mod encoder;
mod fusion;
mod late;
mod layers;
mod lstm;
mod maxout;
mod model;
mod mosei;
mod presets;
mod resnet;
mod store;
mod transformer;

pub use ave::AvePspNet;
pub use encoder::{Encoder, EncoderLayer, SequentialEncoder};
pub use fusion::{Fusion, FusionKind, FusionOutput};
pub use late::{EncoderSpec, LateConcatConfig};
pub use layers::{dropout, BatchNorm, Conv2d, LayerNorm, Linear, NormMode};
pub use lstm::Lstm;
pub use maxout::MaxOutMlp;
pub use model::FusionModel;
pub use mosei::{MoseiMatConfig, MoseiMatNet};
pub use presets::{build_preset, preset_names, preset_spec, InputScale, InputSpec, PresetOptions, PresetSpec};
pub use resnet::{ResNet18, ResNetConfig, ResNetInit};
pub use store::{ParamBuilder, ParamInit, ParamRole, ParamStore};
pub use transformer::{Transformer, TransformerConfig, TransformerEncoderLayer};
