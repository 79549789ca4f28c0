"""What a run trains and how it is scored after each round: a task owns the run's models and their evaluation.

A task gives the headline metric (its name and direction), the columns it adds to ``rounds.csv``, the scores of the
global model(s) after a round, and the files the final models are saved to. The classifier task is the default;
a method that trains something else (per-group classifiers, a diffusion model scored by FID) brings its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedgen.data import Federation
from fedgen.train import domain_accuracy, evaluate


@dataclass(frozen=True)
class Headline:
    """The metric a method is judged by: ``final`` and ``best`` in summary.json, the report's sort order."""

    name: str
    higher_is_better: bool = True

    def best(self, values: list[float]) -> float | None:
        return (max if self.higher_is_better else min)(values) if values else None


class Task:
    """The base of a run's scoring; a task sets ``headline`` and ``columns`` and implements ``evaluate`` and
    ``final_models``."""

    headline: Headline
    columns: tuple[str, ...]
    """The task's columns of rounds.csv, between 'round' and the byte counts (the headline among them)."""
    report: tuple[str, ...] = ()
    """Columns the comparison report shows beside the headline (their final values)."""
    extras: dict[str, Any]
    """Facts about the scoring for summary.json (e.g. the extractor and calibration of a generative score): each task
    its own dict, empty unless its ``__init__`` sets one."""

    def __new__(cls, *args, **kwargs):
        task = super().__new__(cls)
        task.extras = {}
        return task

    def scored(self, server_round: int) -> bool:
        """Whether ``evaluate`` scores this round (a round it does not score has empty columns)."""
        return True

    def evaluate(self, server_round: int, state: dict[str, torch.Tensor]) -> dict[str, float]:
        """Scores of the global model(s) after ``server_round``: every column, and any further figures; {} on a round
        it does not score."""
        raise NotImplementedError

    def final_models(self, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """File stem -> what the run folder keeps of the trained model(s) (``torch.save``d as <stem>.pt)."""
        raise NotImplementedError


def tail_classes(class_counts: np.ndarray, share: float = 1 / 3) -> list[int]:
    """The tail of a long-tailed training set: the ``share`` of classes with the fewest examples (at least one)."""
    k = max(1, int(round(len(class_counts) * share)))
    return sorted(int(c) for c in np.argsort(class_counts, kind="stable")[:k])


class ClassifierTask(Task):
    """One global classifier, scored on the global test split: accuracy and loss; accuracy per domain
    ('test/acc-<domain>'), per class ('test/acc-class-<name>') and, for a long-tailed partition, on the tail
    classes ('test/acc-tail')."""

    headline = Headline("accuracy", higher_is_better=True)
    columns = ("accuracy", "loss")

    def __init__(self, fed: Federation, model_fn: Callable[[], nn.Module], batch_size: int, device: torch.device,
                 long_tailed: bool = False) -> None:
        self.fed, self.model_fn, self.batch_size, self.device = fed, model_fn, batch_size, device
        self.tail = tail_classes(fed.pooled_train().label_histogram(fed.num_classes)) if long_tailed else []

    def scores(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        model = self.model_fn()
        model.load_state_dict(state)
        fed = self.fed
        scores = evaluate(model, fed.test, self.batch_size, self.device, len(fed.domain_names), fed.num_classes)
        out = {"accuracy": scores.accuracy, "loss": scores.loss}
        out.update({f"test/acc-{d}": a for d, a in domain_accuracy(
            fed.domain_names, scores.domain_correct, scores.domain_total).items()})
        correct, total = scores.class_correct, scores.class_total
        out.update({f"test/acc-class-{fed.class_names[c]}": float(correct[c] / total[c])
                    for c in range(fed.num_classes) if total[c] > 0})
        if self.tail:
            out["test/acc-tail"] = float(correct[self.tail].sum() / max(1, total[self.tail].sum()))
        return out

    def evaluate(self, server_round: int, state: dict[str, torch.Tensor]) -> dict[str, float]:
        return self.scores(state)

    def final_models(self, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"model": state}
