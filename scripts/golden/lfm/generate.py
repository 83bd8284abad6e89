#!/usr/bin/env python3
"""Golden `method_steps` cases for agm's `lfm` method, from LFM's official code.

Official repository: https://github.com/njustkmg/NeurIPS24-LFM
Commit: ad44fa09fee471c9267a7cba526b222c54d45493
(Yang et al., "Facilitating Multimodal Classification via Dynamically Learning Modality Gap",
NeurIPS 2024.)

Usage:
    python scripts/golden/lfm/generate.py /path/to/extracted/NeurIPS24-LFM [--out tests/fixtures/golden]
        [--name CASE --weighting fitted|learned --seed N ...]  (one extra case; `--help`)

(`git --git-dir=<bare repo> archive <commit> | tar x -C /path` extracts it.)

What runs, in float64 on the CPU (`.cuda()` and `Tensor.float()` are monkeypatched to the
identity; every data value is a multiple of 1/64, so the official float32 cast would not change
it):

* `lfm` (M = 2, weighting `fitted`, the official default: the README runs `Crema_epoch.py`):
  `Crema_epoch.getAlpha_Learnable_Fitted(epoch)` gives the weights of each epoch and
  `Crema_epoch.train_audio_video(...)` runs every step of the epoch (its `Alignment`, the
  criterion, `loss = 2 * (cls_k[0] * loss_cls + cls_k[1] * loss_alignment)`, backward and the
  official `optim.SGD` step).
* `lfm_learned` (M = 2, weighting `learned`): `Crema_epoch_learnable.getAlpha_Learnable(epoch,
  val_batch, model, cls_k, lr_alpha)` (the double-backward Hessian-vector product, the
  lr halving, the clamp) at the start of every epoch, then
  `Crema_epoch_learnable.train_audio_video(...)`.
* `lfm3` (M = 3, weighting `learned`): the official code is written for two modalities (its model
  returns `o_a, o_v`, `Alignment(p, q)` takes two distributions), so this case re-implements the
  same three functions in this script for M modalities with agm's generalisation:
  the fused prediction is the mean of the M uni-modal logits and the alignment is
  `(1/M) * sum_m KL(mean_k p_k || p_m)` (for M = 2 exactly the official
  `0.5 * (kl_div(p.log(), m) + kl_div(q.log(), m))`). Everything else (weights, the
  double-backward hypergradient over the first parameter tensor, halving, clamp) is line for line
  the official `getAlpha_Learnable` / `train_audio_video`.
* `lfm_learned_kink` (`--name lfm_learned_kink --weighting learned --seed 24 --lr-alpha 500
  --alpha-init 0.9 --epochs 5`): as `lfm_learned`, with a ReLU input near zero, within reach of
  a finite difference's samples, at the hypergradient after epoch 1. The official double
  backward sees only the current linear piece (−1.78e-3); a sixth-order difference at agm's
  first step reaches across the kink (−4.17e-3).

What is swapped: the ResNet18 encoders and the CREMA-D loader. The tiny model follows the
official `AVClassifier`: encoder per modality (`Linear(d_m, H)` + ReLU), one linear classifier per
modality over its feature (`cls_a`, `cls_v`; agm's method-owned heads `lfm.<m>_head`), fused
output `result_b = result_a + result_v`. agm's tiny network also has a fusion head
`net.head.fc` (concat, Linear(H*M, C)); the official objective never reads it (LFM's official
model has no fusion head of its own), so agm's `fused_weight` is 0 in these cases and
`net.head.fc` keeps its initial values (no gradient, so SGD skips it, as PyTorch skips a
parameter whose `.grad` is None).

The outer epoch loop of the official scripts lives in their `if __name__ == '__main__'` block
(argparse, CREMA-D files, hard-coded save paths); its two lines per epoch (weights, then
`train_audio_video`) are reproduced here. The official `val()` only evaluates (sklearn metrics)
and sets `model.eval()`; the script sets `model.eval()` at the same point (the tiny model has no
BatchNorm or dropout, so modes do not change any number). The official held-out batch is 16
random training samples (removed from training) of which `getAlpha_Learnable` uses the first
half. agm measures on `alpha_samples` samples evenly spaced over its held-out split, or the
training split when the run has none (the replay has none), before training and after every
epoch. So the batch handed to the official `getAlpha_Learnable` has those rows as its first
half: rows floor(i * N / k) of the training split (k = 3); its second half repeats them and is
never read. The `validation` split
is only agm's end-of-epoch evaluation data. Labels are fed one-hot (float), as the official
CREMA-D dataset returns them; they are stored as class indices.

Settings: the official SGD (momentum 0.9, weight decay 1e-4) with lr 0.05. The learned cases
start from `alpha_init` 0.5 (`lfm_learned`) and 0.125 (`lfm3`) instead of the official 0.95 (set
inline in the official main block as `cls_k = [0.05, 0.95]`; passed here as `cls_k = [1 - init,
init]`) and use `alpha_lr` 20 and 40 instead of 1e-4, so that the weights visibly move within
three epochs (`lfm_learned`: both ways) and hit the clamp (`lfm3`: at 0.05 every epoch). The
halving every 20 epochs is not reached (agm's unit tests cover it). The hypergradient each
`getAlpha_Learnable` call computes is read from its `print(alpha_grad)`.

Values compared per step: `alpha` = [alpha_cls, alpha_align] in force, `loss_cls` (the official
`loss_cls`), `loss_align`, `coefficients` = [alpha_align] * M + [alpha_cls] and, for the learned
cases, the `alpha_grad` and `alpha_lr` that produced the epoch's weights; per epoch (after agm's
end hook of epoch e, i.e. the official start of 0-based epoch e): `alpha`, `alpha_grad`,
`alpha_lr`.

Loaders: lists of (spectrogram [B, d_a], image [B, d_v], one-hot label) tuples, visited in order.
"""

