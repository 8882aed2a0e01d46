"""The convergence rule (harness.convergence) on synthetic histories: a plateau, a rise, noise,
a loss, histories too short to judge, and how a row and a claim's note combine them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.convergence import (CONVERGED, IMPROVING, MIN_EVALUATIONS, UNCLEAR, UNJUDGED,
                                 RowConvergence, claim_note, judge, lower_is_better, run_gain)

EPOCHS = 40
EVERY = 4  # 10 evaluations: epochs 4, 8, ..., 40


def history(curve, epochs=EPOCHS, every=EVERY):
    return [(e, float(curve(e))) for e in range(every, epochs + 1, every)]


def seeds(curves, **kw):
    return {rep: history(c, **kw) for rep, c in enumerate(curves)}


def saturating(top, rate, offset=0.0):
    return lambda e: top - (top - 0.1) * math.exp(-rate * e) + offset


def test_a_plateau_is_converged():
    rows = seeds([saturating(0.95, 0.5, o) for o in (-0.01, 0.0, 0.012)])
    j = judge(rows, EPOCHS, metric="test_acc")
    assert j.state == CONVERGED, j
    assert j.seeds == 3 and j.evaluations == 10 and j.upper < 0.01 and j.margin == 0.01


def test_a_steady_rise_is_still_improving():
    # +0.004 per epoch: 0.04 over another quarter of 40 epochs, four times the margin
    rows = seeds([lambda e, o=o: 0.5 + 0.004 * e + o for o in (0.0, 0.01, -0.02)])
    j = judge(rows, EPOCHS, metric="test_acc")
    assert j.state == IMPROVING, j
    assert j.gain == pytest.approx(0.04) and j.lower > 0


def test_noise_is_unclear_not_converged():
    rng = np.random.default_rng(0)
    noisy = {rep: [(e, 0.8 + 0.0005 * e + float(rng.normal(0, 0.05))) for e in range(4, 41, 4)]
             for rep in range(3)}
    j = judge(noisy, EPOCHS, metric="test_acc")
    assert j.state == UNCLEAR, j
    assert j.lower <= 0 <= j.upper and j.upper >= 0.01


def test_the_window_ignores_a_step_before_the_last_quarter():
    # a learning-rate step at epoch 30 of 40 lifts accuracy, flat after: the window starts at 30
    step = [lambda e, o=o: (0.9 if e > 30 else 0.8) + o for o in (0.0, 0.001, 0.002)]
    assert judge(seeds(step), EPOCHS, metric="test_acc").state == CONVERGED
    # the same step inside the window is a gain in the last quarter
    late = [lambda e, o=o: (0.9 if e > 34 else 0.8) + o for o in (0.0, 0.001, 0.002)]
    assert judge(seeds(late), EPOCHS, metric="test_acc").state == IMPROVING


def test_a_falling_loss_is_improving_and_a_falling_error_too():
    assert lower_is_better("loss") and lower_is_better("final_test_err")
    assert lower_is_better("recon_mse") and lower_is_better("loss_stage3_ce")
    assert not lower_is_better("test_acc") and not lower_is_better("swapped_acc")
    falling = [lambda e, o=o: 2.0 - 0.03 * e + o for o in (0.0, 0.02, 0.05)]
    every_epoch = dict(every=1)
    loss = judge(seeds(falling, **every_epoch), EPOCHS, metric="loss", relative=True)
    assert loss.state == IMPROVING and loss.gain == pytest.approx(0.3)
    # the loss margin is 5% of the distance the loss travelled: 0.05 * 1.17
    assert loss.margin == pytest.approx(0.05 * 0.03 * 39)
    # an accuracy falling the same way is a metric that is getting worse, not improving
    acc = judge(seeds([lambda e, o=o: 0.9 - 0.003 * e + o for o in (0, 0.01, 0.02)]), EPOCHS,
                metric="test_acc")
    assert acc.state == CONVERGED and acc.gain < 0 and "falling" in acc.reason


def test_a_loss_near_zero_that_still_halves_is_converged_relative_to_its_fall():
    # memorising 50 labels: cross-entropy from 2.3 to 1e-3, still falling exponentially
    memorise = [lambda e, o=o: 2.3 * math.exp(-0.4 * e) + 1e-3 + o for o in (0, 1e-4, 2e-4)]
    j = judge(seeds(memorise, every=1), EPOCHS, metric="loss", relative=True)
    assert j.state == CONVERGED, j


def test_too_few_evaluations_or_seeds_cannot_be_judged():
    short = seeds([saturating(0.9, 0.5)] * 3, epochs=14, every=2)  # 7 evaluations
    j = judge(short, 14, metric="test_acc")
    assert j.state == UNJUDGED and "7 evaluations" in j.reason and j.evaluations == 7
    enough = seeds([saturating(0.9, 0.5, o) for o in (0, 0.001, 0.002)], epochs=16, every=2)
    assert judge(enough, 16, metric="test_acc").evaluations == MIN_EVALUATIONS
    one = judge(seeds([saturating(0.9, 0.5)]), EPOCHS, metric="test_acc")
    assert one.state == UNJUDGED and "1 seed" in one.reason
    end_only = {0: [(40, 0.9)], 1: [(40, 0.91)]}
    assert "1 evaluation in a run" in judge(end_only, EPOCHS, metric="test_acc").reason
    # evaluations that stop before the last quarter (an evaluator with fixed epochs)
    early = {r: [(e, 0.9) for e in range(1, 11)] for r in range(2)}
    assert "last quarter" in judge(early, EPOCHS, metric="test_acc").reason
    assert run_gain([(1, 0.5), (40, 0.9)], EPOCHS, lower=False) is None


def test_equal_gains_need_no_spread():
    flat = {r: [(e, 0.5) for e in range(1, 11)] for r in range(3)}
    j = judge(flat, 10, metric="test_acc")
    assert j.state == CONVERGED and j.lower == j.upper == 0
    rising = {r: [(e, 0.1 * e) for e in range(1, 11)] for r in range(3)}
    assert judge(rising, 10, metric="test_acc").state == IMPROVING


def test_non_finite_values_are_left_out():
    rows = seeds([saturating(0.95, 0.5, o) for o in (0.0, 0.001, 0.002)])
    rows[0].append((44, float("nan")))
    assert judge(rows, EPOCHS, metric="test_acc").state == CONVERGED


def test_a_row_and_a_claims_note_combine_their_judgements():
    conv = judge(seeds([saturating(0.95, 0.5, o) for o in (0, 0.001, 0.002)]), EPOCHS,
                 metric="test_acc")
    rise = judge(seeds([lambda e, o=o: 2 - 0.03 * e + o for o in (0, 0.02, 0.05)], every=1),
                 EPOCHS, metric="loss", relative=True)
    short = judge({0: [(1, 0.5)], 1: [(1, 0.6)]}, EPOCHS, metric="test_acc")
    both = RowConvergence((conv, conv))
    assert both.state == CONVERGED and both.mark == "" and both.brief() == CONVERGED
    improving = RowConvergence((conv, rise))
    assert improving.state == IMPROVING and improving.mark == "↑"
    assert improving.brief() == "still improving (loss)"
    assert RowConvergence((short, conv)).state == UNJUDGED
    assert RowConvergence((short, rise)).state == IMPROVING
    assert claim_note([("A.x", both), ("A.y", both)]) == "every row converged"
    note = claim_note([("A.x", both), ("B.y", improving)])
    assert note == "B.y ↑ still improving (loss)"
    assert claim_note([("A.x", None)]) == "no finished runs to judge"
