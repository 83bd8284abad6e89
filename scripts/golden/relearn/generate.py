"""Golden `method_steps` cases for agm's `relearn` method (Diagnosing & Re-learning).

Official reference: GeWu-Lab/Diagnosing_Relearning_ECCV2024, commit
025085ea82ed784c6ab6e5fb1b08bfe498dd0fc7 (Wei, Li, Feng, Hu, "Diagnosing and Re-learning for
Balanced Multimodal Learning", ECCV 2024).

Usage:
    python generate.py <extracted official repo> [<agm repository root>]
        [--name CASE --modalities 2|3 --seed N ...]  (one extra case; `--help`)

`<extracted official repo>` is the repository's tree (the folder holding `code/ours.py`), e.g.
`git --git-dir=<mirror> archive HEAD | tar x -C <folder>`. The fixtures are written
under `<agm root>/tests/fixtures/golden/relearn{,3}/` (default: three folders above this file).
Needs torch, numpy, scikit-learn and safetensors; runs on CPU in float64.

What runs
---------
Case `relearn` (M = 2, audio + visual): the official `code/ours.py:main()` itself, unmodified,
with `--train`: `train_epoch`, `valid`, `get_feature`, `reinit_score` (MinMaxScaler to [-1, 1],
k-means with `n_clusters = n_classes`, `purity_score`, `tanh(move_lambda * |P_train - P_val|)`)
and `reinit` (`theta <- w * theta_init + (1 - w) * theta` for every parameter of each encoder,
from the `init_para.pkl` that main() saves right after building the model). Only these pieces
are swapped (monkeypatched in the imported module):
  - `AVClassifier` -> the tiny network of the case format (modules `audio_net`/`visual_net` =
    Linear + ReLU, `head` = Linear over the concatenated features; forward returns
    `(out, None, None, a, v)` like the official model);
  - `AVDataset_CD` / `DataLoader` -> the fixed batches below, in stored order (no shuffling):
    `my_train` = the training split, `val` = the diagnosis split (agm: the held-out split),
    `test` = the split `valid()` reports on (agm: the validation split; it does not affect the
    method);
  - `optim.SGD` -> a subclass that records the parameters after every step;
  - `nn.CrossEntropyLoss` (inside the module) -> a subclass that records each training loss;
  - `KMeans` -> scikit-learn's KMeans with a DETERMINISTIC initialisation instead of
    k-means++ with `random_state=0` (see below), `n_init=1`;
  - CUDA calls are made no-ops (`.cuda()`, `.to(cuda)`), `Tensor.float()` keeps float64, and
    `DataParallel` is the CPU no-op wrapper torch gives without GPUs (parameter names
    `module.<name>`).
Case `relearn3` (M = 3, audio + visual + text): the official main() is written for two
modalities, so its epoch loop (train_epoch; then, when `epoch % reinit_epoch == 0 and epoch > 0`
and at most `reinit_num` times, diagnosis and re-initialisation) is re-written here, calling the
official `train_epoch`, `get_feature`, `reinit_score` and `reinit` on views of the tiny model:
`reinit_score` on (audio, visual) and on (text, text), `reinit` on the model (audio, visual) and
on a module whose `audio_net` IS the text encoder (same Parameter objects). The per-modality rule
is the official one; only its application to a third modality is ours.

K-means initialisation (the one deviation, recorded in the case)
---------------------------------------------------------------
The official `KMeans(n_clusters=n_classes, random_state=0)` uses scikit-learn's random k-means++
seeding, which agm cannot reproduce. Both here and in agm the initial centroids are the
deterministic farthest-first ("maximin") points of the scaled features: first the sample
farthest (squared Euclidean) from the feature mean, then repeatedly the sample whose squared
distance to its nearest chosen centroid is largest (ties: the lowest sample index). They are
given to scikit-learn's Lloyd k-means (`init=<array>`, `n_init=1`, max_iter 300, tol 1e-4), and
stored as `epochE/kmeans_init/<split>/<modality>` tensors (split `train` or `holdout`). The
script checks that no choice in the initialisation or in the final assignment is within 1e-9
of a tie, so the case does not depend on rounding.

Method variables: agm keeps the initial encoder parameters (the official `init_para.pkl`) as
variables of the method that never receive a gradient; the case lists them as
`relearn.init.<encoder parameter>` (role `method`), equal to the initial encoder parameters
before and after every step.

Versions used to write the stored fixtures: torch 2.15 (CPU), scikit-learn 1.9.1, numpy, float64.
Seeds (data and initial parameters): 26 for `relearn`, 30 for `relearn3`, chosen so that every
purity gap is non-zero and no k-means choice is near a tie.

Settings: SGD lr 1/8, momentum 0.9, weight decay 1e-4 (hard-coded in ours.py), move_lambda 3,
reinit_epoch 1, reinit_num 2, 4 epochs: re-initialisation after (1-based) epochs 2 and 3; epoch
4 is eligible but over the cap.
"""

