#!/usr/bin/env python3
"""Twin-model fixtures: the official model classes and agm's presets on the same weights.

For each paper preset, builds the official AGM model class (imported from the official tree, in
float64), sets every state-dict tensor from a formula that agm's test recomputes exactly, runs it
on formula inputs, and records what agm must reproduce:

* an evaluation-mode pass: logits, the mean cross-entropy, and every parameter's gradient;
* for presets without dropout, a training-mode pass (batch statistics) from the same start: the
  same records, every buffer after the pass (running statistics), and the logits of an
  evaluation pass that reads the updated running statistics.

Dropout masks come from each framework's own generator, so presets with dropout (the
transformers, the MaxOut fusion of the early presets, AVE's PSP net, MOSEI's MAT) are compared in
evaluation mode only. AVE's net is compared on its logits (the first of its two outputs); MOSEI's
inputs end in padding (token id 0, zero frames) so that its masks take part.
Gradients are summarised per tensor (sum, sum of squares, three entries) to keep the fixtures
small; logits are kept whole.

Element i of a tensor with seed s is `offset + v * 2^-shift`, v = ((h & 2047) - 1024) / 1024,
h = mix32(i + s * 0x9E3779B9 mod 2^32) (`mixed`): exact in float64 and float32 on both sides.
Token inputs are `1 + h mod (vocab - 1)`.

Usage (PyTorch CPU from PyPI, in a virtual environment outside the repository):
    python scripts/golden/twin_models.py --reference <official tree> --out tests/fixtures/twins
        [--presets avmnist-late,...]
"""

import argparse
import importlib
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from check_pytorch_load import Cfgs  # noqa: E402  (the config attributes the classes read)



def dense(*shape):
    return {"shape": list(shape)}


AV_MNIST = [dense(1, 32, 32), dense(1, 28, 28)]
CREMA_D = [dense(1, 32, 32), dense(3, 1, 32, 32)]
UR_FUNNY = [dense(5, 81), dense(5, 371), dense(5, 300)]  # agm's order: audio, visual, text
AVE = [dense(10, 128), dense(10, 7, 7, 512)]
# Token ids and audio frames padded at the end, as the loader pads (the model masks them).
MOSEI_VOCAB = 50
MOSEI = [
    {"shape": [60], "vocab": MOSEI_VOCAB, "zero_tail": [0, 7, 30, 59]},
    {"shape": [60, 80], "zero_tail": [0, 3, 41, 59]},
]


class MoseiArgs:
    """The reference's MOSEI configuration (binary sentiment), as `MoseiMatConfig::paper`."""

    word_embed_size, hidden_size, multi_head, ff_size, dropout_r, layer = 300, 512, 4, 1024, 0.1, 6
    lang_seq_len, audio_seq_len, audio_feat_size = 60, 60, 80
    task, task_binary = "sentiment", True


def build(module, class_name):
    cls = getattr(module, class_name)
    if class_name == "psp_net":
        return cls()
    if class_name == "Model_LA":
        return cls(MoseiArgs(), MOSEI_VOCAB, formula(MOSEI_VOCAB * 300, 1, 0.0, 0).reshape(MOSEI_VOCAB, 300).numpy())
    return cls(Cfgs())


