//! Twin models: every paper preset against the official model class it reproduces, on the same
//! weights and inputs (fixtures written by `scripts/golden/twin_models.py` from the official code,
//! in float64). Strict loading checks the names and shapes; the passes check the function: logits,
//! the cross-entropy, every parameter's gradient, and in training mode the running statistics.
//! Then training steps of paper models against the official training loops: AGM on AV-MNIST's,
//! CREMA-D's and UR-Funny's late-fusion models, AV-MNIST's, CREMA-D's and UR-Funny's
//! early-fusion models, MOSEI's MAT and AVE's PSP net (`scripts/golden/agm_train_steps.py
//! --network official`, `--fusion early` for early fusion; UR-Funny's, the early-fusion ones,
//! MOSEI's and AVE's in training mode with dropout, the official run drawing agm's masks;
//! MOSEI's with the loss summed over the batch; AVE's labelled per segment, with its AVPS loss),
//! OGM-GE on AV-MNIST's early-fusion model (`--method ogm-ge --fusion early`), OGM-GE and MSLR on
//! CREMA-D's summed-heads model (`scripts/golden/late_sum_twin_steps.py`). Last, whole runs of
//! MSES and MSLR on AV-MNIST's summed-heads model against the official epoch loop, reloads
//! included (`scripts/golden/late_sum_twin_run.py`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use agm_core::{ForwardOpts, MultimodalBatch, MultimodalModel, ShapleyMode};
use agm_fusion::{build_preset, PresetOptions};
use agm_modulation::{
    Agm, AgmConfig, MethodSettings, Modulator, Mses, MsesConfig, Mslr, MslrConfig, Objective, OgmGe, OgmGeConfig,
    StepForward,
};
use agm_train::optim::{ParamGroup, Sgd, SgdConfig};
use agm_train::step::{LossReduction, StepObserver};
use agm_train::{train_step, StepOutcome, StepParts};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

/// Relative agreement asked of every comparison: float64 on both sides, in different orders.
const TOLERANCE: f64 = 1e-9;

#[derive(Deserialize)]
struct Case {
    preset: String,
    batch: usize,
    inputs: Vec<InputRecipe>,
    labels: Vec<u32>,
    tensors: Vec<TensorRecipe>,
    passes: Vec<Pass>,
}

#[derive(Deserialize)]
struct TensorRecipe {
    name: String,
    shape: Vec<usize>,
    #[serde(default)]
    zero: bool,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    offset: f64,
    #[serde(default)]
    shift: i32,
}

/// One input batch: formula values, or token ids in 1..vocab, with the last `zero_tail[b]`
/// positions of sample b zero (padding).
#[derive(Deserialize)]
struct InputRecipe {
    shape: Vec<usize>,
    seed: u64,
    vocab: Option<u64>,
    #[serde(default)]
    zero_tail: Vec<usize>,
}

#[derive(Deserialize)]
struct Pass {
    train: bool,
    logits: Vec<Vec<f64>>,
    loss: f64,
    grads: HashMap<String, Summary>,
    no_grad: Vec<String>,
    #[serde(default)]
    buffers_after: HashMap<String, Summary>,
    #[serde(default)]
    eval_logits_after: Option<Vec<Vec<f64>>>,
}

/// A tensor in brief: its sum, its sum of squares and a few `(flat index, value)` entries.
#[derive(Deserialize)]
struct Summary {
    sum: f64,
    sumsq: f64,
    at: Vec<(usize, f64)>,
}

/// The fixtures' hash of element `i` (the generator's docstring).
fn mixed(i: u64, seed: u64) -> u64 {
    const MASK: u64 = 0xFFFF_FFFF;
    let mut h = (i + seed * 0x9E37_79B9) & MASK;
    for _ in 0..2 {
        h ^= h >> 16;
        h = (h * 0x045D_9F3B) & MASK;
    }
    h ^ (h >> 16)
}

/// The fixtures' values: exact in float64.
fn formula(numel: usize, seed: u64, offset: f64, shift: i32) -> Vec<f64> {
    (0..numel as u64).map(|i| offset + ((mixed(i, seed) & 2047) as f64 - 1024.0) / 1024.0 * 2f64.powi(-shift)).collect()
}

fn input(recipe: &InputRecipe, batch: usize, dev: &Device) -> Tensor {
    let per_sample: usize = recipe.shape.iter().product();
    let n = batch * per_sample;
    let mut values = match recipe.vocab {
        Some(vocab) => (0..n as u64).map(|i| (1 + mixed(i, recipe.seed) % (vocab - 1)) as f64).collect(),
        None => formula(n, recipe.seed, 0.0, 0),
    };
    let position: usize = recipe.shape[1..].iter().product();
    for (b, &zeros) in recipe.zero_tail.iter().enumerate() {
        let end = (b + 1) * per_sample;
        values[end - zeros * position..end].fill(0.0);
    }
    let mut dims = vec![batch];
    dims.extend(&recipe.shape);
    Tensor::from_vec(values, dims, dev).unwrap()
}

/// Sets every variable from the fixture's recipes; strict: every official key is one of the
/// preset's variables, of the same shape, and back.
fn load_formula_weights(model: &dyn MultimodalModel, recipes: &[TensorRecipe], preset: &str) {
    let state: HashMap<String, Tensor> = recipes
        .iter()
        .map(|t| {
            let n = t.shape.iter().product();
            let values = if t.zero { vec![0.0; n] } else { formula(n, t.seed, t.offset, t.shift) };
            (t.name.clone(), Tensor::from_vec(values, t.shape.as_slice(), &Device::Cpu).unwrap())
        })
        .collect();
    agm_train::load_weights(model, &state).unwrap_or_else(|e| panic!("{preset}: {e}"));
}

