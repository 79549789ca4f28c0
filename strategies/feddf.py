"""FedDF: ensemble distillation for model fusion (Lin et al., NeurIPS 2020), with client models of different
architectures in one federation.

Algorithm (each round t):
    1. sample clients; each trains, from its architecture group's current model, on its own data (the finetune role:
       the message names the architecture) and uploads its weights
    2. for each group g that sent models: the student starts from the uniform average of the group's models
    3. the teacher is the ensemble of *all* received models, of every architecture: the average of their logits on
       the server's unlabelled distillation inputs, then softmax
    4. each student is distilled from the teacher (KL, Adam, cosine, clipped) with early stopping on a held-out
       part, and the best student becomes the group's model; a group that sent nothing keeps its model
    5. each group's model goes to that group's clients next round
The math is in :mod:`fedgen.feddf`. The global arrays hold every group's model (keys '<architecture>/<key>'); a
client receives and returns only its group's, with FedAvg's bytes for that architecture.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

from fedgen import feddf
from fedgen.averaging import average
from fedgen.compat.flower import check_and_log_replies
from fedgen.config import (
    ExperimentConfig,
    ModelName,
    OpenFraction,
    PositiveFloat,
    PositiveInt,
    StrategyConfig,
    check_embedded,
)
from fedgen.data import Federation
from fedgen.data.images import to_float
from fedgen.models import classifier
from fedgen.tasks import ClassifierTask, Headline, Task
from fedgen.wire import MODEL_NAME, NUM_EXAMPLES
from strategies.method import Method


class FedDFConfig(StrategyConfig):
    """FedDF (Lin et al., NeurIPS 2020): each architecture group's clients are averaged, then every group's student is
    distilled from the ensemble of all received client models, on unlabelled server-side inputs. The distillation
    defaults are the official code's (they assume a GPU: CPU suites set smaller step budgets)."""

    name: Literal["feddf"] = "feddf"
    architectures: list[ModelName] = []
    """Architectures in contiguous blocks of partition ids (client k trains architectures[k * A // N], as in the
    official code). Empty: every client trains model.name."""
    architecture_of: dict[int, ModelName] = {}
    """Partition id -> architecture, overriding the blocks for the ids it names."""
    distillation: bool = True
    """False: no distillation, each group's model is the average of its clients' (with student_init=weighted, FedAvg
    inside each group: the baseline of a federation of several architectures, where FedAvg cannot mix them)."""
    student_init: Literal["uniform", "weighted"] = "uniform"
    """A group's student starts from the uniform average of its clients' models (the official code), or weighted by
    their examples."""
    source: Literal["public", "generated", "patches"] = "public"
    """Distillation inputs, never their labels: 'public' the server-held public split; 'generated' images from the
    foundation generator, prompted with ``prompt`` per class name; 'patches' random crops of scikit-learn's two sample
    photographs (inputs unrelated to the task, to show the method's sensitivity)."""
    source_size: PositiveInt = 2000
    """Images made for source=generated or patches."""
    prompt: str = "a photo of a {c}"
    """source=generated: the prompt of each class name {c}."""
    early_stop: Literal["kl", "accuracy"] = "kl"
    """The stop signal: 'kl' (label-free) the KL from the ensemble to the student on a held-out part of the
    distillation inputs; 'accuracy' the official code's, top-1 accuracy on a labelled held-out part of the public
    split (a run that uses it says so in its summary)."""
    holdout_fraction: OpenFraction = 0.1
    """Share held out for the stop signal."""
    temperature: PositiveFloat = 1.0
    lr: PositiveFloat = 1e-3
    """Adam, annealed by a cosine over max_steps."""
    batch_size: PositiveInt = 128
    max_steps: PositiveInt = 10_000
    eval_every: PositiveInt = 100
    patience: PositiveInt = 1_000
    """Stop this many steps after the last strict improvement of the stop signal."""
    grad_clip: PositiveFloat = 5.0

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        n = cfg.data.num_clients
        if len(self.architectures) > n:
            raise ValueError(f"strategy.architectures names {len(self.architectures)} architectures for "
                             f"data.num_clients={n} clients")
        bad = sorted(k for k in self.architecture_of if not 0 <= k < n)
        if bad:
            raise ValueError(f"strategy.architecture_of: partition ids {bad} are outside 0..{n - 1}")
        if self.eval_every > self.max_steps:
            raise ValueError(f"strategy.eval_every={self.eval_every} exceeds strategy.max_steps={self.max_steps}")
        if self.source == "generated":
            check_embedded(cfg)


@dataclass(frozen=True)
class DistillationData:
    """What the server distils on: inputs only, and for the official stop signal a labelled held-out split."""

    inputs: torch.Tensor
    holdout: torch.Tensor
    holdout_labels: torch.Tensor | None
    source: str


