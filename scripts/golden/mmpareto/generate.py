"""Golden `method_steps` case `mmpareto` for agm's `mmpareto` method, from MMPareto's official code.

Official repository: GeWu-Lab/MMPareto_ICML2024 (Wei and Hu, "MMPareto: Boosting Multimodal
Learning with Innocent Unimodal Assistance", ICML 2024),
commit a339db39cc25b157df376b50bb894917dc6c01d6.

Usage:
    python scripts/golden/mmpareto/generate.py <extracted official repo> [out_root] [options]
(out_root defaults to tests/fixtures/golden; writes <out_root>/<name>/{case.json,tensors.safetensors};
`--help` lists the options, whose defaults make the committed case.)
`git --git-dir=<bare repo> --work-tree=/tmp/mmpareto checkout -f HEAD -- .` extracts it.

What runs, unchanged, in float64 on the CPU
-------------------------------------------
- `code/MMPareto.py:train_epoch` itself, once per epoch, as the official `main()` calls it:
  the three backward passes (fused, audio, visual cross-entropies) with the per-encoder
  gradient stores, the cosines `F.cosine_similarity(g_both, g_uni)` of the flattened encoder
  gradients, `(½, ½)` when the cosine is > 0 and otherwise
  `MinNormSolver.find_min_norm_element` (`code/min_norm_solvers.py`, imported unchanged), the
  backward of `loss_mm + loss_a + loss_v`, and for every tensor whose name split by `[_.]`
  holds `audio`/`visual` and not `head`: `new_grad = 2 k0 g_both + 2 k1 g_uni`, then
  `gamma = 1.5` times `new_grad`, times `‖g_sum‖ / ‖new_grad‖` when that exceeds 1;
- the official optimizer and scheduler of `main()`: `optim.SGD(lr, momentum=0.9,
  weight_decay=1e-4)` and `StepLR(optimizer, 30, 0.1)` (never stepped by the official loop, so
  the lr is constant, as agm's replay has it);
- `nn.DataParallel` as `main()` wraps the model (parameter names get the `module.` prefix the
  name rules see); without CUDA its forward calls the module directly (asserted below).

What is swapped
---------------
- The model: `AVClassifier`'s ResNet-18 `audio_net` / `visual_net` become Linear(d_m, H) +
  ReLU under those attribute names (so the official name rules select exactly the encoder
  tensors: `module.audio_net.0.weight` -> `['module', 'audio', 'net', '0', 'weight']`), and
  `head` = Linear(2H, C) on `cat(a, v)`, `head_audio` / `head_video` = Linear(H, C) as in the
  official model; `forward` returns `(out, out_audio, out_video)` like the official one. The
  official loop casts inputs with `.float()`; every input is a multiple of 1/64 (exact in
  float32) and the tiny encoders cast back to float64, so every computation is float64.
  agm names: `net.<m>_encoder.0.*`, `net.head.fc.*`, and the method's heads
  `mmpareto.<m>_head.*` (`head_audio` -> audio, `head_video` -> visual).
- The data: a fixed list of `(spec, images, label)` batches in stored order instead of the
  shuffled `DataLoader` of `AVDataset_CD`.
- Imports only the data and logging need are stubbed: `dataset.av_dataset` (torchaudio, PIL,
  scipy), `sklearn.metrics` (used by nothing the loop runs) and `tqdm` (the identity).
  `utils.utils` and `models.models` import unchanged (the latter is not used).
- `optimizer.step` is wrapped to record, just before the step, the caller's locals (`loss_mm`,
  `loss_a`, `loss_v`, `this_cos_audio`, `this_cos_visual`, `audio_k`, `visual_k`, the per-loss
  gradient stores) and the gradients it consumes, and after it the parameters.
- The official `valid()` (evaluation only, no parameter changes) and `setup_seed` are not
  run, and the loop's `print("Start training ... ")` is silenced.

Initial values (case choices)
-----------------------------
Sizes: batch 6, 3 steps per epoch, 3 epochs, H 4, C 3, input widths 4 (audio) and 5
(visual); lr 0.2. Weights and inputs are drawn on the 1/64 grid. Two weight blocks are zero at the start so
that step 1 hits both edge cases of the official 2-task solver `_min_norm_element_from2`:
the fused head's audio columns (`head.weight[:, :H]`) and the visual uni-modal head's weight
(`head_video.weight`). At step 1 the audio encoder's fused-loss gradient is then exactly 0
(cosine 0 -> min-norm; `⟨g_both, g_a⟩ = 0 >= ‖g_both‖² = 0` -> k = (0.999, 0.001)) and the
visual encoder's uni-modal gradient is exactly 0 (k = (0.001, 0.999)); both get the rescale
factor ‖g_sum‖ / ‖new_grad‖ = 500. (With a cosine ≤ 0 the solver's edges are reachable only
through a zero gradient: `⟨x1, x2⟩ ≤ 0` is `≥ ‖x1‖²` only when `x1 = 0`.) From step 2 on those
blocks have moved and the branches follow from the data.

Branches of the committed case (`branches_info` in case.json has the numbers; k = weights of
(fused, uni-modal); "rescaled" = factor max(1, ‖g_sum,p‖/‖d_p‖) > 1 for tensor p):
  step 1: audio min-norm edge, k = (0.999, 0.001), weight and bias rescaled (x500);
          visual min-norm edge, k = (0.001, 0.999), weight and bias rescaled (x500)
  step 2: audio min-norm (cos -0.300, k_uni 0.0151), both rescaled;
          visual min-norm (cos -0.230, k_uni 0.9954), both rescaled
  step 3: audio cos > 0 (+0.425); visual min-norm (cos -0.658), both rescaled
  step 4: audio min-norm (cos -0.359, k_uni 0.2104): weight rescaled (ratio 1.714), bias not (0.429);
          visual min-norm (cos -0.206), both rescaled
  step 5: audio cos > 0 (+0.269); visual min-norm (cos -0.351, k_uni 0.6853): weight rescaled
          (ratio 1.269), bias not (0.549)
  step 6: audio cos > 0 (+0.486); visual min-norm (cos -0.261), both rescaled
  steps 7-9: both cos > 0 (smallest +0.367)
The smallest |cos| outside step 1 is 0.206, far from the branch point. With cos > 0 the
direction is `g_both + g_uni = g_sum` up to rounding, so the tested ratio is 1 ± 1e-16 and
either side of the test gives the same numbers at 1e-10. lr 0.2 (the official default is
0.002) and the seeds were picked by a search so that every branch above occurs.

Values compared per step: `coefficients` = (audio_k[1], visual_k[1]) (agm's
`Modulator::coefficients`: the uni-modal weight of each encoder) and `losses` =
[loss_mm, loss_a, loss_v] (agm's state field); `loss` = loss_mm + loss_a + loss_v. The
cosines, k, tested ratios and branches are in `steps[].branches_info` (informational).
"""

