"""The live progress display on a terminal, and plain lines everywhere else."""

from __future__ import annotations

import io

from harness.progress import Progress


def drive(progress: Progress) -> None:
    progress.start(3, {"a": 10.0, "b": 30.0, "c": 60.0})
    progress.begin("a", 2)
    progress.begin("b", 4)
    progress.epoch("a", 1)
    progress.epoch("b", 2)
    progress.done("a", "FINISHED", "test_acc=0.9")


def test_off_a_terminal_only_one_plain_line_per_finished_run():
    stream = io.StringIO()
    progress = Progress(stream, interactive=False)
    drive(progress)
    progress.say("a note")
    progress.done("b", "FAILED", "loss became nan")
    progress.stop()
    assert stream.getvalue() == ("[1/3] FINISHED a  test_acc=0.9\na note\n"
                                 "[2/3] FAILED   b  loss became nan\n")


def test_on_a_terminal_a_bar_weighted_by_expected_time_with_counts_eta_and_runs_in_flight():
    stream = io.StringIO()
    progress = Progress(stream, interactive=True)
    drive(progress)
    task = progress.display.tasks[0]
    assert task.total == 100.0
    assert task.completed == 10.0 + 15.0  # a finished (10 s), b half-way through (2 of 4 epochs)
    progress.display.refresh()
    shown = stream.getvalue()
    assert "[1/3] FINISHED a  test_acc=0.9" in shown
    assert "1 done, 0 failed, 2 to go" in shown and "ETA" in shown
    assert "b  epoch 2/4" in shown and "a  epoch" not in shown.split("FINISHED a")[-1]
    progress.stop()


def test_quiet_prints_nothing_even_on_a_terminal():
    stream = io.StringIO()
    progress = Progress(stream, interactive=True, quiet=True)
    drive(progress)
    progress.stop()
    assert stream.getvalue() == "" and progress.display is None


def test_a_skipped_run_that_never_began_moves_the_bar_by_its_whole_weight():
    progress = Progress(io.StringIO(), interactive=True)
    progress.start(2, {"x": 5.0, "y": 7.0})
    progress.done("y", "SKIPPED", "upstream failed")
    assert progress.display.tasks[0].completed == 7.0
    progress.stop()
