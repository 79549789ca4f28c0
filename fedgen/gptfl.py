"""GPT-FL's plain functions: the label names a client holds, prompts per label (templates, optionally a
text-generation model), the synthetic set's plan (prompt and guidance scale per image), and the label union of
plain replies (the form peeling the summed IBLT of :mod:`fedgen.privacy.iblt` gives)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np


def label_names(labels: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """The names of the classes a client holds examples of."""
    return [class_names[int(c)] for c in np.unique(labels)]


def union(label_sets: Iterable[Iterable[str]]) -> dict[str, int]:
    """Label -> how many clients hold it (what the plain mode gathers, and what peeling the summed IBLT gives)."""
    return dict(Counter(name for names in label_sets for name in set(names)))


def class_ids(labels: Iterable[str], class_names: Sequence[str]) -> list[int]:
    """The model's output index of each collected label; a label the model has no output for is an error."""
    unknown = sorted(set(labels) - set(class_names))
    if unknown:
        raise ValueError(f"collected labels {unknown} are not among the dataset's classes {list(class_names)}")
    return sorted(class_names.index(name) for name in labels)


def template_prompts(label: str, templates: Sequence[str]) -> list[str]:
    return [t.format(label=label) for t in templates]


class PromptWriter:
    """Prompts from a text-to-text model (the official code: mrm8488/t5-base-finetuned-common_gen, which writes a
    sentence around its keywords), one label keyword per call, sampled and de-duplicated."""

    def __init__(self, path: str, device, max_new_tokens: int = 32) -> None:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from fedgen.foundation import _from_pretrained

        self.tokenizer = _from_pretrained(AutoTokenizer, path, "prompt tokenizer")
        self.model = _from_pretrained(AutoModelForSeq2SeqLM, path, "prompt model").to(device).eval()
        self.device, self.max_new_tokens = device, max_new_tokens

    def write(self, label: str, n: int, seed: int, oversample: float = 1.25) -> list[str]:
        """Up to ``n`` distinct prompts for ``label`` (``oversample`` * n are sampled: the official 250 for 200)."""
        import torch

        ids = self.tokenizer([label], return_tensors="pt").to(self.device)
        with torch.no_grad(), torch.random.fork_rng():  # the run's own RNG stays where it was
            torch.manual_seed(seed)
            out = self.model.generate(**ids, do_sample=True, max_new_tokens=self.max_new_tokens,
                                      num_return_sequences=int(np.ceil(oversample * n)))
        texts = [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        return list(dict.fromkeys(t for t in texts if t))[:n]


def plan(prompts: dict[int, list[str]], per_class: int, guidance: tuple[int, int],
         rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Each class's ``per_class`` images: its prompts in turn, and a guidance scale per image drawn uniformly from
    the integers guidance[0]..guidance[1] (the official randint(1, 6)). Returns (prompt, class, scale) per image,
    class by class."""
    texts, labels = [], []
    for c in sorted(prompts):
        if not prompts[c]:
            raise ValueError(f"class {c} has no prompt")
        texts += [prompts[c][i % len(prompts[c])] for i in range(per_class)]
        labels += [c] * per_class
    scales = rng.integers(guidance[0], guidance[1] + 1, size=len(texts))
    return texts, np.array(labels, dtype=np.int64), scales.astype(np.float64)
