"""A method as the runtime sees it: subclass :class:`Method` in the method's own module, set its config section, and
override what differs from the defaults; defining the subclass registers it.

The ServerApp, the ClientApp, the CLI, the bench and the audit read the registry (:func:`method`,
:func:`client_roles`, :func:`secure_roles`); nothing else names a method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedgen.comm import CLIENT_SERVER
from fedgen.config import ExperimentConfig, StrategyConfig
from fedgen.data import Federation
from fedgen.discovery import discover_methods
from fedgen.tasks import Task
from strategies.context import TASKS, RunContext


class Method:
    """A federated-learning method: its config section, its strategy, its client roles and how a run of it is scored.

    Subclass it beside the strategy and set :attr:`section`; :meth:`build` is the one hook every method writes. The
    class attributes say what the runtime must do for it, the other hooks default to the task's behaviour.
    """

    section: ClassVar[type[StrategyConfig]]
    """Its config section (a :class:`fedgen.config.StrategyConfig` subclass whose ``name`` is the method's)."""
    roles: ClassVar[Mapping[str, str]] = {}
    """Message type -> the client role that answers it, as 'module:function', beyond its task's roles. Every client
    also answers the partition query ('query', :func:`clients.common.query`)."""
    secure_roles: ClassVar[Mapping[str, str]] = {}
    """Name -> 'module:function' of what a client computes only under SecAgg+ (:mod:`clients.secure`): a function
    (config, context) -> list of integer arrays, summed securely."""
    local_terms: ClassVar[tuple[str, ...]] = ()
    """'module:function' terms its clients add to the task's local training, beyond those the shared local update
    reads from the message (FedProx, FedDyn, SCAFFOLD, MOON): see :mod:`clients.local_update`."""
    query: ClassVar[tuple[str, ...]] = ()
    """Client facts the server's algorithm uses, asked before round 1 beside the partition id and the example
    counts every run needs (e.g. wire.LABEL_HISTOGRAM)."""
    foundation: ClassVar[bool] = False
    """Uses the foundation models (the embedded profile is prepared on first use)."""
    federated: ClassVar[bool] = True
    """False: a reference run that trains on the server from the partitions and sends no message."""
    checkpoint: ClassVar[bool] = False
    """The strategy has state beyond the global arrays (``state_dict`` / ``load_state_dict``), saved each round."""
    client_tier: ClassVar[str] = CLIENT_SERVER
    """The link its clients' messages cross, as the byte ledger names it (FedPhD's clients talk to edges)."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "section" in vars(cls):
            register(cls())

    @property
    def name(self) -> str:
        return self.section.model_fields["name"].default

    def build(self, ctx: RunContext) -> Strategy:
        """The run's Flower strategy."""
        raise NotImplementedError(f"method '{self.name}' does not say how to build its strategy")

    def task(self, ctx: RunContext, strategy: Strategy) -> Task:
        """How the run is scored after each round (default: its task kind's scoring)."""
        return ctx.kind.score(ctx, strategy)

    def initial(self, ctx: RunContext) -> dict[str, torch.Tensor]:
        """The global arrays the run starts from, drawn first after seeding (every method of a task starts from the
        same model)."""
        return ctx.model_fn().state_dict()

    def model(self, cfg: ExperimentConfig, fed: Federation, state: dict | None) -> Callable[[], nn.Module]:
        """The builder of the run's global model, given the strategy's checkpointed state (None before round 1); by
        default its task kind's."""
        return TASKS[cfg.task].model(cfg, fed)

    def reply_checks(self, strategy: Strategy) -> Mapping[str, Callable]:
        """Checks of its replies beyond the shared ones, by message type (run after :mod:`fedgen.validation`)."""
        return {}

    def prepare(self, ctx: RunContext, strategy: Strategy, grid: Grid,
                arrays: ArrayRecord) -> tuple[ArrayRecord, dict] | None:
        """A phase before round 1 that may talk to the clients (after the partition query): the arrays round 1
        starts from and metrics for round 0's row (GPT-FL's label collection, generation and pre-training). None: no
        such phase. A resumed run does not repeat it."""
        return None

    @property
    def prepares(self) -> bool:
        """It overrides :meth:`prepare`."""
        return type(self).prepare is not Method.prepare


METHODS: dict[str, Method] = {}
"""Name -> method, every discovered one (see :func:`method`)."""


def register(method: Method) -> Method:
    """Add a method; its client roles must not take a message type a task or another method answers differently."""
    known = METHODS.get(method.name)
    if known is not None and _where(known) != _where(method):
        raise ValueError(f"two methods are named '{method.name}': {_where(known)} and {_where(method)}")
    for mtype, target in method.roles.items():
        other = _roles().get(mtype)
        if other not in (None, target):
            raise ValueError(f"method '{method.name}': message type '{mtype}' is already answered by {other}")
    METHODS[method.name] = method
    return method


def methods() -> dict[str, Method]:
    """Every method, discovered."""
    discover_methods()
    return METHODS


def _where(method: Method) -> str:
    return f"{type(method).__module__}.{type(method).__qualname__}"


def method(name: str) -> Method:
    discover_methods()
    if name not in METHODS:
        raise KeyError(f"no registered strategy '{name}'; registered: {', '.join(METHODS)}")
    return METHODS[name]


def model_fn(cfg: ExperimentConfig, fed: Federation, state: dict | None = None) -> Callable[[], nn.Module]:
    """The builder of a run's global model, given the strategy's checkpointed state (e.g. to rebuild a finished
    run's final model)."""
    return method(cfg.strategy.name).model(cfg, fed, state)


def _roles() -> dict[str, str]:
    roles = {mtype: target for kind in TASKS.values() for mtype, target in kind.roles.items()}
    return roles | {mtype: target for m in METHODS.values() for mtype, target in m.roles.items()}


def client_roles() -> dict[str, str]:
    """Message type -> 'module:function', over every task and discovered method."""
    discover_methods()
    return _roles()


def secure_roles() -> dict[str, str]:
    """Name -> 'module:function', over every discovered method's secure roles."""
    discover_methods()
    return {name: target for m in METHODS.values() for name, target in m.secure_roles.items()}
