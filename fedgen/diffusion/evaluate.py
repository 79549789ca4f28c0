"""Generative evaluation: FID, IS and class fidelity of a conditional image model's samples (torchmetrics).

FID and IS need a feature extractor. With ``evaluation.inception`` (a local file of the FID Inception-v3 weights) they
use Inception, as in the papers: 'fid[inception]'. Otherwise they use the project's own extractor, a small CNN
trained on the server-held public split (trained once, cached): its penultimate features for FID, its logits for IS:
'fid[own-<dataset>-cnn]'. The two scales are not comparable, so every figure carries its extractor's name.

Class fidelity is the reference CNN's accuracy on the generated images against the class they were prompted with.
Real images pass through the generator's resolution (downsampled to it) before any extractor sees them, so a
perfect generator scores the real-vs-real floor.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore

from fedgen.checkpoint import save_atomic
from fedgen.config import EvaluationConfig
from fedgen.data.images import ImageSet
from fedgen.diffusion import resize
from fedgen.models import SmallCNN
from fedgen.train import evaluate, fit

log = logging.getLogger("fedgen")
REFERENCE_VERSION = 2
"""Part of the cache key: bump it when the reference classifier's recipe changes (2: seeded initialisation)."""


def reference_classifier(public: ImageSet, test: ImageSet, num_classes: int, cfg: EvaluationConfig,
                         device: torch.device) -> tuple[SmallCNN, float]:
    """The own extractor and class-fidelity judge: a small CNN trained on the public split, cached by the split's
    content and the recipe. Returns it (eval mode) and its accuracy on the global test split."""
    size = public.images.shape[1]
    key = hashlib.sha256()
    for part in (public.images, public.labels, test.images, test.labels):
        key.update(part.tobytes())
    key.update(f"v{REFERENCE_VERSION}-{cfg.reference_epochs}-{num_classes}-{size}".encode())
    path = Path(cfg.cache_dir).expanduser() / f"reference-{key.hexdigest()[:16]}.pt"
    with torch.random.fork_rng():  # the same CNN on every machine, and the caller's random stream left alone
        torch.manual_seed(0)
        model = SmallCNN(num_classes, "batch", size)
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)  # a user-pointed cache: tensors and a float
        model.load_state_dict(saved["state"])
        return model.eval(), saved["test_accuracy"]
    log.info("training the reference classifier on the public split (%d images, %d epochs), cached in %s",
             len(public), cfg.reference_epochs, path)
    fit(model, public, epochs=cfg.reference_epochs, batch_size=32, lr=0.01, momentum=0.9, weight_decay=5e-4,
        device=device, seed=0)
    model.cpu()
    accuracy = evaluate(model, test, 256, torch.device("cpu"), 1).accuracy
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"state": model.state_dict(), "test_accuracy": accuracy}, path)
    return model.eval(), accuracy


class OwnExtractor(nn.Module):
    """The reference CNN as a torchmetrics feature extractor: images in [0, 1], any size (resized to the CNN's);
    ``output='features'`` gives the penultimate layer (FID), ``'logits'`` the class logits (IS)."""

    def __init__(self, cnn: SmallCNN, output: str) -> None:
        super().__init__()
        self.cnn, self.output = cnn.eval(), output
        self.size = cnn.image_size
        self.num_features = cnn.classifier[1].out_features if output == "features" else cnn.classifier[-1].out_features

    def train(self, mode: bool = True) -> OwnExtractor:  # torchmetrics calls .train(); the extractor stays frozen
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.cnn.features(resize(x, self.size) * 2 - 1)
        head = self.cnn.classifier
        return head[:-1](h) if self.output == "features" else head(h)


class Inception(nn.Module):
    """torchmetrics' FID Inception-v3 (torch-fidelity's) from a local weights file, for images in [0, 1]."""

    def __init__(self, weights: str, output: str) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        if not Path(weights).expanduser().is_file():
            raise FileNotFoundError(f"evaluation.inception: no file at {weights} (torch-fidelity's "
                                    "pt_inception-2015-12-05-6726825d.pth)")
        feature = "2048" if output == "features" else "logits_unbiased"
        self.net = NoTrainInceptionV3("inception-v3-compat", [feature], str(Path(weights).expanduser()))
        self.num_features = 2048 if output == "features" else 1008

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x * 255).round().to(torch.uint8))


class GenerativeScores:
    """FID / IS / class fidelity of generated images against one fixed real set (its statistics computed once)."""

    def __init__(self, real: ImageSet, reference: SmallCNN, size: int, inception: str | None = None,
                 dataset: str = "data", batch_size: int = 250) -> None:
        self.extractor = "inception" if inception else f"own-{dataset}-cnn"
        make = (lambda out: Inception(inception, out)) if inception else (lambda out: OwnExtractor(reference, out))
        self.fid = FrechetInceptionDistance(feature=make("features"), reset_real_features=False)
        self.is_features = make("logits")
        self.judge = OwnExtractor(reference, "logits") if inception else self.is_features  # the own CNN's logits
        self.size, self.batch_size = size, batch_size
        for idx in torch.arange(len(real)).split(batch_size):
            self.fid.update(self.as_generated(real.tensors(idx.numpy())[0]), real=True)

    def as_generated(self, x: torch.Tensor) -> torch.Tensor:
        """Real images in [-1, 1] -> [0, 1] at the generator's resolution."""
        return resize((x + 1) / 2, self.size).clamp(0, 1)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """images in [0, 1] prompted with ``labels``."""
        self.fid.reset()  # the fake statistics only
        splits = 10 if len(images) >= 100 else 1
        with warnings.catch_warnings():  # that IS keeps its features (a few hundred here); its std of one split
            warnings.simplefilter("ignore", UserWarning)
            inception_score = InceptionScore(feature=self.is_features, splits=splits)
            correct = 0
            for x, y in zip(images.split(self.batch_size), labels.split(self.batch_size), strict=True):
                self.fid.update(x, real=False)
                inception_score.update(x)
                correct += int((self.judge(x).argmax(1) == y).sum())
            with torch.random.fork_rng():  # IS shuffles with the global RNG
                torch.manual_seed(0)
                is_mean, _ = inception_score.compute()
        return {f"fid[{self.extractor}]": float(self.fid.compute()), f"is[{self.extractor}]": float(is_mean),
                "class-fidelity": correct / len(images)}