class FedDF(FedAvg):
    """FedDF on Flower's FedAvg sampling.

    Parameters
    ----------
    architectures : list of str
        The architecture of each partition id.
    model_fn : callable
        Architecture name -> a fresh model.
    data : DistillationData
        The distillation inputs and the stop signal's held-out part.
    settings : strategies.feddf.FedDFConfig
        Adam, cosine and early stopping.
    distillation : bool
        False: each group is plain FedAvg inside its own group (the baseline where FedAvg cannot mix architectures).
    weighted : bool
        Students start from the example-weighted average instead of the uniform one.
    """

    def __init__(self, architectures: list[str], model_fn: Callable[[str], nn.Module], data: DistillationData,
                 settings: FedDFConfig, distillation: bool, weighted: bool, device: torch.device,
                 seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.architectures, self.model_fn, self.data = architectures, model_fn, data
        self.settings, self.distillation, self.weighted = settings, distillation, weighted
        self.device, self.seed = device, seed
        self._groups: dict[str, dict[str, torch.Tensor]] = {}
        self._grid: Grid | None = None
        self.teachers: list[nn.Module] = []
        """This round's received models (the ensemble; none before a round's replies), for the task to score."""

    def _to_groups(self, messages: Iterable[Message], arrays: ArrayRecord, grid: Grid) -> list[Message]:
        """Each message with its node's group model and the architecture's name."""
        self._grid, self._groups = grid, feddf.split(arrays.to_torch_state_dict())
        records = {arch: ArrayRecord(state) for arch, state in self._groups.items()}
        out = []
        for m in messages:
            arch = self.architecture(m.metadata.dst_node_id)
            config = ConfigRecord({**m.content["config"], MODEL_NAME: arch})
            out.append(Message(RecordDict({"arrays": records[arch], "config": config}),
                               dst_node_id=m.metadata.dst_node_id, message_type=m.metadata.message_type))
        return out

    def architecture(self, node_id: int) -> str:
        return self.architectures[self._grid.partition(node_id)]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self._to_groups(super().configure_train(server_round, ArrayRecord(), config, grid), arrays, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._to_groups(super().configure_evaluate(server_round, ArrayRecord(), config, grid), arrays, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = check_and_log_replies(self, list(replies), is_train=True, validate=False)
        self.teachers = []  # a round without replies has no ensemble to score
        if not valid:
            return None, None
        received = [(self.architecture(m.metadata.src_node_id), m.content["arrays"].to_torch_state_dict(),
                     int(m.content["metrics"][NUM_EXAMPLES])) for m in valid]
        groups, metrics = dict(self._groups), {}
        t0 = time.perf_counter()
        self.teachers = [self._load(arch, state) for arch, state, _ in received]
        targets, holdout_targets = self._teacher(self.teachers) if self.distillation else (None, None)
        for g, arch in enumerate(sorted({a for a, _, _ in received})):
            mine = [(state, n) for a, state, n in received if a == arch]
            start = average([s for s, _ in mine], [n for _, n in mine] if self.weighted else None)
            if not self.distillation:
                groups[arch] = start
                continue
            student = self._load(arch, start)
            score, higher = self._stop_signal(holdout_targets)
            result = feddf.distill(student, self.data.inputs, targets, score, higher, self.settings, self.device,
                                   seed=self.seed * 100_003 + server_round * 101 + g)
            groups[arch] = result.state
            metrics.update({f"distill-steps-{arch}": result.steps, f"distill-best-step-{arch}": result.best_step,
                            f"distill-score-start-{arch}": result.initial_score,
                            f"distill-score-best-{arch}": result.best_score})
        if self.distillation:
            metrics["distill-seconds"] = time.perf_counter() - t0
        train = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return ArrayRecord(feddf.join(groups)), MetricRecord({**train, **metrics})

    def _load(self, arch: str, state: dict[str, torch.Tensor]) -> nn.Module:
        model = self.model_fn(arch)
        model.load_state_dict(state)
        return model

    def _teacher(self, models: list[nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
        """The ensemble's soft labels of the distillation inputs and of the held-out part."""
        d, s = self.data, self.settings
        logits = feddf.ensemble_logits(models, torch.cat([d.inputs, d.holdout]), s.batch_size, self.device)
        probs = feddf.soft_targets(logits, s.temperature)
        return probs[:len(d.inputs)], probs[len(d.inputs):]

    def _stop_signal(self, holdout_targets: torch.Tensor) -> tuple[Callable[[nn.Module], float], bool]:
        d, s = self.data, self.settings
        if d.holdout_labels is not None:
            return feddf.accuracy_score(d.holdout, d.holdout_labels, s.batch_size, self.device), True
        return feddf.kl_score(d.holdout, holdout_targets, s.temperature, s.batch_size, self.device), False


def architectures(cfg) -> list[str]:
    s = cfg.strategy
    return feddf.assign_architectures(cfg.data.num_clients, s.architectures, s.architecture_of, cfg.model.name)


def model_fn(cfg, fed: Federation) -> Callable[[str], nn.Module]:
    return lambda arch: classifier(cfg, fed, arch)


def distillation_images(ctx) -> np.ndarray:
    """The distillation inputs the config names, as uint8 images: never their labels."""
    cfg, fed = ctx.cfg, ctx.fed
    s, size = cfg.strategy, fed.image_shape[-1]
    if s.source == "public":
        return fed.public.images
    if s.source == "patches":
        from sklearn.datasets import load_sample_images

        return feddf.image_patches(load_sample_images().images, s.source_size, size, cfg.seed)
    from fedgen import foundation

    paths = foundation.resolve(cfg.foundation, prepare=True)
    dtype = foundation.torch_dtype(cfg.foundation.dtype, ctx.device)
    g = cfg.foundation.generator
    prompts = [s.prompt.format(c=c) for c in fed.class_names]
    embeds = foundation.TextEncoder(paths.generator, ctx.device, dtype).encode(prompts)
    generator = foundation.Generator(paths.generator, g.scheduler, ctx.device, dtype)
    per_class = -(-s.source_size // len(prompts))
    return generator.generate(embeds, per_class, g.steps, g.guidance_scale, g.size, g.batch_size, cfg.seed,
                              out_size=size)[:s.source_size]


def distillation_data(ctx) -> DistillationData:
    """The inputs, and the stop signal's held-out part: a share of the inputs (label-free), or with
    early_stop=accuracy a labelled share of the public split (kept out of the inputs when they are the public
    split)."""
    cfg, fed, s = ctx.cfg, ctx.fed, ctx.cfg.strategy
    rng = np.random.default_rng(cfg.seed)
    images = distillation_images(ctx)
    if s.early_stop == "accuracy":
        order = rng.permutation(len(fed.public))
        held = order[:max(1, int(len(order) * s.holdout_fraction))]
        x, y = fed.public.tensors(np.sort(held))
        if s.source == "public":
            images = images[np.sort(order[len(held):])]
        return DistillationData(to_float(images), x, y, s.source)
    order = rng.permutation(len(images))
    held = max(1, int(len(images) * s.holdout_fraction))
    return DistillationData(to_float(images[np.sort(order[held:])]), to_float(images[np.sort(order[:held])]), None,
                            s.source)


def build(ctx) -> FedDF:
    s = ctx.cfg.strategy
    data = distillation_data(ctx) if s.distillation else DistillationData(torch.zeros(0), torch.zeros(0), None, "")
    return FedDF(architectures(ctx.cfg), model_fn(ctx.cfg, ctx.fed), data, s, s.distillation,
                 s.student_init == "weighted", ctx.device, ctx.cfg.seed, **ctx.sampling())


def initial(ctx) -> dict[str, torch.Tensor]:
    """Every group's first model; model.name's group draws first, so it starts where FedAvg's model does."""
    archs = sorted(set(architectures(ctx.cfg)), key=lambda a: (a != ctx.cfg.model.name, a))
    make = model_fn(ctx.cfg, ctx.fed)
    return feddf.join({a: (ctx.model_fn() if a == ctx.cfg.model.name else make(a)).state_dict() for a in archs})


class GroupsTask(Task):
    """Every group's model scored on the global test split: the headline is the mean accuracy over groups, beside
    each group's ('accuracy-<architecture>'); one group is scored exactly as the classifier task. After a training
    round, 'ensemble-accuracy' is the accuracy of the teacher, the ensemble of the models the clients sent (what
    distillation can at best reach; not used by the algorithm)."""

    headline = Headline("accuracy", higher_is_better=True)
    columns = ("accuracy", "loss")

    def __init__(self, ctx, strategy: FedDF) -> None:
        self.archs = sorted(set(architectures(ctx.cfg)))
        make = model_fn(ctx.cfg, ctx.fed)
        self.strategy, self.fed, self.device = strategy, ctx.fed, ctx.device
        self.tasks = {a: ClassifierTask(ctx.fed, lambda a=a: make(a), ctx.cfg.train.eval_batch_size, ctx.device)
                      for a in self.archs}
        self.report = tuple(f"accuracy-{a}" for a in self.archs) if len(self.archs) > 1 else ()
        self.columns = ("accuracy", "loss", *self.report)
        s = ctx.cfg.strategy
        self.extras = {"feddf": {"architectures": architectures(ctx.cfg), "distillation": s.distillation,
                                 "source": s.source if s.distillation else None,
                                 "early_stop": s.early_stop if s.distillation else None}}

    def evaluate(self, server_round: int, state: dict[str, torch.Tensor]) -> dict[str, float]:
        groups = feddf.split(state)
        if len(self.archs) == 1:
            out = self.tasks[self.archs[0]].scores(groups[self.archs[0]])
        else:
            scores = {a: self.tasks[a].scores(groups[a]) for a in self.archs}
            out = {c: float(np.mean([s[c] for s in scores.values()])) for c in ("accuracy", "loss")}
            out.update({f"{c}-{a}": s[c] for a, s in scores.items() for c in ("accuracy", "loss")})
        if self.strategy.teachers:  # read, not taken: scoring has no side effect
            x, y = self.fed.test.tensors()
            logits = feddf.ensemble_logits(self.strategy.teachers, x, 256, self.device)
            out["ensemble-accuracy"] = float((logits.argmax(1) == y).float().mean())
        return out

    def final_models(self, state: dict[str, torch.Tensor]) -> dict:
        return {"model": feddf.split(state)}


class FedDFMethod(Method):
    section = FedDFConfig
    build = staticmethod(build)
    initial = staticmethod(initial)
    task = GroupsTask
