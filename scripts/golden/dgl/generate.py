"""Golden `method_steps` cases for DGL (disentangled gradient learning).

Official reference: shicaiwei123/ICCV2025-GDL, commit b72a55f0fe1bd7fde6354fda9613e2a88a2d695e
("Boosting Multimodal Learning via Disentangled Gradient Learning", ICCV 2025).

Usage: python generate.py <extracted official repo> [<output root, default tests/fixtures/golden>]
       [--name CASE --seed N --batch ... (`--help`)]: with --name, one extra case of those sizes
       (M = 2: the official run; M = 3: the loop below); without it, the committed cases.
(extract with `git archive HEAD | tar x`; only main_dgl.py, models/fusion_modules.py and
utils/utils.py are imported).

Case `dgl` (M = 2, audio/visual): the OFFICIAL code runs.
- `main_dgl.train_epoch` (the whole official step: the uni-modal loss
  `alpha * (CE(out_a) + CE(out_v))` backward with retain_graph, every parameter whose second
  dotted name component contains "fusion" gets `grad = None`, then `CE(out)` backward,
  `clip_grad_norm_(max_norm=40)`, `optimizer.step()`), called once per epoch;
- `models.fusion_modules.ConcatFusion_DGL` (the fusion of `AVClassifier_DGL` with
  `--fusion_method concat`, the default): `out = fc_out(cat(a, v).detach())`,
  `out_a = fc_out(cat(a, 0))`, `out_v = fc_out(cat(0, v))` -- the uni-modal heads ARE the fusion
  head `fc_out` applied to the zero-padded FEATURES; `fc_auxi` exists but is never used (its
  gradient stays None, so SGD never touches it; it is not part of the case);
- the model is wrapped in `torch.nn.DataParallel` as in `main_dgl.main` (on CPU it just holds the
  module, and parameter names start with `module.`, which the official "fusion" test relies on).
Swapped: the two ResNet18 encoders + pooling of `AVClassifier_DGL` for `Linear(d_m, H) -> ReLU`
(`TinyDGL` below only composes the encoders with the official `ConcatFusion_DGL`), the data
loader for fixed batches in stored order, `weight_init` (xavier, zero bias) for fixed values that
are multiples of 1/64 (non-zero biases, so a zero FEATURE differs from the feature of a zero
INPUT). Monkeypatched, without changing any computation: `torch.Tensor.float` is the identity
while `train_epoch` runs (it casts the batches to float32; the case is float64), `tqdm` is a
pass-through, the dataset/tensorboard/ResNet modules `main_dgl` imports are stubs (never called),
`nn.CrossEntropyLoss` records each value it returns, `clip_grad_norm_` records the total norm it
returns, and the SGD optimizer records the gradients and parameters at each `step()`. The
official `MultiStepLR([70], 0.1)` scheduler is passed (constant lr in these epochs). The per-step
grad csv that `train_epoch` appends to is written in a temporary directory.

Case `dgl3` (M = 3, audio/visual/text): the official code has only two modalities
(`model(spec, image)`, `loss_a + loss_v`), so its loop cannot be called with three. This script
re-implements that loop for M modalities, line for line (`train_epoch_m` and `ConcatFusionDGLM`
below): uni-modal logits `fc_out(features with every other modality's feature zeroed)`, loss
`alpha * sum_m CE`, backward with retain_graph, fusion gradients set to None, `CE(fc_out(cat(f).
detach()))` backward, clip at 40, SGD step. To show the re-implementation is the official loop,
the script first runs it on the M = 2 case and asserts it reproduces the official run exactly.

Hyper-parameters: alpha = 4 (the CREMA-D run script `cramed_dgl.sh`), SGD momentum 0.9, weight
decay 1e-4 (`main_dgl.main`), lr 0.02 (the official 0.002 moves these tiny weights too little to
test anything), max_norm 40 (hard-coded); inputs are scaled so the clipping at 40 fires in some
steps and not in others (`notes.clip_total_norm` lists the pre-clip norms: it fires at steps 8
and 9 of `dgl` and step 4 of `dgl3`).
"""

import argparse
import importlib.machinery
import json
import os
import sys
import tempfile
import types

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)

COMMIT = "b72a55f0fe1bd7fde6354fda9613e2a88a2d695e"
REPO = "shicaiwei123/ICCV2025-GDL"
ALPHA = 4.0
LR = 0.02
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
MAX_NORM = 40.0


