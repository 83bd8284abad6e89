"""Shared harness of the OPM and OGM golden generators (scripts/golden/{opm,ogm}/generate.py).

Official code: GeWu-Lab/BML_TPAMI2024 ("On-the-fly Modulation for Balanced Multimodal
Learning", Wei, Hu, Du, Wen, TPAMI 2024), commit 4b3aa4fd841856c4acbebf48549e6c59fbf7635e.

What runs from the official code (imported from the extracted repository, never copied):
- `code/main.py:train`: the whole training loop of one epoch (zero_grad, forward, the OPM
  sample selection, the loss, backward, the OGM coefficients and gradient edit, optimizer step,
  scheduler step), called once per epoch as the official `main()` does;
- `code/models/Classifier.py:Classifier.forward` (the per-modality logits t_1, t_2 from the
  fusion head's weight halves, the scores performance_1/2, the OPM branch), `calcu_q`,
  `Modality_drop.execute_drop`, `custom_autograd`;
- `code/models/fusion_model.py:ConcatFusion` (the fusion head);
- `code/config.py:Config` (every setting not named by the generators keeps its default).

What is swapped, and how:
- The two ResNet-18 encoders become the tiny encoder of agm's `method_steps` format
  (Linear(d_m, H) then ReLU), written as a 1x1 `nn.Conv2d` on the input viewed as
  `[B, d_m, 1, 1]`, followed by ReLU: the same function, and its weight is 4-D, so the official
  OGM rule `len(parms.grad.size()) == 4` (which on the official ResNet-18 encoders selects every
  conv kernel, i.e. every weight of rank >= 2) reaches it. The encoders return `[B, H, 1, 1]`,
  which the official forward pools and squeezes to `[B, H]` unchanged.
- The data loader becomes a list of fixed batches `(spec, image, label)` in stored order.
- `Classifier.py` is read from the repository and compiled with two textual edits, both
  asserted to match exactly once: the stray `]` after `torch.chunk(cleaned_fea,num_mod,dim=0)`
  (a SyntaxError in the official file; the line's meaning is unchanged) and the hard-coded
  feature width 512 in `w[:,:512]` / `w[:,512:]`, replaced by the tiny feature width H.
- The random draws of OPM (`np.random.rand(1)` deciding whether the drop runs,
  `torch.distributions.Bernoulli(1-q).sample([B,1])` the keep masks) are replaced by agm's
  counter-based uniforms (`agm_uniform` below, the function agm's Rust OPM uses): the drop runs
  iff `u_exe >= 1 - p_exe`, modality m of sample b is kept iff `u[b, m] < 1 - q_m`. The
  uniforms are recorded in the case (`stepK/draw/exe`, `stepK/draw/mask_uniform`).
- Modules the training loop does not use (datasets, tensorboard, a missing `utils.log_file`)
  are stubbed so that `main.py` imports.

Everything runs in float64 on the CPU.
"""

import argparse
import importlib.util
import json
import os
import sys

import numpy as np
import torch
from torch import nn

from stubs import stub

torch.set_default_dtype(torch.float64)

OFFICIAL_REPO = "GeWu-Lab/BML_TPAMI2024"
OFFICIAL_COMMIT = "4b3aa4fd841856c4acbebf48549e6c59fbf7635e"

M64 = (1 << 64) - 1


def case_arguments(*, batch, steps, epochs, hidden, classes, dims, lr, model_seed, data_seed, name):
    """The arguments both generators take (the defaults are each one's committed case); the
    caller adds its method's own and parses."""
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("out_root", nargs="?", default="tests/fixtures/golden")
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--hidden", type=int, default=hidden)
    ap.add_argument("--classes", type=int, default=classes)
    ap.add_argument("--dims", type=int, nargs=2, default=dims)
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--model-seed", type=int, default=model_seed)
    ap.add_argument("--data-seed", type=int, default=data_seed)
    ap.add_argument("--name", default=name)
    return ap


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M64


