//! The resolved run configuration (`config.toml` in every run directory) and the builders that
//! turn it into a dataset, a model, a modulator and an optimizer.

use std::path::Path;

use agm_core::{FastShapley, MultimodalModel, ShapleyMode};
use agm_data::av_digits::{self, AvDigits, AvDigitsConfig, NoisePreset, Split};
use agm_data::synthetic::{SyntheticModality, SyntheticSpec};
use agm_data::{DatasetId, LoadOptions, LoadedDataset};
use agm_fusion::{InputScale, PresetOptions};
use agm_modulation::{registry, BuildCx, Method, MethodSettings, Modulator};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::optim::{OptimizerConfig, ScheduleConfig, SgdConfig};
use crate::TrainerOptions;

/// Datasets `--dataset` accepts.
pub const DATASETS: &[&str] = &["av-digits", "avmnist", "cremad", "urfunny", "ave", "mosei", "synthetic"];
/// Devices `--device` accepts.
pub const DEVICES: &[&str] = &["cpu", "cuda"];
/// Values of `shapley`.
pub const SHAPLEY_MODES: &[&str] = &["auto", "fast", "faithful"];

/// Everything that defines a run. [`crate::resolve`] builds one from the dataset's reference
/// settings, a recipe, a config file and flags; read directly with [`RunConfig::from_toml_str`],
/// missing keys take the AV-Digits defaults. Unknown keys are an error (the flattened method
/// settings reject every key that is neither a run setting nor a method's section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default = "RunConfig::av_digits")]
pub struct RunConfig {
    /// The dataset id, one of [`DATASETS`].
    pub dataset: String,
    /// Where a real dataset lives: a folder (a file for UR-Funny) or `hf://<repo-id>`; empty for
    /// `av-digits` (embedded) and `synthetic` (generated).
    pub data: String,
    /// AV-Digits data preset: `noisy-audio` (default), `audio-dominant`, `balanced`,
    /// `image-dominant`, `custom:<audio_std>,<image_std>` or `ambiguous:<pairs>,<audio_std>,<image_std>`.
    pub data_preset: String,
    /// A model preset (`agm_fusion::preset_names`); `<dataset>-late` suits each dataset.
    pub model: String,
    /// Weights a new run starts from instead of the preset's seeded initialisation: a PyTorch
    /// state dict or checkpoint (`.pth`, `.pth.tar`, `.pt`, `.bin`; the official code's
    /// `ckpt_full_epoch{N}.pth.tar` included) or a safetensors file, loaded strictly by the
    /// official names as `cargo xtask eval --weights` loads them (docs/checkpoints.md). Empty:
    /// the seeded initialisation. A resumed run takes its weights from its checkpoint.
    pub init_weights: String,
    /// `small` (32×32 frames, sequences of 4) or `reference` shapes for `--dataset synthetic`.
    pub synthetic_scale: String,
    /// One method or several joined with `+`, composed in the order written (`agm+ogm-ge`).
    pub method: String,
    /// The run's seed: initialisation, data order, dropout, the methods' own draws, synthetic
    /// data and CREMA-D's augmentation.
    pub seed: u64,
    /// Epochs to train, at least 1; a resume may raise it to train on.
    pub epochs: usize,
    /// Samples per training step, at least 1.
    pub batch_size: usize,
    /// How the training loss reduces over the batch: `mean` (default) or `sum` (the reference's
    /// MOSEI loop, whose gradients are the batch size times the mean's).
    pub loss_reduction: String,
    /// `cpu` or `cuda` (the first GPU; needs a build with the `cuda` feature). A resume may
    /// change it.
    pub device: String,
    /// How matrix products and convolutions compute: `fp32` (default; TF32 allowed on CUDA, as
    /// PyTorch's cuDNN convolutions), `fp32-strict` (no TF32: CUDA computes what the CPU does)
    /// or `bf16` (bf16 operands, f32 master weights and everything else); `agm_kernels::Precision`.
    pub precision: String,
    /// Also checkpoint every this many steps (0: at the end of each epoch only).
    pub checkpoint_every_steps: usize,
    /// How Shapley-based methods run their masked passes: `faithful` (the reference's
    /// whole-network passes), `fast` (one encoder pass per modality; exact only for encoders
    /// without batch norm or dropout) or `auto` (default: `fast` where it is exact, else
    /// `faithful`); see `docs/agm.md`.
    pub shapley: String,
    /// Also evaluate, every epoch, the split the reference picks its best epoch on (test for
    /// AV-MNIST and CREMA-D, validation elsewhere), so a run can be reported under the
    /// reference's protocol too. Model selection still uses validation only.
    pub reference_protocol: bool,
    /// The folder of the mono-modal concepts the competition-strength metric measures against;
    /// empty: `concepts/<dataset>-<preset>` ([`RunConfig::concepts_dir`]). A location, like
    /// `data`: a checkpoint does not record it, and a resume may point elsewhere.
    pub concepts: String,
    /// Train the concepts missing in `concepts` before the run (`false`: `--no-concepts`, the
    /// metric is measured only where they exist already).
    pub train_concepts: bool,
    /// The optimizer and its hyper-parameters (`[optimizer]`, `kind = "sgd"` by default); its
    /// `lr` is the base rate the schedule starts from.
    pub optimizer: OptimizerConfig,
    /// How the learning rate changes from epoch to epoch (`[schedule]`).
    pub schedule: ScheduleConfig,
    /// Every registered method's settings, one `[<method>]` table each (`[agm]`, `[ogm_ge]`);
    /// typed with [`RunConfig::method`] and [`RunConfig::set_method`].
    #[serde(flatten)]
    pub methods: MethodSettings,
}

