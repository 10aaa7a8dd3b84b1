"""Fast baseline training for a GPU with a few minutes: the data decoded once from the JPEG pack
(benchmarks/pack_cifar_copy.py) into one uint8 tensor on the device, random crop (4-pixel zero
pad) and horizontal flip done on the device per batch, bf16 autocast and channels_last for
training only, SGD with Nesterov momentum and a OneCycle schedule whose length is chosen from the
measured step time so that training ends within its time budget. A checkpoint after every epoch
lets a rerun resume (a finished model is loaded, not trained again). Used by gpu_paper_scale.py.
"""
from __future__ import annotations

import io
import math
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

_PACK: dict = {}  # the pack's arrays, set before the decoding pool forks (copy-on-write)


def _decode(span: tuple[int, int]) -> np.ndarray:
    data, offsets, keep = _PACK["data"], _PACK["offsets"], _PACK["keep"]
    out = np.empty((span[1] - span[0], 32, 32, 3), dtype=np.uint8)
    for k, i in enumerate(keep[span[0]:span[1]]):
        with Image.open(io.BytesIO(data[offsets[i]:offsets[i + 1]].tobytes())) as im:
            out[k] = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return out


def load_pack(path: str | Path, workers: int = 16, per_split: tuple[int, int] | None = None, seed: int = 0) -> dict:
    """{"train": (uint8 N x 3 x 32 x 32, labels), "test": (...), "classes": [...]}, decoded with a
    process pool (fork: the workers read the pack without a copy). ``per_split``: decode only that
    many random (seeded) train and test images (the tiny check)."""
    with np.load(path) as z:
        data, offsets = z["data"], z["offsets"]
        labels, split, classes = z["labels"], z["split"], [str(c) for c in z["classes"]]
    keep = np.arange(len(labels))
    if per_split is not None:
        rng = np.random.default_rng(seed)
        keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(split == s))[:k] for s, k in enumerate(per_split)]))
    _PACK.update(data=data, offsets=offsets, keep=keep)
    labels, split = labels[keep], split[keep]
    n = len(keep)
    step = max(1, math.ceil(n / (workers * 4)))
    spans = [(a, min(n, a + step)) for a in range(0, n, step)]
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_decode, spans)
    else:
        parts = [_decode(s) for s in spans]
    _PACK.clear()
    images = torch.from_numpy(np.concatenate(parts)).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(labels.astype(np.int64))
    split = torch.from_numpy(split.astype(np.int64))
    return {"train": (images[split == 0], labels[split == 0]), "test": (images[split == 1], labels[split == 1]),
            "classes": classes}


