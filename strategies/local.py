"""Local-only: the lower bound of every comparison (see :mod:`strategies.server_side`)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from fedgen.train import client_seed, evaluate
from strategies.server_side import ServerSideTraining


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
            self.models[k], loss = self._train(start, data, client_seed(self.seed, server_round, k))
            losses.append(loss)
        return None, MetricRecord({"train-loss": float(np.mean(losses))})

    def evaluate_global(self, server_round: int, arrays: ArrayRecord, batch_size: int) -> MetricRecord:
        states = [self.models[k] for k in sorted(self.models)] or [arrays.to_torch_state_dict()]
        accs, losses = [], []
        for state in states:
            model = self.model_fn()
            model.load_state_dict(state)
            scores = evaluate(model, self.fed.test, batch_size, self.device, len(self.fed.domain_names))
            accs.append(scores.accuracy)
            losses.append(scores.loss)
        return MetricRecord(
            {
                "accuracy": float(np.mean(accs)),
                "loss": float(np.mean(losses)),
                "accuracy-min": float(np.min(accs)),
                "accuracy-max": float(np.max(accs)),
            }
        )
