"""A report says what it compared: the profile it used (the one with runs), the training budget
of every stage beside the paper's, figures whose bands and paper markers do not mislead, and
memory as the increase a stage run itself needed."""

from __future__ import annotations

import matplotlib.axes
import numpy as np
import torch

from harness.cli import main
from harness.meters import PeakMemory
from harness.report import Store, metric_range

SUITE = """suite: budget
seeds: 2
defaults: {optimizer: adam, lr: 4.0e-3, batch_size: 512, epochs: 5, threads: 1}
grid:
  method: [std]
  dataset: [ib12]
  architecture: [mi_mlp]
stages:
  A: {}
reference: {A: {std: {mean: 0.95, source: "Table 1"}}}
profiles:
  default:
    description: epochs cut to 5 of the paper's 9
  smoke: {seeds: 1, epochs: 2, description: "two epochs, one seed"}
  paper: {epochs: 9, batch_size: 256}
"""


def test_report_uses_the_profile_that_has_runs(write_suite, isolated_home, tmp_path, capsys):
    suite = str(write_suite(SUITE))
    assert main(["run", suite, "--profile", "smoke", "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["report", suite, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "report of profile `smoke`, that of the newest finished runs" in printed
    assert "have not finished" not in printed  # not every cell of `default` missing
    text = (out / "README.md").read_text()
    assert "Profile `smoke`; 1 planned stage runs: 1 finished" in text
    assert "Other profiles of this suite: `default`, `paper`" in text
    assert "What profile `smoke` cuts from the paper: two epochs, one seed" in text
    # the budget of every stage, and the paper's beside it
    table = text.split("### Training budget")[1].split("###")[0]
    assert "| stage | epochs | batch | optimizer | lr | schedule | training samples | paper epochs " in table
    assert "| A | 2 | 512 | adam | 0.004 | constant | 3277 | 9 | 256 | 0.004 |" in table
    assert "Measured with the budget of profile `smoke` above, not the paper's" in text


def test_an_empty_store_reports_the_default_profile_and_says_so(write_suite, capsys, tmp_path):
    assert main(["report", str(write_suite(SUITE)), "--out", str(tmp_path / "o")]) == 0
    assert "report of profile `default`: no finished runs of it or any other profile" in capsys.readouterr().out


def test_runs_of_no_profile_are_reported_as_such(write_suite, isolated_home, tmp_path, capsys):
    """A suite with only a `smoke` profile, run without --profile: its runs used no profile, and
    the printed line and the README say the same."""
    text = SUITE.split("profiles:")[0] + 'profiles:\n  smoke: {seeds: 1, epochs: 2}\n'
    suite = str(write_suite(text.replace("seeds: 2", "seeds: 1").replace("epochs: 5", "epochs: 2")))
    assert main(["run", suite, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", suite, "--out", str(tmp_path / "o")]) == 0
    assert "report of no profile (the suite's own settings), that of the newest finished runs" \
        in capsys.readouterr().out
    readme = (tmp_path / "o" / "README.md").read_text()
    assert "No profile (the suite's own settings); " in readme and " finished." in readme


def test_curve_bands_are_clipped_and_paper_markers_sit_at_the_papers_epochs(
        write_suite, isolated_home, tmp_path, monkeypatch):
    suite = str(write_suite(SUITE))
    assert main(["run", suite, "--quiet"]) == 0  # the default profile: 5 epochs, 2 seeds
    seen: dict[str, list] = {"bands": [], "stars": []}
    spread = iter([0.99, 0.40] * 10)  # seeds far apart near the top: mean + std > 1

    def history(self, run_id, key):
        value = next(spread)
        return [(epoch, value) for epoch in range(1, 6)]

    real_fill, real_plot = matplotlib.axes.Axes.fill_between, matplotlib.axes.Axes.plot

    def fill_between(ax, x, low, high, **kw):
        seen["bands"].append((np.asarray(low), np.asarray(high)))
        return real_fill(ax, x, low, high, **kw)

    def plot(ax, *args, **kw):
        if kw.get("marker") == "*":
            seen["stars"].append(args[0])
        return real_plot(ax, *args, **kw)

    monkeypatch.setattr(Store, "history", history)
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", fill_between)
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    assert main(["report", suite, "--out", str(tmp_path / "out")]) == 0
    assert seen["bands"]
    for low, high in seen["bands"]:
        assert low.min() >= 0.0 and high.max() <= 1.0
    assert [9] in seen["stars"]  # the paper's 9 epochs, not the 5 measured
    assert metric_range("final_test_acc") == (0.0, 1.0) and metric_range("loss_task")[1] == np.inf


def test_peak_memory_is_the_increase_a_stage_run_needed():
    meter = PeakMemory(torch.device("cpu")).start()
    block = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
    block += 1
    out = meter.stop()
    del block
    assert 48 <= out["rss_increase_mb"] <= out["peak_rss_mb"]
    assert out["peak_rss_mb"] - out["rss_increase_mb"] > 50  # the interpreter and torch


def test_information_plane_colour_bar_ticks_are_whole_epochs(tmp_path, monkeypatch):
    import matplotlib.figure

    from plugins.evaluators.mi_plane import plot_plane

    ticks = []
    real = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kw):
        fig.canvas.draw()
        bar = fig.axes[-1]  # the colour bar's axes
        ticks.extend(t for t in bar.get_yticks() if bar.get_ylim()[0] <= t <= bar.get_ylim()[1])
        return real(fig, *args, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    history = [{"epoch": e, "ixl": [1.0 + e, 0.5], "ily": [0.2, 0.1 * e]} for e in (1, 2, 3)]
    plot_plane(history, ["h1", "h2"], tmp_path / "plane.png")
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
