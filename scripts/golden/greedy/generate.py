#!/usr/bin/env python3
"""Golden `method_steps` cases for agm's `greedy` method (balanced multi-modal learning).

Official code: github.com/nyukat/greedy_multimodal_learning, commit
a190e03755bd8d0883b2c5c0cd7921d2561ce2ee (Wu, Jastrzebski, Cho, Geras, "Characterizing and
Overcoming the Greedy Nature of Learning in Multi-modal Deep Neural Networks", ICML 2022).

Usage: generate.py <extracted official repo> [<agm repository root>] [--name CASE --seed N ...]
(with --name: one extra case, the committed case of that modality count with the given
overrides, `--help`; without it: the committed cases)
(`git archive` of the commit above; the second argument defaults to the repository this script
lives in). Needs torch, numpy, safetensors and gin-config; the official modules' other imports
(matplotlib, argh, pandas, torchvision, the ModelNet40 loader and the MMTM model) are never
used on this code path and are replaced by empty stand-ins before importing.

What runs, unmodified, from the official code:
- `src.framework.Model_.train_loop`: the training loop (zero_grad, forward with the model's
  `curation_mode` / `caring_modality`, loss, backward, `on_backward_end` callbacks, SGD step;
  validation each epoch), with `Model_._compute_loss_and_metrics`;
- `train.blend_loss` (the sum of the cross-entropies of the model's list of predictions) and
  `train.acc` (metrics only);
- `src.callbacks.Bias_Mitigation_Strong` (the guided algorithm, configs/training_guided.gin):
  `compute_BDR` (the conditional learning speeds: per-step ||grad||^2 / ||theta||^2 of the
  "bypass" parameters, names containing `mmtm`, and of each modality's "main" branch, names
  containing the branch name, accumulated over steps; BDR_i = log10(M_bypass_i / M_main_i);
  d = BDR_0 - BDR_1), `on_backward_end` (|d| > epsilon starts `curation_windowsize`
  re-balancing steps of modality 0 when d > 0, of modality 1 when d < 0; speeds are measured only
  outside re-balancing) and `on_epoch_begin` (unlocked from `starting_epoch`, 1-based);
- `torch.optim.SGD` as `train.train` builds it (lr 0.1, momentum 0, weight decay 0).
One logging helper is patched: `Model_._compute_metrics_multiple_inputs` (per-prediction
accuracies) has its result resized to `nummodalities` rows, because the tiny net returns one or
two predictions where the official net always returns one per modality; nothing trained reads it.

What is swapped: the network (two ResNet18 branches with MMTM cross-modal modules) for agm's
tiny late-fusion net, and the ModelNet40 loader for the fixed batches below. The tiny net has
no cross-modal connection, so its forward defines how agm maps the official re-balancing step
(the MMTM gate of the re-balanced branch replaced by a constant, its running mean, so that
branch predicts from its own modality only) onto a late-fusion model:
- the shared fusion head is the cross-modal ("bypass") part; its module is named `mmtm_head`
  here so that the official `compute_BDR` counts it, as it counts MMTM's shared `fc_squeeze`,
  for every modality (its parameters are `net.head.fc.*` in the case);
- a regular step returns `[z]`, z = head(concat(features)), so the loss is CE(z);
- a re-balancing step of modality c returns `[z, z_c]`: z as above but with modality c's
  feature detached (the head and the other encoders learn from the fused prediction), and
  z_c = head(concat(features with every other modality's input replaced by zeros, agm's absent
  modality)) with the head and the other modalities' zero-input features detached (constants,
  as the official running-mean gate), so modality c's encoder learns only from its own
  prediction. The loss is CE(z) + CE(z_c) (blend_loss).

The 3-modality case (`greedy3`) cannot use `Bias_Mitigation_Strong`, which is written for two
modalities; it uses `GeneralBiasMitigation` below, the same rule for any M (speeds per
modality; the gap max_i BDR_i - min_i BDR_i against epsilon; the modality with the largest
BDR_i, the one learning slowest from its own branch, is re-balanced). For M = 2 that is the
official rule exactly, and this script checks so: it reruns the 2-modality case with the general
callback and requires bit-identical parameters, speeds and decisions.
"""

import argparse
import importlib.machinery
import json
import os
import sys
import types

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)

HERE = os.path.dirname(os.path.abspath(__file__))


