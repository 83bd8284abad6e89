"""An `epoch_schedule` parity case (FORMAT v1 of the shared golden fixtures, §3 and §7) made by
running the official AGM code's epoch loops.

Usage: python scripts/golden/epoch_schedule.py <AGM_ICCV2023 tree> <out dir> [--seed N]
       [--run DATASET,METHOD,EPOCHS[,key=value...]]... [--inputs-from <case dir>]
       [--modulation-starts E] [--modulation-ends E]
(PyTorch, NumPy and safetensors from PyPI, CPU.) Each `--run` adds one run to the case: DATASET
`avmnist` or `urfunny`, METHOD `MSLR` or `MSES`, EPOCHS the length of the synthetic per-epoch
inputs (the loop is sized to run exactly that many epochs unless MSES ends it). Options that
shape the inputs (one random generator per run, seeded by `--seed` and the run's position):
  name=NAME                  the run's name (default `run<i>_<dataset>_<method>`)
  acc_<m>=SHAPE              MSLR accuracies: `random` (uniform in acc=LO:HI, default 0.2:0.8),
                             `ramp` (rising from LO to HI with noise), `const@V`
  loss_<m>=SHAPE             MSES losses: `random` (uniform in loss=LO:HI, default 0.75:2.5),
                             `best@K` (falls until epoch K, then rises: a plateau, so the
                             modality stops after the patience and reloads K's checkpoint),
                             `flat` (lowest at epoch 1 and rising: argmin stays 1, the AV-MNIST
                             crash / the UR-Funny skipped reload), `const@V`
  score=LO:HI                the running training scores train() returns (default 0.5:2.5)
  window=LO:HI               this run's cfgs.modulation_starts/ends (default: the global ones)
`--inputs-from DIR` takes the runs (name, dataset, method, inputs) of an existing epoch_schedule
case instead, to check this harness against it. The modulation window defaults to the official
defaults (`utils/config.py:parse_args`, `--modulation_starts 0 --modulation_ends 20`); outside
it the official train() applies no multiplier, which the case records as a multiplier of 1.
The shared case tests/fixtures/golden/mslr_mses is reproduced exactly (every value, tensor and
event) by `--inputs-from tests/fixtures/golden/mslr_mses --modulation-ends 100`: its multipliers
past epoch 20 are those of a window reaching past its runs. Examples: two modalities stopping in
the same epoch (two reloads of one checkpoint, then exit) and a UR-Funny termination in which
every stop skips its reload: `--seed 18 --modulation-ends 100 --run
avmnist,MSES,30,loss_audio=best@5,loss_visual=best@5 --run
urfunny,MSES,40,loss_audio=flat,loss_visual=flat,loss_text=flat`; the AV-MNIST crash:
`--run avmnist,MSES,20,loss_visual=flat`; long MSLR: `--modulation-ends 100 --run avmnist,MSLR,60`.

Official repository lihong2303/AGM_ICCV2023. Official code that runs:
`run/AVMNIST_main.py:AVMNIST_main` and `run/URFunny_main.py:URFunny_main` (the whole epoch loop:
the MSLR memory and ratios, the MSES smoothing, minimum, checkpoint `torch.save`, patience,
`torch.load` reload, `exit()`), the configuration `utils/config.py:Config` (its defaults, with
`--dataset`, `--methods`, `--EPOCHS`, `--expt_dir`, `--device cpu` and the window set), and once
per epoch the official `train()` on a probe model, to read the per-modality multiplier it applies.
Swaps, as FORMAT.md §3.1 describes them: the task (model, optimizer, loaders) is a stand-in whose
model holds only an epoch tag and one parameter; `train()` is a stub that records the ratios and
running scores it is called with, tags the model with the epoch and returns the run's
`train_score_<m>`; `test()` / `validate()` return the run's `acc`, `acc_<m>` and `loss_<m>`; the
logger is the official one, muted; TensorBoard and scikit-learn are stubs (never called).
How values are read: `during_epoch` from the stub train()'s arguments and the model's tag;
`grad_multiplier` from the official train() run for one step on a probe model whose per-modality
parameters (`<m>_encoder.probe`, the names its rule selects) get a gradient of exactly 1 (so
the gradient after its edit is the multiplier itself); `init_multiplier` the same way at
ratio 1; `after_update` and `running_scores_after_update` from the official loop's own
variables (its frame), at the next train() call, at `exit()` or when the loop ends;
checkpoints from wrapped `torch.save` / `torch.load` (real files in a scratch folder, loaded with
`weights_only=False` as the PyTorch of the time did), so a missing file raises the official
FileNotFoundError; `patience` from a probe run of the official loop whose losses never improve
(the first stop happens at epoch patience + 2). Everything is float64 (Python floats).
"""