class DeviceData:
    """Images kept as uint8 on the device; batches normalised to float32 there."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 device: torch.device):
        self.images, self.labels = images.to(device), labels.to(device)
        self.mean, self.std = mean.to(device).view(1, 3, 1, 1), std.to(device).view(1, 3, 1, 1)
        self.device = device

    def __len__(self) -> int:
        return len(self.labels)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std

    def tensors(self, index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float32 images and labels (all, or ``index``), no augmentation."""
        x, y = (self.images, self.labels) if index is None else (self.images[index], self.labels[index])
        return self.normalise(x), y

    def batches(self, batch_size: int, index: torch.Tensor | None = None):
        """Plain (x, y) batches in order, for evaluation, profiling and validation."""
        index = torch.arange(len(self), device=self.device) if index is None else index
        for a in range(0, len(index), batch_size):
            yield self.tensors(index[a:a + batch_size])

    def augmented(self, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random 32x32 crop of the 4-pixel zero-padded image and a random horizontal flip."""
        x = F.pad(self.images[index], (4, 4, 4, 4))
        b = len(index)
        off = torch.randint(0, 9, (2, b), device=self.device, generator=generator)
        r = torch.arange(32, device=self.device)
        rows = (off[0][:, None] + r)[:, None, :, None]
        cols = (off[1][:, None] + r)[:, None, None, :]
        x = x[torch.arange(b, device=self.device)[:, None, None, None], torch.arange(3, device=self.device)[None, :, None, None],
              rows, cols]
        flip = torch.rand(b, device=self.device, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return self.normalise(x), self.labels[index]


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = images.double() / 255.0
    return x.mean(dim=(0, 2, 3)).float(), x.std(dim=(0, 2, 3)).float()


def _step(model, opt, x, y, device, autocast: bool):
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    return loss


def time_step(model: nn.Module, data: DeviceData, batch_size: int, autocast: bool, steps: int = 6) -> float:
    """Seconds per training step (forward and backward, no update: the weights stay as built)."""
    gen = torch.Generator(device=data.device).manual_seed(12345)
    index = torch.randint(0, len(data), (batch_size,), device=data.device, generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    model.train()
    for k in range(steps + 2):  # two warm-up steps (cuDNN's algorithm search)
        if k == 2:
            _sync(data.device)
            start = time.perf_counter()
        _step(model, opt, *data.augmented(index, gen), data.device, autocast)
    _sync(data.device)
    opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(model: nn.Module, data: DeviceData, *, epochs_max: int, budget_s: float, batch_size: int, lr: float,
          ckpt: Path, seed: int, autocast: bool, log=print, max_steps_per_epoch: int | None = None) -> dict:
    """Train ``model`` in place, resuming from ``ckpt``; returns the training record. The number of
    epochs is min(epochs_max, what the measured step time fits in budget_s), fixed at the first
    start (a resumed run keeps its schedule); the deadline also stops a run that estimated wrong."""
    device = data.device
    model.to(device).to(memory_format=torch.channels_last)
    state = torch.load(ckpt, map_location=device, weights_only=False) if ckpt.exists() else None
    if state is not None and state["done"]:
        model.load_state_dict(state["model"])
        log(f"{ckpt.name}: trained already ({state['info']['epochs_run']} epochs), loaded")
        return {**state["info"], "resumed": True}
    steps = len(data) // batch_size if max_steps_per_epoch is None else min(len(data) // batch_size, max_steps_per_epoch)
    steps = max(1, steps)
    started = time.perf_counter()
    if state is None:
        step_s = time_step(model, data, batch_size, autocast)
        epochs = int(max(1, min(epochs_max, (budget_s - (time.perf_counter() - started)) / (steps * step_s))))
        info = {"epochs": epochs, "step_s": step_s, "steps_per_epoch": steps, "batch_size": batch_size, "lr": lr,
                "epoch_s": [], "train_loss": [], "epochs_run": 0, "train_time_s": 0.0}
        log(f"{ckpt.name}: {step_s * 1e3:.1f} ms/step x {steps} steps -> {epochs} epochs (cap {epochs_max})")
    else:
        info = state["info"]
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=info["epochs"] * steps, pct_start=0.25,
                                                div_factor=10.0, final_div_factor=100.0)
    first = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        first = info["epochs_run"]
        log(f"{ckpt.name}: resumed after epoch {first} of {info['epochs']}")
    gen = torch.Generator(device=device).manual_seed(seed)
    for epoch in range(first, info["epochs"]):
        if epoch > first and time.perf_counter() - started + info["epoch_s"][-1] > budget_s:
            log(f"{ckpt.name}: time budget reached after {epoch} of {info['epochs']} epochs")
            break
        t0 = time.perf_counter()
        model.train()
        gen.manual_seed(seed * 1000 + epoch)  # a resumed epoch sees the same batches
        order = torch.randperm(len(data), device=device, generator=gen)
        total = torch.zeros((), device=device)
        for s in range(steps):
            loss = _step(model, opt, *data.augmented(order[s * batch_size:(s + 1) * batch_size], gen), device, autocast)
            opt.step()
            sched.step()
            total += loss.detach()
        _sync(device)
        info["epoch_s"].append(time.perf_counter() - t0)
        info["train_loss"].append(float(total) / steps)
        info["epochs_run"] = epoch + 1
        info["train_time_s"] += info["epoch_s"][-1]
        log(f"{ckpt.name}: epoch {epoch + 1}/{info['epochs']} loss {info['train_loss'][-1]:.3f} "
            f"{info['epoch_s'][-1]:.1f} s")
        _save(ckpt, model, opt, sched, info, done=epoch + 1 == info["epochs"])
    _save(ckpt, model, opt, sched, info, done=True)
    model.eval()
    return {**info, "resumed": state is not None}


def _save(path: Path, model, opt, sched, info: dict, done: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "info": info,
                "done": done}, tmp)
    tmp.replace(path)  # a kill during the write leaves the previous checkpoint
