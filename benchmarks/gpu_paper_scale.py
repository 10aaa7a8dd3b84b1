"""The paper's scale on one GPU in 9 minutes: full-width VGG16, AlexNet and ResNet50 trained on the
CIFAR-10 copy, protected (none, Ranger, Clip-Act at the profiled max, FitAct with its bound-only
post-training) and put through paired fault campaigns per bit and per word.

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_paper_scale.py --pack .gpu/cifar10_jpeg.npz --out $OUT --budget-s 540

(one command may run 600 s on the lent machine: the budget leaves ~60 s for start-up and the
fixed costs no budget shrinks (one epoch at least, Lightning's start for post-training). On the
same warm machine, `--models resnet50` (or any subset) resumes from the checkpoints in .gpu_ckpt/.)

(carry `.gpu`: the pack, and `.gpu/site` with omegaconf/antlr4 for a machine without them; both made
by `python benchmarks/pack_cifar_copy.py --site .gpu/site`.) CPU check at tiny scale (width 0.0625, 1
epoch on 2,000 images, 2 rates, 4 maps x 200 images):

    python benchmarks/gpu_paper_scale.py --pack .gpu/cifar10_jpeg.npz --out /tmp/gpu_tiny --tiny

Everything goes to --out as it happens (a timeout still leaves what was done): results.jsonl (one
JSON object a line: "data", "train", "clean", "protect", "campaign", "paired", "skip", "done"
records), log.txt. Checkpoints go to --ckpt (default .gpu_ckpt/, outside the carried folder): a
rerun loads finished models and resumes unfinished ones. The script keeps its own time budget: each
phase gets a share of the time left, training stops early and campaigns shrink (maps, then images)
to fit, so it ends before --budget-s with its results written. Campaigns run in float32 without
TF32 (evaluate.float32_inference) through run_campaign with the plain (non-fused) bounded
activations; maps depend on (seed, trial, tensor name) only, so the protections are paired.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _site_path(pack: Path) -> None:
    """Put the carried omegaconf/antlr4 (pack_cifar_copy.py --site) on the path if they are missing."""
    try:
        import omegaconf  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(pack.parent / "site"))


PROTECTIONS = ("none", "ranger", "clipact", "fitact")
UNITS = ("bit", "word")
RATES = (1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5)
# name, epoch cap, peak lr, share of the time for training, share for campaigns (ResNet50 costs most)
MODELS = (("vgg16", 15, 0.1, 0.15, 0.12), ("alexnet", 15, 0.05, 0.06, 0.07), ("resnet50", 10, 0.1, 0.26, 0.20))
SLACK_SHARE = 0.14  # profiling, post-training, folding, evaluation
MIN_MODEL_SHARE = 0.08  # a model starts only with this share of the budget left
MAP_OVERHEAD_S = 0.025  # a map's fixed cost besides its pass: draw, flip, copy the images, restore


class Run:
    """The output folder, the clock and the records."""

    def __init__(self, out: Path, budget_s: float):
        self.out, self.budget_s, self.t0 = out, budget_s, time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        self._log = open(out / "log.txt", "a")
        self._jsonl = open(out / "results.jsonl", "a")

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def log(self, msg: str) -> None:
        line = f"[{self.elapsed():7.1f} s] {msg}"
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def emit(self, kind: str, **record) -> None:
        self._jsonl.write(json.dumps({"kind": kind, "t_s": round(self.elapsed(), 2), **record}, default=float) + "\n")
        self._jsonl.flush()


class Shares:
    """Each phase gets its share of the time left among the phases not done yet, so time one phase
    leaves over goes to the later ones."""

    def __init__(self, shares: dict[str, float]):
        self.pending = dict(shares)

    def take(self, phase: str, left: float) -> float:
        share = self.pending.pop(phase)
        return max(0.0, left * share / (share + sum(self.pending.values())))


def setup(a, run: Run):
    from fast_train import DeviceData, channel_stats, load_pack

    t = time.perf_counter()
    data = load_pack(a.pack, workers=a.workers, per_split=(2000, 1000) if a.tiny else None, seed=a.seed)
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    gen = torch.Generator().manual_seed(a.seed)
    perm = torch.randperm(len(ytr), generator=gen)
    n_val = max(10, min(2000, len(ytr) // 10))
    val, tr = perm[:n_val], perm[n_val:]  # validation split: post-training's accuracy constraint
    mean, std = channel_stats(xtr[tr])
    dev = torch.device(a.device)
    sets = {"train": DeviceData(xtr[tr], ytr[tr], mean, std, dev), "val": DeviceData(xtr[val], ytr[val], mean, std, dev),
            "test": DeviceData(xte, yte, mean, std, dev)}
    run.emit("data", decode_s=time.perf_counter() - t, train=len(tr), val=len(val), test=len(yte),
             classes=data["classes"], mean=mean.tolist(), std=std.tolist(), device=str(dev),
             gpu=torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, torch=torch.__version__)
    run.log(f"data: {len(tr)} train, {len(val)} val, {len(yte)} test images decoded in {time.perf_counter() - t:.1f} s")
    return sets


class Batches:
    """A fixed list of (x, y) batches as a loader (Lightning reads a plain list as several loaders)."""

    def __init__(self, batches: list):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class PosttrainData:
    """What posttrain_bounds reads from a data module: fixed augmented training batches and the
    validation batches, already on the device."""

    def __init__(self, train, val, batches: int, batch_size: int, seed: int):
        gen = torch.Generator(device=train.device).manual_seed(seed)
        self.train = Batches([train.augmented(torch.randint(0, len(train), (batch_size,), device=train.device,
                                                            generator=gen), gen) for _ in range(batches)])
        self.val = Batches(list(val.batches(1000)))

    def setup(self, stage=None):
        pass

    def train_dataloader(self):
        return self.train

    def val_dataloader(self):
        return self.val


def protect_all(base, sets, a, run: Run, name: str) -> dict:
    """The four protected models (folded, float32, contiguous), FitAct post-trained."""
    from fitact_pipeline.evaluate import float32_inference
    from fitact_pipeline.protect import fold_batchnorm, profile_ranges, protect_model
    from fitact_pipeline.protect.posttrain import posttrain_bounds

    dev = sets["train"].device
    folded = fold_batchnorm(copy.deepcopy(base).float().to(memory_format=torch.contiguous_format).eval())
    t = time.perf_counter()
    n_prof = min(len(sets["train"]), 200 if a.tiny else 2000)
    with float32_inference(dev):
        maxima, _ = profile_ranges(folded, list(sets["train"].batches(500, torch.arange(n_prof, device=dev))), n_prof)
    val_acc = accuracy(folded, sets["val"])
    run.log(f"{name}: profiled on {n_prof} images in {time.perf_counter() - t:.1f} s; val acc {val_acc:.4f}")
    models = {}
    for prot in PROTECTIONS:
        t = time.perf_counter()
        m = protect_model(copy.deepcopy(folded), prot, profile=maxima).eval()
        info = {}
        if prot == "fitact":
            pdata = PosttrainData(sets["train"], sets["val"], 4 if a.tiny else 40, 64 if a.tiny else 256, a.seed + 2)
            cfg = {"epochs": 1 if a.tiny else 2, "max_batches_per_epoch": None, "progress_bar": False}
            out = posttrain_bounds(m, pdata, cfg, val_acc)
            info = {"posttrain_" + k: out[k] for k in ("time_s", "selected_epoch", "mean_bound_ratio", "clean_val_acc")}
        models[prot] = m.eval()
        run.emit("protect", model=name, protection=prot, time_s=time.perf_counter() - t, **info)
    return models


def accuracy(model, data) -> float:
    from fitact_pipeline.evaluate import correct_mask

    x, y = data.tensors()
    return float(correct_mask(model, x, y, 1000).float().mean())


def campaign_plan(model, x, y, budget_s: float, tiny: bool) -> tuple[int, int, float]:
    """(maps per rate, images per map, seconds per image evaluation) that fit the budget: 40 maps x
    2,000 images at most, fewer maps first, then 1,000 images, at least 4 maps."""
    from fitact_pipeline.evaluate import correct_mask

    n = min(200 if tiny else 2000, len(y))
    correct_mask(model, x[:n], y[:n], 1000)  # warm-up
    _sync(x.device)
    t = time.perf_counter()
    correct_mask(model, x[:n], y[:n], 1000)
    _sync(x.device)
    per_image = (time.perf_counter() - t) / n
    if tiny:
        return 4, n, per_image
    runs = len(PROTECTIONS) * len(UNITS) * len(RATES)
    for images in (n, min(1000, n)):
        maps = int(budget_s / (runs * (images * per_image + MAP_OVERHEAD_S)))
        if maps >= 20 or images <= 1000:
            return int(min(40, max(4, maps))), images, per_image
    return 4, min(1000, n), per_image


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_campaigns(models: dict, sets, a, run: Run, name: str, budget_s: float) -> None:
    from fitact_pipeline.faults import FaultInjector, run_campaign
    from fitact_pipeline.faults.sampler import BitFlips
    from fitact_pipeline.faults.units import RATE_UNITS
    from fitact_pipeline.stats import paired_difference

    rates = RATES[-2:] if a.tiny else RATES
    test = sets["test"]
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(a.seed + 3)).to(test.device)
    x_all, y_all = test.tensors(order)
    injectors = {p: FaultInjector(m, fmt="fixed", word_bits=32, frac_bits=16) for p, m in models.items()}  # stores Q15.16
    maps, images, per_image = campaign_plan(models["fitact"], x_all, y_all, budget_s, a.tiny)
    # the campaign's images stay on the host as a job's do (correct_mask moves each batch; pinned,
    # the copy costs ~2 ms a map), so the campaign runs the pipeline's own code path
    x, y = x_all[:images].cpu(), y_all[:images].cpu()
    if x_all.is_cuda:
        x, y = x.pin_memory(), y.pin_memory()
    run.log(f"{name}: campaigns of {maps} maps x {images} images per rate ({per_image * 1e6:.1f} us/image), "
            f"budget {budget_s:.0f} s")
    per_map_s = images * per_image + MAP_OVERHEAD_S
    for unit in UNITS:
        trials = {}
        for prot, m in models.items():
            # the whole script's deadline: fewer maps for this campaign (the first k maps are the
            # same maps in every protection, so pairs stay pairs), or none
            fit = int((run.left() - 10) / (len(rates) * per_map_s))
            if min(maps, fit) < 2:
                run.emit("skip", model=name, protection=prot, unit=unit, reason="time budget")
                run.log(f"{name}: {prot} per {unit} skipped (time budget)")
                continue
            inj = injectors[prot]
            inj.sampler = BitFlips(RATE_UNITS[unit])
            t = time.perf_counter()
            res = run_campaign(m, inj, x, y, list(rates), min(maps, fit), a.seed, 1000, progress=False)
            took = time.perf_counter() - t
            trials[prot] = {r: [tr["accuracy"] for tr in res.trials if tr["rate"] == r] for r in rates}
            faults = {r: float(np.mean([tr["faults"] for tr in res.trials if tr["rate"] == r])) for r in rates}
            run.emit("campaign", model=name, protection=prot, unit=unit, clean_accuracy=res.clean_accuracy,
                     maps=min(maps, fit), images=images, time_s=took, num_bits=inj.num_bits, mean_faults=faults,
                     per_rate={str(r): s for r, s in res.per_rate.items()}, trials={str(r): v for r, v in trials[prot].items()})
            run.log(f"{name} {prot:8s} per {unit}: clean {res.clean_accuracy:.4f}; " + ", ".join(
                f"{r:.0e}: {res.per_rate[r]['mean']:.3f}±{res.per_rate[r]['ci_halfwidth']:.3f}" for r in rates)
                + f" ({took:.1f} s)")
        for pa, pb in (("fitact", "clipact"), ("fitact", "none"), ("clipact", "none"), ("ranger", "none")):
            if pa in trials and pb in trials:
                k = {r: min(len(trials[pa][r]), len(trials[pb][r])) for r in rates}  # trial i: one map in both
                run.emit("paired", model=name, unit=unit, a=pa, b=pb,
                         per_rate={str(r): paired_difference(trials[pa][r][:k[r]], trials[pb][r][:k[r]]) for r in rates})


def one_model(spec, sets, a, run: Run, shares: Shares) -> None:
    from fast_train import train
    from fitact_pipeline.models import build_model

    name, epochs, lr, _, _ = spec
    width = 0.0625 if a.tiny else 1.0
    torch.manual_seed(a.seed)
    model = build_model(name, 10, 3, width)
    budget = shares.take(f"train_{name}", run.left())
    ckpt = Path(a.ckpt) / f"{name}-w{width}-s{a.seed}{'-tiny' if a.tiny else ''}.pt"
    if run.left() < MIN_MODEL_SHARE * run.budget_s:  # not even one epoch and a campaign
        shares.take(f"campaign_{name}", run.left())
        run.emit("skip", model=name, reason="time budget", left_s=run.left())
        run.log(f"{name}: skipped, {run.left():.0f} s left (rerun with --models {name}: it resumes)")
        return
    info = train(model, sets["train"], epochs_max=1 if a.tiny else epochs, budget_s=budget,
                 batch_size=128 if a.tiny else 512, lr=lr, ckpt=ckpt, seed=a.seed,
                 autocast=sets["train"].device.type == "cuda", log=run.log)
    model = model.float().to(memory_format=torch.contiguous_format).eval()
    run.emit("train", model=name, width=width, params=sum(p.numel() for p in model.parameters()), budget_s=budget, **info)
    test_acc = accuracy(model, sets["test"])
    run.emit("clean", model=name, test_accuracy=test_acc, val_accuracy=accuracy(model, sets["val"]))
    run.log(f"{name}: trained {info['epochs_run']} epochs in {info['train_time_s']:.1f} s, test acc {test_acc:.4f}")
    models = protect_all(model, sets, a, run, name)
    run_campaigns(models, sets, a, run, name, shares.take(f"campaign_{name}", run.left()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pack", default=str(ROOT / ".gpu" / "cifar10_jpeg.npz"))
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_out")
    p.add_argument("--ckpt", default=str(ROOT / ".gpu_ckpt"))
    p.add_argument("--budget-s", type=float, default=540.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default=",".join(m[0] for m in MODELS))
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; --tiny: 1)")
    p.add_argument("--tiny", action="store_true", help="CPU check: width 0.0625, 1 epoch on 2,000 images, 2 rates, 4 maps x 200")
    a = p.parse_args(argv)
    run = Run(Path(a.out), a.budget_s)
    _site_path(Path(a.pack))
    torch.backends.cudnn.benchmark = True
    if a.threads or a.tiny:  # on a shared CPU, OpenMP threads spin-waiting on each other cost more than they give
        torch.set_num_threads(a.threads or 1)
    chosen = [m for m in MODELS if m[0] in a.models.split(",")]
    shares = Shares({**{f"train_{m[0]}": m[3] for m in chosen}, **{f"campaign_{m[0]}": m[4] for m in chosen},
                     "slack": SLACK_SHARE})
    run.log(f"start: {vars(a)}")
    sets = setup(a, run)
    for spec in chosen:
        try:
            one_model(spec, sets, a, run, shares)
        except Exception as exc:  # noqa: BLE001 - one model's failure must not lose the others' results
            run.emit("error", model=spec[0], error=repr(exc))
            run.log(f"{spec[0]}: FAILED {exc!r}")
            if a.tiny:
                raise
    run.emit("done", elapsed_s=run.elapsed())
    run.log(f"done in {run.elapsed():.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
