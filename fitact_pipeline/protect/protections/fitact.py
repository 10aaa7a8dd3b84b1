"""FitAct (Mousavi et al., DATE 2022): a neuron-wise trainable bound, post-trained with every weight
frozen (posttrain.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...configs import group_config
from ...registry import ConfigError
from ..bounded import BoundedReLU
from ..registry import Protection, register_protection


class FitReLU(BoundedReLU):
    """FitReLU (Eq. 6): f(x) = max(0, x) * sigmoid(k * (b - x)), trainable bound.

    ``hard=True`` uses FitReLU-Naive (Eq. 5), x if 0 <= x <= b else 0, the inference form; the
    smooth form gives the bound a gradient and is what post-training uses (it switches ``hard``
    off while training and back for validation). Other kinds (``activation=``): g(x) sigmoid(k (b - g))
    [x sigmoid(k (g - a)) where g has a lower bound a], hard form g(x) if a <= g(x) <= b else 0.
    """

    trainable = True

    def __init__(self, bound, granularity: str = "neuron", k: float = 20.0, hard: bool = False,
                 inplace: bool = False, fused: bool = False, **kind):
        super().__init__(bound, granularity, inplace, fused, **kind)
        self.k = float(k)
        self.hard = bool(hard)

    def forward(self, x):
        if self.hard:
            return self._clip(x)
        if not self._is_relu:
            return self._smooth_kind(x, self.k)
        # sanitise first: inf * sigmoid(-inf) = inf * 0 = NaN, and a NaN in the unselected branch of
        # a torch.where would still poison the bound's gradient
        x = torch.where(torch.isfinite(x), x, 0.0)
        y = F.relu(x)
        return y * torch.sigmoid(self.k * (self.bound - y))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", k={self.k}, hard={self.hard}"


def set_fitrelu_hard(model: nn.Module, hard) -> dict[str, bool]:
    """Set ``hard`` on every FitReLU (bool, or a dict name -> bool); return the previous flags."""
    old = {}
    for name, m in model.named_modules():
        if isinstance(m, FitReLU):
            old[name] = m.hard
            m.hard = hard[name] if isinstance(hard, dict) else bool(hard)
    return old


def _options(cfg, sites) -> dict:
    return {"fused": bool(cfg.get("fused", False)), "k": cfg["k"], "hard": cfg["hard"]}


def _check(cfg) -> None:
    check_fitrelu(cfg)
    if not isinstance(cfg.get("posttrain", True), bool):
        raise ConfigError(f"protection.posttrain={cfg.get('posttrain')!r} is not allowed; expected true (post-train "
                          "the bounds) or false (keep the profiled maxima: the ablation without post-training)")


def check_fitrelu(cfg) -> None:
    """FitReLU's own settings (FitAct and ProAct both deploy it)."""
    k = cfg.get("k")
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not k > 0:
        raise ConfigError(f"protection.k={k!r} is not allowed; FitReLU's slope must be a positive number")
    if not isinstance(cfg.get("hard"), bool):
        raise ConfigError(f"protection.hard={cfg.get('hard')!r} is not allowed; expected true (FitReLU-Naive at "
                          "inference) or false (smooth)")


def _smooth(params) -> bool:
    return params.get("protection.hard") == "False"


def _label(params) -> str:
    """" smooth", " no post-training", and post-training settings other than the defaults."""
    label = " smooth" if _smooth(params) else ""
    if params.get("protection.posttrain") == "False":
        return label + " no post-training"
    return label + settings_label(params)


#: the post-training variants (docs/protections.md): a run's curve label names those not at their
#: default (conf/posttrain/default.yaml); an experiment's own schedule (epochs, lr, ...) is no variant
VARIANT_KEYS = ("penalty", "fault_rate", "fault_weight")


def settings_label(params) -> str:
    """`` (post-training penalty=sum, fault_rate=1e-05)``: the run's post-training variant settings
    that differ from the defaults, from its MLflow params (strings)."""
    defaults = group_config("posttrain", "default")

    def same(value: str, default) -> bool:
        try:
            return float(value) == float(default)
        except (TypeError, ValueError):
            return value == str(default)

    diff = [f"{k}={params[f'posttrain.{k}']}" for k in VARIANT_KEYS
            if f"posttrain.{k}" in params and not same(params[f"posttrain.{k}"], defaults[k])]
    return f" (post-training {', '.join(diff)})" if diff else ""


def _posttrains(cfg) -> bool:
    return bool(cfg.get("posttrain", True))


register_protection(Protection(
    "fitact", FitReLU, "smooth max(0, x) * sigmoid(k (b - x)) to train b (other g: g sigmoid(k (b - g)) "
    "sigmoid(k (g - a))); hard (inference) as clipact",
    config_keys=("granularity", "k", "hard", "fused", "posttrain"), bounds_stage="posttrain",
    stage_enabled=_posttrains, default_granularity="neuron", order=40, options=_options, check=_check,
    defaults={"hard": True}, label=_label,
    inference_form=lambda params: "FitReLU (smooth)" if _smooth(params) else "FitReLU-Naive (hard)"))