import argparse
import copy
import importlib
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)

OFFICIAL_REPO = "GeWu-Lab/Diagnosing_Relearning_ECCV2024"
OFFICIAL_COMMIT = "025085ea82ed784c6ab6e5fb1b08bfe498dd0fc7"

B, S, C, H = 4, 3, 3, 4
N_HOLDOUT, N_TEST = 9, 8
EPOCHS = 4
LR = 0.125
MOMENTUM, WEIGHT_DECAY = 0.9, 1e-4
MOVE_LAMBDA, REINIT_EPOCH, REINIT_NUM = 3.0, 1, 2
DIMS = {"audio": 3, "visual": 5, "text": 4}
TIE_MARGIN = 1e-9


# ---------------------------------------------------------------- deterministic k-means init
def farthest_first(x, k):
    """Farthest-first centroids of `x` ([n, d] float64): see the module docstring."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    d0 = ((x - mean) ** 2).sum(axis=1)
    chosen = [_argmax_checked(d0, x)]
    nearest = ((x - x[chosen[0]]) ** 2).sum(axis=1)
    while len(chosen) < k:
        i = _argmax_checked(nearest, x)
        chosen.append(i)
        nearest = np.minimum(nearest, ((x - x[i]) ** 2).sum(axis=1))
    return x[chosen].copy(), chosen


def _argmax_checked(v, x):
    """Index of the largest `v` (lowest on ties); refuses a near tie between different points."""
    i = int(np.argmax(v))
    near = np.nonzero(v[i] - v < TIE_MARGIN)[0]
    if any(not np.array_equal(x[j], x[i]) for j in near):
        raise RuntimeError(f"farthest-first init has a near tie between different points at {v[i]}; change the seed")
    return i


KMEANS_LOG = []


class DeterministicKMeans:
    """Stands in for sklearn.cluster.KMeans(n_clusters, random_state=0) in ours.py."""

    def __init__(self, n_clusters, random_state=None, **kw):
        self.n_clusters = n_clusters

    def fit_predict(self, x):
        from sklearn.cluster import KMeans

        init, _ = farthest_first(x, self.n_clusters)
        km = KMeans(n_clusters=self.n_clusters, init=init, n_init=1)
        labels = km.fit_predict(x)
        # Margin of the final assignment (scikit-learn's labels are those of its final centres).
        d = ((np.asarray(x)[:, None, :] - km.cluster_centers_[None, :, :]) ** 2).sum(axis=2)
        srt = np.sort(d, axis=1)
        if srt.shape[1] > 1 and (srt[:, 1] - srt[:, 0]).min() < TIE_MARGIN:
            raise RuntimeError("k-means final assignment has a near tie; change the seed")
        assert (np.argmin(d, axis=1) == labels).all()
        KMEANS_LOG.append(init)
        return labels


# ---------------------------------------------------------------- tiny network and data
class Pack:
    """Several float64 inputs travelling as one argument through the official code."""

    def __init__(self, *xs):
        self.xs = xs

    def to(self, *a, **k):
        return self

    def float(self):
        return self


class Tiny(nn.Module):
    """Encoders `<m>_net` = Linear(d_m, H) + ReLU; `head` = Linear(H*M, C) over the concatenation."""

    def __init__(self, modalities):
        super().__init__()
        self.modalities = modalities
        for m in modalities:
            setattr(self, f"{m}_net", nn.Sequential(nn.Linear(DIMS[m], H), nn.ReLU()))
        self.head = nn.Linear(H * len(modalities), C)
        self.last_features = None

    def forward(self, spec, images):
        xs = list(spec.xs) if isinstance(spec, Pack) else [spec]
        xs.append(images)
        if len(self.modalities) == 3:  # spec = Pack(audio, text), images = visual
            xs = [xs[0], xs[2], xs[1]]
        feats = [getattr(self, f"{m}_net")(x) for m, x in zip(self.modalities, xs)]
        self.last_features = feats
        out = self.head(torch.cat(feats, 1))
        return out, None, None, feats[0], feats[1]


class FeatureView(nn.Module):
    """The model, returning the features of modalities (i, j) in the a, v slots (get_feature)."""

    def __init__(self, model, i, j):
        super().__init__()
        self.model, self.i, self.j = model, i, j

    def forward(self, spec, images):
        out = self.model(spec, images)[0]
        f = self.model.last_features
        return out, None, None, f[self.i], f[self.j]


def agm_name(official, modalities):
    name = official[len("module."):] if official.startswith("module.") else official
    for m in modalities:
        if name.startswith(f"{m}_net."):
            return "net." + name.replace(f"{m}_net.", f"{m}_encoder.", 1)
    if name.startswith("head."):
        return "net.head.fc." + name[len("head."):]
    raise KeyError(official)


def q64(t):
    return torch.round(t * 64) / 64


def make_data(modalities, seed):
    g = torch.Generator().manual_seed(seed)
    n = S * B

    def split(rows, label_seed):
        gl = torch.Generator().manual_seed(label_seed)
        labels = torch.randint(0, C, (rows,), generator=gl)
        xs = {}
        for k, m in enumerate(modalities):
            # class-dependent means of different strength per modality, plus noise
            means = q64(torch.randn(C, DIMS[m], generator=g) * (0.9 - 0.25 * k))
            xs[m] = q64(means[labels] + torch.rand(rows, DIMS[m], generator=g) * 2 - 1)
        return xs, labels

    train = split(n, seed + 1)
    holdout = split(N_HOLDOUT, seed + 2)
    test = split(N_TEST, seed + 3)
    return train, holdout, test


def init_params(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(q64(torch.rand(p.shape, generator=g) - 0.5))


def batches(split, modalities, bs):
    xs, labels = split
    n = labels.shape[0]
    out = []
    for s in range(0, n, bs):
        e = min(s + bs, n)
        a = xs["audio"][s:e]
        v = xs["visual"][s:e]
        if len(modalities) == 3:
            a = Pack(a, xs["text"][s:e])
        out.append((a, v, labels[s:e]))
    return out


# ---------------------------------------------------------------- recorders
class Recorder:
    def __init__(self):
        self.losses = []
        self.steps = []  # (params_after, grads)
        self.purities = []
        self.weights = []  # (epoch0, [w per call])
        self.epoch = None


REC = Recorder()


class RecordingCE(nn.CrossEntropyLoss):
    record = False

    def forward(self, input, target):
        loss = super().forward(input, target)
        if RecordingCE.record:
            REC.losses.append(float(loss))
        return loss


def recording_sgd(named):
    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            grads = {n: p.grad.detach().clone() for n, p in named() if p.grad is not None}
            out = super().step(closure)
            REC.steps.append(({n: p.detach().clone() for n, p in named()}, grads))
            return out

    return RecordingSGD


def patch_common(ours):
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    t_to, m_to = torch.Tensor.to, nn.Module.to

    def is_cuda(a, k):
        dev = k.get("device", a[0] if a else None)
        return (isinstance(dev, torch.device) and dev.type == "cuda") or (isinstance(dev, str) and dev.startswith("cuda"))

    torch.Tensor.to = lambda self, *a, **k: self if is_cuda(a, k) else t_to(self, *a, **k)
    nn.Module.to = lambda self, *a, **k: self if is_cuda(a, k) else m_to(self, *a, **k)
    t_float = torch.Tensor.float
    torch.Tensor.float = lambda self, *a, **k: self if self.dtype == torch.float64 else t_float(self, *a, **k)
    ours.KMeans = DeterministicKMeans
    ours.nn = types.SimpleNamespace(CrossEntropyLoss=RecordingCE)
    ours.tqdm = lambda it, *a, **k: it

    official_purity = ours.purity_score

    def purity(y_true, y_pred):
        p = official_purity(y_true, y_pred)
        REC.purities.append(float(p))
        return p

    ours.purity_score = purity
    official_train_epoch = ours.train_epoch

    def train_epoch(args, epoch, *a):
        REC.epoch = epoch
        RecordingCE.record = True
        try:
            return official_train_epoch(args, epoch, *a)
        finally:
            RecordingCE.record = False

    ours.train_epoch = train_epoch
    official_reinit_score = ours.reinit_score

    def reinit_score(*a):
        w = official_reinit_score(*a)
        REC.weights.append((REC.epoch, [float(x) for x in w]))
        return w

    ours.reinit_score = reinit_score


def import_official(repo):
    code = Path(repo) / "code"
    sys.path.insert(0, str(code))
    # ours.py imports the CREMA-D dataset module (torchaudio, torchvision, PIL); the dataset is
    # replaced, so a stand-in module is enough.
    sys.modules["dataset.av_dataset"] = types.SimpleNamespace(AVDataset_CD=None)
    sys.modules.setdefault("dataset", types.ModuleType("dataset"))
    return importlib.import_module("ours")


# ---------------------------------------------------------------- case writers
def reset_recorder():
    global REC
    REC.__init__()
    KMEANS_LOG.clear()


def run_m2(ours, modalities, seed):
    reset_recorder()
    train, holdout, test = make_data(modalities, seed)
    holder = {}

    def classifier(args):
        model = Tiny(modalities)
        init_params(model, seed + 10)
        holder["model"] = model
        holder["init"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return model

    splits = {"my_train": train, "val": holdout, "test": test}
    ours.AVClassifier = classifier
    ours.AVDataset_CD = lambda mode: splits[mode]
    ours.DataLoader = lambda ds, batch_size, **k: batches(ds, modalities, batch_size)
    ours.optim = types.SimpleNamespace(
        SGD=lambda params, **k: recording_sgd(lambda: holder["dp"].named_parameters())(params, **k)
    )
    dp_cls = nn.DataParallel

    def data_parallel(model, device_ids=None):
        dp = dp_cls(model, device_ids=device_ids)
        holder["dp"] = dp
        return dp

    ours.torch.nn.DataParallel = data_parallel
    argv = [
        "ours.py", "--dataset", "CREMAD", "--n_classes", str(C), "--batch_size", str(B),
        "--epochs", str(EPOCHS), "--optimizer", "sgd", "--learning_rate", str(LR),
        "--move_lambda", str(MOVE_LAMBDA), "--reinit_epoch", str(REINIT_EPOCH),
        "--reinit_num", str(REINIT_NUM), "--train", "--ckpt_path", "ckpt", "--gpu_ids", "",
    ]
    old_argv, old_cwd = sys.argv, os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        sys.argv = argv
        try:
            with open(os.devnull, "w") as devnull:
                saved = sys.stdout
                sys.stdout = devnull
                try:
                    ours.main()
                finally:
                    sys.stdout = saved
        finally:
            sys.argv = old_argv
            os.chdir(old_cwd)
    nn.DataParallel = dp_cls
    # purity_score call order inside reinit_score: train_a, val_a, train_v, val_v
    purities = [REC.purities[i : i + 4] for i in range(0, len(REC.purities), 4)]
    diag = []
    for (epoch0, w), p in zip(REC.weights, purities):
        diag.append({"epoch0": epoch0, "purity_train": [p[0], p[2]], "purity_holdout": [p[1], p[3]], "strength": w})
    return holder["init"], (train, holdout, test), diag, ["functions called: ours.main (unmodified)"]


def run_m3(ours, modalities, seed):
    """The official epoch loop of main(), re-written for three modalities (see docstring)."""
    reset_recorder()
    train, holdout, test = make_data(modalities, seed)
    model = Tiny(modalities)
    init_params(model, seed + 10)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    checkpoint = copy.deepcopy(init)
    args = types.SimpleNamespace(n_classes=C, move_lambda=MOVE_LAMBDA, reinit_epoch=REINIT_EPOCH, reinit_num=REINIT_NUM)
    device = torch.device("cpu")
    train_loader = batches(train, modalities, B)
    val_loader = batches(holdout, modalities, B)
    optimizer = recording_sgd(model.named_parameters)(
        model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    text_view = nn.Module()
    text_view.audio_net = model.text_net
    text_ckpt = {k.replace("text_net.", "audio_net.", 1): v for k, v in checkpoint.items() if k.startswith("text_net.")}
    diag = []
    flag_reinit = 0
    for epoch in range(EPOCHS):
        ours.train_epoch(args, epoch, model, device, train_loader, optimizer)
        if (epoch % args.reinit_epoch == 0) & (epoch > 0):
            flag_reinit += 1
            if flag_reinit <= args.reinit_num:
                n0 = len(REC.purities)
                ta, tv, tl = ours.get_feature(args, epoch, FeatureView(model, 0, 1), device, train_loader)
                va, vv, vl = ours.get_feature(args, epoch, FeatureView(model, 0, 1), device, val_loader)
                tt, _, _ = ours.get_feature(args, epoch, FeatureView(model, 2, 2), device, train_loader)
                vt, _, _ = ours.get_feature(args, epoch, FeatureView(model, 2, 2), device, val_loader)
                wa, wv = ours.reinit_score(args, ta, tv, tl, va, vv, vl)
                wt, _ = ours.reinit_score(args, tt, tt, tl, vt, vt, vl)
                p = REC.purities[n0:]
                # the second reinit_score clusters text twice (same input, same result); keep one
                del KMEANS_LOG[-2:]
                ours.reinit(args, model, checkpoint, wa, wv)
                ours.reinit(args, text_view, text_ckpt, wt, wt)
                diag.append({
                    "epoch0": epoch,
                    "purity_train": [p[0], p[2], p[4]],
                    "purity_holdout": [p[1], p[3], p[5]],
                    "strength": [float(wa), float(wv), float(wt)],
                })
    funcs = ["functions called: ours.train_epoch, ours.get_feature, ours.reinit_score (-> ours.purity_score), "
             "ours.reinit; the epoch loop of ours.main re-written for M = 3"]
    return init, (train, holdout, test), diag, funcs


def write_case(name, modalities, run, ours, seed, out_root):
    init, (train, holdout, test), diag, funcs = run(ours, modalities, seed)
    M = len(modalities)
    n_steps = EPOCHS * S
    assert len(REC.steps) == n_steps and len(REC.losses) == n_steps, (len(REC.steps), len(REC.losses))
    assert len(diag) == REINIT_NUM
    for d in diag:
        gaps = [abs(a - b) for a, b in zip(d["purity_train"], d["purity_holdout"])]
        if min(gaps) == 0:
            raise RuntimeError(f"{name}: a zero purity gap at epoch {d['epoch0'] + 1}; change the seed")
    tensors = {}
    params = []
    for official, v in init.items():
        an = agm_name(official, modalities)
        tensors[f"init/params/{an}"] = v.clone()
        m = next((mm for mm in modalities if f"{mm}_encoder." in an), None)
        params.append({"name": an, "shape": list(v.shape), "role": f"modality:{m}" if m else "shared"})
    # agm keeps the initial encoder parameters (the official init_para.pkl) as method variables
    # that never receive a gradient: listed with role "method", constant through every step.
    frozen = {}
    for official, v in init.items():
        an = agm_name(official, modalities)
        if "_encoder." in an:
            frozen[f"relearn.init.{an}"] = v.clone()
            tensors[f"init/params/relearn.init.{an}"] = v.clone()
            params.append({"name": f"relearn.init.{an}", "shape": list(v.shape), "role": "method"})
    for split, (xs, labels) in (("train", train), ("holdout", holdout), ("validation", test)):
        for m in modalities:
            tensors[f"{split}/input/{m}"] = xs[m].clone()
        tensors[f"{split}/label"] = labels.to(torch.int64).clone()
    for k, (after, grads) in enumerate(REC.steps, start=1):
        for official, v in after.items():
            tensors[f"step{k}/params_after/{agm_name(official, modalities)}"] = v.clone()
        for frozen_name, v in frozen.items():
            tensors[f"step{k}/params_after/{frozen_name}"] = v.clone()
        for official, v in grads.items():
            tensors[f"step{k}/grad_final/{agm_name(official, modalities)}"] = v.clone()
    # kmeans inits, in call order: per diagnosis, (train, holdout) per modality
    per = 2 * M
    assert len(KMEANS_LOG) == per * len(diag), (len(KMEANS_LOG), per, len(diag))
    for j, d in enumerate(diag):
        e = d["epoch0"] + 1
        for i, m in enumerate(modalities):
            tensors[f"epoch{e}/kmeans_init/train/{m}"] = torch.tensor(KMEANS_LOG[per * j + 2 * i])
            tensors[f"epoch{e}/kmeans_init/holdout/{m}"] = torch.tensor(KMEANS_LOG[per * j + 2 * i + 1])
    steps = []
    for k in range(n_steps):
        steps.append({"step": k + 1, "epoch": k // S + 1, "loss": REC.losses[k], "values": {}})
    epochs = []
    last = None
    for e in range(1, EPOCHS + 1):
        here = next((d for d in diag if d["epoch0"] + 1 == e), None)
        last = here or last
        values = {"reinits": sum(1 for d in diag if d["epoch0"] + 1 <= e)}
        if last is not None:
            values.update({k: last[k] for k in ("purity_train", "purity_holdout", "strength")})
            values["diagnosed_epoch"] = last["epoch0"] + 1
        epochs.append({"epoch": e, "values": values})
    case = {
        "case": name,
        "format_version": 1,
        "kind": "method_steps",
        "dtype": "float64",
        "official_reference": {
            "repo": OFFICIAL_REPO,
            "commit": OFFICIAL_COMMIT,
            "functions": funcs
            + [
                "code/ours.py: train_epoch, get_feature, reinit_score, purity_score, reinit",
                "sklearn.preprocessing.MinMaxScaler(feature_range=(-1, 1)), sklearn.cluster.KMeans (Lloyd)",
            ],
        },
        "semantics": (
            "Diagnosing & Re-learning. Plain cross-entropy steps (SGD). At the end of 0-based epoch e with "
            "e % reinit_epoch == 0 and e > 0, at most reinit_num times: for each modality, the encoder features "
            "(eval mode, full pass) of the training split and of the held-out split are each scaled by their own "
            "MinMaxScaler to [-1, 1] and clustered by k-means into n_classes clusters; purity = sum over clusters "
            "of the majority-label count / N; strength w = tanh(move_lambda * |P_train - P_holdout|); every "
            "encoder parameter theta <- w * theta_init + (1 - w) * theta (optimizer state kept). Deviation: the "
            "k-means initial centroids are the deterministic farthest-first points (first the sample farthest "
            "from the mean, then the sample farthest from its nearest chosen centroid; ties: lowest index) "
            "instead of k-means++ with random_state=0; recorded as epochE/kmeans_init/<split>/<modality>."
        ),
        "method": "relearn",
        "method_config": {"lambda": MOVE_LAMBDA, "reinit_every": REINIT_EPOCH, "max_reinits": REINIT_NUM},
        "modalities": modalities,
        "sizes": {
            "batch": B,
            "classes": C,
            "hidden": H,
            "input_dims": [DIMS[m] for m in modalities],
            "epochs": EPOCHS,
            "steps_per_epoch": S,
            "holdout_samples": N_HOLDOUT,
            "validation_samples": N_TEST,
        },
        "optimizer": {"kind": "sgd", "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
        "parameters": params,
        "steps": steps,
        "epochs": epochs,
    }
    out = Path(out_root) / "tests" / "fixtures" / "golden" / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "case.json").write_text(json.dumps(case, indent=1) + "\n")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "tensors.safetensors"))
    print(f"{name}: {n_steps} steps, diagnoses {json.dumps(diag)}")


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[3]))
    ap.add_argument("--name", default=None, help="write one extra case of this name")
    ap.add_argument("--modalities", type=int, default=2, choices=(2, 3))
    ap.add_argument("--seed", type=int, default=None)
    for k, v in (("batch", B), ("steps", S), ("classes", C), ("hidden", H), ("holdout", N_HOLDOUT),
                 ("test", N_TEST), ("epochs", EPOCHS), ("reinit_epoch", REINIT_EPOCH), ("reinit_num", REINIT_NUM)):
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=v)
    ap.add_argument("--lr", type=float, default=LR)
    ap.add_argument("--move-lambda", type=float, default=MOVE_LAMBDA)
    ap.add_argument("--dims", type=int, nargs=3, default=None, help="audio visual text")
    return ap.parse_args()


def main():
    global B, S, C, H, N_HOLDOUT, N_TEST, EPOCHS, LR, MOVE_LAMBDA, REINIT_EPOCH, REINIT_NUM, DIMS
    a = parse_args()
    repo, root = a.repo, a.root
    ours = import_official(repo)
    patch_common(ours)
    if a.name:
        B, S, C, H, N_HOLDOUT, N_TEST = a.batch, a.steps, a.classes, a.hidden, a.holdout, a.test
        EPOCHS, LR, MOVE_LAMBDA, REINIT_EPOCH, REINIT_NUM = a.epochs, a.lr, a.move_lambda, a.reinit_epoch, a.reinit_num
        if a.dims:
            DIMS = dict(zip(["audio", "visual", "text"], a.dims))
        mods = ["audio", "visual", "text"][:a.modalities]
        write_case(a.name, mods, run_m2 if a.modalities == 2 else run_m3, ours, a.seed or 0, root)
        return
    write_case("relearn", ["audio", "visual"], run_m2, ours, 26, root)
    write_case("relearn3", ["audio", "visual", "text"], run_m3, ours, 30, root)


if __name__ == "__main__":
    main()