def stub(name, **attrs):
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for k, v in attrs.items():
        setattr(mod, k, v)
    sys.modules[name] = mod
    return mod


def import_official(repo):
    """Imports main_dgl and the fusion module with the heavy imports stubbed."""
    sys.path.insert(0, os.path.abspath(repo))
    unused = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stub called"))  # noqa: E731
    stub("dataset")
    stub("dataset.CramedDataset", CramedDataset=unused, CramedDataset_swin=unused)
    stub("dataset.KSDataset", KSDataset=unused)
    stub("dataset.VGGSoundDataset", VGGSound=unused)
    stub("dataset.AVEDataset", AVEDataset=unused)
    stub("dataset.Kinect400", Kinect400=unused)
    stub("models.basic_model", AVClassifier_DGL=unused)
    stub("torch.utils.tensorboard", SummaryWriter=unused)
    stub("tqdm", tqdm=lambda it, *a, **k: it)
    import main_dgl  # noqa: E402
    from models.fusion_modules import ConcatFusion_DGL  # noqa: E402

    return main_dgl, ConcatFusion_DGL


# ---------------------------------------------------------------- tiny network and data

def q64(t):
    """Rounds to a multiple of 1/64 (exact in float32)."""
    return torch.round(t * 64.0) / 64.0


def make_init(gen, names_shapes):
    out = {}
    for name, shape in names_shapes:
        out[name] = q64(torch.empty(shape).uniform_(-0.6, 0.6, generator=gen))
        if name.endswith("bias"):
            # non-zero biases, so a zero feature differs from the feature of a zero input
            out[name] = torch.where(out[name] == 0, torch.full_like(out[name], 0.125), out[name])
    return out


def make_data(gen, n, dims, classes, scales):
    inputs = [q64(torch.randn(n, d, generator=gen) * s) for d, s in zip(dims, scales)]
    labels = torch.randint(0, classes, (n,), generator=gen)
    return inputs, labels


class TinyDGL(nn.Module):
    """`AVClassifier_DGL` with `Linear -> ReLU` encoders and the official `ConcatFusion_DGL`."""

    def __init__(self, concat_fusion_dgl, dims, hidden, classes):
        super().__init__()
        self.audio_net = nn.Sequential(nn.Linear(dims[0], hidden), nn.ReLU())
        self.visual_net = nn.Sequential(nn.Linear(dims[1], hidden), nn.ReLU())
        self.fusion_module = concat_fusion_dgl(input_dim=2 * hidden, output_dim=classes)

    def forward(self, audio, visual):
        a = self.audio_net(torch.flatten(audio, 1))
        v = self.visual_net(torch.flatten(visual, 1))
        a_out, v_out, out = self.fusion_module(a, v)
        return out, a_out, v_out


class RecordingSGD(torch.optim.SGD):
    """torch.optim.SGD that records, at every step, the gradient it consumes and the result."""

    def __init__(self, named, **kw):
        self.named = list(named)
        super().__init__([p for _, p in self.named], **kw)
        self.records = []

    def step(self, closure=None):
        grads = {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in self.named}
        out = super().step(closure)
        after = {n: p.detach().clone() for n, p in self.named}
        self.records.append({"grad": grads, "after": after})
        return out


# ---------------------------------------------------------------- the official run (M = 2)

OFFICIAL_TO_AGM_2 = {
    "module.audio_net.0.weight": "net.audio_encoder.0.weight",
    "module.audio_net.0.bias": "net.audio_encoder.0.bias",
    "module.visual_net.0.weight": "net.visual_encoder.0.weight",
    "module.visual_net.0.bias": "net.visual_encoder.0.bias",
    "module.fusion_module.fc_out.weight": "net.head.fc.weight",
    "module.fusion_module.fc_out.bias": "net.head.fc.bias",
}


