"""FedPhD: hierarchical, homogeneity-aware federated diffusion with structured pruning (Long et al., 2024).

Clients -> edge servers -> cloud. Each round t:
    1. sample clients (Flower's FedAvg sampling); in partition-id order, each client k picks an edge at random with
       P(e) ~ max(A * SH(merge(q_e, n_e; k)) - n_e + b, 0) + 1e-8, and the edge's label distribution q_e and count
       n_e take the client's
    2. each client trains its edge's U-Net on its own images (during sparse training with lambda * sum ||W||)
    3. each edge averages its clients' models, weighted by examples (edge aggregation, every round)
    4. if t is a multiple of r_g: the cloud averages the edges with rho_e ~ ReLU(n_e + a * SH(q_e) + b) (n_e the
       examples of the edge's last round), every edge takes the global model, and q_e, n_e reset
    5. prune=after: at t = R_s the global U-Net is pruned (torch-pruning, group L2 importance), and every later
       message carries the pruned architecture's plan
The math is in :mod:`fedgen.fedphd` and :mod:`fedgen.diffusion.pruning`. The edges are server-side objects with
their own models and statistics; what crosses a link is counted per tier: 'client-edge' (the Grid's messages) and
'edge-cloud' (each edge's model up, the global model down, at cloud rounds).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

from fedgen import fedphd
from fedgen.averaging import average
from fedgen.comm import DOWN, EDGE_CLOUD, UP, ByteLedger
from fedgen.compat.flower import check_and_log_replies
from fedgen.diffusion import pruning
from fedgen.diffusion.task import DiffusionTask, unet_fn
from fedgen.wire import LABEL_HISTOGRAM, NUM_EXAMPLES
from strategies.fedphd import FEDPHD_TRAIN, PRUNING_PLAN, SPARSE_LAMBDA, FedPhDConfig

SERVER_SIDE = -1
"""The ledger's client id for traffic between the server-side tiers."""


@dataclass
class Edge:
    """An edge server: its model, and the clients it took since the last cloud aggregation."""

    model: dict[str, torch.Tensor]
    q: np.ndarray
    """Their label distribution (uniform when none)."""
    n: float = 0.0
    """Their examples."""
    last_n: float = 1.0
    """The examples aggregated in the edge's most recent round with updates (rho's n_e; 1 before any)."""

    def take(self, model: dict[str, torch.Tensor]) -> None:
        """The cloud's model, and fresh statistics (the count of the last round stays)."""
        self.model, self.q, self.n = model, np.full_like(self.q, 1.0 / len(self.q)), 0.0


