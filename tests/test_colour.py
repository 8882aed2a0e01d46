"""The `channels` data option (harness.colour): colour to grey by BT.601 luma, grey to colour
by repetition, on any data set; what a suite may write, and SVHN -> MNIST's shapes agreeing."""

from __future__ import annotations

import pytest
import torch

from harness.api import DataBundle, Split
from harness.colour import LUMA, to_channels
from harness.datasets import apply_data_options, build_dataset, check_roles
from harness.errors import UserError
from harness.plugins import Plugins


def _colour_bundle(n=12, size=32):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g)
    y = torch.arange(n) % 3
    unl = Split(torch.rand(4, 3, size, size, generator=g), None)
    return DataBundle(train=Split(x, y), test=Split(x[:6].clone(), y[:6].clone()), num_classes=3,
                      name="rgb", description="random colour images", extra={"unlabelled": unl})


def test_colour_to_grey_is_the_bt601_luma():
    pixel = torch.tensor([1.0, 0.5, 0.25]).view(1, 3, 1, 1)
    grey = to_channels(pixel, 1)
    assert grey.shape == (1, 1, 1, 1)
    assert float(grey) == pytest.approx(0.299 + 0.587 * 0.5 + 0.114 * 0.25)
    assert sum(LUMA) == pytest.approx(1.0)  # white stays white
    assert float(to_channels(torch.ones(1, 3, 2, 2), 1).max()) == pytest.approx(1.0)


def test_grey_to_colour_repeats_the_channel_and_back_is_the_same_grey():
    grey = torch.rand(5, 1, 4, 4)
    colour = to_channels(grey, 3)
    assert colour.shape == (5, 3, 4, 4) and torch.equal(colour[:, 1], grey[:, 0])
    assert torch.allclose(to_channels(colour, 1), grey, atol=1e-6)


def test_other_conversions_are_refused():
    with pytest.raises(UserError, match="cannot bring images of 3 channels to 2"):
        to_channels(torch.rand(1, 3, 2, 2), 2)
    with pytest.raises(UserError, match="needs images"):
        to_channels(torch.rand(4, 12), 1)


def test_the_data_option_converts_every_split_and_is_recorded():
    bundle = apply_data_options(_colour_bundle(), {"channels": 1, "size": 28})
    assert bundle.input_shape == (1, 28, 28)
    assert bundle.test.x.shape[1:] == (1, 28, 28) and bundle.extra["unlabelled"].x.shape[1] == 1
    assert bundle.name == "rgb+grey+28px" and "grey (BT.601 luma)" in bundle.description
    same = apply_data_options(_colour_bundle(), {"channels": 3})
    assert same.name == "rgb" and same.input_shape == (3, 32, 32)  # nothing to convert


def test_a_grey_data_set_meets_a_colour_one_in_one_stage():
    digits = build_dataset(Plugins(), {"name": "digits", "channels": 3, "size": 32}, ".", False)
    assert digits.input_shape == (3, 32, 32) and digits.name.endswith("+3ch+32px")
    check_roles({"source": _colour_bundle(), "target": digits})  # the shapes agree
    grey = apply_data_options(_colour_bundle(), {"channels": 1, "size": 8})
    mine = build_dataset(Plugins(), {"name": "digits"}, ".", False)
    check_roles({"source": grey, "target": mine})


@pytest.mark.parametrize("value, message", [(2, "1 (grey) or 3"), (4, "from 1 to 3"),
                                            ("grey", "a whole number"), (True, "a whole number")])
def test_a_bad_channels_value_is_a_suite_error(write_suite, capsys, value, message):
    from harness.cli import main

    suite = write_suite(f"""
suite: ch
grid:
  method: [std]
  dataset: [{{name: digits, channels: {value!r}}}]
  architecture: [small_cnn]
""".replace("'", ""))
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "grid.dataset[0].channels" in err and message in err, err
