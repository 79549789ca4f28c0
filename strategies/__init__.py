"""The registry: every method, what it is built from and what it needs. Nothing else names a strategy.

A method is its config section (a :class:`fedgen.config.StrategyConfig` subclass, in fedgen/config.py), its
strategy (a file in this package), its client roles (modules in clients/) and one :class:`Method` entry below.
The ServerApp, the ClientApp, the CLI, the bench and the tests read this table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from flwr.app import MessageType
from flwr.serverapp.strategy import FedAvg, FedProx, Strategy
from torch import nn

from fedgen.comm import ByteLedger
from fedgen.config import (
    CentralizedConfig,
    ExperimentConfig,
    FedAvgConfig,
    FedDynConfig,
    FedProxConfig,
    LocalConfig,
    OscarConfig,
    StrategyConfig,
)
from fedgen.data import Federation
from fedgen.fedeval import aggregate_evaluations
from fedgen.tasks import ClassifierTask, Task
from fedgen.wire import ENCODE


@dataclass
class RunContext:
    """What a strategy and its task are built from."""

    cfg: ExperimentConfig
    fed: Federation
    model_fn: Callable[[], nn.Module]
    device: torch.device
    out_dir: Path
    ledger: ByteLedger
    """The run's byte ledger: a strategy records here the traffic that never crosses the Grid (e.g. edge -> cloud),
    with its tier."""

    def sampling(self) -> dict:
        """Flower's FedAvg-family sampling and evaluation aggregation, from the shared strategy keys.

        A round samples among the nodes connected when it starts: Flower waits for ``min_available_nodes``, so that
        is the minimum a round needs, not the federation's size (a node that died must not stall every round).
        """
        s = self.cfg.strategy
        return dict(
            fraction_train=s.fraction_train, fraction_evaluate=s.fraction_evaluate,
            min_train_nodes=s.min_train_clients, min_evaluate_nodes=1 if s.fraction_evaluate > 0 else 0,
            min_available_nodes=s.min_train_clients,
            evaluate_metrics_aggr_fn=partial(aggregate_evaluations, domain_names=self.fed.domain_names),
        )


def classifier_task(ctx: RunContext, strategy: Strategy) -> Task:
    return ClassifierTask(ctx.fed, ctx.model_fn, ctx.cfg.train.eval_batch_size, ctx.device,
                          long_tailed=ctx.cfg.data.partition.kind == "longtail")


def classifier_init(ctx: RunContext) -> dict[str, torch.Tensor]:
    return ctx.model_fn().state_dict()


FINETUNE = {MessageType.TRAIN: "clients.finetune:train", MessageType.EVALUATE: "clients.finetune:evaluate"}


@dataclass(frozen=True)
class Method:
    section: type[StrategyConfig]
    build: Callable[[RunContext], Strategy]
    roles: Mapping[str, str] = field(default_factory=dict)
    """Message type -> the client role that answers it, as 'module:function'. Every client also answers the
    partition query ('query', :func:`clients.common.query`)."""
    query: tuple[str, ...] = ()
    """Client facts the server's algorithm uses, asked before round 1 beside the partition id and the example
    counts every run needs (e.g. wire.LABEL_HISTOGRAM)."""
    foundation: bool = False
    """Uses the foundation models (the embedded profile is prepared on first use)."""
    federated: bool = True
    """False: a reference run that trains on the server from the partitions and sends no message."""
    checkpoint: bool = False
    """The strategy has state beyond the global arrays (``state_dict`` / ``load_state_dict``), saved each round."""
    reply_checks: Callable[[Strategy], Mapping[str, Callable]] | None = None
    """Checks of its replies beyond the shared ones, by message type (run after :func:`fedgen.validation`)."""
    task: Callable[[RunContext, Strategy], Task] = classifier_task
    """What the run trains and how it is scored after each round."""
    initial: Callable[[RunContext], dict[str, torch.Tensor]] = classifier_init
    """The global arrays the run starts from, drawn first after seeding (every classifier method starts from the
    same model)."""

    @property
    def name(self) -> str:
        return self.section.model_fields["name"].default


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method; its client roles must not take a message type another method answers differently."""
    for mtype, target in method.roles.items():
        other = client_roles().get(mtype)
        if other not in (None, target):
            raise ValueError(f"method '{method.name}': message type '{mtype}' is already answered by {other}")
    METHODS[method.name] = method
    return method


def method(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"no registered strategy '{name}'; registered: {', '.join(METHODS)}")
    return METHODS[name]


def client_roles() -> dict[str, str]:
    """Message type -> 'module:function', over every registered method."""
    return {mtype: target for m in METHODS.values() for mtype, target in m.roles.items()}


def build_strategy(ctx: RunContext) -> Strategy:
    return method(ctx.cfg.strategy.name).build(ctx)


def _fedprox(ctx: RunContext) -> Strategy:
    return FedProx(proximal_mu=ctx.cfg.strategy.proximal_mu, **ctx.sampling())


def _register_builtins() -> None:
    from strategies import centralized, feddyn, local, oscar

    for m in (
        Method(FedAvgConfig, lambda ctx: FedAvg(**ctx.sampling()), roles=FINETUNE),
        Method(FedProxConfig, _fedprox, roles=FINETUNE),
        Method(FedDynConfig, feddyn.build, roles=FINETUNE, checkpoint=True),
        Method(OscarConfig, oscar.build, foundation=True, reply_checks=oscar.Oscar.reply_checks,
               roles={ENCODE: "clients.encode:encode", MessageType.EVALUATE: FINETUNE[MessageType.EVALUATE]}),
        Method(LocalConfig, local.LocalOnly.build, federated=False, checkpoint=True, task=local.LocalTask),
        Method(CentralizedConfig, centralized.Centralized.build, federated=False),
    ):
        register(m)


_register_builtins()
