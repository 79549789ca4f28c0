"""GPT-FL: generative pre-trained model-assisted federated learning (Zhang et al., 2023).

Algorithm (before round 1, :func:`prepare`; its model is round 0's, the zero-shot figure):
    1. the server learns the union of the clients' label names: labels=plain, each client sends its names;
       labels=private, each client encodes them into an additive IBLT, the tables are summed under Flower's SecAgg+
       and the server peels the sum (the union and each label's client count, never one client's set)
    2. prompts per label: templates over styles the name does not fix, optionally a text-generation model's
    3. the foundation generator makes N images per label, the guidance scale drawn per image from 1..5
    4. the server trains the global model on the synthetic set alone (SGD, momentum, weight decay, cosine)
Rounds 1..R: a standard strategy (FedAvg, FedProx or FedAdam) fine-tunes it, unchanged; with secure_updates, FedAvg's
(or FedProx's) rounds run under SecAgg+ too.
The plain functions are :mod:`fedgen.gptfl` and :mod:`fedgen.privacy.iblt`; the secure sum :mod:`fedgen.privacy.secagg`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass
from typing import Annotated, Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx, Strategy
from pydantic import Field
from tqdm.auto import tqdm

from fedgen import gptfl
from fedgen.compat.flower import sample
from fedgen.config import ExperimentConfig, Fraction, PositiveFloat, PositiveInt, check_embedded
from fedgen.data import ImageSet
from fedgen.privacy import iblt, secagg
from fedgen.results import save_image_grid
from fedgen.train import fit
from fedgen.wire import (
    EXPERIMENT,
    PROXIMAL_MU,
    SECURE_KEYS,
    SECURE_ROLE,
    SERVER_ROUND,
)
from strategies import fedopt
from strategies.fedopt import FedOptConfig
from strategies.method import Method
from strategies.retyped import TrainsAs

GPTFL_TEMPLATES = [
    "a photo of a {label}", "a drawing of a {label}", "a painting of a {label}", "a sketch of a {label}",
    "a cartoon of a {label}", "a black and white photo of a {label}", "a close-up photo of a {label}",
    "a blurry photo of a {label}",
]
"""Styles that a label's name does not fix, so that the synthetic set spreads over them (as the official
multi-domain template does)."""


class GptFLConfig(FedOptConfig):
    """GPT-FL (Zhang et al., 2023): the server learns the union of the clients' label names, generates a synthetic
    set for them with the foundation generator, pre-trains the global model on it alone (round 0), and a standard
    strategy fine-tunes it. Pre-training defaults are the official code's (SGD, momentum 0.9, weight decay 5e-4,
    cosine over 200 epochs, lr 1e-4); eta, beta_1, beta_2 and tau are FedAdam's when finetune=fedadam."""

    tasks = ("classify",)
    name: Literal["gptfl"] = "gptfl"
    labels: Literal["plain", "private"] = "private"
    """'plain': clients send their label names; 'private': each client sends an IBLT of them, summed under SecAgg+,
    and the server peels the sum (the union and how many clients hold each label; never one client's set)."""
    label_capacity: PositiveInt = 100
    """labels=private: the distinct labels the IBLT is sized for (a decode failure names the size to use)."""
    label_bytes: PositiveInt = 64
    """labels=private: the longest label name, in UTF-8 bytes."""
    secagg_shares: Annotated[float, Field(gt=0, le=1)] = 1.0
    """SecAgg+: each client's secrets are shared with this fraction of the sampled clients (Flower's num_shares)."""
    secagg_threshold: Annotated[float, Field(gt=0, le=1)] = 0.6
    """SecAgg+: the fraction of the shares needed to reconstruct a secret (Flower's reconstruction_threshold);
    unmasking needs that many of each client's neighbours to stay, and fewer can never unmask one client alone."""
    templates: list[str] = GPTFL_TEMPLATES
    """Prompts per label, '{label}' replaced by its name."""
    prompt_model: str | None = None
    """A text-to-text model (from_pretrained: hub id or directory) that writes prompts_per_class more prompts per
    label from the label alone (official: mrm8488/t5-base-finetuned-common_gen); None: templates only."""
    prompts_per_class: PositiveInt = 200
    images_per_class: PositiveInt = 500
    guidance_min: Annotated[int, Field(ge=1)] = 1
    guidance_max: Annotated[int, Field(ge=1)] = 5
    """Each image's guidance scale is drawn uniformly from the integers guidance_min..guidance_max."""
    pretrain_epochs: PositiveInt = 200
    pretrain_lr: PositiveFloat = 1e-4
    pretrain_momentum: Fraction = 0.9
    pretrain_weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    pretrain_batch_size: PositiveInt = 64
    finetune: Literal["fedavg", "fedprox", "fedadam"] = "fedavg"
    """The strategy that fine-tunes the pre-trained model, unchanged."""
    proximal_mu: Annotated[float, Field(ge=0)] = 0.01
    """finetune=fedprox: the proximal weight."""
    secure_updates: bool = False
    """Fine-tune under SecAgg+ too (finetune=fedavg or fedprox): the server only learns each round's weighted mean of
    the trained models, clipped to +-secagg_clip and quantised to 2**22 levels (Flower's SecAgg+ arithmetic)."""
    secagg_clip: PositiveFloat = 8.0
    """secure_updates: every weight is clipped to +-secagg_clip before it is masked."""

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        if self.secure_updates and self.finetune == "fedadam":
            raise ValueError("strategy.secure_updates=true averages the models under SecAgg+: use finetune=fedavg "
                             "or fedprox")
        if self.secure_updates and self.min_train_clients < 2:
            raise ValueError("strategy.secure_updates=true needs strategy.min_train_clients >= 2 (SecAgg+ sums at "
                             "least two clients)")
        if self.guidance_min > self.guidance_max:
            raise ValueError(f"strategy.guidance_min={self.guidance_min} exceeds "
                             f"strategy.guidance_max={self.guidance_max}")
        bad = [t for t in self.templates if "{label}" not in t]
        if bad or not self.templates:
            raise ValueError(f"strategy.templates: every template needs '{{label}}' (got {bad or 'none'})")
        if self.labels == "private" and cfg.data.num_clients < 2:
            raise ValueError("strategy.labels=private sums the clients' tables under SecAgg+: it needs at least 2 "
                             "clients")
        check_embedded(cfg)


