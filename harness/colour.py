"""Bringing images to a number of channels, the way a colour -> grey domain pair needs it.

One network sees every data set of a stage, so SVHN (3 x 32 x 32, colour) and MNIST (1 x 28 x
28, grey) can share a stage only once their channels agree (paper 003's SV -> MN and MN -> SV
adaptation). Two conversions, both recorded in the data's name and fingerprint:

- colour to grey (``channels: 1``): the luma of ITU-R BT.601, 0.299 R + 0.587 G + 0.114 B,
  the weights PIL's ``convert("L")`` and torchvision's ``Grayscale`` use, so a grey SVHN here
  is the grey SVHN other code bases train on;
- grey to colour (``channels: 3``): the one channel repeated, so the network built for colour
  sees a grey image as the same grey in every channel.

Any other pair of channel counts has no conventional conversion and is refused.
"""

from __future__ import annotations

import torch

from .errors import UserError

__all__ = ["LUMA", "to_channels"]

#: ITU-R BT.601 luma weights of R, G and B
LUMA = (0.299, 0.587, 0.114)


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``x`` (N x C x H x W) with ``channels`` channels; see the module docstring."""
    if x.ndim != 4:
        raise UserError(f"channels needs images (N x C x H x W), but these inputs have shape "
                        f"{tuple(x.shape[1:])}", key="channels",
                        hint="leave `channels:` out for feature-vector data sets")
    have = x.shape[1]
    if have == channels:
        return x.clone()
    if have == 3 and channels == 1:
        weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True)
    if have == 1 and channels == 3:
        return x.repeat(1, 3, 1, 1)
    raise UserError(f"cannot bring images of {have} channels to {channels}", key="channels",
                    hint="channels: 1 turns colour (3 channels) grey, channels: 3 repeats a grey "
                         "channel")