import argparse
import importlib
import inspect
import os
import sys

import torch
import torch.nn as tnn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import bml_tpami2024 as h  # noqa: E402  (grid_values, write_case)
from stubs import stub  # noqa: E402

torch.set_default_dtype(torch.float64)

OFFICIAL_REPO = "GeWu-Lab/MMPareto_ICML2024"
OFFICIAL_COMMIT = "a339db39cc25b157df376b50bb894917dc6c01d6"
GAMMA = 1.5  # hard-coded in the official train_epoch
MODS = ["audio", "visual"]

B, S, E, H, C = 6, 3, 3, 4, 3
DIMS = [4, 5]
LR = 0.2
MODEL_SEED, DATA_SEED, NAME = 6, 4, "mmpareto"


def import_official(repo):
    """Imports the official code/MMPareto.py with the data/logging-only imports stubbed."""
    code = os.path.join(repo, "code")
    if code not in sys.path:
        sys.path.insert(0, code)
    stub("dataset")
    stub("dataset.av_dataset", AVDataset_CD=None)
    stub("sklearn", metrics=None)
    stub("sklearn.metrics")
    stub("tqdm", tqdm=lambda x, *a, **k: x)
    mmpareto = importlib.import_module("MMPareto")
    mmpareto.print = lambda *a, **k: None  # the loop's "Start training ..."
    return mmpareto


