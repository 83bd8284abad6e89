"""Golden `method_steps` cases for InfoReg (agm method `inforeg`).

Official code: GeWu-Lab/InfoReg_CVPR2025, commit 939b2ed11dcbf4daddb2507157b2cb9f8d0e24d7
(Huang et al., "Adaptive Unimodal Regulation for Balanced Multimodal Information
Acquisition", CVPR 2025).

Usage:
    python generate.py <extracted official repo> [<agm repository root>] [--name CASE --seed N ...]
(with --name: one extra case, CASE2 or CASE3 below with the given overrides, `--help`)

What runs
---------
Case `inforeg` (M = 2, audio + visual): the official `main.train_epoch` itself, once per epoch,
with the bookkeeping `main.main` does around it (`audio_trace_list` / `visual_trace_list`
pre-filled with ten zeros, `optim.SGD(lr, momentum=0.9, weight_decay=1e-4)`, `StepLR(30, 0.1)`).
Inside it run, unchanged: the three cross-entropies (fused, and the uni-modal outputs
`f_m · W_mᵀ + b/2` read off the fused head), the extra diagnostic backward passes, the summed
backward `loss_v + loss_a + loss`, the scores `s_m = Σ_i softmax(out_m)[i, y_i]`, the
regulation coefficients (`0.95·exp(tanh(s_a − s_v))` on audio or `0.1·exp(tanh(s_v − s_a))` on
visual, only while `k > 0.05`), the proximal gradient term `β·(θ − θ_epoch_start)` added to the
regulated encoder's gradients (`global_model = deepcopy(model)` at the epoch start), the
per-epoch Fisher trace (`Σ_layers mean(Σ_steps grad²)` over the Linear/Conv weights of each
encoder, taken after the proximal term) and the prime-learning-window statistic
`k = (mean(last 10 traces) − mean(previous 10)) / mean(last 10)` of the audio trace.

Only these pieces are swapped or patched:
- the networks: a tiny `audio_net` / `visual_net` (Linear(d_m, H) + ReLU each) and `head`
  (Linear(2H, C)), wrapped in `nn.DataParallel` as the official `main` does (on CPU it calls the
  module directly). The official forward returns `(a, v, out_audio, out_video, out)`; the
  training loop ignores `out_audio`/`out_video`, so the tiny model returns `None` there. The
  loop logs the cosine similarity of `head_audio`/`head_video` to the head; these logging-only
  heads are plain (non-module) zero tensors here so that no unused Linear enters the FIM dicts
  (with real unused Linear modules the official loop would multiply `None` gradients);
- the data loader: a fixed list of batches (stored order, no shuffling);
- the TensorBoard writer: a no-op;
- the feature width: the loop slices the fused head at the hard-coded ResNet width 512
  (`weight[:, :512]`, `weight[:, 512:]`); the source of `train_epoch` is taken with `inspect`,
  every `512` is replaced by the tiny width H, and it is compiled in `main`'s module namespace.
  Nothing else in the function's text changes;
- `nn.CrossEntropyLoss` inside that namespace records each value it returns, and
  `optimizer.step` is wrapped to record, just before the step, the caller's locals (`k`,
  `beta`, `beta2`, `score_a`, `score_v`) and the gradients it consumes, and after it the
  parameters. Modules the loop's file imports but the loop does not use (data sets,
  torchvision, tensorboard, matplotlib, `utils.utils`, the ResNet models) are stubbed.
- `.float()` casts the inputs to float32 (as the official loop does); the inputs are multiples
  of 1/64, exact in float32, and the tiny encoders cast them back to float64.

Case `inforeg3` (M = 3, audio + visual + text): the official code is written for two
modalities only, so this case comes from `reference_general` below, a re-implementation of the
same loop for any M with agm's M > 2 rule (our choice, documented in the Rust module): every
modality whose score exceeds the lowest one is regulated with `c_m · exp(tanh(s_m − s_min))`,
uni-modal outputs use `b / M`, the window reads the first modality's trace. The script first
runs `reference_general` on the M = 2 case and asserts that it reproduces the official run
(losses, scores, coefficients, traces, every parameter after every step) to 1e-12, so the
M = 3 case extends exactly what was checked.

The data seeds, lr (0.1 for M = 2, 0.2 for M = 3) and the audio encoder's initial bias offset
(−1) were picked by a search over seeds so that within the case every modality is regulated in
some step (M = 2: audio with strength 0.95 in epoch 1, visual with 0.1 later; M = 3: two
modalities at once in some steps), and the prime learning window closes in epoch 3
(k ≤ 0.05: no regulation in its steps) and opens again in epoch 4.
"""