import argparse
import importlib
import inspect
import json
import logging
import os
import sys
import tempfile
import types

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stubs import stub  # noqa: E402

# What differs between the two official loops.
SEMANTICS = {
    "avmnist": {
        "cfg_dataset": "AV-MNIST", "mods": ["audio", "visual"], "module": "run.AVMNIST_main",
        "main": "AVMNIST_main", "task": ("tasks.AVMNIST_task", "AVMNIST_Task"), "eval": "test",
        # `for epoch in range(1, cfgs.EPOCHS)`: EPOCHS - 1 epochs.
        "cfg_epochs": lambda n: n + 1,
        # test() returns (acc, acc_a, acc_v, loss_a, loss_v); train() returns (score_a, score_v).
        "eval_returns": ["acc", "acc_audio", "acc_visual", "loss_audio", "loss_visual"],
        "train_returns": ["audio", "visual"],
        "score_arg": "last_score_{}", "running_local": "epoch_score_{}",
    },
    "urfunny": {
        "cfg_dataset": "URFunny", "mods": ["audio", "visual", "text"], "module": "run.URFunny_main",
        "main": "URFunny_main", "task": ("tasks.URFunny_task", "Funny_Task"), "eval": "validate",
        # `for epoch in range(1, cfgs.EPOCHS + 1)`.
        "cfg_epochs": lambda n: n,
        "eval_returns": ["acc", "acc_visual", "acc_audio", "acc_text", "loss_visual", "loss_audio", "loss_text"],
        "train_returns": ["visual", "audio", "text"],
        "score_arg": "last_train_score_{}", "running_local": "train_score_{}",
    },
}
MAX_PATIENCE_PROBE = 2000


class _Writer:
    """TensorBoard's SummaryWriter, writing nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def add_scalar(self, *args, **kwargs):
        pass

    def add_scalars(self, *args, **kwargs):
        pass


class _Exited(Exception):
    """Raised by the stand-in for `exit()`."""


class TagModel(nn.Module):
    """The task's model: an epoch tag (a buffer, so checkpoints carry it) and one parameter for
    the optimizer."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.register_buffer("epoch_tag", torch.zeros((), dtype=torch.float64))


class _UnitGrad(torch.autograd.Function):
    """Zero logits of shape [batch, classes] whose backward gives the parameter a gradient of
    exactly 1, whatever the loss."""

    @staticmethod
    def forward(ctx, p, batch, classes):
        return p.new_zeros(batch, classes)

    @staticmethod
    def backward(ctx, grad):
        return torch.ones((), dtype=torch.float64), None, None


class ProbeModel(nn.Module):
    """A late-fusion model with the official interface (AV-MNIST `(audio, image)` →
    `(out_a, out_v, out)`; UR-Funny `(vision, audio, text, lengths)` → `(m_a, m_v, m_t, out)`)
    and one scalar parameter per modality, `<m>_encoder.probe`."""

    def __init__(self, mods):
        super().__init__()
        self.mods, self.mode = mods, "train"
        for m in mods:
            enc = nn.Module()
            enc.probe = nn.Parameter(torch.zeros((), dtype=torch.float64))
            setattr(self, f"{m}_encoder", enc)

    def forward(self, *inputs):
        b = inputs[0].shape[0]
        outs = [_UnitGrad.apply(getattr(self, f"{m}_encoder").probe, b, 2) for m in self.mods]
        return (*outs, sum(outs))