/// What a config builds.
pub struct Built {
    /// The dataset, its modalities in the model's order.
    pub data: LoadedDataset,
    /// The model preset, with `init_weights` loaded where the config names a file.
    pub model: Box<dyn MultimodalModel>,
    /// The method (or stack of methods), built for this model and data.
    pub modulator: Box<dyn Modulator>,
}

/// The model preset that suits a dataset when `--model` is not given.
pub fn default_model(dataset: &str) -> String {
    match dataset {
        "ave" => "ave-psp".into(),
        "mosei" => "mosei-mat".into(),
        "synthetic" => "av-digits-late".into(),
        other => format!("{other}-late"),
    }
}

/// A local data path in one spelling: the folder it resolves to, or, while it does not exist,
/// its components without `.` and trailing separators. `hf://` and other URLs stay as written.
fn same_location(data: &str) -> String {
    if data.is_empty() || data.contains("://") {
        return data.to_string();
    }
    let path = Path::new(data);
    let spelled = || path.components().filter(|c| *c != std::path::Component::CurDir).collect();
    std::fs::canonicalize(path).unwrap_or_else(|_| spelled()).display().to_string()
}

/// `dataset` as printed, with AV-Digits' noise `data_preset` (other datasets have none).
pub fn dataset_label(dataset: &str, data_preset: &str) -> String {
    if dataset == "av-digits" {
        format!("av-digits ({data_preset} preset)")
    } else {
        dataset.to_string()
    }
}

pub(crate) fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(TrainError::Config(format!(
            "{field} = `{value}` is not known{}; allowed: {}",
            agm_core::suggest::did_you_mean(value, allowed.iter().copied()),
            allowed.join(", ")
        )))
    }
}

/// ` (did you mean …?)` for an unknown top-level key: the closest run setting or method
/// section, or a setting inside a section (`learning_rate` → `[optimizer] lr`).
fn setting_hint(field: &str) -> String {
    let table = toml::Table::try_from(RunConfig::av_digits()).expect("the config is plain data");
    // Run settings first: where a section has a key of the same name (`seed` in [ogm]), the run's
    // own is meant.
    let mut names: Vec<(String, String)> = table.keys().map(|key| (key.clone(), format!("`{key}`"))).collect();
    for (key, value) in &table {
        if let toml::Value::Table(inner) = value {
            names.extend(inner.keys().map(|k| (k.clone(), format!("`{k}` in [{key}]"))));
        }
    }
    names.push(("learning_rate".into(), "`lr` in [optimizer]".into()));
    names.extend(registry::entries().iter().map(|e| (e.section(), format!("[{}]", e.section()))));
    agm_core::suggest::closest(field, names.iter().map(|(n, _)| n.as_str()))
        .and_then(|n| names.iter().find(|(m, _)| m == n))
        .map_or_else(String::new, |(_, shown)| format!(" (did you mean {shown}?)"))
}

impl RunConfig {
    /// The settings a checkpoint was trained under, as a JSON object of dotted keys
    /// (`optimizer.lr`): what the run's `config.toml` records ([`RunConfig::to_run_toml`]: the
    /// sections of unused methods left out) but the fields a resume may change (`epochs`,
    /// `device`), `init_weights`, which it does not read, and the locations `data` (a dataset
    /// moved to another folder resumes from there) and the concepts (they train nothing).
    pub fn resumable_identity(&self) -> serde_json::Value {
        let same = RunConfig {
            epochs: 0,
            device: String::new(),
            init_weights: String::new(),
            data: String::new(),
            ..self.clone()
        };
        serde_json::to_value(same.trained_settings()).expect("plain data")
    }

