#!/usr/bin/env python3
"""Time the REFERENCE (official PyTorch AGM code, lihong2303/AGM_ICCV2023) training step on CPU or CUDA.

One training step of the reference, for plain joint training ("Normal" method) and for AGM, on
random tensors of the real shapes, so that the Rust implementation can be compared with it by
ratio in the same session. Standard library + torch (+ numpy, which torch may use) only.

The model classes are imported from the reference tree given with --reference (a checkout, or
`git archive HEAD | tar -x` of it); nothing of theirs is copied here. What this file writes is only
the driver of one batch, i.e. the body of the loop in run/AVMNIST_main.py::train resp.
run/URFunny_main.py::train for `--modality Multimodal --fusion_type late_fusion`.

Usage:
  python scripts/reference_step_bench.py --reference DIR --case avmnist --batch 8 --steps 5 --threads 2
  python scripts/reference_step_bench.py --reference DIR --case urfunny --batch 8 --steps 3 --seq-len 20
  python scripts/reference_step_bench.py --reference DIR --case avmnist --batch 64 --device cuda
  python scripts/reference_step_bench.py --reference DIR --case avmnist --batch 8 --plain
  python scripts/reference_step_bench.py --reference DIR --case cremad --batch 8 --plain
  python scripts/reference_step_bench.py --reference DIR --case avmnist --batch 64 --device cuda --plain-only --precision bf16

--plain adds a third arm, the plain PyTorch step: the official late-fusion concat model (the
network agm's `<family>-late` preset builds: Later_Fusion_Resnet, Later_Fusion_Model, CREMA-D's
AVClassifier with fusion 'concat'), forward, cross-entropy (mean), backward, SGD step with the
reference's momentum 0.9 and weight decay 1e-4 -- no accuracies, no per-sample score loop, no
.item() besides the loss at the end. CREMA-D (--case cremad) has only this arm, so it needs --plain.
--plain-only runs that arm alone. --serve runs it on request, for a caller that interleaves it
with its own steps (`cargo xtask bench`): after two warm-up steps it prints {"ready": true}, then
for each line "n" on stdin runs n steps and prints {"ms": [...]}, and for a line "launches" the
kernels, copies and sets of one step on CUDA from PyTorch's profiler, until end of input.

--precision (CUDA only; agm's `--precision` of the same name): fp32 (default) turns TF32 on for
matrix products and cuDNN convolutions (torch.backends.cuda.matmul.allow_tf32 and
torch.backends.cudnn.allow_tf32; PyTorch's own default has TF32 for convolutions only);
fp32-strict turns both off; bf16 runs the plain step's forward and loss under
torch.autocast("cuda", dtype=torch.bfloat16) with TF32 on. On CUDA every arm sets
torch.backends.cudnn.benchmark = True (each convolution shape's algorithm picked by timing, as agm
does).

Prints ONE JSON line:
  {"case", "batch", "threads", "device", "joint_ms_median", "agm_ms_median", "joint_peak_mib",
   "agm_peak_mib", "peak_of", "torch_version", ...extra keys: steps, seq_len (UR-Funny), per-step wall
   times, joint/agm_cpu_ms_median (process CPU time per step, all threads), agm_joint_ratio,
   loadavg at start and end; with --plain also plain_ms_median, plain_ms_all, plain_peak_mib,
   plain_peak_above_import_mib, plain_cpu_ms_median; the keys of an arm not run are null}

Each arm (joint, agm) runs in its own fresh subprocess of this script (internal flag --arm), so the
peak RSS values (VmHWM from /proc/self/status, read at the end of the arm) are separate;
*_peak_above_import_mib is that peak less the resident size right after `import torch` (before the
model is built), which leaves out Python's and PyTorch's libraries (pages of them first touched
later still count). On
CUDA (--device cuda) the peak is torch.cuda.max_memory_allocated (live device bytes) instead,
and each step is timed between two torch.cuda.synchronize calls.
Timing: 2 warm-up steps, then the median of --steps steps of wall time (time.perf_counter).
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time


# --------------------------------------------------------------------------------------------
# parent: run both arms in fresh subprocesses, print one JSON line
# --------------------------------------------------------------------------------------------

def _loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return None


def run_parent(args):
    results = {}
    load_start = _loadavg()
    if args.case == "cremad" or args.plain_only:
        arms = ("plain",)
    else:
        arms = ("joint", "agm", "plain") if args.plain else ("joint", "agm")
    for arm in arms:
        cmd = [sys.executable, os.path.abspath(__file__),
               "--reference", args.reference, "--case", args.case,
               "--batch", str(args.batch), "--steps", str(args.steps),
               "--threads", str(args.threads), "--seq-len", str(args.seq_len),
               "--seed", str(args.seed), "--device", args.device, "--arm", arm,
               "--precision", args.precision]
        if args.alpha is not None:
            cmd += ["--alpha", str(args.alpha)]
        env = dict(os.environ)
        # torch.set_num_threads is also called inside the child.
        pin_thread_pools(env, args.threads)
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"arm {arm} failed with exit code {proc.returncode}")
        line = [l for l in proc.stdout.splitlines() if l.startswith("{")][-1]
        results[arm] = json.loads(line)
    def key(arm, k):
        return results[arm][k] if arm in results else None

    last = results[arms[-1]]
    out = {
        "case": args.case,
        "batch": args.batch,
        "threads": args.threads,
        "device": args.device,
        "precision": args.precision,
        "joint_ms_median": key("joint", "ms_median"),
        "agm_ms_median": key("agm", "ms_median"),
        "joint_peak_mib": key("joint", "peak_mib"),
        "agm_peak_mib": key("agm", "peak_mib"),
        "peak_of": last["peak_of"],
        "torch_version": last["torch_version"],
        "steps": args.steps,
        "joint_ms_all": key("joint", "ms_all"),
        "agm_ms_all": key("agm", "ms_all"),
        "joint_cpu_ms_median": key("joint", "cpu_ms_median"),
        "agm_cpu_ms_median": key("agm", "cpu_ms_median"),
        "agm_joint_ratio": (round(results["agm"]["ms_median"] / results["joint"]["ms_median"], 3)
                            if "agm" in results else None),
        "plain_ms_median": key("plain", "ms_median"),
        "plain_ms_all": key("plain", "ms_all"),
        "plain_cpu_ms_median": key("plain", "cpu_ms_median"),
        "plain_peak_mib": key("plain", "peak_mib"),
        "plain_peak_above_import_mib": key("plain", "peak_above_import_mib"),
        "plain_params": key("plain", "params"),
        "loadavg_start": load_start,
        "loadavg_end": _loadavg(),
    }
    if args.case == "urfunny":
        out["seq_len"] = args.seq_len
    print(json.dumps(out))


# --------------------------------------------------------------------------------------------
# child: one arm
# --------------------------------------------------------------------------------------------

def _status_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024.0, 1)
    return None


def peak_rss_mib():
    return _status_mib("VmHWM")


def import_reference(reference, device):
    """Put the reference tree first on sys.path and import its model modules."""
    reference = os.path.abspath(reference)
    if not os.path.isfile(os.path.join(reference, "model", "AVMNIST_net.py")):
        raise SystemExit(f"--reference {reference}: no model/AVMNIST_net.py there")
    sys.path.insert(0, reference)
    import torch
    import torch.nn as nn
    # The reference hard-codes `.cuda()` only in model/AVE_net.py, which is not used here; the
    # AV-MNIST and UR-Funny model files and the code paths driven below have none. As a minimal,
    # run-time-only guard (their files are not edited), on the CPU `.cuda()` is made the identity
    # so that everything stays there even if a call were reached.
    if device == "cpu":
        torch.Tensor.cuda = lambda self, *a, **k: self
        nn.Module.cuda = lambda self, *a, **k: self
    from model import AVMNIST_net, CREMAD_net, URFunny_net  # noqa: E402  (reference code)
    from utils.metric import Accuracy  # noqa: E402  (reference code)
    for mod in (AVMNIST_net, CREMAD_net, URFunny_net):
        if not os.path.abspath(mod.__file__).startswith(reference):
            raise SystemExit(f"imported {mod.__name__} from {mod.__file__}, not from {reference}")
    return AVMNIST_net, CREMAD_net, URFunny_net, Accuracy


class Cfgs:
    """The attributes of utils/config.py's Config that the model constructors and train() read."""

    def __init__(self, methods, alpha):
        self.methods = methods            # 'Normal' | 'AGM'
        self.modality = "Multimodal"
        self.fusion_type = "late_fusion"
        self.mode = "train"               # AVMNIST_Condig['mode']
        self.alpha = alpha
        self.modulation_starts = 0        # CLI defaults: window [0, 20], epoch 1 is inside it
        self.modulation_ends = 20
        self.use_mgpu = False
        self.learning_rate = 1e-4
        # UR_Funny_config (loader options; not read by the models)
        self.aligned, self.z_norm, self.flatten, self.max_pad = True, False, False, False
        # Cramed_config and the --dataset choice, read by CREMAD_net.AVClassifier
        self.dataset = "CREMAD"
        self.fusion = "concat"


