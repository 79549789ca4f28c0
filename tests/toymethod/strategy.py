"""The toy methods: their config sections, wire names, strategies, scoring and registration, in one file.

Toy: each round it asks every node twice (two message types), averages the replies into one 'model' (a scalar), and
records a made-up edge -> cloud upload in the byte ledger under its own tier.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, Strategy

from fedgen.comm import UP
from fedgen.config import StrategyConfig
from fedgen.tasks import Headline, Task
from fedgen.wire import SERVER_ROUND
from strategies import Method
from strategies.fedavg import flower

TRAIN_TOY, QUERY_TOY = "train.toy", "query.toy"
VALUE = "value"
EDGE_CLOUD = "edge-cloud"


class ToyConfig(StrategyConfig):
    name: Literal["toy"] = "toy"
    scale: float = 1.0
    target: float = 10.0


class ToyStrategy(Strategy):
    def __init__(self, ctx) -> None:
        self.ctx = ctx

    def configure_train(self, server_round, arrays, config, grid):
        config = ConfigRecord({**config, SERVER_ROUND: server_round})
        return [Message(RecordDict({"config": config}), dst_node_id=n, message_type=t)
                for n in grid.get_node_ids() for t in (TRAIN_TOY, QUERY_TOY)]

    def aggregate_train(self, server_round, replies):
        values = [r.content["metrics"][VALUE] for r in replies]
        self.ctx.ledger.add(server_round, -1, UP, 1000 * len(values), kind="toy-edge", tier=EDGE_CLOUD)
        return ArrayRecord({VALUE: torch.tensor([float(np.mean(values)) + server_round])}), MetricRecord(
            {"replies": len(values)})

    def configure_evaluate(self, server_round, arrays, config, grid):
        return []

    def aggregate_evaluate(self, server_round, replies):
        return None

    def summary(self):
        pass


class ToyTask(Task):
    """Scored by the distance of the 'model' to the configured target: lower is better."""

    headline = Headline("distance", higher_is_better=False)
    columns = ("distance",)

    def __init__(self, ctx, strategy):
        self.target = ctx.cfg.strategy.target

    def evaluate(self, server_round, state):
        return {"distance": abs(float(state[VALUE][0]) - self.target)}

    def final_models(self, state):
        return {"toy": state}


class Toy(Method):
    section = ToyConfig
    roles = {TRAIN_TOY: "toymethod.client:answer", QUERY_TOY: "toymethod.client:answer"}

    def build(self, ctx):
        return ToyStrategy(ctx)

    def task(self, ctx, strategy):
        return ToyTask(ctx, strategy)

    def initial(self, ctx):
        return {VALUE: torch.zeros(1)}


class ShrinkConfig(StrategyConfig):
    """A second toy: Flower's FedAvg, with a term of its own in the clients' local training."""

    name: Literal["toyshrink"] = "toyshrink"
    shrink: float = 10.0
    """Weight of (shrink / 2) * ||w||^2, added to the task's loss on every client."""


class Shrink(Method):
    section = ShrinkConfig
    local_terms = ("toymethod.client:shrink_term",)
    build = staticmethod(flower(FedAvg))