def stub_unused_imports():
    """Empty stand-ins for imports of the official modules that this code path never uses."""

    def stub(name, **attrs):
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    mpl = stub("matplotlib")
    mpl.style = stub("matplotlib.style")
    stub("argh", dispatch_command=lambda *a, **k: None)
    stub("pandas")  # imported by src/callbacks.py, used only by callbacks this script does not run
    # train.py imports the ModelNet40 loader, the MMTM model and the gin-wrapped loop.
    stub("src.dataset")
    stub("src.model", MMTM_MVCNN=None)
    stub("src.training_loop", training_loop=None)


def load_official(repo):
    stub_unused_imports()
    sys.path.insert(0, repo)
    import src  # noqa: F401  (configures the official logger)
    import src.callbacks as callbacks
    import src.framework as framework
    import train

    # Logging only: Model_ logs one accuracy per element of the model's prediction list and
    # expects exactly `nummodalities` of them; the tiny net returns one (regular step) or two
    # (re-balancing step) predictions, so the per-output accuracies are resized to that count.
    per_output = framework.Model_._compute_metrics_multiple_inputs

    def per_output_resized(self, list_pred_y, y):
        r = per_output(self, list_pred_y, y)
        return np.resize(r, (self.nummodalities, r.shape[1]))

    framework.Model_._compute_metrics_multiple_inputs = per_output_resized
    return callbacks, framework, train


class TinyNet(nn.Module):
    """agm's tiny late-fusion net, with the re-balancing step as agm maps it (module docs)."""

    def __init__(self, modalities, dims, hidden, classes):
        super().__init__()
        self.modalities = list(modalities)
        self.net = nn.Module()
        for m, d in zip(modalities, dims):
            setattr(self.net, f"{m}_encoder", nn.Sequential(nn.Linear(d, hidden), nn.ReLU()))
        self.net.mmtm_head = nn.Module()
        self.net.mmtm_head.fc = nn.Linear(hidden * len(modalities), classes)
        # Attributes Model_._compute_loss_and_metrics reads.
        self.saving_mmtm_scales = False
        self.saving_mmtm_squeeze_array = False

    def encoder(self, i):
        return getattr(self.net, f"{self.modalities[i]}_encoder")

    def forward(self, *xs, curation_mode=False, caring_modality=None):
        feats = [self.encoder(i)(x) for i, x in enumerate(xs)]
        fc = self.net.mmtm_head.fc
        if not curation_mode:
            z = fc(torch.cat(feats, 1))
            return z, [z], None, None
        c = caring_modality
        z = fc(torch.cat([f.detach() if i == c else f for i, f in enumerate(feats)], 1))
        alone = [f if i == c else self.encoder(i)(torch.zeros_like(xs[i])).detach() for i, f in enumerate(feats)]
        z_c = F.linear(torch.cat(alone, 1), fc.weight.detach(), fc.bias.detach())
        return z, [z, z_c], None, None


def agm_name(name):
    return name.replace("mmtm_head", "head")


def grid(gen, shape, lo, hi):
    """Uniform multiples of 1/64 in [lo, hi] (exact in float32)."""
    k = torch.randint(int(lo * 64), int(hi * 64) + 1, shape, generator=gen)
    return k.to(torch.float64) / 64.0


def make_case(modalities, dims, hidden, classes, batch, steps, seed, signal):
    """Data and initial parameters. `signal[m]` scales how much of the label modality m carries."""
    gen = torch.Generator().manual_seed(seed)
    n = batch * steps
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=gen)]
    inputs = {}
    for m, d in zip(modalities, dims):
        noise = grid(gen, (n, d), -0.5, 0.5)
        onehot = torch.zeros(n, d)
        onehot[torch.arange(n), labels % d] = 1.0
        inputs[m] = noise + signal[m] * onehot
    params = {}
    for m, d in zip(modalities, dims):
        params[f"net.{m}_encoder.0.weight"] = grid(gen, (hidden, d), -0.5, 0.5)
        params[f"net.{m}_encoder.0.bias"] = grid(gen, (hidden,), -0.25, 0.25)
    params["net.mmtm_head.fc.weight"] = grid(gen, (classes, hidden * len(modalities)), -0.5, 0.5)
    params["net.mmtm_head.fc.bias"] = grid(gen, (classes,), -0.125, 0.125)
    return inputs, labels, params


