"""Config values that depend on the model's structure, checked on a skeleton before any work: the
model is built (random weights), BatchNorm folded, sites profiled on two blank images and the
protection applied, as the job will; then the fault-space patterns, the chosen sites and the
profiled site are checked against the tensor and site names that job will have."""
from __future__ import annotations

import fnmatch

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .cache import config_hash
from .checks import fail
from .registry import ConfigError


def structure_key(cfg: DictConfig) -> str:
    """What the structure check depends on (sweep jobs that share it are checked once)."""
    parts = {"model": cfg.model, "dataset": cfg.dataset.get("_target_"), "root": cfg.dataset.get("root"),
             "grayscale": cfg.dataset.get("grayscale"), "protection": cfg.protection,
             "faults": cfg.faults, "profile_site": cfg.get("profile_site")}
    return config_hash(OmegaConf.to_container(OmegaConf.create(parts), resolve=True))


def skeleton(cfg: DictConfig):
    """(datamodule, protected model skeleton): random weights, the job's names and sites."""
    from .models import model_from_config, model_tag
    from .protect import PROTECTIONS, fold_batchnorm, profile_ranges, protect_model

    datamodule = instantiate(cfg.dataset)  # reads no images
    # a source model loads its weights here: a file that does not match is refused before any work
    model = model_from_config(cfg.model, datamodule.num_classes, datamodule.in_channels, cfg.seed).eval()
    if cfg.faults.fold_batchnorm:
        fold_batchnorm(model)
    size = datamodule.image_size
    try:
        profile, lower = profile_ranges(model, torch.zeros(2, datamodule.in_channels, size, size))
    except ConfigError:
        raise
    except (RuntimeError, AssertionError, ValueError) as exc:  # e.g. a ViT built for another image size
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model {model_tag(cfg.model)} cannot run on the dataset's {datamodule.in_channels}x{size}x"
                          f"{size} images: {reason}") from None
    entry = PROTECTIONS[cfg.protection.name]
    try:
        options = entry.options(cfg.protection, list(profile))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    protected = protect_model(model, entry.name, cfg.protection.get("granularity"), profile, lower=lower, **options)
    return datamodule, protected, profile


def check_structure(cfg: DictConfig) -> None:
    from .faults.space import select_tensors
    from .protect.sites import select_sites

    _, model, profile = skeleton(cfg)
    if cfg.get("profile_site") is not None:
        try:
            select_sites(list(profile), [cfg.profile_site], "profile_site")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    faults = cfg.faults
    if faults.model == "activation":
        _check_activation_sites(model, list(faults.sites or ()))
    kinds = {t for t in faults.targets if t != "scale"}
    names = [name for name, *_ in select_tensors(model, kinds, (), ())]
    for pattern in faults.include:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            fail("faults.include", pattern, f"the pattern matches no tensor of targets {list(faults.targets)}; "
                 f"names look like: {', '.join(names[:4])}")
    if not select_tensors(model, kinds, tuple(faults.include), tuple(faults.exclude)):
        fail("faults.exclude", list(faults.exclude), "it leaves an empty fault space")
    if faults.get("list") is not None:  # the list's tensors, indices and bits against the job's fault space
        from .faults import FAULT_MODELS
        from .faults.faultlist import replay

        replay(FAULT_MODELS[faults.model].build(model, OmegaConf.to_container(faults, resolve=True)), faults)


def _check_activation_sites(model, patterns: list[str]) -> None:
    from .faults.activation import select_sites

    names = [n for n, _ in model.named_modules() if n]
    for pattern in patterns:
        if not select_sites(model, [pattern]):
            fail("faults.sites", pattern, f"the pattern matches no module; names look like: {', '.join(names[:5])}")
