"""The clean accuracy cost of storing a model in each stored format (issue 29): the trained
baseline of an experiment (BatchNorm folded, unprotected, from the stage cache or trained), stored
in every registered format in turn, evaluated without faults on the campaign's evaluation images.

    python benchmarks/format_cost.py [--experiment quickstart] [--cache-dir .cache] [overrides ...]
    python benchmarks/format_cost.py --experiment repro_cpu --cache-dir /work/cache model=vgg16_w025
    python benchmarks/format_cost.py --experiment repro_cpu --state <cache>/baseline/<key>/model.pt model=vgg16_w025
    python benchmarks/format_cost.py --weight-protections parity_zero clamp     # and what they cost, per format

``--state`` loads a trained baseline's state dict directly (e.g. one cached under an earlier key
scheme) instead of running the baseline stage.

The fault space is the default (weights, biases; no bounds in an unprotected model), so only those
tensors change format; everything else stays float32. Prints one row per format: accuracy, the
change against float32 in percentage points, and the stored bits per value of the fault space
(scales included). The last line is JSON {format: accuracy}. With ``--weight-protections``, each
protection's clean accuracy in every format (its ``protect`` and ``attach`` steps as in a job: parity's
lost bit, the clamp's stored bounds) and its cost (stored - protected, points), and a second JSON line
{format: {protection: accuracy}}.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fitact_pipeline import stages  # noqa: E402
from fitact_pipeline.device import resolve_device  # noqa: E402
from fitact_pipeline.evaluate import evaluate_accuracy  # noqa: E402
from fitact_pipeline.faults import FORMATS, FaultInjector  # noqa: E402
from fitact_pipeline.keys import all_keys  # noqa: E402
from fitact_pipeline.models import model_from_config  # noqa: E402
from fitact_pipeline.protect import fold_batchnorm  # noqa: E402
from fitact_pipeline.protect.weights import WEIGHT_PROTECTIONS  # noqa: E402


def job_config(experiment: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose("config", overrides=[f"experiment={experiment}", "protection=none", *overrides],
                       return_hydra_config=True)


def stored_accuracy(reference: torch.nn.Module, fmt: str, images, labels, batch_size: int,
                    weights: str = "none") -> tuple[float, float]:
    """(clean accuracy, stored bits per value) of ``reference`` stored in ``fmt`` under the weight
    protection ``weights`` (the clamp's bounds are in the fault space, as in a job's default)."""
    model = copy.deepcopy(reference)
    protection = WEIGHT_PROTECTIONS[weights]
    protection.protect(model, {"name": weights})
    targets = ("weight", "bias", "bound") + (("scale",) if FORMATS[fmt].family == "scaled" else ())
    injector = FaultInjector(model, fmt=fmt, word_bits=32, frac_bits=16, targets=targets)
    protection.attach(injector, {"name": weights})
    space = injector.fault_space
    values = sum(t["elements"] for t in space["tensors"] if t["kind"] != "scale")
    return evaluate_accuracy(model, images, labels, batch_size), space["total_bits"] / values


def baseline(cfg, datamodule, device, state: str | None) -> torch.nn.Module:
    """The unprotected, BatchNorm-folded baseline: the stage's, or the state dict in ``state``."""
    if state is None:
        return stages.prepare_protected(cfg, datamodule, device, all_keys(cfg, datamodule, device)).reference.eval()
    model = model_from_config(cfg.model, datamodule.num_classes, datamodule.in_channels, cfg.seed)
    model.load_state_dict(torch.load(state, weights_only=True))
    model.eval()
    if cfg.faults.fold_batchnorm:
        fold_batchnorm(model)
    return model.to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="quickstart")
    ap.add_argument("--cache-dir", default=str(ROOT / ".cache"))
    ap.add_argument("--state", help="a baseline's model.pt to load instead of the baseline stage")
    ap.add_argument("--weight-protections", nargs="*", default=[], choices=[w for w in WEIGHT_PROTECTIONS if w != "none"])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the job config")
    args = ap.parse_args()
    cfg = job_config(args.experiment, [f"cache_dir={args.cache_dir}", *args.overrides])
    torch.set_num_threads(int(cfg.threads or torch.get_num_threads()))
    device = resolve_device(cfg.get("device", "auto"))
    datamodule = instantiate(cfg.dataset)
    datamodule.setup()
    reference = baseline(cfg, datamodule, device, args.state)
    images, labels = datamodule.eval_tensors(cfg.campaign.eval_split, cfg.campaign.eval_images, cfg.campaign.seed)
    images, labels = images.to(device), labels.to(device)
    float_acc = evaluate_accuracy(reference, images, labels, cfg.campaign.batch_size)
    print(f"{args.experiment} {cfg.model.name} w{cfg.model.get('width', 1.0)}: {len(labels)} "
          f"{cfg.campaign.eval_split} images; unstored float32 {100 * float_acc:.2f} %")
    protected = "".join(f" {w + ' %':>13} {'cost pp':>8}" for w in args.weight_protections)
    print(f"{'format':10} {'accuracy %':>10} {'vs float32 pp':>13} {'bits/value':>10}{protected}")
    out, per_protection = {}, {}
    for fmt in FORMATS:
        acc, bits = stored_accuracy(reference, fmt, images, labels, cfg.campaign.batch_size)
        out[fmt], per_protection[fmt] = acc, {"none": acc}
        line = f"{fmt:10} {100 * acc:10.2f} {100 * (acc - float_acc):+13.2f} {bits:10.2f}"
        for weights in args.weight_protections:
            per_protection[fmt][weights] = stored_accuracy(reference, fmt, images, labels, cfg.campaign.batch_size,
                                                           weights)[0]
            line += f" {100 * per_protection[fmt][weights]:13.2f} {100 * (acc - per_protection[fmt][weights]):8.2f}"
        print(line)
    print(json.dumps(out))
    if args.weight_protections:
        print(json.dumps(per_protection))


if __name__ == "__main__":
    main()
