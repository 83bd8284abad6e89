//! Trains a user-defined `MultimodalModel` with AGM through the library API, without xtask.
//!
//! Run with `cargo run --release -p agm-train --example custom_model`.

use agm_core::{ForwardOpts, ModalitySet, ModelOutput, MultimodalModel, ParamGroups};
use agm_data::av_digits::{self, AvDigitsConfig, Split};
use agm_fusion::{Linear, ParamRole, ParamStore};
use agm_modulation::{Agm, AgmConfig};
use agm_train::optim::{OptimizerConfig, ScheduleConfig, SgdConfig};
use agm_train::{NoCallback, Trainer, TrainerOptions};
use candle_core::{DType, Device, Result, Tensor};

/// One linear layer per modality into 32 features, summed, then a linear head.
struct TinySum {
    modalities: ModalitySet,
    encoders: Vec<Linear>,
    head: Linear,
    store: ParamStore,
}

impl TinySum {
    fn new(input_sizes: &[usize], classes: usize, seed: u64, device: &Device) -> Result<Self> {
        let store = ParamStore::new();
        let root = store.builder(seed, DType::F32, device);
        let names = ["audio", "visual"];
        let encoders = input_sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Linear::new(&root.pp(names[i]).with_role(ParamRole::Modality(i)), n, 32, true))
            .collect::<Result<Vec<_>>>()?;
        let head_pb = root.pp("head");
        let head = Linear::new(&head_pb, 32, classes, true)?;
        store.set_head_weight(&head_pb.path("weight"));
        Ok(Self { modalities: ModalitySet::new(names), encoders, head, store })
    }
}

impl MultimodalModel for TinySum {
    fn modalities(&self) -> &ModalitySet {
        &self.modalities
    }
    fn num_classes(&self) -> usize {
        10
    }
    fn forward(&self, inputs: &[Tensor], opts: &ForwardOpts) -> Result<ModelOutput> {
        let mut feats = Vec::new();
        for (m, (enc, x)) in self.encoders.iter().zip(inputs).enumerate() {
            // Absent modalities are fed as zeros of their input shape, as the reference does.
            let x = if opts.present.contains(m) { x.flatten_from(1)? } else { x.flatten_from(1)?.zeros_like()? };
            feats.push(enc.forward(&x)?.relu()?);
        }
        let fused = (&feats[0] + &feats[1])?;
        Ok(ModelOutput::new(self.head.forward(&fused)?, fused, feats))
    }
    fn param_groups(&self) -> ParamGroups {
        self.store.groups(2)
    }
}

fn main() -> anyhow::Result<()> {
    let device = Device::Cpu;
    let data = av_digits::load(&AvDigitsConfig::default_preset())?;
    let model = TinySum::new(&[13 * 32, 28 * 28], 10, 0, &device)?;
    let agm = Agm::new(AgmConfig::av_digits(), 2)?;
    let optimizer = OptimizerConfig::Sgd(SgdConfig::agm_reference(0.05));
    let opts = TrainerOptions {
        epochs: 5,
        batch_size: 64,
        eval_batch_size: 256,
        seed: 0,
        base_lr: optimizer.lr(),
        schedule: ScheduleConfig::Constant {},
        checkpoint_every_steps: 0,
        shapley: agm_core::ShapleyMode::Faithful,
        shuffle: true,
        loss_reduction: Default::default(),
    };
    let mut trainer = Trainer::new(&model, Box::new(agm), |g| Ok(optimizer.build(g)?), opts, &device)?;
    let summary = trainer.fit(data.split(Split::Train), data.split(Split::Validation), &mut NoCallback)?;
    let last = summary.last.expect("five epochs ran");
    // AGM reports its coefficients of the last step (audio, visual).
    let coefficients = last.last_coefficients.unwrap_or_default();
    println!(
        "validation accuracy {:.1}%, Shapley accuracy audio {:.1}% visual {:.1}%, coefficients {:.3?}",
        100.0 * last.validation.accuracy,
        100.0 * last.validation.modality_accuracy[0],
        100.0 * last.validation.modality_accuracy[1],
        coefficients
    );
    Ok(())
}