def build_model(case, methods, alpha, AVMNIST_net, URFunny_net):
    """Exactly the choice of tasks/AVMNIST_task.py::load_model / tasks/URFunny_task.py::build_model
    for modality 'Multimodal', fusion_type 'late_fusion':

      methods == 'AGM'  -> GradMod(cfgs) (wraps Later_Fusion_Resnet / Later_Fusion_Model)
      anything else     -> Later_Fusion_Resnet_Sum / Later_Fusion_Model_Sum

    So the joint ("Normal") arm is the *Sum* model (one linear head per modality, logits summed;
    one forward pass), not GradMod with scales 1. GradMod is used for Normal only in early fusion.
    """
    cfgs = Cfgs(methods, alpha)
    if case == "avmnist":
        net = AVMNIST_net.GradMod(cfgs) if methods == "AGM" else AVMNIST_net.Later_Fusion_Resnet_Sum(cfgs)
    else:
        net = URFunny_net.GradMod(cfgs) if methods == "AGM" else URFunny_net.Later_Fusion_Model_Sum(cfgs)
    return cfgs, net


def build_plain_model(case, AVMNIST_net, CREMAD_net, URFunny_net):
    """The late-fusion concat model, the network agm's `<family>-late` preset builds (and the one
    GradMod wraps): Later_Fusion_Resnet (AV-MNIST), Later_Fusion_Model (UR-Funny), AVClassifier with
    fusion 'concat' (CREMA-D). Each returns the logits alone in its 'classify' mode."""
    cfgs = Cfgs("Normal", 0.0)
    if case == "avmnist":
        net = AVMNIST_net.Later_Fusion_Resnet(cfgs)
    elif case == "urfunny":
        net = URFunny_net.Later_Fusion_Model(cfgs)
    else:
        net = CREMAD_net.AVClassifier(cfgs)
    net.mode = "classify"
    return cfgs, net


