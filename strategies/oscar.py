"""OSCAR: one-shot federated learning with classifier-free diffusion models (ICME 2025).

One round of communication; no classifier is trained on any client.
    1. each sampled client captions its images, encodes the captions with the generator's text encoder and uploads
       one mean encoding per local class (the 'train.encode' message; :mod:`clients.encode`);
    2. the server generates N images from each (client, class) encoding, with classifier-free guidance against the
       empty prompt, and labels them with the class;
    3. the server trains the global classifier on the generated images (SGD + StepLR, the official defaults);
    4. the clients evaluate it on their real local test data (federated evaluation, per client and per domain).
The plain functions are in :mod:`fedgen.oscar`; generation is :class:`fedgen.foundation.Generator`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from pydantic import Field

from fedgen import oscar
from fedgen.compat.flower import sample
from fedgen.config import (
    ExperimentConfig,
    Fraction,
    GeneratorConfig,
    PositiveFloat,
    PositiveInt,
    StrategyConfig,
    check_embedded,
)
from fedgen.data import ImageSet
from fedgen.fedeval import aggregate_evaluations
from fedgen.results import save_image_grid
from fedgen.train import fit
from fedgen.wire import SERVER_ROUND
from strategies.context import FINETUNE
from strategies.method import Method

ENCODE = f"{MessageType.TRAIN}.encode"
"""OSCAR's upload of category encodings."""


class OscarConfig(StrategyConfig):
    """One-shot encoding upload (OSCAR). Server-side training defaults are the official code's."""

    name: Literal["oscar"] = "oscar"

    images_per_encoding: PositiveInt = 20
    """N images generated from each (client, class) encoding."""
    encoding_dtype: Literal["float16", "float32"] = "float16"
    epochs: PositiveInt = 20
    lr: PositiveFloat = 5e-4
    momentum: Fraction = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    step_size: PositiveInt = 7
    gamma: PositiveFloat = 0.1
    batch_size: PositiveInt = 32

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        if cfg.rounds != 1:
            raise ValueError(f"strategy.name=oscar is one-shot: rounds must be 1, got {cfg.rounds}")
        check_embedded(cfg)


