"""Golden case `ogm_tpami` of method `ogm`: the TPAMI 2024 journal's On-the-fly Gradient
Modulation (OGM, Wei et al.). (The fixture folder `ogm` holds the AGM repository's OGM-GE case.)

Usage: python scripts/golden/ogm/generate.py <extracted GeWu-Lab/BML_TPAMI2024> [out_root] [options]
(out_root defaults to tests/fixtures/golden; writes <out_root>/ogm_tpami/{case.json,tensors.safetensors}).
Options (`--help`) change the sizes, seeds, lr, alpha and the case name; their defaults make the
committed case.

Official repository GeWu-Lab/BML_TPAMI2024, commit 4b3aa4fd841856c4acbebf48549e6c59fbf7635e,
run as `scripts/train_ogm.sh` configures it (`--use_modulation --alpha 0.8
--modulation_starts 0 --modulation_ends 60`, AdamW with weight decay 0.01), except
`--modulation OGM`: the script keeps the argument's default `OGM_GE`, which adds Gaussian noise
to the edited gradients; the case switches that draw off with the official code's own setting.
Official functions and classes that ran: `main.train` (the epoch loop: forward, loss,
backward, the OGM coefficients and the edit of the encoders' 4-D gradients, AdamW step,
StepLR step), `models.Classifier.Classifier.forward` (the scores performance_1/2 from the
head's weight halves), `fusion_model.ConcatFusion`, `config.Config`. The swaps (tiny encoders
as 1x1 convolutions so that the 4-D rule reaches their weights, fixed batches, one textual fix
of Classifier.py's feature width) are described in scripts/golden/bml_tpami2024.py.

Case-specific choices:
- The official loop hard-codes a warm-up (`warm_up = 1 if epoch <= 5`, 0-based epochs). The
  official `train` is called with epoch index `e + 4` for the case's 1-based epoch `e`, and
  `modulation_ends = 6`: case epoch 1 is warm-up (agm `warmup_epochs = 1`), epoch 2 edits
  gradients, epoch 3 is past the window (official epoch 7 > 6; agm `window_end = 2`), so its
  coefficients are computed but not applied.
- The official optimizer, AdamW (betas and eps as the official run), at lr 0.02 instead of
  5e-5 so that the scores move within nine steps, and with weight decay 0 instead of 0.01:
  agm's `method_steps` replay knows SGD and Adam, and AdamW without weight decay is Adam. The
  official StepLR(40, 0.1) never fires here.

Case `ogm_tpami_alpha6` (`--alpha 6 --name ogm_tpami_alpha6`): coefficients down to 1.8e-8,
where the official `1 - tanh(x)` has lost digits to cancellation; agm must give the same bits.
The official training loop needs tqdm next to PyTorch (`pip install tqdm`).
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import bml_tpami2024 as h  # noqa: E402

B, S, E, H, C = 6, 3, 3, 4, 3
DIMS = [3, 5]
ALPHA = 0.8
LR, BETAS, EPS, WD = 0.02, (0.9, 0.999), 1e-8, 0.0
MODEL_SEED, DATA_SEED, NAME = 3, 4, "ogm_tpami"


def parse_args():
    ap = h.case_arguments(
        batch=B, steps=S, epochs=E, hidden=H, classes=C, dims=DIMS, lr=LR,
        model_seed=MODEL_SEED, data_seed=DATA_SEED, name=NAME,
    )
    ap.add_argument("--alpha", type=float, default=ALPHA)
    return ap.parse_args()


def main():
    global B, S, E, H, C, DIMS, LR, ALPHA, MODEL_SEED, DATA_SEED, NAME
    a = parse_args()
    repo, out_root = a.repo, a.out_root
    B, S, E, H, C, DIMS = a.batch, a.steps, a.epochs, a.hidden, a.classes, list(a.dims)
    LR, ALPHA, MODEL_SEED, DATA_SEED, NAME = a.lr, a.alpha, a.model_seed, a.data_seed, a.name
    classifier, official_main, config = h.load_official(repo, H)

    cfg = config.Config()
    cfg.parse(
        {
            "train": True,
            "use_modulation": True,
            "use_adam_drop": False,
            "modulation": "OGM",
            "use_OGM_plus": False,
            "alpha": ALPHA,
            "modulation_starts": 0,
            "modulation_ends": 6,
        }
    )
    model = h.build(classifier, cfg, DIMS, H, C, seed=MODEL_SEED)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    xs, label = h.data(DIMS, B, S, C, seed=DATA_SEED)

    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_decay_step, gamma=cfg.lr_decay_ratio)
    rec = h.Recorder(model, optimizer, list(init))
    h.run_official(official_main, model, cfg, optimizer, scheduler, xs, label, B, S, E, epoch_offset=4)
    assert len(rec.steps) == S * E

    tensors = h.common_tensors(rec, init, xs, label)
    steps = []
    for k, s in enumerate(rec.steps, start=1):
        epoch = (k - 1) // S + 1
        official_epoch = epoch + 4
        warm = s["warm_up"] == 1
        p1, p2 = s["performance"]
        if warm:
            coeff = [1.0, 1.0]
        elif p1 / p2 > 1:
            coeff = [1 - float(torch.tanh(torch.tensor(ALPHA * (p1 / p2)))), 1.0]
        else:
            coeff = [1.0, 1 - float(torch.tanh(torch.tensor(ALPHA * (p2 / p1))))]
        applied = (not warm) and cfg.modulation_starts <= official_epoch <= cfg.modulation_ends
        in_effect = coeff if applied else [1.0, 1.0]
        # The coefficients are the ones the official loop applied: only the 4-D weights change.
        for name in s["grad_backward"]:
            enc = 0 if name.startswith("encoder_1") else 1 if name.startswith("encoder_2") else None
            k_m = in_effect[enc] if (enc is not None and name.endswith("conv.weight")) else 1.0
            want = s["grad_backward"][name] * k_m
            assert torch.allclose(s["grad_final"][name], want, rtol=1e-12, atol=0), (k, name)
        values = {
            "scores": [p1, p2],
            "coeff": coeff,
            "applied": bool(applied),
            "coefficients": in_effect,
        }
        steps.append({"step": k, "epoch": epoch, "loss": float(s["ce"][0]), "values": values})

    case = {
        "case": NAME,
        "format_version": 1,
        "kind": "method_steps",
        "dtype": "float64",
        "official_reference": {
            "repo": h.OFFICIAL_REPO,
            "commit": h.OFFICIAL_COMMIT,
            "functions": [
                "code/main.py:train",
                "code/models/Classifier.py:Classifier.forward",
                "code/models/fusion_model.py:ConcatFusion",
            ],
        },
        "semantics": (
            "journal OGM: scores s_m = sum_b softmax(h_m W_m^T + b/2)[b, y_b] (W_m: the head weight's columns "
            "of modality m, detached); after the warm-up, r = s_1 / s_2; if r > 1 then k_1 = 1 - tanh(alpha r), "
            "k_2 = 1, else k_1 = 1, k_2 = 1 - tanh(alpha / r); inside the window each encoder's weight gradient "
            "(rank >= 2; the official rule is 4-D) is multiplied by its k; biases and the head untouched; "
            "noise off (official --modulation OGM)."
        ),
        "method": "ogm",
        "method_config": {
            "alpha": ALPHA,
            "warmup_epochs": 1,
            "window_start": 1,
            "window_end": 2,
            "params": "weights",
            "noise": False,
            "seed": 0,
        },
        "modalities": ["audio", "visual"],
        "sizes": {"batch": B, "classes": C, "hidden": H, "input_dims": DIMS, "epochs": E, "steps_per_epoch": S},
        "optimizer": {"kind": "adam", "lr": LR, "betas": list(BETAS), "eps": EPS, "weight_decay": WD},
        "parameters": h.parameter_list(init),
        "steps": steps,
    }
    h.write_case(os.path.join(out_root, NAME), case, tensors)
    for s in steps:
        print(s["step"], s["epoch"], round(s["loss"], 6), s["values"])


if __name__ == "__main__":
    main()