TABLE_ROLE = "gptfl.label-table"

LABELS = f"{MessageType.QUERY}.labels"
"""GPT-FL's plain label collection: the client's label names."""
LABEL_NAMES = "label-names"
"""A 'query.labels' reply's ConfigRecord key: the names of the classes the client holds."""
IBLT_SPEC = "iblt-spec"
"""GPT-FL's private label collection: the IBLT layout (capacity, prime, key bytes, chunk bytes, seed)."""
log = logging.getLogger("fedgen")


def _coverage(what: str, covered: int, asked: int, missing: str) -> None:
    """Warn when fewer clients than were asked made it into a sum (SecAgg+ drops a client that stops answering)."""
    if covered < asked:
        log.warning("%s covers %d of the %d clients asked: %s", what, covered, asked, missing)


class GptFL(TrainsAs):
    """Rounds 1..R are those of the fine-tuning strategy, unchanged (so it composes with anything that strategy
    composes with); GPT-FL itself is what happens before them (:func:`prepare`).

    With ``secure`` (a :class:`SecureUpdates`), each round's sampled clients train under SecAgg+ instead, and the
    server learns only their example-weighted mean (FedAvg's, or FedProx's with its penalty on the clients)."""

    def __init__(self, finetune: Strategy, class_names: list[str], secure: SecureUpdates | None = None) -> None:
        super().__init__(finetune, MessageType.TRAIN)
        self.class_names, self.secure = class_names, secure
        self._secure_result = None

    def state_dict(self) -> dict:
        return self.inner.state_dict() if hasattr(self.inner, "state_dict") else {}

    def load_state_dict(self, state: dict) -> None:
        if hasattr(self.inner, "load_state_dict"):
            self.inner.load_state_dict(state)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        """Plain: the fine-tuning strategy's messages. Secure: the whole SecAgg+ round runs here, over the Grid, and
        no message is left for the loop to send."""
        if self.secure is None:
            return super().configure_train(server_round, arrays, config, grid)
        self._secure_result = self.secure.round(server_round, arrays, config, grid,
                                                float(getattr(self.inner, "proximal_mu", 0.0)))
        return []

    def aggregate_train(self, server_round: int, replies):
        if self.secure is None:
            return super().aggregate_train(server_round, replies)
        result, self._secure_result = self._secure_result, None
        return result

    def reply_checks(self) -> dict[str, Callable[[RecordDict, RecordDict], list[str]]]:
        """A plain label reply names classes of the dataset, as strings."""

        def check(sent: RecordDict, reply: RecordDict) -> list[str]:
            names = reply.config_records.get("labels", ConfigRecord()).get(LABEL_NAMES)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                return [f"missing config record 'labels.{LABEL_NAMES}' (a list of label names)"]
            unknown = sorted(set(names) - set(self.class_names))
            return [f"labels {unknown[:5]} are not classes of the dataset"] if unknown else []

        return {LABELS: check}


