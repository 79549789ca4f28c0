"""Structured pruning of the class-conditional U-Net with torch-pruning's dependency graph (FedPhD).

One step of ``MetaPruner`` with group magnitude importance (p = 2; torch-pruning 1.6's name for the
``GroupNormImportance`` of FedPhD's code) at a ratio per group; GroupNorm's groups are kept whole, so a layer loses
the same number of channels from every group. Left whole: ``conv_out`` (the output must stay RGB), the class
embedding, and the attention's inner width (the outputs of to_q / to_k / to_v: the heads keep their size; the
projections' inputs and to_out's output follow the residual channels). After pruning, Up/Downsample blocks are told
their new channel counts (they check them in forward).

A pruned U-Net cannot reload through ``from_pretrained`` (its config names the old widths): the **plan** (torch-
pruning's pruning history: which channels each layer lost, JSON-serialisable) rebuilds it from the unpruned
architecture, on the server and on every client.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import torch
import torch_pruning as tp
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import Downsample2D, Upsample2D
from torch import nn

Plan = list
"""torch-pruning's pruning history: [[layer name, output channels?, [channel indices]], ...]."""


def example_inputs(model: nn.Module, batch: int = 1) -> dict[str, torch.Tensor]:
    size, channels = model.config.sample_size, model.config.in_channels
    return {"sample": torch.zeros(batch, channels, size, size), "timestep": torch.ones(batch, dtype=torch.long),
            "class_labels": torch.zeros(batch, dtype=torch.long)}


def _kept_whole(model: nn.Module) -> list[nn.Module]:
    attention = [m for m in model.modules() if isinstance(m, Attention)]
    return [model.conv_out, model.class_embedding] + [p for a in attention for p in (a.to_q, a.to_k, a.to_v)]


def _fix_resamplers(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, Downsample2D | Upsample2D) and m.conv is not None:
            m.channels, m.out_channels = m.conv.in_channels, m.conv.out_channels


def size(model: nn.Module) -> tuple[int, int]:
    """(MACs of one forward pass of one image, parameters), by torch-pruning's counter."""
    with redirect_stdout(io.StringIO()):  # torch-pruning prints a note on keyword inputs
        macs, params = tp.utils.count_ops_and_params(model, example_inputs(model))
    return int(macs), int(params)


def prune(model: nn.Module, ratio: float) -> Plan:
    """Prune ``model`` in place by ``ratio`` of each group's channels, ranked by their group L2 norm; returns the
    plan that :func:`apply_plan` replays."""
    if not 0 < ratio < 1:
        raise ValueError(f"pruning ratio must lie in (0, 1), got {ratio}")
    was_training = model.training
    model.eval()
    with redirect_stdout(io.StringIO()):
        pruner = tp.pruner.MetaPruner(model, example_inputs(model), pruning_ratio=ratio,
                                      importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      ignored_layers=_kept_whole(model))
        pruner.step()
    _fix_resamplers(model)
    model.train(was_training)
    return [[name, bool(out), [int(i) for i in idxs]] for name, out, idxs in pruner.DG.pruning_history()]


def apply_plan(model: nn.Module, plan: Plan) -> nn.Module:
    """Give a freshly built, unpruned ``model`` the pruned architecture of ``plan`` (weights are then loaded)."""
    if plan:
        with redirect_stdout(io.StringIO()):
            graph = tp.DependencyGraph().build_dependency(model, example_inputs(model))
        graph.load_pruning_history([tuple(step) for step in plan])
        _fix_resamplers(model)
    return model