def run_official(main_dgl, concat_fusion_dgl, init, inputs, labels, sizes):
    B, S, E = sizes["batch"], sizes["steps_per_epoch"], sizes["epochs"]
    model = TinyDGL(concat_fusion_dgl, sizes["input_dims"], sizes["hidden"], sizes["classes"])
    model = torch.nn.DataParallel(model, device_ids=[])
    assert not model.device_ids, "DataParallel must be the CPU pass-through"
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in OFFICIAL_TO_AGM_2:
                p.copy_(init[OFFICIAL_TO_AGM_2[n]])
    fc_auxi = {n: p.detach().clone() for n, p in model.named_parameters() if "fc_auxi" in n}
    optimizer = RecordingSGD(model.named_parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [70], 0.1)
    loader = [(inputs[0][k * B:(k + 1) * B], inputs[1][k * B:(k + 1) * B], labels[k * B:(k + 1) * B])
              for k in range(S)]
    args = types.SimpleNamespace(alpha=ALPHA, epochs=E)

    ce_log, norm_log = [], []

    class RecordingCE(nn.CrossEntropyLoss):
        def forward(self, input, target):
            out = super().forward(input, target)
            ce_log.append(out.item())
            return out

    real_clip = nn.utils.clip_grad_norm_

    def recording_clip(params, *a, **k):
        norm = real_clip(params, *a, **k)
        norm_log.append(float(norm))
        return norm

    real_float = torch.Tensor.float
    main_dgl.nn.CrossEntropyLoss = RecordingCE
    nn.utils.clip_grad_norm_ = recording_clip
    torch.Tensor.float = lambda self, *a, **k: self
    cwd = os.getcwd()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)
            for epoch in range(E):
                main_dgl.train_epoch(args, epoch, model, torch.device("cpu"), loader, optimizer, scheduler)
    finally:
        os.chdir(cwd)
        torch.Tensor.float = real_float
        nn.utils.clip_grad_norm_ = real_clip
        main_dgl.nn.CrossEntropyLoss = nn.CrossEntropyLoss
    for n, p in model.named_parameters():
        if "fc_auxi" in n:
            assert torch.equal(p, fc_auxi[n]), "fc_auxi is never updated"
    steps = []
    for k, rec in enumerate(optimizer.records):
        loss_v, loss_a, loss_f = ce_log[3 * k:3 * k + 3]  # train_epoch's order: v, a, f
        steps.append({
            "uni": [loss_a, loss_v],
            "fusion": loss_f,
            "norm": norm_log[k],
            "grad": {OFFICIAL_TO_AGM_2[n]: g for n, g in rec["grad"].items() if n in OFFICIAL_TO_AGM_2},
            "after": {OFFICIAL_TO_AGM_2[n]: p for n, p in rec["after"].items() if n in OFFICIAL_TO_AGM_2},
        })
    assert len(steps) == S * E and len(ce_log) == 3 * S * E
    return steps


# ---------------------------------------------------------------- the loop for M modalities

class ConcatFusionDGLM(nn.Module):
    """ConcatFusion_DGL for M features: fused logits on the detached concatenation, uni-modal
    logits of modality m from the same head on the concatenation with every other feature
    replaced by zeros."""

    def __init__(self, input_dim, output_dim):
        super().__init__()
        self.fc_out = nn.Linear(input_dim, output_dim)

    def forward(self, *feats):
        output = self.fc_out(torch.cat(feats, dim=1).detach())
        unis = []
        for m in range(len(feats)):
            parts = [f if j == m else torch.zeros_like(f) for j, f in enumerate(feats)]
            unis.append(self.fc_out(torch.cat(parts, dim=1)))
        return unis, output


class TinyDGLM(nn.Module):
    def __init__(self, modalities, dims, hidden, classes):
        super().__init__()
        self.modalities = modalities
        self.nets = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, hidden), nn.ReLU()) for m, d in zip(modalities, dims)})
        self.fusion_module = ConcatFusionDGLM(hidden * len(modalities), classes)

    def forward(self, *xs):
        feats = [self.nets[m](x) for m, x in zip(self.modalities, xs)]
        return self.fusion_module(*feats)