class TinyAV(tnn.Module):
    """`AVClassifier` with tiny encoders under the official attribute names."""

    def __init__(self, dims, hidden, classes):
        super().__init__()
        self.audio_net = tnn.Sequential(tnn.Linear(dims[0], hidden), tnn.ReLU())
        self.visual_net = tnn.Sequential(tnn.Linear(dims[1], hidden), tnn.ReLU())
        self.head = tnn.Linear(2 * hidden, classes)
        self.head_audio = tnn.Linear(hidden, classes)
        self.head_video = tnn.Linear(hidden, classes)

    def forward(self, audio, visual):
        a = self.audio_net(audio.to(torch.float64))
        v = self.visual_net(visual.to(torch.float64))
        out = self.head(torch.cat((a, v), 1))
        return out, self.head_audio(a), self.head_video(v)


AGM = {
    "module.audio_net.0.weight": ("net.audio_encoder.0.weight", "modality:audio"),
    "module.audio_net.0.bias": ("net.audio_encoder.0.bias", "modality:audio"),
    "module.visual_net.0.weight": ("net.visual_encoder.0.weight", "modality:visual"),
    "module.visual_net.0.bias": ("net.visual_encoder.0.bias", "modality:visual"),
    "module.head.weight": ("net.head.fc.weight", "shared"),
    "module.head.bias": ("net.head.fc.bias", "shared"),
    "module.head_audio.weight": ("mmpareto.audio_head.weight", "method"),
    "module.head_audio.bias": ("mmpareto.audio_head.bias", "method"),
    "module.head_video.weight": ("mmpareto.visual_head.weight", "method"),
    "module.head_video.bias": ("mmpareto.visual_head.bias", "method"),
}
ENCODER = {"audio": ["module.audio_net.0.weight", "module.audio_net.0.bias"],
           "visual": ["module.visual_net.0.weight", "module.visual_net.0.bias"]}


def build(dims, hidden, classes, seed, zero_fused_audio, zero_visual_head):
    gen = torch.Generator().manual_seed(seed)
    model = TinyAV(dims, hidden, classes)
    with torch.no_grad():
        for lin, lo, hi in ((model.audio_net[0], -1.0, 1.0), (model.visual_net[0], -1.0, 1.0),
                            (model.head, -1.0, 1.0), (model.head_audio, -1.0, 1.0), (model.head_video, -1.0, 1.0)):
            lin.weight.copy_(h.grid_values(gen, tuple(lin.weight.shape), lo, hi))
            lin.bias.copy_(h.grid_values(gen, tuple(lin.bias.shape), -0.25, 0.5))
        if zero_fused_audio:
            model.head.weight[:, :hidden] = 0.0
        if zero_visual_head:
            model.head_video.weight.zero_()
    return model


def data(dims, batch, steps, classes, seed):
    gen = torch.Generator().manual_seed(seed)
    n = batch * steps
    xs = [h.grid_values(gen, (n, d), -1.0, 1.0) for d in dims]
    label = (torch.arange(n) % classes)[torch.randperm(n, generator=gen)]
    return xs, label


