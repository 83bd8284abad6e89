#!/usr/bin/env python3
"""Check that agm weights load into the official PyTorch models unchanged (docs/checkpoints.md).

Loads `best.safetensors` or `checkpoint.safetensors` of an agm run (or any agm weights file) into
the official AGM model class of the run's preset with `load_state_dict(strict=True)`, checks that
every tensor arrived with the same values, and runs one forward pass in evaluation mode on random
inputs of the reference's shapes. The model classes are imported from the official tree given
with --reference (a checkout of lihong2303/AGM_ICCV2023, or `git archive HEAD | tar -x` of it);
nothing of theirs is copied here. Needs torch and safetensors (PyPI, CPU).

Usage:
  cargo xtask train --dataset synthetic --model avmnist-late --epochs 1 --out runs/pt-check
  python scripts/check_pytorch_load.py --reference DIR --model avmnist-late \
      --weights runs/pt-check/best.safetensors

Prints one line, `ok: <n> tensors ...`, and exits 0; any mismatch raises with the key named.
"""

import argparse
import os
import sys

# preset -> (official module, class, input shapes (batch 2) in forward order)
MODELS = {
    "avmnist-late": ("AVMNIST_net", "Later_Fusion_Resnet", [(2, 1, 112, 112), (2, 1, 28, 28)]),
    "avmnist-late-sum": ("AVMNIST_net", "Later_Fusion_Resnet_Sum", [(2, 1, 112, 112), (2, 1, 28, 28)]),
    "avmnist-early": ("AVMNIST_net", "Early_Fusion", [(2, 1, 112, 112), (2, 1, 28, 28)]),
    "cremad-late": ("CREMAD_net", "AVClassifier", [(2, 1, 257, 188), (2, 3, 1, 224, 224)]),
    "cremad-late-sum": ("CREMAD_net", "AVClassifier_Sum", [(2, 1, 257, 188), (2, 3, 1, 224, 224)]),
    "cremad-early": ("CREMAD_net", "AV_Early_Classifier", [(2, 1, 257, 188), (2, 3, 1, 224, 224)]),
    "avmnist-uni-audio": ("AVMNIST_net", "Audio_Classify_ResNet", [(2, 1, 112, 112)]),
    "avmnist-uni-visual": ("AVMNIST_net", "Visual_Classify_ResNet", [(2, 1, 28, 28)]),
    "cremad-uni-audio": ("CREMAD_net", "AClassify", [(2, 1, 257, 188)]),
    "cremad-uni-visual": ("CREMAD_net", "VClassify", [(2, 3, 1, 224, 224)]),
}


class Cfgs:
    """The config attributes the official model constructors read."""

    def __init__(self):
        self.modality = "Multimodal"
        self.mode = "train"
        self.methods = "Normal"
        self.use_mgpu = False
        self.fps = 1
        self.dataset = "CREMAD"
        self.fusion = "concat"


def agm_state(path):
    """The model tensors of an agm weights file: `model/<name>` keys of a checkpoint, else all."""
    from safetensors.torch import load_file

    tensors = load_file(path)
    model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    return model or tensors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="the official AGM tree")
    parser.add_argument("--weights", required=True, help="an agm .safetensors file")
    parser.add_argument("--model", required=True, choices=sorted(MODELS))
    args = parser.parse_args()
    reference = os.path.abspath(args.reference)
    if not os.path.isfile(os.path.join(reference, "model", "AVMNIST_net.py")):
        raise SystemExit(f"--reference {reference}: no model/AVMNIST_net.py there")
    sys.path.insert(0, reference)
    import importlib

    import torch

    module_name, class_name, shapes = MODELS[args.model]
    module = importlib.import_module(f"model.{module_name}")
    net = getattr(module, class_name)(Cfgs())
    state = agm_state(args.weights)
    net.load_state_dict(state, strict=True)  # raises naming every missing or unexpected key
    loaded = net.state_dict()
    for key, value in state.items():
        if not torch.equal(loaded[key].to(torch.float64), value.to(torch.float64)):
            raise SystemExit(f"{key}: values changed on loading")
    net.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        out = net(*[torch.rand(s) for s in shapes])
    logits = out[-1] if isinstance(out, (tuple, list)) else out  # the Sum models end with the sum
    if not torch.isfinite(logits).all():
        raise SystemExit("the forward pass gave non-finite logits")
    print(f"ok: {len(state)} tensors of {args.weights} load strictly into {module_name}.{class_name}; "
          f"logits {tuple(logits.shape)}")


if __name__ == "__main__":
    main()
