"""The experiment schema: the one home of every configuration value.

An experiment is a YAML file validated against :class:`ExperimentConfig`. Unknown keys, wrong types and impossible
values are refused with a :class:`ConfigError` that names the offending key, before any work starts.
``--set key.sub=value`` overrides are applied to the YAML tree before validation (values parsed as YAML).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, create_model, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
OpenFraction = Annotated[float, Field(gt=0, lt=1)]


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PartitionConfig(_Section):
    """How the client pool is split among clients (flwr-datasets partitioners)."""

    kind: Literal["iid", "dirichlet", "classes", "domain", "longtail"] = "iid"
    alpha: PositiveFloat = 0.5
    """Dirichlet concentration (kind=dirichlet); smaller is more skewed."""
    classes_per_client: PositiveInt = 2
    """Classes each client holds (kind=classes)."""
    imbalance_factor: Annotated[float, Field(ge=1)] = 10.0
    """Largest over smallest class size of the long-tailed pool (kind=longtail), which is then split IID."""
    min_partition_size: Annotated[int, Field(ge=0)] = 10
    """Dirichlet resamples until every client holds at least this many examples."""


class DataConfig(_Section):
    dataset: Literal["digits-domains", "cifar10", "cifar100", "huggingface", "folder"] = "digits-domains"
    path: str | None = None
    """cifar*: the torchvision root; huggingface: a hub id or a local directory; folder: root/domain/class/image."""
    download: bool = False
    """cifar*: let torchvision download into ``path`` when missing."""
    image_key: str = "img"
    label_key: str = "label"
    image_size: PositiveInt = 32
    num_clients: PositiveInt = 6
    partition: PartitionConfig = PartitionConfig()
    client_test_fraction: Fraction = 0.2
    """Share of each client's partition kept as its local test split."""
    public_fraction: OpenFraction = 0.15
    """Share of the training data set aside as the server-held public split; no client ever sees it."""
    test_fraction: OpenFraction = 0.15
    """Share held out as the global test split, for datasets that ship none."""
    split_seed: int = 0
    """Seed of the benchmark's fixed splits (public / global test / client pool), independent of the run seed."""

    @model_validator(mode="after")
    def _paths(self) -> DataConfig:
        if self.dataset in ("huggingface", "folder") and not self.path:
            raise ValueError(f"data.path is required for dataset '{self.dataset}'")
        if self.public_fraction + self.test_fraction >= 1:
            raise ValueError("data.public_fraction + data.test_fraction must be below 1")
        return self

    @property
    def image_side(self) -> int:
        """The side of the loaded images: ``image_size`` for the datasets resized to it, else 32 (digits-domains and
        CIFAR are 32x32)."""
        return self.image_size if self.dataset in ("huggingface", "folder") else 32


ModelName = Literal["cnn", "resnet18", "resnet8", "mobilenet"]
"""The classifiers of :data:`fedgen.models.MODELS`."""


class ModelConfig(_Section):
    name: ModelName = "cnn"
    norm: Literal["batch", "group"] = "batch"
    """GroupNorm is the variant DP-SGD accepts."""


class TrainConfig(_Section):
    """Local training of a classifier (clients, and the server for reference runs)."""

    local_epochs: PositiveInt = 1
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 0.01
    momentum: Fraction = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    eval_batch_size: PositiveInt = 256


SECTIONS: dict[str, type[StrategyConfig]] = {}
"""Strategy name -> its config section: every subclass of :class:`StrategyConfig` registers itself here."""


class StrategyConfig(_Section):
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
        if name in SECTIONS and SECTIONS[name].__qualname__ != cls.__qualname__:
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


class FedProxConfig(StrategyConfig):
    tasks = ("classify", "diffusion")
    private_clients = True
    name: Literal["fedprox"] = "fedprox"
    proximal_mu: Annotated[float, Field(ge=0)] = 0.01
    """FedProx proximal weight."""


class FedDynConfig(StrategyConfig):
    name: Literal["feddyn"] = "feddyn"
    feddyn_alpha: PositiveFloat = 0.01
    """FedDyn regulariser weight. FedDyn corrects the trainable parameters only; BatchNorm's running statistics are
    plainly averaged, so run it with model.norm=group for the algorithm as written."""
    feddyn_alpha_by_data_share: bool = False
    """As FedDyn's official code: client k uses alpha / w_k, w_k = n_k / (mean of n over the federation), so clients
    with more data are pulled less towards the global model. False: every client uses alpha (the paper's text)."""


