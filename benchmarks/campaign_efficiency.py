"""Image evaluations and wall time that the classic and the nested design need for a +-1-point 95 %
CI of the mean accuracy, per protection and rate, side by side in one run (issue 18).

    python benchmarks/campaign_efficiency.py --experiment quickstart
    python benchmarks/campaign_efficiency.py --experiment repro_cpu --model vgg16_w025 cache_dir=/work/main/.cache

Each protection's model comes from the job's own cached stages (baseline, profile, bounds), as
``python -m fitact_pipeline`` builds it. Per protection and rate:

- classic (every map on the same n images, n = campaign.eval_images): a pilot of --classic-maps maps
  measures the spread s of per-map accuracy and the time of one map; the maps it needs are
  M = max(30, ceil((1.96 s / target)^2)), its image evaluations M x n and its time M x (time of one map).
- nested: run to the target half-width (adaptive stopping, at most --max-trials trials), n per trial
  images_per_trial=auto (designs.AUTO_IMAGES; before issue 24 a pilot per rate, whose evaluations
  were counted) or fixed with --images-per-trial, --maps-per-pass maps per vmapped pass; its trials, images and wall time.
- agree: whether the two means differ by less than 1.96 x the standard error of their difference.

The last line is JSON: per model, per protection and rate, both designs' figures and the ratio of
image evaluations classic / nested.

With --compare conditioned (issue 27) the run sets the count-conditioned design against the nested
one instead, both with --images-per-trial images per map (30 unless given), per protection:

- low rates (--low-rates, default 1e-9 1e-8 1e-7) to +---low-target (default 0.2 point): per rate a
  conditioned campaign of that rate alone and a nested one (at least --nested-min maps, at most
  --nested-max: a rare harmful map hides in a small sample; the nested minimum guards it);
- a curve (--curve-rates, default 13 rates, half-decades from 1e-10 to 1e-4) to +---target (default 1
  point): one conditioned campaign of all its rates against one nested campaign per rate; the
  nested total is given for all of them and for the rates >= 1e-7 (7 rates: the repro curve).

Image evaluations: the conditioned campaign's are maps x n (every map it runs has faults); the
nested campaign's "nominal" are maps x n (what campaign_precision counts), "run" only the maps that
change a bit (an empty map is read from the clean model). Where a nested campaign stops at its cap
above the target, the maps it would need are extrapolated as maps x (half-width / target)^2 and
labelled so.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra.utils import instantiate  # noqa: E402

from fitact_pipeline import pipeline, stages  # noqa: E402
from fitact_pipeline.counts import eval_count  # noqa: E402
from fitact_pipeline.keys import all_keys  # noqa: E402
from fitact_pipeline.faults import FAULT_MODELS, as_rate_list, run_campaign  # noqa: E402
from posttrain_settings import load_config  # noqa: E402


MIN_TRIALS = 30


def protected_model(cfg, device):
    datamodule = instantiate(cfg.dataset)
    datamodule.setup()
    keys = all_keys(cfg, datamodule, device)
    prepared = stages.prepare_protected(cfg, datamodule, device, keys)
    stages.stage_bounds(cfg, prepared, datamodule, keys)
    images, labels = datamodule.eval_tensors(cfg.campaign.eval_split, eval_count(cfg.campaign.eval_images), cfg.campaign.seed)
    return prepared.protected.eval(), images.to(device), labels.to(device)


def classic(model, injector, images, labels, rate, args, batch) -> dict:
    start = time.perf_counter()
    result = run_campaign(model, injector, images, labels, [rate], args.classic_maps, args.seed, batch, progress=False)
    per_map = (time.perf_counter() - start) / args.classic_maps
    st = result.per_rate[rate]
    # the nested run's minimum of 30 trials applies here too: fewer maps cannot even measure s
    maps = max(MIN_TRIALS, math.ceil((1.96 * st["std"] / args.target) ** 2))
    return {"mean": st["mean"], "se": st["std"] / math.sqrt(args.classic_maps), "sd": st["std"], "trials": maps,
            "images_per_trial": len(labels), "image_evals": maps * len(labels), "seconds": maps * per_map}


def nested(model, injector, images, labels, rate, args, batch) -> dict:
    start = time.perf_counter()
    result = run_campaign(model, injector, images, labels, [rate], 0, args.seed + 1, batch, progress=False,
                          design="nested", images_per_trial=args.images_per_trial, maps_per_pass=args.maps_per_pass,
                          adaptive={"target_halfwidth": args.target, "min_trials": MIN_TRIALS, "max_trials": args.max_trials})
    st = result.per_rate[rate]
    return {"mean": st["mean"], "se": st["std"] / math.sqrt(st["trials"]), "trials": st["trials"],
            "images_per_trial": st["images_per_trial"], "halfwidth": st["ci_halfwidth"],
            "image_evals": st["trials"] * st["images_per_trial"], "seconds": time.perf_counter() - start}


def arm(experiment: str, model_option: str | None, protection: str, args):
    """One protection's config, model, evaluation images, injector and batch size, from the stage cache."""
    overrides = [f"protection={protection}", *args.overrides] + ([f"model={model_option}"] if model_option else [])
    cfg = load_config(experiment, overrides)
    device = pipeline.configure_runtime(cfg)
    model, images, labels = protected_model(cfg, device)
    return cfg, model, images, labels, FAULT_MODELS[cfg.faults.model].build(model, cfg.faults), cfg.campaign.batch_size


