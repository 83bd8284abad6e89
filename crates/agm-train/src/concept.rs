//! Mono-modal concepts and the per-epoch competition-strength probe.
//!
//! The concept of modality m is the output (logits) of the uni-modal model of m: for late
//! fusion, the same encoder with its own linear head ([`LateConcatConfig::only`]), trained
//! with plain joint training (cross-entropy) by the same [`Trainer`] under the dataset's concept
//! settings ([`concept_config`]: never a run's own), and taken at its best validation epoch. Its logits are saved on the `dep`, `validation` and
//! `test` splits, rows in the unshuffled split order.
//!
//! ```text
//! concepts/<dataset>-<preset>/          default folder, relative to the current directory
//!   <modality>.safetensors              F32 tensors `dep`, `validation`, `test`: [rows, classes]
//!   <modality>.json                     ConceptManifest (dataset, preset, seed, epochs, accuracy)
//! ```
//!
//! [`ConceptProbe`] implements [`CompetitionProbe`]: at the end of every epoch it extracts the
//! model's fused feature (evaluation mode, unshuffled) on `dep`, fits one ridge per modality to
//! that modality's concept there, and measures the competition strength on the validation split
//! ([`agm_metric::competition`]).
//!
//! ```no_run
//! use agm_train::concept::{default_dir, train_concepts, ConceptSet};
//! use agm_train::RunConfig;
//! let cfg = RunConfig { epochs: 5, ..RunConfig::av_digits() };
//! let dir = default_dir(&cfg.dataset, &cfg.data_preset);
//! let set = train_concepts(&cfg, None, &dir)?;
//! assert_eq!(ConceptSet::load(&dir)?.unwrap().modalities(), set.modalities());
//! # Ok::<(), agm_train::TrainError>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agm_core::{BatchSource, ForwardOpts, ModalitySet, MultimodalModel};
use agm_data::av_digits::Split;
use agm_fusion::{FusionModel, LateConcatConfig};
use agm_metric::competition::nalgebra::DMatrix;
use agm_metric::competition::{measure, to_matrix, CompetitionStrength, DEFAULT_RIDGE_ALPHA};
use agm_modulation::Joint;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{serialize_sorted, write_atomic};
use crate::error::{Result, TrainError};
use crate::resolve::RunRequest;
use crate::{evaluate, Callback, Checkpoint, CompetitionProbe, NoCallback, RunConfig, RunDir, Trainer};

/// Format tag of a concept manifest and of its tensors file's metadata.
pub const CONCEPT_FORMAT: &str = "agm-concept-v1";

/// The splits a concept is saved on, in file order.
pub const CONCEPT_SPLITS: [Split; 3] = [Split::Dep, Split::Validation, Split::Test];

/// Batch size of the evaluation-mode passes (features, logits).
const EVAL_BATCH: usize = 256;

/// `concepts/<dataset>-<preset>` (relative to the current directory); characters other than
/// letters, digits, `.`, `_` and `-` in the preset become `_`.
pub fn default_dir(dataset: &str, preset: &str) -> PathBuf {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect()
    };
    PathBuf::from("concepts").join(format!("{}-{}", clean(dataset), clean(preset)))
}

/// The seed concepts train with unless `cargo xtask concept --seed` says otherwise.
pub const CONCEPT_SEED: u64 = 0;

/// What every concept training of `dataset` starts from: the dataset's reference settings with
/// joint training and [`CONCEPT_SEED`]. `cargo xtask concept` puts its flags on top.
pub fn concept_request(dataset: &str) -> RunRequest {
    RunRequest::default().set("--dataset", "dataset", dataset).set("(concepts train jointly)", "method", "joint").set(
        "(the concepts' seed)",
        "seed",
        CONCEPT_SEED as i64,
    )
}