@dataclass(frozen=True)
class SecureUpdates:
    """FedAvg's round under SecAgg+: Flower's sampling, the task's training on each client, the weighted mean."""

    fraction_train: float
    min_train_nodes: int
    max_weight: int
    """At least every client's training-set size (SecAgg+ weighs by num_examples / max_weight)."""
    clip: float
    shares: float
    threshold: float
    timeout: float

    def round(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid,
              proximal_mu: float) -> tuple[ArrayRecord, MetricRecord]:
        nodes = sample(grid, self.fraction_train, self.min_train_nodes)
        state = {k: a.numpy() for k, a in arrays.items()}
        keys = secagg.summed_keys(state)
        instructions = ConfigRecord({**config, SERVER_ROUND: server_round, SECURE_ROLE: MessageType.TRAIN,
                                     SECURE_KEYS: json.dumps(list(state)), PROXIMAL_MU: proximal_mu})
        mean, n = secagg.secure_mean(grid, nodes, instructions, list(state.values()), self.max_weight, self.clip,
                                     self.shares, self.threshold, self.timeout, server_round)
        _coverage(f"round {server_round}: the secure mean", n, len(nodes), "the others' updates are not in it")
        state.update({k: m.astype(state[k].dtype) for k, m in zip(keys, mean, strict=True)})
        return (ArrayRecord({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}),
                MetricRecord({"secure-clients": n, "secure-clients-asked": len(nodes)}))


# --- 1. the union of the clients' labels ----------------------------------------------------------------------------
UNION_SHORT = "labels only the others hold are missing"


def collect_plain(ctx, grid: Grid) -> tuple[dict[str, int], int, int]:
    """The union of the clients' label names, the clients it counts and the clients asked."""
    config = ConfigRecord({EXPERIMENT: ctx.cfg.to_json(), SERVER_ROUND: 0})
    messages = [Message(RecordDict({"config": config}), dst_node_id=n, message_type=LABELS)
                for n in grid.get_node_ids()]
    replies = list(grid.send_and_receive(messages, timeout=ctx.cfg.strategy.round_timeout_s))
    _coverage("GPT-FL's label union", len(replies), len(messages), UNION_SHORT)
    return gptfl.union([list(r.content["labels"][LABEL_NAMES]) for r in replies]), len(replies), len(messages)


def collect_private(ctx, grid: Grid) -> tuple[dict[str, int], int, int]:
    """The union of the clients' label names under SecAgg+, the clients its secure sum covers and the clients asked
    (a client SecAgg+ drops is left out of the sum, and its labels with it)."""
    s, nodes = ctx.cfg.strategy, list(grid.get_node_ids())
    counted = []

    def summed(spec: iblt.Spec) -> np.ndarray:
        config = ConfigRecord({
            EXPERIMENT: ctx.cfg.to_json(), SECURE_ROLE: TABLE_ROLE,
            IBLT_SPEC: json.dumps(astuple(spec)),
        })
        total = secagg.secure_sum(grid, nodes, config, spec.prime, s.secagg_shares, s.secagg_threshold,
                                  s.round_timeout_s)
        counted.append(total.clients)
        return total.total[0] % spec.prime

    spec = iblt.spec_for(s.label_capacity, max(len(nodes), 2), s.label_bytes, ctx.cfg.seed)
    found, _ = iblt.decode_with_retries(summed, spec)
    _coverage("GPT-FL's label union", counted[-1], len(nodes), UNION_SHORT)
    return found, counted[-1], len(nodes)


# --- 2. and 3. prompts and the synthetic set ------------------------------------------------------------------------
def prompts_for(ctx, labels: list[str]) -> dict[str, list[str]]:
    s = ctx.cfg.strategy
    prompts = {label: gptfl.template_prompts(label, s.templates) for label in labels}
    if s.prompt_model:
        writer = gptfl.PromptWriter(s.prompt_model, ctx.device)
        for i, label in enumerate(labels):
            prompts[label] += writer.write(label, s.prompts_per_class, ctx.cfg.seed + i)
    return prompts


