"""Golden `method_steps` case `pmr`: Prototypical Modal Rebalance (Fan et al., CVPR 2023).

Usage: python scripts/golden/pmr/generate.py <extracted official repo> [out_root] [options]
(out_root defaults to tests/fixtures/golden; writes <out_root>/<name>/{case.json,
tensors.safetensors}; `--help` lists the options, whose defaults make the committed case).

Official repository fanyunfeng-bit/Modal-Imbalance-PMR, commit
3615e48983555089b0e693380087617c3797a641, `main_Prototype_grad.py` with `--modulation Proto
--fusion_method concat --dataset CREMAD --optimizer SGD`.

What runs from the official code (imported from the extracted repository, never copied):
- `main_Prototype_grad.py:train_epoch`, once per epoch: the fused logits, the prototype logits
  `-EU_dist(features, prototypes)`, the scores `sum_i softmax(P_m)[i, y_i]`, the ratio rule
  (`beta` on audio's prototype cross-entropy when audio's score is lower, `lam` on visual's when
  visual's is), the loss, its backward, the SGD step and the StepLR step;
- `main_Prototype_grad.py:calculate_prototype`: before training (epoch 0) and after every epoch
  with that epoch's 0-based index, as `main()` calls it, momentum included (the official code
  skips the momentum for index `<= 0`, i.e. also after the first epoch);
- `models/fusion_modules.py:ConcatFusion` (the fused head, `fc_out`);
- the official optimizer, `optim.SGD(lr, momentum=0.9, weight_decay=1e-4)`, and
  `StepLR(lr_decay_step, lr_decay_ratio)` with a step that never fires within the case.

What is swapped, and how:
- `main()` itself is not called (it parses the command line and builds the data sets); the
  script makes the same calls in the same order with an `argparse.Namespace` of its arguments.
- The two ResNet-18 encoders become agm's tiny encoders (Linear(d_m, H) then ReLU), under the
  official attribute names `audio_net` and `visual_net`; the classifier returns `(a, v, out)`
  through the official `ConcatFusion`, as `models/basic_model.py:AVClassifier` does.
- The training loader becomes a list of fixed batches in stored order (no shuffling).
- The prototype loader: the official code reads the first `len(loader) // 10` batches of the
  shuffled training loader (at least one). It gets a one-batch list holding the whole training
  split, so it reads every training sample; agm reads every sample with `sample_ratio = 1`.
- The inputs are multiples of 1/64, exact in float32: the official loop casts them with
  `.float()`, and the tiny encoders cast them back to float64.
- Modules the two functions do not use (data sets, ResNets, TensorBoard, `utils.utils`) are
  stubbed; the loop's prints are silenced.

The case: CREMA-D's 6 classes (the official code takes the class count from the data set's
name), H = 4, batch 8, 3 steps per epoch, 4 epochs; the modulation window is the official
0-based epochs 0..2, agm's 1-based 1..3, so epoch 4 trains on the fused loss alone. Alpha 1 and
momentum 0.2 are the official defaults. The seeds and lr were chosen so that each modality gets
the prototype term in some step and the momentum-mixed prototypes of epoch 2's end drive epoch 3.

Case `pmr_late_window` (`--window 1 3 --epochs 5 --name pmr_late_window`): the window is agm's
epochs 2..4, so epochs 1 and 5 train on the fused loss alone. After epoch 1 every class-1 sample
has all-zero audio features (dead ReLUs), so class 1's audio prototype is exactly zero and
several samples sit at distance 0 from it inside the window: the official distance is 0 there,
and its NaN gradient is masked by the ReLU.
"""

import argparse
import contextlib
import importlib.util
import io
import os
import re
import sys
import warnings

import torch
from torch import nn

torch.set_default_dtype(torch.float64)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bml_tpami2024 import grid_values, write_case  # noqa: E402
from stubs import stub  # noqa: E402

OFFICIAL_REPO = "fanyunfeng-bit/Modal-Imbalance-PMR"
OFFICIAL_COMMIT = "3615e48983555089b0e693380087617c3797a641"
CLASSES = 6  # the official class count of CREMA-D


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("out_root", nargs="?", default="tests/fixtures/golden")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=4)
    ap.add_argument("--dims", type=int, nargs=2, default=[5, 4])
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--momentum-coef", type=float, default=0.2)
    ap.add_argument("--window", type=int, nargs=2, default=[0, 2], help="official 0-based epochs")
    ap.add_argument("--model-seed", type=int, default=1)
    ap.add_argument("--data-seed", type=int, default=2)
    ap.add_argument("--name", default="pmr")
    return ap.parse_args()


