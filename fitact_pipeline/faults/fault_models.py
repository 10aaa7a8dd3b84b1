"""The fault-model registry: one name -> one ``FaultModel`` (DESIGN.md §2.1, §2.6).

A fault model builds, for a protected model and the ``faults`` config, an injector whose
``inject(rate, seed, trial)`` applies trial ``trial``'s faults for the duration of a ``with`` block
and whose ``fault_space`` describes what can be hit. The campaign (campaign.py) only uses that
interface (plus ``per_pass``/``begin_batch`` for faults drawn per forward pass), so every fault
model runs in every campaign and pairs across protections the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import nn

from ..checks import check_keys, expect_bool, expect_choice, expect_int, expect_list, expect_str_item, fail
from ..registry import Registry
from .activation import ActivationInjector
from .formats import FORMATS
from .injector import FaultInjector
from .sampler import BitFlips, Bursts, StuckBits
from .space import FaultSpace, check_targets
from .units import AUTO, RATE_UNITS, resolve

#: keys every fault model shares: the stored format and fault space of the parameters, BatchNorm
#: folding, and the activation datapath
COMMON_KEYS = ("model", "fmt", "word_bits", "frac_bits", "targets", "include", "exclude", "fold_batchnorm",
               "datapath")


def injector_kwargs(faults: Mapping) -> dict[str, Any]:
    """FaultInjector's arguments (the stored parameters) from a ``faults`` config node."""
    return {"fmt": faults["fmt"], "word_bits": faults["word_bits"], "frac_bits": faults["frac_bits"],
            "targets": tuple(faults["targets"]), "include": tuple(faults["include"]),
            "exclude": tuple(faults["exclude"])}


@dataclass(frozen=True)
class FaultModel:
    name: str
    build: Callable[[nn.Module, Mapping], Any]  # (model, faults config) -> injector
    summary: str
    config_keys: tuple[str, ...] = ()  # its own keys under `faults`, besides COMMON_KEYS
    persistent: bool = True  # a trial's faults stay for every pass of its evaluation
    rate_axis: str = "fault rate (bit error rate, flips per stored bit)"  # what the rate counts, for figures
    check: Callable[[Mapping], None] = field(default=lambda faults: None)
    rate_units: tuple[str, ...] = ("bit",)  # faults.rate_unit values it honours; the first is its own (auto)

    def unit(self, faults: Mapping) -> str:
        """The rate unit a ``faults`` config means for this model (``auto``: the model's own)."""
        return resolve(faults.get("rate_unit", AUTO), self.rate_units[0])


FAULT_MODELS: Registry[FaultModel] = Registry("fault model")


def _memory(sampler_of: Callable[[Mapping, Any], BitFlips]):
    """A stored-parameter model's builder: ``sampler_of(faults, rate unit entry)``."""
    def build(model: nn.Module, faults: Mapping) -> FaultInjector:
        unit = RATE_UNITS[FAULT_MODELS[faults["model"]].unit(faults)]
        return FaultInjector(model, **injector_kwargs(faults), sampler=sampler_of(faults, unit))
    return build


def _check_unit(faults: Mapping) -> None:
    """faults.rate_unit is one the chosen fault model honours (auto: its own)."""
    entry = FAULT_MODELS[faults["model"]]
    unit = faults.get("rate_unit", AUTO)
    if unit != AUTO and unit not in entry.rate_units:
        fail("faults.rate_unit", unit, f"faults.model={entry.name} honours: " + ", ".join((AUTO, *entry.rate_units)))


def _check_stuck(faults: Mapping) -> None:
    value = faults.get("stuck_value")
    if isinstance(value, bool) or value not in StuckBits.VALUES:
        fail("faults.stuck_value", value, "choose one of: 0, 1, mix")


def _check_burst(faults: Mapping) -> None:
    widths = [FORMATS[faults["fmt"]].codec(faults["word_bits"], faults["frac_bits"]).word_bits]
    expect_int(faults.get("burst_length"), "faults.burst_length", 1, min(widths))


def _activation(model: nn.Module, faults: Mapping) -> ActivationInjector:
    # The weights are the clean stored model, as under every fault model: rounded in place to
    # faults.fmt over the fault space's tensors (docs/faults.md), though no fault hits them.
    stored = FaultSpace.build(model, **injector_kwargs(faults))
    path = faults["datapath"]
    injector = ActivationInjector(model, tuple(faults.get("sites") or ()), path["fmt"], path["word_bits"],
                                  path["frac_bits"])
    injector.stored_format = stored.codec.describe()
    return injector


