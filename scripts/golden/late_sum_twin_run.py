"""A twin-run fixture of MSES or MSLR on AV-MNIST's late-fusion Sum model, made by running the
official AGM code's whole epoch loop on real training and evaluation.

Usage: python scripts/golden/late_sum_twin_run.py <AGM_ICCV2023 tree> <out> [--method mses|mslr]
       [--seed N] [--batch B] [--steps S] [--eval-batch BV] [--eval-steps SV] [--no-eval-train]
       [--no-eval-shifted] [--head-scale KA,KV] [--epochs E] [--lr LR] [--lr-decay-step K]
       [--lr-decay-ratio G] [--window 0,100] [--audio-shape 1,32,32] [--visual-shape 1,32,32]
(PyTorch from PyPI, CPU.) Writes `<out>.json` for `crates/agm-train/tests/twins.rs`:
`tests/fixtures/twin_runs/avmnist-late-sum-mses` with `--epochs 26` and the other defaults
(`--seed 1 --batch 8 --steps 2 --eval-batch 8 --eval-steps 0 --head-scale 3,5 --lr 0.006
--lr-decay-step 6 --lr-decay-ratio 0.5 --window 0,100`, inputs 1×32×32), `avmnist-late-sum-mslr`
with `--method mslr --epochs 9`.
The defaults make the methods act on formula inputs, in a well-conditioned run: the evaluation
batches are the training batches under their labels (their loss falls as the model fits them)
and under labels shifted by one (their loss rises as it does), and the audio and visual heads
start at 2^-3 and 2^-5 of the formula's scale, so each head's evaluation loss falls, then rises,
at its own pace. In the MSES case audio is best after epoch 11 and stops after epoch 22, which
reloads epoch 11's checkpoint (its learning rate 0.003 where the schedule is at 0.00075); epoch 23
trains with the audio gradients at 0; visual, best after epoch 12, stops after it, reloads epoch
12's checkpoint and the loop exits. In the MSLR case the ratios move from epoch 7. At batch 4 the
batch norms of the last ResNet stages normalise over four values, and a PyTorch run perturbed
by 1e-13 leaves its own path within six steps: too ill-conditioned to compare two programs.

Official repository lihong2303/AGM_ICCV2023. Official code that runs: `run/AVMNIST_main.py:
AVMNIST_main`, the whole loop: every epoch the official `train()` (the Sum model's training pass,
MSES's or MSLR's gradient multipliers, SGD, StepLR at the epoch's end) and `test()` (the heads'
accuracies and mean cross-entropies over the evaluation batches), then MSLR's accuracy memory and
ratios or MSES's smoothing, minimum, checkpoint `torch.save`, patience 10, `torch.load` reload of
model and optimizer (its learning rate included) and `exit()`; the configuration
`utils/config.py:Config` with its defaults and this run's settings; the optimizer and schedule
from the official `AVMNIST_Task.build_optimizer`. The model is the official
`Later_Fusion_Resnet_Sum` of `model/AVMNIST_net.py` (two ResNet-18s, a linear head per
modality, summed), its weights set from `twin_models.py`'s formula.
Swaps: the task's data loaders are fixed lists of formula batches (the same S training batches
every epoch, in order; the evaluation batches above, then SV fresh ones); everything runs in float64 (the loop's `.float()`
casts keep float64); `exit()` raises, so the run's end is recorded; the logger is muted and
TensorBoard and scikit-learn are stubs (never called). Read: each step's loss at
`loss.backward()`, each epoch's learning rate and the ratios `train()` is called with, `test()`'s
return values, the checkpoints saved and loaded, and every parameter and buffer when the loop ends.
"""

import argparse
import importlib
import inspect
import json
import logging
import math
import os
import sys
import tempfile
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stubs import stub  # noqa: E402
from twin_models import build, formula, set_formula_weights, summary  # noqa: E402

CLASSES = 10
# What AV-MNIST's train() multiplies each modality's ratio by (MSLR's init multipliers; MSES 1).
INIT = {"mses": [1.0, 1.0], "mslr": [1.3, 0.7]}