def synthesize(ctx, prompts: dict[int, list[str]]) -> ImageSet:
    from fedgen import foundation

    cfg, s = ctx.cfg, ctx.cfg.strategy
    g = cfg.foundation.generator
    paths = foundation.resolve(cfg.foundation, prepare=True)
    dtype = foundation.torch_dtype(cfg.foundation.dtype, ctx.device)
    texts, labels, scales = gptfl.plan(prompts, s.images_per_class, (s.guidance_min, s.guidance_max),
                                       np.random.default_rng(cfg.seed))
    unique = sorted(set(texts))
    embeds = foundation.TextEncoder(paths.generator, ctx.device, dtype).encode(unique)
    generator = foundation.Generator(paths.generator, g.scheduler, ctx.device, dtype)
    parts = []
    for c in tqdm(sorted(prompts), desc=f"generating {len(texts)} images, class by class", mininterval=2):
        idx = np.flatnonzero(labels == c)  # one class at a time: only its prompts' encodings are expanded
        rows = embeds[[unique.index(texts[i]) for i in idx]]
        parts.append(generator.generate(rows, 1, g.steps, scales[idx], g.size, g.batch_size, cfg.seed + c,
                                        progress=False, out_size=ctx.fed.image_shape[-1]))
    images = np.concatenate(parts)
    return ImageSet(images, labels, np.zeros(len(labels), dtype=np.int64))


# --- 4. pre-training; the whole phase -------------------------------------------------------------------------------
def prepare(ctx, strategy: GptFL, grid: Grid, arrays: ArrayRecord) -> tuple[ArrayRecord, dict]:
    """Labels, prompts, synthetic set and pre-training: the model round 0 scores, and that round's metrics."""
    s, fed = ctx.cfg.strategy, ctx.fed
    t0 = time.perf_counter()
    found, answered, asked = (collect_private if s.labels == "private" else collect_plain)(ctx, grid)
    ids = gptfl.class_ids(found, fed.class_names)
    t1 = time.perf_counter()
    by_name = prompts_for(ctx, [fed.class_names[c] for c in ids])
    synthetic = synthesize(ctx, {c: by_name[fed.class_names[c]] for c in ids})
    t2 = time.perf_counter()
    save_image_grid(ctx.out_dir / "synthetic.png", synthetic, fed.class_names)
    model = ctx.model_fn()
    model.load_state_dict(arrays.to_torch_state_dict())
    result = fit(model, synthetic, epochs=s.pretrain_epochs, batch_size=s.pretrain_batch_size, lr=s.pretrain_lr,
                 momentum=s.pretrain_momentum, weight_decay=s.pretrain_weight_decay, device=ctx.device,
                 seed=ctx.cfg.seed, cosine=True)
    t3 = time.perf_counter()
    (ctx.out_dir / "labels.json").write_text(json.dumps(
        {"mode": s.labels, "clients_counted": answered, "clients_asked": asked,
         "labels": {n: found[n] for n in sorted(found)},
         "prompts": {n: len(p) for n, p in sorted(by_name.items())}}, indent=1))
    metrics = {"gptfl/labels": len(found), "gptfl/label-clients": answered, "gptfl/label-clients-asked": asked,
               "gptfl/label-seconds": t1 - t0, "gptfl/synthetic-images": len(synthetic),
               "gptfl/generate-seconds": t2 - t1, "gptfl/pretrain-seconds": t3 - t2,
               "gptfl/pretrain-loss": result.loss}
    return ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()}), metrics


def build(ctx) -> GptFL:
    s = ctx.cfg.strategy
    if s.finetune == "fedavg":
        inner = FedAvg(**ctx.sampling())
    elif s.finetune == "fedprox":
        inner = FedProx(proximal_mu=s.proximal_mu, **ctx.sampling())
    else:
        inner = fedopt.ServerAdam(eta=s.eta, eta_l=ctx.cfg.train.lr, beta_1=s.beta_1, beta_2=s.beta_2, tau=s.tau,
                                  param_keys=ctx.param_keys(), **ctx.sampling())
    secure = None
    if s.secure_updates:
        largest = max(len(ctx.fed.client(k)[0]) for k in range(ctx.fed.num_clients))
        secure = SecureUpdates(s.fraction_train, s.min_train_clients, largest, s.secagg_clip, s.secagg_shares,
                               s.secagg_threshold, s.round_timeout_s)
    return GptFL(inner, ctx.fed.class_names, secure)


class GptFLMethod(Method):
    section = GptFLConfig
    foundation = True
    checkpoint = True
    roles = {LABELS: "clients.gptfl:labels"}
    secure_roles = {TABLE_ROLE: "clients.gptfl:label_table"}
    build = staticmethod(build)
    prepare = staticmethod(prepare)

    def reply_checks(self, strategy: GptFL):
        return strategy.reply_checks()