class PlainStep:
    """The plain PyTorch step: zero_grad, forward, cross-entropy (mean), backward, SGD step.
    No accuracies, no per-sample score loop; the loss is read (.item()) once, at the end."""

    def __init__(self, torch, nn, model, optimizer, case, bf16=False):
        self.model, self.optimizer, self.case = model, optimizer, case
        self.autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)
        self.loss_fn = nn.CrossEntropyLoss()
        model.train()

    def __call__(self, batch):
        self.optimizer.zero_grad()
        with self.autocast():
            if self.case == "urfunny":
                (vision, audio, text), lengths, label = batch
                out = self.model(vision, audio, text, lengths)
                label = label.squeeze(1)
            else:
                audio, visual, label = batch
                out = self.model(audio, visual)
            loss = self.loss_fn(out, label)
        loss.backward()
        self.optimizer.step()
        return loss.item()


def make_batches(case, n, batch, seq_len, torch):
    """Random tensors of the real shapes (the data loaders are not timed)."""
    out = []
    for _ in range(n):
        if case == "avmnist":
            # dataloader/AVMNIST_loader.py: audio spectrogram [B,1,112,112], image [B,1,28,28],
            # both /255 -> values in [0,1]; 10 classes.
            audio = torch.rand(batch, 1, 112, 112)
            image = torch.rand(batch, 1, 28, 28)
            label = torch.randint(0, 10, (batch,))
            out.append((audio, image, label))
        elif case == "cremad":
            # dataloader/CREMAD_loader.py: spectrogram [B,1,257,188]; frames [B,3,T,224,224] with
            # T = 1 frame per clip (the visual ResNet folds T into the batch); 6 classes.
            audio = torch.rand(batch, 1, 257, 188)
            visual = torch.rand(batch, 3, 1, 224, 224)
            label = torch.randint(0, 6, (batch,))
            out.append((audio, visual, label))
        else:
            # dataloader/URFunny_loader.py::_process_1 (max_pad False): features padded to the
            # batch's longest sequence L: vision [B,L,371], audio [B,L,81], text [B,L,300];
            # lengths (ignored by the models); labels [B,1] long, 2 classes.
            vision = torch.randn(batch, seq_len, 371)
            audio = torch.randn(batch, seq_len, 81)
            text = torch.randn(batch, seq_len, 300)
            lengths = [torch.full((batch,), seq_len, dtype=torch.long) for _ in range(3)]
            label = torch.randint(0, 2, (batch, 1))
            out.append(((vision, audio, text), lengths, label))
    return out