def mix_seed(a, b):
    """agm_modulation::shared::mix_seed (splitmix64 finaliser over a ^ rotl(b, 29))."""
    z = (a ^ _rotl(b, 29) ^ 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def agm_uniform(base, step, index):
    """Uniform in [0, 1) of draw `index` at 1-based global step `step` (agm's Rust OPM)."""
    return (mix_seed(mix_seed(base, step), index) >> 11) * 2.0**-53


def load_official(repo, hidden):
    """Imports the official `main` and `models.Classifier` modules (see the module docs)."""
    code = os.path.join(repo, "code")
    if code not in sys.path:
        sys.path.insert(0, code)
    stubs = {
        "dataset": {},
        "dataset.KS": {"KSDataset": None},
        "dataset.spatial_transforms": {"get_spatial_transform": None, "get_val_spatial_transforms": None},
        "dataset.loader": {"VideoLoaderHDF5": None},
        "utils": {},
        "utils.log_file": {"Logger": None},
        "torch.utils.tensorboard": {"SummaryWriter": None},
        # Only the official validation uses it.
        "sklearn": {},
        "sklearn.metrics": {"average_precision_score": None},
    }
    for name, attrs in stubs.items():
        stub(name, **attrs)
    import models  # noqa: F401  (the package; its submodules are loaded below)

    path = os.path.join(code, "models", "Classifier.py")
    src = open(path).read()
    edits = [
        ("torch.chunk(cleaned_fea,num_mod,dim=0) ]", "torch.chunk(cleaned_fea,num_mod,dim=0)"),
        ("w[:,:512]", f"w[:,:{hidden}]"),
        ("w[:,512:]", f"w[:,{hidden}:]"),
    ]
    for old, new in edits:
        assert src.count(old) == 1, f"expected exactly one `{old}` in {path}"
        src = src.replace(old, new)
    spec = importlib.util.spec_from_file_location("models.Classifier", path)
    classifier = importlib.util.module_from_spec(spec)
    sys.modules["models.Classifier"] = classifier
    exec(compile(src, path, "exec"), classifier.__dict__)
    import main  # the official training script (its `main()` is not called)
    import config

    return classifier, main, config


class TinyEncoder(nn.Module):
    """Linear(d, H) + ReLU as a 1x1 convolution (see the module docs)."""

    def __init__(self, d, hidden):
        super().__init__()
        self.conv = nn.Conv2d(d, hidden, 1)

    def forward(self, x):
        # The official loop casts inputs with .float(); they are multiples of 1/64, exact in
        # float32, so going back to float64 loses nothing.
        x = x.to(torch.float64).reshape(x.shape[0], -1, 1, 1)
        return torch.relu(self.conv(x))


def grid_values(gen, shape, lo, hi):
    """Uniform values on the 1/64 grid in [lo, hi] (exact in float32)."""
    k = torch.randint(int(lo * 64), int(hi * 64) + 1, shape, generator=gen)
    return k.to(torch.float64) / 64.0


class Recorder:
    """Per-step records of the official loop: forward outputs, the backpropagated loss,
    gradients before the OGM edit, the gradients the optimizer consumed, parameters after."""

    def __init__(self, model, optimizer, names):
        self.model, self.optimizer, self.names = model, optimizer, names
        self.steps = []
        self.cur = None
        self._patch()

    def params(self):
        return dict(self.model.named_parameters())

    def _patch(self):
        rec = self
        fwd = self.model.forward

        def forward(mod_1, mod_2, label, warm_up=1):
            rec.cur = {"warm_up": warm_up, "ce": [], "draws": {}}
            out = fwd(mod_1, mod_2, label, warm_up)
            rec.cur["performance"] = [float(out[4]), float(out[5])]
            rec.cur["update_flag"] = out[3].clone()
            q = getattr(rec.model, "q", None)
            rec.cur["q"] = [float(v) for v in q] if (warm_up == 0 and q is not None) else None
            return out

        self.model.forward = forward

        ce_forward = nn.CrossEntropyLoss.forward

        def ce(self_, input, target):
            out = ce_forward(self_, input, target)
            if rec.cur is not None:
                rec.cur["ce"].append(out.detach().clone())
            return out

        nn.CrossEntropyLoss.forward = ce

        backward = torch.Tensor.backward

        def bwd(self_, *a, **k):
            r = backward(self_, *a, **k)
            rec.cur["grad_backward"] = {n: p.grad.detach().clone() for n, p in rec.params().items() if p.grad is not None}
            return r

        torch.Tensor.backward = bwd

        step = self.optimizer.step

        def opt_step(*a, **k):
            rec.cur["grad_final"] = {n: p.grad.detach().clone() for n, p in rec.params().items() if p.grad is not None}
            r = step(*a, **k)
            rec.cur["params_after"] = {n: p.detach().clone() for n, p in rec.params().items()}
            rec.steps.append(rec.cur)
            rec.cur = None
            return r

        self.optimizer.step = opt_step


def build(classifier, cfg, dims, hidden, classes, seed):
    """The official Classifier with the tiny encoders and a ConcatFusion(H, H, C) head, and the
    initial parameters (agm names -> tensors)."""
    gen = torch.Generator().manual_seed(seed)
    model = classifier.Classifier(cfg, device="cpu")
    model.encoder_1 = TinyEncoder(dims[0], hidden)
    model.encoder_2 = TinyEncoder(dims[1], hidden)
    model.fusion_model = classifier.ConcatFusion(in_c_x=hidden, in_c_y=hidden, out_c=classes)
    if cfg.use_adam_drop:
        model.modality_drop = classifier.Modality_drop(dim_list=torch.tensor(cfg.d), p_exe=cfg.p_exe, device="cpu")
    init = {}
    with torch.no_grad():
        for enc, d in ((model.encoder_1, dims[0]), (model.encoder_2, dims[1])):
            enc.conv.weight.copy_(grid_values(gen, (hidden, d), -1.0, 1.0).reshape(hidden, d, 1, 1))
            enc.conv.bias.copy_(grid_values(gen, (hidden,), -0.25, 0.5))
        model.fusion_model.fxy.weight.copy_(grid_values(gen, (classes, 2 * hidden), -1.0, 1.0))
        model.fusion_model.fxy.bias.copy_(grid_values(gen, (classes,), -0.5, 0.5))
    return model


AGM_NAMES = {
    "encoder_1.conv.weight": ("net.audio_encoder.0.weight", "modality:audio"),
    "encoder_1.conv.bias": ("net.audio_encoder.0.bias", "modality:audio"),
    "encoder_2.conv.weight": ("net.visual_encoder.0.weight", "modality:visual"),
    "encoder_2.conv.bias": ("net.visual_encoder.0.bias", "modality:visual"),
    "fusion_model.fxy.weight": ("net.head.fc.weight", "shared"),
    "fusion_model.fxy.bias": ("net.head.fc.bias", "shared"),
}


def agm_tensor(official_name, t):
    """An official tensor under its agm shape (the 1x1 conv kernel as a Linear weight)."""
    if official_name.endswith("conv.weight"):
        t = t.reshape(t.shape[0], t.shape[1])
    return t.detach().clone().contiguous()


def data(dims, batch, steps, classes, seed):
    gen = torch.Generator().manual_seed(seed)
    n = batch * steps
    xs = [grid_values(gen, (n, d), -1.0, 1.0) for d in dims]
    # every class equally often, in a fixed shuffled order
    label = (torch.arange(n) % classes)[torch.randperm(n, generator=gen)]
    return xs, label


def run_official(main, model, cfg, optimizer, scheduler, xs, label, batch, steps, epochs, epoch_offset):
    """Calls the official `train` once per epoch with the fixed batches."""
    loader = []
    for k in range(steps):
        sl = slice(k * batch, (k + 1) * batch)
        loader.append((xs[0][sl], xs[1][sl], label[sl]))
    for e in range(1, epochs + 1):
        main.train(cfg, e + epoch_offset, model, "cpu", loader, optimizer, scheduler)


def write_case(out_dir, case, tensors):
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
        f.write("\n")
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, os.path.join(out_dir, "tensors.safetensors"))


def common_tensors(rec, init_named, xs, label):
    """init/params, train split, and per-step params_after / grad_final under agm names."""
    t = {}
    for off, v in init_named.items():
        t[f"init/params/{AGM_NAMES[off][0]}"] = agm_tensor(off, v)
    t["train/input/audio"] = xs[0].clone()
    t["train/input/visual"] = xs[1].clone()
    t["train/label"] = label.to(torch.int64).clone()
    for k, s in enumerate(rec.steps, start=1):
        for off, v in s["params_after"].items():
            t[f"step{k}/params_after/{AGM_NAMES[off][0]}"] = agm_tensor(off, v)
        for off, v in s["grad_final"].items():
            t[f"step{k}/grad_final/{AGM_NAMES[off][0]}"] = agm_tensor(off, v)
    return t


def parameter_list(init_named):
    return [
        {"name": AGM_NAMES[off][0], "shape": list(agm_tensor(off, v).shape), "role": AGM_NAMES[off][1]}
        for off, v in init_named.items()
    ]