    /// Every setting its run directory's `config.toml` records, as `dotted.key → value`.
    pub fn recorded_settings(&self) -> std::collections::BTreeMap<String, toml::Value> {
        crate::resolve::leaves(&self.recorded_table())
    }

    fn recorded_table(&self) -> toml::Table {
        toml::from_str(&self.to_run_toml("")).expect("written as TOML")
    }

    /// Every setting that shapes what trains, as dotted keys (`optimizer.lr`) with the values
    /// `config.toml` records ([`RunConfig::to_run_toml`]: the sections of unused methods left
    /// out). The concepts are left out, not blanked: where the metric's concepts live changes
    /// nothing that trains, and checkpoints written before those keys existed compare equal.
    fn trained_settings(&self) -> std::collections::BTreeMap<String, toml::Value> {
        let mut table = self.recorded_table();
        table.remove("concepts");
        table.remove("train_concepts");
        // One folder however it is written (`data/ave/`, `./data/ave`, its absolute path).
        if let Some(toml::Value::String(data)) = table.get_mut("data") {
            *data = same_location(data);
        }
        crate::resolve::leaves(&table)
    }

    /// The default run: AGM on AV-Digits (noisy-audio preset) with the late concat MLP model,
    /// SGD at lr 0.01 with the reference's momentum and weight decay. The preset and the learning
    /// rate were chosen on validation data so that the default shows the paper's claim, an
    /// accuracy gain over joint training (docs/av-digits-default.md).
    pub fn av_digits() -> Self {
        Self {
            dataset: "av-digits".into(),
            data: String::new(),
            data_preset: NoisePreset::NoisyAudio.to_string(),
            model: "av-digits-late".into(),
            init_weights: String::new(),
            synthetic_scale: "small".into(),
            method: "agm".into(),
            seed: 0,
            epochs: 20,
            batch_size: 64,
            loss_reduction: "mean".into(),
            device: "cpu".into(),
            precision: "fp32".into(),
            checkpoint_every_steps: 0,
            shapley: "auto".into(),
            reference_protocol: false,
            concepts: String::new(),
            train_concepts: true,
            optimizer: OptimizerConfig::Sgd(SgdConfig::agm_reference(0.01)),
            schedule: ScheduleConfig::Constant {},
            methods: MethodSettings::av_digits(),
        }
    }

    /// The reference's settings for `dataset` (docs/reproduce.md lists every value and its
    /// source): the code's defaults (SGD with momentum
    /// 0.9 and weight decay 1e-4, StepLR(70, 0.1), batch 16, lr 1e-5), the README's AV-MNIST
    /// example (batch 64, lr 1e-4) and the author's answers in the reference's issues (alpha and
    /// epochs, modulation over the whole run). `av-digits` and `synthetic` keep the embedded
    /// default's settings.
    pub fn for_dataset(dataset: &str) -> Result<Self> {
        one_of("dataset", dataset, DATASETS)?;
        let reference = |epochs: usize, batch_size: usize, lr: f64| Self {
            dataset: dataset.into(),
            model: default_model(dataset),
            epochs,
            batch_size,
            optimizer: OptimizerConfig::Sgd(SgdConfig::agm_reference(lr)),
            schedule: ScheduleConfig::Step { step_size: 70, gamma: 0.1 },
            methods: MethodSettings::for_dataset(dataset),
            ..Self::av_digits()
        };
        Ok(match dataset {
            // Author (issue #10): 1000 epochs; `range(1, EPOCHS)` runs EPOCHS − 1 of them.
            "avmnist" => reference(999, 64, 1e-4),
            "cremad" => reference(1500, 16, 1e-5),
            "urfunny" => reference(800, 16, 1e-5),
            "ave" => reference(10, 16, 1e-5),
            // `run/MOSEI_main.py` trains with `CrossEntropyLoss(reduction="sum")`.
            "mosei" => Self { loss_reduction: "sum".into(), ..reference(10, 16, 1e-5) },
            "synthetic" => Self { dataset: dataset.into(), ..Self::av_digits() },
            _ => Self::av_digits(),
        })
    }

    /// `--dataset synthetic` with preset `model`: the settings of the dataset the preset is made
    /// for (optimizer, schedule, batch size, method settings), with the embedded default's epoch
    /// count, so a smoke run of a paper model does not train at AV-Digits' learning rate.
    pub fn for_synthetic(model: &str) -> Result<Self> {
        let made_for = agm_fusion::preset_spec(model, &PresetOptions::default())
            .map(|spec| spec.dataset.to_string())
            .unwrap_or_else(|_| "av-digits".into());
        Ok(Self {
            dataset: "synthetic".into(),
            data: String::new(),
            model: model.into(),
            epochs: Self::av_digits().epochs,
            ..Self::for_dataset(&made_for)?
        })
    }

