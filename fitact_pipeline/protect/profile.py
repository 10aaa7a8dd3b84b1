"""Profiling: the per-neuron maximum of every activation site over a set of images (DESIGN.md §2.2),
which initialises every bound; and, for sites whose activation is unbounded below (LeakyReLU, PReLU,
ELU: docs/protections.md), the per-neuron minimum, which initialises their lower bound."""
from __future__ import annotations

import torch
from torch import nn

from ..activations import kind_of
from .sites import check_supported, is_site, split_activation_sites


def _batches(loader):
    if torch.is_tensor(loader):  # a tensor is one batch
        yield loader
        return
    for batch in loader:
        yield batch[0] if isinstance(batch, (list, tuple)) else batch


class _MaxRecorder:
    """Forward hooks that keep the running per-neuron max of each site (and the min of the sites
    in ``lower``) and count its calls."""

    def __init__(self, sites: dict[str, nn.Module], lower: set[str]):
        self.maxima: dict[str, torch.Tensor] = {}
        self.minima: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self.handles = [m.register_forward_hook(self._hook(n, n in lower)) for n, m in sites.items()]

    def _hook(self, name, lower: bool):
        def fn(_m, _inp, out):
            self.calls[name] = self.calls.get(name, 0) + 1
            m = out.detach().amax(dim=0).float()  # over the batch dimension only
            self.maxima[name] = m if name not in self.maxima else torch.maximum(self.maxima[name], m)
            if lower:
                m = out.detach().amin(dim=0).float()
                self.minima[name] = m if name not in self.minima else torch.minimum(self.minima[name], m)
        return fn

    def reused(self) -> list[str]:
        return sorted(n for n, c in self.calls.items() if c > 1)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def profile_activations(model: nn.Module, loader, num_images: int | None = None) -> dict[str, torch.Tensor]:
    """Per-neuron maximum of every activation site's output over ``num_images`` images from ``loader``.

    The maximum is over the batch dimension only: the result for a site with output ``(N, C, H, W)``
    has shape ``(C, H, W)`` (``(F,)`` for ``(N, F)``). ``loader`` yields ``(images, labels)`` or
    images (a tensor also works: it is treated as one batch). Runs in eval mode and restores the
    mode. Keys are the site names of ``split_activation_sites(model)``.
    """
    return profile_ranges(model, loader, num_images)[0]


@torch.no_grad()
def profile_ranges(model: nn.Module, loader, num_images: int | None = None
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(maxima, minima): ``profile_activations``' maxima of every site, and the per-neuron minima
    of the sites whose activation kind has a lower bound (empty for a ReLU model)."""
    check_supported(model)
    net = split_activation_sites(model)
    sites = {n: m for n, m in net.named_modules() if is_site(m) and n}
    if not sites:
        raise ValueError("model has no activation sites to profile")
    recorder = _MaxRecorder(sites, {n for n, m in sites.items() if kind_of(m).lower})
    was_training = net.training
    net.eval()
    try:
        seen = _run(net, loader, num_images, recorder, getattr(model, "_fitact_untraceable", ""))
    finally:
        recorder.remove()
        net.train(was_training)
    if seen == 0:
        raise ValueError("profiling saw no images")
    never = [n for n in sites if n not in recorder.maxima]
    if never:
        raise ValueError(f"activation sites never called during profiling: {', '.join(never)}")
    return {n: recorder.maxima[n].cpu() for n in sites}, \
        {n: recorder.minima[n].cpu() for n in sites if n in recorder.minima}


def _run(net: nn.Module, loader, num_images: int | None, recorder: _MaxRecorder, untraceable: str) -> int:
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    seen = 0
    for x in _batches(loader):
        if num_images is not None:
            if seen >= num_images:
                break
            x = x[: num_images - seen]
        recorder.calls.clear()
        net(x.to(device))
        reused = recorder.reused()
        if reused:  # a module called twice in one forward would need two bounds
            raise ValueError(f"activation modules called at several sites cannot be split (model not "
                             f"traceable by torch.fx{': ' + untraceable if untraceable else ''}): {', '.join(reused)}")
        seen += x.shape[0]
    return seen
