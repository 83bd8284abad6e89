//! Named model presets: the paper's five per-dataset models and every fusion on their encoders.
//!
//! A preset name is `<family>-<fusion>`: family `av-digits`, `avmnist`, `cremad` or `urfunny`,
//! fusion `late` (concat head, the reference's AGM model), `late-sum` (per-modality heads, its
//! non-AGM model), `early` (MaxOut MLP), `film`, `gated` or `crossmodal`, or `uni-<modality>`
//! (that modality's encoder and a linear head alone: the reference's late-fusion uni-modal
//! models); plus the two dataset-specific nets `ave-psp` and `mosei-mat`. Where the reference defines the model, the
//! parameter count equals the reference's ([`PresetSpec::reference_params`]).

use agm_core::{ModalitySet, MultimodalModel};
use candle_core::{DType, Device, Result};

use crate::{
    AvePspNet, Encoder, EncoderLayer, FusionKind, FusionModel, LateConcatConfig, MoseiMatConfig, MoseiMatNet,
    ParamRole, ParamStore, ResNet18, ResNetConfig, ResNetInit, SequentialEncoder, Transformer, TransformerConfig,
};

/// One model input.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    /// The modality's name.
    pub modality: String,
    /// Shape of one sample, without the batch dimension.
    pub shape: Vec<usize>,
    /// `Some(vocab)` for token ids (pad id 0).
    pub vocab: Option<usize>,
    /// The variable `[vocab, dim]` that embeds these token ids, which a dataset's pretrained
    /// word vectors replace at the start of a run.
    pub embedding: Option<&'static str>,
}

/// What a preset expects and produces.
#[derive(Clone, Debug, PartialEq)]
pub struct PresetSpec {
    /// The preset's name.
    pub name: String,
    /// The dataset id the preset is made for (`av-digits`, `avmnist`, ...).
    pub dataset: &'static str,
    /// The model's inputs, in modality order.
    pub inputs: Vec<InputSpec>,
    /// Classes of the logits.
    pub classes: usize,
    /// Labels per sample: 1, or 10 segments for AVE.
    pub segments: usize,
    /// The reference's parameter count, where the reference defines this model.
    pub reference_params: Option<usize>,
}

/// Input sizes a preset is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputScale {
    /// The reference's shapes (CREMA-D 257×188 spectrograms and 224² frames, ...).
    Reference,
    /// Frames and spectrograms 32×32, sequences of length 4, where the architecture allows;
    /// for tests and smoke runs on a CPU.
    Small,
}

/// Options that change a preset's shapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresetOptions {
    /// The input sizes to build for.
    pub scale: InputScale,
    /// MOSEI vocabulary size (the reference's count is checked at 50; real runs take it from
    /// the data).
    pub vocab_size: usize,
    /// UR-Funny sequence length at the reference scale (its `max_pad_num`).
    pub sequence_len: usize,
    /// Per-sample input shapes of the data, in the preset's modality order; they replace the
    /// preset's own (a transformer encoder then takes the data's feature count). The
    /// dataset-specific nets (`ave-psp`, `mosei-mat`) keep their fixed shapes.
    pub input_shapes: Option<Vec<Vec<usize>>>,
}

impl Default for PresetOptions {
    fn default() -> Self {
        Self { scale: InputScale::Reference, vocab_size: 50, sequence_len: 50, input_shapes: None }
    }
}

impl PresetOptions {
    /// [`InputScale::Small`] with the other defaults (vocabulary 50, sequence length 50, the
    /// preset's own shapes).
    pub fn small() -> Self {
        Self { scale: InputScale::Small, ..Self::default() }
    }
}

const FAMILIES: [&str; 4] = ["av-digits", "avmnist", "cremad", "urfunny"];
const FUSIONS: [&str; 6] = ["late", "late-sum", "early", "film", "gated", "crossmodal"];
/// Names a uni-modal preset: `avmnist-uni-audio`.
const UNIMODAL: &str = "uni-";

/// A family's modalities, in its models' order.
fn family_modalities(family: &str) -> &'static [&'static str] {
    match family {
        "urfunny" => &["audio", "visual", "text"],
        _ => &["audio", "visual"],
    }
}

/// Every preset name.
pub fn preset_names() -> Vec<String> {
    let mut names: Vec<String> =
        FAMILIES.iter().flat_map(|f| FUSIONS.iter().map(move |k| format!("{f}-{k}"))).collect();
    for family in FAMILIES {
        names.extend(family_modalities(family).iter().map(|m| format!("{family}-{UNIMODAL}{m}")));
    }
    names.push("ave-psp".into());
    names.push("mosei-mat".into());
    names
}