import argparse
import copy
import importlib
import inspect
import json
import os
import sys
import types

import torch
import torch.nn as tnn
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)

OFFICIAL_REPO = "GeWu-Lab/InfoReg_CVPR2025"
OFFICIAL_COMMIT = "939b2ed11dcbf4daddb2507157b2cb9f8d0e24d7"
STRENGTHS2 = [0.95, 0.1]  # the official audio / visual regulation strengths
THRESHOLD = 0.05  # the official window threshold on k
WINDOW = 10  # the official averaging length (and zero prefill) of the trace lists


# ----------------------------------------------------------------------------------------------
# Importing the official main.py
# ----------------------------------------------------------------------------------------------

def _stub(name, **attrs):
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    sys.modules[name] = mod
    return mod


def import_official(repo):
    """Imports the official main.py with the modules it needs only for data/logging stubbed."""
    sys.path.insert(0, repo)
    _stub("dataset")
    _stub("dataset.CramedDataset", CramedDataset=object)
    _stub("dataset.VGGSoundDataset", VGGSound=object)
    _stub("dataset.dataset", AVDataset=object)
    _stub("models")
    _stub("models.basic_model", __all__=[])
    _stub("utils")
    _stub("utils.utils", setup_seed=lambda *a, **k: None, weight_init=lambda *a, **k: None)
    _stub("KSDataset", __all__=[])
    _stub("torchvision")
    _stub("torch.utils.tensorboard", SummaryWriter=object)
    _stub("matplotlib")
    _stub("matplotlib.pyplot")
    main = importlib.import_module("main")
    return main


class NoWriter:
    def __getattr__(self, name):
        return lambda *a, **k: None


# ----------------------------------------------------------------------------------------------
# The tiny network (agm's fixed golden network)
# ----------------------------------------------------------------------------------------------

class TinyAV(tnn.Module):
    """audio_net / visual_net = Linear(d_m, H) + ReLU, head = Linear(2H, C): the official
    attribute names, so the official loop's name rules ('audio_net', 'visual_net', 'head')
    select the same parameters they select in AVClassifier."""

    def __init__(self, da, dv, hidden, classes):
        super().__init__()
        self.audio_net = tnn.Sequential(tnn.Linear(da, hidden), tnn.ReLU())
        self.visual_net = tnn.Sequential(tnn.Linear(dv, hidden), tnn.ReLU())
        self.head = tnn.Linear(2 * hidden, classes)
        # Logging-only heads of the official model (cosine-similarity scalars): plain tensors.
        zeros = torch.zeros(classes, hidden)
        self.head_audio = types.SimpleNamespace(weight=types.SimpleNamespace(data=zeros))
        self.head_video = types.SimpleNamespace(weight=types.SimpleNamespace(data=zeros))

    def forward(self, audio, visual):
        b = audio.shape[0]
        a = self.audio_net(audio.reshape(b, -1).to(torch.float64))
        v = self.visual_net(visual.reshape(b, -1).to(torch.float64))
        out = self.head(torch.cat((a, v), 1))
        return a, v, None, None, out


OFFICIAL_TO_AGM2 = {
    "module.audio_net.0.weight": "net.audio_encoder.0.weight",
    "module.audio_net.0.bias": "net.audio_encoder.0.bias",
    "module.visual_net.0.weight": "net.visual_encoder.0.weight",
    "module.visual_net.0.bias": "net.visual_encoder.0.bias",
    "module.head.weight": "net.head.fc.weight",
    "module.head.bias": "net.head.fc.bias",
}


# ----------------------------------------------------------------------------------------------
# Case data
# ----------------------------------------------------------------------------------------------

def q(t, denom=64):
    """Rounds to multiples of 1/denom (exact in float32)."""
    return torch.round(t * denom) / denom


