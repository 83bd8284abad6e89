"""A twin-steps fixture of OGM-GE or MSLR on CREMA-D's late-fusion model, made by running the
official AGM code.

Usage: python scripts/golden/late_sum_twin_steps.py <AGM_ICCV2023 tree> <out> [--method ogm-ge|mslr]
       [--seed N] [--batch B] [--epochs E] [--steps S] [--alpha A] [--lr LR] [--window 0,100]
       [--audio-shape 1,32,32] [--visual-shape 3,1,32,32]
(PyTorch from PyPI, CPU.) Writes `<out>.json` for `crates/agm-train/tests/twins.rs`;
`tests/fixtures/twin_steps/cremad-late-sum-ogm-ge` is written with the defaults (`--seed 6 --batch 8
--epochs 3 --steps 2 --alpha 0.6 --lr 0.003 --window 1,2`), `cremad-late-sum-mslr` with
`--method mslr` and the same defaults.

Official repository lihong2303/AGM_ICCV2023. Official code that runs: `run/CREMAD_main.py:train`
with `--methods OGM-GE --fusion_type late_fusion` (the path the paper's CREMA-D OGM-GE row takes:
the uni-modal outputs `out_a, out_v` of the summed-heads model's training pass, the score sums,
ratio and coefficients, every `audio_net`/`audio_cls` and `visual_net`/`visual_cls` gradient
scaled, no clipping, SGD, StepLR at the epoch's end; with `--method mslr` the same gradients
scaled by MSLR's CREMA-D multipliers 0.9 and 1.1 times the learning-rate ratios, which the epoch
loop passes in and are 1 here) on the official `AVClassifier_Sum` of
`model/CREMAD_net.py` (two ResNet-18s and a linear head per modality), its weights set from
`twin_models.py`'s formula. Swaps: everything runs in float64 (the loop's `.float()` casts keep
float64), the Gaussian noise of the edit draws exact zeros (the std it would have had is
recorded), and the modules the loop imports but never calls here (TensorBoard, scikit-learn, the
dataset task) are stubs. The loss is read at `loss.backward()`, the uni-modal outputs by a forward
hook on the model, the coefficients recomputed from them with the loop's formula.
"""