class ScaffoldConfig(StrategyConfig):
    """SCAFFOLD (Karimireddy et al., ICML 2020), option II. The control variates travel with the model, so each
    round moves twice FedAvg's bytes each way."""

    tasks = ("classify", "diffusion")
    name: Literal["scaffold"] = "scaffold"
    scaffold_eta_g: PositiveFloat = 1.0
    """Global step size: x <- x + eta_g * mean(y_i - x) (the paper's default 1 is FedAvg's averaging)."""


class MoonConfig(StrategyConfig):
    """MOON (Li et al., CVPR 2021): FedAvg with a model-contrastive term in local training."""

    tasks = ("classify", "diffusion")
    name: Literal["moon"] = "moon"
    moon_mu: PositiveFloat = 1.0
    """Weight of the contrastive term (the paper uses 5 on CIFAR-10, 1 on CIFAR-100 and Tiny-ImageNet)."""
    moon_tau: PositiveFloat = 0.5
    """Temperature of the cosine similarities."""


class FedPhDConfig(StrategyConfig):
    """FedPhD (Long et al., 2024): clients -> edges -> cloud, homogeneity-aware edge selection and cloud weights,
    structured pruning of the U-Net. Defaults: the official code's (A 10000, a 5000, r_g 5, ratio 0.2, lambda 1e-5)."""

    tasks = ("diffusion",)
    private_clients = True
    name: Literal["fedphd"] = "fedphd"
    num_edges: PositiveInt = 2
    cloud_every: PositiveInt = 5
    """r_g: the cloud aggregates the edges after rounds r_g, 2 r_g, ...; the edges aggregate their clients every
    round."""
    selection_a: Annotated[float, Field(ge=0)] = 10000.0
    """A in P(e) ~ max(A * SH(merged) - n_e + b, 0) + 1e-8."""
    selection_b: float = 0.0
    balance_a: Annotated[float, Field(ge=0)] = 5000.0
    """a in rho_e ~ ReLU(n_e + a * SH(q_e) + b) (the official CIFAR-10 script: 50000)."""
    balance_b: float = 0.0
    homogeneity_norm: Literal["l2", "l1"] = "l2"
    """SH(q) = 2 - ||q - q_target||: L2 as the official code, L1 as the notes."""
    homogeneity_target: Literal["uniform", "global"] = "uniform"
    """q_target: the uniform distribution, or the federation's label distribution (from the clients' histograms)."""
    prune: Literal["none", "start", "after"] = "after"
    """'start': prune the initial model before round 1 (the official --train_scratch, 'OS'); 'after': sparse training
    for sparse_rounds rounds, then prune the global model (the official default); 'none': no pruning."""
    pruning_ratio: OpenFraction = 0.2
    """Share of each channel group pruned (0.2 CIFAR-10, 0.4 CelebA in the official scripts)."""
    sparse_rounds: PositiveInt = 10
    """prune=after: R_s, the rounds of sparse training before pruning (a cloud round; official 200 of 10200)."""
    sparse_lambda: Annotated[float, Field(ge=0)] = 1e-5
    """prune=after: the sparse-training term lambda * sum ||W|| over weight tensors, added while sparse training."""

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        if cfg.rounds % self.cloud_every:
            raise ValueError(f"rounds={cfg.rounds} must be a multiple of strategy.cloud_every={self.cloud_every} (the "
                             "run ends on a cloud aggregation: its last model is the cloud's)")
        if cfg.evaluation.every % self.cloud_every:
            raise ValueError(f"evaluation.every={cfg.evaluation.every} must be a multiple of strategy.cloud_every="
                             f"{self.cloud_every}: only the cloud rounds have a global model to score")
        if self.prune == "after" and (self.sparse_rounds % self.cloud_every or self.sparse_rounds >= cfg.rounds):
            raise ValueError(f"strategy.sparse_rounds={self.sparse_rounds} must be a cloud round (a multiple of "
                             f"strategy.cloud_every={self.cloud_every}) before the last round ({cfg.rounds})")


