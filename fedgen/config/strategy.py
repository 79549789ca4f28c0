"""The strategy section: what every method shares, and the registry of method sections.

A method's own section subclasses :class:`StrategyConfig` in the method's module (``strategies/<method>.py``);
defining it registers it in :data:`SECTIONS`. FedAvg's section lives here: it is the schema's default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, get_origin

from pydantic import Field

from fedgen.config.base import Fraction, PositiveFloat, PositiveInt, Section

if TYPE_CHECKING:
    from fedgen.config.experiment import ExperimentConfig


SECTIONS: dict[str, type[StrategyConfig]] = {}
"""Strategy name -> its config section: every subclass of :class:`StrategyConfig` registers itself here."""


class StrategyConfig(Section):
    """What every strategy shares. Each method's section subclasses it, names itself in ``name`` (a one-value
    Literal) and adds its own keys; ``strategy.name`` picks the section, so a key of another method is refused."""

    tasks: ClassVar[tuple[str, ...]] = ("classify",)
    """The tasks (top-level ``task``) the method can run."""
    private_clients: ClassVar[bool] = False
    """Its clients can train the image U-Net with DP-SGD (task diffusion with dp.epsilon or dp.sigma): the terms it
    adds to local training depend on the weights only (added to the noisy gradient), never on the data."""

    name: str = "fedavg"
    fraction_train: Annotated[float, Field(gt=0, le=1)] = 1.0
    """Each round samples max(int(fraction_train * connected clients), min_train_clients) clients: Flower's rule."""
    min_train_clients: PositiveInt = 2
    """At least this many are sampled, and a round needs this many valid updates to count."""
    fraction_evaluate: Fraction = 0.0
    """Share of clients asked to evaluate the global model on their local test split each round."""
    round_timeout_s: PositiveFloat = 3600.0
    """A client that has not replied this long after a round's messages went out counts as failed for the round;
    a round that finds fewer than min_train_clients nodes connected for this long stops the run."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if get_origin(cls.model_fields["name"].annotation) is not Literal:
            return  # a shared base of several sections, not a method's own
        name = cls.model_fields["name"].default
        if name in SECTIONS and (SECTIONS[name].__module__, SECTIONS[name].__qualname__) != (cls.__module__,
                                                                                           cls.__qualname__):
            raise ValueError(f"strategy '{name}' has two config sections: {SECTIONS[name]} and {cls}")
        SECTIONS[name] = cls

    def check(self, cfg: ExperimentConfig) -> None:
        """Consistency with the rest of the experiment; raise ValueError naming the key."""
        if cfg.task not in self.tasks:
            raise ValueError(f"strategy '{self.name}' does not run task={cfg.task} (it runs: {', '.join(self.tasks)})")
        if cfg.task in ("diffusion", "ldmlr") and self.fraction_evaluate > 0:
            raise ValueError(f"task={cfg.task} is scored on the server (generated samples against the global test "
                             "split): set strategy.fraction_evaluate=0")
        if self.min_train_clients > cfg.data.num_clients:  # Flower would wait for that many nodes forever
            raise ValueError(f"strategy.min_train_clients={self.min_train_clients} exceeds "
                             f"data.num_clients={cfg.data.num_clients}")


class FedAvgConfig(StrategyConfig):
    tasks = ("classify", "diffusion", "ldmlr")
    private_clients = True
    name: Literal["fedavg"] = "fedavg"