def run(official, a):
    """Runs the official train_epoch for a.epochs epochs; returns (init, xs, label, records)."""
    model = build(a.dims, a.hidden, a.classes, a.model_seed, a.zero_fused_audio, a.zero_visual_head)
    model = tnn.DataParallel(model)
    assert not model.device_ids, "the CPU path of DataParallel (calls the module directly)"
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert set(init) == set(AGM), sorted(init)
    xs, label = data(a.dims, a.batch, a.steps, a.classes, a.data_seed)
    loader = [(xs[0][k * a.batch:(k + 1) * a.batch], xs[1][k * a.batch:(k + 1) * a.batch],
               label[k * a.batch:(k + 1) * a.batch]) for k in range(a.steps)]

    optimizer = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 30, 0.1)
    named = list(model.named_parameters())
    records = []
    plain_step = optimizer.step

    def recording_step(*args, **kwargs):
        f = inspect.currentframe().f_back.f_locals
        assert f["gamma"] == GAMMA
        rec = {
            "losses": [f["loss_mm"].item(), f["loss_a"].item(), f["loss_v"].item()],
            "loss": f["loss"].item(),
            "cos": [float(f["this_cos_audio"]), float(f["this_cos_visual"])],
            "k": [[float(x) for x in f["audio_k"]], [float(x) for x in f["visual_k"]]],
            "grad_final": {n: p.grad.detach().clone() for n, p in named},
            "factor": {},
        }
        stores = {"audio": f["grads_audio"], "visual": f["grads_visual"]}
        for i, m in enumerate(MODS):
            k0, k1 = rec["k"][i]
            for n in ENCODER[m]:
                g_both, g_uni = stores[m]["both"][n], stores[m][m][n]
                d = 2 * k0 * g_both + 2 * k1 * g_uni
                # The factor the official code applied: final = gamma * factor * d.
                rec["factor"][n] = (rec["grad_final"][n].norm() / (GAMMA * d.norm())).item()
                # The ratio it tested, from an independent g_sum (same up to rounding).
                rec.setdefault("ratio", {})[n] = ((g_both + g_uni).norm() / d.norm()).item()
        out = plain_step(*args, **kwargs)
        rec["params_after"] = {n: p.detach().clone() for n, p in named}
        records.append(rec)
        return out

    optimizer.step = recording_step
    run_args = argparse.Namespace(n_classes=a.classes)
    for epoch in range(a.epochs):
        official.train_epoch(run_args, epoch, model, torch.device("cpu"), loader, optimizer, scheduler, None)
    assert len(records) == a.epochs * a.steps
    return init, xs, label, records


def branches(records):
    """Per step and modality: the branch taken and which tensors were rescaled."""
    out = []
    for rec in records:
        row = {}
        for i, m in enumerate(MODS):
            k0, k1 = rec["k"][i]
            if rec["cos"][i] > 0:
                kind = "cos>0"
            elif k0 == 0.999 or k0 == 0.001:
                kind = f"min-norm edge {k0}"
            else:
                kind = "min-norm"
            rescaled = [AGM[n][0].rsplit(".", 1)[1] for n in ENCODER[m] if rec["factor"][n] > 1 + 1e-9]
            row[m] = {"branch": kind, "cos": rec["cos"][i], "k": [k0, k1],
                      "rescale_ratio": [rec["ratio"][n] for n in ENCODER[m]],
                      "rescaled": rescaled}
        out.append(row)
    return out


def describe(rows):
    lines = []
    for k, row in enumerate(rows, start=1):
        parts = []
        for m in MODS:
            r = row[m]
            s = f"{m} {r['branch']} (cos {r['cos']:+.3f}"
            if r["branch"] != "cos>0":
                s += f", k = ({r['k'][0]:.4f}, {r['k'][1]:.4f})"
                s += ", rescaled: " + (", ".join(r["rescaled"]) if r["rescaled"] else "none")
            parts.append(s + ")")
        lines.append(f"  step {k}: " + "; ".join(parts))
    return "\n".join(lines)