class FedDDPMConfig(StrategyConfig):
    """Private federated feature diffusion (METHODS.md 5b, 5c): a shared encoder trained on the server's public split
    only; clients train the conditional feature denoiser with dp-promise (the dp section) and send it, or pseudo-
    features sampled from it; the server averages, corrects (FedDDPM), may stop early (FedDDPM+), refreshes its
    auxiliary set progressively, and trains the head G on generated (and public) features."""

    tasks = ("ldmlr",)
    name: Literal["fedddpm"] = "fedddpm"
    encoder_epochs: PositiveInt = 10
    """Passes of E + G (the train section's SGD) over the public split before round 1."""
    upload: Literal["weights", "features"] = "weights"
    """What a client sends: its denoiser's weights, or ``upload_per_class`` pseudo-features of every class sampled
    from it (post-processing: the guarantee holds), which the server fits its denoiser to."""
    upload_per_class: PositiveInt = 50
    server_epochs: PositiveInt = 50
    """upload=features: passes of the server's denoiser over the uploaded pseudo-features each round."""
    correction: Literal["none", "generated", "public"] = "generated"
    """FedDDPM's correction after each aggregation: 'generated' on an auxiliary set the model generates (after the
    first aggregation), 'public' on the public split's features, 'none': plain FedAvg of the denoisers."""
    correction_steps: Annotated[int, Field(ge=0)] = 50
    correction_lr: PositiveFloat = 1e-3
    aux_per_class: PositiveInt = 50
    """correction=generated: the auxiliary set's pseudo-features per class."""
    plus: bool = False
    """FedDDPM+: a quick test after each round (the Frechet distance of fresh samples to the public features); when a
    round improves it by less than ``plus_threshold`` (relative), the server fine-tunes once for ``plus_steps`` on
    the auxiliary set and stops the run."""
    plus_threshold: Annotated[float, Field(ge=0)] = 0.05
    plus_steps: PositiveInt = 500
    progressive: bool = False
    """The notes' progressive generation: after each correction, if the head G reads at least
    ``progressive_min_fidelity`` of fresh samples as their class, ``progressive_fraction`` of the auxiliary set (the
    oldest first) is regenerated; with ``progressive_filter``, only samples G reads as their class enter."""
    progressive_fraction: OpenFraction = 0.25
    progressive_min_fidelity: Fraction = 0.5
    progressive_filter: bool = True
    head_per_class: PositiveInt = 200
    """Pseudo-features per class the server generates each round for G (every class alike: the server does not know
    the clients' class counts)."""
    head_public: bool = True
    """G trains on the public split's features beside the generated ones (ldmlr.head_* settings)."""

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        if cfg.ldmlr.denoiser != "mlp":
            raise ValueError("strategy fedddpm needs ldmlr.denoiser=mlp: noise multiplicity feeds the denoiser "
                             "(batch, K, d) tensors, which opacus' per-sample gradients of the MLP's layers sum over")
        if not 0 < cfg.dp.split_step < cfg.ldmlr.num_train_timesteps:
            raise ValueError(f"dp.split_step={cfg.dp.split_step} must lie inside the "
                             f"{cfg.ldmlr.num_train_timesteps} timesteps (ldmlr.num_train_timesteps)")
        if self.correction == "generated" and self.upload == "features":
            raise ValueError("strategy.upload=features fits the server's denoiser to the uploaded pseudo-features: "
                             "set strategy.correction to none or public")
        if self.plus and self.correction == "none":
            raise ValueError("strategy.plus (FedDDPM+) fine-tunes on the auxiliary set: set strategy.correction")


class FedOptConfig(StrategyConfig):
    """Flower's adaptive server optimisers (Reddi et al., ICLR 2021). The client learning rate eta_l is the task's
    own (train.lr or diffusion.lr); the defaults are the paper's CIFAR-10 setting."""

    tasks = ("classify", "diffusion")
    private_clients = True
    eta: PositiveFloat = 1e-2
    """Server learning rate."""
    beta_1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta_2: Annotated[float, Field(ge=0, lt=1)] = 0.99
    tau: PositiveFloat = 1e-3
    """Adaptivity: added to the square root of the second moment."""


class FedAdamConfig(FedOptConfig):
    name: Literal["fedadam"] = "fedadam"


class FedYogiConfig(FedOptConfig):
    name: Literal["fedyogi"] = "fedyogi"


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


class ServerSideConfig(StrategyConfig):
    """The reference runs train on the server from the partitions: no client is sampled, the shared keys are unused."""

    tasks = ("classify", "diffusion", "ldmlr")

    def check(self, cfg: ExperimentConfig) -> None:
        if cfg.task not in self.tasks:
            raise ValueError(f"strategy '{self.name}' does not run task={cfg.task}")


class LocalConfig(ServerSideConfig):
    name: Literal["local"] = "local"


class CentralizedConfig(ServerSideConfig):
    name: Literal["centralized"] = "centralized"


