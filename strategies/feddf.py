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

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

from fedgen import feddf
from fedgen.compat.flower import check_and_log_replies
from fedgen.config import FedDFConfig
from fedgen.data import Federation
from fedgen.data.images import to_float
from fedgen.models import build_model
from fedgen.tasks import ClassifierTask, Headline, Task
from fedgen.wire import MODEL_NAME, NUM_EXAMPLES


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
    settings : fedgen.config.FedDFConfig
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
            start = feddf.average([s for s, _ in mine], [n for _, n in mine] if self.weighted else None)
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
    return lambda arch: build_model(arch, fed.num_classes, cfg.model.norm, fed.image_shape[-1])


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
