"""Prefix reuse: start a faulted pass at the first faulted stage, from cached clean activations.

A map with few faults leaves every layer before its first faulted tensor computing what the clean
model computes. The model is cut into stages at points where a single value carries everything the
rest of the pass needs; the clean input of every stage is cached once for the image pool, and a
faulted pass on some pool images starts at the stage that holds the map's first faulted tensor
(bounds included: a bound belongs to its activation's stage).

Where the cuts are:
- a chain model (``nn.Sequential``, nested ones flattened: small_cnn, the VGGs, AlexNet): between
  its modules;
- any other model torch.fx can trace (the ResNets' blocks, torchvision's MobileNets): after every
  node of the traced graph where exactly one value is live (a residual block's input stays live
  until its addition, so the cuts fall on block boundaries). Layers that hold tensors (convs,
  linears, protections' activations) are leaves of the trace; a model fx cannot trace runs full
  passes.
With the fault space's tensors given, a stage holding none of them is merged into the one before
(no map starts there); if the cache would exceed ``MAX_CACHE_BYTES``, the cut whose loss costs the
least (single-fault share of its stage x the compute it skips) is dropped until it fits.

Per-image predictions are those of a full pass up to float rounding of batch composition (the prefix
is computed in the pool's batches): ``benchmarks/conditioned_validation.py`` counts the trials whose
accuracy differs. ``ideal_saving`` is the share of a full pass's multiply-accumulates that a start at
stage s skips.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import fx, nn

from ..evaluate import eval_mode, float32_inference, predict_rows
from ..layer_types import hooked_forward

log = logging.getLogger(__name__)

#: at most this many bytes of cached activations; cuts are dropped until the cache fits
MAX_CACHE_BYTES = 2 * 1024 ** 3


@dataclass
class Stage:
    """A piece of the forward pass: ``module`` maps the stage's input to the next stage's;
    ``owns`` are the dotted names of the modules and attributes it reads."""
    owns: tuple[str, ...]
    module: nn.Module

    def holds(self, tensor_name: str) -> bool:
        return any(tensor_name == o or tensor_name.startswith(o + ".") for o in self.owns)


def chain(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """(dotted name, module) of the stages of a chain model, nested Sequentials flattened; None if
    the model is not a chain."""
    if not isinstance(model, nn.Sequential):
        return None
    stages = []
    for name, child in model.named_children():
        inner = chain(child)
        stages += [(f"{name}.{n}", m) for n, m in inner] if inner is not None else [(name, child)]
    return stages


def stages_of(model: nn.Module) -> list[Stage] | None:
    """The model cut into stages (a chain's modules, else the traced graph's single-value cuts);
    None where neither applies."""
    links = chain(model)
    if links is not None:
        return [Stage((name,), module) for name, module in links]
    return traced_stages(model)


class _LayerTracer(fx.Tracer):
    """torch.nn's layers and every module that holds tensors of its own and no children (a
    protection's activation) are leaves; containers and blocks are traced through."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        own = next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None
        return super().is_leaf_module(m, qualname) or (own and next(m.children(), None) is None)


def traced_stages(model: nn.Module) -> list[Stage] | None:
    """Stages between the single-value cuts of the model's fx graph; None if fx cannot trace it or
    the graph has not one input and one tensor output."""
    try:
        graph = _LayerTracer().trace(model)
    except Exception as err:  # any tracing failure (data-dependent control flow, ...): full passes
        log.info("prefix reuse off: %s cannot be traced by torch.fx (%s)", type(model).__name__, err)
        return None
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    result = nodes[-1].args[0] if nodes[-1].op == "output" else None
    if len(inputs) != 1 or not isinstance(result, fx.Node):
        return None
    cuts = _single_value_cuts(nodes)
    if not cuts or cuts[0] != 0 or nodes[cuts[-1]] is not result:
        return None
    return [_segment(model, nodes, lo, hi) for lo, hi in zip(cuts, cuts[1:])]


def _single_value_cuts(nodes: list[fx.Node]) -> list[int]:
    """Positions of the nodes after which exactly that node's value is live (parameters fetched by
    get_attr are re-fetched, not carried)."""
    pos = {n: i for i, n in enumerate(nodes)}
    last = {n: max((pos[u] for u in n.users), default=pos[n]) for n in nodes}
    live: set[fx.Node] = set()
    cuts = []
    for i, node in enumerate(nodes):
        if node.op in ("get_attr", "output"):
            continue
        live = {m for m in live if last[m] > i}
        if last[node] > i:
            live.add(node)
        if live == {node}:
            cuts.append(i)
    return cuts


def _segment(model: nn.Module, nodes: list[fx.Node], lo: int, hi: int) -> Stage:
    """The graph from the value at ``lo`` (its input) to the value at ``hi`` (its output) as a module
    sharing the model's layers and tensors (faults written into them reach it)."""
    graph = fx.Graph()
    env = {nodes[lo]: graph.placeholder("x")}
    owns: list[str] = []

    def arg(node: fx.Node) -> fx.Node:
        if node not in env:  # a parameter or buffer fetched before the cut: fetch it again here
            if node.op != "get_attr":
                raise RuntimeError(f"prefix reuse: {node} is live across a cut")
            env[node] = graph.get_attr(node.target)
            owns.append(node.target)
        return env[node]

    for node in nodes[lo + 1:hi + 1]:
        if node.op == "get_attr":
            continue  # fetched where it is used
        env[node] = graph.node_copy(node, arg)
        if node.op == "call_module":
            owns.append(node.target)
    graph.output(env[nodes[hi]])
    return Stage(tuple(owns), fx.GraphModule(model, graph))