def _check_activation(faults: Mapping) -> None:
    # whether the patterns match modules is a structure check (structure.py)
    expect_list(faults.get("sites") if faults.get("sites") is not None else [], "faults.sites", expect_str_item)
    if FORMATS[faults["datapath"]["fmt"]].family != "word":
        fail("faults.datapath.fmt", faults["datapath"]["fmt"], "activation faults need a word format: "
             + ", ".join(n for n, f in FORMATS.items() if f.family == "word"))


for _model in (
    FaultModel("memory", _memory(lambda faults, unit: BitFlips(unit)),
               "persistent bit flips in stored parameters, each bit with probability = the rate (rate_unit=word: "
               "each word, one bit of it; toolbox: the authors' tool's count)", rate_units=("bit", "word", "toolbox")),
    FaultModel("stuck_at", _memory(lambda faults, unit: StuckBits(faults["stuck_value"], unit)),
               "permanent stuck-at bits in stored parameters (stuck_value 0, 1 or mix), each bit with probability "
               "= the rate (rate_unit=word: each word, one bit of it); a stuck bit that holds its value already "
               "changes nothing", ("stuck_value",), rate_axis="fault rate (stuck bits per stored bit)",
               check=_check_stuck, rate_units=("bit", "word")),
    FaultModel("burst", _memory(lambda faults, unit: Bursts(faults["burst_length"])),
               "multi-bit upsets: each stored word with probability = the rate (a per-word rate) gets burst_length "
               "adjacent bits flipped", ("burst_length",), rate_axis="fault rate (upsets per stored word)",
               check=_check_burst, rate_units=("word",)),
    FaultModel("activation", _activation,
               "transient bit flips in activation words (datapath format) at chosen sites (default: every conv and "
               "linear output), drawn per (trial, site, image), each bit with probability = the rate; the weights "
               "are stored in faults.fmt",
               ("sites",), persistent=False, rate_axis="fault rate (flips per activation bit, per forward pass)",
               check=_check_activation),
):
    FAULT_MODELS.register(_model.name, _model)

#: ``list``: a CSV fault list replayed instead of sampling (faultlist.py); not in COMMON_KEYS, so that
#: a job without one keeps its identity (identity.py adds the list's content hash when there is one)
FAULTS_KEYS = (COMMON_KEYS + ("rate_unit",) + tuple(k for _, m in FAULT_MODELS.items() for k in m.config_keys)
               + ("list",))


def check_faults_config(faults: Mapping) -> None:
    """A one-line ConfigError for a bad ``faults`` value, before any work: the fault model, the
    formats and the target kinds are checked by their registries, each model's keys by its entry."""
    check_keys(faults, "faults", FAULTS_KEYS)
    FAULT_MODELS.check("faults.model", faults.get("model"))
    _check_unit(faults)
    FORMATS.check("faults.fmt", faults.get("fmt")).check(faults.get("word_bits"), faults.get("frac_bits"))
    targets = expect_list(faults.get("targets"), "faults.targets", expect_str_item)
    check_targets(targets, faults["fmt"])
    for key in ("include", "exclude"):
        expect_list(faults.get(key, []), f"faults.{key}", expect_str_item)
    expect_bool(faults.get("fold_batchnorm", True), "faults.fold_batchnorm")
    if "batchnorm" in targets and faults.get("fold_batchnorm", True):
        fail("faults.targets", "batchnorm", "BatchNorm is folded (faults.fold_batchnorm=true): "
             "set faults.fold_batchnorm=false to put BatchNorm in the fault space")
    _check_datapath(faults.get("datapath"))
    for _, other in FAULT_MODELS.items():  # every model's keys have valid values, used or not
        if all(k in faults for k in other.config_keys):
            other.check(faults)


def _check_datapath(datapath) -> None:
    if not isinstance(datapath, Mapping):
        fail("faults.datapath", datapath, "expected fmt, word_bits and frac_bits of the activation datapath")
    check_keys(datapath, "faults.datapath", ("fmt", "word_bits", "frac_bits"))
    fmt = FORMATS.check("faults.datapath.fmt", datapath.get("fmt"))
    if fmt.family != "word":
        expect_choice(datapath.get("fmt"), "faults.datapath.fmt", [n for n, f in FORMATS.items() if f.family == "word"])
    try:
        fmt.check(datapath.get("word_bits"), datapath.get("frac_bits"))
    except Exception as exc:  # the format names the keys faults.word_bits/frac_bits: point at the datapath's
        raise type(exc)(str(exc).replace("faults.", "faults.datapath.")) from None