class Exited(Exception):
    """Raised by the stand-in for `exit()`."""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tree")
    ap.add_argument("out")
    ap.add_argument("--method", choices=["mses", "mslr"], default="mses")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--eval-batch", type=int, default=8)
    ap.add_argument("--eval-steps", type=int, default=0)
    ap.add_argument("--eval-train", action=argparse.BooleanOptionalAction, default=True,
                    help="evaluate on the training batches too (before the others; needs --eval-batch = --batch)")
    ap.add_argument("--eval-shifted", action=argparse.BooleanOptionalAction, default=True,
                    help="evaluate on the training inputs with labels shifted by one too (needs --eval-batch = --batch)")
    ap.add_argument("--head-scale", default="3,5",
                    help="the audio and visual heads' weights and biases at 2^-K of the formula's scale: small "
                         "initial logits, growing at different speeds")
    ap.add_argument("--epochs", type=int, default=18, help="epochs the loop may run (it may exit before)")
    ap.add_argument("--lr", type=float, default=0.006)
    ap.add_argument("--lr-decay-step", type=int, default=6)
    ap.add_argument("--lr-decay-ratio", type=float, default=0.5)
    ap.add_argument("--window", default="0,100", help="cfgs.modulation_starts,modulation_ends")
    ap.add_argument("--audio-shape", default="1,32,32")
    ap.add_argument("--visual-shape", default="1,32,32")
    a = ap.parse_args()
    window = [int(v) for v in a.window.split(",")]
    shapes = [tuple(int(v) for v in s.split(",")) for s in (a.audio_shape, a.visual_shape)]

    sys.path.insert(0, a.tree)
    stub("torch.utils.tensorboard", SummaryWriter=lambda *args, **kw: types.SimpleNamespace(
        add_scalar=lambda *_, **__: None, add_scalars=lambda *_, **__: None))
    stub("sklearn", linear_model=stub("sklearn.linear_model"))
    task_module = stub("tasks.AVMNIST_task", AVMNIST_Task=object)
    net_module = importlib.import_module("model.AVMNIST_net")
    official = importlib.import_module("run.AVMNIST_main")
    config = importlib.import_module("utils.config")
    # The official optimizer and schedule, read from the task class without its data loaders.
    task_source = os.path.join(a.tree, "tasks", "AVMNIST_task.py")
    task_code = open(task_source).read().replace("from dataloader.AVMNIST_loader import AVMNIST_Loader\n", "")
    exec(compile(task_code, task_source, "exec"), task_module.__dict__)
    build_optimizer = task_module.AVMNIST_Task.build_optimizer

    torch.manual_seed(a.seed)
    model = build(net_module, "Later_Fusion_Resnet_Sum").double()
    recipe = set_formula_weights(model)

    def batches(count, size, first_seed):
        specs = [[{"shape": list(s), "seed": first_seed + 1000 * k + j} for j, s in enumerate(shapes)]
                 for k in range(count)]
        data = [tuple(formula(size * math.prod(s["shape"]), s["seed"], 0.0, 0).reshape([size] + s["shape"])
                      for s in spec) + (torch.randint(0, CLASSES, (size,)),) for spec in specs]
        return specs, data

    train_specs, train_batches = batches(a.steps, a.batch, 1000)
    eval_specs, eval_batches = batches(a.eval_steps, a.eval_batch, 500_000)
    if a.eval_shifted:
        # The training inputs under other labels: their loss rises as the model fits the true ones.
        assert a.eval_batch == a.batch, "--eval-shifted needs --eval-batch equal to --batch"
        shifted = [b[:-1] + ((b[-1] + 1) % CLASSES,) for b in train_batches]
        eval_specs, eval_batches = train_specs + eval_specs, shifted + eval_batches
    if a.eval_train:
        assert a.eval_batch == a.batch, "--eval-train needs --eval-batch equal to --batch"
        eval_specs, eval_batches = train_specs + eval_specs, train_batches + eval_batches
    head_scale = dict(zip(("audio_cls", "visual_cls"), (int(v) for v in a.head_scale.split(","))))
    for t in recipe:
        if t["name"].split(".")[0] in head_scale:
            t["shift"] += head_scale[t["name"].split(".")[0]]
            dict(model.named_parameters())[t["name"]].data.copy_(
                formula(math.prod(t["shape"]), t["seed"], t["offset"], t["shift"]).reshape(t["shape"]))

    with tempfile.TemporaryDirectory(prefix="late_sum_twin_run_") as expt_dir:
        argv = ["main.py", "--dataset", "AV-MNIST", "--methods", a.method.upper(), "--modality", "Multimodal",
                "--fusion_type", "late_fusion", "--EPOCHS", str(a.epochs + 1), "--expt_dir", expt_dir,
                "--device", "cpu", "--batch_size", str(a.batch), "--learning_rate", str(a.lr),
                "--lr_decay_step", str(a.lr_decay_step), "--lr_decay_ratio", str(a.lr_decay_ratio),
                "--modulation_starts", str(window[0]), "--modulation_ends", str(window[1])]
        saved_argv, sys.argv = sys.argv, argv
        try:
            cfgs = config.Config()
        finally:
            sys.argv = saved_argv
        record = run(official, cfgs, model, build_optimizer, train_batches, eval_batches)

    epochs = record["epochs"]
    for e in epochs:
        print(f"epoch {e['epoch']:2}: lr {e['lr']:.5g} ratios {e['ratios']} eval loss "
              f"{[round(v, 4) for v in e.get('eval', {}).get('head_loss', [])]} "
              f"acc {e.get('eval', {}).get('head_accuracy')} saved {e['saved']} loaded {e['loaded']}")
    if "raised" in record["outcome"]:
        sys.exit(f"no fixture: {record['outcome']}")
    case = {
        "case": os.path.basename(a.out), "kind": "twin_run", "preset": "avmnist-late-sum", "method": a.method,
        "dtype": "float64",
        "official_reference": {"repo": "lihong2303/AGM_ICCV2023", "main_function": "run/AVMNIST_main.py:AVMNIST_main",
                               "net": "model/AVMNIST_net.py:Later_Fusion_Resnet_Sum"},
        "hyper": {"lr": a.lr, "momentum": 0.9, "weight_decay": 1e-4, "lr_decay_step": a.lr_decay_step,
                  "lr_decay_ratio": a.lr_decay_ratio, "modulation_window_epochs": window,
                  "init_multipliers": INIT[a.method], "epochs": a.epochs},
        "tensors": recipe,
        "train_batches": [{"formula_inputs": spec, "labels": b[-1].tolist()} for spec, b in zip(train_specs, train_batches)],
        "eval_batches": [{"formula_inputs": spec, "labels": b[-1].tolist()} for spec, b in zip(eval_specs, eval_batches)],
        "epochs": epochs,
        "outcome": record["outcome"],
        "after": {n: summary(t) for n, t in list(model.named_parameters()) + list(model.named_buffers())
                  if not n.endswith("num_batches_tracked")},
    }
    with open(a.out + ".json", "w") as f:
        json.dump(case, f, separators=(",", ":"))
    print(f"{a.out}.json: {record['outcome']}")