class PrefixCache:
    """The clean input of every stage for the pool images (kept on the pool's device)."""

    def __init__(self, stages: list[Stage], images: torch.Tensor, batch_size: int):
        self.stages = stages
        self.batch_size = batch_size
        with eval_mode(nn.ModuleList([st.module for st in stages])), torch.inference_mode(), float32_inference(images.device):
            parts = [[] for _ in self.stages]
            for start in range(0, len(images), batch_size):
                x = images[start:start + batch_size].float()
                for i, stage in enumerate(self.stages):
                    parts[i].append(x.clone())  # in-place activations would overwrite it
                    x = stage.module(x)
            self.inputs = [torch.cat(p) for p in parts]
        self.macs = [_macs(st.module, x[:1]) for st, x in zip(self.stages, self.inputs)]

    @classmethod
    def build(cls, model: nn.Module, images: torch.Tensor, batch_size: int,
              tensor_bits: dict[str, int] | None = None) -> "PrefixCache | None":
        """A cache, or None where prefix reuse does not apply (no cuts). ``tensor_bits``: the fault
        space's bits per tensor name, to merge stages no fault can start in and to choose which
        cuts to drop when the cache would not fit."""
        stages = stages_of(model)
        if stages is None:
            return None
        if tensor_bits:
            stages = _merged_fault_free(stages, tensor_bits)
        probe = cls(stages, images[:1], 1)
        per_image = [t.numel() * t.element_size() for t in probe.inputs]
        macs = list(probe.macs)
        share = _fault_shares(stages, tensor_bits)
        while len(stages) > 1 and sum(per_image) * len(images) > MAX_CACHE_BYTES:
            # dropping the cut before stage j: maps starting at j start at j - 1, paying its work
            j = min(range(1, len(stages)), key=lambda i: share[i] * macs[i - 1])
            stages[j - 1:j + 1] = [_joined(stages[j - 1], stages[j])]
            macs[j - 1:j + 1], share[j - 1:j + 1] = [macs[j - 1] + macs[j]], [share[j - 1] + share[j]]
            del per_image[j]
        if len(stages) == 1:
            return None
        return cls(stages, images, batch_size)

    def stage_of(self, tensor_name: str) -> int:
        return first_reader(self.stages, tensor_name)

    def first_stage(self, fault_map) -> int:
        if len(fault_map) == 0:
            return len(self.stages)
        used = torch.unique(fault_map.field_idx).tolist()
        return min(self.stage_of(fault_map.names[i].split(":")[0]) for i in used)

    def predictions(self, start: int, ids: torch.Tensor) -> torch.Tensor:
        """Per image of ``ids`` (pool indices): the top-1 class (evaluate.predict_rows: MISS for a
        non-finite logit) with the model as it is now (faulted), starting at stage ``start`` from the
        cached clean input of that stage."""
        parts = []
        with torch.inference_mode(), float32_inference(self.inputs[0].device):
            for begin in range(0, len(ids), self.batch_size):
                x = self.inputs[start][ids[begin:begin + self.batch_size].to(self.inputs[start].device)]
                for stage in self.stages[start:]:
                    x = stage.module(x)
                parts.append(predict_rows(x.float()).cpu())
        return torch.cat(parts)

    def correct(self, start: int, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per image of ``ids``: right (``predictions`` equal to its label)."""
        return self.predictions(start, ids) == labels.cpu()

    def ideal_saving(self, start: int) -> float:
        """Share of a full pass's multiply-accumulates (conv and linear) before stage ``start``."""
        total = sum(self.macs)
        return sum(self.macs[:start]) / total if total else 0.0


def first_reader(stages: list[Stage], tensor_name: str) -> int:
    """The first stage reading a tensor (a module it calls, or the attribute itself); 0 for a tensor
    outside every stage (a pass that starts at the beginning)."""
    return next((i for i, stage in enumerate(stages) if stage.holds(tensor_name)), 0)


def space_bits(space) -> dict[str, int]:
    """Bits per tensor of a fault space (a tensor's scales count with it: ``name:scale`` rows)."""
    bits: dict[str, int] = {}
    for field in space.fields:
        name = field.name.split(":")[0]
        bits[name] = bits.get(name, 0) + field.numel * field.bits
    return bits


def _merged_fault_free(stages: list[Stage], tensor_bits: dict[str, int]) -> list[Stage]:
    """Each stage after the first that reads no tensor of the fault space joined to the one before."""
    out = [stages[0]]
    for stage in stages[1:]:
        if any(stage.holds(name) for name in tensor_bits):
            out.append(stage)
        else:
            out[-1] = _joined(out[-1], stage)
    return out


def _fault_shares(stages: list[Stage], tensor_bits: dict[str, int] | None) -> list[float]:
    """Share of the fault space's bits whose tensor is first read in each stage (where a single
    fault starts); equal shares without a fault space."""
    if not tensor_bits:
        return [1.0 / len(stages)] * len(stages)
    share = [0.0] * len(stages)
    for name, bits in tensor_bits.items():
        share[first_reader(stages, name)] += bits
    total = sum(share) or 1.0
    return [b / total for b in share]


def _joined(a: Stage, b: Stage) -> Stage:
    return Stage(a.owns + b.owns, nn.Sequential(a.module, b.module))


def _macs(module: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of conv and linear layers in ``module`` for one input."""
    count = 0

    def hook(mod, inputs, output):
        nonlocal count
        if isinstance(mod, nn.modules.conv._ConvNd):
            count += output[0].numel() * mod.weight[0].numel()
        elif isinstance(mod, nn.Linear):
            count += output[0].numel() * mod.in_features

    hooked_forward(module, x, [m for m in module.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))],
                   hook, mode=torch.inference_mode)
    return count