def official_cfgs(tree_config, sem, method, epochs, expt_dir, window):
    """The official Config with its defaults and the settings of this run."""
    argv = ["main.py", "--dataset", sem["cfg_dataset"], "--methods", method, "--modality", "Multimodal",
            "--EPOCHS", str(sem["cfg_epochs"](epochs)), "--expt_dir", expt_dir, "--expt_name", "epoch_schedule",
            "--device", "cpu"]
    if window is not None:
        argv += ["--modulation_starts", str(window[0]), "--modulation_ends", str(window[1])]
    saved = sys.argv
    sys.argv = argv
    try:
        return tree_config.Config()
    finally:
        sys.argv = saved


def probe_multipliers(official_train, sem, bound_args):
    """Runs the official train() for one step on the probe model with the epoch, cfgs and
    ratios of `bound_args`; returns the gradient of each `<m>_encoder.probe` after its edit."""
    mods = sem["mods"]
    model = ProbeModel(mods)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    x = torch.zeros(1, 1)
    label = torch.zeros(1, dtype=torch.long)
    if len(mods) == 2:
        loader = [(x, x, label)]
    else:
        loader = [([x, x, x], torch.ones(1), torch.zeros(1), label[:, None])]
    args = dict(bound_args)
    args.update(model=model, train_dataloader=loader, optimizer=optimizer, scheduler=scheduler,
                writer=_Writer(), logger=_muted_logger())
    for m in mods:
        args[sem["score_arg"].format(m[0])] = 0.0
    official_train(**args)
    return {m: float(getattr(model, f"{m}_encoder").probe.grad) for m in mods}


def _muted_logger():
    logger = logging.getLogger("epoch_schedule_probe")
    logger.setLevel(logging.ERROR)
    return logger


def run_official(official, config, sem, method, inputs, epochs, window, probe=True):
    """One run of the official epoch loop on the synthetic `inputs`, in a scratch folder that is
    removed afterwards. Returns the records."""
    with tempfile.TemporaryDirectory(prefix="epoch_schedule_") as expt_dir:
        try:
            return _run_official(official, config, sem, method, inputs, epochs, window, probe, expt_dir)
        finally:
            # The official logger's file handler points into the scratch folder.
            for h in list(logging.getLogger("train_logger").handlers):
                h.close()
                logging.getLogger("train_logger").removeHandler(h)


