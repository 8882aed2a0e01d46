"""Derived tasks made from any image data set by options: blurred, rotated, or relabelled.

Transfer experiments need a task B that is related to task A but not equal to it (paper 000 moves
from MNIST to n-MNIST's motion-blurred digits, and from the 12-bit task to its label inversion).
Deriving B from A's own tensors keeps the pair offline and exactly reproducible, and lets every
dataset factory offer the same options with the same meaning.

The variants change train and test alike: the derived task is a new task, not an augmentation.
Each one is recorded in the bundle's name (``mnist5k+blur5+rot15+inverted``) so that reports
tell the tasks apart.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from harness.api import DataBundle, Split, UserError

__all__ = ["apply_variants", "motion_blur_images", "rotate_images"]

# Work in slices so that a 50k-image set does not need two extra full copies at once.
_CHUNK = 4096


def _check_images(x: torch.Tensor, option: str) -> None:
    if x.ndim != 4:
        raise UserError(f"{option} needs images (N x C x H x W), but this data set's inputs have shape "
                        f"{tuple(x.shape[1:])}", key=option,
                        hint=f"leave {option} at 0 for feature-vector data sets")


def motion_blur_images(x: torch.Tensor, length: int) -> torch.Tensor:
    """Blur along the width with a uniform linear kernel of ``length`` pixels.

    This is the motion blur of n-MNIST (Basu et al. 2017, the task B of paper 000) made
    horizontal: a uniform kernel keeps the total intensity of a row, only spreading it, so
    away from the borders the image's mean intensity is unchanged. Zero padding ("same" output
    size) lets intensity leave the image at the left and right borders, as a camera would.
    """
    _check_images(x, "motion_blur")
    channels = x.shape[1]
    kernel = torch.full((channels, 1, 1, length), 1.0 / length, dtype=x.dtype, device=x.device)
    # "same" padding spelled out (the extra column of an even kernel goes right, as in torch's
    # padding="same"), which avoids torch's warning about even kernels
    pad = ((length - 1) // 2, length // 2, 0, 0)
    out = torch.empty_like(x)
    for start in range(0, len(x), _CHUNK):
        chunk = F.pad(x[start:start + _CHUNK], pad)
        out[start:start + _CHUNK] = F.conv2d(chunk, kernel, groups=channels)
    return out


def rotate_images(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate every image counter-clockwise about its centre, filling uncovered corners with 0.

    Bilinear interpolation because the inputs are intensities, not class masks; at multiples of
    90 degrees on square images it lands on pixel centres and is exact.
    """
    _check_images(x, "rotate")
    from torchvision.transforms.functional import InterpolationMode, rotate

    out = torch.empty_like(x)
    for start in range(0, len(x), _CHUNK):
        out[start:start + _CHUNK] = rotate(x[start:start + _CHUNK], float(degrees),
                                           interpolation=InterpolationMode.BILINEAR, fill=0.0)
    return out


def _validate(motion_blur, rotate, invert_labels) -> None:
    if isinstance(motion_blur, bool) or not isinstance(motion_blur, numbers.Integral):
        raise UserError(f"motion_blur must be a whole number of pixels, got {motion_blur!r}",
                        key="motion_blur", hint="e.g. motion_blur: 5; 0 turns the blur off")
    if motion_blur < 0:
        raise UserError(f"motion_blur must not be negative, got {motion_blur}", key="motion_blur",
                        hint="give the kernel length in pixels, e.g. 5; 0 turns the blur off")
    if isinstance(rotate, bool) or not isinstance(rotate, numbers.Real) or not math.isfinite(rotate):
        raise UserError(f"rotate must be a finite angle in degrees, got {rotate!r}", key="rotate",
                        hint="e.g. rotate: 15 (counter-clockwise); 0 turns rotation off")
    if not isinstance(invert_labels, bool):
        raise UserError(f"invert_labels must be true or false, got {invert_labels!r}",
                        key="invert_labels", hint="write invert_labels: true")


def apply_variants(bundle: DataBundle, *, motion_blur: int = 0, rotate: float = 0.0,
                   invert_labels: bool = False) -> DataBundle:
    """The bundle's derived task; with every option off, the bundle itself (nothing to copy).

    ``invert_labels`` maps y to ``num_classes - 1 - y``: for a binary task that is the flip
    that turns the 12-bit task into its task B; for more classes it is a fixed permutation, so
    the inputs are the same but every class means something else.
    """
    _validate(motion_blur, rotate, invert_labels)
    if motion_blur == 0 and rotate == 0 and not invert_labels:
        return bundle
    name, notes = bundle.name, []
    splits = {"train": bundle.train, "test": bundle.test}
    for key, split in splits.items():
        x, y = split.x, split.y
        if motion_blur:
            x = motion_blur_images(x, int(motion_blur))
        if rotate:
            x = rotate_images(x, rotate)
        if invert_labels:
            y = (bundle.num_classes - 1) - y
        splits[key] = Split(x, y)
    if motion_blur:
        name += f"+blur{int(motion_blur)}"
        notes.append(f"horizontal motion blur of {int(motion_blur)} px")
    if rotate:
        name += f"+rot{float(rotate):g}"
        notes.append(f"rotated {float(rotate):g} degrees")
    if invert_labels:
        name += "+inverted"
        notes.append("labels inverted (y -> num_classes-1-y)")
    description = bundle.description
    description = f"{description}; {', '.join(notes)}" if description else ", ".join(notes).capitalize()
    return DataBundle(train=splits["train"], test=splits["test"], num_classes=bundle.num_classes,
                      name=name, description=description)