def make_general_callback(Callback):
    class GeneralBiasMitigation(Callback):
        """Bias_Mitigation_Strong's rule for any number of modalities (module docs)."""

        def __init__(self, epsilon, curation_windowsize, branchnames, starting_epoch=2, MMTMnames=()):
            super().__init__()
            self.epsilon = epsilon
            self.branchnames = branchnames
            self.MMTMnames = list(MMTMnames)
            self.curation_windowsize = curation_windowsize
            self.starting_epoch = starting_epoch

        def on_train_begin(self, logs):
            k = len(self.branchnames)
            self.M_bypass = [0.0] * k
            self.M_main = [0.0] * k
            self.model_pytoune.curation_mode = False
            self.model_pytoune.caring_modality = None
            self.unlock = False

        def compute_speeds(self):
            k = len(self.branchnames)
            wn_main, wn_bypass, gn_main, gn_bypass = [0.0] * k, [0.0] * k, [0.0] * k, [0.0] * k
            for name, p in self.model.named_parameters():
                wn = (p**2).sum().item()
                gn = (p.grad.data**2).sum().item()
                if "mmtm" in name:
                    own = [i for i, mod in enumerate(self.MMTMnames) if mod in name]
                    for i in own or range(k):
                        wn_bypass[i] += wn
                        gn_bypass[i] += gn
                else:
                    for i, branch in enumerate(self.branchnames):
                        if branch in name:
                            wn_main[i] += wn
                            gn_main[i] += gn
            for i in range(k):
                self.M_bypass[i] += gn_bypass[i] / wn_bypass[i]
                self.M_main[i] += gn_main[i] / wn_main[i]
            self.bdr = [np.log10(self.M_bypass[i] / self.M_main[i]) for i in range(k)]
            return max(self.bdr) - min(self.bdr)

        def on_backward_end(self, batch):
            if self.unlock:
                if not self.model_pytoune.curation_mode:
                    self.gap = self.compute_speeds()
                    if self.gap > self.epsilon:
                        self.model_pytoune.curation_mode = True
                        self.curation_step = 0
                        self.model_pytoune.caring_modality = int(np.argmax(self.bdr))
                    else:
                        self.model_pytoune.curation_mode = False
                        self.model_pytoune.caring_modality = 0
                else:
                    self.curation_step += 1
                    if self.curation_step == self.curation_windowsize:
                        self.model_pytoune.curation_mode = False
            else:
                self.gap = self.compute_speeds()
                self.model_pytoune.curation_mode = False
                self.model_pytoune.caring_modality = 0

        def on_epoch_begin(self, epoch, logs):
            if epoch >= self.starting_epoch:
                self.unlock = True

    return GeneralBiasMitigation


def run(official, modalities, dims, hidden, classes, batch, steps, epochs, seed, signal, cfg, general):
    callbacks, framework, train = official
    inputs, labels, params = make_case(modalities, dims, hidden, classes, batch, steps, seed, signal)
    model = TinyNet(modalities, dims, hidden, classes)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], weight_decay=0.0, momentum=0.0)
    branchnames = [f"{m}_encoder" for m in modalities]
    kw = dict(
        epsilon=cfg["epsilon"],
        curation_windowsize=cfg["window_size"],
        branchnames=branchnames,
        starting_epoch=cfg["starting_epoch"],
        MMTMnames=list(modalities),
    )
    if general:
        bias = make_general_callback(callbacks.Callback)(**kw)
    else:
        bias = callbacks.Bias_Mitigation_Strong(**kw)
    M = len(modalities)
    records = []

    class Recorder(callbacks.Callback):
        def on_epoch_begin(self, epoch, logs):
            self.epoch = epoch

        def on_batch_begin(self, batch_ind, logs):
            mp = self.model_pytoune
            self.rec = {
                "epoch": self.epoch,
                "rebalanced": mp.caring_modality if mp.curation_mode else None,
            }

        def on_backward_end(self, batch_ind):
            # Runs after the bias callback; nothing edits the gradients before the SGD step.
            self.rec["grads"] = {n: p.grad.detach().clone() for n, p in model.named_parameters()}

        def on_batch_end(self, batch_ind, logs):
            r = self.rec
            r["loss"] = logs["loss"]
            r["params"] = {n: p.detach().clone() for n, p in model.named_parameters()}
            if general:
                main, byp = list(bias.M_main), list(bias.M_bypass)
                r["gap"] = float(bias.gap)
            else:
                main = [bias.M_main_modal_0, bias.M_main_modal_1]
                byp = [bias.M_bypass_modal_0, bias.M_bypass_modal_1]
                r["d_BDR"] = float(bias.d_BDR)
            r["main_speed"] = [float(v) for v in main]
            r["bypass_speed"] = [float(v) for v in byp]
            r["conditional_speed"] = [float(np.log10(b / m)) for b, m in zip(byp, main)]
            if not general:
                # The official d is exactly BDR_0 - BDR_1 of these sums.
                assert r["conditional_speed"][0] - r["conditional_speed"][1] == r["d_BDR"]
                r["gap"] = abs(r["d_BDR"])
            r["curation_step"] = getattr(bias, "curation_step", 0)
            r["next_rebalanced"] = self.model_pytoune.caring_modality if self.model_pytoune.curation_mode else None
            records.append(r)
            self.rec = None

    recorder = Recorder()
    for clbk in (bias, recorder):
        clbk.set_model(model, ignore=False)
        clbk.set_optimizer(optimizer)
    mm = framework.Model_(model=model, optimizer=optimizer, loss_function=train.blend_loss, metrics=[train.acc],
                          verbose=False, nummodalities=M)
    for clbk in (bias, recorder):
        clbk.set_model_pytoune(mm)
    n = batch * steps
    batches = [
        (np.arange(k * batch, (k + 1) * batch), tuple(inputs[m][k * batch:(k + 1) * batch] for m in modalities),
         labels[k * batch:(k + 1) * batch])
        for k in range(steps)
    ]
    assert n == sum(len(b[2]) for b in batches)
    mm.train_loop(batches, valid_generator=batches, test_generator=batches, epochs=epochs, steps_per_epoch=steps,
                  validation_steps=steps, test_steps=steps, callbacks=[bias, recorder])
    assert len(records) == epochs * steps
    return inputs, labels, params, records


