"""MOON: model-contrastive federated learning (Li, He and Song, CVPR 2021).

A client adds to its loss mu * l_con, with z, z_glob and z_prev the representations of the same batch by the model
being trained, the global model it was sent and its own model of the last round:
    l_con = -log( exp(sim(z, z_glob) / tau) / (exp(sim(z, z_glob) / tau) + exp(sim(z, z_prev) / tau)) )
sim is the cosine similarity. The representation is the output of a named layer (a model's ``representation``
attribute: a classifier's penultimate layer, the diffusion U-Net's mid block), flattened per example.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def contrastive_loss(z: torch.Tensor, z_global: torch.Tensor, z_prev: torch.Tensor, tau: float) -> torch.Tensor:
    """l_con, averaged over the batch (each tensor: one representation per example, any trailing shape)."""
    z, z_global, z_prev = (t.flatten(1).float() for t in (z, z_global, z_prev))
    logits = torch.stack([F.cosine_similarity(z, z_global, dim=1), F.cosine_similarity(z, z_prev, dim=1)], 1) / tau
    return F.cross_entropy(logits, torch.zeros(len(z), dtype=torch.long, device=z.device))


def representation_layer(model: nn.Module) -> nn.Module:
    name = getattr(model, "representation", None)
    if name is None:
        raise ValueError(f"MOON needs the representation layer of {type(model).__name__}: set its 'representation' "
                         f"attribute to a submodule's name")
    return model.get_submodule(name)


class _Reached(Exception):
    def __init__(self, output: torch.Tensor) -> None:
        self.output = output


def representation(model: nn.Module, *args, **kwargs) -> torch.Tensor:
    """The output of ``model``'s representation layer on these inputs; the rest of the forward pass is skipped."""

    def stop(module, inputs, output):
        raise _Reached(output)

    handle = representation_layer(model).register_forward_hook(stop)
    try:
        model(*args, **kwargs)
    except _Reached as reached:
        return reached.output
    finally:
        handle.remove()
    raise RuntimeError("the representation layer was not reached in the forward pass")


class ModelContrast:
    """The MOON term as a penalty of local training: the model's inputs and representation are caught from the
    training step's own forward pass; the global and previous models see the same inputs, without gradients.
    Call :meth:`close` after training."""

    def __init__(self, model: nn.Module, global_model: nn.Module, previous_model: nn.Module, mu: float,
                 tau: float) -> None:
        self.others = [m.requires_grad_(False) for m in (global_model, previous_model)]
        self.mu, self.tau = mu, tau
        self._inputs: tuple = ((), {})
        self._z: torch.Tensor | None = None
        self._handles = [
            model.register_forward_pre_hook(self._catch_inputs, with_kwargs=True),
            representation_layer(model).register_forward_hook(self._catch_z),
        ]

    def _catch_inputs(self, module, args, kwargs):
        self._inputs = (args, kwargs)

    def _catch_z(self, module, inputs, output):
        self._z = output

    def __call__(self, model: nn.Module) -> torch.Tensor:
        if self._z is None:
            raise RuntimeError("MOON's penalty is computed after the model's forward pass")
        args, kwargs = self._inputs
        with torch.no_grad():
            z_global, z_prev = (representation(m, *args, **kwargs) for m in self.others)
        loss = self.mu * contrastive_loss(self._z, z_global, z_prev, self.tau)
        self._z = None
        return loss

    def close(self) -> None:
        for h in self._handles:
            h.remove()