fn fixture(preset: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/twins").join(format!("{preset}.json"))
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

/// The worst error seen per kind of comparison, each relative to its own scale, and the
/// comparisons that failed.
#[derive(Default)]
struct Worst {
    per_kind: BTreeMap<&'static str, (f64, String)>,
    failures: Vec<String>,
}

impl Worst {
    /// Prints the worst error of each kind and fails listing every comparison that failed.
    #[allow(clippy::print_stdout)] // shown with --nocapture
    fn finish(self) {
        for (kind, (err, what)) in &self.per_kind {
            println!("worst {kind}: {err:.2e} ({what})");
        }
        let shown: Vec<&String> = self.failures.iter().take(40).collect();
        assert!(self.failures.is_empty(), "{} comparisons failed:\n{shown:#?}", self.failures.len());
    }

    /// A decision that must agree (counted with the failed comparisons, so a mutation's report
    /// lists them all).
    fn require(&mut self, ok: bool, what: impl Fn() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }

    fn check(&mut self, kind: &'static str, what: impl Fn() -> String, ours: f64, theirs: f64, scale: f64) {
        // Equal values agree at any scale (a coefficient that underflowed to 0 on both sides).
        let err = if ours == theirs { 0.0 } else { (ours - theirs).abs() / scale };
        if err.is_nan() || err > TOLERANCE {
            self.failures
                .push(format!("{}: agm {ours:e}, official {theirs:e} (error {err:.1e} of {scale:.1e})", what()));
        }
        let entry = self.per_kind.entry(kind).or_insert((0.0, String::new()));
        if err > entry.0 {
            *entry = (err, what());
        }
    }
}

fn check_logits(worst: &mut Worst, ours: &Tensor, theirs: &[Vec<f64>], what: &str) {
    let theirs: Vec<f64> = theirs.iter().flatten().copied().collect();
    let ours = flat(ours);
    assert_eq!(ours.len(), theirs.len(), "{what}: logits count");
    let scale = theirs.iter().fold(1f64, |m, x| m.max(x.abs()));
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        worst.check("logits", || format!("{what} logit {i}"), *a, *b, scale);
    }
}

/// Sums, sums of squares and entries, each relative to the tensor's root mean square (or a
/// millionth of the largest one, for gradients that are zero in exact arithmetic).
fn check_summary(worst: &mut Worst, kind: &'static str, ours: &Tensor, theirs: &Summary, floor: f64, what: &str) {
    let v = flat(ours);
    let n = v.len() as f64;
    let rms = (theirs.sumsq / n).sqrt().max(floor);
    worst.check(kind, || format!("{what}: sum"), v.iter().sum(), theirs.sum, n * rms);
    worst.check(kind, || format!("{what}: sum of squares"), v.iter().map(|x| x * x).sum(), theirs.sumsq, n * rms * rms);
    for &(i, x) in &theirs.at {
        worst.check(kind, || format!("{what}[{i}]"), v[i], x, rms);
    }
}

fn largest_rms(summaries: &HashMap<String, Summary>, vars: &HashMap<String, Tensor>) -> f64 {
    summaries.iter().map(|(k, s)| (s.sumsq / vars[k].elem_count() as f64).sqrt()).fold(0.0, f64::max)
}

fn run_case(preset: &str, worst: &mut Worst) {
    let path = fixture(preset);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let case: Case = serde_json::from_str(&text).unwrap();
    assert_eq!(case.preset, preset, "{}", path.display());
    let dev = Device::Cpu;
    let shapes = case.inputs.iter().map(|i| i.shape.clone()).collect();
    let opts = PresetOptions { input_shapes: Some(shapes), ..PresetOptions::default() };
    let model: Box<dyn MultimodalModel> = build_preset(&case.preset, &opts, 0, DType::F64, &dev).unwrap();

    load_formula_weights(model.as_ref(), &case.tensors, &case.preset);

    let inputs: Vec<Tensor> = case.inputs.iter().map(|i| input(i, case.batch, &dev)).collect();
    let labels = Tensor::new(case.labels.as_slice(), &dev).unwrap();
    let m = inputs.len();
    let groups = model.param_groups();
    let vars: HashMap<String, Tensor> =
        groups.all_sorted().into_iter().map(|v| (v.name, v.var.as_tensor().clone())).collect();

    for pass in &case.passes {
        let mode = if pass.train { "train" } else { "eval" };
        let what = format!("{} ({mode})", case.preset);
        let opts = if pass.train { ForwardOpts::train(m, 0) } else { ForwardOpts::eval(m) };
        let out = model.forward(&inputs, &opts).unwrap();
        check_logits(worst, &out.logits, &pass.logits, &what);
        let loss = candle_nn::loss::cross_entropy(&out.logits, &labels).unwrap();
        worst.check("loss", || format!("{what} loss"), loss.to_scalar::<f64>().unwrap(), pass.loss, pass.loss.abs());
        let grads = loss.backward().unwrap();
        let trainable = groups.trainable();
        assert_eq!(trainable.len(), pass.grads.len() + pass.no_grad.len(), "{what}: parameter count");
        let floor = 1e-6 * largest_rms(&pass.grads, &vars);
        for v in &trainable {
            let ours = grads.get(v.var.as_tensor());
            match pass.grads.get(&v.name) {
                Some(theirs) => {
                    let ours = ours.unwrap_or_else(|| panic!("{what}: {} has no gradient", v.name));
                    check_summary(worst, "gradients", ours, theirs, floor, &format!("{what} grad {}", v.name));
                }
                // Outside the logits' graph in PyTorch (AVE's auxiliary heads): none here either.
                None => {
                    assert!(pass.no_grad.contains(&v.name), "{what}: {} is not in the fixture", v.name);
                    let zero = ours.is_none_or(|g| flat(g).iter().all(|x| *x == 0.0));
                    assert!(zero, "{what}: {} has a gradient, PyTorch's has none", v.name);
                }
            }
        }
        for (name, theirs) in &pass.buffers_after {
            let ours = vars.get(name).unwrap_or_else(|| panic!("{what}: no buffer {name}"));
            check_summary(worst, "buffers", ours, theirs, 0.0, &format!("{what} buffer {name}"));
        }
        if let Some(after) = &pass.eval_logits_after {
            let out = model.forward(&inputs, &ForwardOpts::eval(m)).unwrap();
            check_logits(worst, &out.logits, after, &format!("{what}, then eval"));
        }
    }
}