/// The settings the concepts of `run`'s dataset, data preset and data folder train with when
/// nothing else is asked for: those of `cargo xtask concept` without `--seed` or `--epochs`.
/// A run that trains its missing concepts uses these, never its own settings, so a concepts
/// folder shared by many runs holds the same concepts whichever run filled it.
pub fn concept_config(run: &RunConfig) -> Result<RunConfig> {
    let request = concept_request(&run.dataset)
        .set("(the run's data preset)", "data_preset", run.data_preset.clone())
        .set("(the run's data folder)", "data", run.data.clone());
    Ok(request.resolve()?.config)
}

/// Refuses to train concepts into `out` when a file stands where it (or a folder above it) must
/// go, or when it holds anything but concepts: a run directory
/// (its `summary.json` would be read as a manifest), or files that are not a concept's
/// `<modality>.json` or `<modality>.safetensors`. Hidden entries (the scratch runs
/// `.<modality>-run`) and the temporaries (`*.tmp`) of a writer that was killed are ignored.
pub fn check_concept_folder(out: &Path) -> Result<()> {
    if let Some(e) = crate::run_dir::file_in_the_way(out, "concepts folder") {
        return Err(e);
    }
    let Ok(entries) = std::fs::read_dir(out) else { return Ok(()) };
    let run = RunDir::open(out)?;
    let own = "give the concepts a folder of their own (default concepts/<dataset>-<preset>)";
    if run.holds_run_state() {
        return Err(TrainError::Config(format!(
            "{} is a run directory (it holds {}), not a concepts folder; {own}",
            out.display(),
            run.config().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        )));
    }
    let mut others: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let concept_file =
                e.path().is_file() && [".json", ".safetensors", ".tmp"].iter().any(|x| name.ends_with(x));
            (!name.starts_with('.') && !concept_file).then_some(name)
        })
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    others.sort();
    Err(TrainError::Config(format!(
        "{} holds files that are not concepts ({}); {own}",
        out.display(),
        others.join(", ")
    )))
}

/// What was trained, written next to the tensors as `<modality>.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConceptManifest {
    /// [`CONCEPT_FORMAT`].
    pub format: String,
    /// The dataset id the concept was trained on (`av-digits`).
    pub dataset: String,
    /// The dataset preset (AV-Digits noise preset) the concept was trained on.
    pub preset: String,
    /// The multimodal model preset whose encoder the uni-modal model shares.
    pub model: String,
    /// The modality whose uni-modal model produced the concept.
    pub modality: String,
    /// The uni-modal training's seed (initialisation, data order, dropout).
    pub seed: u64,
    /// Epochs the uni-modal model trained (all of its configured epochs: a training stopped
    /// early writes no concept).
    pub epochs: usize,
    /// The epoch whose weights produced the saved logits (best validation accuracy).
    pub best_epoch: usize,
    /// Columns of the concept (classes: the concept is the uni-modal logits).
    pub dim: usize,
    /// Rows per split name.
    pub rows: BTreeMap<String, usize>,
    /// Uni-modal accuracy of the saved weights.
    pub validation_accuracy: f64,
    /// Uni-modal accuracy of the saved weights on the test split, in [0, 1].
    pub test_accuracy: f64,
    /// The tensors file, relative to the manifest's folder.
    pub tensors: String,
}

/// One modality's concept, loaded and checked against its manifest.
#[derive(Clone, Debug)]
pub struct Concept {
    manifest: ConceptManifest,
    path: PathBuf,
    splits: HashMap<Split, Tensor>,
}

impl Concept {
    /// What was trained, as read from `<modality>.json`.
    pub fn manifest(&self) -> &ConceptManifest {
        &self.manifest
    }

    /// The modality the concept belongs to (the manifest's `modality`).
    pub fn modality(&self) -> &str {
        &self.manifest.modality
    }

    /// The tensors file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `[rows, dim]` F32 logits of a split, rows in the unshuffled split order.
    pub fn split(&self, split: Split) -> Option<&Tensor> {
        self.splits.get(&split)
    }

    fn split_or_err(&self, split: Split) -> Result<&Tensor> {
        self.split(split).ok_or_else(|| file_error(&self.path, format!("holds no `{}` split", split.name())))
    }
}