# preset -> (official module, class, agm's inputs, official argument order, dropout, output index)
# The argument order lists agm input indices in the official forward's order; the output index
# picks the logits from a tuple (the Sum models end with the sum, AVE's net starts with them).
PRESETS = {
    "avmnist-late": ("AVMNIST_net", "Later_Fusion_Resnet", AV_MNIST, [0, 1], False, None),
    "avmnist-late-sum": ("AVMNIST_net", "Later_Fusion_Resnet_Sum", AV_MNIST, [0, 1], False, -1),
    "avmnist-early": ("AVMNIST_net", "Early_Fusion", AV_MNIST, [0, 1], True, None),
    "avmnist-uni-audio": ("AVMNIST_net", "Audio_Classify_ResNet", AV_MNIST[:1], [0], False, None),
    "avmnist-uni-visual": ("AVMNIST_net", "Visual_Classify_ResNet", AV_MNIST[1:], [0], False, None),
    "cremad-late": ("CREMAD_net", "AVClassifier", CREMA_D, [0, 1], False, None),
    "cremad-late-sum": ("CREMAD_net", "AVClassifier_Sum", CREMA_D, [0, 1], False, -1),
    "cremad-early": ("CREMAD_net", "AV_Early_Classifier", CREMA_D, [0, 1], True, None),
    "cremad-uni-audio": ("CREMAD_net", "AClassify", CREMA_D[:1], [0], False, None),
    "cremad-uni-visual": ("CREMAD_net", "VClassify", CREMA_D[1:], [0], False, None),
    "urfunny-late": ("URFunny_net", "Later_Fusion_Model", UR_FUNNY, [1, 0, 2], True, None),
    "urfunny-late-sum": ("URFunny_net", "Later_Fusion_Model_Sum", UR_FUNNY, [1, 0, 2], True, -1),
    "urfunny-early": ("URFunny_net", "Early_Fusion_Model", UR_FUNNY, [1, 0, 2], True, None),
    "urfunny-uni-audio": ("URFunny_net", "Audio_Transformer", UR_FUNNY[:1], [0], True, None),
    "urfunny-uni-visual": ("URFunny_net", "Visual_Transformer", UR_FUNNY[1:2], [0], True, None),
    "urfunny-uni-text": ("URFunny_net", "Text_Transformer", UR_FUNNY[2:], [0], True, None),
    "ave-psp": ("AVE_net", "psp_net", AVE, [0, 1], True, 0),
    "mosei-mat": ("MOSEI_net", "Model_LA", MOSEI, [0, 1], True, None),
}
BATCH = 4
GOLDEN = 0x9E3779B9
MASK = 0xFFFFFFFF


def mixed(numel, seed):
    """h of the module docstring for i in 0..numel, as int64."""
    h = (torch.arange(numel, dtype=torch.int64) + seed * GOLDEN) & MASK
    for _ in range(2):
        h = h ^ (h >> 16)
        h = (h * 0x045D9F3B) & MASK
    return h ^ (h >> 16)


def formula(numel, seed, offset, shift):
    """The fixture's values (module docstring) as a flat float64 tensor."""
    v = ((mixed(numel, seed) & 2047) - 1024).to(torch.float64) / 1024.0
    return offset + v * 2.0**-shift


def recipe(name, shape):
    """(offset, shift) for a state-dict tensor: about unit-variance activations in every layer."""
    if name.endswith("num_batches_tracked"):
        return None
    if name.endswith("running_var") or (len(shape) == 1 and name.endswith("weight")):
        return 1.0, 2  # norm scales and variances in [0.75, 1.25)
    if len(shape) == 1:
        return 0.0, 3  # biases and running means in [-1/8, 1/8)
    fan_in = math.prod(shape[1:])
    return 0.0, max(0, round(0.5 * math.log2(fan_in)) - 1)  # about 2/sqrt(fan_in)