/// Runs the presets' cases one after another (a UR-Funny preset holds about a gigabyte in
/// float64), prints the worst error of each kind and fails listing every comparison that failed.
fn check_presets(presets: &[&str]) {
    let mut worst = Worst::default();
    for preset in presets {
        run_case(preset, &mut worst);
    }
    worst.finish();
}

#[test]
fn avmnist_presets_compute_what_their_official_classes_compute() {
    check_presets(&["avmnist-late", "avmnist-late-sum", "avmnist-early", "avmnist-uni-audio", "avmnist-uni-visual"]);
}

#[test]
fn cremad_presets_compute_what_their_official_classes_compute() {
    check_presets(&["cremad-late", "cremad-late-sum", "cremad-early", "cremad-uni-audio", "cremad-uni-visual"]);
}

#[test]
fn urfunny_presets_compute_what_their_official_classes_compute() {
    check_presets(&[
        "urfunny-late",
        "urfunny-late-sum",
        "urfunny-early",
        "urfunny-uni-audio",
        "urfunny-uni-visual",
        "urfunny-uni-text",
    ]);
}

/// AVE's PSP net is compared on its logits (its cross-attention output, which the reference's
/// AVE loss also reads, is not); MOSEI's inputs end in padding, which the model masks.
#[test]
fn ave_and_mosei_nets_compute_what_their_official_classes_compute() {
    check_presets(&["ave-psp", "mosei-mat"]);
}

// ---------------------------------------------------------------- AGM steps

#[derive(Deserialize)]
struct StepsCase<Step> {
    preset: String,
    hyper: StepsHyper,
    tensors: Vec<TensorRecipe>,
    steps_per_epoch: usize,
    batches: Vec<BatchRecord>,
    steps: Vec<Step>,
    after: HashMap<String, Summary>,
    /// Each step's dropout seed (`train_step`'s argument), with which the official run drew agm's
    /// masks; none where the model has no dropout (then 0).
    #[serde(default)]
    dropout_seeds: Vec<u64>,
    /// The official loop's loss reduction, `mean` (absent) or `sum` (MOSEI's): its recorded
    /// losses are reduced the same way.
    #[serde(default = "mean")]
    loss_reduction: String,
}

fn mean() -> String {
    "mean".into()
}

impl<Step> StepsCase<Step> {
    fn loss_reduction(&self) -> LossReduction {
        LossReduction::parse(&self.loss_reduction).expect("mean or sum")
    }

    /// agm's loss (a mean over the batch) reduced as the official loop reduced step `k`'s.
    fn official_loss(&self, k: usize, mean_loss: f64) -> f64 {
        match self.loss_reduction() {
            LossReduction::Mean => mean_loss,
            LossReduction::Sum => mean_loss * self.batches[k - 1].labels.len() as f64,
        }
    }
}

#[derive(Deserialize)]
struct StepsHyper {
    alpha: f64,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    modulation_window_epochs: [usize; 2],
}

/// One batch: its values, or formula inputs (`InputRecipe`, the sample count from `samples` or,
/// absent, from the labels: AVE's labels are per segment).
#[derive(Deserialize)]
struct BatchRecord {
    #[serde(default)]
    samples: Option<usize>,
    #[serde(default)]
    inputs: Vec<Vec<f64>>,
    #[serde(default)]
    shapes: Vec<Vec<usize>>,
    #[serde(default)]
    formula_inputs: Vec<InputRecipe>,
    labels: Vec<u32>,
}

impl BatchRecord {
    fn batch(&self, dev: &Device) -> MultimodalBatch {
        let inputs = if self.formula_inputs.is_empty() {
            self.inputs
                .iter()
                .zip(&self.shapes)
                .map(|(v, s)| Tensor::from_vec(v.clone(), s.as_slice(), dev).unwrap())
                .collect()
        } else {
            let samples = self.samples.unwrap_or(self.labels.len());
            self.formula_inputs.iter().map(|r| input(r, samples, dev)).collect()
        };
        MultimodalBatch::new(inputs, Tensor::new(self.labels.as_slice(), dev).unwrap()).unwrap()
    }
}

#[derive(Deserialize)]
struct AgmStepRecord {
    /// The cross-entropy of the fused output (what agm's `StepOutcome` reports).
    loss: f64,
    /// The loss the loop differentiated, where the model adds an auxiliary term (AVE's
    /// `loss_cls + LAMBDA · AVPS`).
    #[serde(default)]
    loss_total: Option<f64>,
    /// The official wrapper's `scale_a`, `scale_v` during the step's backward.
    hook_scale_in_effect: BTreeMap<String, f64>,
    clip_fired: bool,
}

