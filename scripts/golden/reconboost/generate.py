"""Golden `method_steps` cases for agm's `reconboost` method, produced by the official code.

Official repository: https://github.com/huacong/ReconBoost, commit
14ab57ac26e0ad7badb29c4e08ec4ca9d4bb0932 (Hua et al., "ReconBoost: Boosting Can Achieve Modality
Reconcilement", ICML 2024).

Usage:
    python scripts/golden/reconboost/generate.py <extracted official repo> [<agm repo root>]
        [--name CASE --three --data-seed N ...]  (one extra case; `--help`)

It writes tests/fixtures/golden/reconboost/{case.json,tensors.safetensors} (M = 2, the official
`train.py`) and tests/fixtures/golden/reconboost3/... (M = 3, the official `train_MSA.py`).

What ran (all official code, unmodified, imported from the given repository):
- `train.main` (M = 2, dataset `CREMAD`) and `train_MSA.main` (M = 3, dataset `MSA`): the whole
  alternating-boosting loop, i.e. per stage the boosting phase (`epochs_per_stage` epochs of the
  reconcilement loss `boosting_loss + alpha * ga_loss` on the picked modality's learner, a fresh
  `optim.SGD(model.parameters(), ...)`) and the global rectification phase (`correct_epoch`
  epochs of `CrossEntropyLoss(net_ensemble.forward_grad(data))`, a fresh
  `optim.SGD(net_ensemble.parameters(), ...)`);
- `models.dynamic_net.DynamicNet` (`add`, `parameters`, `forward` with `mask_model`,
  `forward_grad`, the learnable `boost_rate`), its shared head classes `Head` (M = 2,
  fc1 -> ReLU -> fc2) and `MHead` (M = 3, one linear layer), shrunk by subclassing;
- `schedule.schedule_model` (fixed mode), `utils.check_status` (wrapped to stop after a few
  stages), `train.test` / `train_MSA.test`.

Swapped for the tiny case (nothing else): the uni-modal networks (`AudioNet`, `VisualNet`,
`MTextNet`, `MAudioNet`, `MVisualNet`) by `Linear(d_m, H) -> ReLU -> fc` (their `fc` is replaced
by the shared head before any use, as the official code does with `common_space`); the data
loaders by fixed batches visited in stored order (no shuffling); the heavy imports that only the
real data sets and backbones need (torchvision, librosa, tensorboard, ...) by stubs. CUDA calls
are no-ops; float32 casts of the ensemble output (`torch.as_tensor(..., dtype=torch.float32)`)
and of the inputs (`.float()`) keep float64, so the case is float64 throughout.

Two patches of official behaviour, both because of the test harness, not of the method:
- `train_MSA.schedule_model` is called with dataset `MOSEI`: `schedule.schedule_model` has no
  branch for `MSA` (the dataset name `train_MSA.py` passes) and returns None, so the script as
  published cannot run; the `MOSEI` branch is the 3-modality schedule text -> visual -> audio
  that `train_MSA.py`'s `pre_model` table is written for.
- Every `optim.SGD` the loop creates is a recording subclass (it stores the gradients it consumes
  and the parameters after each step). The official code builds a fresh SGD (fresh momentum
  buffers) at every phase; agm's ReconBoost resets the trainer's optimizer state at each phase
  (`fresh_optimizer_per_phase`, `EpochAction::ResetOptimizer`), so the official momentum 0.9
  runs as is. `--momentum-override X` runs with momentum X instead. Weight decay stays the
  official 5e-4.

Values per step (named as agm's `ReconBoost::state()` exposes them): `stage` (0-based), `phase`
("boost" or "rectify", the global rectification), `learner` (the stage's learner, a modality
index), `ensemble` (per modality: its learner is in the ensemble the step's loss uses; boosting
uses the ensemble minus the learner), `boosting_loss` (the batch mean of the official
`boosting_loss`, 0 while rectifying), `ga_loss` (the official detached MSE term, 0 at stage 0 and
while rectifying), `boost_rate` (the ensemble's boost rate during the step), `coefficients` (1 for
each modality whose encoder the step updates), `loss` (the value the official code
backpropagates: `loss.mean()` while boosting, the cross-entropy while rectifying).

The step's top-level `loss` is what agm's replay compares it with: the trainer's reported step
loss, the cross-entropy of the method's output. That output is the ensemble the stage ends with,
`boost_rate * sum of learner(x)` over the stage's ensemble plus its learner, computed here from
the official modules (tiny nets, official `Head`/`MHead` forward, `DynamicNet.boost_rate`) right
before each optimizer step; while rectifying it is the official loss itself (checked), while
boosting the official code does not compute it.
"""

