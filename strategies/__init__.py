"""Server-side strategies, built by name from the experiment config.

fedavg / fedprox: Flower's own, as they are. feddyn: written here (Flower lacks it).
local / centralized: the reference runs that bound every comparison.
oscar: one-shot encoding upload.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from flwr.serverapp.strategy import FedAvg, FedProx, Strategy
from torch import nn

from fedgen.config import ExperimentConfig
from fedgen.data import Federation
from fedgen.fedeval import aggregate_evaluations
from strategies.centralized import Centralized
from strategies.feddyn import FedDyn
from strategies.local import LocalOnly
from strategies.oscar import Oscar


def build_strategy(
    cfg: ExperimentConfig, fed: Federation, model_fn: Callable[[], nn.Module], device: torch.device, out_dir: Path
) -> Strategy:
    s = cfg.strategy
    sampling = dict(
        fraction_train=s.fraction_train,
        fraction_evaluate=s.fraction_evaluate,
        min_train_nodes=s.min_train_clients,
        min_evaluate_nodes=1 if s.fraction_evaluate > 0 else 0,
        min_available_nodes=cfg.data.num_clients,
        evaluate_metrics_aggr_fn=partial(aggregate_evaluations, domain_names=fed.domain_names),
    )
    if s.name == "fedavg":
        return FedAvg(**sampling)
    if s.name == "fedprox":
        return FedProx(proximal_mu=s.proximal_mu, **sampling)
    if s.name == "feddyn":
        keys = {k for k, _ in model_fn().named_parameters()}
        mean = (float(np.mean([len(fed.client(k)[0]) for k in range(fed.num_clients)]))
                if s.feddyn_alpha_by_data_share else None)
        return FedDyn(alpha=s.feddyn_alpha, num_clients=cfg.data.num_clients, param_keys=keys, mean_examples=mean,
                      **sampling)
    if s.name == "oscar":
        from fedgen import foundation

        paths = foundation.resolve(cfg.foundation)
        g = cfg.foundation.generator

        def generator_fn():
            return foundation.Generator(paths.generator, g.scheduler, device,
                                        foundation.torch_dtype(cfg.foundation.dtype, device))

        return Oscar(
            cfg.oscar, g, generator_fn, model_fn, fed.num_classes, fed.class_names, fed.domain_names,
            fraction_train=s.fraction_train, min_train_nodes=s.min_train_clients,
            fraction_evaluate=s.fraction_evaluate, device=device, seed=cfg.seed, out_dir=out_dir,
        )
    if s.name == "local":
        return LocalOnly(fed, model_fn, cfg.train, device, cfg.seed)
    if s.name == "centralized":
        return Centralized(fed, model_fn, cfg.train, device, cfg.seed)
    raise ValueError(f"unknown strategy.name {s.name!r}")  # pragma: no cover - the schema closes the choice