/// One step of a late-sum method case (OGM-GE, MSLR).
#[derive(Deserialize)]
struct OgmStepRecord {
    loss: f64,
    /// `Σ_k softmax(out_m)[k, y_k]` of the heads' outputs, audio then visual (OGM-GE's scores).
    score_sum: [f64; 2],
    /// Whether the loop edited the gradients (inside its window).
    edited: bool,
    /// The coefficients applied (1 and 1 outside the window).
    coeff: [f64; 2],
    /// Whether the loop's conditional clipping fired (early fusion clips).
    #[serde(default)]
    clip_fired: Option<bool>,
}

fn steps_case<Step: serde::de::DeserializeOwned>(name: &str) -> StepsCase<Step> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/fixtures/twin_steps/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Reads the loss a step differentiates: the method's objective plus the model's auxiliary loss.
#[derive(Default)]
struct ObjectiveLoss(f64);

impl StepObserver for ObjectiveLoss {
    fn forward(&mut self, _forward: &StepForward, objective: &Objective) -> candle_core::Result<()> {
        self.0 = objective.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        Ok(())
    }
}

/// Runs agm's `train_step` (SGD with the case's settings, faithful Shapley passes) over the case's
/// batches from the case's weights, calls `check` after each step with its 1-based index and the
/// loss it differentiated, then compares every parameter and running statistic after the last
/// step.
fn replay_twin_steps<Step, M: Modulator>(
    case: &StepsCase<Step>,
    modulator: &mut M,
    mut check: impl FnMut(&mut Worst, usize, &StepOutcome, f64, &M),
) {
    let dev = Device::Cpu;
    let first = case.batches[0].batch(&dev);
    let shapes: Vec<Vec<usize>> = first.inputs.iter().map(|t| t.dims()[1..].to_vec()).collect();
    let opts = PresetOptions { input_shapes: Some(shapes), ..PresetOptions::default() };
    let model = build_preset(&case.preset, &opts, 0, DType::F64, &dev).unwrap();
    load_formula_weights(model.as_ref(), &case.tensors, &case.preset);
    let trainable = model.param_groups().trainable();
    let sgd_cfg = SgdConfig {
        lr: case.hyper.lr,
        momentum: case.hyper.momentum,
        dampening: 0.0,
        weight_decay: case.hyper.weight_decay,
        nesterov: false,
    };
    let mut sgd = Sgd::new(vec![ParamGroup::new(trainable.clone())], sgd_cfg).unwrap();
    let mut worst = Worst::default();
    assert_eq!(case.batches.len(), case.steps.len());
    assert!(case.dropout_seeds.is_empty() || case.dropout_seeds.len() == case.steps.len(), "one seed per step");
    for (k, b) in case.batches.iter().enumerate() {
        let mut parts = StepParts {
            model: model.as_ref(),
            modulator: &mut *modulator,
            optimizer: &mut sgd,
            trainable: &trainable,
            shapley: ShapleyMode::Faithful,
            loss_reduction: case.loss_reduction(),
        };
        let epoch = k / case.steps_per_epoch + 1;
        let dropout_seed = case.dropout_seeds.get(k).copied().unwrap_or(0);
        let mut objective = ObjectiveLoss::default();
        let outcome = train_step(&mut parts, &b.batch(&dev), k + 1, epoch, dropout_seed, &mut objective).unwrap();
        check(&mut worst, k + 1, &outcome, objective.0, &*modulator);
    }
    let vars: HashMap<String, Tensor> =
        model.param_groups().all_sorted().into_iter().map(|v| (v.name, v.var.as_tensor().clone())).collect();
    assert_eq!(case.after.len(), vars.iter().filter(|(k, _)| !k.ends_with("num_batches_tracked")).count());
    for (name, theirs) in &case.after {
        let ours = vars.get(name).unwrap_or_else(|| panic!("no variable {name}"));
        check_summary(&mut worst, "after the steps", ours, theirs, 0.0, name);
    }
    worst.finish();
}

/// AGM steps of `avmnist-late`, `cremad-late` and `urfunny-late` from the official
/// `run/AVMNIST_main.py:train`, `run/CREMAD_main.py:train` and `run/URFunny_main.py:train` with
/// their `GradMod` around the official `Later_Fusion_Resnet`, `AVClassifier` and
/// `Later_Fusion_Model` (two epochs: four steps, six for UR-Funny): the Shapley passes in
/// evaluation mode beside the training-mode pass (CREMA-D's loop also runs the all-muted one),
/// scores, coefficients (CREMA-D clamps at 10, UR-Funny at 7), conditional clipping (it fires in
/// every ResNet step and in two of UR-Funny's) and SGD, on the real ResNet-18s and the real
/// eight-layer transformers. The transformers' training pass has dropout: the official run drew
/// agm's masks from the recorded per-step seeds, so the comparison is of the arithmetic given the
/// masks. Compared: every step's loss, coefficients and clipping decision, then every parameter
/// and running statistic after the last step. The fast Shapley passes fail it (batch norm), as
/// they should, and so do other dropout seeds.
#[test]
fn agm_steps_on_the_paper_models_match_the_official_training_loops() {
    let two = ["audio", "visual"].as_slice();
    check_agm_steps("avmnist-late-agm", AgmConfig::paper_avmnist(), two);
    check_agm_steps("cremad-late-agm", AgmConfig::paper_cremad(), two);
    check_agm_steps("urfunny-late-agm", AgmConfig::paper_urfunny(), ["audio", "visual", "text"].as_slice());
}

