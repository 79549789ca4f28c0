"""FedPhD (Long et al., 2024): its config section and registration; the strategy is :mod:`strategies.fedphd.strategy`
(imported when a run builds it: it needs torch-pruning and diffusers)."""

from __future__ import annotations

from typing import Annotated, Literal

from flwr.app import MessageType
from pydantic import Field

from fedgen.comm import CLIENT_EDGE
from fedgen.config import ExperimentConfig, OpenFraction, PositiveInt, StrategyConfig
from fedgen.wire import LABEL_HISTOGRAM
from strategies.method import Method

FEDPHD_TRAIN = f"{MessageType.TRAIN}.fedphd"
"""FedPhD's local training: the edge's U-Net, possibly pruned."""
PRUNING_PLAN = "pruning-plan"
"""FedPhD: the pruned U-Net's plan (torch-pruning's history as JSON; absent: unpruned)."""
SPARSE_LAMBDA = "sparse-lambda"
"""FedPhD's sparse training: the weight of its norm term (absent: none)."""


class FedPhDConfig(StrategyConfig):
    """FedPhD (Long et al., 2024): clients -> edges -> cloud, homogeneity-aware edge selection and cloud weights,
    structured pruning of the U-Net. Defaults: the official code's (A 10000, a 5000, r_g 5, ratio 0.2, lambda 1e-5)."""

    tasks = ("diffusion",)
    private_clients = True
    name: Literal["fedphd"] = "fedphd"
    num_edges: PositiveInt = 2
    cloud_every: PositiveInt = 5
    """r_g: the cloud aggregates the edges after rounds r_g, 2 r_g, ...; the edges aggregate their clients every
    round."""
    selection_a: Annotated[float, Field(ge=0)] = 10000.0
    """A in P(e) ~ max(A * SH(merged) - n_e + b, 0) + 1e-8."""
    selection_b: float = 0.0
    balance_a: Annotated[float, Field(ge=0)] = 5000.0
    """a in rho_e ~ ReLU(n_e + a * SH(q_e) + b) (the official CIFAR-10 script: 50000)."""
    balance_b: float = 0.0
    homogeneity_norm: Literal["l2", "l1"] = "l2"
    """SH(q) = 2 - ||q - q_target||: L2 as the official code, L1 as a variant."""
    homogeneity_target: Literal["uniform", "global"] = "uniform"
    """q_target: the uniform distribution, or the federation's label distribution (from the clients' histograms)."""
    prune: Literal["none", "start", "after"] = "after"
    """'start': prune the initial model before round 1 (the official --train_scratch, 'OS'); 'after': sparse training
    for sparse_rounds rounds, then prune the global model (the official default); 'none': no pruning."""
    pruning_ratio: OpenFraction = 0.2
    """Share of each channel group pruned (0.2 CIFAR-10, 0.4 CelebA in the official scripts)."""
    sparse_rounds: PositiveInt = 10
    """prune=after: R_s, the rounds of sparse training before pruning (a cloud round; official 200 of 10200)."""
    sparse_lambda: Annotated[float, Field(ge=0)] = 1e-5
    """prune=after: the sparse-training term lambda * sum ||W|| over weight tensors, added while sparse training."""

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        if cfg.rounds % self.cloud_every:
            raise ValueError(f"rounds={cfg.rounds} must be a multiple of strategy.cloud_every={self.cloud_every} (the "
                             "run ends on a cloud aggregation: its last model is the cloud's)")
        if cfg.evaluation.every % self.cloud_every:
            raise ValueError(f"evaluation.every={cfg.evaluation.every} must be a multiple of strategy.cloud_every="
                             f"{self.cloud_every}: only the cloud rounds have a global model to score")
        if self.prune == "after" and (self.sparse_rounds % self.cloud_every or self.sparse_rounds >= cfg.rounds):
            raise ValueError(f"strategy.sparse_rounds={self.sparse_rounds} must be a cloud round (a multiple of "
                             f"strategy.cloud_every={self.cloud_every}) before the last round ({cfg.rounds})")


class FedPhDMethod(Method):
    section = FedPhDConfig
    checkpoint = True
    query = (LABEL_HISTOGRAM,)
    roles = {FEDPHD_TRAIN: "clients.fedphd:train"}
    client_tier = CLIENT_EDGE

    def build(self, ctx):
        from strategies.fedphd.strategy import build

        return build(ctx)

    def model(self, cfg, fed, state):
        from strategies.fedphd.strategy import model

        return model(cfg, fed, state)

    def task(self, ctx, strategy):
        from strategies.fedphd.strategy import task

        return task(ctx, strategy)

    def prepare(self, ctx, strategy, grid, arrays):
        from strategies.fedphd.strategy import prepare

        return prepare(ctx, strategy, grid, arrays)
