"""Claims: the grammar, suite-time validation (exit 2 through the CLI) and the verdict rules."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
from scipy import stats as sps

from harness import claims
from harness.claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, evaluate
from harness.cli import main
from harness.errors import UserError
from harness.suite import load_suite, stage_rows

parse = partial(claims.parse, metric="test_acc")  # the headline metric the suites declare

SUITE = """
suite: mi
defaults: {epochs: 2}
seeds: 3
grid:
  method: [std, {name: std, label: RR6}]
  architecture: [mi_mlp]
stages:
  A:  {dataset: ib12}
  AA: {from: A, dataset: ib12, method: std}
  AB: {from: A, dataset: ib12_flipped, method: std}
  B:  {dataset: ib12_flipped, method: {name: std, label: Std}}
claims: CLAIMS
reference: REFERENCE
"""


def suite_text(claims='["AB.RR6 > AB.std"]', reference="{AB: {RR6: 0.997}}") -> str:
    return SUITE.replace("CLAIMS", claims).replace("REFERENCE", reference)


# ------------------------------------------------------------------------------------------------
# grammar
# ------------------------------------------------------------------------------------------------
def test_parse_forms():
    c = parse("AB.RR6 > AB.std")
    assert (str(c.left), c.op, str(c.right), c.metric, c.margin, c.relative) == \
        ("AB.RR6", ">", "AB.std", "final_test_acc", 0.01, False)
    c = parse("AB.RR6>=B.Std within 0.02")
    assert (c.op, str(c.right), c.margin) == (">=", "B.Std", 0.02)
    c = parse("A.RR6 < A.std on seconds_per_epoch within 5%")
    assert (c.metric, c.margin, c.relative) == ("final_seconds_per_epoch", pytest.approx(0.05), True)
    assert [str(s) for s in (c.canonical[0], c.canonical[2])] == ["A.std", "A.RR6"]
    assert c.canonical[1] == ">"
    assert parse("AA.RR6 > AA.std on final_train_acc").metric == "final_train_acc"
    # labels made from options contain dots: a known stage name decides where the label starts
    c = parse("AB.racecar-weight0.01 >= AB.std", stages=["A", "AB"])
    assert (c.left.stage, c.left.label) == ("AB", "racecar-weight0.01")


@pytest.mark.parametrize("text", ["AB.RR6 >> AB.std", "AB.RR6 better than AB.std", "RR6 > AB.std",
                                  "AB.RR6 > AB.std within", "AB.RR6 > AB.std on", "AB. > AB.std",
                                  "AB.RR6 = AB.std", ""])
def test_parse_rejects(text):
    with pytest.raises(UserError) as err:
        parse(text)
    assert "AB.RR6 > AB.std" in err.value.hint  # the hint shows the grammar by example


# ------------------------------------------------------------------------------------------------
# suite-time validation
# ------------------------------------------------------------------------------------------------
def test_rows_of_each_stage(write_suite):
    setting = load_suite(write_suite(suite_text())).settings[0]
    assert stage_rows(setting) == {"A": ["std", "RR6"], "AA": ["std", "RR6"], "AB": ["std", "RR6"],
                                   "B": ["Std"]}


@pytest.mark.parametrize("claims, key, words", [
    ('["AC.RR6 > AB.std"]', "claims[0]", ["no stage of this setting: 'AC'", "did you mean"]),
    ('["AB.RR6 > AB.std", "AB.RR7 > AB.std"]', "claims[1]", ["has no row 'RR7'", "'RR6'"]),
    ('["AB.RR6 >= B.std"]', "claims[0]", ["stage 'B' has no row 'std'", "'Std'"]),
    ('["AB.RR6 is better"]', "claims[0]", ["cannot read claim"]),
    ('["AB.RR6 > AB.RR6"]', "claims[0]", ["with itself"]),
    ('"AB.RR6 > AB.std"', "claims", ["list of strings"]),
])
def test_bad_claims_are_suite_errors(write_suite, claims, key, words):
    path = write_suite(suite_text(claims=claims))
    with pytest.raises(UserError) as err:
        load_suite(path)
    assert err.value.file == str(path) and err.value.key == key
    text = err.value.format()
    for w in words:
        assert w in text, text


@pytest.mark.parametrize("reference, key, words", [
    ("{AC: {RR6: 0.9}}", "reference.AC", ["no stage 'AC'"]),
    ("{AB: {RR7: 0.9}}", "reference.AB.RR7", ["no row 'RR7'", "'RR6'"]),
    ("{AB: {RR6: high}}", "reference.AB.RR6", ["expected a number"]),
    ("{AB: {RR6: {mean: 0.9, sd: 0.1}}}", "reference.AB.RR6.sd", ["unknown key", "'std'"]),
    ("{AB: {RR6: {std: 0.1}}}", "reference.AB.RR6", ["needs `mean` or `values`"]),
    ("{AB: 0.9}", "reference.AB", ["row label -> value"]),
])
def test_bad_references_are_suite_errors(write_suite, reference, key, words):
    with pytest.raises(UserError) as err:
        load_suite(write_suite(suite_text(reference=reference)))
    assert err.value.key == key
    for w in words:
        assert w in err.value.format()


def test_reference_values_give_mean_std_and_n(write_suite):
    from harness.claims import parse_reference

    setting = load_suite(write_suite(suite_text(
        reference="{B: {Std: {values: [0.966, 0.958, 0.984, 0.974, 0.989], source: Table 2}}}"))).settings[0]
    (ref,) = parse_reference(setting.reference, stage_rows(setting), file="x", metric="test_acc")
    assert ref.mean == pytest.approx(0.9742) and ref.n == 5 and ref.source == "Table 2"
    assert ref.std == pytest.approx(np.std([0.966, 0.958, 0.984, 0.974, 0.989], ddof=1))


def test_unknown_claim_label_exits_2_with_one_line(write_suite, capsys):
    path = write_suite(suite_text(claims='["AB.RR6 > AB.sdt"]'))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "claims[0]" in err[0]
    assert "did you mean 'std'" in err[0]


def test_claims_in_a_setting_get_its_key_prefix(write_suite):
    text = suite_text().replace("claims: [\"AB.RR6 > AB.std\"]\n", "").replace(
        "reference: {AB: {RR6: 0.997}}", "settings:\n  one: {claims: [\"AB.RR9 > AB.std\"]}")
    with pytest.raises(UserError) as err:
        load_suite(write_suite(text))
    assert err.value.key == "settings.one.claims[0]"


# ------------------------------------------------------------------------------------------------
# verdicts
# ------------------------------------------------------------------------------------------------
def seeds(values) -> dict[int, float]:
    return dict(enumerate(values))


# paper 000, Table 2
RR6_AB = [0.996, 1.0, 0.993, 0.996, 0.998]
STD_AB = [0.136] * 5
STD_B = [0.966, 0.958, 0.984, 0.974, 0.989]


def test_the_papers_table_2_reproduces_its_claims():
    v = evaluate(parse("AB.RR6 > AB.std"), seeds(RR6_AB), seeds(STD_AB))
    assert v.verdict == REPRODUCED and v.test.kind == "paired"
    ref = sps.ttest_rel(RR6_AB, STD_AB, alternative="greater")
    assert v.test.p == pytest.approx(ref.pvalue, rel=1e-9)
    v = evaluate(parse("AB.RR6 >= B.std"), seeds(RR6_AB), seeds(STD_B))
    assert v.verdict == REPRODUCED and v.threshold == -0.01
    assert v.test.p == pytest.approx(
        sps.ttest_rel(np.add(RR6_AB, 0.01), STD_B, alternative="greater").pvalue, rel=1e-9)
    assert "reproduced" in v.summary() and "paired t, n=5" in v.summary()


def test_a_refuted_claim_is_not_reproduced():
    # Std_AB collapsed: the claim that it matches the from-scratch baseline is refuted
    v = evaluate(parse("AB.std >= B.std"), seeds(STD_AB), seeds(STD_B))
    assert v.verdict == NOT_REPRODUCED and v.against.p < 0.05 and v.test.p > 0.5
    # the other direction of a true claim
    v = evaluate(parse("AB.std > AB.RR6"), seeds(STD_AB), seeds(RR6_AB))
    assert v.verdict == NOT_REPRODUCED


def test_no_difference_refutes_superiority_but_supports_non_inferiority():
    rng = np.random.default_rng(3)
    base = rng.normal(0.95, 0.003, 10)
    same = base + rng.normal(0, 0.001, 10)
    sup = evaluate(parse("A.x > A.y"), seeds(same), seeds(base))
    assert sup.verdict == NOT_REPRODUCED and sup.refute_below == 0.01
    non = evaluate(parse("A.x >= A.y"), seeds(same), seeds(base))
    assert non.verdict == REPRODUCED


def test_noisy_small_samples_are_inconclusive():
    v = evaluate(parse("AA.RR6 > AA.std"), seeds([0.89, 0.97]), seeds([0.95, 0.90]))
    assert v.verdict == INCONCLUSIVE and "too wide" in v.reason
    lo, hi = v.test.bound(0.95, "lower"), v.test.bound(0.95, "upper")
    assert lo < 0 < 0.01 < hi  # neither bound decides


def test_too_few_seeds_are_inconclusive_without_a_test():
    v = evaluate(parse("AB.RR6 > AB.std"), {0: 0.99}, seeds(STD_AB))
    assert v.verdict == INCONCLUSIVE and v.test is None
    assert "AB.RR6 has 1 seed" in v.reason
    v = evaluate(parse("AB.RR6 > AB.std"), {}, {})
    assert "AB.RR6 has 0 seeds" in v.reason and "AB.std has 0 seeds" in v.reason
    # NaN values (a diverged run) do not count as seeds
    v = evaluate(parse("AB.RR6 > AB.std"), {0: 0.99, 1: math.nan}, seeds(STD_AB))
    assert v.verdict == INCONCLUSIVE


def test_welch_when_the_replicates_differ():
    v = evaluate(parse("AB.RR6 > AB.std"), {0: 0.99, 1: 0.97, 2: 0.98}, {0: 0.5, 1: 0.52, 3: 0.49})
    assert v.test.kind == "welch" and v.verdict == REPRODUCED
    ref = sps.ttest_ind([0.99, 0.97, 0.98], [0.5, 0.52, 0.49], equal_var=False, alternative="greater")
    assert v.test.p == pytest.approx(ref.pvalue, rel=1e-9)


def test_less_than_swaps_the_sides_and_relative_margin_scales():
    v = evaluate(parse("A.std < A.RR6 on seconds_per_epoch"), seeds([1.0, 1.1, 0.9]),
                 seeds([1.6, 1.7, 1.62]))
    assert v.verdict == REPRODUCED and v.test.mean_left == pytest.approx(1.64)
    # racecar costs ~1.61x: "at most 10% slower" is refuted; the margin is 10% of the side
    # written on the right (std, 1.0 s), whichever way the operator points
    v = evaluate(parse("A.RR6 <= A.std on seconds_per_epoch within 10%"),
                 seeds([1.6, 1.7, 1.62]), seeds([1.0, 1.1, 0.9]))
    assert v.margin == pytest.approx(0.1) and v.verdict == NOT_REPRODUCED
    v = evaluate(parse("A.RR6 >= A.std on seconds_per_epoch within 10%"),
                 seeds([1.6, 1.7, 1.62]), seeds([1.0, 1.1, 0.9]))
    assert v.margin == pytest.approx(0.1) and v.verdict == REPRODUCED
    v = evaluate(parse("A.std >= A.RR6 on seconds_per_epoch within 10%"),
                 seeds([1.0, 1.1, 0.9]), seeds([1.6, 1.7, 1.62]))
    assert v.margin == pytest.approx(0.164) and v.verdict == NOT_REPRODUCED


# ------------------------------------------------------------------------------------------------
# differences of rows: "the gain is larger here than there"
# ------------------------------------------------------------------------------------------------
def test_a_side_may_be_the_difference_of_two_rows():
    from harness.claims import Diff, Side, side_values

    c = parse("(mix.NN - mix.RN) > (mnist.NN - mnist.RN) on test_err within 1")
    assert c.left == Diff(Side("mix", "NN"), Side("mix", "RN"))
    assert c.right == Diff(Side("mnist", "NN"), Side("mnist", "RN"))
    assert (c.metric, c.margin) == ("final_test_err", 1.0)
    assert parse("(A.a - A.b) >= B.c").right == Side("B", "c")
    table = {("mix", "NN"): {0: 50.0, 1: 52.0, 2: 51.0}, ("mix", "RN"): {0: 44.0, 1: 45.0, 2: 44.5},
             ("mnist", "NN"): {0: 5.0, 1: 5.5, 2: 5.2}, ("mnist", "RN"): {0: 4.8, 1: 5.4, 3: 9.9}}
    values = lambda stage, label, metric: table[stage, label]  # noqa: E731
    assert side_values(c.left, values, "final_test_err") == {0: 6.0, 1: 7.0, 2: 6.5}
    # a difference exists only for the replicates both rows have
    assert side_values(c.right, values, "final_test_err") == pytest.approx({0: 0.2, 1: 0.1})
    v = evaluate(c, side_values(c.left, values, c.metric), side_values(c.right, values, c.metric))
    assert v.verdict == REPRODUCED and v.test.kind == "welch"   # replicates {0,1,2} vs {0,1}
    flat = {k: {0: 1.0, 1: 2.0, 2: 3.0} for k in table}
    same = lambda stage, label, metric: flat[stage, label]  # noqa: E731
    v = evaluate(c, side_values(c.left, same, c.metric), side_values(c.right, same, c.metric))
    assert v.verdict != REPRODUCED  # no gain on either side


@pytest.mark.parametrize("text", ["(A.a - ) > B.b", "(A.a + A.b) > B.b", "(A.a - A.b - A.c) > B.b"])
def test_malformed_differences_are_refused(text):
    with pytest.raises(UserError):
        parse(text)


def test_difference_claims_are_checked_against_the_rows(write_suite):
    ok = '["(AB.RR6 - AB.std) > (AA.RR6 - AA.std)"]'
    load_suite(write_suite(suite_text(claims=ok)))
    with pytest.raises(UserError, match="no row 'RR7'"):
        load_suite(write_suite(suite_text(claims='["(AB.RR7 - AB.std) > AA.std"]')))
