"""Golden case `opm`: On-the-fly Prediction Modulation (OPM, Wei et al., TPAMI 2024).

Usage: python scripts/golden/opm/generate.py <extracted GeWu-Lab/BML_TPAMI2024> [out_root] [options]
(out_root defaults to tests/fixtures/golden; writes <out_root>/opm/{case.json,tensors.safetensors}).
Options (`--help`) change the sizes, seeds, lr, OPM settings and the case name; their defaults
make the committed case.

Official repository GeWu-Lab/BML_TPAMI2024, commit 4b3aa4fd841856c4acbebf48549e6c59fbf7635e,
run as `scripts/train_opm.sh` configures it (`--use_adam_drop --q_base 0.5 --lam 0.5
--p_exe 0.7`, AdamW with weight decay 0.01). Official functions and classes that ran:
`main.train` (the epoch loop: forward, the OPM sample selection, the loss, backward, AdamW
step, StepLR step), `models.Classifier.Classifier.forward`, `calcu_q`,
`Modality_drop.execute_drop`, `custom_autograd`, `fusion_model.ConcatFusion`, `config.Config`.
The swaps (tiny encoders, fixed batches, agm's recorded uniforms in place of numpy's and
torch's Bernoulli draws, two textual fixes of Classifier.py) are described in
scripts/golden/bml_tpami2024.py.

Case-specific choices:
- The official loop hard-codes a warm-up (`warm_up = 1 if epoch <= 5`, 0-based epochs, i.e.
  six epochs without OPM). The official `train` is called with epoch index `e + 4` for the
  case's 1-based epoch `e`, so case epoch 1 is a warm-up epoch and epochs 2-3 run OPM: agm's
  `warmup_epochs = 1`.
- The official optimizer, AdamW (betas and eps as the official run), at lr 0.02 instead of
  5e-5 so that the scores move within nine steps, and with weight decay 0 instead of 0.01:
  agm's `method_steps` replay knows SGD and Adam, and AdamW without weight decay is Adam. The
  official StepLR(40, 0.1) never fires here.
- `cfg.d` (the feature widths weighting theta) is the tiny width H for both modalities, which
  agm reads from the encoder features.
- The official `custom_autograd.backward` returns `theta` as theta's gradient; theta depends
  on q, which is built from the (non-detached) scores, so the encoders get the extra gradient
  theta * d(theta)/d(params). agm reproduces it (`theta_gradient = true`).
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import bml_tpami2024 as h  # noqa: E402

B, S, E, H, C = 6, 3, 3, 4, 3
DIMS = [3, 5]
SEED = 7  # agm's opm.seed; the draws' base is mix_seed(seed, run seed)
RUN_SEED = 0
LR, BETAS, EPS, WD = 0.02, (0.9, 0.999), 1e-8, 0.0
MODEL_SEED, DATA_SEED, NAME = 1, 2, "opm"
Q_BASE, LAM, P_EXE = 0.5, 0.5, 0.7


def parse_args():
    ap = h.case_arguments(
        batch=B, steps=S, epochs=E, hidden=H, classes=C, dims=DIMS, lr=LR,
        model_seed=MODEL_SEED, data_seed=DATA_SEED, name=NAME,
    )
    ap.add_argument("--q-base", type=float, default=Q_BASE)
    ap.add_argument("--lam", type=float, default=LAM)
    ap.add_argument("--p-exe", type=float, default=P_EXE)
    ap.add_argument("--seed", type=int, default=SEED, help="agm's opm.seed")
    ap.add_argument("--run-seed", type=int, default=RUN_SEED)
    return ap.parse_args()


def main():
    global B, S, E, H, C, DIMS, LR, Q_BASE, LAM, P_EXE, SEED, RUN_SEED, MODEL_SEED, DATA_SEED, NAME
    a = parse_args()
    repo, out_root = a.repo, a.out_root
    B, S, E, H, C, DIMS, LR = a.batch, a.steps, a.epochs, a.hidden, a.classes, list(a.dims), a.lr
    Q_BASE, LAM, P_EXE, SEED, RUN_SEED = a.q_base, a.lam, a.p_exe, a.seed, a.run_seed
    MODEL_SEED, DATA_SEED, NAME = a.model_seed, a.data_seed, a.name
    classifier, official_main, config = h.load_official(repo, H)

    cfg = config.Config()
    cfg.parse(
        {"train": True, "use_adam_drop": True, "use_modulation": False, "q_base": Q_BASE, "lam": LAM, "p_exe": P_EXE}
    )
    cfg.d = [H, H]
    model = h.build(classifier, cfg, DIMS, H, C, seed=MODEL_SEED)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    xs, label = h.data(DIMS, B, S, C, seed=DATA_SEED)

    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_decay_step, gamma=cfg.lr_decay_ratio)
    rec = h.Recorder(model, optimizer, list(init))

    base = h.mix_seed(SEED, RUN_SEED)
    m = len(DIMS)

    def step_now():
        return len(rec.steps) + 1

    def rand(*shape):
        assert shape == (1,), shape
        u = h.agm_uniform(base, step_now(), 0)
        rec.cur["draws"]["exe"] = torch.tensor([u])
        return np.array([u])

    def bernoulli_sample(self, sample_shape=torch.Size()):
        probs = self.probs.detach()
        assert tuple(sample_shape) == (B, 1) and probs.shape == (m,), (sample_shape, probs.shape)
        k = step_now()
        u = torch.tensor([[h.agm_uniform(base, k, 1 + b * m + j) for j in range(m)] for b in range(B)])
        rec.cur["draws"]["mask_uniform"] = u.clone()
        return (u < probs).to(probs.dtype).reshape(B, 1, m)

    np.random.rand = rand
    torch.distributions.Bernoulli.sample = bernoulli_sample

    h.run_official(official_main, model, cfg, optimizer, scheduler, xs, label, B, S, E, epoch_offset=4)
    assert len(rec.steps) == S * E

    tensors = h.common_tensors(rec, init, xs, label)
    steps = []
    for k, s in enumerate(rec.steps, start=1):
        epoch = (k - 1) // S + 1
        warm = s["warm_up"] == 1
        q = s["q"] if not warm else [0.0] * m
        draws = s["draws"]
        executed = (not warm) and float(draws["exe"][0]) >= 1 - cfg.p_exe
        theta = sum(H * qi for qi in q) / (H * m) if executed else 0.0
        if executed:
            keep = (draws["mask_uniform"] < torch.tensor([1 - qi for qi in q])).to(torch.float64)
            assert bool(s["update_flag"].all()), "a sample lost every modality (cannot happen: the weaker q is 0)"
        else:
            keep = torch.ones(B, m)
        for name, t in draws.items():
            tensors[f"step{k}/draw/{name}"] = t
        values = {
            "scores": s["performance"],
            "q": q,
            "executed": bool(executed),
            "theta": theta,
            "kept": [float(v) for v in keep.sum(0)],
            "coefficients": [1 - qi for qi in q] if executed else [1.0] * m,
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
                "code/models/Classifier.py:calcu_q",
                "code/models/Classifier.py:Modality_drop.execute_drop",
                "code/models/Classifier.py:custom_autograd",
                "code/models/fusion_model.py:ConcatFusion",
            ],
        },
        "semantics": (
            "OPM: scores s_m = sum_b softmax(h_m W_m^T + b/2)[b, y_b] (W_m: the head weight's columns of "
            "modality m, detached); after the warm-up, q_m = q_base (1 + lam tanh(relu(s_m / s_other - 1))) "
            "for the stronger modality, 0 for the other; the drop runs iff u_exe >= 1 - p_exe; then feature "
            "m of sample b is kept iff u[b, m] < 1 - q_m, and the kept features are scaled by 1 / (1 - theta), "
            "theta = sum_m d_m q_m / sum_m d_m; loss = CE(head(scaled masked features)); theta's gradient "
            "(the official custom_autograd returns theta for it) reaches the encoders through the scores. "
            "Draws: stepK/draw/exe and stepK/draw/mask_uniform, agm's counter-based uniforms."
        ),
        "method": "opm",
        "method_config": {
            "q_base": Q_BASE,
            "lambda": LAM,
            "p_exe": P_EXE,
            "warmup_epochs": 1,
            "theta_gradient": True,
            "seed": SEED,
        },
        "seed": RUN_SEED,
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
