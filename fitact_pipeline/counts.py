"""No requested quantity is silently reduced: every image count of a job against the images its data has.

A stratified subset of more images than a split holds used to return the whole split (``eval_images:
2000`` on digits' 360 test images ran 360 and logged 2000). Now a number means that many images:
where the data module knows its split sizes without decoding (``split_sizes``), a count larger than
what it asks for is a one-line ConfigError before any work, and "as many as there are" is spelled
``all`` (``campaign.eval_images``) or null. Counts inside a protection's config group
(ProAct's ``val_images``, Clip-Act's ``search.images``) default to numbers meant for CIFAR's 5,000
validation images; on a smaller split they are refused when given on the command line and reported
(one "note:" line, never silent) when they come from the group's defaults.
"""
from __future__ import annotations

from typing import Iterable

from omegaconf import DictConfig, OmegaConf

from .checks import fail, is_int

#: counts of a protection's own config, measured against the validation split
PROTECTION_VAL_COUNTS = ("protection.progressive.val_images", "protection.search.images")


def eval_count(value) -> int | None:
    """``campaign.eval_images`` as a subset size for ``eval_tensors``: None for all (``all`` or null)."""
    return None if value in (None, "all") else int(value)


def check_counts(cfg: DictConfig, dataset_class, explicit: Iterable[str] = ()) -> list[str]:
    """Refuse (ConfigError) every count larger than the images available; return notes for the
    protection defaults that will use fewer images than they name."""
    sizes = dataset_class.split_sizes(cfg.dataset)
    if sizes is None:  # a data module that must decode to know: its own checks run at set-up
        return []
    data = cfg.dataset
    val_size = data.get("val_size", dataset_class.default("val_size"))
    train = _split_train(sizes["train"], val_size, data.get("train_subset"))
    val = _subset(data.get("val_subset"), val_size, "dataset.val_subset", f"the validation split (dataset.val_size={val_size})")
    test = _subset(data.get("test_subset"), sizes["test"], "dataset.test_subset", "the test split")
    _at_most(cfg.get("profile_images"), train, "profile_images", "the training split")
    campaign = cfg.campaign
    split = campaign.get("eval_split", "test")
    pool = {"val": val, "test": test}[split]
    eval_n = _at_most(eval_count(campaign.get("eval_images")), pool, "campaign.eval_images", f"the {split} split",
                      ", or all")
    per_trial = campaign.get("images_per_trial")
    if campaign.get("design", "classic") != "classic" and is_int(per_trial):
        _at_most(per_trial, eval_n, "campaign.images_per_trial",
                 f"the evaluation pool (campaign.eval_images={campaign.get('eval_images')} of the {split} split)",
                 ", or auto")
    return _protection_notes(cfg, val, set(explicit))


def _split_train(total: int, val_size: int, subset) -> int:
    if val_size >= total:
        fail("dataset.val_size", val_size, f"it must leave training images: the training split has {total} "
             f"images; give a number < {total}")
    return _subset(subset, total - val_size, "dataset.train_subset",
                   f"the training split after the {val_size} validation images")


def _subset(value, available: int, path: str, what: str) -> int:
    return available if value is None else _at_most(value, available, path, what)


def _at_most(value, available: int, path: str, what: str, others: str = ", or null (all of them)") -> int:
    if value is None:
        return available
    if is_int(value) and value > available:
        fail(path, value, f"{what} has {available} images; give a number <= {available}{others}")
    return int(value)


def _protection_notes(cfg: DictConfig, val: int, explicit: set[str]) -> list[str]:
    notes = []
    for path in PROTECTION_VAL_COUNTS:
        value = OmegaConf.select(cfg, path, default=None)
        if not is_int(value) or value <= val or not _used(cfg, path):
            continue
        if path in explicit:
            fail(path, value, f"the validation split has {val} images; give a number <= {val}, or null (all of them)")
        notes.append(f"{path}={value} (the default of protection={cfg.protection.name}) is more than the {val} "
                     f"validation images: all {val} are used; set {path}=null to say so")
    return notes


def _used(cfg: DictConfig, path: str) -> bool:
    """The setting is read by this job: the protection's search is on, or it is ProAct."""
    if path == "protection.search.images":
        return bool(cfg.protection.get("search", {}).get("enabled", False))
    return cfg.protection.get("name") == "proact"
