"""Flower's own FedAvg and FedProx, unchanged: their training messages carry the task's message type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

from flwr.serverapp.strategy import FedAvg, FedProx, Strategy
from pydantic import Field

from fedgen.config import FedAvgConfig, StrategyConfig
from strategies.context import RunContext
from strategies.method import Method
from strategies.retyped import for_task


class FedProxConfig(StrategyConfig):
    tasks = ("classify", "diffusion")
    private_clients = True
    name: Literal["fedprox"] = "fedprox"
    proximal_mu: Annotated[float, Field(ge=0)] = 0.01
    """FedProx proximal weight."""


def flower(cls: type[Strategy], **kwargs) -> Callable[[RunContext], Strategy]:
    """A builder of one of Flower's own strategies, unchanged, whose training messages carry the task's type;
    ``kwargs`` maps the strategy's arguments to keys of the strategy section."""

    def build(ctx: RunContext) -> Strategy:
        strategy = cls(**{k: getattr(ctx.cfg.strategy, v) for k, v in kwargs.items()}, **ctx.sampling())
        return for_task(strategy, ctx.kind.train_type)

    return build


class FedAvgMethod(Method):
    section = FedAvgConfig
    build = staticmethod(flower(FedAvg))


class FedProxMethod(Method):
    section = FedProxConfig
    build = staticmethod(flower(FedProx, proximal_mu="proximal_mu"))