def make_case(mods, dims, hidden, classes, batch, steps, seed, scales, bias_shift):
    """bias_shift: per-modality offset of the encoder biases' initial values."""
    g = torch.Generator().manual_seed(seed)
    n = batch * steps
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=g)]
    inputs = {}
    for m, d, s in zip(mods, dims, scales):
        # Class-dependent mean (strength s) plus noise.
        means = torch.randn(classes, d, generator=g)
        x = s * means[labels] + 0.5 * torch.randn(n, d, generator=g)
        inputs[m] = q(x.clamp(-4, 4))
    params = {}
    for m, d, shift in zip(mods, dims, bias_shift):
        bound = 1.0 / d ** 0.5
        params[f"net.{m}_encoder.0.weight"] = q((torch.rand(hidden, d, generator=g) * 2 - 1) * bound)
        params[f"net.{m}_encoder.0.bias"] = q((torch.rand(hidden, generator=g) * 2 - 1) * bound + shift)
    fan = hidden * len(mods)
    bound = 1.0 / fan ** 0.5
    params["net.head.fc.weight"] = q((torch.rand(classes, fan, generator=g) * 2 - 1) * bound)
    params["net.head.fc.bias"] = q((torch.rand(classes, generator=g) * 2 - 1) * bound)
    return inputs, labels, params


def batches(inputs, labels, mods, batch, steps):
    out = []
    for k in range(steps):
        sl = slice(k * batch, (k + 1) * batch)
        out.append(tuple(inputs[m][sl] for m in mods) + (labels[sl],))
    return out


# ----------------------------------------------------------------------------------------------
# The official run (M = 2)
# ----------------------------------------------------------------------------------------------

def run_official(main, inputs, labels, params, cfg):
    mods = ["audio", "visual"]
    hidden, classes = cfg["hidden"], cfg["classes"]
    model = TinyAV(cfg["dims"][0], cfg["dims"][1], hidden, classes)
    with torch.no_grad():
        for off, agm in OFFICIAL_TO_AGM2.items():
            dict(model.named_parameters())[off[len("module."):]].copy_(params[agm])
    model = tnn.DataParallel(model)
    assert not model.device_ids, "runs the CPU path of DataParallel"

    # train_epoch with the hard-coded feature width 512 replaced by H, in main's namespace.
    src = inspect.getsource(main.train_epoch)
    assert src.count("512") == 6, src.count("512")
    src = src.replace("512", str(hidden))
    ns = dict(vars(main))

    recorded_losses = []

    class RecordingCE(tnn.CrossEntropyLoss):
        def forward(self, input, target):
            value = super().forward(input, target)
            recorded_losses.append(value.item())
            return value

    nn_proxy = types.ModuleType("nn_proxy")
    nn_proxy.__dict__.update(vars(tnn))
    nn_proxy.CrossEntropyLoss = RecordingCE
    ns["nn"] = nn_proxy
    exec(compile(src, main.__file__, "exec"), ns)
    train_epoch = ns["train_epoch"]

    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 30, 0.1)
    named = list(model.named_parameters())

    steps = []
    plain_step = optimizer.step

    def recording_step(*a, **k):
        caller = inspect.currentframe().f_back.f_locals
        beta, beta2 = float(caller["beta"]), float(caller["beta2"])
        rec = {
            "k": float(caller["k"]),
            "scores": [float(caller["score_a"]), float(caller["score_v"])],
            "beta": [beta, beta2],
            "losses": list(recorded_losses[-3:]),  # fused, visual, audio (the loop's order)
            "grad_final": {OFFICIAL_TO_AGM2[n]: p.grad.detach().clone() for n, p in named},
        }
        out = plain_step(*a, **k)
        rec["params_after"] = {OFFICIAL_TO_AGM2[n]: p.detach().clone() for n, p in named}
        steps.append(rec)
        return out

    optimizer.step = recording_step

    args = types.SimpleNamespace(learning_rate=cfg["lr"])
    audio_trace_list = [0] * 10
    visual_trace_list = [0] * 10
    loader = batches(inputs, labels, mods, cfg["batch"], cfg["steps"])
    epochs = []
    for epoch in range(cfg["epochs"]):
        train_epoch(args, epoch, model, torch.device("cpu"), loader, optimizer, scheduler, NoWriter(),
                    visual_trace_list, audio_trace_list, None)
        epochs.append({"traces": [audio_trace_list[-1], visual_trace_list[-1]]})
    return steps, epochs


# ----------------------------------------------------------------------------------------------
# The same loop for any M (used for M = 3; checked against the official run at M = 2)
# ----------------------------------------------------------------------------------------------