import argparse
import importlib
import json
import os
import sys
import types
from unittest import mock

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

COMMIT = "ad44fa09fee471c9267a7cba526b222c54d45493"
REPO = "https://github.com/njustkmg/NeurIPS24-LFM"

torch.set_default_dtype(torch.float64)
torch.Tensor.cuda = lambda self, *a, **k: self
nn.Module.cuda = lambda self, *a, **k: self
# The official code casts inputs with `.float()`; the data are float32-exact, keep float64.
torch.Tensor.float = lambda self, *a, **k: self


def import_official(repo):
    """Imports the two official training scripts with stubs for packages only their unused
    parts need (geomloss, torchvision, the CREMA-D dataset and the ResNet model modules)."""
    sys.path.insert(0, repo)
    sys.modules.setdefault("geomloss", types.SimpleNamespace(SamplesLoss=None))
    sys.modules.setdefault("torchvision", mock.MagicMock())
    sys.modules.setdefault("torchvision.transforms", mock.MagicMock())
    sys.modules["dataset.CREMA"] = types.SimpleNamespace(CramedDataset=None)
    sys.modules["model.AudioVideo"] = types.SimpleNamespace(AVClassifier=None)
    fitted = importlib.import_module("Crema_epoch")
    learnable = importlib.import_module("Crema_epoch_learnable")
    torch.autograd.set_detect_anomaly(False)
    return fitted, learnable


def q64(x):
    return np.round(np.asarray(x) * 64.0) / 64.0


class TinyEncoder(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, h), nn.ReLU())

    def forward(self, x):
        return self.net(x.reshape(x.shape[0], -1))


class TinyAV(nn.Module):
    """The official AVClassifier with tiny encoders: forward(audio, video) ->
    (result_b, result_a, result_v, a_feature, v_feature), result_b = result_v + result_a."""

    def __init__(self, dims, h, c):
        super().__init__()
        self.audio_encoder = TinyEncoder(dims[0], h)
        self.video_encoder = TinyEncoder(dims[1], h)
        self.cls_a = nn.Linear(h, c)
        self.cls_v = nn.Linear(h, c)

    def forward(self, audio, video):
        a_feature = self.audio_encoder(audio)
        v_feature = self.video_encoder(video)
        result_a = self.cls_a(a_feature)
        result_v = self.cls_v(v_feature)
        result_b = result_v + result_a
        return result_b, result_a, result_v, a_feature, v_feature

    def agm_names(self, mods):
        """Official parameter -> agm parameter name."""
        return {
            "audio_encoder.net.0.weight": f"net.{mods[0]}_encoder.0.weight",
            "audio_encoder.net.0.bias": f"net.{mods[0]}_encoder.0.bias",
            "video_encoder.net.0.weight": f"net.{mods[1]}_encoder.0.weight",
            "video_encoder.net.0.bias": f"net.{mods[1]}_encoder.0.bias",
            "cls_a.weight": f"lfm.{mods[0]}_head.weight",
            "cls_a.bias": f"lfm.{mods[0]}_head.bias",
            "cls_v.weight": f"lfm.{mods[1]}_head.weight",
            "cls_v.bias": f"lfm.{mods[1]}_head.bias",
        }


