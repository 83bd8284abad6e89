"""Golden `method_steps` cases for MLA (agm method `mla`), produced by the official code.

Official repository: https://github.com/Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation
commit ab6c184579f9ff390e9c9b8216c9900c2a43545b (Zhang, Yoon, Bansal, Yao, "Multimodal
Representation Learning by Alternating Unimodal Adaptation", CVPR 2024).

Usage:  python generate.py <extracted official repo> [<output root, default tests/fixtures/golden>]
        [--name CASE --seed N ...]  (one extra case; `--help`)

What runs from the official code, unchanged:
- `main.train_epoch` with `gs_flag=True` (the MLA branch): for every batch, for each modality in
  turn (audio, visual[, text]): `out = fusion_module.fc_out(feature)`, `CrossEntropyLoss`,
  `backward`, `GSPlugin.before_update(...)` (the head-gradient modification), `optimizer.step()`,
  `optimizer.zero_grad()`; at the end of the batch every `.grad` is deleted; `scheduler.step()`
  at the end of the epoch.
- `utils.utils.GSPlugin` (the projector `Pl`, its recursive update with
  `alpha = 0.1 ** (batch_index / len_dataloader + 1)`, the Frobenius normalisation, and
  `w.grad = w.grad @ Pl^T` on the shared head's weight, skipped for the very first update of the
  run, `exp_count == 0`).
- The optimizer and schedule of `main.main`: `SGD(lr, momentum=0.9, weight_decay=1e-4)` and
  `StepLR(lr_decay_step=70, 0.1)` (constant over these few epochs).
- `main.valid` with `gs_flag=True` after every epoch (the test-time fusion: `--dynamic` entropy
  gating via `calculate_gating_weights[3]`, or the fixed weights `av_alpha = 0.55` that
  `main(av_alpha=0.55)` passes, and `a/v/t_alpha = 0.35/0.25/0.4`), here on the training batches
  (agm's method evaluates its own prediction on the training split; each batch stored M times
  leaves every accuracy unchanged). `mla` and `mla3` use the dynamic fusion, `mla_noproj` the
  fixed one.

What is swapped (only the big pieces, as the brief allows):
- The networks: the tiny agm network (per modality `Linear(d_m, H)` + ReLU) returns the
  features, as `AVClassifier` does with `gs_flag`; the official shared head
  `fusion_module.fc_out` is a `Linear(H, C)` (the official one is `Linear(512, C)`), held by the
  method in agm as `mla.head.weight` / `mla.head.bias` (role `method`). agm's own fusion head
  `net.head.fc` exists in the tiny network but MLA never uses it in training (it gets no
  gradient, so the optimizer leaves it alone).
- The data loader: a list of fixed batches. M = 2 uses the `lorb != m3ae`, `clip` branch
  (`a, v = model(spec, image)`, which keeps float64); M = 3 uses the `m3ae`, `modal3` branch
  (`a, v, t = model(token, padding_mask, image, spec)`).
- `GSPlugin.Pl` starts as `eye(H)` instead of `eye(512)` (the feature size), in float64.
- main.py's module-level imports of the datasets (librosa, timm, PIL ...), the big models
  (einops, ml_collections) and tensorboard are stubbed; none of them runs in the MLA branch.

Two knobs of the official code that decide what a run does, and how each case sets them:
1. The projection is dead code in the released repository: `before_update` only touches a
   parameter named `module.weight`, but it is handed the bare `nn.Linear` `fc_out`, whose
   parameters are named `weight` and `bias`. The paper's gradient modification therefore never
   runs in the released code. Cases `mla` and `mla3` switch it on the least invasive way: the
   tiny model's `fc_out` is a module holding the `Linear` under the attribute `module`, so the
   official name test matches (agm: `project_head = true`, the paper). Case `mla_noproj` keeps
   the released behaviour (agm: `project_head = false`).
2. The pinned PyTorch (1.8.1, requirements.txt) zeroes gradients in `optimizer.zero_grad()`
   instead of deleting them, so inside a batch the encoders of the modalities already updated
   get further momentum / weight-decay steps with a zero gradient at the later modalities' steps
   (their `.grad` is deleted only at the end of the batch). Modern PyTorch deletes them
   (`set_to_none=True`), so only the current encoder and the head move. `mla` and `mla3` run
   the modern behaviour (agm: `torch18_zero_grad = false`); `mla_noproj` runs the pinned one
   by calling `zero_grad(set_to_none=False)` (agm: `torch18_zero_grad = true`).

agm's step sees one batch per optimizer step, and MLA makes M optimizer steps per official
batch; so the stored training split holds every official batch M times in a row (agm step
k*M + i of an epoch is official batch k, modality i). The method's per-step `values`: the
modality updated (`modality`, index in modality order; `coefficients`, the same one-hot), the
projector's regulariser (`rls_alpha`, null when no projection ran) and the projector after the
step (`projector`, row-major, H*H; only with the projection). Per epoch: `train_fused_accuracy`
and `train_modality_accuracy` from `valid`.
"""