class AVMNISTStep:
    """Body of the `for step, (audio, image, label)` loop of run/AVMNIST_main.py::train for
    modality 'Multimodal', late fusion, epoch 1, with methods 'Normal' or 'AGM'.

    Left out (no compute on the model): tensorboard writer.add_scalar and logger calls.
    Kept: forward, CE (mean) on `out` (= m_a + m_v for AGM, out_a + out_v for Sum), the three
    batch accuracies (.item()), the NaN check, the per-sample score loop with the 1e-8 clamp, the
    ratio / coefficient / running-score update (done for every method, as in the reference),
    update_scale (AGM only), backward, the conditional clip_grad_norm_(1.0) (AGM only in late
    fusion), optimizer.step(). scheduler.step() is per epoch, so not part of a step.
    """

    def __init__(self, torch, nn, model, optimizer, cfgs, Accuracy):
        self.torch, self.nn, self.model, self.optimizer, self.cfgs = torch, nn, model, optimizer, cfgs
        self.Accuracy = Accuracy
        self.loss_fn = nn.CrossEntropyLoss()
        self.softmax = nn.Softmax(dim=1)
        self.train_score_a = 0.0  # epoch_score_a starts at 0. in AVMNIST_main
        self.train_score_v = 0.0
        self.step_idx = 0
        self.num_batch = 1  # len(train_dataloader); only used to average accuracies / loss
        self.train_loss = self.train_acc = self.train_audio_acc = self.train_visual_acc = 0.0
        model.train()
        model.mode = "train"

    def __call__(self, batch):
        torch, nn, model, cfgs, softmax = self.torch, self.nn, self.model, self.cfgs, self.softmax
        Accuracy, num_batch = self.Accuracy, self.num_batch
        audio, image, label = batch
        audio = audio.float()
        image = image.float()
        label = label.long()
        iteration = self.step_idx  # (epoch-1)*num_batch + step with epoch 1
        self.optimizer.zero_grad()
        out_a, out_v, out = model(audio, image)
        loss = self.loss_fn(out, label)
        batch_acc = Accuracy(softmax(out), label)
        batch_audio_acc = Accuracy(softmax(out_a), label)
        batch_visual_acc = Accuracy(softmax(out_v), label)
        self.train_audio_acc += batch_audio_acc.item() / num_batch
        self.train_visual_acc += batch_visual_acc.item() / num_batch
        self.train_acc += batch_acc.item() / num_batch
        self.train_loss += loss.item() / num_batch

        if torch.isnan(out_a).any() or torch.isnan(out_v).any():
            raise ValueError
        score_audio = 0.
        score_visual = 0.
        for k in range(out_a.size(0)):
            if torch.isinf(softmax(out_a)[k][label[k]]) or softmax(out_a)[k][label[k]] < 1e-8:
                score_audio += - torch.log(torch.tensor(1e-8, dtype=out_a.dtype, device=out_a.device))
            else:
                score_audio += - torch.log(softmax(out_a)[k][label[k]])
            if torch.isinf(softmax(out_v)[k][label[k]]) or softmax(out_v)[k][label[k]] < 1e-8:
                score_visual += - torch.log(torch.tensor(1e-8, dtype=out_v.dtype, device=out_v.device))
            else:
                score_visual += - torch.log(softmax(out_v)[k][label[k]])
        score_audio = score_audio / out_a.size(0)
        score_visual = score_visual / out_v.size(0)

        mean_ratio = (score_visual.item() + score_audio.item()) / 2
        ratio_a = math.exp((mean_ratio - score_audio.item()) * 2)
        ratio_v = math.exp((mean_ratio - score_visual.item()) * 2)
        mean_optimal_ratio = (self.train_score_a + self.train_score_v) / 2
        optimal_ratio_a = math.exp((mean_optimal_ratio - self.train_score_a) * 2)
        optimal_ratio_v = math.exp((mean_optimal_ratio - self.train_score_v) * 2)
        coeff_a = math.exp(cfgs.alpha * (optimal_ratio_a - ratio_a))
        coeff_v = math.exp(cfgs.alpha * (optimal_ratio_v - ratio_v))
        self.train_score_a = self.train_score_a * iteration / (iteration + 1) + score_audio.item() / (iteration + 1)
        self.train_score_v = self.train_score_v * iteration / (iteration + 1) + score_visual.item() / (iteration + 1)

        if cfgs.methods == "AGM":
            model.update_scale(coeff_a, coeff_v)
            loss.backward()
        else:
            loss.backward()
        if cfgs.methods == "AGM" or cfgs.fusion_type == "early_fusion":
            grad_max = torch.max(model.net.head.fc.weight.grad)
            grad_min = torch.min(model.net.head.fc.weight.grad)
            if grad_max > 1.0 or grad_min < -1.0:
                nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        self.optimizer.step()
        self.step_idx += 1
        return loss.item()