def write_case(out_dir, name, modalities, dims, hidden, classes, batch, steps, epochs, cfg, data, note):
    from safetensors.torch import save_file

    inputs, labels, params, records = data
    M = len(modalities)
    tensors = {}
    for m in modalities:
        tensors[f"train/input/{m}"] = inputs[m].contiguous()
    tensors["train/label"] = labels.to(torch.int64).contiguous()
    for n, v in params.items():
        tensors[f"init/params/{agm_name(n)}"] = v.contiguous()
    out_steps = []
    for k, r in enumerate(records, start=1):
        for n, v in r["params"].items():
            tensors[f"step{k}/params_after/{agm_name(n)}"] = v.contiguous()
        for n, v in r["grads"].items():
            tensors[f"step{k}/grad_final/{agm_name(n)}"] = v.contiguous()
        coeff = [1.0 if r["rebalanced"] == i else 0.0 for i in range(M)]
        out_steps.append({
            "step": k,
            "epoch": r["epoch"],
            "loss": r["loss"],
            "values": {
                "coefficients": coeff,
                "main_speed": r["main_speed"],
                "bypass_speed": r["bypass_speed"][0],
                "conditional_speed": r["conditional_speed"],
                "speed_gap": r["gap"],
                "window_step": r["curation_step"],
            },
            # Informational: which modality the step re-balanced, and the one the next step will.
            "rebalanced": r["rebalanced"],
            "next_rebalanced": r["next_rebalanced"],
        })
    parameters = []
    for n, v in params.items():
        an = agm_name(n)
        role = "shared"
        for m in modalities:
            if an.startswith(f"net.{m}_encoder."):
                role = f"modality:{m}"
        parameters.append({"name": an, "shape": list(v.shape), "role": role})
    case = {
        "case": name,
        "format_version": 1,
        "kind": "method_steps",
        "dtype": "float64",
        "official_reference": {
            "repo": "nyukat/greedy_multimodal_learning",
            "commit": "a190e03755bd8d0883b2c5c0cd7921d2561ce2ee",
            "functions": [
                "src/framework.py:Model_.train_loop",
                "src/framework.py:Model_._compute_loss_and_metrics",
                "train.py:blend_loss",
                "src/callbacks.py:Bias_Mitigation_Strong" if M == 2 else
                "scripts/golden/greedy/generate.py:GeneralBiasMitigation (Bias_Mitigation_Strong for any M)",
                "torch.optim.SGD",
            ],
        },
        "method": "greedy",
        "method_config": {
            "epsilon": cfg["epsilon"],
            "window_size": cfg["window_size"],
            "starting_epoch": cfg["starting_epoch"],
        },
        "modalities": list(modalities),
        "sizes": {
            "batch": batch,
            "classes": classes,
            "hidden": hidden,
            "input_dims": list(dims),
            "epochs": epochs,
            "steps_per_epoch": steps,
        },
        "optimizer": {"kind": "sgd", "lr": cfg["lr"], "momentum": 0.0, "weight_decay": 0.0},
        "parameters": parameters,
        "steps": out_steps,
        "note": note,
    }
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "tensors.safetensors"))
    with open(os.path.join(out_dir, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
        f.write("\n")


def summary(records):
    return " ".join(
        (f"{r['rebalanced']}" if r["rebalanced"] is not None else ".") + f"({r['gap']:.3f})" for r in records
    )


CASES = {
    # Re-balances visual (steps 5-6), then no re-balancing while the gap stays under epsilon
    # (steps 7-8), then audio twice, both windows crossing an epoch end (steps 10-11, 13-14).
    "greedy": dict(modalities=["audio", "visual"], dims=[4, 3], hidden=4, classes=3, batch=4, steps=3, epochs=5,
                   seed=48, signal={"audio": 1.0, "visual": 0.5},
                   cfg=dict(lr=0.1, epsilon=0.05, window_size=2, starting_epoch=2)),
    # Re-balances audio, then text, then audio again.
    "greedy3": dict(modalities=["audio", "visual", "text"], dims=[4, 3, 5], hidden=4, classes=3, batch=4, steps=3,
                    epochs=5, seed=17, signal={"audio": 1.0, "visual": 0.25, "text": 0.75},
                    cfg=dict(lr=0.1, epsilon=0.05, window_size=2, starting_epoch=2)),
}

NOTE = ("Regular step: loss CE(z), z the fused logits. Re-balancing step of modality c (coefficients: one-hot "
        "of c): loss CE(z) + CE(z_c); modality c's encoder gets only the gradient of CE(z_c), z_c the fused "
        "head over modality c's feature and the other modalities' zero-input features (head and those features "
        "constant); every other parameter gets the gradient of CE(z). Speeds are measured after backward on "
        "non-re-balancing steps: main_speed[i] += |g_i|^2/|w_i|^2 over modality i's encoder, bypass_speed += the "
        "same over the shared head; conditional_speed[i] = log10(bypass_speed/main_speed[i]); speed_gap = max - "
        "min; above epsilon (from starting_epoch on) the next window_size steps re-balance the argmax.")


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("root", nargs="?", default=os.path.join(HERE, "..", "..", ".."))
    ap.add_argument("--name", default=None, help="write one extra case of this name")
    ap.add_argument("--modalities", type=int, default=2, choices=(2, 3))
    for k in ("seed", "batch", "steps", "epochs", "hidden", "classes", "window_size", "starting_epoch"):
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=None)
    ap.add_argument("--dims", type=int, nargs="+", default=None)
    ap.add_argument("--signal", type=float, nargs="+", default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--epsilon", type=float, default=None)
    return ap.parse_args()


def extra_cases(a):
    """The committed case of a.modalities modalities with the given overrides."""
    c = dict(CASES["greedy" if a.modalities == 2 else "greedy3"])
    c["cfg"] = dict(c["cfg"])
    for k in ("seed", "batch", "steps", "epochs", "hidden", "classes"):
        if getattr(a, k) is not None:
            c[k] = getattr(a, k)
    for k in ("lr", "epsilon", "window_size", "starting_epoch"):
        if getattr(a, k) is not None:
            c["cfg"][k] = getattr(a, k)
    if a.dims:
        c["dims"] = a.dims
    if a.signal:
        c["signal"] = dict(zip(c["modalities"], a.signal))
    return {a.name: c}


def main():
    a = parse_args()
    repo = os.path.abspath(a.repo)
    root = os.path.abspath(a.root)
    official = load_official(repo)
    for name, c in (extra_cases(a) if a.name else CASES).items():
        args = (c["modalities"], c["dims"], c["hidden"], c["classes"], c["batch"], c["steps"], c["epochs"], c["seed"],
                c["signal"], c["cfg"])
        M = len(c["modalities"])
        data = run(official, *args, general=(M != 2))
        recs = data[3]
        if M == 2:
            # The general rule is the official one for two modalities.
            again = run(official, *args, general=True)[3]
            for a, b in zip(recs, again):
                assert a["rebalanced"] == b["rebalanced"] and a["loss"] == b["loss"]
                assert a["main_speed"] == b["main_speed"] and a["gap"] == b["gap"]
                assert all(torch.equal(a["params"][n], b["params"][n]) for n in a["params"])
        print(name, summary(recs))
        # What the case must exercise: two different modalities re-balanced, and (M = 2) two
        # regular steps in a row after the unlock (the gap under epsilon).
        assert len({r["rebalanced"] for r in recs} - {None}) >= 2
        if M == 2:
            start = c["cfg"]["starting_epoch"]
            assert any(a["rebalanced"] is None and b["rebalanced"] is None and a["epoch"] >= start
                       for a, b in zip(recs, recs[1:]))
        write_case(os.path.join(root, "tests", "fixtures", "golden", name), name, c["modalities"], c["dims"],
                   c["hidden"], c["classes"], c["batch"], c["steps"], c["epochs"], c["cfg"], data, NOTE)


if __name__ == "__main__":
    main()
