"""Module types that more than one stage recognises (BatchNorm folding, the fault space, sites), and
one forward pass watched by hooks (the stages that trace a model: prefix reuse, ProAct's site order)."""
from typing import Callable, Iterable

import torch
from torch import nn

#: layers whose weight and bias are the stored parameters of the fault space, and that BatchNorm folds into
CONV_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def hooked_forward(model: nn.Module, x: torch.Tensor, watched: Iterable[nn.Module], hook: Callable,
                   mode: Callable = torch.no_grad) -> None:
    """One forward pass of ``model`` on ``x`` without autograd (``mode``: torch.no_grad, or
    torch.inference_mode for inputs made under it), ``hook(module, inputs, output)`` called after
    each ``watched`` module; the hooks are removed whatever happens."""
    handles = [m.register_forward_hook(hook) for m in watched]
    try:
        with mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
