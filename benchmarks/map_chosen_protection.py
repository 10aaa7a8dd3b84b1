"""Neuron-wise bounds chosen from a vulnerability map, against FitAct (all neuron-wise) and ProAct
(last site neuron-wise), at equal bound memory (protect/map_choice.py).

    python benchmarks/map_chosen_protection.py --cache-dir .cache [--experiment quickstart] \
        [--trials 20] [--rates 1e-5 3e-5 1e-4 3e-4] [--half-width 0.05] [--set key=value ...]

From the stage cache (training the baseline first if needed): the unprotected model as deployed
(BatchNorm folded); its vulnerability map on validation images (every decision on val, never on
test); site scores; the sites made neuron-wise within ProAct's bound memory (one bound per site plus
the last site's neurons). Then, each hardened from the same model and measured on the same test
images and fault maps (paired):

- ``fitact``: every site neuron-wise, FitAct post-training;
- ``fitact_last``: ProAct's layout (last site neuron-wise) with FitAct's post-training;
- ``fitact_map``: the map's layout, same post-training and bound memory as ``fitact_last``;
- ``proact``: ProAct (its layout and its progressive training).

``fitact_map`` - ``fitact_last`` isolates the choice of sites (same training, same memory). Prints
the site scores, the layouts, and per variant and rate: bound values, mean accuracy and SDC with CIs,
and the paired difference to ``fitact_last``; the last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from posttrain_settings import load_config  # noqa: E402
from fitact_pipeline import stats  # noqa: E402
from fitact_pipeline.api import harden, measure_resilience, vulnerability  # noqa: E402
from fitact_pipeline.keys import all_keys  # noqa: E402
from fitact_pipeline.protect.map_choice import bound_memory, choose_sites, site_scores  # noqa: E402
from fitact_pipeline.stages import prepare_protected  # noqa: E402


def _setting(args):
    # as a job composes it (the dataset roots interpolate the Hydra run's working directory)
    cfg = load_config(args.experiment, ["protection=proact", f"cache_dir={args.cache_dir}", "progress_bar=false",
                                        *args.overrides])
    datamodule = instantiate(cfg.dataset)
    datamodule.setup()
    device = torch.device("cpu")
    reference = prepare_protected(cfg, datamodule, device, all_keys(cfg, datamodule, device)).reference.eval()
    return cfg, datamodule, reference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="quickstart")
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--rates", type=float, nargs="+", default=[1e-5, 3e-5, 1e-4, 3e-4])
    ap.add_argument("--half-width", type=float, default=0.05)
    ap.add_argument("--val-images", type=int, default=300)
    ap.add_argument("--budget", type=int, default=None,
                    help="extra bound values the map may spend (default: ProAct's, the last site's neurons - 1)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="a Hydra override of the job config")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg, dm, reference = _setting(args)
    faults = OmegaConf.to_container(cfg.faults, resolve=True)
    val = dm.eval_tensors("val", args.val_images, cfg.campaign.seed)
    test = dm.eval_tensors(cfg.campaign.eval_split, cfg.campaign.eval_images, cfg.campaign.seed)
    posttrain = OmegaConf.to_container(cfg.posttrain, resolve=True)
    progressive = OmegaConf.to_container(cfg.protection.progressive, resolve=True)

    vm = vulnerability(reference, val, faults=faults, half_width=args.half_width, seed=cfg.campaign.seed)

    def hardened_as(protection: str, **kwargs):
        # fresh loaders (a loader's shuffling generator advances with use) and the same seed: two
        # variants of one layout get the same bounds
        torch.manual_seed(cfg.seed)
        return harden(reference, protection, dm.train_dataloader(), dm.val_dataloader(),
                      profile_loader=dm.profile_dataloader(cfg.profile_images), profile_images=None,
                      fold_batchnorm=False, **kwargs)

    fitact = hardened_as("fitact", granularity="neuron", posttrain=posttrain)
    neurons = {site: int(p.numel()) for site, p in fitact.profile.items()}
    sites = list(neurons)
    scores = site_scores(vm, reference)
    budget = neurons[sites[-1]] - 1 if args.budget is None else args.budget  # default: ProAct's extra bound values
    layouts = {"fitact": {s: "neuron" for s in sites}, "fitact_last": {sites[-1]: "neuron"},
               "fitact_map": choose_sites(scores, neurons, budget), "proact": {sites[-1]: "neuron"}}
    print("site scores (P(a uniform fault lands in the site's layers and is an SDC)):",
          {s: round(v, 4) for s, v in scores.items()}, "neurons:", neurons)
    print("layouts:", {k: sorted(v) for k, v in layouts.items()})
    print("budget (extra bound values):", budget)
    hardened = {"fitact": fitact,
                "fitact_last": hardened_as("fitact", granularity="layer", posttrain=posttrain,
                                           site_granularity=layouts["fitact_last"]),
                "fitact_map": hardened_as("fitact", granularity="layer", posttrain=posttrain,
                                          site_granularity=layouts["fitact_map"]),
                "proact": hardened_as("proact", progressive=progressive)}
    results = {name: measure_resilience(h, test, args.rates, args.trials, seed=cfg.campaign.seed, faults=faults)
               for name, h in hardened.items()}
    base = {(t["rate"], t["trial"]): t["accuracy"] for t in results["fitact_last"].trials}
    summary = {}
    for name, res in results.items():
        memory = bound_memory(neurons, layouts[name])
        summary[name] = {"bound_values": memory, "clean": res.clean_accuracy, "rates": {}}
        for rate in args.rates:
            acc, sdc = res.per_rate[rate], res.outcomes[rate]["sdc"]
            mine = {(t["rate"], t["trial"]): t["accuracy"] for t in res.trials if t["rate"] == rate}
            diff = stats.paired_difference([mine[k] for k in sorted(mine)], [base[k] for k in sorted(mine)])
            summary[name]["rates"][rate] = {"acc": acc["mean"], "acc_ci": [acc["ci_low"], acc["ci_high"]],
                                            "sdc": sdc["mean"], "diff_vs_fitact_last": diff["mean_diff"],
                                            "diff_ci": [diff["ci_low"], diff["ci_high"]]}
            print(f"{name:12s} bounds {memory:5d} clean {100 * res.clean_accuracy:.2f} rate {rate:g}: "
                  f"acc {100 * acc['mean']:.1f} [{100 * acc['ci_low']:.1f}, {100 * acc['ci_high']:.1f}] "
                  f"sdc {100 * sdc['mean']:.1f}  vs fitact_last {100 * diff['mean_diff']:+.1f} pp "
                  f"[{100 * diff['ci_low']:+.1f}, {100 * diff['ci_high']:+.1f}]")
    print(json.dumps({"layouts": {k: sorted(v) for k, v in layouts.items()}, "scores": scores, "summary": summary}))


if __name__ == "__main__":
    main()