/// The concepts of one folder, in modality-name order.
#[derive(Clone, Debug)]
pub struct ConceptSet {
    dir: PathBuf,
    concepts: Vec<Concept>,
}

/// An error about one concept file: `<path>: <message>`, printed once. (`TrainError::Io` would
/// print an io::Error message twice under anyhow's `{:#}`, as Display and as source.)
fn file_error(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::Tensor(candle_core::Error::Msg(format!("{}: {}", path.display(), message.into())))
}

/// A concept file that is damaged or not one: the fix is to train the concept again.
fn corrupt(path: &Path, problem: impl std::fmt::Display) -> TrainError {
    file_error(path, format!("{problem}; re-create it with `cargo xtask concept` or pass another --concepts folder"))
}

impl ConceptSet {
    /// Reads every `<modality>.json` manifest of `dir` and its tensors file. `Ok(None)` when the
    /// folder does not exist or holds no manifest; an error naming the file when a manifest is
    /// corrupt, its tensors file is missing, or a split's shape disagrees with the manifest.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        if !dir.is_dir() {
            return Ok(None);
        }
        let mut manifests: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| TrainError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
            .collect();
        manifests.sort();
        let mut concepts = Vec::new();
        for path in manifests {
            concepts.push(Self::load_one(dir, &path)?);
        }
        if concepts.is_empty() {
            return Ok(None);
        }
        concepts.sort_by(|a, b| a.modality().cmp(b.modality()));
        if let Some(w) = concepts.windows(2).find(|w| w[0].modality() == w[1].modality()) {
            return Err(file_error(dir, format!("two manifests describe modality `{}`", w[0].modality())));
        }
        Ok(Some(Self { dir: dir.to_path_buf(), concepts }))
    }

    /// [`ConceptSet::load`] of `dir`, checking that every concept was trained on `cfg`'s dataset
    /// and preset (an error naming the manifest otherwise).
    pub fn load_for(cfg: &RunConfig, dir: &Path) -> Result<Option<Self>> {
        let Some(set) = Self::load(dir)? else { return Ok(None) };
        for c in &set.concepts {
            let m = &c.manifest;
            if m.dataset != cfg.dataset || m.preset != cfg.data_preset {
                return Err(file_error(
                    &set.dir.join(format!("{}.json", m.modality)),
                    format!(
                        "this concept was trained on {} ({}), the run uses {} ({}); use another concepts folder",
                        m.dataset, m.preset, cfg.dataset, cfg.data_preset
                    ),
                ));
            }
        }
        Ok(Some(set))
    }

    fn load_one(dir: &Path, path: &Path) -> Result<Concept> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let manifest: ConceptManifest =
            serde_json::from_str(&text).map_err(|e| corrupt(path, format!("not a concept manifest ({e})")))?;
        if manifest.format != CONCEPT_FORMAT {
            return Err(corrupt(path, format!("format `{}` is not `{CONCEPT_FORMAT}`", manifest.format)));
        }
        let tensors_path = dir.join(&manifest.tensors);
        if !tensors_path.is_file() {
            return Err(file_error(
                &tensors_path,
                format!(
                    "not found (the tensors of the `{}` concept, named by {}); re-create them with `cargo xtask \
                     concept --modality {}`",
                    manifest.modality,
                    path.display(),
                    manifest.modality
                ),
            ));
        }
        let bytes = std::fs::read(&tensors_path).map_err(|e| TrainError::io(&tensors_path, e))?;
        crate::checkpoint::verify_checksum(&bytes).map_err(|e| corrupt(&tensors_path, e))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| corrupt(&tensors_path, format!("not a readable safetensors file ({e})")))?;
        let mut splits = HashMap::new();
        for (name, &rows) in &manifest.rows {
            let split: Split =
                name.parse().map_err(|e| corrupt(path, format!("rows: `{name}` is not a split ({e})")))?;
            let t = tensors.get(name).ok_or_else(|| corrupt(&tensors_path, format!("split `{name}` is missing")))?;
            if t.dims() != [rows, manifest.dim] {
                return Err(corrupt(
                    &tensors_path,
                    format!("split `{name}` has shape {:?}, the manifest says [{rows}, {}]", t.dims(), manifest.dim),
                ));
            }
            splits.insert(split, t.clone());
        }
        Ok(Concept { manifest, path: tensors_path, splits })
    }

    /// The folder the concepts were loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every concept of the folder, sorted by modality name.
    pub fn concepts(&self) -> &[Concept] {
        &self.concepts
    }

    /// Modality names, sorted.
    pub fn modalities(&self) -> Vec<String> {
        self.concepts.iter().map(|c| c.modality().to_string()).collect()
    }

    /// The concept of `modality`, if the folder has one.
    pub fn get(&self, modality: &str) -> Option<&Concept> {
        self.concepts.iter().find(|c| c.modality() == modality)
    }

    /// The modalities of `set` that have no concept here.
    pub fn missing(&self, set: &ModalitySet) -> Vec<String> {
        set.names().iter().filter(|m| self.get(m).is_none()).cloned().collect()
    }

    /// Whether every modality of `set` has a concept here.
    pub fn covers(&self, set: &ModalitySet) -> bool {
        self.missing(set).is_empty()
    }
}

