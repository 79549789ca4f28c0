"""A training message's local update, shared by the task roles (finetune, diffusion): the model it sends, the terms
its strategy adds to local training, the state those keep on the client, and the reply.

The server's message says which terms apply:
- 'proximal-mu' > 0: FedProx's (mu / 2) ||w - w_global||^2;
- 'feddyn-alpha' > 0: FedDyn's dynamic regulariser, with its gradient state g_k kept on the client;
- 'scaffold-control.' arrays: SCAFFOLD's gradient correction with the server control c; the client control c_i is
  kept on the client and its change dc_i goes back beside the model;
- 'moon-mu': MOON's contrastive term, against the client's previous model, kept on the client.
Client state is kept per round and continues from the round the server names (:mod:`clients.state`).

A method of its own adds terms without editing this module: its :attr:`strategies.Method.local_terms` name functions
('module:function') that take the :class:`LocalUpdate` and add to :attr:`LocalUpdate.penalties`, keep state with
:meth:`LocalUpdate.load_state` / :meth:`LocalUpdate.save_state`, and finish with :meth:`LocalUpdate.on_reply`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from importlib import import_module

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from torch import nn

import strategies
from clients import state as client_state
from fedgen import feddyn, moon, scaffold
from fedgen.train import Penalty, TrainResult, proximal_penalty
from fedgen.wire import (
    FEDDYN_ALPHA,
    FEDDYN_MEAN_EXAMPLES,
    MOON_MU,
    MOON_TAU,
    NUM_EXAMPLES,
    PROXIMAL_MU,
    TRAIN_LOSS,
)

FEDDYN_STATE, SCAFFOLD_STATE, MOON_STATE = "feddyn-grad", "scaffold-control", "moon-previous"


class LocalUpdate:
    """Loads the message's model into ``model`` (on ``device``) and prepares :attr:`penalties`; :meth:`reply`
    finishes the terms' state and answers with the trained model."""

    def __init__(self, msg: Message, context: Context, pid: int, model: nn.Module, num_examples: int,
                 device: torch.device, method: str) -> None:
        self.msg, self.context, self.pid, self.device = msg, context, pid, device
        state, control = scaffold.split(msg.content["arrays"].to_torch_state_dict())
        model.load_state_dict(state)
        self.model = model.to(device)
        self.global_params = [p.detach().clone() for p in model.parameters()]
        self.penalties: list[Penalty] = []
        self._finish: list[Callable[[TrainResult], dict[str, torch.Tensor]]] = []
        config = msg.content["config"]
        mu = float(config.get(PROXIMAL_MU, 0.0))
        if mu > 0:
            self.penalties.append(proximal_penalty(self.global_params, mu))
        alpha = feddyn.client_alpha(float(config.get(FEDDYN_ALPHA, 0.0)), num_examples,
                                    config.get(FEDDYN_MEAN_EXAMPLES))
        if alpha > 0:
            self._feddyn(alpha)
        if control:
            self._scaffold(control)
        if MOON_MU in config:
            self._moon(float(config[MOON_MU]), float(config[MOON_TAU]))
        for target in strategies.method(method).local_terms:
            module, func = target.split(":")
            getattr(import_module(module), func)(self)

    def on_reply(self, finish: Callable[[TrainResult], dict[str, torch.Tensor]]) -> None:
        """Run ``finish`` after training, before the reply: it may save state, and returns arrays the reply carries
        beside the model."""
        self._finish.append(finish)

    def load_state(self, name: str) -> list[torch.Tensor] | None:
        """The tensors this client saved under ``name`` in the round the server names, on the device; None if none."""
        saved = client_state.load(self.msg, self.context, name, self.pid)
        return [t.to(self.device) for t in saved] if saved else None

    def save_state(self, name: str, tensors: list[torch.Tensor]) -> None:
        client_state.save(self.msg, self.context, name, self.pid, tensors)

    def _feddyn(self, alpha: float) -> None:
        grads = self.load_state(FEDDYN_STATE) or [torch.zeros_like(p) for p in self.global_params]
        self.penalties.append(feddyn.client_penalty(self.global_params, grads, alpha))

        def finish(result: TrainResult) -> dict[str, torch.Tensor]:
            local = [p.detach() for p in self.model.parameters()]
            self.save_state(FEDDYN_STATE, feddyn.client_state_update(grads, local, self.global_params, alpha))
            return {}

        self.on_reply(finish)

    def _scaffold(self, control: dict[str, torch.Tensor]) -> None:
        names = [n for n, _ in self.model.named_parameters()]
        if set(control) != set(names):
            raise ValueError(f"SCAFFOLD's server control has keys {sorted(set(control) ^ set(names))[:5]} that are "
                             f"not the model's trainable parameters")
        c = [control[n].to(self.device) for n in names]
        c_i = self.load_state(SCAFFOLD_STATE) or [torch.zeros_like(t) for t in c]
        self.penalties.append(scaffold.correction(c, c_i))

        def finish(result: TrainResult) -> dict[str, torch.Tensor]:
            local = [p.detach() for p in self.model.parameters()]
            new, delta = scaffold.client_control_update(c_i, c, self.global_params, local, result.lr_sum)
            self.save_state(SCAFFOLD_STATE, new)
            return scaffold.join({}, {n: d.cpu() for n, d in zip(names, delta, strict=True)})

        self.on_reply(finish)

    def _moon(self, mu: float, tau: float) -> None:
        global_model = copy.deepcopy(self.model)
        previous = copy.deepcopy(self.model)
        saved = self.load_state(MOON_STATE)
        if saved:  # before a first aggregated update, the global model stands in (the official code's choice)
            previous.load_state_dict(dict(zip(previous.state_dict(), saved, strict=True)))
        contrast = moon.ModelContrast(self.model, global_model, previous, mu, tau)
        self.penalties.append(contrast)

        def finish(result: TrainResult) -> dict[str, torch.Tensor]:
            contrast.close()
            self.save_state(MOON_STATE, list(self.model.state_dict().values()))
            return {}

        self.on_reply(finish)

    def reply(self, result: TrainResult, metrics: dict[str, float] | None = None) -> Message:
        """The trained model and the terms' arrays; 'train-loss', 'num-examples' and ``metrics``."""
        extra: dict[str, torch.Tensor] = {}
        for finish in self._finish:
            extra.update(finish(result))
        content = RecordDict({
            "arrays": ArrayRecord({**self.model.cpu().state_dict(), **extra}),
            "metrics": MetricRecord({TRAIN_LOSS: result.loss, NUM_EXAMPLES: result.num_examples, **(metrics or {})}),
        })
        return Message(content=content, reply_to=self.msg)