class FedPhD(FedAvg):
    """FedPhD on Flower's FedAvg sampling and reply checks.

    Parameters
    ----------
    settings : strategies.fedphd.FedPhDConfig
        Edges, A / b, a / b, r_g, the homogeneity norm and target, pruning.
    num_classes : int
    unet_fn : callable
        A fresh, unpruned U-Net of the experiment.
    ledger : fedgen.comm.ByteLedger
        Where the edge-cloud traffic is recorded.
    seed : int
        Edge selection draws from a generator seeded by (seed, round).
    message_type : str
        The type of the training messages (strategies.fedphd.FEDPHD_TRAIN).
    """

    def __init__(self, settings: FedPhDConfig, num_classes: int, unet_fn: Callable[[], nn.Module],
                 ledger: ByteLedger, seed: int, message_type: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.s, self.num_classes, self.unet_fn, self.ledger = settings, num_classes, unet_fn, ledger
        self.seed, self.message_type = seed, message_type
        self.edges: list[Edge] = []
        self.plan: pruning.Plan | None = None
        self.assignment: dict[int, int] = {}
        """Node id -> edge, for the round in progress."""
        self.target = np.full(num_classes, 1.0 / num_classes)
        self._histograms: dict[int, np.ndarray] = {}

    # --- state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"plan": self.plan, "edges": [{"model": e.model, "q": e.q.tolist(), "n": float(e.n), "last_n": e.last_n}
                                             for e in self.edges]}

    def load_state_dict(self, state: dict) -> None:
        self.plan = state["plan"]
        self.edges = [Edge(e["model"], np.array(e["q"]), e["n"], e["last_n"]) for e in state["edges"]]

    def build_model(self) -> nn.Module:
        """A U-Net of the current architecture (pruned once there is a plan)."""
        return pruning.apply_plan(self.unet_fn(), self.plan or [])

    def prune(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Prune the global model; from now on the plan travels with every training message."""
        model = self.build_model()
        model.load_state_dict(state)
        self.plan = pruning.prune(model, self.s.pruning_ratio)
        return model.state_dict()

    # --- the round -----------------------------------------------------------------------------------------------
    def _learn_histograms(self, grid: Grid) -> None:
        if self._histograms:
            return
        self._histograms = {pid: np.asarray(facts[LABEL_HISTOGRAM], dtype=float) for pid, facts in grid.facts.items()}
        if self.s.homogeneity_target == "global":
            total = sum(self._histograms.values())
            self.target = total / total.sum()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._learn_histograms(grid)
        if not self.edges:
            self.edges = [Edge(arrays.to_torch_state_dict(), np.full(self.num_classes, 1.0 / self.num_classes))
                          for _ in range(self.s.num_edges)]
        sampled = sorted(super().configure_train(server_round, arrays, config, grid),
                         key=lambda m: grid.partition(m.metadata.dst_node_id))
        extra = {} if self.plan is None else {PRUNING_PLAN: json.dumps(self.plan)}
        if self.s.prune == "after" and server_round <= self.s.sparse_rounds and self.s.sparse_lambda > 0:
            extra[SPARSE_LAMBDA] = self.s.sparse_lambda
        rng = np.random.default_rng([self.seed, server_round])
        self.assignment, messages = {}, []
        for m in sampled:
            node = m.metadata.dst_node_id
            hist = self._histograms[grid.partition(node)]
            p = fedphd.selection_probabilities([e.q for e in self.edges], [e.n for e in self.edges], hist,
                                               self.target, self.s.selection_a, self.s.selection_b,
                                               self.s.homogeneity_norm)
            edge = self.edges[e := int(rng.choice(len(self.edges), p=p))]
            edge.q, edge.n = fedphd.merge(edge.q, edge.n, hist)
            self.assignment[node] = e
            content = RecordDict({self.arrayrecord_key: ArrayRecord(edge.model),
                                  self.configrecord_key: ConfigRecord({**m.content[self.configrecord_key], **extra})})
            messages.append(Message(content, dst_node_id=node, message_type=self.message_type))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = check_and_log_replies(self, replies, is_train=True)
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key) if valid else None
        metrics = MetricRecord(dict(metrics or {}))
        for e, edge in enumerate(self.edges):  # edge aggregation
            mine = [m.content for m in valid if self.assignment.get(m.metadata.src_node_id) == e]
            metrics[f"edge{e}-clients"] = len(mine)
            if mine:
                counts = [int(c["metrics"][NUM_EXAMPLES]) for c in mine]
                edge.model = average([c[self.arrayrecord_key].to_torch_state_dict() for c in mine], counts)
                edge.last_n = float(sum(counts))
        if server_round % self.s.cloud_every:
            return None, metrics
        rho = fedphd.cloud_weights([e.last_n for e in self.edges], [e.q for e in self.edges], self.target,
                                   self.s.balance_a, self.s.balance_b, self.s.homogeneity_norm)
        cloud = average([e.model for e in self.edges], rho)
        down = ArrayRecord(cloud).count_bytes()
        for e, edge in enumerate(self.edges):
            metrics[f"edge{e}-rho"] = float(rho[e])
            self.ledger.add(server_round, SERVER_SIDE, UP, ArrayRecord(edge.model).count_bytes(), "edge-model",
                            EDGE_CLOUD)
            self.ledger.add(server_round, SERVER_SIDE, DOWN, down, "cloud-model", EDGE_CLOUD)
        if self.s.prune == "after" and server_round == self.s.sparse_rounds:
            cloud = self.prune(cloud)
        for edge in self.edges:
            edge.take(cloud)
        return ArrayRecord(cloud), metrics


def build(ctx) -> FedPhD:
    return FedPhD(ctx.cfg.strategy, ctx.fed.num_classes, ctx.model_fn, ctx.ledger, ctx.cfg.seed, FEDPHD_TRAIN,
                  **ctx.sampling())


def model(cfg, fed, state: dict | None) -> Callable[[], nn.Module]:
    """The U-Net of a run whose strategy state is ``state`` (pruned once it has a plan)."""
    unet, plan = unet_fn(cfg, fed), (state or {}).get("plan") or []
    return lambda: pruning.apply_plan(unet(), plan)


def task(ctx, strategy: FedPhD) -> DiffusionTask:
    """The diffusion task, scoring U-Nets of the strategy's current architecture."""
    return DiffusionTask(replace(ctx, model_fn=strategy.build_model), strategy)


def prepare(ctx, strategy: FedPhD, grid: Grid, arrays: ArrayRecord) -> tuple[ArrayRecord, dict]:
    """Before round 1: the U-Net's size, and the pruned size (pruning's channel counts do not depend on the weights);
    prune=start prunes the initial model now."""
    mode = ctx.cfg.strategy.prune
    with torch.random.fork_rng():  # building a U-Net draws weights: leave the run's random stream as other methods'
        model = strategy.build_model()
    model.load_state_dict(arrays.to_torch_state_dict())
    macs, params = pruning.size(model)
    pruned = model if mode == "start" else copy.deepcopy(model)
    if mode != "none":
        plan = pruning.prune(pruned, ctx.cfg.strategy.pruning_ratio)
        if mode == "start":
            strategy.plan, arrays = plan, ArrayRecord(pruned.state_dict())
    macs_pruned, params_pruned = pruning.size(pruned)
    return arrays, {"fedphd/params": params, "fedphd/macs": macs, "fedphd/params-pruned": params_pruned,
                    "fedphd/macs-pruned": macs_pruned}
