"""Resizing images to a common size, the way a domain-adaptation pair needs it.

Two data sets in one stage go through one network, so their images must have one shape. How an
image is brought to that shape is part of what the data *is*: MNIST frames a 20x20 digit in a
28x28 canvas, and stretching an 8x8 digit to fill all 28x28 pixels gives a different task (a
source-only baseline moves by tens of points between the two framings). Hence two fits, both
recorded in the data's name and fingerprint:

- ``stretch``: scale the whole image to ``size`` x ``size`` (the aspect ratio may change);
- ``pad``: scale the image, aspect kept, so that its longer side fills a centred ``box``
  (default: the whole canvas), and fill the rest with the background, the smallest value of
  the images (0 for digits in [0, 1], whatever a normalisation made of black otherwise).

Bilinear interpolation with antialiasing (torch's ``F.interpolate``): the inputs are
intensities, and antialiasing keeps a downscaled image from aliasing fine strokes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data_options import FITS
from .errors import UserError

__all__ = ["resize_images"]

_CHUNK = 4096  # a 50k-image set is resized in slices, never with two extra full copies


def resize_images(x: torch.Tensor, size: int, fit: str = "stretch",
                  box: int | None = None) -> torch.Tensor:
    """``x`` (N x C x H x W) as N x C x ``size`` x ``size`` images; see the module docstring."""
    if x.ndim != 4:
        raise UserError(f"size needs images (N x C x H x W), but these inputs have shape "
                        f"{tuple(x.shape[1:])}", key="size",
                        hint="leave `size:` out for feature-vector data sets")
    if fit not in FITS:
        raise UserError(f"unknown fit {fit!r}", key="fit", hint="use `fit: stretch` or `fit: pad`")
    box = size if box is None else box
    if not 0 < box <= size:
        raise UserError(f"box {box} must be between 1 and size {size}", key="box",
                        hint="e.g. `size: 28, fit: pad, box: 20` frames digits as MNIST does")
    h, w = x.shape[-2:]
    if fit == "stretch":
        inner = (size, size)
    else:
        scale = box / max(h, w)
        inner = (max(1, round(h * scale)), max(1, round(w * scale)))
    if inner == (h, w) and inner == (size, size):
        return x.clone()
    background = float(x.min()) if x.numel() else 0.0
    out = torch.full((len(x), x.shape[1], size, size), background, dtype=x.dtype)
    top, left = (size - inner[0]) // 2, (size - inner[1]) // 2
    for start in range(0, len(x), _CHUNK):
        chunk = x[start:start + _CHUNK]
        if inner != (h, w):
            chunk = F.interpolate(chunk, size=inner, mode="bilinear", align_corners=False,
                                  antialias=True)
        out[start:start + _CHUNK, :, top:top + inner[0], left:left + inner[1]] = chunk
    return out