import argparse
import importlib
import json
import math
import os
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stubs import stub  # noqa: E402
from twin_models import build, formula, set_formula_weights, summary  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tree")
    ap.add_argument("out")
    ap.add_argument("--method", choices=["ogm-ge", "mslr"], default="ogm-ge")
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=0.6)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--window", default="1,2", help="cfgs.modulation_starts,modulation_ends")
    ap.add_argument("--audio-shape", default="1,32,32")
    ap.add_argument("--visual-shape", default="3,1,32,32")
    a = ap.parse_args()
    window = [int(v) for v in a.window.split(",")]
    shapes = [tuple(int(v) for v in s.split(",")) for s in (a.audio_shape, a.visual_shape)]
    B, E, S, C = a.batch, a.epochs, a.steps, 6

    sys.path.insert(0, a.tree)
    stub("torch.utils.tensorboard", SummaryWriter=object)
    stub("sklearn", linear_model=stub("sklearn.linear_model"))
    stub("tasks.CREMAD_task", Cramed_Task=object)
    net_module = importlib.import_module("model.CREMAD_net")
    official = importlib.import_module("run.CREMAD_main")

    torch.manual_seed(a.seed)
    model = build(net_module, "AVClassifier_Sum").double()
    recipe = set_formula_weights(model)
    cfgs = types.SimpleNamespace(
        mode="train", fusion_type="late_fusion", modality="Multimodal", methods=a.method.upper(), alpha=a.alpha,
        modulation_starts=window[0], modulation_ends=window[1], use_mgpu=False, EPOCHS=E, learning_rate=a.lr,
        dataset="CREMAD",
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=70, gamma=0.1)

    # Batches: twin_models.py's formula inputs (seed 1000·step + modality); labels in [0, 6).
    specs = [[{"shape": list(s), "seed": 1000 * (k + 1) + j} for j, s in enumerate(shapes)] for k in range(E * S)]
    batches = [([formula(B * math.prod(s["shape"]), s["seed"], 0.0, 0).reshape([B] + s["shape"]) for s in spec],
                torch.randint(0, C, (B,))) for spec in specs]

    rec = {}
    steps = []
    model.register_forward_hook(lambda module, inputs, out: rec.__setitem__("uni", out[:2]))
    original_backward, original_normal, original_float = torch.Tensor.backward, torch.Tensor.normal_, torch.Tensor.float
    original_step = optimizer.step

    def backward(self, *args, **kwargs):
        original_backward(self, *args, **kwargs)
        rec["loss"] = self.item()

    def zero_noise(self, mean=0.0, std=1.0, **kwargs):
        rec.setdefault("noise_std", []).append(std)
        return self.zero_()

    def sgd_step(*args, **kwargs):
        k = len(steps)
        label = batches[k][1]
        sums = [float(torch.softmax(o.detach(), dim=1)[torch.arange(B), label].sum()) for o in rec["uni"]]
        epoch = k // S + 1
        edited = window[0] <= epoch <= window[1]
        if a.method == "mslr":
            # The loop's multipliers: CREMA-D's 0.9 and 1.1 times the ratios passed in (1).
            coeff = [0.9, 1.1]
        else:
            r = sums[1] / sums[0]
            coeff = [1.0, 1 - math.tanh(a.alpha * r)] if r > 1 else [1 - math.tanh(a.alpha / r), 1.0]
        stds = rec.pop("noise_std", [])
        assert a.method == "mslr" or bool(stds) == edited
        steps.append({
            "loss": rec["loss"], "score_sum": sums, "edited": edited,
            "coeff": coeff if edited else [1.0, 1.0], "noise_std_that_official_would_use": stds,
        })
        return original_step(*args, **kwargs)

    torch.Tensor.backward = backward
    torch.Tensor.normal_ = zero_noise
    torch.Tensor.float = lambda self: self.double()
    optimizer.step = sgd_step
    logger = types.SimpleNamespace(info=lambda *_: None)
    writer = types.SimpleNamespace(add_scalar=lambda *_: None, add_scalars=lambda *_: None)
    running = (0.0, 0.0)
    try:
        for epoch in range(1, E + 1):
            # Its loader yields (item, spectrogram without channel, frames, label).
            loader = [(None, x[0].squeeze(1), x[1], y) for x, y in batches[(epoch - 1) * S:epoch * S]]
            running = official.train(model, loader, optimizer, scheduler, logger, cfgs, epoch, "cpu", writer,
                                     *running, 1.0, 1.0)
    finally:
        torch.Tensor.backward, torch.Tensor.normal_, torch.Tensor.float = original_backward, original_normal, original_float

    case = {
        "case": os.path.basename(a.out), "kind": "twin_steps", "preset": "cremad-late-sum", "method": a.method,
        "dtype": "float64",
        "official_reference": {"repo": "lihong2303/AGM_ICCV2023", "train_function": "run/CREMAD_main.py:train",
                               "net": "model/CREMAD_net.py:AVClassifier_Sum"},
        "hyper": {"alpha": a.alpha, "lr": a.lr, "momentum": 0.9, "weight_decay": 1e-4,
                  "modulation_window_epochs": window},
        "tensors": recipe, "steps_per_epoch": S,
        "batches": [{"formula_inputs": spec, "labels": y.tolist()} for spec, (_, y) in zip(specs, batches)],
        "steps": steps,
        "after": {n: summary(t) for n, t in list(model.named_parameters()) + list(model.named_buffers())
                  if not n.endswith("num_batches_tracked")},
    }
    with open(a.out + ".json", "w") as f:
        json.dump(case, f, separators=(",", ":"))
    print(f"{a.out}.json: {len(steps)} steps, coefficients {[st['coeff'] for st in steps]}")


if __name__ == "__main__":
    main()