def compare(experiment: str, model_option: str | None, args) -> dict:
    out = {}
    for protection in args.protections:
        cfg, model, images, labels, injector, batch = arm(experiment, model_option, protection, args)
        for rate in as_rate_list(cfg.campaign.rates):
            c, n = classic(model, injector, images, labels, rate, args, batch), nested(model, injector, images, labels,
                                                                                     rate, args, batch)
            agree = abs(c["mean"] - n["mean"]) <= 1.96 * math.hypot(c["se"], n["se"])
            row = {"classic": c, "nested": n, "agree": agree, "image_ratio": c["image_evals"] / n["image_evals"],
                   "time_ratio": c["seconds"] / n["seconds"]}
            out[f"{protection}@{rate:g}"] = row
            print(f"{cfg.model.name} {protection:8s} {rate:8.1e}: classic {c['trials']:6d} maps x {c['images_per_trial']}"
                  f" = {c['image_evals']:>10,} images {c['seconds']:8.1f} s (mean {100 * c['mean']:.1f}, sd "
                  f"{100 * c['sd']:.1f}) | nested {n['trials']:5d} x {n['images_per_trial']:4d} = {n['image_evals']:>8,} "
                  f"images {n['seconds']:7.1f} s (mean {100 * n['mean']:.1f} +- {100 * n['halfwidth']:.2f}) | "
                  f"{row['image_ratio']:6.1f}x fewer images, {row['time_ratio']:5.1f}x less time, agree={agree}",
                  flush=True)
    return out


def half_decades(low: float, high: float) -> list[float]:
    """Rates 10^(e / 2) from ``low`` to ``high`` (powers of ten), rounded to 3 significant digits."""
    lo, hi = round(2 * math.log10(low)), round(2 * math.log10(high))
    return [float(f"{10 ** (e / 2):.3g}") for e in range(lo, hi + 1)]


def conditioned_run(model, injector, images, labels, rates, target, args, batch) -> dict:
    start = time.perf_counter()
    result = run_campaign(model, injector, images, labels, rates, 0, args.seed, batch, progress=False,
                          design="conditioned", images_per_trial=args.images_per_trial,
                          adaptive={"target_halfwidth": target, "min_trials": 3, "max_trials": args.max_trials})
    maps = int(sum(len(a) for a in result.ak_table["trials"].values()))
    return {"maps": maps, "image_evals": maps * args.images_per_trial, "seconds": time.perf_counter() - start,
            "per_rate": {r: {key: result.per_rate[r][key] for key in ("mean", "ci_low", "ci_high", "ci_halfwidth",
                                                                      "tail_mass", "interp_term")} for r in rates}}


def nested_run(model, injector, images, labels, rate, target, args, batch) -> dict:
    start = time.perf_counter()
    result = run_campaign(model, injector, images, labels, [rate], 0, args.seed + 1, batch, progress=False,
                          design="nested", images_per_trial=args.images_per_trial, maps_per_pass=args.maps_per_pass,
                          adaptive={"target_halfwidth": target, "min_trials": args.nested_min,
                                    "max_trials": args.nested_max})
    st = result.per_rate[rate]
    run = sum(t["flips"] > 0 for t in result.trials)
    out = {"mean": st["mean"], "halfwidth": st["ci_halfwidth"], "maps": st["trials"], "non_empty": run,
           "nominal_evals": st["trials"] * args.images_per_trial, "run_evals": run * args.images_per_trial,
           "seconds": time.perf_counter() - start, "reached": st["ci_halfwidth"] <= target}
    if not out["reached"]:  # stopped at its cap: trials scale as (half-width / target)^2
        out["extrapolated_maps"] = math.ceil(st["trials"] * (st["ci_halfwidth"] / target) ** 2)
    return out


def _nested_text(n: dict) -> str:
    text = (f"nested {100 * n['mean']:.3f} +-{100 * n['halfwidth']:.3f}: {n['maps']} maps ({n['non_empty']} not empty), "
            f"{n['nominal_evals']:,} nominal / {n['run_evals']:,} run image evaluations, {n['seconds']:.1f} s")
    if not n["reached"]:
        text += f" [cap reached; EXTRAPOLATED to the target: {n['extrapolated_maps']:,} maps]"
    return text