/// Four AGM steps (two epochs, batch 4) of `avmnist-early` from the official
/// `run/AVMNIST_main.py:train` in early fusion (`--fusion early`) with its `GradMod` around the
/// official `Early_Fusion`: the real ResNet-18s (64×64 and 56×56 inputs, so the deepest batch
/// norms see more than one value per sample) into the MaxOut block and the head. The masked
/// passes zero a raw input and run the whole network in evaluation mode with gradients, so the
/// coefficients reach every parameter through all three passes; the training pass's two MaxOut
/// dropouts took agm's masks from the recorded per-step seeds. The clipping fires in step 2.
/// Compared as the late-fusion cases. The fast Shapley passes fail it, and so do other dropout
/// seeds. A second case takes the coefficients to their extremes (six steps, batch 8, alpha 3:
/// from 94.5 down to 4.2e-19 and exactly 0, clipped in five steps).
#[test]
fn agm_steps_on_the_avmnist_early_model_match_the_official_training_loop() {
    check_agm_steps("avmnist-early-agm", AgmConfig::paper_avmnist(), ["audio", "visual"].as_slice());
    check_agm_steps("avmnist-early-agm-extreme", AgmConfig::paper_avmnist(), ["audio", "visual"].as_slice());
}

/// Four AGM steps (two epochs, batch 4) of `cremad-early` from the official
/// `run/CREMAD_main.py:train` in early fusion with its `GradMod` around the official
/// `AV_Early_Classifier`: the real ResNet-18s (64×64 spectrograms, one 64×64 frame) into the
/// MaxOut block and the head, the three masked passes (the all-muted one computed, never used) in
/// evaluation mode with gradients, alpha 1.5 (the `cremad-agm-early` recipe's), clamp 10,
/// clipping at 1. The training pass's two MaxOut dropouts took agm's masks from the recorded
/// per-step seeds.
/// The clipping fires in steps 1 and 3. Compared as the other AGM cases. The fast Shapley passes
/// fail it, and so does another alpha.
#[test]
fn agm_steps_on_the_cremad_early_model_match_the_official_training_loop() {
    check_agm_steps("cremad-early-agm", AgmConfig::paper_cremad(), ["audio", "visual"].as_slice());
}

/// Six AGM steps (two epochs, batch 4) of `urfunny-early` from the official
/// `run/URFunny_main.py:train` in early fusion with its `GradMod` around the official
/// `Early_Fusion_Model`: the three eight-layer transformers into the MaxOut block and the head,
/// the seven masked passes in evaluation mode with gradients, alpha 6 (clamp 7, no floor, clip at
/// 5). The training pass's dropout took agm's masks at every transformer site and both MaxOut
/// sites (the fusion's seeds after the encoders') from the recorded per-step seeds. The
/// coefficients swing widely and the clipping fires in steps 2, 4, 5 and 6. Compared as the
/// other AGM cases. Other dropout seeds fail it, and so do the fast Shapley passes.
#[test]
fn agm_steps_on_the_urfunny_early_model_match_the_official_training_loop() {
    let three = ["audio", "visual", "text"].as_slice();
    check_agm_steps("urfunny-early-agm", AgmConfig::paper_urfunny_early(), three);
}

/// Four AGM steps (two epochs) of `mosei-mat` from the official `run/MOSEI_main.py:train`
/// (`--methods AGM`) with its `GradMod` around the official `Model_LA`, the real six-block MAT
/// transformer at its fixed lengths (60 tokens, 60 frames; batch 2, padded tails so the masks
/// take part), in training mode with dropout: the official run drew agm's masks at every one of
/// its 82 dropout sites from the recorded per-step seeds. The loss is summed over the batch
/// (`LossReduction::Sum`; the recorded losses are sums) and the clipping is the official
/// condition as written (`ClipCondition::MoseiQuirk`); it fires in steps 1, 3 and 4. The head has
/// two classes, so its gradient's rows are opposite (min = −max) and the regular band
/// (`OutsideBand`) decides the same: the case covers the clipping, not where the quirk differs.
/// Compared as the other AGM cases. The mean reduction fails it, and so do other dropout seeds.
#[test]
fn agm_steps_on_the_mosei_model_match_the_official_training_loop() {
    check_agm_steps("mosei-mat-agm", AgmConfig::paper_mosei(), ["text", "audio"].as_slice());
}

/// Four AGM steps (two epochs, batch 2) of `ave-psp` from the official `run/AVE_main.py:train`
/// (Multimodal, `--methods AGM`) with its `GradMod` around the official `psp_net`, in training
/// mode with dropout: the official run drew agm's masks at PSP's six dropout sites from the
/// recorded per-step seeds. Labels are per segment (each batch one clip with an event, one all
/// background); the loss is the mean cross-entropy over the segments plus `100 · AVPS` on the
/// training pass's cross attention, which AGM does not modulate; the scores are per segment;
/// no clipping (AVE's loop has none). AGM's settings are `MethodSettings::for_dataset("ave")`'s
/// (floor 1e-8, no clamp, no clipping) with the case's alpha. The official loop read batches
/// whose AVPS target was built fresh (the official loader's buffer leaks across batches, quirk
/// Q15, a documented difference), so this compares the loop and the model. Compared: every step's
/// cross-entropy, its loss with the AVPS term and coefficients, then every parameter after the
/// last step. Other dropout seeds fail it, and so does another AVPS weight.
#[test]
fn agm_steps_on_the_ave_model_match_the_official_training_loop() {
    let preset = MethodSettings::for_dataset("ave").get::<Agm>();
    check_agm_steps("ave-psp-agm", preset, ["audio", "visual"].as_slice());
}