import argparse
import importlib.machinery
import json
import os
import random
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn as nn

torch.set_default_dtype(torch.float64)

COMMIT = "14ab57ac26e0ad7badb29c4e08ec4ca9d4bb0932"
REPO = "huacong/ReconBoost"
Q = 64.0  # values are multiples of 1/Q (exact in float32)


def quantize_(t):
    with torch.no_grad():
        t.copy_(torch.round(t * Q) / Q)
    return t


# ---------------------------------------------------------------- CPU / float64 patches
torch.Tensor.cuda = lambda self, *a, **k: self
torch.nn.Module.cuda = lambda self, *a, **k: self
_orig_float = torch.Tensor.float
torch.Tensor.float = lambda self, *a, **k: self if self.dtype == torch.float64 else _orig_float(self, *a, **k)
torch.cuda.manual_seed = lambda *a, **k: None


class TorchShim(types.ModuleType):
    """The module `torch` as the official files see it: float32 casts keep float64, devices drop."""

    def __init__(self):
        super().__init__("torch_shim")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def as_tensor(data, dtype=None, device=None):
        if dtype == torch.float32:
            dtype = torch.float64
        return torch.as_tensor(data, dtype=dtype)

    @staticmethod
    def tensor(data, *a, device=None, **k):
        return torch.tensor(data, *a, **k)

    @staticmethod
    def device(*a, **k):
        return torch.device("cpu")


def stub_modules():
    """Heavy imports only the real data sets / backbones need."""
    import torch._dynamo  # noqa: F401  (imported before the stubs: it probes optional packages)

    names = [
        "torchvision", "torchvision.models",
        "models.CREMA.basic_model", "models.MView40.image", "loaders.CramedDataset", "loaders.AVEDataset",
        "loaders.MView40.train_dataset", "loaders.MView40.test_dataset", "models.MOSEI.LF_DNN",
        "loaders.MOSEIDataset",
    ]
    for n in names:
        mod = types.ModuleType(n)
        mod.__spec__ = importlib.machinery.ModuleSpec(n, None)
        for attr in ["AudioNet", "VisualNet", "FeatureNet", "CramedDataset", "AVEDataset", "MView_train",
                     "MView_test", "MTextNet", "MAudioNet", "MVisualNet", "MMDataLoader"]:
            setattr(mod, attr, None)
        sys.modules[n] = mod
    tb = types.ModuleType("torch.utils.tensorboard")
    tb.__spec__ = importlib.machinery.ModuleSpec("torch.utils.tensorboard", None)

    class SummaryWriter:
        def __init__(self, *a, **k):
            pass

        def add_scalar(self, *a, **k):
            pass

    tb.SummaryWriter = SummaryWriter
    sys.modules["torch.utils.tensorboard"] = tb