class URFunnyStep:
    """Body of the `for step, (feature, feature_length, index, label)` loop of
    run/URFunny_main.py::train for modality 'Multimodal', late fusion, epoch 1, methods 'Normal' or
    'AGM'.

    Left out: writer.add_scalar, logger calls. Kept: forward (GradMod returns 7 outputs: the
    m_*_mc, m_a, m_v, m_t, out; the Sum model 4), CE (mean) on `out`, the per-sample score loop
    (no clamp in UR-Funny), ratios *3/2, coefficients with min(., 7), running-score update (every
    method), update_scale(a, v, t) (AGM), backward, the four accuracies (.item()), the conditional
    clip_grad_norm_(5.0) (AGM only in late fusion), optimizer.step().
    """

    def __init__(self, torch, nn, model, optimizer, cfgs, Accuracy):
        self.torch, self.nn, self.model, self.optimizer, self.cfgs = torch, nn, model, optimizer, cfgs
        self.Accuracy = Accuracy
        self.loss_fn = nn.CrossEntropyLoss()
        self.softmax = nn.Softmax(dim=1)
        self.train_score_v = self.train_score_a = self.train_score_t = 0.0
        self.step_idx = 0
        self.total_batch = 1
        self.train_acc = self.train_audio_acc = self.train_visual_acc = self.train_text_acc = 0.0
        model.train()
        model.mode = "train"

    def __call__(self, batch):
        torch, nn, model, cfgs, softmax = self.torch, self.nn, self.model, self.cfgs, self.softmax
        Accuracy, total_batch = self.Accuracy, self.total_batch
        feature, feature_length, label = batch
        vision = feature[0].float()
        audio = feature[1].float()
        text = feature[2].float()
        label = label.squeeze(1)
        iteration = self.step_idx + 1  # (epoch-1)*len(loader) + step + 1 with epoch 1
        self.optimizer.zero_grad()
        if cfgs.methods == "AGM" or cfgs.fusion_type == "early_fusion":
            m_a_mc, m_v_mc, m_t_mc, m_a_out, m_v_out, m_t_out, out = model(vision, audio, text, feature_length)
        else:
            m_a_out, m_v_out, m_t_out, out = model(vision, audio, text, feature_length)
        loss = self.loss_fn(out, label)

        score_visual = 0.
        score_audio = 0.
        score_text = 0.
        for k in range(out.size(0)):
            score_visual += - torch.log(softmax(m_v_out)[k][label[k]]) / m_v_out.size(0)
            score_audio += - torch.log(softmax(m_a_out)[k][label[k]]) / m_a_out.size(0)
            score_text += - torch.log(softmax(m_t_out)[k][label[k]]) / m_t_out.size(0)
        mean_score = (score_visual.item() + score_audio.item() + score_text.item()) / 3
        ratio_v = math.exp((mean_score - score_visual.item()) * 3 / 2)
        ratio_a = math.exp((mean_score - score_audio.item()) * 3 / 2)
        ratio_t = math.exp((mean_score - score_text.item()) * 3 / 2)
        optimal_mean_score = (self.train_score_v + self.train_score_a + self.train_score_t) / 3
        optimal_ratio_v = math.exp((optimal_mean_score - self.train_score_v) * 3 / 2)
        optimal_ratio_a = math.exp((optimal_mean_score - self.train_score_a) * 3 / 2)
        optimal_ratio_t = math.exp((optimal_mean_score - self.train_score_t) * 3 / 2)
        coeff_a = math.exp(cfgs.alpha * (min(optimal_ratio_a - ratio_a, 7)))
        coeff_v = math.exp(cfgs.alpha * (min(optimal_ratio_v - ratio_v, 7)))
        coeff_t = math.exp(cfgs.alpha * (min(optimal_ratio_t - ratio_t, 7)))
        self.train_score_v = self.train_score_v * (iteration - 1) / iteration + score_visual.item() / iteration
        self.train_score_a = self.train_score_a * (iteration - 1) / iteration + score_audio.item() / iteration
        self.train_score_t = self.train_score_t * (iteration - 1) / iteration + score_text.item() / iteration

        if cfgs.methods == "AGM":
            model.update_scale(coeff_a, coeff_v, coeff_t)
            loss.backward()
        else:
            loss.backward()

        preds = softmax(out)
        audio_preds = softmax(m_a_out)
        visual_preds = softmax(m_v_out)
        text_preds = softmax(m_t_out)
        self.train_acc += Accuracy(preds, label).item() / total_batch
        self.train_audio_acc += Accuracy(audio_preds, label).item() / total_batch
        self.train_visual_acc += Accuracy(visual_preds, label).item() / total_batch
        self.train_text_acc += Accuracy(text_preds, label).item() / total_batch
        if cfgs.methods == "AGM" or cfgs.fusion_type == "early_fusion":
            grad_max = torch.max(model.net.head.fc.weight.grad)
            grad_min = torch.min(model.net.head.fc.weight.grad)
            if grad_max > 5. or grad_min < -5.:
                nn.utils.clip_grad_norm_(model.parameters(), max_norm=5.0)
        self.optimizer.step()
        self.step_idx += 1
        return loss.item()