def _run_official(official, config, sem, method, inputs, epochs, window, probe, expt_dir):
    mods = sem["mods"]
    main = getattr(official, sem["main"])
    official_train = official.__dict__["_epoch_schedule_train"]
    train_sig = inspect.signature(official_train)
    eval_sig = inspect.signature(official.__dict__["_epoch_schedule_eval"])
    cfgs = official_cfgs(config, sem, method, epochs, expt_dir, window)
    st = {"frame": None, "epochs": [], "events": None, "loading": None}

    def after_update(frame):
        loc = frame.f_locals
        out = {}
        for m in mods:
            a = {"lr_ratio": float(loc[f"{m}_lr_ratio"])}
            if method == "MSLR":
                a["memory"] = [float(v) for v in loc[f"{m}_lr_memory"]]
            else:
                a["smoothed_loss"] = float(loc[f"{m}_batch_loss"])
                a["min_smoothed_loss"] = float(loc[f"min_test_{m}_loss"])
                a["argmin_epoch"] = float(loc[f"{m}_argmax_loss_epoch"])
            out[m] = a
        return out

    def running_after(frame):
        return {m: float(frame.f_locals[sem["running_local"].format(m[0])]) for m in mods}

    def close_epoch(frame, with_running=True):
        rec = st["epochs"][-1]
        rec["after_update"] = after_update(frame)
        rec["checkpoints_saved"] = st["events"]["saved"]
        rec["checkpoints_loaded"] = st["events"]["loaded"]
        if with_running:
            rec["running_scores_after_update"] = running_after(frame)

    def train(*args, **kwargs):
        frame = sys._getframe(1)
        st["frame"] = frame
        if st["epochs"]:
            close_epoch(frame)
        b = train_sig.bind(*args, **kwargs)
        b.apply_defaults()
        a = b.arguments
        epoch, model = a["epoch"], a["model"]
        during = {
            "lr_ratio": {m: float(a[f"{m}_lr_ratio"]) for m in mods},
            "grad_multiplier": probe_multipliers(official_train, sem, a) if probe else {},
            "running_score_passed_in": {m: float(a[sem["score_arg"].format(m[0])]) for m in mods},
            "model_restored_from_epoch_tag": float(model.epoch_tag),
        }
        st["epochs"].append({"epoch": epoch, "during_epoch": during})
        st["events"] = {"saved": [], "loaded": []}
        with torch.no_grad():
            model.epoch_tag.fill_(epoch)
        scores = {m: float(inputs[f"train_score_{m}"][epoch - 1]) for m in mods}
        return tuple(scores[m] for m in sem["train_returns"])

    def evaluate(*args, **kwargs):
        b = eval_sig.bind(*args, **kwargs)
        epoch, model = b.arguments["epoch"], b.arguments["model"]
        assert float(model.epoch_tag) == epoch, "evaluation must see the model trained in this epoch"
        return tuple(float(inputs[k][epoch - 1]) for k in sem["eval_returns"])

    def not_called(*args, **kwargs):
        raise RuntimeError("this official function is not part of the case")

    def task(cfgs):
        model = TagModel()
        optimizer = torch.optim.SGD(model.parameters(), lr=cfgs.learning_rate, momentum=0.9, weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfgs.lr_decay_step, gamma=cfgs.lr_decay_ratio)
        return types.SimpleNamespace(model=model, optimizer=optimizer, scheduler=scheduler, train_dataloader=[],
                                     test_dataloader=[], valid_dataloader=[], dep_dataloader=[])

    def save(obj, path, *args, **kwargs):
        st["events"]["saved"].append(os.path.basename(path))
        return original_save(obj, path, *args, **kwargs)

    def load(path, *args, **kwargs):
        st["loading"] = os.path.basename(path)
        kwargs.setdefault("weights_only", False)
        obj = original_load(path, *args, **kwargs)
        st["events"]["loaded"].append(os.path.basename(path))
        return obj

    def official_exit(*args):
        close_epoch(sys._getframe(1), with_running=False)
        st["epochs"][-1]["exit_here"] = True
        raise _Exited()

    real_get_logger = official.get_logger
    patches = {
        "train": train, sem["eval"]: evaluate, sem["task"][1]: task, "exit": official_exit,
        "get_logger": lambda name, logger_dir=None, **kw: real_get_logger(name, logger_dir=logger_dir,
                                                                           is_mute_logger=True),
        "extract_mm_feature": not_called,
        "test_compute_weight" if sem["eval"] == "test" else "validate_compute_weight": not_called,
    }
    saved_globals = {k: official.__dict__.get(k, _MISSING) for k in patches}
    original_save, original_load = torch.save, torch.load
    official.__dict__.update(patches)
    torch.save, torch.load = save, load
    error, outcome = None, "completed"
    try:
        main(cfgs)
        close_epoch(st["frame"])
    except _Exited:
        outcome = f"exit() after epoch {st['epochs'][-1]['epoch']} (all modalities stopped)"
    except Exception as exc:  # the official code's own error, recorded as the case's `error`
        if not st["epochs"]:
            raise
        during = st["epochs"].pop()["epoch"]
        message = str(exc)
        if isinstance(exc, FileNotFoundError) and st["loading"]:
            message = f"missing checkpoint file {st['loading']}"
        error = {"type": type(exc).__name__, "message": message, "during_epoch": during}
        outcome = f"official code raised {error['type']} during the end-of-epoch update of epoch {during}"
    finally:
        torch.save, torch.load = original_save, original_load
        for k, v in saved_globals.items():
            if v is _MISSING:
                official.__dict__.pop(k, None)
            else:
                official.__dict__[k] = v
    return {"epochs": st["epochs"], "outcome": outcome, "error": error, "cfgs": cfgs}