# ---------------------------------------------------------------- recording
class Recorder:
    def __init__(self):
        self.reset()

    def reset(self):
        self.names = {}  # id(param) -> agm name
        self.all_params = {}  # agm name -> param (for params_after)
        self.fixed = {}  # agm name -> tensor never trained by the official code (agm's fusion head)
        self.steps = []
        self.pending_loss = None
        self.pending_ga = None
        self.n_optimizers = 0
        self.momentum = 0.0
        self.created_models = {}
        self.ensemble = None  # the official DynamicNet
        self.plan = None  # step index -> modality names of F_{E ∪ {learner}}
        self.batches = None  # step index -> {modality: input}, labels

    def reported_output_ce(self):
        """CE of the ensemble this stage ends with, `boost_rate * Σ learner(x)` over the stage's
        ensemble plus its learner, from the official modules before the step: what agm's trainer
        reports as a step's loss (the cross-entropy of the method's output)."""
        k = len(self.steps)
        members, (xs, y) = self.plan(k), self.batches(k)
        with torch.no_grad():
            out = sum(self.created_models[m](xs[m]) for m in members) * self.ensemble.boost_rate
            return float(nn.functional.cross_entropy(out, y))

    def register(self, name, param):
        self.names[id(param)] = name
        self.all_params[name] = param


REC = Recorder()

_orig_backward = torch.Tensor.backward


def recording_backward(self, *a, **k):
    REC.pending_loss = float(self.detach().item())
    return _orig_backward(self, *a, **k)


torch.Tensor.backward = recording_backward


class RecordingMSE(nn.MSELoss):
    def forward(self, a, b):
        out = super().forward(a, b)
        REC.pending_ga = float(out.detach().item())
        return out


class RecordingSGD(torch.optim.SGD):
    """`optim.SGD` as the official loop calls it; records every step."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, **k):
        params = list(params)
        self.phase = "boost" if REC.n_optimizers % 2 == 0 else "rectify"
        REC.n_optimizers += 1
        self.official_momentum = momentum
        self.weight_decay_used = weight_decay
        self.lr_used = lr
        REC.sgd = dict(lr=lr, official_momentum=momentum, weight_decay=weight_decay)
        used = momentum if REC.momentum is None else REC.momentum
        super().__init__(params, lr=lr, momentum=used, weight_decay=weight_decay, **k)

    def step(self, closure=None):
        grads = {}
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    grads[REC.names[id(p)]] = p.grad.detach().clone()
        reported = REC.reported_output_ce()
        out = super().step(closure)
        after = {n: p.detach().clone() for n, p in REC.all_params.items()}
        after.update({n: t.clone() for n, t in REC.fixed.items()})
        REC.steps.append(dict(phase=self.phase, reported=reported, loss=REC.pending_loss, ga=REC.pending_ga, grads=grads, after=after))
        REC.pending_loss = None
        REC.pending_ga = None
        return out


OptimShim = types.SimpleNamespace(SGD=RecordingSGD)


# ---------------------------------------------------------------- tiny networks
class TinyUni(nn.Module):
    """`Linear(d, H) -> ReLU -> fc`, the official uni-modal net's shape (encoder, then `fc`)."""

    def __init__(self, modality, d, hidden, classes):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, classes)  # replaced by the shared head before any use
        for p in self.enc.parameters():
            quantize_(p)
        REC.register(f"net.{modality}_encoder.0.weight", self.enc[0].weight)
        REC.register(f"net.{modality}_encoder.0.bias", self.enc[0].bias)
        REC.created_models[modality] = self

    def forward(self, x, global_ft=False):
        h = self.enc(x.reshape(x.shape[0], -1))
        out = self.fc(h)
        return (out, h) if global_ft else out


def tiny_head_classes(dn, hidden, head_hidden, classes):
    """Subclasses of the official shared heads with tiny sizes; `forward` stays official."""

    class TinyHead(dn.Head):
        def __init__(self, input_dim=None, output_dim=None):
            nn.Module.__init__(self)
            self.fc1 = nn.Linear(hidden, head_hidden)
            self.relu = nn.ReLU()
            self.fc2 = nn.Linear(head_hidden, classes)
            for n, p in self.named_parameters():
                quantize_(p)
                REC.register(f"reconboost.head.{n}", p)

    class TinyMHead(dn.MHead):
        def __init__(self, input_dim=None, output_dim=None):
            nn.Module.__init__(self)
            self.fc = nn.Linear(hidden, classes)
            for n, p in self.named_parameters():
                quantize_(p)
                REC.register(f"reconboost.head.{n}", p)

    return TinyHead, TinyMHead


