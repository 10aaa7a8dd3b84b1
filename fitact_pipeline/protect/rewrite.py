"""Site rewriting: replace every ReLU site of a trained model with the bounded activation of a
protection (DESIGN.md §2.2).

Order of use (stages.py)::

    fold_batchnorm(model)                                   # what a deployed model stores
    profile = profile_activations(model, loader, num_images)
    model = protect_model(model, "fitact", "neuron", profile)

``protect_model`` splits reused modules and functional relu calls into sites of their own first
(sites.py), so always use the model it returns (a ``torch.fx.GraphModule`` when it had to split).
Every other parameter keeps its qualified name, which is what pairs fault maps across protections.
"""
from __future__ import annotations

import torch
from torch import nn

from .bounded import BoundedReLU, check_granularity, reduce_profile
from .registry import PROTECTIONS, Protection
from .sites import check_supported, split_activation_sites


def protect_model(model: nn.Module, protection: str, granularity: str | None = None,
                  profile: dict[str, torch.Tensor] | None = None, *, bounds=None, **options) -> nn.Module:
    """Replace every ReLU site with the bounded activation of ``protection``; returns the model.

    The bound of a site is ``profile[site]`` reduced to ``granularity`` (default: the protection's
    own) by a max. A protection with given bounds (GBReLU) takes ``bounds`` instead: a float for
    every site, or a dict site -> float that protects only the sites it names, at layer granularity.
    ``options`` go to the activation's constructor (FitAct: ``k``, ``hard``; all: ``fused``).
    """
    entry = PROTECTIONS[protection]
    granularity = check_granularity(granularity or entry.default_granularity)
    check_supported(model)
    model = split_activation_sites(model)
    if entry.activation is None:
        return model
    site_bounds = _site_bounds(entry, [n for n, m in model.named_modules() if isinstance(m, nn.ReLU) and n],
                               granularity, profile, bounds)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    granularity = "layer" if entry.given_bounds else granularity
    for site, bound in site_bounds.items():
        act = make_activation(protection, bound.to(device), granularity, inplace=model.get_submodule(site).inplace,
                              **options)
        model.set_submodule(site, act.to(device))
    return model


def make_activation(protection: str, bound, granularity: str | None = None, **options) -> nn.Module:
    """The bounded activation of ``protection`` with an already reduced ``bound`` (every one takes
    ``bound, granularity, inplace, fused``; FitAct also ``k, hard``, by default the hard inference form)."""
    entry = PROTECTIONS[protection]
    if entry.activation is None:
        raise ValueError(f"protection {protection!r} has no bounded activation")
    return entry.activation(bound, granularity or entry.default_granularity, **{**entry.defaults, **options})


def _site_bounds(entry: Protection, sites: list[str], granularity: str, profile, bounds) -> dict[str, torch.Tensor]:
    """{site: bound tensor} of the sites the protection bounds."""
    if entry.given_bounds:
        if bounds is None:
            raise ValueError(f"protection {entry.name!r} needs bounds (a float or a dict site -> float)")
        if isinstance(bounds, dict):  # only the named sites; the others stay ReLU
            return {s: torch.as_tensor(float(bounds[s])) for s in sites if s in bounds}
        return {s: torch.as_tensor(float(bounds)) for s in sites}
    if profile is None:
        raise ValueError(f"protection {entry.name!r} needs an activation profile")
    missing = [s for s in sites if s not in profile]
    if missing:
        raise ValueError(f"profile has no entry for activation sites: {', '.join(missing)}")
    return {s: reduce_profile(profile[s], granularity) for s in sites}


def bound_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """site name -> its ``bound`` parameter, for every bounded activation in the model."""
    return {n: m.bound for n, m in model.named_modules() if isinstance(m, BoundedReLU)}