_MISSING = object()


def read_init_multiplier(official, config, sem, method, window):
    """The official train()'s multipliers at ratio 1, at the first epoch inside the window."""
    cfgs = official_cfgs(config, sem, method, 1, tempfile.gettempdir(), window)  # writes nothing
    epoch = max(1, cfgs.modulation_starts)
    if epoch > cfgs.modulation_ends:
        sys.exit(f"the modulation window [{cfgs.modulation_starts}, {cfgs.modulation_ends}] holds no epoch")
    train = official.__dict__["_epoch_schedule_train"]
    b = inspect.signature(train).bind_partial(epoch=epoch, cfgs=cfgs, device="cpu")
    a = dict(b.arguments)
    for m in sem["mods"]:
        a[f"{m}_lr_ratio"] = 1.0
    return probe_multipliers(train, sem, a)


def read_patience(official, config, sem, window):
    """Runs the official MSES loop on losses that never improve after epoch 1: the first stop
    happens at epoch patience + 2 (the crash on AV-MNIST, the exit on UR-Funny)."""
    n = MAX_PATIENCE_PROBE
    inputs = {}
    for m in sem["mods"]:
        inputs[f"acc_{m}"] = [0.5] * n
        inputs[f"train_score_{m}"] = [1.0] * n
        inputs[f"loss_{m}"] = [1.0 + e for e in range(n)]
    inputs["acc"] = [0.5] * n
    r = run_official(official, config, sem, "MSES", inputs, n, window, probe=False)
    stopped = [rec["epoch"] for rec in r["epochs"]
               if any(rec.get("after_update", {}).get(m, {}).get("lr_ratio", 1.0) == 0.0 for m in sem["mods"])]
    first = min(stopped + ([r["error"]["during_epoch"]] if r["error"] else []), default=None)
    if first is None:
        sys.exit("the patience probe never stopped a modality")
    return first - 2


def parse_range(text):
    lo, hi = (float(v) for v in text.split(":"))
    return lo, hi


def make_inputs(rng, sem, method, n, opts):
    """Synthetic per-epoch inputs (FORMAT.md §3.1), in the key order of the shared case."""
    acc_lo, acc_hi = parse_range(opts.get("acc", "0.2:0.8"))
    sc_lo, sc_hi = parse_range(opts.get("score", "0.5:2.5"))
    l_lo, l_hi = parse_range(opts.get("loss", "0.75:2.5"))
    e = np.arange(1, n + 1, dtype=np.float64)

    def acc_seq(shape):
        if shape == "random":
            return rng.uniform(acc_lo, acc_hi, n)
        if shape == "ramp":
            return np.clip(acc_lo + (acc_hi - acc_lo) * (e - 1) / max(n - 1, 1) + rng.normal(0, 0.02, n), 0.01, 1.0)
        if shape.startswith("const@"):
            return np.full(n, float(shape[6:]))
        raise SystemExit(f"unknown accuracy shape `{shape}`")

    def loss_seq(shape):
        if shape == "random":
            return rng.uniform(l_lo, l_hi, n)
        if shape == "flat":
            start = rng.uniform(0.3, 0.6)
            # Rising after epoch 1: no smoothed value ever goes below the first loss.
            return start + np.concatenate([[0.0], np.cumsum(rng.uniform(0.005, 0.02, n - 1))])
        if shape.startswith("best@"):
            k = int(shape[5:])
            start, floor = rng.uniform(1.6, 2.4), rng.uniform(0.4, 0.9)
            step = (start - floor) / max(k - 1, 1)
            down = start - step * (e[:k] - 1) + rng.uniform(-0.2, 0.2, k) * step
            up = floor + np.cumsum(rng.uniform(0.02, 0.06, n - k))
            return np.concatenate([down, up])[:n]
        if shape.startswith("const@"):
            return np.full(n, float(shape[6:]))
        raise SystemExit(f"unknown loss shape `{shape}`")

    inputs = {"acc": rng.uniform(0.3, 0.8, n)}
    for m in sem["mods"]:
        inputs[f"acc_{m}"] = acc_seq(opts.get(f"acc_{m}", "random"))
        inputs[f"train_score_{m}"] = rng.uniform(sc_lo, sc_hi, n)
        inputs[f"loss_{m}"] = loss_seq(opts.get(f"loss_{m}", "random"))
    return {k: [float(v) for v in seq] for k, seq in inputs.items()}


