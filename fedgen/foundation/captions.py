"""Captions of digits-domains images, from class, domain and (for 'coloured') the stroke colour.

e.g. "a red handwritten digit seven on a dark background". Used only to pre-train the embedded foundation models on
the server-held public split; clients caption their own images with the captioner.
"""

from __future__ import annotations

import numpy as np

from fedgen.data.digits import CLASS_NAMES, DOMAIN_NAMES, PALETTE

_STYLE = {
    "plain": "a white handwritten digit {c} on a black background",
    "inverted": "a black handwritten digit {c} on a white background",
    "coloured": "a {colour} handwritten digit {c} on a dark background",
    "rotated": "a rotated white handwritten digit {c} on a black background",
    "noisy": "a noisy white handwritten digit {c} on a black background",
    "blurred": "a blurred white handwritten digit {c} on a black background",
}


def stroke_colour(image: np.ndarray) -> str:
    """The palette colour nearest to the brightest pixels of an RGB uint8 image."""
    px = image.reshape(-1, 3).astype(np.float32) / 255.0
    bright = px[np.argsort(px.sum(1))[-20:]].mean(0)
    names = list(PALETTE)
    return names[int(np.argmin([np.abs(bright - np.array(PALETTE[n])).sum() for n in names]))]


def describe(image: np.ndarray, label: int, domain: int) -> str:
    style = _STYLE[DOMAIN_NAMES[domain]]
    colour = stroke_colour(image) if DOMAIN_NAMES[domain] == "coloured" else ""
    return style.format(c=CLASS_NAMES[label], colour=colour)


def vocabulary() -> list[str]:
    """Every word a caption can hold."""
    words = {w for s in _STYLE.values() for w in s.replace("{c}", "").replace("{colour}", "").split()}
    return sorted(words | set(CLASS_NAMES) | set(PALETTE))