    /// Reads a TOML file over the defaults; unknown keys are rejected with the file named.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Self::from_toml_str(&text).map_err(|e| match e {
            TrainError::Config(message) => TrainError::ConfigFile { path: path.to_path_buf(), message },
            other => other,
        })
    }

    /// Parses TOML text over the AV-Digits defaults, then validates it ([`RunConfig::validate`]).
    /// Both fail with [`TrainError::Config`]: a syntax error with toml's line, column and
    /// offending text; an unknown key or a wrong type with its line, its dotted key and the
    /// closest known name.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        // A syntax error's full text: its line, column and the offending text.
        let table: toml::Table =
            toml::from_str(text).map_err(|e| TrainError::Config(e.to_string().trim_end().to_string()))?;
        // A bad setting as `--config` reports it: its line and key, the closest known name.
        let mut cfg = crate::resolve::config_of(&table)
            .map_err(|(key, message)| TrainError::Config(crate::resolve::located(text, &key, message)))?;
        // Earlier versions recorded AV-Digits' preset (and the synthetic scale) for every dataset,
        // which ignored them.
        let default = Self::av_digits();
        if cfg.dataset != "av-digits" {
            cfg.data_preset = default.data_preset;
        }
        if cfg.dataset != "synthetic" {
            cfg.synthetic_scale = default.synthetic_scale;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// A parsed TOML table as a config, without the checks of [`RunConfig::validate`]. A bad
    /// value's error gives its dotted key (`optimizer.lr`) as the first element.
    pub(crate) fn deserialize_table(mut table: toml::Table) -> std::result::Result<Self, (String, String)> {
        // Method sections first, so their errors keep their dotted keys.
        let methods = MethodSettings::take_from(&mut table)?;
        let mut cfg: Self = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().message().to_string();
            // An unknown top-level key reaches the flattened settings, which report it at the root.
            let unknown = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next());
            match unknown {
                Some(field) if key == "." || key.is_empty() => {
                    let hint = setting_hint(field);
                    (field.to_string(), format!("{message}{hint}"))
                }
                _ => (key, message),
            }
        })?;
        cfg.methods = methods;
        Ok(cfg)
    }

    /// Method `M`'s settings.
    pub fn method<M: Method>(&self) -> M::Config {
        self.methods.get::<M>()
    }

    /// Replaces method `M`'s settings.
    pub fn set_method<M: Method>(&mut self, config: &M::Config) {
        self.methods.set::<M>(config);
    }

    /// The whole config as TOML, every registered method's section included (unlike
    /// [`RunConfig::to_run_toml`]).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.table()).expect("the config is plain data")
    }

    /// Every setting as a TOML table, less the settings of another dataset than this run's.
    fn table(&self) -> toml::Table {
        let mut table = toml::Table::try_from(self).expect("the config is plain data");
        // Settings of one dataset only; another dataset's run would record values it ignores.
        if self.dataset != "av-digits" {
            table.remove("data_preset");
        }
        if self.dataset != "synthetic" {
            table.remove("synthetic_scale");
        }
        table
    }

    /// The `config.toml` sections of the registered methods this run does not use.
    pub fn unused_method_sections(&self) -> Vec<String> {
        let used: Vec<String> = self.method.split('+').map(|m| agm_modulation::method::section_of(m.trim())).collect();
        registry::entries().iter().map(|e| e.section()).filter(|s| !used.contains(s)).collect()
    }

    /// Whether two configs train the same run: equal in every setting but the sections of
    /// methods neither uses (a run directory's `config.toml` leaves those out) and the concepts
    /// (where the metric's concepts live changes nothing that trains).
    pub fn same_run(&self, other: &RunConfig) -> bool {
        self.trained_settings() == other.trained_settings()
    }

    /// The settings in which two configs train different runs, as `(dotted key, this config's
    /// value, the other's)` with values as TOML writes them (`-` where one lacks the key); empty
    /// for configs that are the [`RunConfig::same_run`].
    pub fn run_differences(&self, other: &RunConfig) -> Vec<(String, String, String)> {
        let (ours, theirs) = (self.trained_settings(), other.trained_settings());
        let shown = |v: Option<&toml::Value>| v.map_or_else(|| "-".to_string(), ToString::to_string);
        crate::resolve::differences(&ours, &theirs)
            .into_iter()
            .map(|(k, a, b)| (k.to_string(), shown(a), shown(b)))
            .collect()
    }

    /// The config as a run directory records it: `header` as `#` comment lines, then every
    /// setting but the sections of methods the run does not use (they do not change it).
    /// Reading it back gives a config that trains the same run.
    pub fn to_run_toml(&self, header: &str) -> String {
        let mut table = self.table();
        for section in self.unused_method_sections() {
            table.remove(&section);
        }
        let comments: String = header.lines().map(|l| format!("# {l}\n").replace("# \n", "#\n")).collect();
        format!("{comments}{}", toml::to_string_pretty(&table).expect("the config is plain data"))
    }

    /// Checks every field; the error names the field and the allowed values.
    pub fn validate(&self) -> Result<()> {
        one_of("dataset", &self.dataset, DATASETS)?;
        let presets = agm_fusion::preset_names();
        one_of("model", &self.model, &presets.iter().map(String::as_str).collect::<Vec<_>>())?;
        let made_for = agm_fusion::preset_spec(&self.model, &self.preset_options())?.dataset;
        if self.dataset != "synthetic" && made_for != self.dataset {
            return Err(TrainError::Config(format!(
                "model = `{}` is made for dataset `{made_for}`, not `{}`; use `{}` or --dataset synthetic",
                self.model,
                self.dataset,
                default_model(&self.dataset)
            )));
        }
        one_of("synthetic_scale", &self.synthetic_scale, &["small", "reference"])?;
        registry::parse(&self.method)?;
        one_of("device", &self.device, DEVICES)?;
        self.precision()?;
        one_of("shapley", &self.shapley, SHAPLEY_MODES)?;
        one_of("loss_reduction", &self.loss_reduction, crate::LossReduction::NAMES)?;
        self.data_preset.parse::<NoisePreset>().map_err(|e| TrainError::Config(format!("data_preset: {e}")))?;
        let default = Self::av_digits();
        if self.dataset != "av-digits" && self.data_preset != default.data_preset {
            return Err(TrainError::Config(format!(
                "data_preset = `{}` chooses AV-Digits' noise and applies to dataset `av-digits` only, \
                 not `{}`; leave it out",
                self.data_preset, self.dataset
            )));
        }
        if self.dataset != "synthetic" && self.synthetic_scale != default.synthetic_scale {
            return Err(TrainError::Config(format!(
                "synthetic_scale = `{}` applies to dataset `synthetic` only, not `{}`; leave it out",
                self.synthetic_scale, self.dataset
            )));
        }
        if self.epochs == 0 {
            return Err(TrainError::Config("epochs must be at least 1".into()));
        }
        if self.batch_size == 0 {
            return Err(TrainError::Config("batch_size must be at least 1".into()));
        }
        let config_error = |e: candle_core::Error| TrainError::Config(crate::error::candle_message(&e));
        self.optimizer.validate().map_err(config_error)?;
        self.schedule.build().map_err(config_error)?;
        self.methods.validate()?;
        Ok(())
    }

    /// Writes `method` and `data_preset` in their one spelling (see
    /// [`agm_modulation::registry::canonical`]); a setting that does not parse stays as written,
    /// for [`RunConfig::validate`] to refuse.
    pub fn canonicalize(&mut self) {
        if let Ok(method) = registry::canonical(&self.method) {
            self.method = method;
        }
        if let Ok(preset) = self.data_preset.parse::<NoisePreset>() {
            self.data_preset = preset.to_string();
        }
    }

    /// The dataset as printed: AV-Digits with its noise preset, any other by its id.
    pub fn dataset_label(&self) -> String {
        dataset_label(&self.dataset, &self.data_preset)
    }

    /// The Shapley passes for `model`: `auto` picks `fast` only where it computes exactly what
    /// `faithful` does (encoders without batch norm or dropout).
    pub fn shapley_mode(&self, model: &dyn MultimodalModel) -> ShapleyMode {
        match self.shapley.as_str() {
            "fast" => ShapleyMode::Fast,
            "auto" if model.fast_shapley() == FastShapley::Exact => ShapleyMode::Fast,
            _ => ShapleyMode::Faithful,
        }
    }

    /// How the Shapley passes run for `model`, in words for run headers.
    pub fn describe_shapley(&self, model: &dyn MultimodalModel) -> String {
        let fast = model.fast_shapley();
        let text = match (self.shapley.as_str(), fast) {
            (_, FastShapley::NotSupported) => "faithful (this model always runs the reference's passes)",
            ("fast", FastShapley::Approximate) => {
                "fast, an approximation for these encoders (batch norm or dropout); `--shapley faithful` runs \
                 the reference's arithmetic"
            }
            ("auto", FastShapley::Exact) => "fast (auto: exact for these encoders)",
            ("auto", FastShapley::Approximate) => "faithful (auto: the encoders have batch norm or dropout)",
            ("fast", _) => "fast",
            _ => "faithful",
        };
        text.to_string()
    }

    /// The concepts' folder: `concepts`, or `concepts/<dataset>-<preset>` when it is empty.
    pub fn concepts_dir(&self) -> std::path::PathBuf {
        match self.concepts.as_str() {
            "" => crate::concept::default_dir(&self.dataset, &self.data_preset),
            dir => dir.into(),
        }
    }

    /// The parsed `precision`.
    pub fn precision(&self) -> Result<agm_kernels::Precision> {
        self.precision.parse().map_err(TrainError::Config)
    }

    /// The candle device `device` names: CUDA device 0 for `cuda`, else the CPU. An error when
    /// CUDA cannot start (a build without the `cuda` feature, no usable GPU), naming the fix.
    pub fn device(&self) -> Result<Device> {
        match self.device.as_str() {
            "cuda" => Device::new_cuda(0).map_err(|e| {
                let fix = if cfg!(feature = "cuda") {
                    "no usable GPU: check the NVIDIA driver and that LD_LIBRARY_PATH holds libcublas and libcurand (docs/cuda.md)"
                } else {
                    "build with `--features cuda` (cargo xtask does this for you)"
                };
                TrainError::Config(format!("device = `cuda`: {e}; {fix}"))
            }),
            _ => Ok(Device::Cpu),
        }
    }

    /// The loop settings; Shapley passes are `faithful` unless set to `fast` (see
    /// [`RunConfig::trainer`], which resolves `auto` for its model).
    pub fn trainer_options(&self) -> TrainerOptions {
        TrainerOptions {
            epochs: self.epochs,
            batch_size: self.batch_size,
            eval_batch_size: 256,
            seed: self.seed,
            base_lr: self.optimizer.lr(),
            schedule: self.schedule,
            checkpoint_every_steps: self.checkpoint_every_steps,
            shapley: if self.shapley == "fast" { ShapleyMode::Fast } else { ShapleyMode::Faithful },
            shuffle: true,
            loss_reduction: crate::LossReduction::parse(&self.loss_reduction).unwrap_or_default(),
        }
    }

    /// The embedded AV-Digits set with this config's noise preset.
    pub fn load_av_digits(&self) -> Result<AvDigits> {
        let preset: NoisePreset =
            self.data_preset.parse().map_err(|e| TrainError::Config(format!("data_preset: {e}")))?;
        Ok(av_digits::load(&AvDigitsConfig::with_preset(preset))?)
    }

    /// The model preset's build options: the reference input shapes, except for `--dataset
    /// synthetic` at `synthetic_scale = "small"`.
    pub fn preset_options(&self) -> PresetOptions {
        let scale = if self.synthetic_scale == "reference" || self.dataset != "synthetic" {
            InputScale::Reference
        } else {
            InputScale::Small
        };
        PresetOptions { scale, ..PresetOptions::default() }
    }

    /// Where the dataset's files are: `data` as given, or the local snapshot of an `hf://`
    /// reference (downloaded first when online and not cached).
    fn data_path(&self) -> Result<std::path::PathBuf> {
        // Checked where the files are needed, not in `validate`: a config without them still
        // prints (`--print-config`).
        if self.data.is_empty() {
            return Err(TrainError::Config(format!(
                "dataset `{}` needs its files: pass --data <folder> or --data hf://<repo-id> (README, section Datasets)",
                self.dataset
            )));
        }
        Ok(agm_data::hub::resolve_data_path(&self.data, &agm_data::hub::HubOptions::from_env())?)
    }

    /// Fails, naming every missing file, when the dataset's folder lacks one or `init_weights`
    /// names no file; without reading them, so a command checks this before it creates a run
    /// directory.
    pub fn check_input_files(&self) -> Result<()> {
        if !self.init_weights.is_empty() && !Path::new(&self.init_weights).is_file() {
            return Err(TrainError::Config(format!(
                "init_weights = `{}`: no such file; pass a weights file (.pth, .pth.tar, .pt, .bin or .safetensors)",
                self.init_weights
            )));
        }
        match self.dataset.as_str() {
            "av-digits" | "synthetic" => Ok(()),
            id => Ok(agm_data::loaders::require_all(id.parse()?, &self.data_path()?)?),
        }
    }

    /// The dataset: embedded, generated, or loaded from `data`, with its modalities in the
    /// model's order and, for per-segment tasks, one label per segment.
    pub fn load_dataset(&self) -> Result<LoadedDataset> {
        let mut data = match self.dataset.as_str() {
            "av-digits" => {
                let d = self.load_av_digits()?;
                LoadedDataset {
                    id: DatasetId::AvDigits,
                    modalities: d.modalities().clone(),
                    classes: 10,
                    train: d.split(Split::Train).clone(),
                    validation: d.split(Split::Validation).clone(),
                    test: d.split(Split::Test).clone(),
                    dep: Some(d.split(Split::Dep).clone()),
                    segment_labels: None,
                    notes: Vec::new(),
                    word_vectors: None,
                }
            }
            "synthetic" => {
                let spec = agm_fusion::preset_spec(&self.model, &self.preset_options())?;
                // Enough to learn from at the small scale; a smoke test at the reference one.
                let sizes = if self.synthetic_scale == "small" { [128, 64, 64] } else { [16, 8, 8] };
                Self::synthetic_dataset(&spec, sizes, self.seed)
            }
            id => {
                let id: DatasetId = id.parse()?;
                agm_data::load(id, &self.data_path()?, &LoadOptions::default())?
            }
        };
        if let Some(seg) = data.segment_labels.take() {
            data.train = data.train.with_segment_labels(seg.train, seg.segments);
            data.validation = data.validation.with_segment_labels(seg.validation, seg.segments);
            data.test = data.test.with_segment_labels(seg.test, seg.segments);
        }
        self.order_as_model(&mut data)?;
        Ok(data)
    }

    /// Puts `data`'s modalities in the order the run's model reads them, which training logs.
    pub fn order_as_model(&self, data: &mut LoadedDataset) -> Result<()> {
        let model_order = agm_fusion::preset_spec(&self.model, &self.preset_options())?;
        let names: Vec<&str> = model_order.inputs.iter().map(|i| i.modality.as_str()).collect();
        data.reorder_modalities(&names)?;
        Ok(())
    }

    /// The training split as the trainer reads it: CREMA-D's frames get the reference's
    /// train-time random resized crop and flip; every other dataset is read as is.
    pub fn train_source<'a>(&self, data: &'a LoadedDataset) -> Box<dyn agm_core::BatchSource + 'a> {
        match (self.dataset.as_str(), data.modalities.index_of("visual")) {
            ("cremad", Some(visual)) => {
                Box::new(agm_data::augment::RandomResizedCropFlip::new(&data.train, visual, self.seed))
            }
            _ => Box::new(&data.train),
        }
    }

    /// One line per input whose samples differ in shape from the preset's reference shape (the
    /// model is built for the data's shapes, which then is not the paper's experiment).
    pub fn input_shape_notes(&self, data: &LoadedDataset) -> Result<Vec<String>> {
        let reference = agm_fusion::preset_spec(&self.model, &self.preset_options())?;
        Ok(reference
            .inputs
            .iter()
            .enumerate()
            .filter_map(|(m, input)| {
                let shape = data.train.sample_shape(m);
                (shape != input.shape.as_slice()).then(|| {
                    format!(
                        "{} samples are {shape:?}, {}'s reference shape is {:?}; the model is built for the data's",
                        input.modality, self.model, input.shape
                    )
                })
            })
            .collect())
    }

    /// The model preset for `data`: token vocabularies (MOSEI) are sized from the data.
    pub fn build_model(&self, data: &LoadedDataset, device: &Device) -> Result<Box<dyn MultimodalModel>> {
        let shapes = (0..data.modalities.len()).map(|m| data.train.sample_shape(m).to_vec()).collect();
        let mut opts = PresetOptions { input_shapes: Some(shapes), ..self.preset_options() };
        let spec = agm_fusion::preset_spec(&self.model, &opts)?;
        for (m, input) in spec.inputs.iter().enumerate() {
            if input.vocab.is_some() {
                // Ids are 0 (pad) .. max; the embedding needs max + 1 rows, or a row per word
                // vector (the reference sizes it by its vocabulary).
                let max_id = [&data.train, &data.validation, &data.test]
                    .iter()
                    .flat_map(|s| s.modality_data(m).iter())
                    .fold(0f32, |a, &v| a.max(v));
                let vectors = data.word_vectors.as_ref().map_or(0, |w| w.rows);
                opts.vocab_size = (max_id as usize + 1).max(vectors);
            }
        }
        let model = agm_fusion::build_preset(&self.model, &opts, self.seed, DType::F32, device)?;
        let embedding = spec.inputs.iter().find_map(|i| i.embedding);
        if let (Some(name), Some(vectors)) = (embedding, &data.word_vectors) {
            set_word_vectors(model.as_ref(), name, vectors)?;
        }
        Ok(model)
    }

    /// The method (or stack of methods) named by `method`, for this model and data.
    pub fn build_modulator(&self, model: &dyn MultimodalModel, data: &LoadedDataset) -> Result<Box<dyn Modulator>> {
        // Methods with their own heads need the encoders' output sizes: one pass on one sample.
        let device = model.param_groups().trainable().first().map(|v| v.var.device().clone()).unwrap_or(Device::Cpu);
        let probe = data.train.batch(&[0], &device)?;
        let dims = agm_modulation::encoder_feature_dims(model, &probe)?;
        let cx = BuildCx::new(model, self.seed).with_feature_dims(&dims).with_holdout(data.holdout().is_some());
        Ok(registry::build(&self.method, &self.methods, &cx)?)
    }

    /// A trainer for `model` and `modulator` with this config's optimizer and options, holding out
    /// the dataset's `dep` split (the competition regression split) where it has one.
    pub fn trainer<'a>(
        &self,
        model: &'a dyn MultimodalModel,
        modulator: Box<dyn Modulator + 'a>,
        data: &'a LoadedDataset,
        device: &Device,
    ) -> Result<crate::Trainer<'a>> {
        let opts = TrainerOptions { shapley: self.shapley_mode(model), ..self.trainer_options() };
        let mut trainer = crate::Trainer::new(model, modulator, |g| Ok(self.optimizer.build(g)?), opts, device)?;
        if let Some(holdout) = data.holdout() {
            trainer = trainer.with_holdout(holdout);
        }
        if self.reference_protocol && data.id.reference_selects_on_test() {
            trainer = trainer.with_reference_split(&data.test);
        }
        Ok(trainer)
    }

    /// The seeded synthetic dataset of preset `spec`'s input shapes.
    pub fn synthetic_dataset(spec: &agm_fusion::PresetSpec, sizes: [usize; 3], seed: u64) -> LoadedDataset {
        agm_data::synthetic::generate(&SyntheticSpec {
            modalities: spec
                .inputs
                .iter()
                .map(|i| SyntheticModality { name: i.modality.clone(), shape: i.shape.clone(), vocab: i.vocab })
                .collect(),
            classes: spec.classes,
            segments: spec.segments,
            sizes,
            noise: 1.0,
            seed,
        })
    }

    /// Dataset, model and modulator, ready for a [`crate::Trainer`].
    pub fn build(&self, device: &Device) -> Result<Built> {
        let data = self.load_dataset()?;
        let model = self.build_model(&data, device)?;
        if !self.init_weights.is_empty() {
            // Before the method is built: methods may keep a copy of the starting weights.
            crate::load_weights_file(model.as_ref(), Path::new(&self.init_weights))?;
        }
        let modulator = self.build_modulator(model.as_ref(), &data)?;
        Ok(Built { data, model, modulator })
    }
}

