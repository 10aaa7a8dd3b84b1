"""Protect a trained model: fold BatchNorm, find and profile its activation sites (ReLU and the other
kinds of activations.py), replace them with bounded activations, and set the bounds (FitAct
post-training, FT-ClipAct search).

The protections themselves are registry entries (registry.py, one module each in protections/)."""
from ..activations import ACTIVATIONS, ActivationKind, register_activation
from .batchnorm import fold_batchnorm
from .bounded import GRANULARITIES, BoundedReLU, reduce_profile
from .profile import profile_activations, profile_ranges
from .registry import PROTECTIONS, Protection, register_protection
from .rewrite import bound_parameters, make_activation, protect_model
from .sites import activation_sites, split_activation_sites

__all__ = ["ACTIVATIONS", "GRANULARITIES", "PROTECTIONS", "ActivationKind", "BoundedReLU", "Protection",
           "activation_sites", "bound_parameters", "fold_batchnorm", "make_activation", "profile_activations",
           "profile_ranges", "protect_model", "reduce_profile", "register_activation", "register_protection",
           "split_activation_sites"]