def compare_conditioned(experiment: str, model_option: str | None, args) -> dict:
    out = {}
    for protection in args.protections:
        cfg, model, images, labels, injector, batch = arm(experiment, model_option, protection, args)
        rows = out[protection] = {"low": {}, "curve": {}}
        for rate in args.low_rates:
            c = conditioned_run(model, injector, images, labels, [rate], args.low_target, args, batch)
            n = nested_run(model, injector, images, labels, rate, args.low_target, args, batch)
            nominal = n.get("extrapolated_maps", n["maps"]) * args.images_per_trial
            row = rows["low"][rate] = {"conditioned": c, "nested": n, "nominal_ratio": nominal / c["image_evals"],
                                       "run_ratio": n["run_evals"] / c["image_evals"]}
            pr = c["per_rate"][rate]
            print(f"{cfg.model.name} {protection:8s} {rate:8.1e} +-{100 * args.low_target:.1f}: conditioned "
                  f"{100 * pr['mean']:.3f} +-{100 * pr['ci_halfwidth']:.3f}: {c['maps']} maps, {c['image_evals']:,} "
                  f"image evaluations, {c['seconds']:.1f} s | {_nested_text(n)} | {row['nominal_ratio']:.0f}x fewer "
                  f"nominal, {row['run_ratio']:.1f}x fewer run image evaluations", flush=True)
        c = conditioned_run(model, injector, images, labels, args.curve_rates, args.target, args, batch)
        rows["curve"]["conditioned"] = c
        nested = {rate: nested_run(model, injector, images, labels, rate, args.target, args, batch)
                  for rate in args.curve_rates}
        rows["curve"]["nested"] = nested
        for rate in args.curve_rates:
            pr = c["per_rate"][rate]
            print(f"  curve {rate:8.2e}: conditioned {100 * pr['mean']:.2f} [{100 * pr['ci_low']:.2f}, "
                  f"{100 * pr['ci_high']:.2f}] (tail {pr['tail_mass']:.1e}, interpolation {100 * pr['interp_term']:.2f})"
                  f" | {_nested_text(nested[rate])}", flush=True)
        for label, subset in (("all", args.curve_rates), ("repro (>= 1e-7)", [r for r in args.curve_rates if r >= 1e-7])):
            maps = sum(nested[r].get("extrapolated_maps", nested[r]["maps"]) for r in subset)
            secs = sum(nested[r]["seconds"] for r in subset)
            rows["curve"][f"nested_{label}"] = {"rates": len(subset), "maps": maps,
                                                "nominal_evals": maps * args.images_per_trial, "seconds": secs}
            print(f"  curve nested, {label} ({len(subset)} rates): {maps:,} maps (extrapolated where capped), "
                  f"{maps * args.images_per_trial:,} nominal image evaluations, {secs:.1f} s (capped runs' time)",
                  flush=True)
        print(f"  curve conditioned ({len(args.curve_rates)} rates, one campaign): {c['maps']:,} maps, "
              f"{c['image_evals']:,} image evaluations, {c['seconds']:.1f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="quickstart")
    ap.add_argument("--model", default=None, help="a conf/model option, e.g. vgg16_w025")
    # comma-separated: a space-separated list would swallow the Hydra overrides that follow it
    ap.add_argument("--protections", type=lambda s: s.split(","), default=["none", "ranger", "clipact", "fitact"],
                    help="comma-separated conf/protection options, e.g. none,ranger,clipact_ft,fitact")
    ap.add_argument("--target", type=float, default=0.01, help="95 %% CI half-width (fraction of accuracy)")
    ap.add_argument("--classic-maps", type=int, default=20)
    ap.add_argument("--images-per-trial", default="auto")
    ap.add_argument("--maps-per-pass", type=int, default=8)
    ap.add_argument("--max-trials", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--compare", choices=["classic", "conditioned"], default="classic",
                    help="set the nested design against the classic (default) or the conditioned one")
    ap.add_argument("--low-rates", nargs="+", type=float, default=[1e-9, 1e-8, 1e-7])
    ap.add_argument("--low-target", type=float, default=0.002)
    ap.add_argument("--curve-rates", type=lambda s: [float(r) for r in s.split(",")],
                    default=half_decades(1e-10, 1e-4), help="comma-separated rates of the curve")
    ap.add_argument("--nested-min", type=int, default=1000)
    ap.add_argument("--nested-max", type=int, default=20000)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. cache_dir=/work/main/.cache")
    args = ap.parse_args()
    if args.compare == "conditioned":
        args.images_per_trial = 30 if args.images_per_trial == "auto" else args.images_per_trial
    if args.images_per_trial != "auto":
        args.images_per_trial = int(args.images_per_trial)
    torch.manual_seed(0)
    run = compare_conditioned if args.compare == "conditioned" else compare
    result = run(args.experiment, args.model, args)
    print(json.dumps({args.model or args.experiment: result}))


if __name__ == "__main__":
    main()
