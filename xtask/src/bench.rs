//! `cargo xtask bench`: AGM against joint training per model preset, with the faithful and the
//! fast Shapley passes, timed interleaved in one run (machine load hits every arm alike) and
//! reported as ratios; optionally the kernels against plain candle, the loader against the
//! step, and the reference's own PyTorch steps.

use std::process::ExitCode;

use agm_benches::launches::{count_launches, LaunchCounts};
use agm_benches::{
    device_peak_memory_bytes, interleaved_arm_medians, preset_batch, reset_device_peak_memory, OnBatch, StepBench,
    TimedArm,
};
use agm_fusion::PresetOptions;
use anyhow::Context;
use candle_core::Device;

use crate::cli::BenchArgs;

const ARMS: [&str; 3] = ["joint", "agm", "agm-fast"];

struct Row {
    model: String,
    modalities: usize,
    batch: usize,
    /// Per arm; NaN for an arm that is not timed (AGM fast on a model without fast passes).
    ms: [f64; 3],
    /// Per arm; NaN where the platform reports none or the arm is not timed.
    peak_mib: [f64; 3],
    /// The plain PyTorch step, timed in turn with agm's arms (with `--reference-python`); at the
    /// anchor's precision, fp32 when the bench runs bf16.
    plain_ms: Option<f64>,
}

/// Peak memory of two steps of one arm built alone, in MiB: live heap bytes on the CPU, live
/// device bytes on CUDA (`agm_train::memory`).
fn peak_of(
    model: &str,
    opts: &PresetOptions,
    arm: &'static str,
    batch_size: usize,
    device: &Device,
) -> anyhow::Result<Option<f64>> {
    let batch = preset_batch(model, opts, batch_size, device)?;
    let mut bench = StepBench::for_preset(model, opts, arm, device)?;
    reset_device_peak_memory(device);
    for _ in 0..2 {
        bench.step(&batch)?;
    }
    Ok(device_peak_memory_bytes(device).map(|b| b as f64 / (1024.0 * 1024.0)))
}

/// The presets of `--models`, in order.
fn model_names(args: &BenchArgs) -> impl Iterator<Item = &str> {
    args.models.split(',').map(str::trim).filter(|m| !m.is_empty())
}

/// The shapes, batch size and batch the bench steps `model` on.
fn model_batch(
    model: &str,
    args: &BenchArgs,
    device: &Device,
) -> anyhow::Result<(PresetOptions, usize, agm_core::MultimodalBatch)> {
    let opts = agm_benches::reference_shapes(args.seq_len);
    let batch_size = if model.starts_with("av-digits") { args.batch_size } else { args.large_batch_size };
    let batch = preset_batch(model, &opts, batch_size, device).with_context(|| format!("a batch for {model}"))?;
    Ok((opts, batch_size, batch))
}

fn time_model(model: &str, args: &BenchArgs, device: &Device) -> anyhow::Result<Row> {
    let (opts, batch_size, batch) = model_batch(model, args, device)?;
    let mut benches = ARMS
        .iter()
        .map(|arm| StepBench::for_preset(model, &opts, arm, device))
        .collect::<candle_core::Result<Vec<_>>>()?;
    // AGM fast on a model without fast passes would time AGM faithful again: it is left out.
    let timed: [bool; 3] = std::array::from_fn(|i| benches[i].is_distinct_arm());
    // PyTorch's plain step takes its turns with agm's arms, so load changes hit both sides.
    let mut plain = match (&args.reference_python, reference_case(model)) {
        (Some(python), Some(case)) => Some(PlainTorchStep::start(python, args, case, batch_size)?),
        _ => None,
    };
    let t = {
        let mut on_batch: Vec<OnBatch<'_>> =
            benches.iter_mut().filter(|b| b.is_distinct_arm()).map(|b| OnBatch(b, &batch)).collect();
        let mut arms: Vec<&mut dyn TimedArm> = on_batch.iter_mut().map(|a| a as &mut dyn TimedArm).collect();
        if let Some(p) = plain.as_mut() {
            arms.push(p);
        }
        interleaved_arm_medians(&mut arms, args.steps)?
    };
    // The medians in order: the timed arms, then the plain step.
    let mut medians = t.into_iter().map(|s| 1e3 * s);
    let ms = timed.map(|on| if on { medians.next().expect("one median per timed arm") } else { f64::NAN });
    let plain_ms = plain.is_some().then(|| medians.next().expect("the plain step's median"));
    // The peaks below build each arm alone: free these first, and end PyTorch's process.
    drop((plain, benches));
    let modalities = batch.inputs.len();
    let mut peak_mib = [f64::NAN; 3];
    for ((p, arm), on) in peak_mib.iter_mut().zip(ARMS).zip(timed) {
        if on {
            *p = peak_of(model, &opts, arm, batch_size, device)?.unwrap_or(f64::NAN);
        }
    }
    Ok(Row { model: model.into(), modalities, batch: batch_size, ms, peak_mib, plain_ms })
}