def reference_general(inputs, labels, params, cfg, mods, strengths):
    m_count = len(mods)
    hidden = cfg["hidden"]
    p = {n: t.clone().requires_grad_(True) for n, t in params.items()}
    order = [n for n in params]  # fixed order for the optimizer
    optimizer = torch.optim.SGD([p[n] for n in order], lr=cfg["lr"], momentum=0.9, weight_decay=1e-4)
    trace_lists = [[0.0] * WINDOW for _ in mods]
    loader = batches(inputs, labels, mods, cfg["batch"], cfg["steps"])
    steps, epochs = [], []
    for epoch in range(cfg["epochs"]):
        if epoch == 0:
            k = 1.0
        else:
            lst = trace_lists[0]
            tr1 = sum(lst[-WINDOW:]) / WINDOW
            tr2 = sum(lst[-WINDOW - 1:-1]) / WINDOW
            k = (tr1 - tr2) / tr1
        anchor = {n: t.detach().clone() for n, t in p.items()}
        fim = [0.0] * m_count
        for batch in loader:
            xs, y = batch[:-1], batch[-1]
            optimizer.zero_grad()
            feats = [F.relu(x @ p[f"net.{m}_encoder.0.weight"].T + p[f"net.{m}_encoder.0.bias"])
                     for m, x in zip(mods, xs)]
            w, b = p["net.head.fc.weight"], p["net.head.fc.bias"]
            out = torch.cat(feats, 1) @ w.T + b
            outs = [f @ w[:, i * hidden:(i + 1) * hidden].T + b / m_count for i, f in enumerate(feats)]
            loss = F.cross_entropy(out, y)
            uni = [F.cross_entropy(o, y) for o in outs]
            total = loss + sum(uni)
            total.backward()
            with torch.no_grad():
                scores = [torch.softmax(o, 1).gather(1, y.view(-1, 1)).sum().item() for o in outs]
            s_min = min(scores)
            beta = [0.0] * m_count
            if k > THRESHOLD:
                for i in range(m_count):
                    if scores[i] > s_min:
                        beta[i] = strengths[i] * float(torch.exp(torch.tanh(torch.tensor(scores[i] - s_min))))
            with torch.no_grad():
                for i, m in enumerate(mods):
                    for suffix in ("weight", "bias"):
                        n = f"net.{m}_encoder.0.{suffix}"
                        p[n].grad += beta[i] * (p[n] - anchor[n])
                    g = p[f"net.{m}_encoder.0.weight"].grad
                    fim[i] += (g * g).mean().item()
            rec = {
                "k": k, "scores": scores, "beta": beta,
                "losses": [loss.item()] + [u.item() for u in uni],
                "grad_final": {n: p[n].grad.detach().clone() for n in order},
            }
            optimizer.step()
            rec["params_after"] = {n: p[n].detach().clone() for n in order}
            steps.append(rec)
        for i in range(m_count):
            trace_lists[i].append(fim[i])
        epochs.append({"traces": [trace_lists[i][-1] for i in range(m_count)]})
    return steps, epochs


def window_k(trace_history):
    """k the official code computes at the start of the epoch after `trace_history`."""
    lst = [0.0] * WINDOW + list(trace_history)
    tr1 = sum(lst[-WINDOW:]) / WINDOW
    tr2 = sum(lst[-WINDOW - 1:-1]) / WINDOW
    return (tr1 - tr2) / tr1


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