/// The modalities a `--modality` value selects: all of the dataset's when `None`, else a
/// comma-separated list of names, each checked.
pub fn concept_modalities(set: &ModalitySet, spec: Option<&str>) -> Result<Vec<String>> {
    let Some(spec) = spec else { return Ok(set.names().to_vec()) };
    let mut out = Vec::new();
    for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if set.index_of(name).is_none() {
            return Err(TrainError::Config(format!(
                "modality `{name}` is not one of the dataset's: {}",
                set.names().join(", ")
            )));
        }
        if !out.iter().any(|m| m == name) {
            out.push(name.to_string());
        }
    }
    if out.is_empty() {
        return Err(TrainError::Config(format!("no modality given; allowed: {}", set.names().join(", "))));
    }
    Ok(out)
}

/// The model whose encoders `dataset`'s uni-modal concept models take (the encoders every model
/// preset of the dataset shares); an error for a dataset without concept models.
fn concept_encoders(dataset: &str) -> Result<LateConcatConfig> {
    match dataset {
        // Every `av-digits-*` fusion builds these encoders.
        "av-digits" => Ok(LateConcatConfig::av_digits()),
        other => {
            // A misspelt id is named as one, not as a dataset without concepts.
            crate::config::one_of("dataset", other, crate::config::DATASETS)?;
            Err(TrainError::Config(format!(
                "mono-modal concepts are trained for av-digits only in this version; dataset `{other}` has no \
                 uni-modal concept model yet (its runs train without the competition-strength metric)"
            )))
        }
    }
}

/// An error unless `dataset` has uni-modal concept models; the check [`train_concept`] makes
/// first, for a caller to make before it starts anything.
pub fn check_concept_dataset(dataset: &str) -> Result<()> {
    concept_encoders(dataset).map(drop)
}

/// The uni-modal model of `modality` for `cfg`'s dataset: the encoder every model preset of the
/// dataset shares, with a linear head.
fn unimodal_config(cfg: &RunConfig, modality: &str) -> Result<LateConcatConfig> {
    concept_encoders(&cfg.dataset)?
        .only(modality)
        .ok_or_else(|| TrainError::Config(format!("model `{}` has no encoder for modality `{modality}`", cfg.model)))
}

/// `[N, ·]` rows of `f(batch)` over every sample of `data`, in order, as one CPU tensor.
fn collect_rows(
    data: &dyn BatchSource,
    device: &Device,
    mut f: impl FnMut(&[Tensor]) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let indices: Vec<usize> = (0..data.len()).collect();
    let mut parts = Vec::new();
    for chunk in indices.chunks(EVAL_BATCH) {
        let batch = data.batch(chunk, device)?;
        parts.push(f(&batch.inputs)?.detach().to_device(&Device::Cpu)?);
    }
    if parts.is_empty() {
        candle_core::bail!("the split is empty");
    }
    Tensor::cat(&parts, 0)
}

