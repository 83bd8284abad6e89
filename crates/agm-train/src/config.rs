//! The resolved run configuration (`config.toml` in every run directory) and the builders that
//! turn it into a dataset, a model, a modulator and an optimizer.

use std::path::Path;

use agm_core::{MultimodalBatch, ShapleyMode};
use agm_core::MultimodalModel;
use agm_data::av_digits::{self, AvDigits, AvDigitsConfig, NoisePreset, Split};
use agm_fusion::{LateConcatConfig, FusionModel};
use agm_modulation::registry::{self, MethodConfigs};
use agm_modulation::{
    AgmConfig, GBlendConfig, MmParetoConfig, Modulator, MsesConfig, MslrConfig, OgmGeConfig, PmrConfig,
};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::optim::{OptimizerConfig, ScheduleConfig, SgdConfig};
use crate::TrainerOptions;

/// Datasets `--dataset` accepts in this build.
pub const DATASETS: &[&str] = &["av-digits"];
/// Model presets `--model` accepts in this build.
pub const MODELS: &[&str] = &["av-digits-late"];
/// Methods `--method` accepts in this build, alone or stacked with `+` (`agm+ogm-ge`); the
/// registry of agm-modulation owns the list.
pub const METHODS: &[&str] = registry::METHODS;
/// Devices `--device` accepts.
pub const DEVICES: &[&str] = &["cpu", "cuda"];

/// Everything that defines a run. Missing keys in a config file take the AV-Digits defaults;
/// unknown keys are an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default = "RunConfig::av_digits")]
pub struct RunConfig {
    pub dataset: String,
    /// AV-Digits noise preset: `audio-dominant`, `balanced` or `image-dominant`.
    pub data_preset: String,
    pub model: String,
    /// One method or several joined with `+`, composed in the order written (`agm+ogm-ge`).
    pub method: String,
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    pub device: String,
    /// Also checkpoint every this many steps (0: at the end of each epoch only).
    pub checkpoint_every_steps: usize,
    /// How Shapley-based methods run their masked passes: `faithful` (the reference's passes)
    /// or `fast` (one encoder pass per modality; see `docs/agm.md`).
    pub shapley: String,
    pub optimizer: OptimizerConfig,
    pub schedule: ScheduleConfig,
    pub agm: AgmConfig,
    pub ogm_ge: OgmGeConfig,
    pub mslr: MslrConfig,
    pub mses: MsesConfig,
    pub gblend: GBlendConfig,
    pub pmr: PmrConfig,
    pub mmpareto: MmParetoConfig,
}

/// What a config builds.
pub struct Built {
    pub data: AvDigits,
    pub model: FusionModel,
    pub modulator: Box<dyn Modulator>,
}

fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(TrainError::Config(format!("{field} = `{value}` is not known; allowed: {}", allowed.join(", "))))
    }
}

impl RunConfig {
    /// The default run: AGM on AV-Digits (audio-dominant preset) with the late concat MLP model,
    /// SGD with the reference's momentum and weight decay.
    pub fn av_digits() -> Self {
        Self {
            dataset: "av-digits".into(),
            data_preset: NoisePreset::AudioDominant.to_string(),
            model: "av-digits-late".into(),
            method: "agm".into(),
            seed: 0,
            epochs: 20,
            batch_size: 64,
            device: "cpu".into(),
            checkpoint_every_steps: 0,
            shapley: "faithful".into(),
            optimizer: OptimizerConfig::Sgd(SgdConfig::agm_reference(0.05)),
            schedule: ScheduleConfig::Constant,
            agm: AgmConfig::av_digits(),
            ogm_ge: OgmGeConfig::av_digits(),
            mslr: MslrConfig::av_digits(),
            mses: MsesConfig::av_digits(),
            gblend: GBlendConfig::av_digits(),
            pmr: PmrConfig::av_digits(),
            mmpareto: MmParetoConfig::av_digits(),
        }
    }