def parse_run(spec):
    parts = spec.split(",")
    if len(parts) < 3:
        raise SystemExit(f"--run {spec}: expected DATASET,METHOD,EPOCHS[,key=value...]")
    dataset, method, epochs = parts[0], parts[1].upper(), int(parts[2])
    if dataset not in SEMANTICS or method not in ("MSLR", "MSES") or epochs < 1:
        raise SystemExit(f"--run {spec}: dataset avmnist|urfunny, method MSLR|MSES, epochs >= 1")
    opts = dict(p.split("=", 1) for p in parts[3:])
    return {"dataset": dataset, "method": method, "epochs": epochs, "opts": opts}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tree")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", action="append", default=[], help="DATASET,METHOD,EPOCHS[,key=value...]")
    ap.add_argument("--inputs-from", help="an epoch_schedule case whose runs' inputs are replayed")
    ap.add_argument("--modulation-starts", type=int, help="cfgs.modulation_starts (default: official)")
    ap.add_argument("--modulation-ends", type=int, help="cfgs.modulation_ends (default: official)")
    a = ap.parse_args()

    tree = os.path.abspath(a.tree)
    sys.path.insert(0, tree)
    stub("torch.utils.tensorboard", SummaryWriter=_Writer)
    stub("sklearn", linear_model=stub("sklearn.linear_model"))
    for sem in SEMANTICS.values():
        stub(sem["task"][0], **{sem["task"][1]: object})
    config = importlib.import_module("utils.config")
    modules = {}
    for key, sem in SEMANTICS.items():
        mod = importlib.import_module(sem["module"])
        mod.__dict__["_epoch_schedule_train"] = mod.train
        mod.__dict__["_epoch_schedule_eval"] = getattr(mod, sem["eval"])
        modules[key] = mod

    runs = [parse_run(s) for s in a.run]
    if a.inputs_from:
        with open(os.path.join(a.inputs_from, "case.json")) as f:
            src = json.load(f)
        for r in src["runs"]:
            seqs = r["inputs"]
            runs.append({"dataset": r["dataset"], "method": r["method"], "name": r.get("run"),
                         "epochs": len(seqs["acc"]), "inputs": seqs, "opts": {}})
    if not runs:
        raise SystemExit("nothing to run: give --run or --inputs-from")

    default_window = None
    if a.modulation_starts is not None or a.modulation_ends is not None:
        defaults = official_cfgs(config, SEMANTICS["avmnist"], "MSLR", 1, tempfile.gettempdir(), None)
        default_window = (a.modulation_starts if a.modulation_starts is not None else defaults.modulation_starts,
                          a.modulation_ends if a.modulation_ends is not None else defaults.modulation_ends)

    out_runs, tensors, patience_cache = [], {}, {}
    for i, r in enumerate(runs, start=1):
        sem, method, n = SEMANTICS[r["dataset"]], r["method"], r["epochs"]
        official, mods = modules[r["dataset"]], SEMANTICS[r["dataset"]]["mods"]
        window = parse_range(r["opts"]["window"]) if "window" in r["opts"] else default_window
        window = tuple(int(v) for v in window) if window is not None else None
        name = r["opts"].get("name") or r.get("name") or f"run{i}_{r['dataset']}_{method.lower()}"
        inputs = r.get("inputs") or make_inputs(np.random.default_rng([a.seed, i]), sem, method, n, r["opts"])
        res = run_official(official, config, sem, method, inputs, n, window)
        init = read_init_multiplier(official, config, sem, method, window)
        patience = None
        if method == "MSES":
            if (r["dataset"], window) not in patience_cache:
                patience_cache[(r["dataset"], window)] = read_patience(official, config, sem, window)
            patience = patience_cache[(r["dataset"], window)]
        cfgs = res["cfgs"]
        out_runs.append({
            "dataset": r["dataset"], "method": method, "modalities": mods, "init_multiplier": init,
            "patience": patience, "inputs": inputs, "epochs": res["epochs"], "outcome": res["outcome"],
            "error": res["error"], "run": name,
            # agm's extension of FORMAT.md §3: outside this window the official train() scales nothing.
            "modulation_window_epochs": [cfgs.modulation_starts, cfgs.modulation_ends],
            "official_cfgs_info": {"EPOCHS": cfgs.EPOCHS, "save_checkpoint": cfgs.save_checkpoint,
                                   "shape_options": r["opts"], "inputs_from": a.inputs_from if "inputs" in r else None},
        })
        for k, seq in inputs.items():
            tensors[f"{name}/input/{k}"] = torch.tensor(seq, dtype=torch.float64)
        for m in mods:
            tensors[f"{name}/expected/lr_ratio_after_update/{m}"] = torch.tensor(
                [e["after_update"][m]["lr_ratio"] for e in res["epochs"]], dtype=torch.float64)
            tensors[f"{name}/expected/grad_multiplier_during_epoch/{m}"] = torch.tensor(
                [e["during_epoch"]["grad_multiplier"][m] for e in res["epochs"]], dtype=torch.float64)
        stops = sum(1 for e in res["epochs"] for _ in e["checkpoints_loaded"])
        print(f"{name}: {len(res['epochs'])} epochs, {stops} reloads, {res['outcome']}")

    datasets = [d for d in SEMANTICS if any(r["dataset"] == d for r in runs)]
    functions = [f"run/{SEMANTICS[d]['module'].split('.')[1]}.py:{SEMANTICS[d]['main']}" for d in datasets]
    functions += [f"run/{SEMANTICS[d]['module'].split('.')[1]}.py:train (one probe step per epoch)" for d in datasets]
    case = {
        "case": os.path.basename(os.path.normpath(a.out)), "format_version": 1, "kind": "epoch_schedule",
        "dtype": "float64",
        "official_reference": {"repo": "lihong2303/AGM_ICCV2023", "commit": "5a65542", "functions": functions},
        "how": "The official epoch loops were CALLED with the task/model, train() and test()/validate() replaced "
               "by stubs that replay the synthetic per-epoch sequence (inputs.*); the MSLR/MSES bookkeeping, "
               "checkpoint save/reload and exit() are the official code. The stub train() records the ratios it "
               "receives and tags the model with the epoch number so that a checkpoint reload is visible as "
               "model_restored_from_epoch_tag. grad_multiplier is what the official train() applied in a one-step "
               "probe with the same epoch, cfgs and ratios (1 outside cfgs.modulation_starts..ends). Made by "
               "scripts/golden/epoch_schedule.py.",
        "seed": a.seed, "runs": out_runs,
    }
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(a.out, "tensors.safetensors"))


if __name__ == "__main__":
    main()