/// The model's fused feature on every sample of `data` (evaluation mode, all modalities
/// present, unshuffled): `[N, F]` on the CPU, in the model's dtype.
pub fn fused_features(
    model: &dyn MultimodalModel,
    data: &dyn BatchSource,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let opts = ForwardOpts::eval(model.modalities().len());
    collect_rows(data, device, |inputs| Ok(model.forward(inputs, &opts)?.fused_feature))
}

/// The model's logits on every sample of `data` (evaluation mode, unshuffled): `[N, C]` on the
/// CPU, in the model's dtype.
pub fn logits(model: &dyn MultimodalModel, data: &dyn BatchSource, device: &Device) -> candle_core::Result<Tensor> {
    let opts = ForwardOpts::eval(model.modalities().len());
    collect_rows(data, device, |inputs| Ok(model.forward(inputs, &opts)?.logits))
}

/// Trains the uni-modal model of `modality` on `cfg`'s dataset (joint training, `cfg`'s seed,
/// epochs, batch size and optimizer), keeps its best validation epoch, and writes
/// `<modality>.safetensors` and `<modality>.json` into `out` (atomically, the manifest last).
/// `callback` sees the uni-modal training as it goes; when it stops the training before the last
/// epoch, nothing is written and the error is [`TrainError::Interrupted`]. The scratch run
/// directory (`.<modality>-run`, left by a process that was killed) is removed however it ends.
pub fn train_concept(
    cfg: &RunConfig,
    modality: &str,
    out: &Path,
    callback: &mut dyn Callback,
) -> Result<ConceptManifest> {
    cfg.validate()?;
    check_concept_dataset(&cfg.dataset)?;
    check_concept_folder(out)?;
    let scratch = out.join(format!(".{modality}-run"));
    let result = train_concept_in(cfg, modality, out, &scratch, callback);
    if result.is_err() && scratch.exists() {
        // Best effort: the error being reported matters more than a failed cleanup.
        let _ = std::fs::remove_dir_all(&scratch);
    }
    result
}

