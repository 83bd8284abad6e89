"""A `train_steps` parity case (FORMAT v1 of the shared golden fixtures, kind `train_steps`,
method AGM) made by running the official AGM code.

Usage: python scripts/golden/agm_train_steps.py <AGM_ICCV2023 tree> <out dir> [--seed N]
       [--batch B] [--hidden H] [--classes C] [--epochs E] [--steps S] [--alpha A] [--lr LR]
       [--step-size EPOCHS] [--semantics avmnist|cremad|urfunny|mosei|ave] [--audio-shape 1,6,6] [--visual-shape 1,4,4]
       [--text-shape 5,7] [--window 0,100] [--network tiny|official] [--fusion late|early]
(PyTorch and safetensors from PyPI, CPU.) `--semantics urfunny` runs the UR-Funny loop instead:
three modalities, the coefficient clamp at 7, no probability floor, clipping at 5. The fixtures
in tests/fixtures/golden: `agm2_steplr` is `--seed 3 --lr 0.5 --alpha 4 --steps 4 --epochs 3
--step-size 1`; `agm3_steplr` is `--semantics urfunny --seed 202 --batch 4 --hidden 13 --classes 4
--lr 0.5 --alpha 5 --step-size 1 --text-shape 4,5`; `ogm_steplr` is `--method ogm-ge --conv-channels 2
--seed 301 --batch 4 --hidden 5 --classes 3 --lr 0.3 --alpha 2 --step-size 1 --audio-shape 2,5,5`;
`agm2_window` is `--seed 12 --epochs 3 --steps 2 --batch 4 --hidden 8 --classes 3 --window 2,2
--alpha 3 --lr 0.3` (`--window` sets the official modulation window, default 0,100);
`agm2_cremad` is `--semantics cremad --seed 43 --classes 6 --alpha 0.3 --lr 3 --epochs 2 --steps 5
--batch 4 --hidden 12` (`--semantics cremad` runs the CREMA-D loop: AV-MNIST's rules with the
clamp at 10, four passes).
`--network official` keeps the official inner network (AV-MNIST's `Later_Fusion_Resnet`, CREMA-D's
`AVClassifier`, UR-Funny's `Later_Fusion_Model`; AGM), sets its weights from `twin_models.py`'s
formula and writes `<out dir>.json` of summaries for `crates/agm-train/tests/twins.rs`:
`tests/fixtures/twin_steps/avmnist-late-agm` is `--network official --seed 3 --batch 4 --epochs 2
--steps 2 --alpha 2.5 --lr 0.05 --audio-shape 1,32,32 --visual-shape 1,28,28`; `cremad-late-agm` is
`--network official --semantics cremad --seed 5 --batch 4 --epochs 2 --steps 2 --alpha 1.5
--lr 0.01 --audio-shape 1,32,32 --visual-shape 3,1,16,16`, written as `cremad-late-agm-b4` (its
`case`) and renamed; `urfunny-late-agm` is `--network official --semantics urfunny --seed 11
--batch 4 --epochs 2 --steps 3 --alpha 2 --lr 0.003 --audio-shape 3,81 --visual-shape 3,371
--text-shape 3,300`. UR-Funny's transformers train with dropout, so the official run takes agm's
masks: every dropout site of its `nn.TransformerEncoderLayer`s (`dropout1`, `dropout`, `dropout2`
and the attention-weight dropout inside `nn.MultiheadAttention`) applies the mask of
`crates/agm-kernels/src/dropout.rs` for agm's seed of that site (`FusionModel::encoder_seed`, then
`mix_seed(·, 4·layer + site)`) and agm's element index (batch-first rows). The step's dropout seed
is the one agm's `Trainer` would pass (`seed · 0x9E3779B97F4A7C15 ^ global step`), recorded per
step (`dropout_seeds`). Only the full pass trains: GradMod runs the masked passes in evaluation
mode, as agm does. Its inputs are formula inputs (`twin_models.py`).
`--fusion early` (with `--network official`, AV-MNIST, CREMA-D and UR-Funny) runs the loop with
`fusion_type` `early_fusion`: the official `Early_Fusion`, `AV_Early_Classifier` or
`Early_Fusion_Model` in its `GradMod` (presets `avmnist-early`, `cremad-early`, `urfunny-early`),
whose masked passes zero a raw input and run the whole network in evaluation mode with gradients.
The MaxOut block's two training-mode dropouts (`maxout_sites`) take agm's masks, seeded
`FusionModel::fusion_seed` and one more (`maxout_seed`) and checked call by call as MOSEI's, beside
UR-Funny's transformer sites; the inputs are formula inputs.
`tests/fixtures/twin_steps/avmnist-early-agm` is `--network official --fusion early --seed 5 --batch
4 --epochs 2 --steps 2 --alpha 2.5 --lr 0.001 --audio-shape 1,64,64 --visual-shape 1,56,56` (the
clipping fires in step 2); `avmnist-early-agm-extreme` is `--network official --fusion early --seed
4 --batch 8 --epochs 3 --steps 2 --alpha 3 --lr 0.01 --audio-shape 1,64,64 --visual-shape 1,56,56`
(coefficients from 94.5 down to 4.2e-19 and exactly 0, the clipping in five steps);
`cremad-early-agm` is `--network official --fusion early --semantics
cremad --seed 5 --batch 4 --epochs 2 --steps 2 --alpha 1.5 --lr 0.0003 --audio-shape 1,64,64
--visual-shape 3,1,64,64` (it fires in steps 1 and 3); `urfunny-early-agm` is `--network official
--fusion early --semantics urfunny --seed 3 --batch 4 --epochs 2 --steps 3 --alpha 6 --lr 0.003
--audio-shape 3,81 --visual-shape 3,371 --text-shape 3,300` (it fires in steps 2, 4, 5 and 6).
`--semantics mosei` (with `--network official` only) runs `run/MOSEI_main.py:train` (Multimodal,
AGM) on the official `Model_LA` (`mosei-mat`: six MAT blocks, 60 tokens and 60 frames) in its
`GradMod`: two modalities (text, audio), floor 1e-8, no clamp, the loss summed over the batch
(`CrossEntropyLoss(reduction="sum")`, recorded as `loss_reduction`) and the clip condition as
written (`grad_max > 1.0 and grad_min < 1.0` on `net.proj.weight`). Its 82 training-mode dropout
sites take agm's masks in `MoseiMatNet`'s order (`mosei_sites`; site k's seed `mix_seed(step
seed, k)`, each tensor in its own row-major order), checked call by call. Its inputs are token ids
1..49 and formula frames with padded tails; the `LayerNorm` scales `a_2` take the norm-scale recipe.
`tests/fixtures/twin_steps/mosei-mat-agm` is `--network official --semantics mosei --seed 1
--batch 2 --epochs 2 --steps 2 --alpha 1 --lr 0.003` (the clipping fires in steps 1, 3 and 4).
`--semantics ave` (with `--network official` only) runs `run/AVE_main.py:train` (Multimodal, AGM)
on the official `psp_net` in its `GradMod` (`ave-psp`; `cfgs.threshold` 0.099, `cfgs.LAMBDA` 100):
labels per segment (`[B, 10]`, 28 = background; every other clip all background, the others one
event over a random span), the loss the mean cross-entropy over the segments plus 100 · AVPS, the
scores per segment, floor 1e-8, no clamp, no clipping. The loop reads a stub loader
(`FreshTargetLoader`): the formula inputs (audio `[B, 10, 128]`, visual `[B, 10, 7, 7, 512]`), the
one-hot labels, and the segment labels and AVPS target of the official `get_segment_wise_relation`
on fresh buffers per batch: the official loader's target buffer leaks across batches (quirk Q15,
a documented difference; agm's `avps_target` is fresh), so the case compares the loop and the
model. PSP's six training-mode dropout calls take agm's masks (`ave_sites`, checked call by call
as MOSEI's). A step's `loss` is the cross-entropy term (the loop's `loss` less the weighted AVPS
term, which a wrapper of `AVPSLoss` records as `avps_loss`), `loss_total` the loop's `loss`.
`tests/fixtures/twin_steps/ave-psp-agm` is `--network official --semantics ave --seed 3 --batch 2
--epochs 2 --steps 2 --alpha 1 --lr 0.01`.
`--method ogm-ge` runs OGM-GE as the shared `ogm` case did: the early-fusion wrapper (through
which the loop clips), convolution encoders (`--conv-channels`), and the Gaussian noise drawn as
exact zeros (its std recorded). With `--network official` it runs on the official `Early_Fusion`
(`--fusion early` only: it is where the loop's OGM-GE acts) and records each step's score sums,
whether it edited and the coefficients applied: `tests/fixtures/twin_steps/avmnist-early-ogm-ge`
is `--network official --fusion early --method ogm-ge --seed 3 --batch 4 --alpha 1 --epochs 2
--steps 2 --window 0,1 --lr 0.0003 --audio-shape 1,64,64 --visual-shape 1,56,56`.

Official repository lihong2303/AGM_ICCV2023. Official code that runs: `run/AVMNIST_main.py:train`,
`run/CREMAD_main.py:train`, `run/URFunny_main.py:train`, `run/MOSEI_main.py:train` or
`run/AVE_main.py:train` (the step loop: GradMod forward, the scores, ratios and coefficients,
`update_scale`, the hooked backward, the conditional clipping, the SGD step, StepLR at the epoch's
end) and `GradMod` of `model/AVMNIST_net.py`, `model/CREMAD_net.py` or `model/URFunny_net.py` (the
passes, the Shapley outputs, the backward hooks; `model/MOSEI_net.py`'s for MOSEI,
`model/AVE_net.py`'s and `get_segment_wise_relation` of `dataloader/AVE_loader.py` for AVE).
Swaps, as the shared fixtures made them: the inner network is the tiny one of FORMAT.md §1.3
(Flatten, Linear, BatchNorm1d, ReLU per modality; concatenation; `head.fc`), everything runs in
float64 (the loop's `.float()` casts return float64), and the modules the loop imports but this
case never calls (TensorBoard, scikit-learn, the dataset task) are stubs. The recorded values are
read around the official calls: the passes and Shapley outputs by forward hooks, the gradients
after `loss.backward()` and at `optimizer.step()`, the clipping by wrapping `clip_grad_norm_`;
the scores, ratios and running scores are recomputed from the recorded outputs with FORMAT.md
§1.5's formulas, and the coefficients in effect are the wrapper's own `scale_a`, `scale_v` (`scale_t`).
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

# What differs between the official loops (FORMAT.md §1.5, §1.7; CREMA-D's as the reference's
# `run/CREMAD_main.py` has it: AV-MNIST's rules with the clamp at 10).
SEMANTICS = {
    "avmnist": {
        "name": "AV-MNIST", "mods": ["audio", "visual"], "net": ("AVMNIST_net", "Later_Fusion_Resnet"),
        "main": "AVMNIST_main", "task": ("tasks.AVMNIST_task", "AVMNIST_Task"), "clamp": None, "floor": 1e-8,
        "clip": 1.0, "shapes": {"audio": "1,6,6", "visual": "1,4,4"},
        # Pass order of GradMod.forward: T, then visual muted, then audio muted.
        "passes": ["keep_av", "keep_a", "keep_v"],
    },
    "cremad": {
        "name": "CREMA-D", "mods": ["audio", "visual"], "net": ("CREMAD_net", "AVClassifier"),
        "main": "CREMAD_main", "task": ("tasks.CREMAD_task", "Cramed_Task"), "clamp": 10.0, "floor": 1e-8,
        "clip": 1.0, "shapes": {"audio": "1,6,6", "visual": "1,4,4"},
        # T, visual muted, audio muted, then both muted (computed, never used).
        "passes": ["keep_av", "keep_a", "keep_v", "keep_none"],
    },
    "urfunny": {
        "name": "UR-Funny", "mods": ["audio", "visual", "text"], "net": ("URFunny_net", "Later_Fusion_Model"),
        "main": "URFunny_main", "task": ("tasks.URFunny_task", "Funny_Task"), "clamp": 7.0, "floor": None,
        "clip": 5.0, "shapes": {"audio": "1,6,6", "visual": "1,4,4", "text": "5,7"},
        # T, then audio, visual, text muted, then visual+audio, visual+text, audio+text, all muted.
        "passes": ["keep_avt", "keep_vt", "keep_at", "keep_av", "keep_t", "keep_a", "keep_v", "keep_none"],
    },
    "mosei": {
        "name": "CMU-MOSEI", "mods": ["text", "audio"], "net": ("MOSEI_net", "Model_LA"),
        "main": "MOSEI_main", "task": ("tasks.MOSEI_task", "Mosei_Task"), "clamp": None, "floor": 1e-8,
        "clip": 1.0, "shapes": {"text": "60", "audio": "60,80"},
        # T, then text muted, audio muted, both muted (computed, never used).
        "passes": ["keep_ta", "keep_a", "keep_t", "keep_none"],
    },
    "ave": {
        "name": "AVE", "mods": ["audio", "visual"], "net": ("AVE_net", "psp_net"),
        "main": "AVE_main", "task": ("tasks.AVE_task", "AVE_task"), "clamp": None, "floor": 1e-8,
        "clip": None, "shapes": {"audio": "10,128", "visual": "10,7,7,512"},
        # T, visual muted, audio muted, both muted (computed, never used).
        "passes": ["keep_av", "keep_a", "keep_v", "keep_none"],
    },
}


# `--fusion early`: the official early-fusion network of each loop that has one here.
EARLY_NETS = {"avmnist": "Early_Fusion", "cremad": "AV_Early_Classifier", "urfunny": "Early_Fusion_Model"}


class TensorsNotKept(dict):
    """The tensor record of a twin fixture, which keeps summaries instead: writes are dropped."""

    def __setitem__(self, key, value):
        pass


def stub_modules(sem):
    stub("torch.utils.tensorboard", SummaryWriter=object)
    # AVE's loop imports `accuracy_score` (for accuracies it logs) and its loader h5py.
    metrics = stub("sklearn.metrics", accuracy_score=lambda *_: 0.0)
    stub("sklearn", linear_model=stub("sklearn.linear_model"), metrics=metrics)
    stub("h5py")
    stub(sem["task"][0], **{sem["task"][1]: object})


class Tiny(nn.Module):
    """FORMAT.md §1.3 without conv, with the official inner network's interface: AV-MNIST's
    `(audio, visual, pad_audio, pad_visual)` or UR-Funny's `(vision, audio, text, lengths,
    pad_audio, pad_visual, pad_text)`."""

    def __init__(self, mods, shapes, hidden, classes, conv):
        super().__init__()
        self.mods, self.mode = mods, "classify"
        for m, shape in zip(mods, shapes):
            if conv:
                # FORMAT.md §1.3 with conv: a 3x3 convolution (4-D weight, which OGM-GE edits) first.
                flat = conv * (shape[1] - 2) * (shape[2] - 2)
                layers = [nn.Conv2d(shape[0], conv, 3), nn.ReLU(), nn.Flatten(), nn.Linear(flat, hidden)]
            else:
                layers = [nn.Flatten(), nn.Linear(math.prod(shape), hidden)]
            enc = nn.Sequential(*layers, nn.BatchNorm1d(hidden), nn.ReLU())
            setattr(self, f"{m}_encoder", enc)
        self.head = nn.Module()
        self.head.fc = nn.Linear(hidden * len(mods), classes)
        # CREMA-D's loop clips on `net.fusion_module.fc_out`: the same layer (its parameters are
        # listed once, under `head.fc`).
        self.fusion_module = nn.Module()
        self.fusion_module.fc_out = self.head.fc

    def forward(self, *args, pad_audio=False, pad_visual=False, pad_text=False):
        if len(self.mods) == 2:
            inputs = {"audio": args[0], "visual": args[1]}
        else:
            inputs = {"visual": args[0], "audio": args[1], "text": args[2]}
        muted = {"audio": pad_audio, "visual": pad_visual, "text": pad_text}
        feature = torch.cat(
            [getattr(self, f"{m}_encoder")(torch.zeros_like(inputs[m]) if muted[m] else inputs[m]) for m in self.mods],
            dim=1,
        )
        out = self.head.fc(feature)
        return (out, feature) if self.mode == "feature" else out


U64 = (1 << 64) - 1
# agm's `Trainer` derives each step's dropout seed from the run seed and the global step.
TRAINER_SEED_FACTOR = 0x9E3779B97F4A7C15
# `TransformerConfig::urfunny`: eight layers, four dropout sites each (attention weights, after
# attention, inside and after the feed-forward block), in agm's order of `mix_seed` indices.
AGM_LAYERS, AGM_SITES = 8, {"attention": 0, "dropout1": 1, "dropout": 2, "dropout2": 3}


def mix_seed(seed, index):
    """agm_kernels::mix_seed (SplitMix64's output function): Python ints, or numpy uint64 arrays
    of indices (numpy wraps them modulo 2^64 as Rust's wrapping ops do)."""
    if isinstance(index, np.ndarray):
        seed, c = np.uint64(seed), [np.uint64(v) for v in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)]
        z = seed ^ ((index + np.uint64(1)) * c[0])
        z = (z ^ (z >> np.uint64(30))) * c[1]
        z = (z ^ (z >> np.uint64(27))) * c[2]
        return z ^ (z >> np.uint64(31))
    z = seed ^ (((index + 1) * 0x9E3779B97F4A7C15) & U64)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & U64
    return z ^ (z >> 31)


def agm_mask(seed, shape, p):
    """agm's dropout factors (0 or 1/(1-p)) for a tensor of `shape` in agm's layout, element i
    dropped when the 53-bit draw of mix_seed(seed, i) is below p (`dropout.rs`: `dropped`)."""
    z = mix_seed(seed, np.arange(math.prod(shape), dtype=np.uint64))
    dropped = (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)) < p
    return torch.from_numpy(np.where(dropped, 0.0, 1.0 / (1.0 - p))).reshape(shape)


class AgmMasks:
    """Puts agm's dropout masks into the official UR-Funny network: each `nn.Dropout` of its
    transformer layers becomes an `AgmDropout`, and the attention-weight dropout inside
    `nn.MultiheadAttention` (which reaches `F.scaled_dot_product_attention` with `dropout_p`) runs
    through `attention`. Any other dropout fails the run, so the sites correspond one to one."""

    def __init__(self, net, mods):
        self.step_seed = None
        self.attention_seed = None
        sites = 0
        for m, mod in enumerate(mods):
            layers = getattr(net, f"{mod}_encoder").transformer.layers
            assert len(layers) == AGM_LAYERS, f"{mod}: {len(layers)} layers, agm's preset has {AGM_LAYERS}"
            for i, layer in enumerate(layers):
                for name in ["dropout1", "dropout", "dropout2"]:
                    assert type(getattr(layer, name)) is nn.Dropout
                    setattr(layer, name, AgmDropout(self, m, i, AGM_SITES[name], getattr(layer, name).p))
                assert layer.self_attn.dropout == getattr(layer, "dropout1").p and not layer.self_attn.batch_first
                layer.self_attn.register_forward_pre_hook(
                    lambda module, args, m=m, i=i: setattr(self, "attention_seed", (m, i)))
                sites += 4
        left = [n for n, x in net.named_modules() if isinstance(x, nn.Dropout)]
        assert not left and sites == len(mods) * AGM_LAYERS * len(AGM_SITES), left

    def site_seed(self, m, layer, site):
        """`FusionModel::encoder_seed`, then `Transformer::forward_parts`'s per-layer seeds."""
        encoder_seed = (self.step_seed * 31 + m) & U64
        return mix_seed(encoder_seed, 4 * layer + site)

    def attention(self, original, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        """Training-mode attention as agm computes it (`transformer.rs`: `attention`); the
        weights `[B, heads, L, L]` are already in agm's layout."""
        if dropout_p == 0.0:
            return original(q, k, v, attn_mask, dropout_p, is_causal, **kwargs)
        assert attn_mask is None and not is_causal and not kwargs and self.attention_seed is not None
        scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
        weights = torch.softmax(scores, dim=-1)
        mask = agm_mask(self.site_seed(*self.attention_seed, AGM_SITES["attention"]), tuple(weights.shape), dropout_p)
        self.attention_seed = None
        return (weights * mask) @ v


class AgmDropout(nn.Module):
    """One `nn.Dropout` of a sequence-first transformer layer (`[L, B, W]`) with agm's mask, whose
    element index is the batch-first row's (`[B·L, W]`)."""

    def __init__(self, masks, m, layer, site, p):
        super().__init__()
        self.masks, self.m, self.layer, self.site, self.p = masks, m, layer, site, p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        L, B, W = x.shape
        mask = agm_mask(self.masks.site_seed(self.m, self.layer, self.site), (B, L, W), self.p)
        return x * mask.permute(1, 0, 2)


def mosei_sites(layers):
    """agm's dropout sites of `MoseiMatNet` (`mosei.rs`: one `DropoutSites` counter per pass), in
    its order, by the official module each one stands for (`Block.dropout` serves two)."""
    sites = []
    for i in range(layers):
        b = f"enc_list.{i}."
        sites += [b + "sa1.mhatt.dropout", b + "sa1.dropout1", b + "sa1.ffn.mlp.fc.dropout", b + "sa1.dropout2"]
        sites += [b + "sa3.mhatt1.dropout", b + "sa3.dropout1", b + "sa3.mhatt2.dropout", b + "sa3.dropout2",
                  b + "sa3.ffn.mlp.fc.dropout", b + "sa3.dropout3"]
        if i + 1 < layers:
            sites += [b + "att_lang.mlp.fc.dropout", b + "att_audio.mlp.fc.dropout", b + "dropout", b + "dropout"]
    return sites + ["attflat_lang.mlp.fc.dropout", "attflat_img.mlp.fc.dropout"]


def maxout_sites():
    """agm's dropout sites of the early-fusion `MaxOut_MLP` (`maxout.rs`): after `module1`'s and
    `module2`'s batch norms."""
    return ["mm_encoder.module1.1", "mm_encoder.module2.1"]


def maxout_seed(mods):
    """agm's seed of MaxOut site k: `FusionModel::fusion_seed` (the encoder seed of index M), plus k."""
    return lambda step_seed, k: (step_seed * 31 + len(mods) + k) & U64


def ave_sites():
    """agm's dropout sites of `AvePspNet` (`ave.rs`: `Psp::forward`), in its order: PSP's one
    `nn.Dropout` after `v_L1`, `v_L2`, `a_L1`, `a_L2`, then `v_fc`, `a_fc`."""
    return ["psp.dropout"] * 6


class OrderedSiteMasks:
    """Puts agm's dropout masks into an official network whose dropout sites agm counts per pass
    (`DropoutSites`: MOSEI's `Model_LA`, AVE's `psp_net`; the early-fusion MaxOut's two sites):
    every `nn.Dropout` becomes a
    `OrderedSiteDropout`, and a training-mode pass must call them in agm's site order (`sites`:
    `mosei_sites`, `ave_sites`), site k taking the mask of `mix_seed(step seed, k)` over its own
    row-major layout. Any other order or count fails the run, so the sites correspond one to one."""

    def __init__(self, net, sites, site_seed=None, only=True):
        self.step_seed, self.calls = None, None
        self.sites = sites
        # Site k's seed from the step's; `mix_seed(step seed, k)` unless the model seeds otherwise.
        self.site_seed = site_seed or mix_seed
        modules = dict(net.named_modules())
        for name in sorted(set(self.sites)):
            parent, _, attr = name.rpartition(".")
            owner = modules[parent] if parent else net
            assert type(getattr(owner, attr)) is nn.Dropout, name
            setattr(owner, attr, OrderedSiteDropout(self, name, getattr(owner, attr).p))
        left = [n for n, x in net.named_modules() if isinstance(x, nn.Dropout)]
        # Unless masks replaced after these check what is left (`only` False).
        assert not only or not left, f"dropout modules agm has no site for: {left}"
        net.register_forward_pre_hook(lambda module, args: setattr(self, "calls", []))
        net.register_forward_hook(lambda module, args, out: self.check_pass(module.training))

    def check_pass(self, training):
        assert self.calls == (self.sites if training else []), "the official pass's dropout sites differ from agm's"

    def mask(self, name, shape, p):
        k = len(self.calls)
        assert k < len(self.sites) and self.sites[k] == name, f"site {k}: official {name}, agm {self.sites[k:k + 1]}"
        self.calls.append(name)
        return agm_mask(self.site_seed(self.step_seed, k), shape, p)


class OrderedSiteDropout(nn.Module):
    """One dropout site of an `OrderedSiteMasks` network with agm's mask for its tensor in its
    logical shape."""

    def __init__(self, masks, name, p):
        super().__init__()
        self.masks, self.name, self.p = masks, name, p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        return x * self.masks.mask(self.name, tuple(x.shape), self.p)


class FreshTargetLoader:
    """The official AVE loader's interface (`__len__`, `get_batch`) over this case's batches in
    order (no shuffling): audio, visual, one-hot labels `[B, 10, 29]`, and the segment labels and
    AVPS target of the official `get_segment_wise_relation` run on fresh zero buffers for each
    batch. The official loader never clears its target buffer (quirk Q15, a documented difference:
    agm's `avps_target` is built fresh), so this compares the loop and the model, not that leak."""

    def __init__(self, dataset_class, batches):
        self.dataset_class, self.batches = dataset_class, batches

    def __len__(self):
        return sum(len(y) for _, y in self.batches)

    def get_batch(self, idx, shuffle_samples=False):
        x, y = self.batches[idx]
        B, S = y.shape
        one_hot = np.zeros((B, S, 29))
        one_hot[np.arange(B)[:, None], np.arange(S)[None, :], y.numpy()] = 1.0
        # float64 buffers: the target's 1/count exact, as agm's.
        fresh = object.__new__(self.dataset_class)
        fresh.segment_label_batch, fresh.segment_avps_gt_batch = np.zeros((B, S)), np.zeros((B, S))
        fresh.get_segment_wise_relation(one_hot)
        segment_labels = torch.from_numpy(fresh.segment_label_batch).long()
        assert torch.equal(segment_labels, y)
        return (x["audio"], x["visual"], torch.from_numpy(one_hot).float(), segment_labels,
                torch.from_numpy(fresh.segment_avps_gt_batch).float())


def no_other_dropout(x, p=0.5, training=True, inplace=False):
    """`F.dropout` while the masks are agm's: a training-mode dropout that `AgmMasks` missed."""
    assert not training or p == 0.0, "a dropout site that AgmMasks does not replace"
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tree")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=2.5)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--step-size", type=int, default=70)
    ap.add_argument("--semantics", choices=sorted(SEMANTICS), default="avmnist")
    ap.add_argument("--method", choices=["agm", "ogm-ge"], default="agm")
    ap.add_argument("--conv-channels", type=int, default=0)
    ap.add_argument("--window", default="0,100", help="cfgs.modulation_starts,modulation_ends")
    ap.add_argument("--fusion", choices=["late", "early"], default="late",
                    help="early: the official early-fusion network (with --network official)")
    ap.add_argument("--network", choices=["tiny", "official"], default="tiny",
                    help="official: the official inner network, weights from twin_models.py's formula; "
                         "writes <out>.json, a twin-steps fixture of summaries")
    for m in ["audio", "visual", "text"]:
        ap.add_argument(f"--{m}-shape")
    a = ap.parse_args()
    sem = SEMANTICS[a.semantics]
    window = [int(v) for v in a.window.split(",")]
    mods = sem["mods"]
    M = len(mods)

    sys.path.insert(0, a.tree)
    stub_modules(sem)
    net_module = importlib.import_module(f"model.{sem['net'][0]}")
    official = importlib.import_module(f"run.{sem['main']}")

    torch.manual_seed(a.seed)
    shapes = [tuple(int(v) for v in (getattr(a, f"{m}_shape") or sem["shapes"][m]).split(",")) for m in mods]
    B, H, C, E, S = a.batch, a.hidden, a.classes, a.epochs, a.steps
    ogm = a.method == "ogm-ge"
    if ogm and a.semantics != "avmnist":
        sys.exit("OGM-GE runs in the AV-MNIST loop only")
    twin = a.network == "official"
    early = a.fusion == "early"
    if twin and ogm and not early:
        sys.exit("--network official runs OGM-GE on the early-fusion network only (--fusion early)")
    if twin:
        C = {"cremad": 6, "urfunny": 2, "mosei": 2, "ave": 29}.get(a.semantics, 10)  # the official heads
    if early and (not twin or a.semantics not in EARLY_NETS):
        sys.exit(f"--fusion early runs the official early-fusion networks only ({', '.join(EARLY_NETS)})")
    # UR-Funny's and MOSEI's transformers and the early-fusion MaxOut block train with dropout:
    # the official run takes agm's masks.
    agm_dropout = twin and (a.semantics in ("urfunny", "mosei", "ave") or early)
    mosei = a.semantics == "mosei"
    if mosei and not twin:
        sys.exit("--semantics mosei runs the official network only (--network official)")
    ave = a.semantics == "ave"
    if ave and not twin:
        sys.exit("--semantics ave runs the official network only (--network official)")
    # OGM-GE clips only through the early-fusion wrapper (FORMAT.md §1.7), so its case uses it.
    if ogm:
        fusion, net_class = "early_fusion", "Early_Fusion"
    elif early:
        fusion, net_class = "early_fusion", EARLY_NETS[a.semantics]
    else:
        fusion, net_class = "late_fusion", sem["net"][1]
    if not twin:
        setattr(net_module, net_class, lambda cfgs: Tiny(mods, shapes, H, C, a.conv_channels))
    cfgs = types.SimpleNamespace(
        mode="train", fusion_type=fusion, modality="Multimodal", methods="OGM-GE" if ogm else "AGM",
        alpha=a.alpha, modulation_starts=window[0], modulation_ends=window[1], use_mgpu=False, EPOCHS=E,
        learning_rate=a.lr, dataset="CREMAD" if a.semantics == "cremad" else None, fusion="concat", fps=1,
    )
    if mosei:
        from twin_models import MOSEI_VOCAB, MoseiArgs

        # `Model_LA` reads its sizes from the same namespace (`MoseiMatConfig::paper`'s); its
        # GloVe matrix is overwritten by the formula weights below.
        vars(cfgs).update({k: v for k, v in vars(MoseiArgs).items() if not k.startswith("_")})
        model = net_module.GradMod(cfgs, MOSEI_VOCAB, np.zeros((MOSEI_VOCAB, MoseiArgs.word_embed_size))).double()
    elif ave:
        # `AVE_Config`'s PSP threshold and AVPS weight; the loop reads the batch size for its
        # step count. The LSTMs' zero states are made in the default dtype.
        vars(cfgs).update(threshold=0.099, LAMBDA=100, batch_size=B)
        torch.set_default_dtype(torch.float64)
        model = net_module.GradMod(cfgs).double()
    else:
        model = net_module.GradMod(cfgs).double()
    masks = None
    # Masks whose step seed is set beside `masks`' (UR-Funny's early-fusion MaxOut block).
    more_masks = []
    if twin:
        from twin_models import formula, mixed, set_formula_weights, summary

        recipe = set_formula_weights(model.net)
        if mosei:
            # The MAT's `LayerNorm` scales are named `a_2`, which twin_models.py's recipe takes for
            # biases (in [-1/8, 1/8)); as norm scales they keep the features at unit size, so that
            # the head gradient can pass the clip threshold at a small batch.
            variables = dict(model.net.named_parameters())
            for entry in recipe:
                if entry["name"].endswith(".a_2"):
                    entry.update(offset=1.0, shift=2)
                    variables[entry["name"]].data.copy_(formula(math.prod(entry["shape"]), entry["seed"], 1.0, 2))
            masks = OrderedSiteMasks(model.net, mosei_sites(MoseiArgs.layer))
        elif ave:
            masks = OrderedSiteMasks(model.net, ave_sites())
        elif early and a.semantics in ("avmnist", "cremad"):
            masks = OrderedSiteMasks(model.net, maxout_sites(), maxout_seed(mods))
        elif agm_dropout:
            if early:
                # The MaxOut block's dropouts first, so that `AgmMasks` finds only the transformers'.
                more_masks.append(OrderedSiteMasks(model.net, maxout_sites(), maxout_seed(mods), only=False))
            masks = AgmMasks(model.net, mods)
    else:
        # Random running statistics, as the shared fixtures start from.
        for m in mods:
            bn = getattr(model.net, f"{m}_encoder")[-2]
            bn.running_mean.copy_(torch.randn(H, dtype=torch.float64) * 0.3)
            bn.running_var.copy_(torch.rand(H, dtype=torch.float64) + 0.5)
    named = dict(model.named_parameters())
    buffers = {n: b for n, b in model.named_buffers()}
    # The layer the loop's clipping reads (CREMA-D's official model names it `fusion_module.fc_out`).
    heads = ["net.head.fc.weight", "net.fusion_module.fc_out.weight", "net.proj.weight", "net.L2.weight"]
    head_name = next(n for n in heads if n in named)
    # A twin fixture keeps summaries only: no copies of every tensor at every step (UR-Funny's
    # network holds a gigabyte in float64), only the head gradient the clipping reads.
    tensors = TensorsNotKept() if twin else {}
    watched = {head_name: named[head_name]} if twin else named
    if not twin:
        tensors.update({f"init/params/{n}": p.detach().clone() for n, p in named.items()})
        tensors.update({f"init/buffers/{n}": b.detach().clone() for n, b in buffers.items()})

    optimizer = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=a.step_size, gamma=0.1)

    # Batches: values exactly representable in float32; labels in [0, C).
    batches, formula_inputs = [], []
    for k in range(E * S):
        if mosei:
            # Token ids 1..49 and formula frames (twin_models.py), each sample ending in padding of
            # its own length (some none), so that the masks take part.
            recipes = [{"shape": list(s), "seed": 20_000 + 10 * k + j} for j, s in enumerate(shapes)]
            recipes[0].update(vocab=MOSEI_VOCAB, zero_tail=[5 + 11 * ((k + b) % 4) for b in range(B)])
            recipes[1]["zero_tail"] = [(13 * k + 29 * b) % 50 for b in range(B)]
            xs = []
            for s, r in zip(shapes, recipes):
                n = B * math.prod(s)
                if "vocab" in r:
                    v = (1 + mixed(n, r["seed"]) % (r["vocab"] - 1)).double()
                else:
                    v = formula(n, r["seed"], 0.0, 0)
                x = v.reshape((B,) + s)
                for b, zeros in enumerate(r["zero_tail"]):
                    if zeros:
                        x[b, -zeros:] = 0
                xs.append(x)
            formula_inputs.append(recipes)
        elif agm_dropout:
            # Formula inputs (twin_models.py), in [-1, 1): the fixture stores their recipes.
            recipes = [{"shape": list(s), "seed": 20_000 + 10 * k + j} for j, s in enumerate(shapes)]
            xs = [formula(B * math.prod(s), r["seed"], 0.0, 0).reshape((B,) + s) for s, r in zip(shapes, recipes)]
            formula_inputs.append(recipes)
        else:
            xs = [(torch.randn((B,) + s) * 2).float().double() for s in shapes]
        if ave:
            # Segment labels [B, 10]: odd clips (counting across batches) all background (28),
            # the others an event of one class over a random span, background elsewhere.
            y = torch.full((B, 10), 28)
            for b in range(B):
                if (k * B + b) % 2 == 0:
                    start = int(torch.randint(0, 10, ()))
                    y[b, start:start + int(torch.randint(1, 11, ()))] = int(torch.randint(0, 28, ()))
            batches.append((dict(zip(mods, xs)), y))
            continue
        batches.append((dict(zip(mods, xs)), torch.randint(0, C, (B,))))

    rec = {"passes": [], "m": {}, "clip": None}

    def net_pass(module, inputs, out):
        # The first pass (feature mode) also returns the fused feature.
        if isinstance(out, tuple):
            out, rec["feature"] = out
        rec["passes"].append(out)

    model.net.register_forward_hook(net_pass)
    for m in mods:
        hook = getattr(model, f"m_{m[0]}_o")
        hook.register_forward_hook(lambda module, inputs, out, m=m: rec["m"].__setitem__(m, out))

    steps, state = [], {"k": 0, "running": {m: 0.0 for m in mods}}
    float_of_tensor = torch.Tensor.float
    torch.Tensor.float = lambda self: self.double()  # the loop's casts keep float64
    original_backward = torch.Tensor.backward
    original_clip = nn.utils.clip_grad_norm_

    def backward(self, *args, **kwargs):
        original_backward(self, *args, **kwargs)
        rec["loss"] = self.item()
        rec["grad_backward"] = {n: p.grad.detach().clone() for n, p in watched.items()}

    def clip(params, max_norm, **kwargs):
        rec["modulated"] = {n: p.grad.detach().clone() for n, p in watched.items()}
        total = original_clip(params, max_norm, **kwargs)
        rec["clip"] = total.item()
        return total

    def record_step(epoch, step_in_epoch):
        k = state["k"] = state["k"] + 1
        inputs, label = batches[k - 1]
        p = f"step{k}/"
        for m in mods:
            tensors[p + f"input/{m}"] = inputs[m]
        tensors[p + "label"] = label.clone()
        passes = rec["passes"][-len(sem["passes"]):]
        for name, t in zip(sem["passes"], passes):
            tensors[p + f"pass/{name}"] = t.detach().clone()
        if "feature" in rec:  # MOSEI's GradMod never asks for the feature
            tensors[p + "feature"] = rec["feature"].detach().clone()
        for m in mods:
            tensors[p + f"m/{m}"] = rec["m"][m].detach().clone()
            if M == 3:
                tensors[p + f"m_mc/{m}"] = (rec["m"][m] - passes[-1] / 3).detach().clone()
        tensors[p + "out"] = sum(rec["m"][m] for m in mods).detach().clone()
        scores, below = {}, {}
        # One row per label: per segment for AVE (its outputs are [B, 10, 29]).
        rows = label.reshape(-1)
        for m in mods:
            logits = rec["m"][m].detach().reshape(len(rows), -1)
            probs = torch.softmax(logits, dim=1)[torch.arange(len(rows)), rows]
            below[m] = int((probs < 1e-8).sum())
            floored = probs if sem["floor"] is None else torch.where(probs < sem["floor"], sem["floor"], probs)
            scores[m] = float((-torch.log(floored)).mean())
        before = dict(state["running"])
        factor = M / (M - 1)
        mean_s, mean_r = sum(scores.values()) / M, sum(before.values()) / M
        ratio = {m: math.exp(factor * (mean_s - scores[m])) for m in mods}
        opt = {m: math.exp(factor * (mean_r - before[m])) for m in mods}
        state["running"] = {m: before[m] * (k - 1) / k + scores[m] / k for m in mods}
        clamp = sem["clamp"] if sem["clamp"] is not None else math.inf
        coeff = {m: math.exp(a.alpha * min(opt[m] - ratio[m], clamp)) for m in mods}
        in_effect = {m: float(getattr(model, f"scale_{m[0]}")) for m in mods}
        head = rec["grad_backward"][head_name]
        for n, g in rec["grad_backward"].items():
            tensors[p + f"grad_backward/{n}"] = g
        names = sem["passes"]
        steps.append({
            "step": k, "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": k,
            "lr": optimizer.param_groups[0]["lr"], "loss": rec["loss"],
            "passes": [
                {"order": i, "name": n, "train_mode": i == 0, "net_mode": "feature" if i == 0 else "classify"}
                for i, n in enumerate(names)
            ],
            "scores": scores, "label_prob_below_1e-8_count": below, "running_score_before": before,
            "ratio": ratio, "opt_ratio": opt, "opt_ratio_minus_ratio": {m: opt[m] - ratio[m] for m in mods},
            "coeff": coeff, "running_score_after": dict(state["running"]), "hook_scale_in_effect": in_effect,
            "head_grad_max": float(head.max()), "head_grad_min": float(head.min()), "clip_threshold": sem["clip"],
            "clip_fired": rec["clip"] is not None, "clip_total_norm": rec["clip"],
        })
        if ogm:
            # FORMAT.md §1.8, from the recorded outputs; the gradients are the official edit's.
            sums = {m: float(torch.softmax(rec["m"][m].detach(), dim=1)[torch.arange(B), label].sum()) for m in mods}
            r = sums["visual"] / sums["audio"]
            k_ogm = {"audio": 1.0, "visual": 1 - math.tanh(a.alpha * r)} if r > 1 else {
                "audio": 1 - math.tanh(a.alpha / r), "visual": 1.0}
            # The official loop draws noise for each gradient it edits; none outside the window.
            stds = rec.pop("noise_std", [])
            edited = [n for n, prm in named.items() if n.split(".")[1].endswith("_encoder") and prm.dim() == 4]
            edited = edited if stds else []
            steps[-1]["ogm"] = {
                "score_sum": sums, "ratio_v_over_a": r, "ratio_a_over_v": 1 / r, "coeff": k_ogm,
                # The std each edited gradient's noise would have had (the official loop's order).
                "noise_std_that_official_would_use": dict(zip(edited, stds)),
                "modulated_params": edited,
            }
            for n, g in rec.get("modulated", {}).items():
                tensors[p + f"grad_modulated/{n}"] = g.clone()
        if "avps" in rec:
            steps[-1]["avps_loss"] = rec.pop("avps")
        if sem["clamp"] is not None:
            steps[-1]["clamp_fired"] = {m: opt[m] - ratio[m] > sem["clamp"] for m in mods}
        if rec["clip"] is not None:
            # What clip_grad_norm_ multiplied by, only when it fired.
            steps[-1]["clip_coef"] = sem["clip"] / (rec["clip"] + 1e-6)
        rec["clip"] = None

    original_step = optimizer.step

    def sgd_step(*args, **kwargs):
        epoch, step_in_epoch = state["epoch"], len(steps) - (state["epoch"] - 1) * S
        grads = {n: p.grad.detach().clone() for n, p in watched.items()}
        rec.setdefault("modulated", grads)
        record_step(epoch, step_in_epoch)
        rec.pop("modulated")
        k = state["k"]
        for n, g in grads.items():
            tensors[f"step{k}/grad_final/{n}"] = g
        result = original_step(*args, **kwargs)
        if twin:
            return result
        for n, prm in named.items():
            tensors[f"step{k}/params_after/{n}"] = prm.detach().clone()
            tensors[f"step{k}/momentum_after/{n}"] = optimizer.state[prm]["momentum_buffer"].detach().clone()
        for n, b in buffers.items():
            tensors[f"step{k}/buffers_after/{n}"] = b.detach().clone()
        return result

    torch.Tensor.backward = backward
    nn.utils.clip_grad_norm_ = clip
    # OGM-GE's Gaussian noise on the edited gradients draws exact zeros (FORMAT.md §1.8).
    original_normal = torch.Tensor.normal_
    def zero_noise(self, mean=0.0, std=1.0, **kwargs):
        rec.setdefault("noise_std", []).append(std)
        return self.zero_()

    torch.Tensor.normal_ = zero_noise
    optimizer.step = sgd_step
    original_attention, original_dropout = nn.functional.scaled_dot_product_attention, nn.functional.dropout
    dropout_seeds = []
    if masks is not None:
        if isinstance(masks, AgmMasks):
            # `F.multi_head_attention_forward` calls the module's global `scaled_dot_product_attention`.
            nn.functional.scaled_dot_product_attention = lambda *args, **kwargs: masks.attention(
                original_attention, *args, **kwargs)
        nn.functional.dropout = no_other_dropout

        def step_seed(module, args):
            # GradMod runs once per step: agm's `Trainer` seed for the global step before it.
            masks.step_seed = ((a.seed * TRAINER_SEED_FACTOR) & U64) ^ len(dropout_seeds)
            for more in more_masks:
                more.step_seed = masks.step_seed
            dropout_seeds.append(masks.step_seed)

        model.register_forward_pre_hook(step_seed)
    original_avps = getattr(official, "AVPSLoss", None)
    if ave:
        from dataloader.AVE_loader import AVE_Fully_Dataset as dataset_class

        def avps(av_simm, soft_label):
            # The AVPS term as the loop weighs it (`cfgs.LAMBDA * loss_avps`).
            loss = original_avps(av_simm, soft_label)
            rec["avps"] = cfgs.LAMBDA * loss.item()
            return loss

        official.AVPSLoss = avps
    logger = types.SimpleNamespace(info=lambda *_: None)
    writer = types.SimpleNamespace(add_scalar=lambda *_: None, add_scalars=lambda *_: None)
    running = {m: 0.0 for m in mods}
    epoch_end = []
    try:
        for epoch in range(1, E + 1):
            state["epoch"] = epoch
            epoch_batches = batches[(epoch - 1) * S:epoch * S]
            if mosei:
                # Its loader yields (id, text ids, audio frames, video (unused here), label).
                loader = [(None, x["text"], x["audio"], torch.zeros(B), y) for x, y in epoch_batches]
                last = official.train(model, loader, optimizer, scheduler, cfgs, "cpu", logger, epoch, writer,
                                      running["text"], running["audio"])
                running = dict(zip(mods, last))
            elif ave:
                loader = FreshTargetLoader(dataset_class, epoch_batches)
                last = official.train(model, loader, optimizer, scheduler, logger, cfgs, epoch, "cpu", writer,
                                      running["audio"], running["visual"])
                running = dict(zip(mods, last))
            elif a.semantics == "cremad":
                # Its loader yields (item, spectrogram without channel, image, label).
                loader = [(None, x["audio"].squeeze(1), x["visual"], y) for x, y in epoch_batches]
                last = official.train(model, loader, optimizer, scheduler, logger, cfgs, epoch, "cpu", writer,
                                      running["audio"], running["visual"], 1.0, 1.0)
                running = dict(zip(mods, last))
            elif M == 2:
                loader = [(x["audio"], x["visual"], y) for x, y in epoch_batches]
                last = official.train(model, loader, optimizer, scheduler, epoch, cfgs, "cpu", writer, logger,
                                      running["audio"], running["visual"], 1.0, 1.0)
                running = dict(zip(mods, last))
            else:
                lengths = torch.zeros(B)
                loader = [([x["visual"], x["audio"], x["text"]], lengths, None, y[:, None]) for x, y in epoch_batches]
                v, a_, t = official.train(model, loader, optimizer, scheduler, cfgs, "cpu", logger, epoch, writer,
                                          running["visual"], running["audio"], running["text"], 1.0, 1.0, 1.0)
                running = {"audio": a_, "visual": v, "text": t}
            epoch_end.append({"epoch": epoch, "running_score": {m: float(running[m]) for m in mods}})
    finally:
        if ave:
            official.AVPSLoss = original_avps
        nn.functional.scaled_dot_product_attention, nn.functional.dropout = original_attention, original_dropout
        torch.Tensor.backward = original_backward
        torch.Tensor.float = float_of_tensor
        torch.Tensor.normal_ = original_normal
        nn.utils.clip_grad_norm_ = original_clip

    if twin:
        # Summaries, not tensors: the official network has 22 million parameters.
        strip = len("net.")
        case = {
            "case": os.path.basename(a.out), "kind": "twin_steps",
            "preset": "mosei-mat" if mosei else "ave-psp" if ave else f"{a.semantics}-{a.fusion}", "dtype": "float64",
            "official_reference": {"repo": "lihong2303/AGM_ICCV2023", "train_function": f"run/{sem['main']}.py:train",
                                   "model_wrapper": f"model/{sem['net'][0]}.py:GradMod", "net": net_class},
            "hyper": {"alpha": a.alpha, "lr": a.lr, "momentum": 0.9, "weight_decay": 1e-4,
                      "modulation_window_epochs": window},
            "tensors": recipe, "steps_per_epoch": S,
            "batches": [{"formula_inputs": formula_inputs[k], "labels": y.reshape(-1).tolist()} if formula_inputs else
                        {"inputs": [x[m].reshape(-1).tolist() for m in mods], "shapes": [list(x[m].shape) for m in mods],
                         "labels": y.tolist()} for k, (x, y) in enumerate(batches)],
            "steps": [{"loss": st["loss"], "coeff": st["coeff"], "hook_scale_in_effect": st["hook_scale_in_effect"],
                       "scores": st["scores"], "clip_fired": st["clip_fired"]} for st in steps],
            "after": {n[strip:]: summary(t) for n, t in list(model.named_parameters()) + list(model.named_buffers())
                      if not n.endswith("num_batches_tracked")},
        }
        if ogm:
            # OGM-GE's record (`late_sum_twin_steps.py`'s): the score sums, whether the loop
            # edited (inside the window), the coefficients applied (1 and 1 outside it).
            case["method"] = "OGM-GE"
            for st, record in zip(steps, case["steps"]):
                edited = bool(st["ogm"]["modulated_params"])
                record.update(score_sum=[st["ogm"]["score_sum"][m] for m in mods], edited=edited,
                              coeff=[st["ogm"]["coeff"][m] for m in mods] if edited else [1.0, 1.0],
                              noise_std_that_official_would_use=st["ogm"]["noise_std_that_official_would_use"])
        if masks is not None:
            # The step's dropout seed (agm's `train_step` argument), one per step.
            case["dropout_seeds"] = dropout_seeds
        if mosei:
            # `CrossEntropyLoss(reduction="sum")`: the steps' losses are sums over the batch.
            case["loss_reduction"] = "sum"
        if ave:
            # Labels per segment (sample-major), so each batch names its sample count. A step's
            # `loss` is the cross-entropy term (the loop's `loss` less the weighted AVPS term, as
            # agm reports it), `loss_total` the loop's `loss`, `avps_loss` = LAMBDA * AVPSLoss.
            for batch in case["batches"]:
                batch["samples"] = B
            for st, record in zip(steps, case["steps"]):
                record.update(loss=st["loss"] - st["avps_loss"], loss_total=st["loss"], avps_loss=st["avps_loss"])
        with open(a.out + ".json", "w") as f:
            json.dump(case, f, separators=(",", ":"))
        print(f"{a.out}.json: {len(steps)} steps, coefficients in effect {[st['hook_scale_in_effect'] for st in steps]}")
        return
    parameters = [{"name": n, "shape": list(prm.shape), "kind": "parameter"} for n, prm in named.items()]
    parameters += [
        {"name": n, "shape": list(b.shape), "kind": "buffer", "dtype": str(b.dtype).replace("torch.", "")}
        for n, b in buffers.items()
    ]
    case = {
        "case": os.path.basename(os.path.normpath(a.out)), "format_version": 1, "kind": "train_steps",
        "semantics": sem["name"], "dtype": "float64", "modalities": mods,
        "official_reference": {"repo": "lihong2303/AGM_ICCV2023", "train_function": f"run/{sem['main']}.py:train",
                               "model_wrapper": f"model/{sem['net'][0]}.py:GradMod"},
        "method": "OGM-GE" if ogm else "AGM",
        "hyper": {
            "alpha": a.alpha, "lr": a.lr, "momentum": 0.9, "weight_decay": 1e-4, "dampening": 0.0, "nesterov": False,
            "lr_schedule": {"kind": "StepLR", "step_size_epochs": a.step_size, "gamma": 0.1},
            "modulation_window_epochs": window, "coeff_clamp": sem["clamp"], "prob_floor": sem["floor"],
            "clip": {"threshold_on_head_weight_grad": sem["clip"], "max_norm": sem["clip"], "eps": 1e-6, "params": "all"},
            "ogm_alpha": a.alpha if ogm else None, "ogm_noise": "disabled (exactly zero)" if ogm else None,
        },
        "sizes": {"B": B, "C": C, "hidden": H, "epochs": E, "steps_per_epoch": S, "total_steps": E * S,
                  "input_shapes": {m: [B] + list(s) for m, s in zip(mods, shapes)}, "conv_channels": a.conv_channels},
        "network": {"encoder": "Flatten -> Linear(in, hidden) -> BatchNorm1d(hidden) -> ReLU",
                    "fusion": "concatenate in modality order -> head.fc"},
        "seed": a.seed, "parameters": parameters, "grad_stages": ["backward", "modulated", "final"] if ogm else ["backward", "final"], "steps": steps,
        "epoch_end": epoch_end,
    }
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(a.out, "tensors.safetensors"))
    fired = sum(s["clip_fired"] for s in steps)
    print(f"{a.out}: {len(steps)} steps, clipping fired {fired} times, last coefficients {steps[-1]['coeff']}")


if __name__ == "__main__":
    main()
