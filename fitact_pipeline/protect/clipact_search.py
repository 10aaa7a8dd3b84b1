"""FT-ClipAct threshold search (Hoang et al., DATE 2020; DESIGN.md §2.4).

Per layer, in forward order: start with [0, profiled max]; score a few evenly spaced thresholds by
the area under accuracy-vs-fault-rate (trapezoid on the log10 rate axis, divided by the axis span so
a score is a mean accuracy in [0, 1]); keep the best, narrow the interval to one candidate spacing
around it, repeat until the best score stops improving. Layers are tuned one after another, each
with the thresholds already chosen for the earlier ones in place.

Every candidate is scored on the same fault maps: the injector draws each tensor's flips from
(seed, trial, tensor name), so the weights are hit identically; only the bound being tuned gets
its own draw (its value differs). A fresh FaultInjector is built per score because the injector
stores (quantises) the fault space at construction, and the bound value changes between scores.
The profiled max is scored first and kept unless a candidate beats it, so the result is never
worse than the profiled max on the validation data it was searched on.

Prefix reuse: a site's candidates are scored from the faulted input of the stage that reads its
bound, computed once per map (faulted_prefix.py); the scores are those of full passes.

Resumption: with ``checkpoint_dir``, the thresholds chosen so far are written there after every
site (a full-width model's search takes hours on a CPU); a search that finds them restores those
sites' thresholds and goes on with the next site. A site's score depends only on the thresholds
before it and the fault maps (pure functions of seed and trial), so a resumed search chooses what
an uninterrupted one chooses.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

from ..evaluate import evaluate_accuracy
from ..faults import FaultInjector
from ..faults.prefix import stages_of
from .faulted_prefix import FaultedPrefix
from .protections.clipact import ClipActReLU

log_ = logging.getLogger(__name__)
CHECKPOINT_NAME = "chosen_thresholds.json"


def _score(model, images, labels, rates, trials, seed, fault_kwargs, batch_size, injector_factory, evaluate,
           prefix: FaultedPrefix | None = None):
    injector = injector_factory(model, **fault_kwargs)
    accs = []
    for rate in rates:
        per_trial = []
        for t in range(trials):
            with injector.inject(rate, seed, t):
                if prefix is None:
                    per_trial.append(evaluate(model, images, labels, batch_size))
                else:
                    per_trial.append(prefix.accuracy((rate, t), images, labels, batch_size, evaluate))
        accs.append(sum(per_trial) / len(per_trial))
    if len(rates) == 1:
        return accs[0]
    xs = [math.log10(r) for r in rates]
    area = sum((xs[i + 1] - xs[i]) * (accs[i] + accs[i + 1]) / 2 for i in range(len(xs) - 1))
    return area / (xs[-1] - xs[0])


def _search_site(act: ClipActReLU, score, candidates: int, iterations: int, tol: float, site: str, log) -> float:
    """Search one site's threshold; leaves the best in its bound and returns it."""
    top = float(act.bound.detach())
    best_t, best_s = top, score()  # the profiled max is the reference
    if log:
        log(site, 0, top, best_s)
    # [0, max]; an activation with negative outputs (SiLU, GELU) may have a negative profiled max
    floor = min(0.0, top)
    lo, hi = floor, top
    for it in range(1, iterations + 1):
        prev = best_s
        step = (hi - lo) / (candidates - 1)
        for i in range(candidates):
            t = lo + i * step
            if abs(t - best_t) < 1e-12:
                continue  # already scored
            with torch.no_grad():
                act.bound.fill_(t)
            s = score()
            if log:
                log(site, it, t, s)
            if s > best_s:
                best_t, best_s = t, s
        # narrow to one spacing around the best, inside [0, profiled max]
        lo, hi = max(floor, best_t - step), min(top, best_t + step)
        if best_s - prev <= tol and it > 1:
            break  # scores stopped improving
    with torch.no_grad():
        act.bound.fill_(best_t)
    return best_t


def _searched_sites(model: nn.Module, sites) -> dict[str, ClipActReLU]:
    acts = _clipact_sites(model)
    if not acts:
        raise ValueError("clipact_search needs a model protected with 'clipact' (no ClipActReLU found)")
    wide = [n for n, m in acts.items() if m.bound.dim() != 0]
    if wide:
        raise ValueError(f"clipact_search tunes one threshold per layer; these sites are not layer-wise: {', '.join(wide)}")
    if sites is not None:
        unknown = sorted(set(sites) - set(acts))
        if unknown:
            raise ValueError(f"unknown Clip-Act sites: {', '.join(unknown)}")
        acts = {n: acts[n] for n in sites}
    return acts  # named_modules order = registration order ~ forward order


def _clipact_sites(model: nn.Module) -> dict[str, ClipActReLU]:
    return {n: m for n, m in model.named_modules() if isinstance(m, ClipActReLU)}