/// AGM steps of a twin-steps case: every step's loss, coefficients and clipping decision, then
/// every parameter and running statistic after the last step.
fn check_agm_steps(name: &str, preset: AgmConfig, modalities: &[&str]) {
    let case: StepsCase<AgmStepRecord> = steps_case(name);
    let [lo, hi] = case.hyper.modulation_window_epochs;
    let agm_cfg = AgmConfig { alpha: case.hyper.alpha, window_start: lo, window_end: Some(hi), ..preset };
    let mut agm = Agm::new(agm_cfg, modalities.len()).unwrap();
    replay_twin_steps(&case, &mut agm, |worst, k, outcome, objective_loss, _| {
        let expected = &case.steps[k - 1];
        let what = format!("{name} step {k}");
        let loss = case.official_loss(k, outcome.loss);
        worst.check("loss", || format!("{what} loss"), loss, expected.loss, expected.loss.abs());
        if let Some(total) = expected.loss_total {
            worst.check("loss", || format!("{what} loss with the auxiliary term"), objective_loss, total, total.abs());
        }
        let coefficients = outcome.coefficients.clone().unwrap();
        assert_eq!(coefficients.len(), modalities.len(), "{what}: one coefficient per modality");
        for (m, ours) in modalities.iter().zip(coefficients) {
            let theirs = expected.hook_scale_in_effect[*m];
            worst.check("coefficients", || format!("{what} coefficient {m}"), ours, theirs, theirs.abs());
        }
        let fired = outcome.clip.as_ref().is_some_and(|c| c.fired);
        worst.require(fired == expected.clip_fired, || format!("{what}: clipping fired {fired}, official not"));
    });
}

/// Six OGM-GE steps (three epochs, the window the first two) of `cremad-late-sum` from the
/// official `run/CREMAD_main.py:train` in late fusion on the official `AVClassifier_Sum`: the
/// uni-modal outputs of its two heads, the score sums, the coefficients (one step damps audio,
/// the others visual, one of them to exactly 0 in the official code), every encoder and head
/// gradient of the damped modality scaled, SGD, on the real ResNet-18s; the Gaussian noise is
/// off on both sides. Compared as the AGM case, with the score sums. Taking the uni-modal outputs
/// from the Shapley passes instead (`uni_modal = "shapley"`) fails it.
#[test]
fn ogm_ge_steps_on_the_cremad_sum_model_match_the_official_training_loop() {
    check_ogm_ge_steps("cremad-late-sum-ogm-ge", OgmGeConfig::reference_cremad());
}

/// Four OGM-GE steps (two epochs, the window the first) of `avmnist-early` from the official
/// `run/AVMNIST_main.py:train` in early fusion (`--methods OGM-GE`), the code path where the AGM
/// repository's OGM-GE acts: the score sums of the masked passes (raw inputs zeroed, the whole
/// network in evaluation mode with gradients), the coefficient `1 − tanh(alpha · ratio)` of the
/// leading modality (visual in step 1, audio in step 2), its encoder's 4-D weight gradients
/// scaled, the conditional clipping (it does not fire here) and SGD, on the real ResNet-18s with
/// the MaxOut block's dropouts drawing agm's masks; the Gaussian noise is off on both sides.
/// Compared as the CREMA-D case. Alpha × 1.01, the paper's edit scope, noise on, the fast
/// Shapley passes or other dropout seeds each fail about 1,100 comparisons. At larger learning
/// rates the runs drift apart after hard damping steps (1e-8 by step 4 at lr 0.003), as PyTorch
/// drifts from itself with its state perturbed by 2e-12 after step 1; run from agm's state after
/// step 3, the official step 4 agrees with agm's to 7e-14.
#[test]
fn ogm_ge_steps_on_the_avmnist_early_model_match_the_official_training_loop() {
    check_ogm_ge_steps("avmnist-early-ogm-ge", OgmGeConfig::reference_avmnist());
}

/// OGM-GE steps of a twin-steps case with `base`'s settings, the case's alpha and window and no
/// noise: every step's loss, score sums, coefficients and clipping decision (late-fusion cases
/// record none and must not clip), then every parameter and running statistic.
fn check_ogm_ge_steps(name: &str, base: OgmGeConfig) {
    let case: StepsCase<OgmStepRecord> = steps_case(name);
    let [lo, hi] = case.hyper.modulation_window_epochs;
    let cfg = OgmGeConfig { alpha: case.hyper.alpha, noise: false, window_start: lo, window_end: Some(hi), ..base };
    let mut ogm = OgmGe::new(cfg, 2).unwrap();
    replay_twin_steps(&case, &mut ogm, |worst, k, outcome, _, ogm| {
        let expected = &case.steps[k - 1];
        let what = format!("{name} step {k}");
        worst.check("loss", || format!("{what} loss"), outcome.loss, expected.loss, expected.loss.abs());
        let stats = ogm.last_stats().unwrap();
        assert_eq!(stats.applied, expected.edited, "{what}: inside the window");
        for (m, (&ours, theirs)) in ["audio", "visual"].iter().zip(stats.score_sum.iter().zip(expected.score_sum)) {
            worst.check("score sums", || format!("{what} score sum {m}"), ours, theirs, theirs);
        }
        let coefficients = outcome.coefficients.clone().unwrap();
        for (m, (ours, theirs)) in ["audio", "visual"].iter().zip(coefficients.into_iter().zip(expected.coeff)) {
            // In (0, 1]; agm keeps the official exact 0 at the smallest positive f64.
            worst.check("coefficients", || format!("{what} coefficient {m}"), ours, theirs, 1.0);
        }
        match expected.clip_fired {
            Some(fired) => {
                let ours = outcome.clip.as_ref().is_some_and(|c| c.fired);
                worst.require(ours == fired, || format!("{what}: clipping fired {ours}, official {fired}"));
            }
            None => assert!(outcome.clip.is_none(), "{what}: no clipping in late fusion"),
        }
    });
    assert!(case.steps.iter().any(|s| s.edited) && case.steps.iter().any(|s| !s.edited));
}

