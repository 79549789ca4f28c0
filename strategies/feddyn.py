"""FedDyn strategy (Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021).

Algorithm (server side, each round t):
    1. sample clients; send theta^{t-1} and alpha (config 'feddyn-alpha')
    2. each client minimises L_k(theta) - <g_k, theta> + alpha/2 ||theta - theta^{t-1}||^2 and updates its g_k
    3. h^t = h^{t-1} - alpha/m * sum_k (theta_k^t - theta^{t-1});  theta^t = mean_k theta_k^t - h^t / alpha
The math is in :mod:`fedgen.feddyn`.

h = (1/m) sum_k g_k holds only if a client's g_k moves exactly when its update is aggregated. So each client keeps
its g_k per round and continues from the round the server names ('state-round': the last round whose update from
that client the server aggregated); a rejected or late update leaves the client's g_k as it was.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedgen import feddyn
from fedgen.wire import FEDDYN_ALPHA, FEDDYN_MEAN_EXAMPLES, STATE_ROUND


class FedDyn(FedAvg):
    """FedDyn on top of Flower's FedAvg sampling and reply checks; the Grid must name each node's partition
    (:class:`simulations.grid.AccountedGrid`), so that what was aggregated survives a resume's new node ids.

    Parameters
    ----------
    alpha : float
        The dynamic regulariser's weight (the paper uses 0.1, 0.01, 0.001).
    num_clients : int
        m, the number of clients in the federation (the server correction divides by it).
    param_keys : set of str
        The state-dict keys that are trainable parameters; other entries (e.g. BatchNorm statistics) are averaged.
    mean_examples : float, optional
        The mean training-set size over the federation. Given, each client scales alpha by its data share,
        alpha / (n_k / mean_examples), as the official code does; the server's correction is the same either way.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(self, alpha: float, num_clients: int, param_keys: Iterable[str], mean_examples: float | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if alpha <= 0:
            raise ValueError("FedDyn alpha must be positive")
        self.alpha = alpha
        self.num_clients = num_clients
        self.param_keys = set(param_keys)
        self.mean_examples = mean_examples
        self.h: dict[str, torch.Tensor] = {}
        self.aggregated: dict[int, int] = {}
        """Partition id -> the last round whose update from it was aggregated."""
        self._global: dict[str, torch.Tensor] = {}
        self._grid: Grid | None = None

    def state_dict(self) -> dict:
        return {"h": self.h, "aggregated": self.aggregated}

    def load_state_dict(self, state: dict) -> None:
        self.h, self.aggregated = state["h"], state["aggregated"]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays.to_torch_state_dict()
        if not self.h:
            self.h = {
                k: torch.zeros_like(v, dtype=torch.float64) for k, v in self._global.items() if k in self.param_keys
            }
        config[FEDDYN_ALPHA] = self.alpha
        if self.mean_examples is not None:
            config[FEDDYN_MEAN_EXAMPLES] = self.mean_examples
        self._grid = grid
        messages = []
        for m in super().configure_train(server_round, arrays, config, grid):
            node = m.metadata.dst_node_id
            own = ConfigRecord({**config, STATE_ROUND: self.aggregated.get(grid.partition(node), 0)})
            messages.append(Message(RecordDict({**m.content, "config": own}), dst_node_id=node,
                                    message_type=m.metadata.message_type))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        clients = [c[self.arrayrecord_key].to_torch_state_dict() for c in contents]
        new_global, self.h = feddyn.server_update(self._global, clients, self.h, self.alpha, self.num_clients)
        for m in valid:
            self.aggregated[self._grid.partition(m.metadata.src_node_id)] = server_round
        return ArrayRecord(new_global), self.train_metrics_aggr_fn(contents, self.weighted_by_key)


def build(ctx) -> FedDyn:
    s, fed = ctx.cfg.strategy, ctx.fed
    mean = (float(np.mean([len(fed.client(k)[0]) for k in range(fed.num_clients)]))
            if s.feddyn_alpha_by_data_share else None)
    return FedDyn(alpha=s.feddyn_alpha, num_clients=fed.num_clients,
                  param_keys={k for k, _ in ctx.model_fn().named_parameters()}, mean_examples=mean, **ctx.sampling())
