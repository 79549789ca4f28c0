"""The registry: every method and every task, what they are built from and what they need. Nothing else names a
strategy.

A method is its config section (a :class:`fedgen.config.StrategyConfig` subclass, in fedgen/config.py), its
strategy (a file in this package), its client roles (modules in clients/) and one :class:`Method` entry below.
A task (the top-level ``task`` key: what the clients train and how a run is scored) is one :class:`TaskKind` entry.
The ServerApp, the ClientApp, the CLI, the bench and the tests read these tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from flwr.app import ArrayRecord, MessageType
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx, Strategy
from torch import nn

from fedgen.comm import CLIENT_EDGE, CLIENT_SERVER, ByteLedger
from fedgen.config import (
    CentralizedConfig,
    ExperimentConfig,
    FedAdamConfig,
    FedAvgConfig,
    FedDDPMConfig,
    FedDFConfig,
    FedDynConfig,
    FedPhDConfig,
    FedProxConfig,
    FedYogiConfig,
    GptFLConfig,
    LocalConfig,
    MoonConfig,
    OscarConfig,
    ScaffoldConfig,
    StrategyConfig,
)
from fedgen.data import Federation
from fedgen.data.images import ImageSet
from fedgen.fedeval import aggregate_evaluations, aggregate_train_metrics
from fedgen.models import build_model
from fedgen.tasks import ClassifierTask, Task
from fedgen.train import Penalty, TrainResult, train
from fedgen.wire import (
    DIFFUSION_TRAIN,
    DPDIFFUSION_TRAIN,
    ENCODE,
    FEDPHD_TRAIN,
    LABEL_HISTOGRAM,
    LABELS,
    LDMLR_TRAIN,
)
from strategies.retyped import for_task

Trainer = Callable[[nn.Module, ImageSet, int, int, list[Penalty]], TrainResult]
"""Local training as a task does it: (model, data, seed, server round, penalties) -> result. The client roles and the
server-side reference runs share it."""


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

    @property
    def kind(self) -> TaskKind:
        return TASKS[self.cfg.task]

    def param_keys(self) -> set[str]:
        """The model's trainable parameters (the state-dict keys a server step moves; others, e.g. BatchNorm
        statistics, are averaged)."""
        return {k for k, _ in self.model_fn().named_parameters()}

    def sampling(self) -> dict:
        """Flower's FedAvg-family sampling and metric aggregation, from the shared strategy keys.

        A round samples among the nodes connected when it starts: Flower waits for ``min_available_nodes``, so that
        is the minimum a round needs, not the federation's size (a node that died must not stall every round).
        """
        s = self.cfg.strategy
        return dict(
            fraction_train=s.fraction_train, fraction_evaluate=s.fraction_evaluate,
            min_train_nodes=s.min_train_clients, min_evaluate_nodes=1 if s.fraction_evaluate > 0 else 0,
            min_available_nodes=s.min_train_clients,
            evaluate_metrics_aggr_fn=partial(aggregate_evaluations, domain_names=self.fed.domain_names),
            train_metrics_aggr_fn=aggregate_train_metrics,
        )


@dataclass(frozen=True)
class TaskKind:
    """What the clients train and how a run is scored."""

    model: Callable[[ExperimentConfig, Federation], Callable[[], nn.Module]]
    """The model builder of a run."""
    trainer: Callable[[ExperimentConfig, torch.device], Trainer]
    train_type: str
    """The message type of its training messages (Flower's FedAvg family is made to send it)."""
    roles: Mapping[str, str]
    """Message type -> client role ('module:function')."""
    score: Callable[[RunContext, Strategy], Task]


def _classifier(cfg: ExperimentConfig, fed: Federation) -> Callable[[], nn.Module]:
    return lambda: build_model(cfg.model.name, fed.num_classes, cfg.model.norm, fed.image_shape[-1])


def _classifier_trainer(cfg: ExperimentConfig, device: torch.device) -> Trainer:
    return lambda model, data, seed, server_round, penalties=(): train(model, data, cfg.train, device, seed, penalties)


def _classifier_task(ctx: RunContext, strategy: Strategy) -> Task:
    return ClassifierTask(ctx.fed, ctx.model_fn, ctx.cfg.train.eval_batch_size, ctx.device,
                          long_tailed=ctx.cfg.data.partition.kind == "longtail")


def _unet(cfg: ExperimentConfig, fed: Federation) -> Callable[[], nn.Module]:
    from fedgen.diffusion.task import unet_fn

    return unet_fn(cfg, fed)


def _diffusion_trainer(cfg: ExperimentConfig, device: torch.device) -> Trainer:
    from fedgen import diffusion

    def trainer(model, data, seed, server_round, penalties=()):
        return diffusion.train(model, data, cfg.diffusion, device, seed, server_round, penalties)

    return trainer


def _diffusion_task(ctx: RunContext, strategy: Strategy) -> Task:
    from fedgen.diffusion.task import DiffusionTask

    return DiffusionTask(ctx, strategy)


def _feature_classifier(cfg: ExperimentConfig, fed: Federation) -> Callable[[], nn.Module]:
    from fedgen import ldmlr

    return ldmlr.model_fn(cfg, fed)


def _ldmlr_trainer(cfg: ExperimentConfig, device: torch.device) -> Trainer:
    from fedgen import ldmlr

    return lambda model, data, seed, server_round, penalties=(): ldmlr.train(model, data, cfg, device, seed, penalties)


def _ldmlr_task(ctx: RunContext, strategy: Strategy) -> Task:
    from fedgen.ldmlr import LongTailTask

    return LongTailTask(ctx, strategy)


FINETUNE = {MessageType.TRAIN: "clients.finetune:train", MessageType.EVALUATE: "clients.finetune:evaluate"}

TASKS: dict[str, TaskKind] = {
    "classify": TaskKind(_classifier, _classifier_trainer, MessageType.TRAIN, FINETUNE, _classifier_task),
    "diffusion": TaskKind(_unet, _diffusion_trainer, DIFFUSION_TRAIN, {DIFFUSION_TRAIN: "clients.diffusion:train"},
                          _diffusion_task),
    "ldmlr": TaskKind(_feature_classifier, _ldmlr_trainer, LDMLR_TRAIN, {LDMLR_TRAIN: "clients.ldmlr:train"},
                      _ldmlr_task),
}


def _task(ctx: RunContext, strategy: Strategy) -> Task:
    return ctx.kind.score(ctx, strategy)


def _initial(ctx: RunContext) -> dict[str, torch.Tensor]:
    return ctx.model_fn().state_dict()


@dataclass(frozen=True)
class Method:
    section: type[StrategyConfig]
    build: Callable[[RunContext], Strategy]
    roles: Mapping[str, str] = field(default_factory=dict)
    """Message type -> the client role that answers it, as 'module:function', beyond its task's roles. Every client
    also answers the partition query ('query', :func:`clients.common.query`)."""
    secure_roles: Mapping[str, str] = field(default_factory=dict)
    """Name -> 'module:function' of what a client computes only under SecAgg+ (:mod:`clients.secure`): a function
    (config, context) -> list of integer arrays, summed securely."""
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
    task: Callable[[RunContext, Strategy], Task] = _task
    """How the run is scored after each round (default: its task kind's scoring)."""
    initial: Callable[[RunContext], dict[str, torch.Tensor]] = _initial
    """The global arrays the run starts from, drawn first after seeding (every method of a task starts from the
    same model)."""
    prepare: Callable[[RunContext, Strategy, Grid, ArrayRecord], tuple[ArrayRecord, dict]] | None = None
    """A phase before round 1 that may talk to the clients (after the partition query) and gives the model round 0
    scores, with metrics for round 0's row (GPT-FL's label collection, generation and pre-training). A resumed run
    does not repeat it."""
    client_tier: str = CLIENT_SERVER
    """The link its clients' messages cross, as the byte ledger names it (FedPhD's clients talk to edges)."""
    model: Callable[[ExperimentConfig, Federation, dict | None], Callable[[], nn.Module]] | None = None
    """The builder of a run's global model, from its config and the strategy's checkpointed state, where it is not
    its task kind's (FedDDPM's denoiser with the null label, FedPhD's U-Net pruned as its plan says); read by
    :func:`model_fn`."""

    @property
    def name(self) -> str:
        return self.section.model_fields["name"].default


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method; its client roles must not take a message type a task or another method answers differently."""
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


def model_fn(cfg: ExperimentConfig, fed: Federation, state: dict | None = None) -> Callable[[], nn.Module]:
    """The builder of a run's global model, given the strategy's checkpointed state (e.g. to rebuild a finished
    run's final model)."""
    m = method(cfg.strategy.name)
    return m.model(cfg, fed, state) if m.model else TASKS[cfg.task].model(cfg, fed)


def client_roles() -> dict[str, str]:
    """Message type -> 'module:function', over every task and registered method."""
    roles = {mtype: target for kind in TASKS.values() for mtype, target in kind.roles.items()}
    return roles | {mtype: target for m in METHODS.values() for mtype, target in m.roles.items()}


def secure_roles() -> dict[str, str]:
    """Name -> 'module:function', over every registered method's secure roles."""
    return {name: target for m in METHODS.values() for name, target in m.secure_roles.items()}


def build_strategy(ctx: RunContext) -> Strategy:
    return method(ctx.cfg.strategy.name).build(ctx)


def flower(cls: type[Strategy], **kwargs) -> Callable[[RunContext], Strategy]:
    """A builder of one of Flower's own strategies, unchanged, whose training messages carry the task's type."""

    def build(ctx: RunContext) -> Strategy:
        strategy = cls(**{k: getattr(ctx.cfg.strategy, v) for k, v in kwargs.items()}, **ctx.sampling())
        return for_task(strategy, ctx.kind.train_type)

    return build


def _register_builtins() -> None:
    from strategies import centralized, fedddpm, feddf, feddyn, fedopt, fedphd, gptfl, local, moon, oscar, scaffold

    for m in (
        Method(FedAvgConfig, flower(FedAvg)),
        Method(FedProxConfig, flower(FedProx, proximal_mu="proximal_mu")),
        Method(FedAdamConfig, fedopt.builder(fedopt.ServerAdam), checkpoint=True),
        Method(FedYogiConfig, fedopt.builder(fedopt.ServerYogi), checkpoint=True),
        Method(FedDynConfig, feddyn.build, checkpoint=True),
        Method(ScaffoldConfig, scaffold.build, checkpoint=True),
        Method(MoonConfig, moon.build, checkpoint=True),
        Method(FedPhDConfig, fedphd.build, checkpoint=True, task=fedphd.task, prepare=fedphd.prepare,
               model=fedphd.model, query=(LABEL_HISTOGRAM,), roles={FEDPHD_TRAIN: "clients.fedphd:train"},
               client_tier=CLIENT_EDGE),
        Method(FedDDPMConfig, fedddpm.build, checkpoint=True, task=fedddpm.task, initial=fedddpm.initial,
               model=fedddpm.model,
               prepare=fedddpm.prepare, reply_checks=fedddpm.FedDDPM.reply_checks,
               roles={DPDIFFUSION_TRAIN: "clients.dp_diffusion:train"}),
        Method(FedDFConfig, feddf.build, task=feddf.GroupsTask, initial=feddf.initial),
        Method(GptFLConfig, gptfl.build, foundation=True, checkpoint=True, prepare=gptfl.prepare,
               reply_checks=gptfl.GptFL.reply_checks, roles={LABELS: "clients.gptfl:labels"},
               secure_roles={gptfl.TABLE_ROLE: "clients.gptfl:label_table"}),
        Method(OscarConfig, oscar.build, foundation=True, reply_checks=oscar.Oscar.reply_checks,
               roles={ENCODE: "clients.encode:encode", MessageType.EVALUATE: FINETUNE[MessageType.EVALUATE]}),
        Method(LocalConfig, local.LocalOnly.build, federated=False, checkpoint=True, task=local.LocalTask),
        Method(CentralizedConfig, centralized.Centralized.build, federated=False),
    ):
        register(m)


_register_builtins()