def train_epoch_m(model, loader, optimizer, norm_log, ce_log):
    """main_dgl.train_epoch for M modalities (see the module docstring)."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    for batch in loader:
        *xs, label = batch
        optimizer.zero_grad()
        unis, out = model(*xs)
        uni_losses = [criterion(u, label) for u in unis]
        loss_f = criterion(out, label)
        loss_unimodal = sum(uni_losses) * ALPHA
        loss_unimodal.backward(retain_graph=True)
        for name, parms in model.named_parameters():
            if "fusion" in name.split(".")[0]:
                parms.grad = None
        loss_f.backward()
        norm_log.append(float(nn.utils.clip_grad_norm_(model.parameters(), max_norm=MAX_NORM, norm_type=2)))
        ce_log.append(([l.item() for l in uni_losses], loss_f.item()))
        optimizer.step()


def run_m(modalities, init, inputs, labels, sizes):
    B, S, E = sizes["batch"], sizes["steps_per_epoch"], sizes["epochs"]
    model = TinyDGLM(modalities, sizes["input_dims"], sizes["hidden"], sizes["classes"])
    to_agm = {f"nets.{m}.0.{w}": f"net.{m}_encoder.0.{w}" for m in modalities for w in ("weight", "bias")}
    to_agm.update({"fusion_module.fc_out.weight": "net.head.fc.weight", "fusion_module.fc_out.bias": "net.head.fc.bias"})
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(init[to_agm[n]])
    optimizer = RecordingSGD(model.named_parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    loader = [tuple(x[k * B:(k + 1) * B] for x in inputs) + (labels[k * B:(k + 1) * B],) for k in range(S)]
    norm_log, ce_log = [], []
    for _ in range(E):
        train_epoch_m(model, loader, optimizer, norm_log, ce_log)
    steps = []
    for k, rec in enumerate(optimizer.records):
        steps.append({
            "uni": ce_log[k][0],
            "fusion": ce_log[k][1],
            "norm": norm_log[k],
            "grad": {to_agm[n]: g for n, g in rec["grad"].items()},
            "after": {to_agm[n]: p for n, p in rec["after"].items()},
        })
    return steps


# ---------------------------------------------------------------- writing a case

def param_list(modalities, dims, hidden, classes):
    out = []
    for m, d in zip(modalities, dims):
        out.append((f"net.{m}_encoder.0.weight", [hidden, d], f"modality:{m}"))
        out.append((f"net.{m}_encoder.0.bias", [hidden], f"modality:{m}"))
    out.append(("net.head.fc.weight", [classes, hidden * len(modalities)], "shared"))
    out.append(("net.head.fc.bias", [classes], "shared"))
    return out


def write_case(root, name, modalities, sizes, init, inputs, labels, steps, functions):
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    params = param_list(modalities, sizes["input_dims"], sizes["hidden"], sizes["classes"])
    tensors = {f"init/params/{n}": init[n].contiguous() for n, _, _ in params}
    for m, x in zip(modalities, inputs):
        tensors[f"train/input/{m}"] = x.contiguous()
    tensors["train/label"] = labels.to(torch.int64).contiguous()
    S = sizes["steps_per_epoch"]
    case_steps = []
    for k, st in enumerate(steps):
        step = k + 1
        for n, _, _ in params:
            tensors[f"step{step}/params_after/{n}"] = st["after"][n].contiguous()
            if st["grad"][n] is not None:
                tensors[f"step{step}/grad_final/{n}"] = st["grad"][n].contiguous()
        case_steps.append({
            "step": step,
            "epoch": k // S + 1,
            "loss": ALPHA * sum(st["uni"]) + st["fusion"],
            "values": {"fusion_loss": st["fusion"], "unimodal_losses": st["uni"]},
        })
    case = {
        "case": name,
        "format_version": 1,
        "kind": "method_steps",
        "dtype": "float64",
        "official_reference": {"repo": REPO, "commit": COMMIT, "functions": functions},
        "method": "dgl",
        "method_config": {"alpha": ALPHA, "max_grad_norm": MAX_NORM},
        "modalities": modalities,
        "sizes": sizes,
        "optimizer": {"kind": "sgd", "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
        "parameters": [{"name": n, "shape": s, "role": r} for n, s, r in params],
        "steps": case_steps,
        "notes": {
            "clip_total_norm": [st["norm"] for st in steps],
            "clip_fired": [st["norm"] > MAX_NORM for st in steps],
        },
    }
    with open(os.path.join(folder, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
        f.write("\n")
    save_file(tensors, os.path.join(folder, "tensors.safetensors"))
    return case


def parse_args():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("root", nargs="?", default=os.path.join(here, "..", "..", "..", "tests", "fixtures", "golden"))
    ap.add_argument("--name", default=None, help="write one extra case of this name")
    ap.add_argument("--seed", type=int, default=2025)
    ap.add_argument("--modalities", type=int, default=2, choices=(2, 3))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=4)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--dims", type=int, nargs="+", default=None)
    ap.add_argument("--scales", type=float, nargs="+", default=None)
    ap.add_argument("--lr", type=float, default=LR)
    ap.add_argument("--alpha", type=float, default=ALPHA)
    ap.add_argument("--momentum", type=float, default=MOMENTUM)
    return ap.parse_args()


def extra_case(a, main_dgl, concat_fusion_dgl):
    global ALPHA, LR, MOMENTUM
    ALPHA, LR, MOMENTUM = a.alpha, a.lr, a.momentum
    mods = ["audio", "visual", "text"][:a.modalities]
    dims = a.dims or [5, 4, 3][:a.modalities]
    scales = a.scales or (SCALES2 if a.modalities == 2 else SCALES3)
    sizes = {"batch": a.batch, "classes": a.classes, "hidden": a.hidden, "input_dims": dims, "epochs": a.epochs,
             "steps_per_epoch": a.steps}
    gen = torch.Generator().manual_seed(a.seed)
    init = make_init(gen, [(n, s) for n, s, _ in param_list(mods, dims, a.hidden, a.classes)])
    inputs, labels = make_data(gen, a.batch * a.steps, dims, a.classes, scales)
    steps = run_m(mods, init, inputs, labels, sizes)
    if a.modalities == 2:
        official = run_official(main_dgl, concat_fusion_dgl, init, inputs, labels, sizes)
        for o, r in zip(official, steps):
            assert o["uni"] == r["uni"] and o["fusion"] == r["fusion"] and o["norm"] == r["norm"], (o, r)
        steps = official
    c = write_case(a.root, a.name, mods, sizes, init, inputs, labels, steps,
                   ["main_dgl.train_epoch", "models.fusion_modules.ConcatFusion_DGL"])
    print(c["case"], "clip norms", [round(x, 3) for x in c["notes"]["clip_total_norm"]])
    print(" losses", [round(s["loss"], 4) for s in c["steps"]])


def main():
    a = parse_args()
    repo, root = a.repo, a.root
    main_dgl, concat_fusion_dgl = import_official(repo)
    if a.name:
        return extra_case(a, main_dgl, concat_fusion_dgl)

    # M = 2: the official train_epoch.
    mods2 = ["audio", "visual"]
    sizes2 = {"batch": 4, "classes": 3, "hidden": 4, "input_dims": [5, 4], "epochs": 3, "steps_per_epoch": 3}
    gen = torch.Generator().manual_seed(2025)
    n2 = sizes2["batch"] * sizes2["steps_per_epoch"]
    init2 = make_init(gen, [(n, s) for n, s, _ in param_list(mods2, sizes2["input_dims"], sizes2["hidden"], sizes2["classes"])])
    inputs2, labels2 = make_data(gen, n2, sizes2["input_dims"], sizes2["classes"], SCALES2)
    official = run_official(main_dgl, concat_fusion_dgl, init2, inputs2, labels2, sizes2)
    mine = run_m(mods2, init2, inputs2, labels2, sizes2)
    for o, r in zip(official, mine):
        assert o["uni"] == r["uni"] and o["fusion"] == r["fusion"] and o["norm"] == r["norm"], (o, r)
        for n in o["after"]:
            assert torch.equal(o["after"][n], r["after"][n]), n
            assert torch.equal(o["grad"][n], r["grad"][n]), n
    c2 = write_case(root, "dgl", mods2, sizes2, init2, inputs2, labels2, official,
                    ["main_dgl.train_epoch", "models.fusion_modules.ConcatFusion_DGL"])

    # M = 3: the loop re-implemented for M modalities (checked above against the official run).
    mods3 = ["audio", "visual", "text"]
    sizes3 = {"batch": 4, "classes": 4, "hidden": 4, "input_dims": [5, 4, 3], "epochs": 2, "steps_per_epoch": 3}
    gen = torch.Generator().manual_seed(20253)
    n3 = sizes3["batch"] * sizes3["steps_per_epoch"]
    init3 = make_init(gen, [(n, s) for n, s, _ in param_list(mods3, sizes3["input_dims"], sizes3["hidden"], sizes3["classes"])])
    inputs3, labels3 = make_data(gen, n3, sizes3["input_dims"], sizes3["classes"], SCALES3)
    steps3 = run_m(mods3, init3, inputs3, labels3, sizes3)
    c3 = write_case(root, "dgl3", mods3, sizes3, init3, inputs3, labels3, steps3,
                    ["main_dgl.train_epoch (re-implemented for 3 modalities in this script)",
                     "models.fusion_modules.ConcatFusion_DGL (re-implemented for 3 modalities)"])
    for c in (c2, c3):
        print(c["case"], "clip norms", [round(x, 3) for x in c["notes"]["clip_total_norm"]])
        print(" losses", [round(s["loss"], 4) for s in c["steps"]])


SCALES2 = [12.0, 5.0]
SCALES3 = [14.0, 5.0, 6.0]

if __name__ == "__main__":
    main()