def summary(t):
    flat = t.detach().reshape(-1).to(torch.float64)
    n = flat.numel()
    return {
        "sum": flat.sum().item(),
        "sumsq": (flat * flat).sum().item(),
        "at": [[i, flat[i].item()] for i in sorted({0, n // 2, n - 1})],
    }


def cross_entropy_pass(net, call, pick, labels, train):
    net.train(train)
    net.zero_grad(set_to_none=True)
    logits = logits_of(call(), pick)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    grads = {k: summary(p.grad) for k, p in net.named_parameters() if p.grad is not None}
    missing = [k for k, p in net.named_parameters() if p.grad is None]
    return {
        "train": train,
        "logits": logits.detach().tolist(),
        "loss": loss.item(),
        "grads": grads,
        "no_grad": missing,
    }


def input_tensor(spec):
    """An input batch: formula values (token ids 1..vocab-1 where `vocab` is set), with the last
    `zero_tail[b]` positions of sample b zero (padding)."""
    shape = [BATCH] + spec["shape"]
    numel = math.prod(shape)
    if "vocab" in spec:
        x = (1 + mixed(numel, spec["seed"]) % (spec["vocab"] - 1)).to(torch.float64).reshape(shape)
    else:
        x = formula(numel, spec["seed"], 0.0, 0).reshape(shape)
    for b, zeros in enumerate(spec.get("zero_tail", [])):
        if zeros:
            x[b, -zeros:] = 0
    return x


def logits_of(out, pick):
    logits = out[pick] if pick is not None else out
    return logits.reshape(-1, logits.shape[-1])


def set_formula_weights(net):
    """Sets every state-dict tensor of `net` from the formula; returns the fixture's recipe list."""
    tensors = []
    state = {}
    for seed, (name, t) in enumerate(net.state_dict().items(), start=1):
        shape = list(t.shape)
        r = recipe(name, shape)
        entry = {"name": name, "shape": shape}
        if r is None:
            state[name] = torch.zeros_like(t)
            entry["zero"] = True
        else:
            entry.update(seed=seed, offset=r[0], shift=r[1])
            state[name] = formula(t.numel(), seed, r[0], r[1]).reshape(shape).to(t.dtype)
        tensors.append(entry)
    net.load_state_dict(state, strict=True)
    return tensors


def case(reference_module, class_name, inputs, order, dropout, pick, preset):
    net = build(reference_module, class_name).double()
    tensors = set_formula_weights(net)
    for j, spec in enumerate(inputs):
        spec["seed"] = 10_000 + j
    tensors_in = [input_tensor(spec) for spec in inputs]
    args = [tensors_in[j] for j in order]
    extra = [[None] * 3] if preset.startswith("urfunny") else []  # feature_length: read, then unused

    def call():
        return net(*args, *extra)

    net.eval()  # the probe must not move the running statistics
    with torch.no_grad():
        probe = call()
    rows, classes = logits_of(probe, pick).shape
    labels = torch.arange(rows) % classes
    passes = [cross_entropy_pass(net, call, pick, labels, train=False)]
    if not dropout:
        train = cross_entropy_pass(net, call, pick, labels, train=True)
        train["buffers_after"] = {k: summary(b) for k, b in net.named_buffers() if not k.endswith("tracked")}
        net.eval()
        with torch.no_grad():
            out = call()
        train["eval_logits_after"] = logits_of(out, pick).tolist()
        passes.append(train)
    return {
        "case": preset,
        "preset": preset,
        "official_reference": {"repo": "lihong2303/AGM_ICCV2023", "class": f"model.{reference_module.__name__.split('.')[-1]}.{class_name}"},
        "dtype": "float64",
        "batch": BATCH,
        "inputs": inputs,
        "labels": labels.tolist(),
        "tensors": tensors,
        "passes": passes,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="the official AGM tree")
    parser.add_argument("--out", required=True, help="folder for <preset>.json")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets")
    args = parser.parse_args()
    reference = os.path.abspath(args.reference)
    if not os.path.isfile(os.path.join(reference, "model", "AVMNIST_net.py")):
        raise SystemExit(f"--reference {reference}: no model/AVMNIST_net.py there")
    sys.path.insert(0, reference)
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.set_default_dtype(torch.float64)  # tensors the official forwards create (LSTM states)
    for preset in args.presets.split(","):
        module_name, class_name, inputs, order, dropout, pick = PRESETS[preset]
        module = importlib.import_module(f"model.{module_name}")
        result = case(module, class_name, [dict(i) for i in inputs], order, dropout, pick, preset)
        path = os.path.join(args.out, f"{preset}.json")
        with open(path, "w") as f:
            json.dump(result, f, separators=(",", ":"))
        losses = ", ".join(f"{'train' if p['train'] else 'eval'} {p['loss']:.6f}" for p in result["passes"])
        print(f"{path}: {len(result['tensors'])} tensors, loss {losses}")


if __name__ == "__main__":
    main()
