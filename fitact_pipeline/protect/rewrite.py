"""Site rewriting: replace every activation site of a trained model with the bounded activation of
a protection (DESIGN.md §2.2, §2.8).

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

from ..activations import kind_of
from .bounded import BoundedReLU, check_granularity, reduce_profile
from .registry import PROTECTIONS, Protection
from .sites import check_supported, split_activation_sites


def protect_model(model: nn.Module, protection: str, granularity: str | None = None,
                  profile: dict[str, torch.Tensor] | None = None, *, bounds=None,
                  lower: dict[str, torch.Tensor] | None = None, site_granularity: dict[str, str] | None = None,
                  **options) -> nn.Module:
    """Replace every activation site with the bounded activation of ``protection``; returns the model.

    The bound of a site is ``profile[site]`` reduced to ``granularity`` (default: the protection's
    own; a protection may set some sites' own, ProAct's last site is neuron-wise) by a max; a site whose activation kind is unbounded below (LeakyReLU, PReLU, ELU) also
    gets the lower bound ``lower[site]`` (the profiled minima, ``profile_ranges``) reduced by a min.
    A protection with given bounds (GBReLU) takes ``bounds`` instead: a float for every site, or a
    dict site -> float that protects only the sites it names, at layer granularity.
    ``site_granularity`` {site: granularity} overrides both for the sites it names (a protection
    chosen from a vulnerability map: protect/map_choice.py).
    ``options`` go to the activation's constructor (FitAct: ``k``, ``hard``; all: ``fused``).
    """
    entry = PROTECTIONS[protection]
    granularity = check_granularity(granularity or entry.default_granularity)
    check_supported(model)
    model = split_activation_sites(model)
    if entry.activation is None:
        return model
    sites = [n for n, m in model.named_modules() if n and kind_of(m) is not None and not isinstance(m, BoundedReLU)]
    per_site = {s: granularity for s in sites}
    per_site.update({s: check_granularity(g) for s, g in entry.site_granularity(sites, granularity).items()})
    unknown = sorted(set(site_granularity or {}) - set(sites))
    if unknown:
        raise ValueError(f"site_granularity names {unknown}, which are not activation sites; sites: {sites}")
    per_site.update({s: check_granularity(g) for s, g in (site_granularity or {}).items()})
    site_bounds = _site_bounds(entry, sites, per_site, profile, bounds)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for site, bound in site_bounds.items():
        module = model.get_submodule(site)
        g = "layer" if entry.given_bounds else per_site[site]
        kind = {} if kind_of(module).name == "relu" else \
            {"activation": module, "lower": _lower_bound(site, kind_of(module), lower, g)}
        act = make_activation(protection, bound.to(device), g, inplace=getattr(module, "inplace", False),
                              **kind, **options)
        model.set_submodule(site, act.to(device))
    return model


def _lower_bound(site: str, kind, lower, granularity: str) -> torch.Tensor | None:
    if not kind.lower:
        return None
    if lower is None or site not in lower:
        raise ValueError(f"site {site!r} ({kind.name}) needs a lower bound: pass lower= (the minima of profile_ranges)")
    return reduce_profile(lower[site], granularity, lower=True)


def make_activation(protection: str, bound, granularity: str | None = None, **options) -> nn.Module:
    """The bounded activation of ``protection`` with an already reduced ``bound`` (every one takes
    ``bound, granularity, inplace, fused``; FitAct also ``k, hard``, by default the hard inference
    form; for a non-ReLU site ``activation=<its module>`` and, where its kind has one, ``lower``)."""
    entry = PROTECTIONS[protection]
    if entry.activation is None:
        raise ValueError(f"protection {protection!r} has no bounded activation")
    return entry.activation(bound, granularity or entry.default_granularity, **{**entry.defaults, **options})


def _site_bounds(entry: Protection, sites: list[str], granularity: dict[str, str], profile, bounds
                 ) -> dict[str, torch.Tensor]:
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
    return {s: reduce_profile(profile[s], granularity[s]) for s in sites}


def bound_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """site name -> its ``bound`` parameter, for every bounded activation in the model (lower bounds:
    ``BoundedReLU.bound_tensors()``)."""
    return {n: m.bound for n, m in model.named_modules() if isinstance(m, BoundedReLU)}
