"""How much the FT-ClipAct search's prefix reuse saves, and that it changes no score.

    python benchmarks/clipact_search_prefix.py                       # VGG16 at width 0.25, ~5 min
    python benchmarks/clipact_search_prefix.py --model vgg16 --width 1.0 --sites 4

Builds the model (random weights: the cost of a pass does not depend on them) for CIFAR-10-shaped
images, folds BatchNorm, profiles, protects it with layer-wise Clip-Act (fused, as repro_cpu runs it)
and runs the same search twice side by side, per site in turn: full passes (``reuse_prefix=False``)
and prefix reuse. It prints each site's time both ways and the ratio, and fails if any score or
threshold differs. ``--sites`` spreads that many searched sites evenly over the model.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fitact_pipeline.models import build_model  # noqa: E402
from fitact_pipeline.protect import fold_batchnorm, profile_activations, protect_model  # noqa: E402
from fitact_pipeline.protect.clipact_search import clipact_search  # noqa: E402

FAULTS = {"fmt": "fixed", "word_bits": 32, "frac_bits": 16}


def timed_search(model, images, labels, site, reuse, args):
    seen = []
    start = time.perf_counter()
    clipact_search(model, images, labels, FAULTS, rates=(1e-6, 1e-5, 1e-4), candidates=args.candidates,
                   iterations=1, trials=args.trials, seed=1, sites=[site], reuse_prefix=reuse,
                   log=lambda *a: seen.append(a))
    return time.perf_counter() - start, seen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg16")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--sites", type=int, default=4)
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = build_model(args.model, 10, 3, args.width).eval()
    images, labels = torch.randn(args.images, 3, 32, 32), torch.randint(0, 10, (args.images,))
    fold_batchnorm(base)
    prof = profile_activations(base, images)
    model = protect_model(base, "clipact", "layer", prof, fused=True)
    names = list(prof)
    picks = sorted({round(i * (len(names) - 1) / max(args.sites - 1, 1)) for i in range(args.sites)})
    print(f"{args.model} width {args.width}: {len(names)} sites, searching {len(picks)}; "
          f"{args.images} images x {args.trials} trials x 3 rates per score, {args.candidates} candidates")
    print(f"{'site':28s} {'full (s)':>9s} {'reuse (s)':>9s} {'ratio':>6s}")
    total_full = total_reuse = 0.0
    for i in picks:
        site = names[i]
        full_s, full_scores = timed_search(copy.deepcopy(model), images, labels, site, False, args)
        reuse_s, reuse_scores = timed_search(copy.deepcopy(model), images, labels, site, True, args)
        if full_scores != reuse_scores:
            sys.exit(f"site {site}: prefix reuse scored differently: {full_scores} vs {reuse_scores}")
        total_full, total_reuse = total_full + full_s, total_reuse + reuse_s
        print(f"{site:28s} {full_s:9.1f} {reuse_s:9.1f} {full_s / reuse_s:6.2f}")
    print(f"{'all':28s} {total_full:9.1f} {total_reuse:9.1f} {total_full / total_reuse:6.2f}  (scores identical)")


if __name__ == "__main__":
    main()