class TinyMulti(nn.Module):
    """M-modality version of the same model (for the M = 3 case)."""

    def __init__(self, dims, h, c):
        super().__init__()
        self.encoders = nn.ModuleList([TinyEncoder(d, h) for d in dims])
        self.cls = nn.ModuleList([nn.Linear(h, c) for _ in dims])

    def forward(self, *inputs):
        feats = [e(x) for e, x in zip(self.encoders, inputs)]
        outs = [c(f) for c, f in zip(self.cls, feats)]
        return sum(outs[1:], outs[0]), outs, feats

    def agm_names(self, mods):
        names = {}
        for i, m in enumerate(mods):
            names[f"encoders.{i}.net.0.weight"] = f"net.{m}_encoder.0.weight"
            names[f"encoders.{i}.net.0.bias"] = f"net.{m}_encoder.0.bias"
            names[f"cls.{i}.weight"] = f"lfm.{m}_head.weight"
            names[f"cls.{i}.bias"] = f"lfm.{m}_head.bias"
        return names


# ---- the M-modality re-implementation (lfm3 only) -------------------------------------------


def alignment_multi(outs):
    """Official `Alignment` for M distributions: mean over m of kl_div(p_m.log(), mean p)."""
    ps = [F.softmax(o, dim=-1) for o in outs]
    m = sum(ps[1:], ps[0]) / len(ps)
    kls = [F.kl_div(p.log(), m, reduction="batchmean") for p in ps]
    return sum(kls[1:], kls[0]) / len(ps)


def get_alpha_learnable_multi(epoch, valbatch, model, alpha, lr_alpha=1e-4):
    """Official `getAlpha_Learnable`, M inputs."""
    criterion = nn.CrossEntropyLoss(reduction="none")
    *inputs, y = valbatch
    half_size = inputs[0].size(0) // 2
    inputs = [x[:half_size] for x in inputs]
    y = y[:half_size]
    _, outs, _ = model(*inputs)
    loss_alignment = alignment_multi(outs)
    loss_cls = criterion(sum(outs[1:], outs[0]) / len(outs), y).mean()
    L_total = alpha[0] * loss_cls + alpha[1] * loss_alignment
    theta_grads = torch.autograd.grad(L_total, model.parameters(), create_graph=True)
    cls_grads = torch.autograd.grad(loss_cls, model.parameters(), retain_graph=True, create_graph=True)
    hessian_vector_prod = torch.autograd.grad(
        outputs=theta_grads, inputs=model.parameters(), grad_outputs=cls_grads, retain_graph=True
    )
    with torch.no_grad():
        alpha_grad = hessian_vector_prod[0].mean().item()
        RECORD["alpha_grad"].append(alpha_grad)
        if epoch % 20 == 0 and epoch != 0:
            lr_alpha = lr_alpha / 2
        alpha[1] -= lr_alpha * alpha_grad
        alpha[1] = max(0.05, min(0.95, alpha[1]))
        alpha[0] = 1.0 - alpha[1]
    return alpha, lr_alpha


def train_multi(epoch, train_loader, model, optimizer, cls_k):
    """Official `train_audio_video`, M inputs."""
    model.train()
    criterion = nn.CrossEntropyLoss(reduction="none")
    for step, (*inputs, y) in enumerate(train_loader):
        optimizer.zero_grad()
        _, outs, _ = model(*inputs)
        loss_alignment = alignment_multi(outs)
        loss_cls = criterion(sum(outs[1:], outs[0]) / len(outs), y).mean()
        loss = 2 * (cls_k[0] * loss_cls + cls_k[1] * loss_alignment)
        loss.backward()
        RECORD["averaged"].append([loss.item(), loss_alignment.item(), loss_cls.item()])
        optimizer.step()
    return model