def write(a, init, xs, label, records, rows):
    tensors = {f"init/params/{AGM[n][0]}": t for n, t in init.items()}
    tensors["train/input/audio"] = xs[0].clone()
    tensors["train/input/visual"] = xs[1].clone()
    tensors["train/label"] = label.to(torch.int64).clone()
    steps = []
    for k, rec in enumerate(records, start=1):
        for n, t in rec["params_after"].items():
            tensors[f"step{k}/params_after/{AGM[n][0]}"] = t
        for n, t in rec["grad_final"].items():
            tensors[f"step{k}/grad_final/{AGM[n][0]}"] = t
        steps.append({
            "step": k,
            "epoch": (k - 1) // a.steps + 1,
            "loss": rec["loss"],
            "values": {
                # agm's Modulator::coefficients: the uni-modal weight k_uni of each encoder.
                "coefficients": [rec["k"][0][1], rec["k"][1][1]],
                # agm's state `losses`: L_mm, then L_m in modality order.
                "losses": rec["losses"],
            },
            "branches_info": rows[k - 1],
        })
    case = {
        "case": a.name,
        "format_version": 1,
        "kind": "method_steps",
        "dtype": "float64",
        "official_reference": {
            "repo": OFFICIAL_REPO,
            "commit": OFFICIAL_COMMIT,
            "functions": [
                "code/MMPareto.py:train_epoch (with main()'s DataParallel, SGD and StepLR)",
                "code/min_norm_solvers.py:MinNormSolver.find_min_norm_element",
            ],
        },
        "semantics": (
            "MMPareto: losses L_mm = CE(head(cat(a, v))), L_a = CE(head_audio(a)), L_v = CE(head_video(v)); per "
            "encoder m, cos of the flattened gradients of L_mm and L_m; cos > 0: k = (1/2, 1/2), else the "
            "2-task min-norm weights (edges 0.999 / 0.001); per encoder tensor p: d_p = 2 k0 g_mm,p + "
            "2 k1 g_m,p, grad_p = 1.5 d_p max(1, |g_sum,p| / |d_p|); every other tensor keeps g_sum. "
            "values.coefficients = k1 per encoder, values.losses = [L_mm, L_a, L_v]; steps[].branches_info "
            "is informational."
        ),
        "method": "mmpareto",
        "method_config": {"gamma": GAMMA, "rescale": "per-tensor"},
        "modalities": MODS,
        "sizes": {"batch": a.batch, "classes": a.classes, "hidden": a.hidden, "input_dims": list(a.dims),
                  "epochs": a.epochs, "steps_per_epoch": a.steps},
        "optimizer": {"kind": "sgd", "lr": a.lr, "momentum": 0.9, "weight_decay": 1e-4},
        "parameters": [{"name": AGM[n][0], "shape": list(t.shape), "role": AGM[n][1]} for n, t in init.items()],
        "steps": steps,
    }
    out = os.path.join(a.out_root, a.name)
    h.write_case(out, case, {k: v.contiguous() for k, v in tensors.items()})
    return out


def parse_args(argv=None):
    ap = h.case_arguments(batch=B, steps=S, epochs=E, hidden=H, classes=C, dims=DIMS, lr=LR,
                          model_seed=MODEL_SEED, data_seed=DATA_SEED, name=NAME)
    ap.add_argument("--no-zero-fused-audio", dest="zero_fused_audio", action="store_false",
                    help="do not zero the fused head's audio columns at the start")
    ap.add_argument("--no-zero-visual-head", dest="zero_visual_head", action="store_false",
                    help="do not zero the visual uni-modal head's weight at the start")
    ap.add_argument("--dry-run", action="store_true", help="print the branches, write nothing")
    return ap.parse_args(argv)


def main():
    a = parse_args()
    official = import_official(os.path.abspath(a.repo))
    init, xs, label, records = run(official, a)
    rows = branches(records)
    print(describe(rows))
    if not a.dry_run:
        print("wrote", write(a, init, xs, label, records, rows))


if __name__ == "__main__":
    main()
