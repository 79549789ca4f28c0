"""Local-only: the lower bound of every comparison (see :mod:`strategies.server_side`)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Message, MetricRecord

from fedgen.tasks import ClassifierTask, Headline
from fedgen.train import client_seed
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


class LocalTask:
    """Local-only's scores: the mean over the clients' own models on the global test split ('accuracy', 'loss'),
    with the spread ('accuracy-min', 'accuracy-max'). Its final models are the clients' (client_models.pt)."""

    headline = Headline("accuracy", higher_is_better=True)
    columns = ("accuracy", "loss")

    def __init__(self, ctx, strategy: LocalOnly) -> None:
        self.strategy = strategy
        self.classifier = ClassifierTask(ctx.fed, ctx.model_fn, ctx.cfg.train.eval_batch_size, ctx.device)

    def evaluate(self, server_round: int, state: dict) -> dict[str, float]:
        models = self.strategy.models
        states = [models[k] for k in sorted(models)] or [state]  # round 0: every client starts from the same model
        scores = [self.classifier.scores(s) for s in states]
        accs = [s["accuracy"] for s in scores]
        return {"accuracy": float(np.mean(accs)), "loss": float(np.mean([s["loss"] for s in scores])),
                "accuracy-min": float(np.min(accs)), "accuracy-max": float(np.max(accs))}

    def final_models(self, state: dict) -> dict:
        return {"client_models": self.strategy.models}
