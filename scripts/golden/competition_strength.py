"""A `competition_strength` parity case (FORMAT v1 of the shared golden fixtures, §2) made by
running the official AGM code.

Usage: python scripts/golden/competition_strength.py <AGM_ICCV2023 tree> <out dir> [--seed N]
       [--n-dep N] [--n-test N] [--features F] [--concept-dim D] [--test-batch B]
       [--signal 3.0,0.05] [--noise 0.5] [--feat-scale 4.0] [--collinear K]
(PyTorch, safetensors and scikit-learn from PyPI, CPU.) The fixture
tests/fixtures/golden/competition_dual is `--n-dep 20 --features 50 --seed 2`. The official
function cannot measure a one-dimensional concept (`torch.cov` of one column is a scalar, which
`pinverse` refuses).

Official repository lihong2303/AGM_ICCV2023. Official code that runs: the ridge fit of
`run/AVMNIST_main.py:AVMNIST_main` (`sklearn.linear_model.Ridge(alpha=120)`, one per modality,
fitted on the dep split's fused features and concepts) and `run/AVMNIST_main.py:test_compute_weight`
(the predictions batch by batch, their float32 cast, `B = N·cov(O)`, `pinverse` and the trace).
Swaps: the model is a stand-in whose fused feature is the case's test feature (its logits are
zeros, which the metric does not read), and the imports the function never calls are stubs. The
function logs its result to four decimals only, so `r_official` is read from the two
`torch.trace` calls it makes (audio, then visual) and divided by `d` as it divides.
"""

import argparse
import importlib
import json
import math
import os
import sys
import types

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stubs import stub  # noqa: E402

MODS = ["audio", "visual"]


class FeatureModel(nn.Module):
    """Returns (out_a, out_v, out, feature) as GradMod does with `extract_mm_feature`."""

    def __init__(self, classes):
        super().__init__()
        self.classes, self.mode, self.extract_mm_feature = classes, "eval", False

    def forward(self, feature, _image):
        logits = torch.zeros(feature.shape[0], self.classes, dtype=feature.dtype)
        return logits, logits, logits, feature


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tree")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n-dep", type=int, default=40)
    ap.add_argument("--n-test", type=int, default=30)
    ap.add_argument("--features", type=int, default=12)
    ap.add_argument("--concept-dim", type=int, default=4)
    ap.add_argument("--test-batch", type=int, default=8)
    ap.add_argument("--signal", default="3.0,0.05", help="audio,visual: how strongly each concept is in the feature")
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--feat-scale", type=float, default=4.0)
    ap.add_argument("--collinear", type=int, default=0, help="the last K feature columns copy the first K, halved")
    a = ap.parse_args()

    sys.path.insert(0, a.tree)
    stub("torch.utils.tensorboard", SummaryWriter=object)
    stub("tasks.AVMNIST_task", AVMNIST_Task=object)
    from sklearn import linear_model
    official = importlib.import_module("run.AVMNIST_main")

    g = torch.Generator().manual_seed(a.seed)
    F, D = a.features, a.concept_dim
    # Features float32-representable (the official loop casts loader tensors to float32).
    z_dep = (torch.randn(a.n_dep, F, generator=g, dtype=torch.float64) * a.feat_scale).float().double()
    z_test = (torch.randn(a.n_test, F, generator=g, dtype=torch.float64) * a.feat_scale).float().double()
    for z in (z_dep, z_test):
        if a.collinear:
            z[:, F - a.collinear:] = z[:, :a.collinear] * 0.5
    signal = dict(zip(MODS, (float(v) for v in a.signal.split(","))))
    concepts = {}
    for m in MODS:
        w = torch.randn(F, D, generator=g, dtype=torch.float64) * signal[m] / math.sqrt(F)
        concepts[m] = tuple(z @ w + torch.randn(z.shape[0], D, generator=g, dtype=torch.float64) * a.noise
                            for z in (z_dep, z_test))

    # The official fit (AVMNIST_main): Ridge(alpha=120) on numpy arrays of the dep split.
    ridges = {m: linear_model.Ridge(alpha=120) for m in MODS}
    for m in MODS:
        ridges[m].fit(z_dep.numpy(), concepts[m][0].numpy())

    traces = []
    original_trace = torch.trace

    def trace(x):
        t = original_trace(x)
        traces.append(t.item())
        return t

    labels = torch.zeros(a.n_test, dtype=torch.long)
    loader = [(z_test[i:i + a.test_batch], z_test[i:i + a.test_batch], labels[i:i + a.test_batch])
              for i in range(0, a.n_test, a.test_batch)]
    torch.trace = trace
    try:
        official.test_compute_weight(
            FeatureModel(3), loader, 1, types.SimpleNamespace(batch_size=a.test_batch, EPOCHS=1), "cpu",
            types.SimpleNamespace(add_scalar=lambda *_: None, add_scalars=lambda *_: None),
            types.SimpleNamespace(info=lambda *_: None), ridges["audio"], ridges["visual"],
            concepts["audio"][1], concepts["visual"][1],
        )
    finally:
        torch.trace = original_trace
    r_official = {m: traces[i] / D for i, m in enumerate(MODS)}

    tensors = {"dep/feature": z_dep, "test/feature": z_test}
    results = {}
    for m in MODS:
        o_dep, o_test = concepts[m]
        pred = torch.from_numpy(np.concatenate([ridges[m].predict(b[0].numpy()) for b in loader]))
        as_used = pred.float().double()
        residual = as_used - o_test
        b = torch.cov(o_test.T) * a.n_test
        b_pinv = torch.linalg.pinv(b)
        raw = pred - o_test
        tensors.update({
            f"dep/concept/{m}": o_dep, f"test/concept/{m}": o_test,
            f"ridge/{m}/coef": torch.from_numpy(np.asarray(ridges[m].coef_, dtype=np.float64)),
            f"ridge/{m}/intercept": torch.from_numpy(np.asarray(ridges[m].intercept_, dtype=np.float64)),
            f"test/pred/{m}": pred, f"test/pred_as_used/{m}": as_used, f"test/residual/{m}": residual,
            f"test/B/{m}": b,
        })
        results[m] = {
            "r_official": r_official[m],
            "r_float64_no_cast": float(torch.trace((raw @ b_pinv).T @ raw) / D),
            "r_sum_multiply_form_on_official_residual": float((residual @ b_pinv * residual).sum() / D),
        }
    case = {
        "case": os.path.basename(os.path.normpath(a.out)), "format_version": 1, "kind": "competition_strength",
        "dtype": "float64",
        "official_reference": {"repo": "lihong2303/AGM_ICCV2023",
                               "functions": ["run/AVMNIST_main.py:AVMNIST_main (the ridge fit)",
                                             "run/AVMNIST_main.py:test_compute_weight"]},
        "sizes": {"N_dep": a.n_dep, "N_test": a.n_test, "feature_dim": F, "concept_dim": D, "test_batch": a.test_batch},
        "seed": a.seed, "results": results,
    }
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(a.out, "tensors.safetensors"))
    print(f"{a.out}: r_official {r_official}")


if __name__ == "__main__":
    main()