def import_official(repo):
    """`main_Prototype_grad.py` as a module, and the official ConcatFusion."""
    for name in ("dataset", "models"):
        stub(name)
    stub("dataset.CGMNIST", CGMNISTDataset=object)
    stub("dataset.CramedDataset", CramedDataset=object)
    stub("dataset.AVEDataset", AVEDataset=object)
    stub("dataset.dataset", AVDataset=object)
    stub("dataset.VGGSoundDataset", VGGSound=object)
    stub("models.basic_model", AVClassifier=object, CGClassifier=object)
    stub("utils")
    stub("utils.utils", setup_seed=lambda *a, **k: None, weight_init=lambda *a, **k: None)
    stub("torch.utils.tensorboard", SummaryWriter=object)

    def load(name, path):
        spec = importlib.util.spec_from_file_location(name, os.path.join(repo, path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    fusion = load("pmr_fusion_modules", "models/fusion_modules.py")
    main = load("pmr_main", "main_Prototype_grad.py")
    return main, fusion


class TinyAV(nn.Module):
    """agm's golden network under the official attribute names."""

    def __init__(self, fusion, da, dv, hidden, classes):
        super().__init__()
        self.audio_net = nn.Sequential(nn.Linear(da, hidden), nn.ReLU())
        self.visual_net = nn.Sequential(nn.Linear(dv, hidden), nn.ReLU())
        self.fusion_module = fusion.ConcatFusion(input_dim=2 * hidden, output_dim=classes)

    def forward(self, audio, visual):
        b = audio.shape[0]
        a = self.audio_net(audio.reshape(b, -1).to(torch.float64))
        v = self.visual_net(visual.reshape(b, -1).to(torch.float64))
        return self.fusion_module(a, v)


AGM_NAMES = {
    "audio_net.0.weight": ("net.audio_encoder.0.weight", "modality:audio"),
    "audio_net.0.bias": ("net.audio_encoder.0.bias", "modality:audio"),
    "visual_net.0.weight": ("net.visual_encoder.0.weight", "modality:visual"),
    "visual_net.0.bias": ("net.visual_encoder.0.bias", "modality:visual"),
    "fusion_module.fc_out.weight": ("net.head.fc.weight", "shared"),
    "fusion_module.fc_out.bias": ("net.head.fc.bias", "shared"),
}


def main():
    a = parse_args()
    official, fusion = import_official(a.repo)
    B, S, E, H = a.batch, a.steps, a.epochs, a.hidden
    da, dv = a.dims

    gen = torch.Generator().manual_seed(a.model_seed)
    model = TinyAV(fusion, da, dv, H, CLASSES)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(grid_values(gen, p.shape, -0.75, 0.75))
    init = {n: p.detach().clone() for n, p in model.named_parameters()}

    gen = torch.Generator().manual_seed(a.data_seed)
    n = B * S
    label = (torch.arange(n) % CLASSES)[torch.randperm(n, generator=gen)]
    # Class-dependent means, stronger for audio, so that the two modalities compete.
    xs = []
    for d, strength in ((da, 1.0), (dv, 0.5)):
        means = grid_values(gen, (CLASSES, d), -1.0, 1.0)
        xs.append((strength * means[label] + grid_values(gen, (n, d), -0.5, 0.5)).mul(64).round().div(64))
    train_loader = [(xs[0][k * B:(k + 1) * B], xs[1][k * B:(k + 1) * B], label[k * B:(k + 1) * B]) for k in range(S)]
    proto_loader = [(xs[0], xs[1], label)]

    args = argparse.Namespace(
        dataset="CREMAD", modulation="Proto", fusion_method="concat", embed_dim=H, optimizer="SGD",
        alpha=a.alpha, momentum_coef=a.momentum_coef, modulation_starts=a.window[0],
        modulation_ends=a.window[1], learning_rate=a.lr, lr_decay_step=1000, lr_decay_ratio=0.1,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, args.lr_decay_step, args.lr_decay_ratio)
    # The recorder below replaces the step the scheduler counts; the rate never decays here.
    warnings.filterwarnings("ignore", message=re.escape("Seems like `optimizer.step()` has been overridden"))

    steps = []
    params_after = []
    step = optimizer.step

    def recording_step(*args_, **kwargs):
        caller = sys._getframe(1).f_locals
        r = step(*args_, **kwargs)
        # `beta` and `lam` exist only inside the window (the Proto branch).
        beta, lam = float(caller.get("beta", 0.0)), float(caller.get("lam", 0.0))
        steps.append({
            "loss": float(caller["loss"].detach()),
            "coefficients": [beta, lam],
            "scores": [float(caller["score_a_p"].detach()), float(caller["score_v_p"].detach())],
        })
        params_after.append({n_: p.detach().clone() for n_, p in model.named_parameters()})
        return r

    optimizer.step = recording_step
    device = torch.device("cpu")
    prototypes = []
    with contextlib.redirect_stdout(io.StringIO()):
        a_proto, v_proto = official.calculate_prototype(args, model, proto_loader, device, 0)
        prototypes.append((a_proto.clone(), v_proto.clone()))
        for epoch in range(E):
            official.train_epoch(args, epoch, model, device, train_loader, optimizer, scheduler, a_proto, v_proto)
            a_proto, v_proto = official.calculate_prototype(args, model, proto_loader, device, epoch, a_proto, v_proto)
            prototypes.append((a_proto.clone(), v_proto.clone()))
    assert len(steps) == S * E, len(steps)

    tensors = {}
    for off, v in init.items():
        tensors[f"init/params/{AGM_NAMES[off][0]}"] = v
    tensors["train/input/audio"] = xs[0].clone()
    tensors["train/input/visual"] = xs[1].clone()
    tensors["train/label"] = label.to(torch.int64).clone()
    for k, after in enumerate(params_after, start=1):
        for off, v in after.items():
            tensors[f"step{k}/params_after/{AGM_NAMES[off][0]}"] = v
    for e, (pa, pv) in enumerate(prototypes):
        tensors[f"epoch{e}/prototypes/audio"] = pa
        tensors[f"epoch{e}/prototypes/visual"] = pv

    case_steps = [
        {"step": k, "epoch": (k - 1) // S + 1, "loss": s["loss"], "values": {"coefficients": s["coefficients"]}}
        for k, s in enumerate(steps, start=1)
    ]
    case = {
        "case": a.name,
        "format_version": 1,
        "kind": "method_steps",
        "dtype": "float64",
        "official_reference": {
            "repo": OFFICIAL_REPO,
            "commit": OFFICIAL_COMMIT,
            "functions": [
                "main_Prototype_grad.py:train_epoch",
                "main_Prototype_grad.py:calculate_prototype",
                "main_Prototype_grad.py:EU_dist",
                "models/fusion_modules.py:ConcatFusion",
            ],
        },
        "semantics": (
            "PMR: prototypes c_m[k] = mean encoder feature of the training samples of class k (all of them "
            "here), computed before training and after every epoch, mixed (1 - mu) c_new + mu c_old from the "
            "end of epoch 2 on; P_m[i, k] = -||h_m,i - c_m[k]||; s_m = sum_i softmax(P_m)[i, y_i]; inside the "
            "window loss = CE(out) + alpha CE(P_m) for the modality with the lower score (none on a tie). "
            "coefficients = [beta_audio, beta_visual]. epochK/prototypes/* (K = 0 before training) are "
            "informational."
        ),
        "method": "pmr",
        "method_config": {
            "alpha": a.alpha,
            "momentum": a.momentum_coef,
            "sample_ratio": 1.0,
            "window_start": a.window[0] + 1,
            "window_end": a.window[1] + 1,
        },
        "modalities": ["audio", "visual"],
        "sizes": {"batch": B, "classes": CLASSES, "hidden": H, "input_dims": [da, dv], "epochs": E,
                  "steps_per_epoch": S},
        "optimizer": {"kind": "sgd", "lr": a.lr, "momentum": 0.9, "weight_decay": 1e-4},
        "parameters": [
            {"name": AGM_NAMES[off][0], "shape": list(v.shape), "role": AGM_NAMES[off][1]} for off, v in init.items()
        ],
        "steps": case_steps,
    }
    write_case(os.path.join(a.out_root, a.name), case, tensors)
    for s, full in zip(case_steps, steps):
        print(s["step"], s["epoch"], round(s["loss"], 6), s["values"]["coefficients"],
              [round(x, 4) for x in full["scores"]])


if __name__ == "__main__":
    main()