def run(official, cfgs, model, build_optimizer, train_batches, eval_batches):
    """The official AVMNIST_main over the fixed batches; returns what it did, epoch by epoch."""
    train_sig = inspect.signature(official.train)
    real_train, real_test, real_get_logger = official.train, official.test, official.get_logger
    epochs = []

    def task(cfgs):
        stand_in = types.SimpleNamespace(model=model, cfgs=cfgs)
        optimizer, scheduler = build_optimizer(stand_in)
        return types.SimpleNamespace(model=model, optimizer=optimizer, scheduler=scheduler,
                                     train_dataloader=list(train_batches), test_dataloader=list(eval_batches),
                                     dep_dataloader=[])

    def train(*args, **kwargs):
        b = train_sig.bind(*args, **kwargs)
        epoch, optimizer = b.arguments["epoch"], b.arguments["optimizer"]
        epochs.append({"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                       "ratios": [float(b.arguments["audio_lr_ratio"]), float(b.arguments["visual_lr_ratio"])],
                       "losses": [], "saved": [], "loaded": []})
        return real_train(*args, **kwargs)

    def test(*args, **kwargs):
        acc, acc_a, acc_v, loss_a, loss_v = real_test(*args, **kwargs)
        epochs[-1]["eval"] = {"accuracy": float(acc), "head_accuracy": [float(acc_a), float(acc_v)],
                              "head_loss": [float(loss_a), float(loss_v)]}
        return acc, acc_a, acc_v, loss_a, loss_v

    def epoch_of(path):
        # `ckpt_full_epoch{epoch}.pth.tar`; a reload names the epoch as a float (`3.0`) only at 1.
        return int(float(os.path.basename(path)[len("ckpt_full_epoch"):-len(".pth.tar")]))

    def save(obj, path, *args, **kwargs):
        epochs[-1]["saved"].append(epoch_of(path))
        return original_save(obj, path, *args, **kwargs)

    def load(path, *args, **kwargs):
        kwargs.setdefault("weights_only", False)
        obj = original_load(path, *args, **kwargs)
        epochs[-1]["loaded"].append(epoch_of(path))
        return obj

    def official_exit(*args):
        raise Exited()

    def backward(self, *args, **kwargs):
        original_backward(self, *args, **kwargs)
        epochs[-1]["losses"].append(self.item())

    patches = {
        "AVMNIST_Task": task, "train": train, "test": test, "exit": official_exit,
        "get_logger": lambda name, logger_dir=None, **kw: real_get_logger(name, logger_dir=logger_dir, is_mute_logger=True),
    }
    saved_globals = {k: official.__dict__.get(k) for k in patches}
    original_save, original_load = torch.save, torch.load
    original_backward, original_float = torch.Tensor.backward, torch.Tensor.float
    official.__dict__.update(patches)
    torch.save, torch.load = save, load
    torch.Tensor.backward, torch.Tensor.float = backward, lambda self: self.double()
    outcome = f"completed {cfgs.EPOCHS - 1} epochs"
    try:
        official.AVMNIST_main(cfgs)
    except Exited:
        outcome = f"exit() after epoch {epochs[-1]['epoch']} (all modalities stopped)"
    except FileNotFoundError as exc:
        # AV-MNIST's reload when a modality's best epoch is still the first (the reference's MSES reload).
        outcome = f"official code raised FileNotFoundError in epoch {epochs[-1]['epoch']}: {exc.filename}"
    finally:
        torch.save, torch.load = original_save, original_load
        torch.Tensor.backward, torch.Tensor.float = original_backward, original_float
        official.__dict__.update(saved_globals)
        for h in list(logging.getLogger("train_logger").handlers):
            h.close()
            logging.getLogger("train_logger").removeHandler(h)
    return {"epochs": epochs, "outcome": outcome}


if __name__ == "__main__":
    main()