def to_device(batch, device):
    """The batch's tensors on `device`, nested tuples and lists kept."""
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(x, device) for x in batch)
    return batch.to(device)


WARMUP = 2  # untimed steps before the timed ones


def pin_thread_pools(env, threads):
    """Sizes the OpenMP / BLAS thread pools in the environment env, before torch loads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)


def build_arm(args):
    """(torch, step, batches, sync, rss_after_import) of the arm args.arm: its model, optimizer
    and step, warmup + --steps batches on the device, and the device's wait."""
    AVMNIST_net, CREMAD_net, URFunny_net, Accuracy = import_reference(args.reference, args.device)
    import torch
    import torch.nn as nn
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        tf32 = args.precision != "fp32-strict"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
    rss_after_import = _status_mib("VmRSS")
    torch.manual_seed(args.seed)  # utils/function_tools.set_seed: random_seed 999 by default
    if args.arm == "plain":
        cfgs, model = build_plain_model(args.case, AVMNIST_net, CREMAD_net, URFunny_net)
    else:
        methods = "AGM" if args.arm == "agm" else "Normal"
        alpha = args.alpha if args.alpha is not None else (2.5 if args.case == "avmnist" else 4.0)
        cfgs, model = build_model(args.case, methods, alpha, AVMNIST_net, URFunny_net)
    device = torch.device(args.device)
    model = model.to(device)  # as the reference's main does with .cuda(), before the optimizer
    # tasks/*_task.py::build_optimizer (optim 'sgd'): SGD(lr, momentum 0.9, weight_decay 1e-4)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfgs.learning_rate, momentum=0.9,
                                weight_decay=1e-4)
    if args.arm == "plain":
        bf16 = args.precision == "bf16" and args.device.startswith("cuda")
        step = PlainStep(torch, nn, model, optimizer, args.case, bf16)
    else:
        Step = AVMNISTStep if args.case == "avmnist" else URFunnyStep
        step = Step(torch, nn, model, optimizer, cfgs, Accuracy)
    batches = [to_device(b, device) for b in make_batches(args.case, WARMUP + args.steps, args.batch, args.seq_len, torch)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return torch, model, step, batches, sync, rss_after_import


def timed_step(step, batch, sync, i):
    """(wall ms, process CPU ms) of one step; fails on a non-finite loss."""
    sync()
    c0 = time.process_time()
    t0 = time.perf_counter()
    loss = step(batch)
    sync()
    dt = (time.perf_counter() - t0) * 1000.0
    dc = (time.process_time() - c0) * 1000.0
    if not math.isfinite(loss):
        raise SystemExit(f"non-finite loss at step {i}")
    return dt, dc


def run_child(args):
    torch, model, step, batches, sync, rss_after_import = build_arm(args)
    cuda = args.device.startswith("cuda")
    device = torch.device(args.device)
    times = []
    cpu_times = []
    for i, b in enumerate(batches):
        dt, dc = timed_step(step, b, sync, i)
        if i >= WARMUP:
            times.append(dt)
            cpu_times.append(dc)
    peak = peak_rss_mib()
    print(json.dumps({
        "arm": args.arm,
        "ms_median": round(statistics.median(times), 2),
        "ms_all": [round(t, 2) for t in times],
        # CPU time of the whole process (all threads) per step. NOT load-proof: when other jobs
        # take the cores, OpenMP threads spin-wait at barriers and this grows with wall time.
        # On a quiet machine it is ~threads x wall time. Reported as a hint only.
        "cpu_ms_median": round(statistics.median(cpu_times), 2),
        "peak_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else peak,
        "peak_above_import_mib": (round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda
                                  else round(peak - rss_after_import, 1)),
        "peak_of": "torch.cuda.max_memory_allocated" if cuda else "VmHWM",
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
    }))


def count_launches(torch, step, batch, sync, cuda):
    """The device work of one step on CUDA, from PyTorch's profiler (CUPTI's activity records,
    as agm's bench counts its own): {"kernels", "memcpys", "memsets"}, or {"why"} where there is
    nothing to count."""
    if not cuda:
        return {"why": "the plain step does not run on CUDA"}
    from torch.profiler import ProfilerActivity, profile
    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step(batch)
        sync()
    counts = {"kernels": 0, "memcpys": 0, "memsets": 0}
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = event.name
        kind = "memcpys" if name.startswith("Memcpy") else "memsets" if name.startswith("Memset") else "kernels"
        counts[kind] += 1
    if counts["kernels"] == 0:
        return {"why": "PyTorch's profiler recorded no CUDA kernel"}
    return counts


def run_serve(args):
    """The plain step on request, for a caller that interleaves it with its own steps: after the
    warm-up steps prints {"ready": true}; then for each line n read from stdin runs n steps
    (cycling through the batches) and prints {"ms": [wall ms of each]}, and for a line
    "launches" runs one step under PyTorch's profiler and prints count_launches' counts; ends at
    end of input."""
    args.arm = "plain"
    torch, _, step, batches, sync, _ = build_arm(args)
    for i, b in enumerate(batches[:WARMUP]):
        timed_step(step, b, sync, i)
    print(json.dumps({"ready": True}), flush=True)
    i = WARMUP
    for line in sys.stdin:
        if not line.strip():
            continue
        if line.strip() == "launches":
            print(json.dumps(count_launches(torch, step, batches[i % len(batches)], sync,
                                            args.device.startswith("cuda"))), flush=True)
            i += 1
            continue
        ms = []
        for _ in range(int(line)):
            ms.append(round(timed_step(step, batches[i % len(batches)], sync, i)[0], 3))
            i += 1
        print(json.dumps({"ms": ms}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True,
                   help="root of a checkout / exported tree of lihong2303/AGM_ICCV2023")
    p.add_argument("--case", choices=["avmnist", "urfunny", "cremad"], required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=50, help="UR-Funny sequence length L")
    p.add_argument("--alpha", type=float, default=None,
                   help="AGM alpha (default: author's setting, 2.5 AV-MNIST, 4.0 UR-Funny late)")
    p.add_argument("--seed", type=int, default=999)
    p.add_argument("--device", default="cpu", help="cpu, or cuda for the first GPU")
    p.add_argument("--plain", action="store_true",
                   help="also time the plain PyTorch step (forward, CE, backward, SGD) of the late concat model")
    p.add_argument("--plain-only", action="store_true", help="time the plain PyTorch step alone")
    p.add_argument("--precision", choices=["fp32", "fp32-strict", "bf16"], default="fp32",
                   help="CUDA arithmetic: TF32 allowed (fp32), off (fp32-strict), or bf16 autocast")
    p.add_argument("--serve", action="store_true",
                   help="serve the plain step on request (see run_serve): for cargo xtask bench, "
                        "which interleaves it with agm's arms")
    p.add_argument("--arm", choices=["joint", "agm", "plain"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.case == "cremad" and not args.plain and args.arm is None and not args.serve:
        p.error("--case cremad has only the plain step: pass --plain")
    if args.serve:
        pin_thread_pools(os.environ, args.threads)
        run_serve(args)
    elif args.arm is None:
        run_parent(args)
    else:
        run_child(args)


if __name__ == "__main__":
    main()