def write_case(root, name, mods, cfg, inputs, labels, params, steps, epochs, strengths, semantics):
    from safetensors.torch import save_file

    folder = os.path.join(root, "tests", "fixtures", "golden", name)
    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for n, t in params.items():
        tensors[f"init/params/{n}"] = t.to(torch.float64).contiguous()
    for m in mods:
        tensors[f"train/input/{m}"] = inputs[m].to(torch.float64).contiguous()
    tensors["train/label"] = labels.to(torch.int64).contiguous()
    case_steps = []
    spe = cfg["steps"]
    for i, rec in enumerate(steps):
        k = i + 1
        for n, t in rec["params_after"].items():
            tensors[f"step{k}/params_after/{n}"] = t.contiguous()
        for n, t in rec["grad_final"].items():
            tensors[f"step{k}/grad_final/{n}"] = t.contiguous()
        window_open = rec["k"] > THRESHOLD
        case_steps.append({
            "step": k,
            "epoch": i // spe + 1,
            "loss": sum(rec["losses"]),
            "values": {
                "coefficients": rec["beta"],
                "beta": rec["beta"],
                "scores": rec["scores"],
                "window_k": rec["k"],
                "window_open": window_open,
            },
        })
    case_epochs = []
    history = []
    for e, ep in enumerate(epochs):
        history.append(ep["traces"][0])
        case_epochs.append({
            "epoch": e + 1,
            "values": {"traces": ep["traces"], "window_k": window_k(history)},
        })
    parameters = []
    for n, t in params.items():
        role = "shared"
        for m in mods:
            if n.startswith(f"net.{m}_encoder."):
                role = f"modality:{m}"
        parameters.append({"name": n, "shape": list(t.shape), "role": role})
    case = {
        "case": name,
        "format_version": 1,
        "kind": "method_steps",
        "dtype": "float64",
        "semantics": semantics,
        "official_reference": {
            "repo": OFFICIAL_REPO,
            "commit": OFFICIAL_COMMIT,
            "functions": ["main.py:train_epoch (with main.py:main's trace lists, optimizer and scheduler)"]
            if len(mods) == 2 else
            ["generate.py:reference_general (the M = 2 loop of main.py:train_epoch generalised; checked against it)"],
        },
        "method": "inforeg",
        "method_config": {
            "strength": strengths,
            "threshold": THRESHOLD,
            "window": WINDOW,
            "window_trace": "first",
            "unimodal": "head-split"
        },
        "modalities": mods,
        "sizes": {
            "batch": cfg["batch"], "classes": cfg["classes"], "hidden": cfg["hidden"],
            "input_dims": cfg["dims"], "epochs": cfg["epochs"], "steps_per_epoch": cfg["steps"],
        },
        "optimizer": {"kind": "sgd", "lr": cfg["lr"], "momentum": 0.9, "weight_decay": 1e-4},
        "parameters": parameters,
        "steps": case_steps,
        "epochs": case_epochs,
    }
    with open(os.path.join(folder, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
        f.write("\n")
    save_file(tensors, os.path.join(folder, "tensors.safetensors"))
    return folder


def compare(a_steps, a_epochs, b_steps, b_epochs, tol=1e-12):
    worst = 0.0
    for x, y in zip(a_steps, b_steps):
        assert x["k"] == y["k"] or abs(x["k"] - y["k"]) <= tol * max(1, abs(x["k"]))
        for u, v in zip(x["scores"] + x["beta"], y["scores"] + y["beta"]):
            worst = max(worst, abs(u - v))
        worst = max(worst, abs(sum(x["losses"]) - sum(y["losses"])))
        for n, t in x["params_after"].items():
            worst = max(worst, (t - y["params_after"][n]).abs().max().item())
    for x, y in zip(a_epochs, b_epochs):
        for u, v in zip(x["traces"], y["traces"]):
            worst = max(worst, abs(u - v) / max(abs(u), 1e-300))
    assert len(a_steps) == len(b_steps) and len(a_epochs) == len(b_epochs)
    assert worst <= tol, worst
    return worst


def summary(name, steps, epochs):
    print(f"[{name}]")
    for i, s in enumerate(steps):
        print(f"  step {i + 1}: k={s['k']:.4f} scores={[round(x, 4) for x in s['scores']]} "
              f"beta={[round(x, 4) for x in s['beta']]} loss={sum(s['losses']):.5f}")
    hist = []
    for e, ep in enumerate(epochs):
        hist.append(ep["traces"][0])
        print(f"  epoch {e + 1}: traces={ep['traces']} next k={window_k(hist):.4f}")


CASE2 = dict(dims=[4, 3], hidden=4, classes=3, batch=6, steps=3, epochs=4, lr=0.1, seed=4,
             scales=[1.0, 1.5], bias_shift=[-1.0, 0.0])
CASE3 = dict(dims=[4, 3, 5], hidden=4, classes=3, batch=6, steps=3, epochs=4, lr=0.2, seed=6,
             scales=[1.0, 1.5, 1.2], bias_shift=[-1.0, 0.0, 0.0])
STRENGTHS3 = [0.95, 0.1, 0.5]


def parse_args(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("root", nargs="?", default=os.getcwd())
    ap.add_argument("--name", default=None, help="write one extra case of this name")
    ap.add_argument("--modalities", type=int, default=2, choices=(2, 3))
    for k in ("seed", "batch", "steps", "epochs", "hidden", "classes"):
        ap.add_argument("--" + k, type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--dims", type=int, nargs="+", default=None)
    ap.add_argument("--scales", type=float, nargs="+", default=None)
    ap.add_argument("--bias-shift", type=float, nargs="+", default=None)
    return ap.parse_args(argv[1:])


def extra_case(a, main):
    c = dict(CASE2 if a.modalities == 2 else CASE3)
    for k in ("seed", "batch", "steps", "epochs", "hidden", "classes", "lr", "dims", "scales", "bias_shift"):
        if getattr(a, k) is not None:
            c[k] = getattr(a, k)
    mods = ["audio", "visual", "text"][:a.modalities]
    strengths = STRENGTHS2 if a.modalities == 2 else STRENGTHS3
    inputs, labels, params = make_case(mods, c["dims"], c["hidden"], c["classes"], c["batch"], c["steps"],
                                       c["seed"], c["scales"], c["bias_shift"])
    steps, epochs = reference_general(inputs, labels, params, c, mods, strengths)
    if a.modalities == 2:
        off_steps, off_epochs = run_official(main, inputs, labels, params, c)
        print(f"official vs reference_general: {compare(off_steps, off_epochs, steps, epochs):.2e}")
        steps, epochs = off_steps, off_epochs
    summary(a.name, steps, epochs)
    print("wrote", write_case(a.root, a.name, mods, c, inputs, labels, params, steps, epochs, strengths,
                              f"InfoReg, extra case (M = {a.modalities}); see the committed cases' semantics."))


def main_(argv):
    a = parse_args(argv)
    repo, root = a.repo, a.root
    main = import_official(os.path.abspath(repo))
    if a.name:
        return extra_case(a, main)

    mods2 = ["audio", "visual"]
    c = CASE2
    inputs, labels, params = make_case(mods2, c["dims"], c["hidden"], c["classes"], c["batch"], c["steps"],
                                       c["seed"], c["scales"], c["bias_shift"])
    off_steps, off_epochs = run_official(main, inputs, labels, params, c)
    gen_steps, gen_epochs = reference_general(inputs, labels, params, c, mods2, STRENGTHS2)
    worst = compare(off_steps, off_epochs, gen_steps, gen_epochs)
    print(f"reference_general reproduces the official M = 2 run (max deviation {worst:.2e})")
    summary("inforeg", off_steps, off_epochs)
    folder = write_case(
        root, "inforeg", mods2, c, inputs, labels, params, off_steps, off_epochs, STRENGTHS2,
        "InfoReg, official main.py:train_epoch (M = 2): loss = CE(fused) + CE(audio) + CE(visual), "
        "uni-modal outputs f_m W_m^T + b/2 from the fused head; scores s_m = sum_i softmax(out_m)[i, y_i]; "
        "while k > 0.05 the leading modality's encoder gradients get + beta (theta - theta_epoch_start), "
        "beta = c_m exp(tanh(s_lead - s_other)), c = (0.95, 0.1); per-epoch Fisher trace of each "
        "encoder's weights (after the proximal term); k from the audio trace list (10 zeros prefilled).")
    print("wrote", folder)

    mods3 = ["audio", "visual", "text"]
    c = CASE3
    inputs, labels, params = make_case(mods3, c["dims"], c["hidden"], c["classes"], c["batch"], c["steps"],
                                       c["seed"], c["scales"], c["bias_shift"])
    steps3, epochs3 = reference_general(inputs, labels, params, c, mods3, STRENGTHS3)
    summary("inforeg3", steps3, epochs3)
    folder = write_case(
        root, "inforeg3", mods3, c, inputs, labels, params, steps3, epochs3, STRENGTHS3,
        "InfoReg for M = 3 (agm's extension; the official code is M = 2 only): as inforeg, with uni-modal "
        "outputs f_m W_m^T + b/3, and every modality whose score exceeds the lowest score regulated with "
        "beta_m = c_m exp(tanh(s_m - s_min)); the window reads the first modality's trace.")
    print("wrote", folder)


if __name__ == "__main__":
    main_(sys.argv)