class Oscar(Strategy):
    """OSCAR on Flower's Message API.

    Parameters
    ----------
    cfg : OscarConfig
        Images per encoding, upload dtype, and the server-side training of the classifier.
    generator_cfg : GeneratorConfig
        Steps, guidance scale, image size and batch size of generation.
    generator_fn : callable
        Returns the :class:`fedgen.foundation.Generator` (built on first use, on the server only).
    model_fn : callable
        Returns a fresh global classifier.
    num_classes, class_names, domain_names, image_size
        Of the federation's dataset: generated images are resized to its image size, the clients' test size.
    fraction_train, min_train_nodes, fraction_evaluate : float, int, float
        Client sampling for the encoding upload and the federated evaluation.
    device, seed, out_dir
        Where the server trains, its seed, and the run folder (for the grid of generated images).
    """

    def __init__(
        self, cfg: OscarConfig, generator_cfg: GeneratorConfig, generator_fn: Callable, model_fn: Callable,
        num_classes: int, class_names: list[str], domain_names: list[str], image_size: int, fraction_train: float,
        min_train_nodes: int, fraction_evaluate: float, device, seed: int, out_dir: Path,
    ) -> None:
        self.cfg, self.gen_cfg = cfg, generator_cfg
        self.generator_fn, self.model_fn = generator_fn, model_fn
        self.num_classes, self.class_names, self.domain_names = num_classes, class_names, domain_names
        self.image_size = image_size
        self.fraction_train, self.min_train_nodes = fraction_train, min_train_nodes
        self.fraction_evaluate = fraction_evaluate
        self.device, self.seed, self.out_dir = device, seed, Path(out_dir)
        self._arrays: ArrayRecord | None = None
        self._generator = None

    def summary(self) -> None:
        pass

    @property
    def generator(self):
        if self._generator is None:
            self._generator = self.generator_fn()
        return self._generator

    # --- 1. ask the clients for their category encodings -------------------------------------------------------
    def _sample(self, grid: Grid, fraction: float, minimum: int) -> list[int]:
        return sample(grid, fraction, minimum)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self._arrays = arrays
        config = ConfigRecord({**config, SERVER_ROUND: server_round})  # a copy: the run's record is shared
        nodes = self._sample(grid, self.fraction_train, self.min_train_nodes)
        return [Message(RecordDict({"config": config}), dst_node_id=n, message_type=ENCODE) for n in nodes]

    def reply_checks(self) -> dict[str, Callable[[RecordDict, RecordDict], list[str]]]:
        """Checks of an encoding upload beyond the shared ones: classes and encoding shapes."""
        shape = tuple(self.generator.empty_embedding().shape[1:])

        def check(sent: RecordDict, reply: RecordDict) -> list[str]:
            if oscar.RECORD not in reply.array_records or "metrics" not in reply.metric_records:
                return [f"missing record '{oscar.RECORD}' or 'metrics'"]
            m = reply["metrics"]
            arrays = {k: a.numpy() for k, a in reply[oscar.RECORD].items()}
            return oscar.check_upload(arrays, list(m.get("class-ids", [])), shape, self.num_classes,
                                      self.cfg.encoding_dtype)

        return {ENCODE: check}

    # --- 2. and 3. generate from them and train the classifier ---------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        if not replies:
            return None, None
        uploads = [  # replies come ordered by partition id
            ({k: a.numpy() for k, a in r.content[oscar.RECORD].items()}, list(r.content["metrics"]["class-ids"]))
            for r in replies
        ]
        encodings, classes = oscar.stack(uploads)
        t0 = time.perf_counter()
        g = self.gen_cfg
        images = self.generator.generate(
            encodings, self.cfg.images_per_encoding, g.steps, g.guidance_scale, g.size, g.batch_size, self.seed,
            out_size=self.image_size,
        )
        gen_seconds = time.perf_counter() - t0
        labels = np.repeat(classes, self.cfg.images_per_encoding)
        synthetic = ImageSet(images, labels, np.zeros(len(labels), dtype=np.int64))
        save_image_grid(self.out_dir / "generated.png", synthetic, self.class_names)
        model = self.model_fn()
        model.load_state_dict(self._arrays.to_torch_state_dict())
        t1 = time.perf_counter()
        c = self.cfg
        result = fit(model, synthetic, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, momentum=c.momentum,
                     weight_decay=c.weight_decay, device=self.device, seed=self.seed, step_size=c.step_size,
                     gamma=c.gamma)
        metrics = MetricRecord({
            "encodings": len(classes), "generated-images": len(labels), "generate-seconds": gen_seconds,
            "images-per-second": len(labels) / gen_seconds, "server-train-seconds": time.perf_counter() - t1,
            "server-train-loss": result.loss,
        })
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return ArrayRecord(state), metrics

    # --- 4. federated evaluation on the clients' real test data -------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        if self.fraction_evaluate == 0:
            return []
        config = ConfigRecord({**config, SERVER_ROUND: server_round})
        nodes = self._sample(grid, self.fraction_evaluate, 1)
        content = RecordDict({"arrays": arrays, "config": config})
        return [Message(content, dst_node_id=n, message_type=MessageType.EVALUATE) for n in nodes]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return aggregate_evaluations([r.content for r in replies], domain_names=self.domain_names)


def build(ctx) -> Oscar:
    from fedgen import foundation

    cfg, device = ctx.cfg, ctx.device
    paths = foundation.resolve(cfg.foundation)

    def generator_fn():
        return foundation.Generator(paths.generator, cfg.foundation.generator.scheduler, device,
                                    foundation.torch_dtype(cfg.foundation.dtype, device))

    s, fed = cfg.strategy, ctx.fed
    return Oscar(s, cfg.foundation.generator, generator_fn, ctx.model_fn, fed.num_classes, fed.class_names,
                 fed.domain_names, fed.image_shape[-1], fraction_train=s.fraction_train,
                 min_train_nodes=s.min_train_clients, fraction_evaluate=s.fraction_evaluate, device=device,
                 seed=cfg.seed, out_dir=ctx.out_dir)


class OscarMethod(Method):
    section = OscarConfig
    foundation = True
    roles = {ENCODE: "clients.encode:encode", MessageType.EVALUATE: FINETUNE[MessageType.EVALUATE]}
    build = staticmethod(build)

    def reply_checks(self, strategy: Oscar):
        return strategy.reply_checks()
