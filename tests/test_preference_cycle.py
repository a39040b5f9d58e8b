"""The lab's intransitive judge: three response lengths beating each other in a cycle."""

import pytest
import torch

from alignlab.experiments.nash_lm import worst_case_win_rate
from alignlab.preferences import build_preference_source
from alignlab.preferences.cycle import CyclePreference, response_kind

SHORT, MEDIUM, LONG = "a " * 3, "b " * 6, "c " * 10  # 3, 6 and 10 words


def test_kinds_by_word_count():
    assert [response_kind(t, 4, 8) for t in (SHORT, MEDIUM, LONG)] == [0, 1, 2]
    assert response_kind("one two three four", 4, 8) == 0 and response_kind("w " * 9, 4, 8) == 2


def test_the_cycle_and_its_hand_worked_values():
    judge = CyclePreference(short_words=4, long_words=8, margin=0.3)
    p = judge.prefer(["q"] * 4, [SHORT, MEDIUM, LONG, SHORT], [MEDIUM, LONG, SHORT, "x y"])
    # short > medium, medium > long, long > short: 0.8 each; one kind: 1/2
    assert p.tolist() == pytest.approx([0.8, 0.8, 0.8, 0.5])
    back = judge.prefer(["q"] * 4, [MEDIUM, LONG, SHORT, "x y"], [SHORT, MEDIUM, LONG, SHORT])
    assert torch.equal(p + back, torch.ones(4))  # antisymmetric bit for bit


def test_spec_and_bad_options():
    judge = build_preference_source("cycle:short=4,long=8,margin=0.25")
    assert isinstance(judge, CyclePreference) and (judge.short_words, judge.long_words, judge.margin) == (4, 8, 0.25)
    assert build_preference_source("cycle:").margin == 0.4
    with pytest.raises(ValueError, match="options are short=N, long=N and margin=M"):
        build_preference_source("cycle:width=3")
    with pytest.raises(ValueError, match="margin must be in"):
        build_preference_source("cycle:margin=0.7")
    with pytest.raises(ValueError, match="short < long"):
        build_preference_source("cycle:short=9,long=8")


def test_worst_case_win_rate_by_hand():
    # one kind only: the next kind round the cycle beats it, 1/2 - margin
    assert worst_case_win_rate(torch.tensor([1.0, 0.0, 0.0]), 0.4) == pytest.approx(0.1)
    # uniform: 1/2 against every kind
    assert worst_case_win_rate(torch.tensor([1 / 3, 1 / 3, 1 / 3]), 0.4) == pytest.approx(0.5)
    # q = (0.5, 0.5, 0): against long, 0.5 * 0.1 + 0.5 * 0.9 = 0.5; against short 0.5 * 0.5 + 0.5 * 0.1 = 0.3
    assert worst_case_win_rate(torch.tensor([0.5, 0.5, 0.0]), 0.4) == pytest.approx(0.3)