/// Six MSLR steps of `cremad-late-sum` from the same official loop (`--methods MSLR`): every
/// encoder and head gradient of each modality scaled by CREMA-D's multipliers (0.9 audio, 1.1
/// visual; the learning-rate ratios the epoch loop passes in are 1 in the first epochs) inside
/// the window, none after it. Compared: losses, the multipliers in force, every parameter and
/// running statistic after the last step.
#[test]
fn mslr_steps_on_the_cremad_sum_model_match_the_official_training_loop() {
    let case: StepsCase<OgmStepRecord> = steps_case("cremad-late-sum-mslr");
    let [lo, hi] = case.hyper.modulation_window_epochs;
    let cfg = MslrConfig { window_start: lo, window_end: Some(hi), ..MslrConfig::cremad() };
    let mut mslr = Mslr::new(&cfg, 2).unwrap();
    replay_twin_steps(&case, &mut mslr, |worst, k, outcome, _, _| {
        let expected = &case.steps[k - 1];
        let what = format!("step {k}");
        worst.check("loss", || format!("{what} loss"), outcome.loss, expected.loss, expected.loss.abs());
        let multipliers = outcome.coefficients.clone().unwrap();
        for (m, (ours, theirs)) in ["audio", "visual"].iter().zip(multipliers.into_iter().zip(expected.coeff)) {
            worst.check("multipliers", || format!("{what} multiplier {m}"), ours, theirs, 1.0);
        }
    });
    assert!(case.steps.iter().any(|s| s.edited) && case.steps.iter().any(|s| !s.edited));
}

/// A whole run of the official epoch loop (`scripts/golden/late_sum_twin_run.py`): its settings,
/// the formula weights, the fixed batches, and what the loop did in each epoch.
#[derive(Deserialize)]
struct RunCase {
    preset: String,
    method: String,
    hyper: RunHyper,
    tensors: Vec<TensorRecipe>,
    train_batches: Vec<BatchRecord>,
    eval_batches: Vec<BatchRecord>,
    epochs: Vec<RunEpochRecord>,
    outcome: String,
    after: HashMap<String, Summary>,
}

#[derive(Deserialize)]
struct RunHyper {
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    lr_decay_step: usize,
    lr_decay_ratio: f64,
    modulation_window_epochs: [usize; 2],
    init_multipliers: Vec<f64>,
    epochs: usize,
}

#[derive(Deserialize)]
struct RunEpochRecord {
    epoch: usize,
    /// The optimizer's learning rate during the epoch (a reload brings back the checkpoint's).
    lr: f64,
    /// The ratios the loop passed to `train()`: MSLR's accuracy ratios, MSES's 1 or 0.
    ratios: Vec<f64>,
    /// Each step's loss.
    losses: Vec<f64>,
    /// Epochs whose checkpoints the loop reloaded at this epoch's end.
    loaded: Vec<usize>,
    eval: RunEvalRecord,
}

/// `test()`'s return values: accuracies and the heads' mean cross-entropies.
#[derive(Deserialize)]
struct RunEvalRecord {
    accuracy: f64,
    head_accuracy: Vec<f64>,
    head_loss: Vec<f64>,
}

/// The case's batches, in order: the trainer asks for consecutive runs of one batch's size.
struct FixedBatches(Vec<MultimodalBatch>);

impl agm_core::BatchSource for FixedBatches {
    fn len(&self) -> usize {
        self.0.iter().map(|b| b.len()).sum()
    }

    fn batch(&self, indices: &[usize], _device: &Device) -> candle_core::Result<MultimodalBatch> {
        let size = self.0[0].len();
        let k = indices[0] / size;
        assert!(indices.iter().copied().eq(k * size..(k + 1) * size), "in order, by whole batches");
        Ok(self.0[k].clone())
    }
}

/// Records every step and epoch the trainer reports.
#[derive(Default)]
struct Recorder {
    steps: Vec<agm_train::StepSummary>,
    epochs: Vec<agm_train::EpochSummary>,
}

impl agm_train::Callback for Recorder {
    fn on_step(&mut self, s: &agm_train::StepSummary) -> agm_train::Flow {
        self.steps.push(s.clone());
        agm_train::Flow::Continue
    }

    fn on_epoch_end(&mut self, e: &agm_train::EpochSummary) -> agm_train::Flow {
        self.epochs.push(e.clone());
        agm_train::Flow::Continue
    }
}

/// MSES and MSLR over whole runs of AV-MNIST's summed-heads model against the official
/// `run/AVMNIST_main.py:AVMNIST_main` (its real `train()` and `test()` on the official
/// `Later_Fusion_Resnet_Sum`, its epoch loop, checkpoints and reloads; fixed batches, float64):
/// agm's `Trainer` with the same SGD, StepLR and method settings, evaluating on the loop's
/// evaluation batches. Compared in every epoch: the learning rate (a reload brings back the
/// checkpoint's), every step's loss and the multipliers in force, the heads' evaluation
/// accuracies and losses that drive the methods, and the fused accuracy; then where the run ended
/// (MSES stops when every modality has) and every parameter and running statistic at its end.
#[test]
fn mses_and_mslr_runs_on_the_avmnist_sum_model_match_the_official_epoch_loop() {
    check_twin_run("avmnist-late-sum-mses");
    check_twin_run("avmnist-late-sum-mslr");
}

