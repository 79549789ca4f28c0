"""What a method is built from: the run's context, and the task kinds (what the clients train and how a run is
scored: ``task`` in the config)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from flwr.app import MessageType
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedgen.comm import ByteLedger
from fedgen.config import ExperimentConfig
from fedgen.data import Federation
from fedgen.data.images import ImageSet
from fedgen.fedeval import aggregate_evaluations, aggregate_train_metrics
from fedgen.models import classifier
from fedgen.tasks import ClassifierTask, Task
from fedgen.train import Penalty, TrainResult, train
from fedgen.wire import DIFFUSION_TRAIN, LDMLR_TRAIN

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
    return lambda: classifier(cfg, fed)


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
