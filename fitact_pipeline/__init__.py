"""FitAct pipeline: bounded activations, post-training and bit-flip fault campaigns.

The Python API (api.py) is importable from here: ``from fitact_pipeline import harden,
measure_resilience``; it loads torch and the stages only when first used, so the command line
starts as before."""

_API = ("harden", "measure_resilience", "vulnerability", "write_fault_list", "Hardened", "Resilience")


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'fitact_pipeline' has no attribute {name!r}")


__all__ = list(_API)