def _resumed(checkpoint_dir, model: nn.Module, acts: dict[str, ClipActReLU]) -> dict[str, float]:
    """The thresholds an interrupted search of the same key chose (its first sites, in order), with
    every Clip-Act bound restored as it was when it saved them: each score stores all bounds in the
    fault format in place, so the stored values, not the thresholds or the profiled maxima, are what
    the next site starts from."""
    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if path is None or not path.exists():
        return {}
    saved = json.loads(path.read_text())
    chosen = saved["thresholds"]
    if list(chosen) != list(acts)[:len(chosen)]:
        raise ValueError(f"{path} holds sites {list(chosen)}, not the first sites of this search ({list(acts)}); "
                         "remove it to start the search over")
    every = _clipact_sites(model)
    with torch.no_grad():
        for site, value in saved["bounds"].items():
            bound = every[site].bound
            bound.copy_(torch.tensor(value, dtype=bound.dtype).reshape(bound.shape))
    log_.info("resuming the Clip-Act search from %s (%d of %d sites done)", path, len(chosen), len(acts))
    return chosen


def _save_chosen(checkpoint_dir, chosen: dict[str, float], model: nn.Module) -> None:
    path = Path(checkpoint_dir)
    path.mkdir(parents=True, exist_ok=True)
    bounds = {site: act.bound.detach().cpu().reshape(-1).tolist() for site, act in _clipact_sites(model).items()}
    tmp = path / (CHECKPOINT_NAME + ".tmp")
    tmp.write_text(json.dumps({"thresholds": chosen, "bounds": bounds}))
    os.replace(tmp, path / CHECKPOINT_NAME)  # a stop mid-write leaves the previous file


def clipact_search(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, fault_kwargs: dict | None = None,
                   rates=(1e-6, 1e-5, 1e-4), candidates: int = 5, iterations: int = 3, trials: int = 3,
                   seed: int = 0, batch_size: int = 256, tol: float = 1e-4, sites=None,
                   injector_factory=None, evaluate=None, log=None, checkpoint_dir=None,
                   reuse_prefix: bool = True) -> dict[str, float]:
    """Search a Clip-Act threshold per layer; sets the model's bounds and returns {site: threshold}.

    ``model`` must be protected with ``clipact`` at layer granularity (bounds = profiled max).
    ``images``/``labels``: the validation subset (e.g. ``datamodule.eval_tensors("val", n, seed)``).
    ``fault_kwargs`` go to ``FaultInjector`` (fmt, word_bits, frac_bits, targets, ...).
    Cost = sites x (1 + iterations x candidates) x len(rates) x trials evaluations of ``images``.
    ``sites`` restricts the search to some sites (default all); ``log(site, it, threshold, score)``
    is called for every scored candidate. ``checkpoint_dir``: keep the chosen thresholds there
    after every site and resume from them (module docstring). ``reuse_prefix``: score a site's
    candidates from its stage's faulted input (faulted_prefix.py; the same scores, faster); it
    applies with the default ``evaluate`` only.
    """
    injector_factory = injector_factory or FaultInjector
    full_passes_only = not reuse_prefix or evaluate is not None  # a custom evaluate sees whole passes
    evaluate = evaluate or evaluate_accuracy
    rates = sorted(float(r) for r in rates)
    if not rates or rates[0] <= 0:
        raise ValueError(f"rates must be positive fault rates, got {rates!r}")
    if candidates < 2 or iterations < 1 or trials < 1:
        raise ValueError(f"need candidates >= 2, iterations >= 1, trials >= 1; got {candidates}, {iterations}, {trials}")
    if len(images) == 0 or batch_size < 1:
        raise ValueError(f"need images and batch_size >= 1; got {len(images)} images, batch_size={batch_size!r}")
    acts = _searched_sites(model, sites)
    stages = None if full_passes_only else stages_of(model)
    fault_kwargs = dict(fault_kwargs or {})
    was_training = model.training
    model.eval()

    def scorer(prefix: FaultedPrefix | None):
        return lambda: _score(model, images, labels, rates, trials, seed, fault_kwargs, batch_size, injector_factory,
                              evaluate, prefix)

    chosen = _resumed(checkpoint_dir, model, acts)
    for i, (site, act) in enumerate(acts.items()):
        if site in chosen:
            continue
        start = time.perf_counter()
        prefix = FaultedPrefix(model, stages, site) if stages else None
        chosen[site] = _search_site(act, scorer(prefix), candidates, iterations, tol, site, log)
        log_.info("Clip-Act search: site %d/%d %s -> threshold %.4g (%.0f s)", i + 1, len(acts), site, chosen[site],
                  time.perf_counter() - start)
        if checkpoint_dir is not None:
            _save_chosen(checkpoint_dir, chosen, model)
    model.train(was_training)
    return chosen