import argparse
import json
import os
import sys
import types

import torch
import torch.nn as nn
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)

COMMIT = "ab6c184579f9ff390e9c9b8216c9900c2a43545b"
REPO = "Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation"


def import_official(repo):
    """Imports main.py and utils/utils.py of the official repository."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    # GSPlugin builds its projector with `.type(torch.cuda.FloatTensor)`.
    torch.cuda.FloatTensor = torch.DoubleTensor
    ds = types.ModuleType("dataset.dataset")
    for n in ["AVDataset", "CAVDataset", "M3AEDataset", "TVDataset", "Modal3Dataset", "CLIPDataset"]:
        setattr(ds, n, None)
    pkg = types.ModuleType("dataset")
    pkg.dataset = ds
    sys.modules["dataset"] = pkg
    sys.modules["dataset.dataset"] = ds
    bm = types.ModuleType("models.basic_model")
    for n in ["AVClassifier", "CAVClassifier", "M3AEClassifier", "Modal3Classifier", "CLIPClassifier"]:
        setattr(bm, n, None)
    sys.modules["models.basic_model"] = bm
    tb = types.ModuleType("torch.utils.tensorboard")
    tb.SummaryWriter = object
    sys.modules["torch.utils.tensorboard"] = tb
    sys.path.insert(0, repo)
    import main as official_main  # noqa: E402
    from utils import utils as official_utils  # noqa: E402

    return official_main, official_utils


class NamedLinear(nn.Module):
    """`fc_out` with the Linear under `module`, so `GSPlugin.before_update` sees `module.weight`."""

    def __init__(self, linear):
        super().__init__()
        self.module = linear

    def forward(self, x):
        return self.module(x)


class TinyFusion(nn.Module):
    def __init__(self, fc_out):
        super().__init__()
        self.fc_out = fc_out


class TinyNet(nn.Module):
    """Per-modality Linear + ReLU encoders; returns the features, as the official gs_flag models."""

    def __init__(self, mods, dims, hidden, classes, named_head):
        super().__init__()
        self.mods = mods
        for m, d in zip(mods, dims):
            setattr(self, f"{m}_encoder", nn.Sequential(nn.Linear(d, hidden), nn.ReLU()))
        # agm's concat-fusion head: present in the network, unused by MLA's training.
        self.head = nn.Module()
        self.head.fc = nn.Linear(hidden * len(mods), classes)
        lin = nn.Linear(hidden, classes)
        self.shared = lin
        self.fusion_module = TinyFusion(NamedLinear(lin) if named_head else lin)

    def feats(self, xs):
        return [getattr(self, f"{m}_encoder")(x) for m, x in zip(self.mods, xs)]


class Wrapper(nn.Module):
    """Stands in for DataParallel: `model.module.fusion_module.fc_out`."""

    def __init__(self, net, m3):
        super().__init__()
        self.module = net
        self.m3 = m3

    def forward(self, *args):
        if self.m3:
            token, _padding_mask, image, spec = args
            return tuple(self.module.feats([spec, image, token]))
        spec, image = args
        return tuple(self.module.feats([spec, image]))


def grid(gen, shape, lo, hi):
    """Values k/64 with k uniform in [lo, hi]: exact in float32."""
    return torch.randint(lo, hi + 1, shape, generator=gen).to(torch.float64) / 64.0


def param_table(net, mods):
    """agm name -> (tensor, role), in a fixed order."""
    out = []
    for m in mods:
        enc = getattr(net, f"{m}_encoder")[0]
        out.append((f"net.{m}_encoder.0.weight", enc.weight, f"modality:{m}"))
        out.append((f"net.{m}_encoder.0.bias", enc.bias, f"modality:{m}"))
    out.append(("net.head.fc.weight", net.head.fc.weight, "shared"))
    out.append(("net.head.fc.bias", net.head.fc.bias, "shared"))
    out.append(("mla.head.weight", net.shared.weight, "method"))
    out.append(("mla.head.bias", net.shared.bias, "method"))
    return out


def run_case(official_main, official_utils, out_root, name, mods, dims, seed, project, torch18, dynamic,
             batch=4, batches=2, hidden=4, classes=3, epochs=3, lr=0.25):
    M = len(mods)
    gen = torch.Generator().manual_seed(seed)
    net = TinyNet(mods, dims, hidden, classes, named_head=project)
    with torch.no_grad():
        for m, d in zip(mods, dims):
            enc = getattr(net, f"{m}_encoder")[0]
            enc.weight.copy_(grid(gen, (hidden, d), -40, 40))
            enc.bias.copy_(grid(gen, (hidden,), -8, 16))
        net.head.fc.weight.copy_(grid(gen, (classes, hidden * M), -32, 32))
        net.head.fc.bias.copy_(grid(gen, (classes,), -8, 8))
        net.shared.weight.copy_(grid(gen, (classes, hidden), -40, 40))
        net.shared.bias.copy_(grid(gen, (classes,), -16, 16))
    model = Wrapper(net, m3=(M == 3))

    # Fixed official batches.
    n = batch * batches
    inputs = [grid(gen, (n, d), -64, 64) for d in dims]
    labels = torch.randint(0, classes, (n,), generator=gen)
    loader = []
    for k in range(batches):
        sl = slice(k * batch, (k + 1) * batch)
        idx = torch.arange(k * batch, (k + 1) * batch).reshape(-1, 1)
        if M == 3:
            a, v, t = (x[sl] for x in inputs)
            pad = torch.zeros(batch, 1)
            loader.append((t, pad, v, a, labels[sl], idx))
        else:
            a, v = (x[sl] for x in inputs)
            loader.append((a, v, labels[sl], idx))

    names = param_table(net, mods)
    tensors = {}
    for nm, p, _ in names:
        tensors[f"init/params/{nm}"] = p.detach().clone()
    # agm's training split: every official batch M times in a row.
    for m, x in zip(mods, inputs):
        tensors[f"train/input/{m}"] = torch.cat(
            [x[k * batch:(k + 1) * batch] for k in range(batches) for _ in range(M)]
        ).contiguous()
    tensors["train/label"] = torch.cat(
        [labels[k * batch:(k + 1) * batch] for k in range(batches) for _ in range(M)]
    ).to(torch.int64).contiguous()

    args = types.SimpleNamespace(
        lorb="m3ae" if M == 3 else "base", modal3=(M == 3), clip=True, modulation="Normal",
        fusion_method="concat", use_tensorboard=False, dynamic=dynamic,
        # `valid` takes the class count from the dataset name (an upper bound suffices); MVSA has 3.
        dataset="MVSA" if classes <= 3 else "IEMOCAP" if classes == 4 else "CREMAD" if classes <= 6 else "Food101",
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 70, 0.1)
    gs = official_utils.GSPlugin()
    gs.Pl = torch.eye(hidden)

    # Observation: the loss each backward differentiates, and the parameters after each step.
    steps = []
    pending = {}
    orig_backward = torch.Tensor.backward
    orig_before = official_utils.GSPlugin.before_update
    orig_step = optimizer.step
    orig_zero = optimizer.zero_grad

    def backward(self, *a, **k):
        pending["loss"] = float(self.detach())
        return orig_backward(self, *a, **k)

    def before_update(self, model_, inp, batch_index, len_dataloader, counter):
        pending["alpha"] = 1.0 * 0.1 ** (batch_index / len_dataloader + 1) if counter != 0 and project else None
        if pending["alpha"] is not None:
            # The official update divides elementwise by alpha + k r^T (an outer product); keep the
            # case away from a vanishing denominator so that float64 rounding stays negligible.
            r = torch.mean(inp.detach(), 0, True)
            k_ = torch.mm(self.Pl.detach(), torch.t(r))
            den = (pending["alpha"] + torch.mm(k_, r)).abs().min().item()
            min_den.append(den)
        return orig_before(self, model_, inp, batch_index, len_dataloader, counter)

    state = {"epoch": 0, "global": 0}
    min_den = []

    def step(*a, **k):
        grads = {nm: (p.grad.detach().clone() if p.grad is not None else None) for nm, p, _ in names}
        r = orig_step(*a, **k)
        state["global"] += 1
        g = state["global"]
        for nm, p, _ in names:
            tensors[f"step{g}/params_after/{nm}"] = p.detach().clone()
            if grads[nm] is not None:
                tensors[f"step{g}/grad_final/{nm}"] = grads[nm]
        steps.append({
            "step": g,
            "epoch": state["epoch"],
            "loss": pending["loss"],
            "values": {
                "coefficients": [1.0 if x == (g - 1) % M else 0.0 for x in range(M)],
                "modality": (g - 1) % M,
                "rls_alpha": pending["alpha"],
                **({"projector": [float(x) for x in gs.Pl.detach().reshape(-1)]} if project else {}),
            },
        })
        return r

    def zero_grad(*a, **k):
        if torch18:
            return orig_zero(set_to_none=False)
        return orig_zero(*a, **k)

    torch.Tensor.backward = backward
    official_utils.GSPlugin.before_update = before_update
    optimizer.step = step
    optimizer.zero_grad = zero_grad
    epoch_values = []
    try:
        for epoch in range(epochs):
            state["epoch"] = epoch + 1
            official_main.train_epoch(
                args, epoch, model, "cpu", loader, optimizer, scheduler, gs_plugin=gs, writer=None,
                gs_flag=True, av_alpha=0.55,
            )
            # main.main: valid(..., av_alpha=0.55 (main's argument), gs_flag, a/v/t_alpha defaults),
            # here on the training batches (agm's method evaluates its prediction on the training
            # split; the stored split repeats each batch M times, which leaves every accuracy as is).
            res = official_main.valid(args, model, "cpu", loader, gs_flag=True, av_alpha=0.55,
                                      a_alpha=0.35, v_alpha=0.25, t_alpha=0.4)
            epoch_values.append({
                "epoch": epoch + 1,
                "values": {"train_fused_accuracy": float(res[0]),
                           "train_modality_accuracy": [float(x) for x in res[1:]]},
            })
    finally:
        torch.Tensor.backward = orig_backward
        official_utils.GSPlugin.before_update = orig_before

    # The chosen settings must have exercised what they claim.
    alphas = [s["values"]["rls_alpha"] for s in steps]
    assert (not project) or len({a for a in alphas if a is not None}) == batches, alphas
    assert steps[0]["values"]["rls_alpha"] is None
    if min_den:
        print(f"{name}: smallest |alpha + k r| = {min(min_den):.3e}")
        assert min(min_den) > 1e-3, min_den

    case = {
        "case": name,
        "format_version": 1,
        "kind": "method_steps",
        "dtype": "float64",
        "official_reference": {
            "repo": REPO,
            "commit": COMMIT,
            "functions": ["main.train_epoch (gs_flag=True)", "utils.utils.GSPlugin.before_update",
                          "torch.optim.SGD / StepLR as in main.main"],
            "notes": (
                "Each official batch is stored M times in a row: agm step k*M+i of an epoch is official "
                "batch k, modality i. "
                + ("Projection switched on (fc_out's Linear held under `module`, so the official name test "
                   "`module.weight` matches). " if project else
                   "Projection off, as in the released code (its name test never matches). ")
                + ("zero_grad(set_to_none=False) as in the pinned PyTorch 1.8.1." if torch18 else
                   "zero_grad() of modern PyTorch (gradients deleted).")
            ),
        },
        "method": "mla",
        "method_config": {"project_head": project, "torch18_zero_grad": torch18,
                          "fusion": "dynamic" if dynamic else "fixed", "epoch_eval": True,
                          "eval_batch_size": batch},
        "modalities": mods,
        "sizes": {
            "batch": batch, "classes": classes, "hidden": hidden, "input_dims": dims,
            "epochs": epochs, "steps_per_epoch": batches * M,
        },
        "optimizer": {"kind": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 1e-4},
        "parameters": [{"name": nm, "shape": list(p.shape), "role": role} for nm, p, role in names],
        "steps": steps,
        "epochs": epoch_values,
    }
    d = os.path.join(out_root, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
        f.write("\n")
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "tensors.safetensors"))
    print(f"{name}: {len(steps)} steps, losses {[round(s['loss'], 4) for s in steps]}, "
          f"epochs {[e['values'] for e in epoch_values]}")


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("out_root", nargs="?", default=os.path.join("tests", "fixtures", "golden"))
    ap.add_argument("--name", default=None, help="write one extra case of this name")
    ap.add_argument("--modalities", type=int, default=2, choices=(2, 3))
    ap.add_argument("--dims", type=int, nargs="+", default=None)
    ap.add_argument("--seed", type=int, default=0)
    for k in ("project", "torch18", "dynamic"):
        ap.add_argument("--" + k, type=int, default=None, choices=(0, 1))
    for k, v in (("batch", 4), ("batches", 2), ("hidden", 4), ("classes", 3), ("epochs", 3)):
        ap.add_argument("--" + k, type=int, default=v)
    ap.add_argument("--lr", type=float, default=0.25)
    return ap.parse_args()


def main():
    a = parse_args()
    repo, out_root = a.repo, a.out_root
    official_main, official_utils = import_official(repo)
    if a.name:
        mods = ["audio", "visual", "text"][:a.modalities]
        flag = lambda v, d: bool(d if v is None else v)  # noqa: E731
        run_case(official_main, official_utils, out_root, a.name, mods, a.dims or [4, 3, 5][:a.modalities],
                 seed=a.seed, project=flag(a.project, True), torch18=flag(a.torch18, False),
                 dynamic=flag(a.dynamic, True), batch=a.batch, batches=a.batches, hidden=a.hidden,
                 classes=a.classes, epochs=a.epochs, lr=a.lr)
        return
    run_case(official_main, official_utils, out_root, "mla", ["audio", "visual"], [4, 3], seed=11,
             project=True, torch18=False, dynamic=True)
    run_case(official_main, official_utils, out_root, "mla3", ["audio", "visual", "text"], [4, 3, 5],
             seed=12, project=True, torch18=False, dynamic=True, epochs=2)
    run_case(official_main, official_utils, out_root, "mla_noproj", ["audio", "visual"], [4, 3], seed=13,
             project=False, torch18=True, dynamic=False, epochs=2)


if __name__ == "__main__":
    main()