/// [`train_concept`], its uni-modal run kept in `scratch`.
fn train_concept_in(
    cfg: &RunConfig,
    modality: &str,
    out: &Path,
    scratch: &Path,
    callback: &mut dyn Callback,
) -> Result<ConceptManifest> {
    let device = cfg.device()?;
    let data = cfg.load_av_digits()?;
    concept_modalities(data.modalities(), Some(modality))?;
    let index = data.modalities().index_of(modality).expect("checked above");
    let model = FusionModel::late_concat(&unimodal_config(cfg, modality)?, cfg.seed, DType::F32, &device)?;
    let only = |split: Split| data.split(split).only_modality(index);
    let (train, validation) = (only(Split::Train), only(Split::Validation));

    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    // The uni-modal run keeps its best weights in a scratch run directory inside `out`.
    if scratch.exists() {
        std::fs::remove_dir_all(scratch).map_err(|e| TrainError::io(scratch, e))?;
    }
    let run_dir = RunDir::create(scratch)?;
    let summary = {
        let mut trainer = Trainer::new(
            &model,
            Box::new(Joint::new()),
            |g| Ok(cfg.optimizer.build(g)?),
            cfg.trainer_options(),
            &device,
        )?
        .with_run_dir(run_dir.clone());
        trainer.fit(&train, &validation, callback)?
    };
    // A concept is its best epoch of a complete training: one stopped early is not kept.
    if summary.epochs_done < cfg.epochs {
        return Err(TrainError::Interrupted(format!(
            "the training of the `{modality}` concept was stopped in epoch {} of {}; nothing of it was written",
            summary.epochs_done + 1,
            cfg.epochs
        )));
    }
    let best = Checkpoint::load(&run_dir.best(), &device)?;
    let weights: HashMap<String, Tensor> = best.model.into_iter().filter(|(k, _)| !k.starts_with("method.")).collect();
    model.load(&weights)?;
    let validation_report = evaluate(&model, &validation, EVAL_BATCH, &device)?;
    let test_report = evaluate(&model, &only(Split::Test), EVAL_BATCH, &device)?;

    let mut named = Vec::new();
    let mut rows = BTreeMap::new();
    for split in CONCEPT_SPLITS {
        let t = logits(&model, &only(split), &device)?.to_dtype(DType::F32)?.contiguous()?;
        rows.insert(split.name().to_string(), t.dim(0)?);
        named.push((split.name().to_string(), t));
    }
    let manifest = ConceptManifest {
        format: CONCEPT_FORMAT.into(),
        dataset: cfg.dataset.clone(),
        preset: cfg.data_preset.clone(),
        model: cfg.model.clone(),
        modality: modality.to_string(),
        seed: cfg.seed,
        epochs: summary.epochs_done,
        best_epoch: summary.best_epoch,
        dim: model.num_classes(),
        rows,
        validation_accuracy: validation_report.accuracy,
        test_accuracy: test_report.accuracy,
        tensors: format!("{modality}.safetensors"),
    };
    let manifest_json = serde_json::to_string_pretty(&manifest).expect("plain data");
    let tensors_path = out.join(&manifest.tensors);
    let meta = HashMap::from([
        ("format".to_string(), CONCEPT_FORMAT.to_string()),
        ("manifest".to_string(), manifest_json.clone()),
    ]);
    let bytes = serialize_sorted(named.iter().map(|(k, v)| (k.as_str(), v)), meta)
        .map_err(|e| file_error(&tensors_path, format!("cannot serialize: {e}")))?;
    write_atomic(&tensors_path, &bytes)?;
    write_atomic(&out.join(format!("{modality}.json")), manifest_json.as_bytes())?;
    std::fs::remove_dir_all(scratch).map_err(|e| TrainError::io(scratch, e))?;
    Ok(manifest)
}

/// Trains the concepts of `modalities` (a comma-separated list; all of the dataset's when
/// `None`) into `out` and loads the folder back.
pub fn train_concepts(cfg: &RunConfig, modalities: Option<&str>, out: &Path) -> Result<ConceptSet> {
    let data = cfg.load_av_digits()?;
    for m in concept_modalities(data.modalities(), modalities)? {
        train_concept(cfg, &m, out, &mut NoCallback)?;
    }
    ConceptSet::load(out)?.ok_or_else(|| file_error(out, "no concept was written"))
}

/// The competition strengths of every epoch a [`ConceptProbe`] measured, shared with whoever
/// holds a clone (the trainer owns the probe itself).
pub type StrengthLog = Arc<Mutex<Vec<Vec<CompetitionStrength>>>>;

/// Measures each modality's competition strength at the end of an epoch: ridge from the fused
/// feature to the concept, fitted on the fit split (`dep`), measured on the evaluation split
/// (validation by default). [`CompetitionProbe::strength`] returns `r_official` per modality
/// (the reference's value); [`ConceptProbe::log`] keeps both values of every epoch.
pub struct ConceptProbe<'a> {
    names: Vec<String>,
    fit: &'a dyn BatchSource,
    eval: &'a dyn BatchSource,
    fit_concepts: Vec<DMatrix<f64>>,
    eval_concepts: Vec<DMatrix<f64>>,
    alpha: f64,
    log: StrengthLog,
}

impl<'a> ConceptProbe<'a> {
    /// A probe fitting on `dep` and measuring on `validation` (the samples of those splits,
    /// in split order), for every modality of `modalities`. Errors name the concept file when a
    /// concept is missing a split or its rows do not match the split.
    pub fn new(
        set: &ConceptSet,
        modalities: &ModalitySet,
        dep: &'a dyn BatchSource,
        validation: &'a dyn BatchSource,
    ) -> Result<Self> {
        Self::on_splits(set, modalities, (Split::Dep, dep), (Split::Validation, validation))
    }