fn unknown(name: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("unknown model preset `{name}`; known presets: {}", preset_names().join(", ")))
}

/// Splits `avmnist-late-sum` into (`avmnist`, `late-sum`), `avmnist-uni-audio` into
/// (`avmnist`, `uni-audio`).
fn family_and_fusion(name: &str) -> Option<(&'static str, &str)> {
    let family = FAMILIES.iter().find(|f| name.strip_prefix(**f).is_some_and(|rest| rest.starts_with('-')))?;
    let fusion = &name[family.len() + 1..];
    let known = FUSIONS.contains(&fusion)
        || fusion.strip_prefix(UNIMODAL).is_some_and(|m| family_modalities(family).contains(&m));
    known.then_some((family, fusion))
}

fn input(modality: &str, shape: &[usize]) -> InputSpec {
    InputSpec { modality: modality.into(), shape: shape.to_vec(), vocab: None, embedding: None }
}

/// A [`PresetSpec`] constructor for preset `name`.
fn spec_of(name: &str) -> impl Fn(&'static str, Vec<InputSpec>, usize, usize, Option<usize>) -> PresetSpec + '_ {
    move |dataset, inputs, classes, segments, reference_params| PresetSpec {
        name: name.to_string(),
        dataset,
        inputs,
        classes,
        segments,
        reference_params,
    }
}

/// The inputs, classes and reference parameter count of preset `name`.
pub fn preset_spec(name: &str, opts: &PresetOptions) -> Result<PresetSpec> {
    let spec = spec_of(name);
    match name {
        "ave-psp" => {
            return Ok(spec(
                "ave",
                vec![input("audio", &[10, 128]), input("visual", &[10, 7, 7, 512])],
                29,
                10,
                Some(1_667_251),
            ))
        }
        "mosei-mat" => {
            let text = InputSpec {
                modality: "text".into(),
                shape: vec![60],
                vocab: Some(opts.vocab_size),
                embedding: Some(crate::MoseiMatNet::EMBEDDING),
            };
            let reference = (opts.vocab_size == 50).then_some(41_252_596);
            return Ok(spec("mosei", vec![text, input("audio", &[60, 80])], 2, 1, reference));
        }
        _ => {}
    }
    let (family, fusion) = family_and_fusion(name).ok_or_else(|| unknown(name))?;
    let mut spec = family_spec(name, family, fusion, opts)?;
    if let Some(only) = fusion.strip_prefix(UNIMODAL) {
        spec.inputs.retain(|i| i.modality == only);
        spec.reference_params = None;
    }
    if let Some(shapes) = &opts.input_shapes {
        if shapes.len() != spec.inputs.len() {
            candle_core::bail!("preset `{name}` takes {} inputs, the data has {}", spec.inputs.len(), shapes.len());
        }
        for (input, shape) in spec.inputs.iter_mut().zip(shapes) {
            input.shape.clone_from(shape);
        }
    }
    Ok(spec)
}

fn family_spec(name: &str, family: &'static str, fusion: &str, opts: &PresetOptions) -> Result<PresetSpec> {
    let small = opts.scale == InputScale::Small;
    let spec = spec_of(name);
    let reference = |late: usize, sum: usize, early: usize| match fusion {
        "late" => Some(late),
        "late-sum" => Some(sum),
        "early" => Some(early),
        _ => None,
    };
    Ok(match family {
        "av-digits" => {
            spec("av-digits", vec![input("audio", &[1, 13, 32]), input("visual", &[1, 28, 28])], 10, 1, None)
        }
        "avmnist" => {
            let side = if small { 32 } else { 112 };
            spec(
                "avmnist",
                vec![input("audio", &[1, side, side]), input("visual", &[1, 28, 28])],
                10,
                1,
                reference(22_350_730, 22_350_740, 30_753_674),
            )
        }
        "cremad" => {
            let (h, w, frame) = if small { (32, 32, 32) } else { (257, 188, 224) };
            spec(
                "cremad",
                vec![input("audio", &[1, h, w]), input("visual", &[3, 1, frame, frame])],
                6,
                1,
                reference(22_352_902, 22_352_908, 30_755_846),
            )
        }
        _ => {
            let len = if small { 4 } else { opts.sequence_len };
            spec(
                "urfunny",
                vec![input("audio", &[len, 81]), input("visual", &[len, 371]), input("text", &[len, 300])],
                2,
                1,
                reference(132_917_762, 132_917_766, 146_563_586),
            )
        }
    })
}

fn fusion_kind(family: &str, fusion: &str) -> FusionKind {
    // The reference's MaxOut sizes for the paper families; smaller ones for the small MLPs.
    let (first, second, dim) = if family == "av-digits" { (256, 128, 64) } else { (2048, 1024, 256) };
    match fusion {
        "late" => FusionKind::LateConcat,
        "late-sum" => FusionKind::LateSum,
        "early" => FusionKind::Early { first_hidden: first, second_hidden: second },
        "film" => FusionKind::Film,
        "gated" => FusionKind::Gated { dim },
        _ => FusionKind::CrossModal { dim, heads: 4 },
    }
}

/// CREMA-D's `model.apply(weight_init)` for its linear layers: Xavier-normal weights, zero biases
/// (its convolutions and batch norms get theirs from `ResNetInit::WeightInit`).
fn linear_weight_init(root: &crate::ParamBuilder) -> Result<()> {
    let store = root.store();
    for name in store.names() {
        let Some(module) = name.strip_suffix(".weight") else { continue };
        let var = store.get(&name).expect("listed");
        let &[fan_out, fan_in] = var.dims() else { continue };
        let std = (2.0 / (fan_in + fan_out) as f64).sqrt();
        var.set(&root.draw((fan_out, fan_in), &name, crate::ParamInit::Normal { mean: 0.0, std })?)?;
        if let Some(bias) = store.get(&format!("{module}.bias")) {
            bias.set(&bias.as_tensor().zeros_like()?)?;
        }
    }
    Ok(())
}

/// Builds preset `name` with every variable drawn from `seed`.
pub fn build_preset(
    name: &str,
    opts: &PresetOptions,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Box<dyn MultimodalModel>> {
    match name {
        "ave-psp" => return Ok(Box::new(AvePspNet::new(seed, dtype, device)?)),
        "mosei-mat" => {
            return Ok(Box::new(MoseiMatNet::new(&MoseiMatConfig::paper(opts.vocab_size), seed, dtype, device)?))
        }
        _ => {}
    }
    let (family, fusion) = family_and_fusion(name).ok_or_else(|| unknown(name))?;
    let spec = preset_spec(name, opts)?;
    let store = ParamStore::new();
    let root = store.builder(seed, dtype, device);
    let mut encoders: Vec<Box<dyn Encoder>> = Vec::new();
    for (m, input) in spec.inputs.iter().enumerate() {
        // CREMA-D's reference names its encoders `audio_net` / `visual_net`; the others `*_encoder`.
        let suffix = if family == "cremad" { "net" } else { "encoder" };
        let pb = root.pp(format!("{}_{suffix}", input.modality)).with_role(ParamRole::Modality(m));
        let encoder: Box<dyn Encoder> = match family {
            "av-digits" => {
                let all = LateConcatConfig::av_digits();
                let own = all.encoders.iter().find(|e| e.modality == input.modality).expect("an av-digits modality");
                let layers: Vec<EncoderLayer> = own.layers.clone();
                Box::new(SequentialEncoder::new(&pb, &layers)?)
            }
            "avmnist" => Box::new(ResNet18::new(&pb, &ResNetConfig { in_channels: 1, init: ResNetInit::Reference })?),
            "cremad" => {
                let in_channels = input.shape[0];
                Box::new(ResNet18::new(&pb, &ResNetConfig { in_channels, init: ResNetInit::WeightInit })?)
            }
            _ => {
                let features = *input.shape.last().expect("sequence input");
                Box::new(Transformer::new(&pb, &TransformerConfig::urfunny(features))?)
            }
        };
        encoders.push(encoder);
    }
    let dims: Vec<usize> = encoders.iter().map(|e| e.out_dim()).collect();
    let modalities = ModalitySet::new(spec.inputs.iter().map(|i| i.modality.clone()));
    // A uni-modal model is its encoder and a linear head: the late concat fusion of one feature.
    let unimodal = fusion.starts_with(UNIMODAL);
    let kind = if unimodal { FusionKind::LateConcat } else { fusion_kind(family, fusion) };
    // The classifier's name in the reference's module tree, so official checkpoints load.
    let head_path = match (family, fusion) {
        ("cremad", "late") => "fusion_module.fc_out",
        ("cremad", _) if unimodal => "cls.fc",
        _ => "head.fc",
    };
    let fusion = kind.build_with_head(&root, modalities.names(), &dims, spec.classes, head_path)?;
    if family == "cremad" {
        linear_weight_init(&root)?;
    }
    Ok(Box::new(FusionModel::from_parts(modalities, encoders, fusion, spec.classes, store)?))
}