/// Copies pretrained word vectors into the model's embedding variable `name`, as the reference
/// copies its GloVe matrix into its embedding.
fn set_word_vectors(model: &dyn MultimodalModel, name: &str, vectors: &agm_data::WordVectors) -> Result<()> {
    let groups = model.param_groups();
    let var = &groups
        .find(name)
        .ok_or_else(|| TrainError::Config(format!("the model has no embedding `{name}` for the word vectors")))?
        .var;
    let [rows, dim] = var.dims() else {
        return Err(TrainError::Config(format!("embedding `{name}` is not a matrix: {:?}", var.dims())));
    };
    if (vectors.rows, vectors.dim) != (*rows, *dim) {
        return Err(TrainError::Config(format!(
            "{}: word vectors of shape [{}, {}], but the model's embedding `{name}` is [{rows}, {dim}]",
            vectors.source.display(),
            vectors.rows,
            vectors.dim
        )));
    }
    let values = Tensor::from_slice(&vectors.values, (vectors.rows, vectors.dim), var.device())?;
    var.set(&values.to_dtype(var.dtype())?)?;
    Ok(())
}

/// A split of a loaded dataset by the AV-Digits split names (`dep` only where the dataset has it).
pub fn dataset_split(data: &LoadedDataset, split: Split) -> Result<&agm_data::SplitTensors> {
    match split {
        Split::Train => Ok(&data.train),
        Split::Validation => Ok(&data.validation),
        Split::Test => Ok(&data.test),
        Split::Dep => data
            .dep
            .as_ref()
            .ok_or_else(|| TrainError::Config(format!("dataset `{}` has no dep split", data.id.as_str()))),
    }
}
