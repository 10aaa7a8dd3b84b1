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
from .faults import FAULT_MODELS
from .faults.activation import select_sites as select_activation_sites
from .faults.campaign import as_rate_list
from .faults.conditioned_campaign import check_conditioned_counts
from .faults.faultlist import replay
from .faults.space import select_tensors
from .models import model_from_config, model_tag
from .protect import profile_ranges
from .protect.sites import select_sites
from .protect.weights import WEIGHT_PROTECTIONS
from .recipe import prepare
from .registry import ConfigError


def structure_key(cfg: DictConfig) -> str:
    """What the structure check depends on (sweep jobs that share it are checked once)."""
    parts = {"model": cfg.model, "dataset": cfg.dataset.get("_target_"), "root": cfg.dataset.get("root"),
             "grayscale": cfg.dataset.get("grayscale"), "protection": cfg.protection,
             "faults": cfg.faults, "profile_site": cfg.get("profile_site"),
             "weight_protection": cfg.get("weight_protection")}
    if cfg.campaign.get("design") == "conditioned":  # its count windows depend on the rates
        parts["campaign"] = {k: cfg.campaign.get(k) for k in ("design", "rates", "adaptive")}
    return config_hash(OmegaConf.to_container(OmegaConf.create(parts), resolve=True))


def skeleton(cfg: DictConfig):
    """(datamodule, protected model skeleton, profile): random weights, the job's names and sites,
    made by the recipe every job runs (recipe.py), profiled on two blank images."""
    datamodule = instantiate(cfg.dataset)  # reads no images
    # a source model loads its weights here: a file that does not match is refused before any work
    model = model_from_config(cfg.model, datamodule.num_classes, datamodule.in_channels, cfg.seed).eval()
    size = datamodule.image_size

    def blank_profile(net: torch.nn.Module):
        try:
            return profile_ranges(net, torch.zeros(2, datamodule.in_channels, size, size))
        except ConfigError:
            raise
        except (RuntimeError, AssertionError, ValueError) as exc:  # e.g. a ViT built for another image size
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"model {model_tag(cfg.model)} cannot run on the dataset's {datamodule.in_channels}x"
                              f"{size}x{size} images: {reason}") from None

    try:
        prepared = prepare(model, cfg.protection, blank_profile, fold=cfg.faults.fold_batchnorm)
    except ConfigError:
        raise
    except ValueError as exc:  # a protection's options refused for this model (e.g. GBReLU's sites)
        raise ConfigError(str(exc)) from None
    return datamodule, prepared.protected, prepared.profile


def check_structure(cfg: DictConfig) -> None:
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
        replay(FAULT_MODELS[faults.model].build(model, OmegaConf.to_container(faults, resolve=True)), faults)
    if cfg.campaign.get("design") == "conditioned":
        _check_conditioned_counts(model, cfg)


def _check_conditioned_counts(model, cfg: DictConfig) -> None:
    """The conditioned design's count windows on the job's fault space (the protection's bounds and
    the weight protection's words included): a rate it cannot measure is refused here, not after
    the job trained, profiled and post-trained."""
    weights = cfg.get("weight_protection") or {"name": "none"}
    WEIGHT_PROTECTIONS[weights["name"]].protect(model, weights)
    injector = FAULT_MODELS[cfg.faults.model].build(model, OmegaConf.to_container(cfg.faults, resolve=True))
    campaign = cfg.campaign
    adaptive = OmegaConf.to_container(campaign.adaptive, resolve=True) if campaign.adaptive.enabled else None
    try:
        check_conditioned_counts(injector, as_rate_list(campaign.rates), adaptive)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_activation_sites(model, patterns: list[str]) -> None:
    names = [n for n, _ in model.named_modules() if n]
    for pattern in patterns:
        if not select_activation_sites(model, [pattern]):
            fail("faults.sites", pattern, f"the pattern matches no module; names look like: {', '.join(names[:5])}")