/// The plain PyTorch step in a `scripts/reference_step_bench.py --serve` process, stepped on
/// request. Dropping it closes the process's input, which ends it.
struct PlainTorchStep {
    child: std::process::Child,
    /// Open until the step is dropped.
    input: Option<std::process::ChildStdin>,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl PlainTorchStep {
    /// Starts the process for reference `case` and waits for its warm-up steps.
    fn start(python: &std::path::Path, args: &BenchArgs, case: &str, batch_size: usize) -> anyhow::Result<Self> {
        use std::process::Stdio;
        let (mut command, script) =
            reference_script(python, args, case, batch_size, anchor_precision(&args.precision))?;
        let mut child = command
            .args(["--steps", "4", "--serve"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} {} --serve", python.display(), script.display()))?;
        let input = Some(child.stdin.take().context("the plain step's input")?);
        let output = std::io::BufReader::new(child.stdout.take().context("the plain step's output")?);
        let mut step = Self { child, input, output };
        let ready =
            step.reply().with_context(|| format!("{} --serve did not start (its error is above)", script.display()))?;
        anyhow::ensure!(ready.get("ready").is_some(), "{} --serve: unexpected first line {ready}", script.display());
        Ok(step)
    }

    /// The device work of one plain step, counted by PyTorch's profiler; `Err` says why not.
    fn launches(&mut self) -> anyhow::Result<Result<LaunchCounts, String>> {
        let reply = self.ask("launches")?;
        if let Some(why) = reply.get("why").and_then(|w| w.as_str()) {
            return Ok(Err(why.to_string()));
        }
        let count = |key: &str| reply.get(key).and_then(serde_json::Value::as_u64);
        match (count("kernels"), count("memcpys"), count("memsets")) {
            (Some(kernels), Some(memcpys), Some(memsets)) => Ok(Ok(LaunchCounts { kernels, memcpys, memsets })),
            _ => anyhow::bail!("PyTorch's plain step: asked for its launch counts, got {reply}"),
        }
    }

    /// Sends one request line and returns the process's reply.
    fn ask(&mut self, request: &str) -> anyhow::Result<serde_json::Value> {
        use std::io::Write;
        writeln!(self.input.as_mut().expect("open until dropped"), "{request}")?;
        self.reply()
    }

    /// The next JSON line of the process; other lines (a library's chatter) are skipped.
    fn reply(&mut self) -> anyhow::Result<serde_json::Value> {
        use std::io::BufRead;
        loop {
            let mut line = String::new();
            anyhow::ensure!(self.output.read_line(&mut line)? > 0, "the PyTorch plain step ended early");
            if line.trim_start().starts_with('{') {
                return Ok(serde_json::from_str(&line)?);
            }
        }
    }
}

impl TimedArm for PlainTorchStep {
    /// PyTorch's OpenMP threads spin at barriers for a few milliseconds after a step returns
    /// (7–10 ms of CPU time on 2 cores); the pause keeps that out of the next arm's time.
    fn settle(&self) -> std::time::Duration {
        std::time::Duration::from_millis(200)
    }

    fn time_block(&mut self, n: usize) -> candle_core::Result<Vec<f64>> {
        let reply = self.ask(&n.to_string());
        let reply = reply.map_err(|e| candle_core::Error::Msg(format!("PyTorch's plain step: {e:#}")))?;
        // A reply without n step times would leave the arm's median short or empty.
        let ms: Option<Vec<f64>> =
            reply.get("ms").and_then(|v| v.as_array()).map(|a| a.iter().filter_map(|v| v.as_f64()).collect());
        match ms {
            Some(ms) if ms.len() == n => Ok(ms.iter().map(|v| v / 1e3).collect()),
            _ => Err(candle_core::Error::Msg(format!("PyTorch's plain step: asked for {n} step times, got {reply}"))),
        }
    }
}

impl Drop for PlainTorchStep {
    fn drop(&mut self) {
        // Closing the input ends its loop; wait so it leaves no process behind.
        drop(self.input.take());
        let _ = self.child.wait();
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0).context("--device cuda (build with --features cuda; docs/cuda.md)")?,
        other => anyhow::bail!("--device `{other}` is not known; allowed: cpu, cuda"),
    };
    anyhow::ensure!(!args.launches || device.is_cuda(), "--launches counts CUDA kernels: add --device cuda");
    if let Some(python) = &args.reference_python {
        // Before the first table row, whichever models it times.
        std::process::Command::new(python).arg("--version").output().with_context(|| {
            format!("--reference-python {} cannot be run (a Python with PyTorch)", python.display())
        })?;
        match &args.reference_tree {
            Some(tree) if tree.is_dir() => {}
            Some(tree) => {
                anyhow::bail!("--reference-tree {} is not a folder (the reference repository)", tree.display())
            }
            None => anyhow::bail!("--reference-python needs --reference-tree <reference repository tree>"),
        }
    }
    for (flag, value) in [
        ("--steps", args.steps),
        ("--batch-size", args.batch_size),
        ("--large-batch-size", args.large_batch_size),
        ("--seq-len", args.seq_len),
        ("--repeats", args.repeats),
    ] {
        anyhow::ensure!(value >= 1, "{flag} must be at least 1");
    }
    // Every name is checked before the table starts.
    for model in model_names(&args) {
        agm_fusion::preset_spec(model, &agm_benches::reference_shapes(args.seq_len)).context("--models")?;
    }
    let precision: agm_kernels::Precision =
        args.precision.parse().map_err(|e: String| anyhow::anyhow!("--precision: {e}"))?;
    // agm's arms run on this thread; the reference's steps get the same --precision.
    let _precision = agm_kernels::PrecisionGuard::new(precision);
    if device.is_cuda() {
        crate::cudnn_notice();
    }
    if args.launches {
        println!("device {}, precision {precision}, device work of one step after two warm-up steps", args.device);
        println!();
        launch_rows(&args, &device)?;
        return Ok(ExitCode::SUCCESS);
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into());
    println!(
        "device {}, precision {precision}, threads {threads}, median of {} interleaved steps per arm",
        args.device, args.steps
    );
    let repeats = args.repeats;
    let mut runs = Vec::with_capacity(repeats);
    for run in 1..=repeats {
        println!();
        if repeats > 1 {
            println!("run {run} of {repeats}");
            println!();
        }
        let rows = model_rows(&args, &device)?;
        let cases = match &args.reference_python {
            Some(python) => reference_rows(python, &args, &rows)?,
            None => Vec::new(),
        };
        runs.push((rows, cases));
    }
    if args.reference_python.is_some() {
        target_table(&runs, precision);
    }
    if args.kernels {
        println!();
        println!("| kernel (forward + backward) | ours ms | plain candle ms | ours / candle |");
        println!("|---|---|---|---|");
        for k in agm_benches::kernels::kernel_ratios(&device, 10)? {
            println!("| {} | {:.2} | {:.2} | {:.2}x |", k.name, k.ours_ms, k.reference_ms, k.ours_ms / k.reference_ms);
        }
        loader_row(&device)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Times every model of `--models` and prints its row.
fn model_rows(args: &BenchArgs, device: &Device) -> anyhow::Result<Vec<Row>> {
    let anchor = anchor_precision(&args.precision);
    println!("| model | modalities | batch | joint ms | AGM faithful ms | AGM fast ms | faithful/joint | fast/joint | peak MiB joint / faithful / fast | fast/joint peak | plain PyTorch ms ({anchor}, in turn) | joint / plain PyTorch |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for model in model_names(args) {
        let r = time_model(model, args, device)?;
        println!("{}", row_line(&r));
        rows.push(r);
    }
    let untimed: Vec<&str> = rows.iter().filter(|r| r.ms[2].is_nan()).map(|r| r.model.as_str()).collect();
    if !untimed.is_empty() {
        println!();
        println!("{}", no_fast_note(&untimed));
    }
    Ok(rows)
}

/// One model's row of the timing table; `–` for what was not timed or measured.
fn row_line(r: &Row) -> String {
    let (ms, p) = (r.ms, r.peak_mib);
    let plain = r.plain_ms.unwrap_or(f64::NAN);
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {} | {} |",
        r.model,
        r.modalities,
        r.batch,
        // Two decimals, so that the ratios can be checked from the table.
        num(ms[0], 2),
        num(ms[1], 2),
        num(ms[2], 2),
        times(ms[1] / ms[0]),
        times(ms[2] / ms[0]),
        num(p[0], 0),
        num(p[1], 0),
        num(p[2], 0),
        times(p[2] / p[0]),
        num(plain, 2),
        times(ms[0] / plain),
    )
}

/// The footnote of the `–` in the AGM fast cells of `models`.
fn no_fast_note(models: &[&str]) -> String {
    format!(
        "–: {} always {} the faithful Shapley passes (the model has no fast ones), so AGM fast is AGM faithful \
         and is not timed or counted",
        models.join(", "),
        if models.len() == 1 { "runs" } else { "run" }
    )
}

/// `--launches`: the kernels, copies and sets of one step of each arm after two warm-up steps
/// (cuDNN's algorithms found), counted by CUPTI, and of PyTorch's plain step, counted by its
/// profiler; no timing.
fn launch_rows(args: &BenchArgs, device: &Device) -> anyhow::Result<()> {
    let cell = |c: &LaunchCounts| format!("{} ({} + {})", c.kernels, c.memcpys, c.memsets);
    println!("| model | batch | kernels (copies + sets) per step: joint | AGM faithful | AGM fast | plain PyTorch | joint / plain PyTorch kernels |");
    println!("|---|---|---|---|---|---|---|");
    let mut untimed = Vec::new();
    for model in model_names(args) {
        let (opts, batch_size, batch) = model_batch(model, args, device)?;
        let mut cells = Vec::with_capacity(ARMS.len());
        let mut joint_kernels = None;
        for arm in ARMS {
            let mut bench = StepBench::for_preset(model, &opts, arm, device)?;
            if !bench.is_distinct_arm() {
                cells.push("–".into());
                untimed.push(model);
                continue;
            }
            for _ in 0..2 {
                bench.step(&batch)?;
            }
            match count_launches(device, || bench.step(&batch).map(drop))? {
                Ok(c) => {
                    if arm == "joint" {
                        joint_kernels = Some(c.kernels);
                    }
                    cells.push(cell(&c));
                }
                Err(why) => cells.push(format!("not counted: {why}")),
            }
        }
        let plain = match (&args.reference_python, reference_case(model)) {
            (Some(python), Some(case)) => PlainTorchStep::start(python, args, case, batch_size)?.launches()?,
            _ => Err("needs --reference-python and a model the reference has".into()),
        };
        let ratio = match (&plain, joint_kernels) {
            (Ok(p), Some(j)) => times(j as f64 / p.kernels as f64),
            _ => "–".into(),
        };
        let plain = plain.map_or_else(|why| format!("not counted: {why}"), |p| cell(&p));
        println!("| {model} | {batch_size} | {} | {plain} | {ratio} |", cells.join(" | "));
    }
    if !untimed.is_empty() {
        println!();
        println!("{}", no_fast_note(&untimed));
    }
    Ok(())
}

/// The AV-MNIST loader (4,000 generated rows) against the `avmnist-late` joint step, batch 16.
fn loader_row(device: &Device) -> anyhow::Result<()> {
    let (per_batch, per_step) = agm_benches::loader::loader_and_step_seconds(4000, 16, device)?;
    println!();
    println!(
        "AV-MNIST loader (4,000 rows, batch 16, prefetch thread): {:.1} batches/s; avmnist-late joint step {:.2} steps/s; loader/step rate {:.0}x",
        1.0 / per_batch,
        1.0 / per_step,
        per_step / per_batch
    );
    Ok(())
}

/// `scripts/reference_step_bench.py` (and its path) for reference `case` at `batch` and
/// `precision`, with the bench's sequence length and device and as many threads as agm's pool;
/// the caller adds the steps and the arms.
fn reference_script(
    python: &std::path::Path,
    args: &BenchArgs,
    case: &str,
    batch: usize,
    precision: &str,
) -> anyhow::Result<(std::process::Command, std::path::PathBuf)> {
    let tree = args
        .reference_tree
        .as_deref()
        .context("--reference-python needs --reference-tree <reference repository tree>")?;
    let script = crate::workspace_root().join("scripts/reference_step_bench.py");
    let mut command = std::process::Command::new(python);
    command
        .arg(&script)
        .arg("--reference")
        .arg(tree)
        .args(["--case", case, "--batch", &batch.to_string(), "--seq-len", &args.seq_len.to_string()])
        .args(["--threads", &rayon::current_num_threads().to_string()])
        .args(["--device", &args.device, "--precision", precision]);
    Ok((command, script))
}

/// The precision of the plain step a joint step at `precision` is held against: PyTorch's fp32
/// step for bf16 (its target is a speed-up over fp32), the same precision otherwise.
fn anchor_precision(precision: &str) -> &str {
    if precision == "bf16" {
        "fp32"
    } else {
        precision
    }
}

/// The reference's case that times the same network as our `model` preset, if any.
fn reference_case(model: &str) -> Option<&'static str> {
    match model {
        "avmnist-late" => Some("avmnist"),
        "urfunny-late" => Some("urfunny"),
        "cremad-late" => Some("cremad"),
        _ => None,
    }
}

/// The reference's own step times for one case, in ms, and peaks in MiB; NaN where the script
/// has no such arm (CREMA-D has only the plain step).
struct ReferenceRow {
    case: &'static str,
    /// The plain PyTorch step (the official late concat model's forward, cross-entropy,
    /// backward and SGD step) timed alone, after agm's arms.
    plain_ms: f64,
    /// The plain step's peak: live device bytes on CUDA; on the CPU the peak resident size less
    /// the resident size after `import torch` (Python's and PyTorch's libraries left out).
    plain_peak_mib: f64,
    /// The reference's joint ("Normal") step: the Sum model, with its per-sample score loop.
    joint_ms: f64,
    agm_ms: f64,
}

/// Runs scripts/reference_step_bench.py (with its plain step) for each reference case among the
/// timed `rows` and prints its numbers.
fn reference_rows(python: &std::path::Path, args: &BenchArgs, rows: &[Row]) -> anyhow::Result<Vec<ReferenceRow>> {
    let mut cases: Vec<&'static str> = Vec::new();
    for case in rows.iter().filter_map(|r| reference_case(&r.model)) {
        if !cases.contains(&case) {
            cases.push(case);
        }
    }
    if cases.is_empty() {
        println!();
        println!("(no reference case: the reference is timed for avmnist-late, urfunny-late and cremad-late)");
        return Ok(Vec::new());
    }
    let peak_of = if args.device == "cuda" { "live device" } else { "resident above import" };
    println!();
    println!(
        "| reference (PyTorch) | batch | plain step ms (alone) | reference joint ms | reference AGM ms | reference AGM/joint | plain peak MiB ({peak_of}) | resident peak MiB plain / joint / AGM |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut out = Vec::new();
    for case in cases {
        // The script's JSON line for this case at `precision`, with (`plain_only`) or without the
        // reference's own arms.
        let script_json = |precision: &str, plain_only: bool| -> anyhow::Result<serde_json::Value> {
            let (mut command, script) = reference_script(python, args, case, args.large_batch_size, precision)?;
            let output = command
                .args(["--plain", "--steps", &args.steps.min(5).to_string()])
                .args(plain_only.then_some("--plain-only"))
                .output()
                .with_context(|| format!("running {}", script.display()))?;
            if !output.status.success() {
                anyhow::bail!("{} failed: {}", script.display(), String::from_utf8_lossy(&output.stderr));
            }
            let line = String::from_utf8_lossy(&output.stdout);
            serde_json::from_str(line.lines().last().unwrap_or("{}"))
                .with_context(|| format!("reading the JSON line of {}", script.display()))
        };
        // At bf16 the reference's own arms (fp32 code with a Python loop) add nothing.
        let v = script_json(&args.precision, args.precision == "bf16")?;
        let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
        let row = ReferenceRow {
            case,
            plain_ms: f("plain_ms_median"),
            plain_peak_mib: f("plain_peak_above_import_mib"),
            joint_ms: f("joint_ms_median"),
            agm_ms: f("agm_ms_median"),
        };
        println!(
            "| {case} | {} | {} | {} | {} | {} | {} | {} / {} / {} |",
            args.large_batch_size,
            num(row.plain_ms, 1),
            num(row.joint_ms, 1),
            num(row.agm_ms, 1),
            times(row.agm_ms / row.joint_ms),
            num(row.plain_peak_mib, 0),
            num(f("plain_peak_mib"), 0),
            num(f("joint_peak_mib"), 0),
            num(f("agm_peak_mib"), 0),
        );
        out.push(row);
    }
    Ok(out)
}

/// `value` with `decimals` decimals, or `–` where it is not a number.
fn num(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "–".into()
    }
}

/// A ratio as `1.23x`, or `–` where it is not a number.
fn times(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2}x")
    } else {
        "–".into()
    }
}