# ---- recording -----------------------------------------------------------------------------

RECORD = {"averaged": [], "alpha_grad": [], "steps": []}


class RecordingAverager:
    """Stands in for the official `utils.utils.Averager`: keeps every value added."""

    pending = []

    def __init__(self):
        self.values = []
        RecordingAverager.pending.append(self)
        self.n, self.v = 0, 0

    def add(self, x):
        self.values.append(x)
        self.v = (self.v * self.n + x) / (self.n + 1)
        self.n += 1

    def item(self):
        return self.v


def make_optimizer(model, opt):
    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
            out = super().step(closure)
            params = {n: p.detach().clone() for n, p in model.named_parameters()}
            RECORD["steps"].append({"grads": grads, "params": params})
            return out

    return RecordingSGD(model.parameters(), lr=opt["lr"], momentum=opt["momentum"], weight_decay=opt["weight_decay"])


class NullLogger:
    def info(self, *a, **k):
        pass


# ---- the cases -----------------------------------------------------------------------------


def make_data(rng, n, dims, classes):
    inputs = [torch.tensor(q64(rng.uniform(-1.5, 1.5, size=(n, d)))) for d in dims]
    labels = torch.tensor(rng.integers(0, classes, size=n), dtype=torch.int64)
    return inputs, labels


def one_hot(labels, classes):
    return torch.eye(classes)[labels]


def init_params(model, rng, names):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") and "encoder" in names[n] and "_encoder" in names[n]:
                p.copy_(torch.tensor(q64(rng.uniform(0.0, 0.5, size=tuple(p.shape)))))
            else:
                p.copy_(torch.tensor(q64(rng.uniform(-0.75, 0.75, size=tuple(p.shape)))))


