"""FitAct post-training settings side by side on one experiment's cached baseline (validation only).

    python benchmarks/posttrain_settings.py --model resnet50_w0125 \
        --settings '{"lr": 0.01}' '{"lr": 0.005}' '{"lr": 0.01, "epochs": 4, "max_batches_per_epoch": 20}'

Runs the job's stages up to the bounds exactly as ``python -m fitact_pipeline`` does (the baseline
and the profile come from the stage cache, or are computed and cached), then post-trains a fresh
copy of the FitAct-protected model once per setting (each a JSON object of conf/posttrain keys that
override the experiment's). Never touches the test split. Prints one line per epoch and a JSON line
per setting: clean validation accuracy, per-epoch ratio/accuracy, the kept ratio, and the
post-training time against the baseline's training time. This is the evidence behind the defaults
in docs/protections.md ("Post-training defaults").
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from fitact_pipeline import pipeline, stages  # noqa: E402
from fitact_pipeline.keys import all_keys  # noqa: E402
from fitact_pipeline.protect.posttrain import posttrain_bounds  # noqa: E402


def load_config(experiment: str, overrides: list[str]):
    """A job's composed config, as ``python -m fitact_pipeline experiment=... <overrides>`` has it."""
    os.chdir(ROOT)  # the dataset paths resolve against the working directory, as in a run
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=[f"experiment={experiment}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experiment", default="repro_cpu")
    ap.add_argument("--model", required=True, help="a conf/model option, e.g. resnet50_w0125")
    ap.add_argument("--settings", nargs="+", default=["{}"], help="JSON objects of posttrain overrides")
    ap.add_argument("overrides", nargs="*", help="further Hydra overrides, e.g. seed=1")
    args = ap.parse_args()
    settings = [json.loads(s) for s in args.settings]

    cfg = load_config(args.experiment, [f"model={args.model}", "protection=fitact", *args.overrides])
    device = pipeline.configure_runtime(cfg)
    datamodule = instantiate(cfg.dataset)
    datamodule.setup()
    prepared = stages.prepare_protected(cfg, datamodule, device, all_keys(cfg, datamodule, device))
    clean, protected = prepared.clean_val_acc, prepared.protected
    train_s = float(prepared.train_info["train_time_s"])

    for overrides in settings:
        pt = OmegaConf.to_container(cfg.posttrain, resolve=True)
        pt["progress_bar"] = False  # one summary line per epoch instead
        pt.update(overrides)
        torch.manual_seed(cfg.seed)
        res = posttrain_bounds(copy.deepcopy(protected), datamodule, pt, clean)
        for h in res["history"]:
            print(f"{args.model} {json.dumps(overrides)} epoch {h['epoch']}: ratio {h['mean_bound_ratio']:.3f} "
                  f"val {100 * h['val_acc']:.2f} % (floor {100 * (clean - pt['max_accuracy_drop']):.2f})")
        print(json.dumps({"model": args.model, "settings": overrides, "clean_val_acc": clean,
                          "kept_ratio": res["mean_bound_ratio"], "kept_epoch": res["selected_epoch"],
                          "posttrain_s": res["time_s"], "train_s": train_s,
                          "posttrain_over_train": res["time_s"] / train_s, "history": res["history"]}), flush=True)


if __name__ == "__main__":
    main()