    /// Reads a TOML file over the defaults; unknown keys are rejected with the file named.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Self::from_toml_str(&text).map_err(|e| match e {
            TrainError::Config(message) => TrainError::ConfigFile { path: path.to_path_buf(), message },
            other => other,
        })
    }

    pub fn from_toml_str(text: &str) -> Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|e| TrainError::Config(e.message().to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config is plain data")
    }

    /// Checks every field; the error names the field and the allowed values.
    pub fn validate(&self) -> Result<()> {
        one_of("dataset", &self.dataset, DATASETS)?;
        one_of("model", &self.model, MODELS)?;
        registry::parse(&self.method).map_err(TrainError::Config)?;
        one_of("device", &self.device, DEVICES)?;
        self.shapley_mode()?;
        self.data_preset.parse::<NoisePreset>().map_err(|e| TrainError::Config(format!("data_preset: {e}")))?;
        if self.epochs == 0 {
            return Err(TrainError::Config("epochs must be at least 1".into()));
        }
        if self.batch_size == 0 {
            return Err(TrainError::Config("batch_size must be at least 1".into()));
        }
        self.optimizer.validate().map_err(|e| TrainError::Config(format!("optimizer: {e}")))?;
        self.schedule.build().map_err(|e| TrainError::Config(format!("schedule: {e}")))?;
        self.method_configs().validate().map_err(TrainError::Config)?;
        Ok(())
    }

    pub fn shapley_mode(&self) -> Result<ShapleyMode> {
        self.shapley.parse().map_err(|e| TrainError::Config(format!("shapley: {e}")))
    }

    /// Every method's settings, as the registry takes them.
    pub fn method_configs(&self) -> MethodConfigs {
        MethodConfigs {
            seed: self.seed,
            agm: self.agm.clone(),
            ogm_ge: self.ogm_ge.clone(),
            mslr: self.mslr.clone(),
            mses: self.mses.clone(),
            gblend: self.gblend.clone(),
            pmr: self.pmr.clone(),
            mmpareto: self.mmpareto.clone(),
            feature_dims: None,
        }
    }

    pub fn device(&self) -> Result<Device> {
        match self.device.as_str() {
            "cuda" => Device::new_cuda(0).map_err(|e| {
                TrainError::Config(format!(
                    "device = `cuda`: {e}; build with `--features cuda` (cargo xtask does this for you)"
                ))
            }),
            _ => Ok(Device::Cpu),
        }
    }

    pub fn trainer_options(&self) -> TrainerOptions {
        TrainerOptions {
            epochs: self.epochs,
            batch_size: self.batch_size,
            eval_batch_size: 256,
            seed: self.seed,
            base_lr: self.optimizer.lr(),
            schedule: self.schedule,
            checkpoint_every_steps: self.checkpoint_every_steps,
            shapley: self.shapley_mode().unwrap_or_default(),
        }
    }

    pub fn load_data(&self) -> Result<AvDigits> {
        let preset: NoisePreset =
            self.data_preset.parse().map_err(|e| TrainError::Config(format!("data_preset: {e}")))?;
        Ok(av_digits::load(&AvDigitsConfig::with_preset(preset))?)
    }

    pub fn build_model(&self, device: &Device) -> Result<FusionModel> {
        Ok(FusionModel::late_concat(&LateConcatConfig::av_digits(), self.seed, DType::F32, device)?)
    }

    /// The method (or stack of methods) named by `method`, for this model.
    pub fn build_modulator(&self, model: &dyn MultimodalModel) -> Result<Box<dyn Modulator>> {
        let mut configs = self.method_configs();
        // Methods with their own heads need the encoders' output sizes: one pass on zeros.
        let device = model.param_groups().trainable().first().map(|v| v.var.device().clone()).unwrap_or(Device::Cpu);
        let probe = MultimodalBatch::new(
            vec![
                Tensor::zeros((1, 1, 13, 32), DType::F32, &device)?,
                Tensor::zeros((1, 1, 28, 28), DType::F32, &device)?,
            ],
            Tensor::zeros(1, DType::U32, &device)?,
        )?;
        configs.feature_dims = Some(agm_modulation::encoder_feature_dims(model, &probe)?);
        registry::build(&self.method, &configs, model).map_err(TrainError::Config)
    }

    /// Dataset, model and modulator, ready for a [`crate::Trainer`].
    pub fn build(&self, device: &Device) -> Result<Built> {
        let data = self.load_data()?;
        let model = self.build_model(device)?;
        let modulator = self.build_modulator(&model)?;
        Ok(Built { data, model, modulator })
    }
}

/// The AV-Digits splits used for training and model selection.
pub fn train_and_validation(data: &AvDigits) -> (&agm_data::SplitTensors, &agm_data::SplitTensors) {
    (data.split(Split::Train), data.split(Split::Validation))
}