class DiffusionConfig(_Section):
    """The class-conditional image DDPM (task=diffusion) and its local training; the defaults are FedPhD's."""

    unet: Literal["tiny", "digits", "paper"] = "digits"
    """U-Net size (fedgen.diffusion.UNETS): 'tiny' for tests, 'digits' for the embedded benchmark (16x16 on CPU),
    'paper' FedPhD's 35.7M U-Net (channels 128/256/256/256, attention at 16x16) for GPU users."""
    image_size: PositiveInt | None = None
    """Side of the generated images; the dataset's images are resized to it. None: the dataset's own size."""
    num_train_timesteps: PositiveInt = 1000
    beta_schedule: Literal["linear", "cosine"] = "linear"
    """'linear' from beta_start to beta_end (DDPM); 'cosine' is diffusers' squaredcos_cap_v2 (improved DDPM)."""
    beta_start: PositiveFloat = 1e-4
    beta_end: PositiveFloat = 0.02
    prediction: Literal["epsilon", "v_prediction"] = "epsilon"
    lr: PositiveFloat = 2e-4
    """Adam."""
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    """Linear learning-rate warm-up, counted in local steps from round 1 as if the client trained every round (so it
    ends at the same round for every client, however often it is sampled)."""
    grad_clip: PositiveFloat = 1.0
    batch_size: PositiveInt = 128
    local_epochs: PositiveInt = 1
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Send the exponential moving average of the weights over the local steps (diffusers' EMAModel, with its
    warm-up) instead of the last weights. None: off."""
    autocast: Literal["none", "bf16", "fp16"] = "none"
    """Mixed precision for training and sampling (fp16 with a gradient scaler, on CUDA)."""


class EvaluationConfig(_Section):
    """How a generative run is scored (task=diffusion), on the server after a round."""

    every: PositiveInt = 1
    """Score every this many rounds; round 0 (the untrained model) and the last round always."""
    samples_per_class: PositiveInt = 50
    sampling_steps: PositiveInt = 100
    """DDIM steps (FedPhD: 100)."""
    batch_size: PositiveInt = 250
    inception: str | None = None
    """A local file of the FID Inception-v3 weights (torch-fidelity's pt_inception-2015-12-05-6726825d.pth): FID and
    IS then use Inception ('fid[inception]'). None: the project's own extractor, a CNN trained on the server-held
    public split ('fid[own-<dataset>-cnn]'). The two scales are not comparable."""
    reference_epochs: PositiveInt = 15
    """Training of the own extractor (it also judges class fidelity), cached in cache_dir."""
    cache_dir: str = "~/.cache/fedgen/reference"


class LdmlrConfig(_Section):
    """Feature-space diffusion for long-tailed recognition (task=ldmlr; METHODS.md 5a): the classifier's backbone E
    gives features z, its last linear layer is the head G, a conditional denoiser eps_theta(z_t, t, y) learns p(z | y)
    and its pseudo-features of rare classes train G. Defaults are the official code's where it has one."""

    method: Literal["ce", "three_stage", "e2e"] = "three_stage"
    """'ce': plain cross-entropy (the train section's passes; the denoiser is not trained). 'three_stage' (official):
    E + G on the data, then the denoiser on frozen features, then G alone on real + generated features. 'e2e' (the
    notes): {E, G, theta} in one loop, by ``schedule``."""
    # the denoiser and its noise schedule (diffusers' DDPMScheduler / DDIMScheduler on (batch, dim) tensors)
    denoiser: Literal["mlp", "unet1d"] = "mlp"
    """'unet1d': the official 1-D conditional U-Net (the feature vector as a one-channel sequence); 'mlp': residual
    MLP blocks. Both add a class embedding to the time embedding."""
    unet_dim: PositiveInt = 64
    unet_mults: Annotated[list[PositiveInt], Field(min_length=1)] = [1, 2, 4, 8]
    """Channels per level = unet_dim * mult; the feature dimension must divide by 2^(levels - 1)."""
    mlp_width: PositiveInt = 256
    mlp_depth: PositiveInt = 3
    num_train_timesteps: PositiveInt = 1000
    beta_schedule: Literal["cosine", "linear"] = "cosine"
    """'cosine' is diffusers' squaredcos_cap_v2 (official); 'linear' from 1e-4 to 0.02."""
    prediction: Literal["sample", "epsilon"] = "sample"
    """'sample': the denoiser predicts z0, its loss weighted by SNR_t = abar_t / (1 - abar_t) (official; the same
    objective as the epsilon loss); 'epsilon': the plain DDPM loss."""
    snr_gamma: PositiveFloat | None = None
    """Min-SNR weighting: clip SNR_t at this value (None: unclipped, official)."""
    diffusion_lr: PositiveFloat = 1e-3
    """Adam, for the denoiser (the official code's SGD at 1e-4 needs far more steps than a CPU run gives)."""
    diffusion_epochs: PositiveInt = 200
    """three_stage: passes of stage 2 over the frozen features."""
    diffusion_batch_size: PositiveInt = 256
    sampling_steps: PositiveInt = 50
    """DDIM steps (eta 0) when pseudo-features are generated for stage 3 and for scoring."""
    # stage 3 (three_stage) and the generated set
    generate: Literal["proportional", "fill_tail"] = "proportional"
    """'proportional' (official): max(round(generate_ratio * n_c), generate_min) per class; 'fill_tail': up to the
    largest class, max(n_max - n_c, generate_min). A class the data lacks gets none."""
    generate_ratio: PositiveFloat = 0.2
    generate_min: Annotated[int, Field(ge=0)] = 5
    head_epochs: PositiveInt = 30
    head_lr: PositiveFloat = 1e-3
    """Adam (official 1e-3, weight decay 1e-5, batch 1024)."""
    head_weight_decay: Annotated[float, Field(ge=0)] = 1e-5
    head_batch_size: PositiveInt = 1024
    # end-to-end: L_total = L_real + lambda_sem L_sem + gamma_ge L_ge, L_sem = L_LDM + eta_p L_proto + eta_s L_shape
    schedule: Literal["A", "B", "C"] = "A"
    """'A' joint (semantic weights warmed up over ``warmup_steps``); 'B' alternating (``alternate`` diffusion steps
    with E, G frozen, then a classifier step with theta frozen); 'C' progressive (L_real alone for the first
    ``phases[0]`` of the steps, then + L_sem, from ``phases[1]`` + L_ge with its pseudo ratio growing from
    ``pseudo_ratio_start`` to ``pseudo_ratio``)."""
    lambda_sem: Annotated[float, Field(ge=0)] = 1.0
    sem_to_encoder: bool = False
    """Let L_sem's gradient reach E. Off: E learns from L_real only and the denoiser follows its features (on, here,
    the encoder collapsed its features to a point the denoiser reproduces trivially: README)."""
    gamma_ge: Annotated[float, Field(ge=0)] = 0.5
    eta_proto: Annotated[float, Field(ge=0)] = 0.1
    shape: Literal["cov", "rad", "none"] = "rad"
    """The shape term against mode collapse: 'cov' the Frobenius distance of class covariances, 'rad' the cheaper
    radius term (r_y = radius_scale * sqrt(tr Sigma_y))."""
    eta_shape: Annotated[float, Field(ge=0)] = 0.1
    radius_scale: PositiveFloat = 1.0
    prototype_momentum: OpenFraction = 0.1
    """lambda of the prototypes' EMA, mu_y <- (1 - lambda w) mu_y + lambda w * batch mean."""
    pseudo_prototype_weight: Fraction = 0.3
    """w of pseudo-features in the prototypes' EMA (real features: 1)."""
    sample_every: PositiveInt = 5
    """k: pseudo-features are sampled (and L_ge taken) every k steps."""
    e2e_sampling_steps: PositiveInt = 5
    """DDIM steps of the on-the-fly sampling (differentiable: L_ge reaches theta)."""
    pseudo_ratio: Annotated[float, Field(gt=0, le=1)] = 0.3
    """Pseudo-features per real example of the batch when L_ge is taken."""
    pseudo_ratio_start: Annotated[float, Field(gt=0, le=1)] = 0.1
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    alternate: Annotated[int, Field(ge=1, le=2)] = 1
    """Schedule B: diffusion steps per classifier step (1:1 or 2:1)."""
    phases: tuple[OpenFraction, OpenFraction] = (0.3, 0.6)
    """Schedule C: the shares of the steps at which L_sem and then L_ge switch on."""
    # scoring
    bands: tuple[OpenFraction, OpenFraction] = (0.3, 0.3)
    """The shares of classes, by training frequency of the pooled client data, in the 'many' and 'few' bands (the
    rest is 'medium')."""
    score_per_class: PositiveInt = 100
    """Pseudo-features per class generated to score the denoiser (feature FID per band, class fidelity)."""

    @model_validator(mode="after")
    def _consistent(self) -> LdmlrConfig:
        if self.phases[0] >= self.phases[1]:
            raise ValueError(f"ldmlr.phases must increase, got {list(self.phases)}")
        if sum(self.bands) >= 1:
            raise ValueError(f"ldmlr.bands (many, few) must leave a medium band: they sum to {sum(self.bands)}")
        if self.method == "e2e" and self.prediction == "epsilon":
            raise ValueError("ldmlr.method=e2e needs ldmlr.prediction=sample: z0_hat from an epsilon prediction "
                             "divides by sqrt(abar_t), about 1e-3 at the last timesteps, and the semantic terms blow "
                             "up")
        return self


class DpConfig(_Section):
    """dp-promise's two-phase private training (METHODS.md 5b) of the feature denoiser (strategy fedddpm) or, with
    epsilon or sigma set, of the image U-Net (task diffusion, in place of the diffusion section's local training).
    Phase I, timesteps [split_step, T): the plain loss, unconditional, on Poisson batches of expected size
    batch_size1; phase II, [0, split_step): class-conditional DP-SGD through opacus. Defaults: the official CIFAR-10
    settings at epsilon 10 (clip 1e-2, S 900, K 4, batch 32 / 4096, 3 / 50 epochs, Adam 3e-4), per round; a client
    holds hundreds of examples here, so configs set smaller phase-II batches. Plain DP-SGD over all timesteps (no
    phase I): split_step = T and epochs1 = 0."""

    epsilon: PositiveFloat | None = None
    """The budget over the whole run, at ``delta``. Without ``sigma``, sigma is calibrated so that a client training
    in every round spends exactly this; with it, a client whose next round would exceed this refuses to train.
    None with sigma None: non-private (the same phases, no clipping or noise)."""
    sigma: PositiveFloat | None = None
    """Phase II's noise multiplier (None: calibrated from epsilon)."""
    delta: OpenFraction = 1e-5
    max_grad_norm: PositiveFloat = 1e-2
    split_step: PositiveInt = 900
    """S: timesteps from S on train in phase I (no added noise, charged by the forward process's own)."""
    noise_multiplicity: PositiveInt = 4
    """K: draws of (t, noise) per example averaged before its gradient is clipped (not counted by the accountant)."""
    batch_size1: PositiveInt = 32
    batch_size2: PositiveInt = 4096
    epochs1: Annotated[int, Field(ge=0)] = 3
    epochs2: Annotated[int, Field(ge=0)] = 50
    lr1: PositiveFloat = 3e-4
    lr2: PositiveFloat = 3e-4
    physical_batch_size: PositiveInt | None = None
    """Phase II processes a logical batch in chunks of at most this many examples (opacus' BatchMemoryManager scheme:
    per-sample gradients are clipped and summed chunk by chunk, the noise added once): the same step, with the
    per-sample gradients of one chunk in memory. None: the whole batch at once."""
    feature_bound: PositiveFloat = 3.0
    """Features are standardised by the public split's per-dimension mean and std, divided by this, and clipped to
    [-1, 1] (phase I's bound assumes bounded data; images are in [-1, 1] already)."""

    @property
    def private(self) -> bool:
        return self.epsilon is not None or self.sigma is not None


class CaptionerConfig(_Section):
    kind: Literal["blip", "blip2"] = "blip2"
    path: str = "Salesforce/blip2-opt-2.7b"
    """A Hugging Face hub id or a local directory, loaded with from_pretrained (ignored by the embedded profile)."""
    max_new_tokens: PositiveInt = 30
    batch_size: PositiveInt = 16


class GeneratorConfig(_Section):
    path: str = "CompVis/stable-diffusion-v1-4"
    """A diffusers text-to-image pipeline: hub id or local directory (ignored by the embedded profile)."""
    scheduler: Literal["ddim", "dpm", "pndm", "pipeline"] = "ddim"
    """'pipeline' keeps the scheduler the pipeline was saved with."""
    steps: PositiveInt = 50
    guidance_scale: Annotated[float, Field(ge=1)] = 7.5
    size: PositiveInt = 512
    batch_size: PositiveInt = 8


class EmbeddedConfig(_Section):
    """`fedgen foundation prepare embedded`: small models pre-trained on the server-held public split."""

    captioner_steps: PositiveInt = 3000
    vae_steps: PositiveInt = 400
    generator_steps: PositiveInt = 1500
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 1e-3
    seed: int = 0
    # the check at the end of the step (not part of the models' identity: changing it trains nothing again)
    check_images_per_pair: PositiveInt = 10
    """Images generated per (class, domain) of the held-out test split to measure class fidelity."""
    check_steps: PositiveInt = 20
    check_guidance_scale: Annotated[float, Field(ge=1)] = 3.0
    min_caption_accuracy: Fraction = 0.75
    """Prepare fails below this share of held-out test images whose caption names the right digit."""
    min_class_fidelity: Fraction = 0.75
    """Prepare fails below this share of generated images that a judge CNN reads as the prompted digit."""


class FoundationConfig(_Section):
    profile: Literal["embedded", "pretrained"] = "embedded"
    """'embedded': small models fedgen pre-trains on digits-domains' public split (no download, CPU);
    'pretrained': the captioner and generator named by their paths."""
    cache_dir: str = "~/.cache/fedgen/foundation"
    dtype: Literal["auto", "float32", "float16"] = "auto"
    """'auto': float16 on CUDA, float32 on the CPU."""
    captioner: CaptionerConfig = CaptionerConfig()
    generator: GeneratorConfig = GeneratorConfig()
    embedded: EmbeddedConfig = EmbeddedConfig()


def check_embedded(cfg: ExperimentConfig) -> None:
    """The embedded foundation models fit only digits-domains at their own size."""
    if cfg.foundation.profile == "embedded":
        from fedgen.data.digits import SIZE  # the embedded models are built for digits-domains' images

        if cfg.data.dataset != "digits-domains":
            raise ValueError("foundation.profile=embedded is trained on digits-domains: use that dataset, or "
                             "foundation.profile=pretrained with real model paths")
        if cfg.foundation.generator.size != SIZE:
            raise ValueError(f"foundation.generator.size must be {SIZE} with the embedded profile")


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


class RayConfig(_Section):
    address: str | None = None
    """Join an existing Ray cluster (e.g. 'auto' or 'HOST:6379'); None starts a local one."""
    client_num_cpus: PositiveInt = 1
    client_num_gpus: Annotated[float, Field(ge=0)] = 0.0
    max_restarts: Annotated[int, Field(ge=0)] = 3
    """How often Ray replaces each client process that dies (killed for memory, a crashed CUDA kernel); the clients
    it was running fail for that round only. Past this, the run stops with a message saying so."""


class ExperimentConfig(_Section):
    name: str = "experiment"
    seed: int = 0
    """Everything random in the run: partition, client test splits, client training order, client sampling, server
    draws, and (unless init_seed is set) the initial model."""
    init_seed: Annotated[int, Field(ge=0)] | None = None
    """Draw the initial model from this seed instead of ``seed`` (to separate the two sources of variance); None:
    from ``seed``, as one stream with the rest."""
    rounds: PositiveInt = 10
    task: Literal["classify", "diffusion", "ldmlr"] = "classify"
    """What the clients train: a classifier (model, train), a class-conditional image DDPM (diffusion, evaluation),
    or a classifier with a feature-space diffusion model for long-tailed data (model, train, ldmlr)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    strategy: SerializeAsAny[StrategyConfig] = FedAvgConfig()
    """Validated against the section of ``strategy.name`` (see :func:`validate`)."""
    diffusion: DiffusionConfig = DiffusionConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    ldmlr: LdmlrConfig = LdmlrConfig()
    dp: DpConfig = DpConfig()
    foundation: FoundationConfig = FoundationConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        self.strategy.check(self)
        if self.task == "diffusion" and self.dp.private:
            self._check_private_images()
        return self

    def _check_private_images(self) -> None:
        """dp-promise on the image U-Net: a strategy whose client terms survive DP-SGD, a split inside the
        timesteps, float32 training, and no diffusion-section setting that private training would ignore."""
        dp, steps = self.dp, self.diffusion.num_train_timesteps
        if not self.strategy.private_clients:
            able = ", ".join(n for n, sec in SECTIONS.items() if sec.private_clients and "diffusion" in sec.tasks)
            raise ValueError(f"strategy '{self.strategy.name}' cannot train the image U-Net with DP-SGD (dp.epsilon or "
                             f"dp.sigma is set): its client term depends on the data, or it trains on the server. "
                             f"Private clients run with: {able}")
        if not 0 < dp.split_step <= steps:
            raise ValueError(f"dp.split_step={dp.split_step} must lie in 1..{steps} (diffusion.num_train_timesteps; "
                             f"{steps}: plain DP-SGD over every timestep, with dp.epochs1=0)")
        if dp.split_step == steps and dp.epochs1:
            raise ValueError(f"dp.split_step={steps} leaves phase I no timesteps: set dp.epochs1=0 (plain DP-SGD)")
        if dp.epochs1:
            self._check_phase1_finite()
        if self.diffusion.autocast != "none":
            raise ValueError("private training runs in float32: set diffusion.autocast=none")
        if self.diffusion.ema_decay is not None:
            raise ValueError("private training sends its last weights: unset diffusion.ema_decay")

    def _check_phase1_finite(self) -> None:
        """Phase I's charge on the trained images, for any client: where it overflows a float it is infinite, so
        phase I alone spends an infinite epsilon whatever a client holds."""
        from fedgen.diffusion import noise_scheduler
        from fedgen.privacy import dp_diffusion, gdp

        dp, side = self.dp, self.diffusion.image_size or self.data.image_side
        mu1 = gdp.phase1_mu(1.0, 1, 3 * side**2, dp_diffusion.abar_at(noise_scheduler(self.diffusion), dp.split_step))
        if mu1 == float("inf"):
            raise ValueError(f"dp.split_step={dp.split_step} on {side}x{side} RGB images: "
                             f"{gdp.phase1_over(mu1, dp.epsilon, dp.delta)}")

    def train_sample_size(self) -> int:
        """Clients sampled per round, as Flower's FedAvg family computes it."""
        return max(int(self.data.num_clients * self.strategy.fraction_train), self.strategy.min_train_clients)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> ExperimentConfig:
        return validate(json.loads(text), source="JSON")


def _format(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            if e["loc"][0] == "strategy":
                owners = [n for n, sec in SECTIONS.items() if e["loc"][-1] in sec.model_fields]
                if owners:
                    msg += f" for this strategy (it belongs to {', '.join(owners)})"
            elif len(e["loc"]) == 1 and e["loc"][0] in SECTIONS:
                msg += f" (strategy '{e['loc'][0]}' is configured in the strategy section, with strategy.name)"
        got = "" if e["type"] in ("extra_forbidden", "missing") else f" (got {e.get('input')!r})"
        lines.append(f"  {key}: {msg}{got}")
    return "\n".join(lines)


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a nested dict; values are parsed as YAML."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = tree
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{key}': '{p}' is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return tree


@functools.cache
def _schema(section: type[StrategyConfig]) -> type[ExperimentConfig]:
    """The experiment schema whose strategy section is ``section``."""
    return create_model("ExperimentConfig", __base__=ExperimentConfig, strategy=(section, section()))


def validate(tree: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """An experiment from its YAML tree, its strategy section chosen by ``strategy.name``."""
    strategy = tree.get("strategy")
    name = strategy.get("name", "fedavg") if isinstance(strategy, dict) else "fedavg"
    if name not in SECTIONS:
        raise ConfigError(f"invalid config ({source}):\n  strategy.name: unknown strategy {name!r}; choose from "
                          + ", ".join(sorted(SECTIONS)))
    try:
        return _schema(SECTIONS[name]).model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


def load_tree(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return tree


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment, apply ``--set`` overrides and validate."""
    tree = apply_overrides(load_tree(path), overrides or [])
    return validate(tree, source=str(path))


def dump_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


class MethodSpec(_Section):
    base: str
    """An experiment YAML of the method's own, relative to the suite file."""
    set: list[str] = []


class SuiteConfig(_Section):
    """A comparison: several methods on the same data, partitions and seeds."""

    name: str = "comparison"
    base: str
    """The base experiment YAML, relative to the suite file."""
    set: list[str] = []
    """Overrides applied to every method (key=value)."""
    seeds: Annotated[list[int], Field(min_length=1)] = [0]
    methods: Annotated[dict[str, list[str] | MethodSpec], Field(min_length=1)]
    """Method label -> its overrides of the base (key=value), e.g. {'FedProx': ['strategy.name=fedprox']}, or
    {base: its own YAML, set: [overrides]} for a method configured apart (e.g. OSCAR's foundation models)."""
    target: str | None = None
    """A method label: the report adds, for every method, the rounds and bytes it took to reach that method's final
    score (seed by seed, on the same partitions)."""

    @model_validator(mode="after")
    def _target_known(self) -> SuiteConfig:
        if self.target is not None and self.target not in self.methods:
            raise ValueError(f"target '{self.target}' is not one of the methods ({', '.join(self.methods)})")
        return self


def load_suite(
    path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[SuiteConfig, dict[str, dict[int, ExperimentConfig]]]:
    """Read a suite and validate every (method, seed) experiment up front, before any run starts. ``overrides``
    apply to every run, after the suite's and the method's own settings."""
    path = Path(path)
    tree = load_tree(path)
    try:
        suite = SuiteConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format(err, str(path))) from None
    runs: dict[str, dict[int, ExperimentConfig]] = {}
    for label, method in suite.methods.items():
        base, own = (method.base, method.set) if isinstance(method, MethodSpec) else (suite.base, method)
        runs[label] = {}
        for seed in suite.seeds:
            tree = apply_overrides(load_tree(path.parent / base), [*suite.set, *own, *overrides, f"seed={seed}"])
            runs[label][seed] = validate(tree, source=f"{path} method '{label}' seed {seed}")
    data = {label: {s: c.data for s, c in by_seed.items()} for label, by_seed in runs.items()}
    first = next(iter(data.values()))
    for label, by_seed in data.items():
        if by_seed != first:
            raise ConfigError(f"{path}: method '{label}' uses other data settings than the others; a comparison "
                              "needs identical data and partitions")
    return suite, runs