fn check_twin_run(name: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/fixtures/twin_runs/{name}.json"));
    let case: RunCase = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let dev = Device::Cpu;
    let train = FixedBatches(case.train_batches.iter().map(|b| b.batch(&dev)).collect());
    let evaluation = FixedBatches(case.eval_batches.iter().map(|b| b.batch(&dev)).collect());
    let shapes: Vec<Vec<usize>> = train.0[0].inputs.iter().map(|t| t.dims()[1..].to_vec()).collect();
    let opts = PresetOptions { input_shapes: Some(shapes), ..PresetOptions::default() };
    let model = build_preset(&case.preset, &opts, 0, DType::F64, &dev).unwrap();
    load_formula_weights(model.as_ref(), &case.tensors, &case.preset);

    let h = &case.hyper;
    let [lo, hi] = h.modulation_window_epochs;
    let m = h.init_multipliers.len();
    let modulator: Box<dyn Modulator> = match case.method.as_str() {
        "mses" => Box::new(
            Mses::new(&MsesConfig { window_start: lo, window_end: Some(hi), ..MsesConfig::avmnist() }, m).unwrap(),
        ),
        "mslr" => Box::new(
            Mslr::new(
                &MslrConfig {
                    init: h.init_multipliers.clone(),
                    window_start: lo,
                    window_end: Some(hi),
                    ..MslrConfig::avmnist()
                },
                m,
            )
            .unwrap(),
        ),
        other => panic!("no twin run for method {other}"),
    };
    let sgd =
        SgdConfig { lr: h.lr, momentum: h.momentum, dampening: 0.0, weight_decay: h.weight_decay, nesterov: false };
    let options = agm_train::TrainerOptions {
        epochs: h.epochs,
        batch_size: train.0[0].len(),
        eval_batch_size: evaluation.0[0].len(),
        seed: 0,
        base_lr: h.lr,
        schedule: agm_train::optim::ScheduleConfig::Step { step_size: h.lr_decay_step, gamma: h.lr_decay_ratio },
        checkpoint_every_steps: 0,
        shapley: ShapleyMode::Faithful,
        shuffle: false,
        loss_reduction: LossReduction::Mean,
    };
    let build_sgd = |groups| Ok(Box::new(Sgd::new(groups, sgd)?) as Box<dyn agm_train::optim::Optimizer>);
    let mut trainer = agm_train::Trainer::new(model.as_ref(), modulator, build_sgd, options, &dev).unwrap();
    let mut seen = Recorder::default();
    let summary = trainer.fit(&train, &evaluation, &mut seen).unwrap();

    let mut worst = Worst::default();
    let official_exit = case.outcome.starts_with("exit()");
    worst.require(summary.stopped_early == official_exit, || {
        format!("{name}: agm stopped early {}, official: {}", summary.stopped_early, case.outcome)
    });
    worst.require(seen.epochs.len() == case.epochs.len(), || {
        format!("{name}: agm ran {} epochs, official {} ({})", seen.epochs.len(), case.epochs.len(), case.outcome)
    });
    let mut steps = seen.steps.iter();
    for (ours, theirs) in seen.epochs.iter().zip(&case.epochs) {
        let what = format!("{name} epoch {}", theirs.epoch);
        assert_eq!(ours.epoch, theirs.epoch);
        worst.check("learning rates", || format!("{what} learning rate"), ours.lr, theirs.lr, theirs.lr);
        let inside = lo <= theirs.epoch && theirs.epoch <= hi;
        for (k, &loss) in theirs.losses.iter().enumerate() {
            let step = steps.next().expect("one agm step per official step");
            worst.check("losses", || format!("{what} step {} loss", k + 1), step.loss, loss, loss.abs());
            let applied = step.coefficients.clone().expect("the method reports its multipliers");
            for (x, &ours) in applied.iter().enumerate() {
                let theirs = if inside { h.init_multipliers[x] * theirs.ratios[x] } else { 1.0 };
                worst.check("multipliers", || format!("{what} step {} multiplier {x}", k + 1), ours, theirs, 1.0);
            }
        }
        let (v, e) = (&ours.validation, &theirs.eval);
        worst.check("accuracies", || format!("{what} accuracy"), v.accuracy, e.accuracy, 1.0);
        for x in 0..m {
            worst.check(
                "accuracies",
                || format!("{what} head {x} accuracy"),
                v.head_accuracy[x],
                e.head_accuracy[x],
                1.0,
            );
            let scale = e.head_loss[x].abs();
            worst.check("evaluation losses", || format!("{what} head {x} loss"), v.head_loss[x], e.head_loss[x], scale);
        }
    }
    let vars: HashMap<String, Tensor> =
        model.param_groups().all_sorted().into_iter().map(|v| (v.name, v.var.as_tensor().clone())).collect();
    for (name, theirs) in &case.after {
        let ours = vars.get(name).unwrap_or_else(|| panic!("no variable {name}"));
        check_summary(&mut worst, "at the end", ours, theirs, 0.0, name);
    }
    worst.finish();
    let reloads = case.epochs.iter().filter(|e| !e.loaded.is_empty()).count();
    assert!(case.method != "mses" || reloads > 0, "{name}: the case must reload a checkpoint");
}
