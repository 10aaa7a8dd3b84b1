"""Protect a trained model: fold BatchNorm, find and profile its activation sites, replace them with
bounded activations, and set the bounds (FitAct post-training, FT-ClipAct search).

The protections themselves are registry entries (registry.py, one module each in protections/)."""
from .batchnorm import fold_batchnorm
from .bounded import GRANULARITIES, BoundedReLU, reduce_profile
from .profile import profile_activations
from .registry import PROTECTIONS, Protection, register_protection
from .rewrite import bound_parameters, make_activation, protect_model
from .sites import activation_sites, split_activation_sites

__all__ = ["GRANULARITIES", "PROTECTIONS", "BoundedReLU", "Protection", "activation_sites", "bound_parameters",
           "fold_batchnorm", "make_activation", "profile_activations", "protect_model", "reduce_profile", "register_protection",
           "split_activation_sites"]
