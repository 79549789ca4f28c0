"""Local-only: the lower bound of every comparison (see :mod:`strategies.server_side`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
from flwr.app import Message, MetricRecord

from fedgen.tasks import Task
from fedgen.train import client_seed
from strategies.method import Method
from strategies.server_side import ServerSideConfig, ServerSideTraining

CLIENT_MODELS = "client_models"
"""The final models' file stem (<run>/client_models.pt): each client's own model, by partition id."""


class LocalConfig(ServerSideConfig):
    name: Literal["local"] = "local"


class LocalOnly(ServerSideTraining):
    """Each client trains its own model on its own data and never communicates (the lower bound).

    Its accuracy on the global test split is the mean over the clients' models; 'accuracy-min' / 'accuracy-max'
    give the spread.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.models: dict[int, dict] = {}

    def state_dict(self) -> dict:
        return {"models": self.models}

    def load_state_dict(self, state: dict) -> None:
        self.models = state["models"]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        losses = []
        for k in range(self.fed.num_clients):
            start = self.models.get(k) or self._arrays.to_torch_state_dict()
            data, _ = self.fed.client(k)
            self.models[k], loss = self._train(start, data, client_seed(self.seed, server_round, k),
                                                server_round)
            losses.append(loss)
        return None, MetricRecord({"train-loss": float(np.mean(losses))})


class LocalTask(Task):
    """Local-only's scores: the mean over the clients' own models of the task's scores (a classifier's accuracy and
    loss on the global test split, a diffusion model's FID, IS and class fidelity), with the spread of the headline
    ('<metric>-min', '<metric>-max'). Its final models are the clients' (client_models.pt)."""

    def __init__(self, ctx, strategy: LocalOnly) -> None:
        self.strategy = strategy
        self.inner = ctx.kind.score(ctx, strategy)
        self.headline, self.columns = self.inner.headline, self.inner.columns
        self.report, self.extras = self.inner.report, self.inner.extras

    def scored(self, server_round: int) -> bool:
        return self.inner.scored(server_round)

    def evaluate(self, server_round: int, state: dict) -> dict[str, float]:
        if not self.scored(server_round):
            return {}
        models = self.strategy.models
        states = [models[k] for k in sorted(models)] or [state]  # round 0: every client starts from the same model
        scores = [self.inner.scores(s) for s in states]
        out = {c: float(np.mean([s[c] for s in scores])) for c in self.columns}
        name = self.headline.name
        return {**out, f"{name}-min": float(np.min([s[name] for s in scores])),
                f"{name}-max": float(np.max([s[name] for s in scores]))}

    def final_models(self, state: dict) -> dict:
        return {CLIENT_MODELS: self.strategy.models}


class LocalMethod(Method):
    section = LocalConfig
    federated = False
    checkpoint = True
    build = staticmethod(LocalOnly.build)

    def task(self, ctx, strategy) -> LocalTask:
        return LocalTask(ctx, strategy)