/// The targets: agm's steps against the plain PyTorch step and the reference's AGM step, the
/// AGM steps against agm's joint step, and the peaks; each ratio the median over the runs (with
/// its range when there are several) and whether the median is within its limit. The plain step
/// takes its turns with agm's arms; the reference's own joint and AGM steps are timed after
/// them, so a load spike on a shared machine can hit one side of that ratio: several runs
/// (`--repeats`) give a median that one spike cannot move.
fn target_table(runs: &[(Vec<Row>, Vec<ReferenceRow>)], precision: agm_kernels::Precision) {
    let Some((first, _)) = runs.first() else { return };
    // bf16 must beat PyTorch's fp32 step by a margin; elsewhere match it at the same precision.
    let (joint_limit, anchor) = match precision {
        agm_kernels::Precision::Bf16 => (0.6, "plain PyTorch fp32 step"),
        _ => (1.0, "plain PyTorch step"),
    };
    println!();
    println!(
        "| targets{} | joint / {anchor} (≤ {joint_limit}) | fast/joint (≤ 1.15 at M = 2 modalities, ≤ 1.3 at M = 3) | faithful/joint (≤ 2.0) | joint peak / plain PyTorch peak (≤ 1.2) | fast/joint peak (≤ 1.2) | fast AGM / reference AGM (≤ 0.5) |",
        if runs.len() > 1 { format!(", median of {} runs (range)", runs.len()) } else { String::new() }
    );
    println!("|---|---|---|---|---|---|---|");
    for model in first.iter().map(|r| r.model.as_str()) {
        let Some(case) = reference_case(model) else { continue };
        // (our row, the reference's row) of every run that has both.
        let pairs: Vec<(&Row, &ReferenceRow)> = runs
            .iter()
            .filter_map(|(rows, cases)| {
                Some((rows.iter().find(|r| r.model == model)?, cases.iter().find(|c| c.case == case)?))
            })
            .collect();
        let Some(&(row, _)) = pairs.first() else { continue };
        let cell = |ratio: &dyn Fn(&Row, &ReferenceRow) -> f64, limit: f64| {
            let values: Vec<f64> = pairs.iter().map(|(r, c)| ratio(r, c)).filter(|v| v.is_finite()).collect();
            if values.is_empty() {
                return "–".to_string();
            }
            let value = median(&values);
            let met = if value <= limit { "met" } else { "not met" };
            let range = match values.len() {
                1 => String::new(),
                _ => format!(
                    "; {:.2}–{:.2}",
                    values.iter().copied().fold(f64::INFINITY, f64::min),
                    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                ),
            };
            format!("{value:.2}x ({met}{range})")
        };
        let fast_limit = if row.modalities <= 2 { 1.15 } else { 1.3 };
        println!(
            "| {model} vs {case}, b{} | {} | {} | {} | {} | {} | {} |",
            row.batch,
            cell(&|r, _| r.ms[0] / r.plain_ms.unwrap_or(f64::NAN), joint_limit),
            cell(&|r, _| r.ms[2] / r.ms[0], fast_limit),
            cell(&|r, _| r.ms[1] / r.ms[0], 2.0),
            cell(&|r, c| r.peak_mib[0] / c.plain_peak_mib, 1.2),
            cell(&|r, _| r.peak_mib[2] / r.peak_mib[0], 1.2),
            cell(&|r, c| r.ms[2] / c.agm_ms, 0.5),
        );
    }
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agm_fast_shows_a_dash_on_models_that_always_run_the_faithful_passes() {
        let opts = agm_benches::reference_shapes(4);
        let arm = |model: &str, arm| StepBench::for_preset(model, &opts, arm, &Device::Cpu).unwrap().is_distinct_arm();
        assert!(!arm("ave-psp", "agm-fast"));
        assert!(arm("ave-psp", "agm") && arm("av-digits-late", "agm-fast"));
        let row = Row {
            model: "ave-psp".into(),
            modalities: 2,
            batch: 2,
            ms: [40.5, 119.6, f64::NAN],
            peak_mib: [49.0, 77.0, f64::NAN],
            plain_ms: None,
        };
        assert_eq!(row_line(&row), "| ave-psp | 2 | 2 | 40.50 | 119.60 | – | 2.95x | – | 49 / 77 / – | – | – | – |");
        let note = no_fast_note(&["ave-psp", "mosei-mat"]);
        assert!(note.starts_with("–: ave-psp, mosei-mat always run the faithful Shapley passes"), "{note}");
    }
}