def data(modalities, dims, n, classes, seed):
    g = torch.Generator().manual_seed(seed)
    xs = {m: torch.round((torch.rand(n, d, generator=g) * 4 - 2) * Q) / Q for m, d in zip(modalities, dims)}
    y = torch.randint(0, classes, (n,), generator=g)
    return xs, y


def fusion_head(modalities, hidden, classes, seed):
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / (hidden * len(modalities)) ** 0.5
    w = torch.round((torch.rand(classes, hidden * len(modalities), generator=g) * 2 - 1) * bound * Q) / Q
    b = torch.round((torch.rand(classes, generator=g) * 2 - 1) * bound * Q) / Q
    return {"net.head.fc.weight": w, "net.head.fc.bias": b}


# ---------------------------------------------------------------- one case
def run_case(official, out_dir, *, case, three, sizes, hyper, stages, momentum, data_seed=None, init_seed=None):
    REC.reset()
    REC.momentum = momentum
    modalities = ["audio", "visual", "text"] if three else ["audio", "visual"]
    B, C, H = sizes["batch"], sizes["classes"], sizes["hidden"]
    dims = sizes["input_dims"]
    S = sizes["steps_per_epoch"]
    N = S * B
    xs, y = data(modalities, dims, N, C, seed=1234 + (3 if three else 2) if data_seed is None else data_seed)
    REC.fixed = fusion_head(modalities, H, C, seed=(99 if data_seed is None else data_seed) + len(modalities))

    import models.dynamic_net as dn
    import schedule as sched

    TinyHead, TinyMHead = tiny_head_classes(dn, H, hyper.get("head_hidden", 0), C)
    dn.Head = TinyHead
    dn.MHead = TinyMHead
    dn.torch = TorchShim()

    tmp = tempfile.mkdtemp(prefix="reconboost-golden-")
    os.chdir(tmp)  # train_MSA creates ./cache/Schedule at import
    n_stages = stages

    if not three:
        import train as T

        batches = [(xs["audio"][k * B:(k + 1) * B], xs["visual"][k * B:(k + 1) * B], y[k * B:(k + 1) * B])
                   for k in range(S)]
        T.AudioNet = lambda dataset=None: TinyUni("audio", dims[0], H, C)
        T.VisualNet = lambda dataset=None: TinyUni("visual", dims[1], H, C)
        T.CramedDataset = lambda dataset_dir=None, mode=None: mode
        T.DataLoader = lambda dataset, **k: batches
        args = argparse.Namespace(
            dataset="CREMAD", dataset_path="", n_class=C, batch_size=B, boost_rate=hyper["boost_rate"],
            n_worker=0, epochs_per_stage=hyper["epochs_per_stage"], correct_epoch=hyper["correct_epoch"],
            common_space=True, use_lr=True, m_lr=hyper["lr"], e_lr=hyper["lr"], use_br=True,
            use_pretrain=False, m1ckpt="", m2ckpt="", use_ga=True, weight1=hyper["weight1"],
            weight2=hyper["weight2"], alpha=hyper["alpha"], ckpt_dir=os.path.join(tmp, "ckpt"),
            use_tensorboard=True, tensorboard_dir=os.path.join(tmp, "tb"), ensemble_ckpt_path="",
            uni_ckpt_path="")
        mod = T
        official_schedule = ["audio", "visual"]
        functions = ["train.main", "train.test", "models.dynamic_net.DynamicNet", "models.dynamic_net.Head",
                     "schedule.schedule_model", "utils.check_status"]
    else:
        import train_MSA as T

        order = {"vision": "visual", "audio": "audio", "text": "text"}
        batches = [{**{k: xs[v][i * B:(i + 1) * B] for k, v in order.items()},
                    "labels": {"M": y[i * B:(i + 1) * B]}} for i in range(S)]
        T.MTextNet = lambda: TinyUni("text", dims[2], H, C)
        T.MAudioNet = lambda: TinyUni("audio", dims[0], H, C)
        T.MVisualNet = lambda: TinyUni("visual", dims[1], H, C)
        T.MMDataLoader = lambda args=None: {"train": batches, "test": batches}
        T.schedule_model = lambda stage, dataset: sched.schedule_model(stage=stage, dataset="MOSEI")
        args = argparse.Namespace(
            dataset="MSA", dataset_name="mosei", featurePath="", seq_lens=[1, 1, 1], feature_dims=dims,
            need_data_aligned=False, dataset_path="", n_class=C, batch_size=B, boost_rate=hyper["boost_rate"],
            n_worker=0, epochs_per_stage=hyper["epochs_per_stage"], correct_epoch=hyper["correct_epoch"],
            global_ft=True, fixed=True, common_space=True, train_mode=True, MASK=True, use_val=False,
            use_lr=True, m_lr=hyper["lr"], e_lr=hyper["lr"], use_br=True, use_pretrain=False, use_ga=True,
            ga_mse=True, ga_cos=False, use_fusion=False, weight1=hyper["weight1"], weight2=hyper["weight2"],
            alpha=hyper["alpha"], ensemble_ckpt_path="", uni_ckpt_path="")
        mod = T
        official_schedule = ["text", "visual", "audio"]
        functions = ["train_MSA.main", "train_MSA.test", "models.dynamic_net.DynamicNet",
                     "models.dynamic_net.MHead", "schedule.schedule_model (MOSEI branch)", "utils.check_status"]

    mod.optim = OptimShim
    mod.torch = TorchShim()
    mod.device = torch.device("cpu")
    mod.nn = types.SimpleNamespace(**{k: getattr(nn, k) for k in dir(nn) if not k.startswith("_")})
    mod.nn.MSELoss = RecordingMSE
    mod.check_status = lambda stage: stage < n_stages
    if init_seed is not None:
        # the official setup_seed with another seed (it hard-codes 0)
        mod.setup_seed = lambda: (torch.manual_seed(init_seed), random.seed(init_seed))

    E1, E2 = hyper["epochs_per_stage"], hyper["correct_epoch"]

    def plan(k):
        stage = (k // S) // (E1 + E2)
        return {official_schedule[s % len(modalities)] for s in range(stage + 1)}

    REC.plan = plan
    REC.batches = lambda k: ({m: xs[m][(k % S) * B:(k % S + 1) * B] for m in modalities}, y[(k % S) * B:(k % S + 1) * B])

    # Initial values: after setup_seed the official main builds the nets and the head; capture
    # them at the first optimizer construction (before any step).
    init = {}
    orig_init = RecordingSGD.__init__

    def capture_init(self, *a, **k):
        if not init:
            init.update({n: p.detach().clone() for n, p in REC.all_params.items()})
        orig_init(self, *a, **k)

    RecordingSGD.__init__ = capture_init
    # boost_rate is created inside DynamicNet.__init__; register it when it is.
    orig_dn_init = dn.DynamicNet.__init__

    def dn_init(self, *a, **k):
        orig_dn_init(self, *a, **k)
        REC.register("reconboost.boost_rate", self.boost_rate)
        REC.ensemble = self

    dn.DynamicNet.__init__ = dn_init
    try:
        if three:
            mod.main(args=args)
        else:
            mod.main(args=args, this_task="CREMAD")
    finally:
        RecordingSGD.__init__ = orig_init
        dn.DynamicNet.__init__ = orig_dn_init
    init.update(REC.fixed)

    # ---- assemble the case
    M = len(modalities)
    sched_idx = [modalities.index(m) for m in official_schedule]
    assert len(REC.steps) == n_stages * (E1 + E2) * S, len(REC.steps)
    steps = []
    tensors = {}
    for m, x in xs.items():
        tensors[f"train/input/{m}"] = x
    tensors["train/label"] = y.to(torch.int64)

    def to_saved(name, t):
        return t.reshape(1) if name == "reconboost.boost_rate" else t

    for name, t in init.items():
        tensors[f"init/params/{name}"] = to_saved(name, t)
    beta = float(init["reconboost.boost_rate"].reshape(-1)[0])
    for k, rec in enumerate(REC.steps):
        step = k + 1
        epoch = k // S + 1
        stage = (epoch - 1) // (E1 + E2)
        rectify = (epoch - 1) % (E1 + E2) >= E1
        assert rec["phase"] == ("rectify" if rectify else "boost")
        learner = sched_idx[stage % M]
        boosted_before = {sched_idx[s % M] for s in range(stage)}
        if rectify:
            assert abs(rec["reported"] - rec["loss"]) < 1e-12, (rec["reported"], rec["loss"])
            members = boosted_before | {learner}
            ens = [i in members for i in range(M)]
            coeff = [1.0 if e else 0.0 for e in ens]
            boosting, ga = 0.0, 0.0
        else:
            ens = [i in boosted_before and i != learner for i in range(M)]
            coeff = [1.0 if i == learner else 0.0 for i in range(M)]
            ga = rec["ga"] if stage > 0 else 0.0
            assert (rec["ga"] is None) == (stage == 0)
            boosting = rec["loss"] - hyper["alpha"] * ga
        steps.append({
            # `loss` is what the step differentiates (METHODS.md): the official backpropagated loss.
            "step": step, "epoch": epoch, "loss": rec["loss"],
            "values": {
                "loss": rec["loss"],
                "coefficients": coeff, "stage": stage, "phase": "rectify" if rectify else "boost",
                "learner": learner, "ensemble": ens, "boosting_loss": boosting, "ga_loss": ga,
                "boost_rate": beta,
            },
        })
        beta = float(rec["after"]["reconboost.boost_rate"].reshape(-1)[0])
        for name, t in rec["after"].items():
            tensors[f"step{step}/params_after/{name}"] = to_saved(name, t)
        for name, t in rec["grads"].items():
            tensors[f"step{step}/grad_final/{name}"] = to_saved(name, t)

    params = []
    for name in sorted(init):
        t = to_saved(name, init[name])
        if name.startswith("net.") and "_encoder." in name:
            role = "modality:" + name[len("net."):].split("_encoder.")[0]
        elif name.startswith("net."):
            role = "shared"
        else:
            role = "method"
        params.append({"name": name, "shape": list(t.shape), "role": role})

    method_config = {
        "weight1": hyper["weight1"], "weight2": hyper["weight2"], "alpha": hyper["alpha"],
        "boost_rate": hyper["boost_rate"], "epochs_per_stage": E1, "correct_epochs": E2,
        "head_hidden": hyper.get("head_hidden", 0), "use_ga": True,
        "schedule": official_schedule,
    }
    doc = {
        "case": case, "format_version": 1, "kind": "method_steps", "dtype": "float64",
        "official_reference": {"repo": REPO, "commit": COMMIT, "functions": functions},
        "method": "reconboost", "method_config": method_config, "modalities": modalities,
        "sizes": {"batch": B, "classes": C, "hidden": H, "input_dims": dims, "epochs": n_stages * (E1 + E2),
                  "steps_per_epoch": S},
        "optimizer": {"kind": "sgd", "lr": hyper["lr"],
                      "momentum": REC.sgd["official_momentum"] if momentum is None else momentum,
                      "weight_decay": REC.sgd["weight_decay"]},
        "parameters": params, "steps": steps,
        "notes": (
            f"{n_stages} stages of {E1} boosting + {E2} rectification epochs; the official loop builds "
            f"a fresh SGD per phase (momentum {REC.sgd['official_momentum']}), which agm's ReconBoost "
            "matches by resetting the optimizer's state at each phase. boost_rate is a 0-d parameter officially, "
            "stored with shape [1]. The model's fusion head net.head.fc is not part of the official "
            "model: it is never trained (no gradient) and is carried unchanged. steps[].loss (and "
            "values.loss) is the loss the official code backpropagates."),
    }
    out = Path(out_dir) / case
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "tensors.safetensors"))
    (out / "case.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out} ({len(steps)} steps)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("official")
    ap.add_argument("root", nargs="?", default=None, help="agm repository root (default: from this file's path)")
    ap.add_argument("--momentum-override", type=float, default=None)
    ap.add_argument("--name", default=None, help="write one extra case of this name")
    ap.add_argument("--three", action="store_true")
    for k in ("data-seed", "init-seed", "batch", "classes", "hidden", "steps", "stages", "epochs-per-stage",
              "correct-epoch", "head-hidden"):
        ap.add_argument("--" + k, type=int, default=None)
    for k in ("weight1", "weight2", "alpha", "boost-rate", "lr"):
        ap.add_argument("--" + k, type=float, default=None)
    ap.add_argument("--dims", type=int, nargs="+", default=None)
    a = ap.parse_args()
    official = str(Path(a.official).resolve())
    root = Path(a.root).resolve() if a.root else Path(__file__).resolve().parents[3]
    sys.path.insert(0, official)
    stub_modules()
    out_dir = root / "tests" / "fixtures" / "golden"
    cwd = os.getcwd()
    if a.name:
        return extra_case(official, out_dir, a)
    run_case(official, out_dir, case="reconboost", three=False,
             sizes={"batch": 4, "classes": 3, "hidden": 4, "input_dims": [5, 3], "steps_per_epoch": 2},
             hyper={"weight1": 5.0, "weight2": 1.0, "alpha": 0.5, "boost_rate": 1.0, "epochs_per_stage": 2,
                    "correct_epoch": 1, "lr": 0.1, "head_hidden": 5},
             stages=3, momentum=a.momentum_override)
    os.chdir(cwd)
    run_case(official, out_dir, case="reconboost3", three=True,
             sizes={"batch": 4, "classes": 3, "hidden": 4, "input_dims": [3, 4, 5], "steps_per_epoch": 2},
             hyper={"weight1": 1.0, "weight2": 0.25, "alpha": 0.5, "boost_rate": 1.0, "epochs_per_stage": 1,
                    "correct_epoch": 1, "lr": 0.1, "head_hidden": 0},
             stages=4, momentum=a.momentum_override)
    os.chdir(cwd)


def extra_case(official, out_dir, a):
    """One case like the committed one of its modality count, with the given overrides."""
    if a.three and getattr(a, "head_hidden", None):
        # The official MSA path builds a one-layer head; the case must not claim another.
        raise SystemExit("--head-hidden does not apply with --three (the official head has one layer)")
    if a.three:
        sizes = {"batch": 4, "classes": 3, "hidden": 4, "input_dims": [3, 4, 5], "steps_per_epoch": 2}
        hyper = {"weight1": 1.0, "weight2": 0.25, "alpha": 0.5, "boost_rate": 1.0, "epochs_per_stage": 1,
                 "correct_epoch": 1, "lr": 0.1, "head_hidden": 0}
        stages = 4
    else:
        sizes = {"batch": 4, "classes": 3, "hidden": 4, "input_dims": [5, 3], "steps_per_epoch": 2}
        hyper = {"weight1": 5.0, "weight2": 1.0, "alpha": 0.5, "boost_rate": 1.0, "epochs_per_stage": 2,
                 "correct_epoch": 1, "lr": 0.1, "head_hidden": 5}
        stages = 3
    for k in ("batch", "classes", "hidden"):
        if getattr(a, k) is not None:
            sizes[k] = getattr(a, k)
    if a.dims:
        sizes["input_dims"] = a.dims
    if a.steps is not None:
        sizes["steps_per_epoch"] = a.steps
    for k in hyper:
        if getattr(a, k, None) is not None:
            hyper[k] = getattr(a, k)
    run_case(official, out_dir, case=a.name, three=a.three, sizes=sizes, hyper=hyper,
             stages=a.stages or stages, momentum=a.momentum_override, data_seed=a.data_seed,
             init_seed=a.init_seed)


if __name__ == "__main__":
    random.seed(0)
    main()
