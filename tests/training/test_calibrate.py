"""Threshold calibration on known toy score sets."""

from __future__ import annotations

import numpy as np
import pytest

from aaclip_med.config import parse_threshold_rule
from aaclip_med.errors import ConfigError
from aaclip_med.training.calibrate import ValidationScores, choose_threshold


def _scores() -> ValidationScores:
    # normal case: 0.0..0.9 ; anomalous case: background 0.1..0.5, lesion 0.7, 0.8, 0.9, 1.0
    normal = np.linspace(0.0, 0.9, 10, dtype=np.float32)
    anom_bg = np.array([0.1, 0.2, 0.3, 0.4, 0.5], np.float32)
    lesion = np.array([0.7, 0.8, 0.9, 1.0], np.float32)
    scores = np.concatenate([normal, anom_bg, lesion])
    labels = np.concatenate([np.zeros(15, bool), np.ones(4, bool)])
    normal_case = np.concatenate([np.ones(10, bool), np.zeros(9, bool)])
    return ValidationScores(scores, labels, normal_case, np.zeros(2, np.float32), np.array([0, 1]))


def test_f1_threshold_separates_as_expected() -> None:
    s = _scores()
    t = choose_threshold(s, "f1")
    pred = s.pixel_scores > t
    # best F1: threshold between 0.6 and 0.7 gives TP 4, FP 3 (0.7,0.8,0.9 of the normal case) -> F1 = 8/11
    tp, fp, fn = (pred & s.pixel_labels).sum(), (pred & ~s.pixel_labels).sum(), (~pred & s.pixel_labels).sum()
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(8 / 11)


def test_fpr_threshold_on_normal_case_pixels() -> None:
    s = _scores()
    t = choose_threshold(s, "fpr:0.2")
    normal = s.pixel_scores[s.pixel_normal_case]
    assert (normal > t).mean() <= 0.2
    assert (normal > t - 0.11).mean() > 0.2  # the lowest such threshold


def test_youden_and_rule_parsing() -> None:
    assert choose_threshold(_scores(), "youden") is not None
    assert parse_threshold_rule("FPR:0.05") == ("fpr", 0.05)
    for bad in ("fpr:2", "best", "fpr:x"):
        with pytest.raises(ConfigError):
            parse_threshold_rule(bad)