def run_case(name, fitted_mod, learn_mod, mods, weighting, seed, lr_alpha=None, alpha_init=None, epochs=3, steps=3,
             batch=4, hidden=4, classes=3, lr=0.05, dims=None):
    global RECORD
    RECORD = {"averaged": [], "alpha_grad": [], "steps": []}
    RecordingAverager.pending = []
    rng = np.random.default_rng(seed)
    M = len(mods)
    dims = dims or [5, 4, 6][:M]
    H, C = hidden, classes
    N = steps * batch
    NV = 8
    opt = {"kind": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 1e-4}

    train_x, train_y = make_data(rng, N, dims, C)
    val_x, val_y = make_data(rng, NV, dims, C)

    model = TinyAV(dims, H, C) if M == 2 else TinyMulti(dims, H, C)
    names = model.agm_names(mods)
    init_params(model, rng, names)
    fc_w = torch.tensor(q64(rng.uniform(-0.5, 0.5, size=(C, H * M))))
    fc_b = torch.tensor(q64(rng.uniform(-0.5, 0.5, size=(C,))))
    init = {names[n]: p.detach().clone() for n, p in model.named_parameters()}
    init["net.head.fc.weight"] = fc_w
    init["net.head.fc.bias"] = fc_b

    loader = [
        tuple(x[k * batch:(k + 1) * batch] for x in train_x) + (one_hot(train_y[k * batch:(k + 1) * batch], C),)
        for k in range(steps)
    ]
    K = 3  # agm's alpha_samples

    def held_out(rows):
        """The official held-out batch whose first half (what getAlpha_Learnable reads) is `rows`
        of the training split; the second half repeats them and is never read."""
        idx = torch.tensor(list(rows) + list(rows))
        return tuple(x[idx] for x in train_x) + (one_hot(train_y[idx], C),)

    # agm's rows: k rows evenly spaced over the training split, floor(i * n / k), at most one per
    # sample (`lfm_rows`), before training and after every epoch (the replay gives the method no
    # held-out split).
    split_rows = [i * N // min(K, N) for i in range(min(K, N))]
    optimizer = make_optimizer(model, opt)

    method_config = {"weighting": weighting, "fused_weight": 0.0}
    epoch_alpha = []  # weights in force during each epoch
    epoch_lr = []  # learned: the rate of alpha after each epoch's update
    epoch_values = []
    if weighting == "fitted":
        for epoch in range(epochs):
            cls_k = fitted_mod.getAlpha_Learnable_Fitted(epoch)
            epoch_alpha.append(list(cls_k))
            fitted_mod.train_audio_video(epoch, loader, model, optimizer, NullLogger(), cls_k)
            model.eval()  # the official val()
    else:
        method_config.update({"alpha_init": alpha_init, "alpha_lr": lr_alpha, "alpha_samples": K})
        # The official initial weights are `cls_k = [0.05, 0.95]` (set inline in its main block).
        cls_k = [1.0 - alpha_init, alpha_init]
        lr = lr_alpha
        for epoch in range(epochs):
            val_batch = held_out(split_rows)
            if M == 2:
                cls_k, lr = learn_mod.getAlpha_Learnable(epoch, val_batch, model, cls_k, lr)
            else:
                cls_k, lr = get_alpha_learnable_multi(epoch, val_batch, model, cls_k, lr)
            epoch_alpha.append(list(cls_k))
            epoch_lr.append(lr)
            # agm computes the next epoch's weights in the end hook of the previous epoch (and
            # the first epoch's before its first step); the state after the end hook of epoch
            # e carries the weights of epoch e + 1 (compared below, once that is known).
            if epoch > 0:
                epoch_values.append(
                    {"epoch": epoch, "values": {"alpha": list(cls_k), "alpha_grad": RECORD["alpha_grad"][-1], "alpha_lr": lr}}
                )
            if M == 2:
                learn_mod.train_audio_video(epoch, loader, model, optimizer, NullLogger(), cls_k)
            else:
                train_multi(epoch, loader, model, optimizer, cls_k)
            model.eval()  # the official val()
        # The start of the epoch after the last one: what agm's end hook of the last epoch computes.
        val_batch = held_out(split_rows)
        if M == 2:
            cls_k, lr = learn_mod.getAlpha_Learnable(epochs, val_batch, model, cls_k, lr)
        else:
            cls_k, lr = get_alpha_learnable_multi(epochs, val_batch, model, cls_k, lr)
        epoch_values.append(
            {"epoch": epochs, "values": {"alpha": list(cls_k), "alpha_grad": RECORD["alpha_grad"][-1], "alpha_lr": lr}}
        )

    # The official train loop's three Averagers per epoch: loss, alignment, fusion (classification).
    if M == 2:
        per_epoch = RecordingAverager.pending
        assert len(per_epoch) == 3 * epochs
        averaged = []
        for e in range(epochs):
            tl, ta, tf = per_epoch[3 * e:3 * e + 3]
            averaged += list(zip(tl.values, ta.values, tf.values))
    else:
        averaged = RECORD["averaged"]
    assert len(averaged) == epochs * steps == len(RECORD["steps"])

    tensors = {}
    for n, t in init.items():
        tensors[f"init/params/{n}"] = t
    for i, m in enumerate(mods):
        tensors[f"train/input/{m}"] = train_x[i]
        tensors[f"validation/input/{m}"] = val_x[i]
    tensors["train/label"] = train_y
    tensors["validation/label"] = val_y

    step_rows = []
    for k, rec in enumerate(RECORD["steps"]):
        step = k + 1
        epoch = k // steps + 1
        loss, align, cls = averaged[k]
        for n, g in rec["grads"].items():
            tensors[f"step{step}/grad_final/{names[n]}"] = g
        for n, p in rec["params"].items():
            tensors[f"step{step}/params_after/{names[n]}"] = p
        tensors[f"step{step}/params_after/net.head.fc.weight"] = fc_w.clone()
        tensors[f"step{step}/params_after/net.head.fc.bias"] = fc_b.clone()
        alpha = epoch_alpha[epoch - 1]
        extra = {}
        if weighting == "learned":
            # The hypergradient and rate that gave this epoch's weights.
            extra = {"alpha_grad": RECORD["alpha_grad"][epoch - 1], "alpha_lr": epoch_lr[epoch - 1]}
        step_rows.append(
            {
                "step": step,
                "epoch": epoch,
                "loss": loss,
                "values": {
                    "alpha": [alpha[0], alpha[1]],
                    "loss_cls": cls,
                    "loss_align": align,
                    "coefficients": [alpha[1]] * M + [alpha[0]],
                    **extra,
                },
            }
        )

    params = []
    for n, t in init.items():
        if n.startswith("lfm."):
            role = "method"
        elif n.startswith("net.head"):
            role = "shared"
        else:
            role = "modality:" + n[len("net."):].split("_encoder")[0]
        params.append({"name": n, "shape": list(t.shape), "role": role})

    functions = (
        ["Crema_epoch.getAlpha_Learnable_Fitted", "Crema_epoch.train_audio_video", "Crema_epoch.Alignment"]
        if weighting == "fitted"
        else (
            ["Crema_epoch_learnable.getAlpha_Learnable", "Crema_epoch_learnable.train_audio_video",
             "Crema_epoch_learnable.Alignment"]
            if M == 2
            else ["(re-implemented for M = 3) getAlpha_Learnable", "train_audio_video", "Alignment"]
        )
    )
    case = {
        "case": name,
        "format_version": 1,
        "kind": "method_steps",
        "dtype": "float64",
        "official_reference": {"repo": REPO, "commit": COMMIT, "functions": functions},
        "method": "lfm",
        "method_config": method_config,
        "modalities": mods,
        "sizes": {"batch": batch, "classes": C, "hidden": H, "input_dims": dims, "epochs": epochs,
                  "steps_per_epoch": steps},
        "optimizer": opt,
        "parameters": params,
        "steps": step_rows,
    }
    if epoch_values:
        case["epochs"] = epoch_values
    tensors = {k: (v.contiguous().to(torch.int64) if v.dtype == torch.int64 else v.contiguous().to(torch.float64))
               for k, v in tensors.items()}
    return case, tensors, RECORD["alpha_grad"], epoch_alpha


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("official_repo")
    ap.add_argument("--out", default=os.path.join(here, "..", "..", "..", "tests", "fixtures", "golden"))
    ap.add_argument("--name", default=None, help="write one extra case of this name")
    ap.add_argument("--weighting", default="learned", choices=("fitted", "learned"))
    ap.add_argument("--modalities", type=int, default=2, choices=(2, 3))
    for k in ("seed", "epochs", "steps", "batch", "hidden", "classes"):
        ap.add_argument("--" + k, type=int, default=None)
    for k in ("lr", "lr-alpha", "alpha-init"):
        ap.add_argument("--" + k, type=float, default=None)
    ap.add_argument("--dims", type=int, nargs="+", default=None)
    args = ap.parse_args()
    fitted, learnable = import_official(os.path.abspath(args.official_repo))
    for mod in (fitted, learnable):
        mod.Averager = RecordingAverager
        mod.tqdm = lambda x, *a, **k: x
    learnable.print = lambda *a, **k: RECORD["alpha_grad"].append(a[0])

    cases = [
        ("lfm", ["audio", "visual"], "fitted", 11, None, None),
        ("lfm_learned", ["audio", "visual"], "learned", 12, 20.0, 0.5),
        ("lfm3", ["audio", "visual", "text"], "learned", 13, 40.0, 0.125),
    ]
    sizes = {}
    if args.name:
        learned = args.weighting == "learned"
        cases = [(args.name, ["audio", "visual", "text"][:args.modalities], args.weighting, args.seed or 0,
                  (args.lr_alpha or 20.0) if learned else None, (args.alpha_init or 0.5) if learned else None)]
        sizes = {k: getattr(args, k) for k in ("epochs", "steps", "batch", "hidden", "classes", "lr", "dims")
                 if getattr(args, k) is not None}
    for name, mods, weighting, seed, lr_alpha, alpha_init in cases:
        case, tensors, grads, alphas = run_case(name, fitted, learnable, mods, weighting, seed, lr_alpha, alpha_init,
                                                **sizes)
        out = os.path.join(args.out, name)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "case.json"), "w") as f:
            json.dump(case, f, indent=1)
            f.write("\n")
        save_file(tensors, os.path.join(out, "tensors.safetensors"))
        print(f"{name}: {len(case['steps'])} steps, alpha per epoch {alphas}, alpha_grad {grads}, "
              f"losses {[round(s['loss'], 6) for s in case['steps']]}")


if __name__ == "__main__":
    main()