    /// Like [`ConceptProbe::new`] with chosen fit and evaluation splits (e.g. test at the end).
    pub fn on_splits(
        set: &ConceptSet,
        modalities: &ModalitySet,
        fit: (Split, &'a dyn BatchSource),
        eval: (Split, &'a dyn BatchSource),
    ) -> Result<Self> {
        let missing = set.missing(modalities);
        if !missing.is_empty() {
            return Err(file_error(
                set.dir(),
                format!(
                    "no concept for {}; create it with `cargo xtask concept --modality {}`",
                    missing.join(", "),
                    missing.join(",")
                ),
            ));
        }
        let mut fit_concepts = Vec::new();
        let mut eval_concepts = Vec::new();
        for name in modalities.names() {
            let c = set.get(name).expect("covered");
            for ((split, data), store) in [(fit, &mut fit_concepts), (eval, &mut eval_concepts)] {
                let t = c.split_or_err(split)?;
                if t.dim(0)? != data.len() {
                    return Err(file_error(
                        c.path(),
                        format!(
                            "split `{}` has {} rows but the data split has {} samples; re-create the concept",
                            split.name(),
                            t.dim(0)?,
                            data.len()
                        ),
                    ));
                }
                store.push(to_matrix(t, &format!("{} `{}`", c.path().display(), split.name()))?);
            }
        }
        Ok(Self {
            names: modalities.names().to_vec(),
            fit: fit.1,
            eval: eval.1,
            fit_concepts,
            eval_concepts,
            alpha: DEFAULT_RIDGE_ALPHA,
            log: StrengthLog::default(),
        })
    }

    /// Another ridge penalty (default 120).
    pub fn with_alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// Every epoch's measurements so far (shared: clone it before handing the probe over).
    pub fn log(&self) -> StrengthLog {
        Arc::clone(&self.log)
    }

    /// Measures the current `model` once, without logging.
    pub fn measure(
        &self,
        model: &dyn MultimodalModel,
        device: &Device,
    ) -> candle_core::Result<Vec<CompetitionStrength>> {
        if model.modalities().names() != self.names.as_slice() {
            candle_core::bail!(
                "the probe's concepts are for modalities {:?}, the model has {:?}",
                self.names,
                model.modalities().names()
            );
        }
        let z_fit = to_matrix(&fused_features(model, self.fit, device)?, "fit-split fused features")?;
        let z_eval = to_matrix(&fused_features(model, self.eval, device)?, "evaluation-split fused features")?;
        let mut out = Vec::with_capacity(self.names.len());
        for (i, name) in self.names.iter().enumerate() {
            let m = measure(name, &z_fit, &self.fit_concepts[i], &z_eval, &self.eval_concepts[i], self.alpha)?;
            out.push(m.strength);
        }
        Ok(out)
    }
}

impl CompetitionProbe for ConceptProbe<'_> {
    fn strength(&mut self, model: &dyn MultimodalModel, device: &Device) -> candle_core::Result<Vec<f64>> {
        let measured = self.measure(model, device)?;
        let values = measured.iter().map(|s| s.r_official).collect();
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(measured);
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_is_relative_and_clean() {
        assert_eq!(default_dir("av-digits", "audio-dominant"), PathBuf::from("concepts/av-digits-audio-dominant"));
        assert_eq!(default_dir("av-digits", "custom:1,0.5"), PathBuf::from("concepts/av-digits-custom_1_0.5"));
    }

    #[test]
    fn modality_lists_are_checked() {
        let set = ModalitySet::new(["audio", "visual"]);
        assert_eq!(concept_modalities(&set, None).unwrap(), ["audio", "visual"]);
        assert_eq!(concept_modalities(&set, Some("visual, audio,visual")).unwrap(), ["visual", "audio"]);
        let err = concept_modalities(&set, Some("text")).unwrap_err().to_string();
        assert!(err.contains("text") && err.contains("audio, visual"), "{err}");
        assert!(concept_modalities(&set, Some(" , ")).is_err());
    }
}
