"""Tests of aaclip_med.metrics against independent computations (scikit-learn, hand values, brute force)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from aaclip_med.errors import ConfigError, GeometryError
from aaclip_med.metrics import (
    CASE_METRIC_COLUMNS,
    SLICE_METRIC_COLUMNS,
    SUMMARY_COLUMNS,
    PixelAccumulator,
    RegionWeightCache,
    UndefinedMetricWarning,
    aupro,
    auroc,
    average_precision,
    case_row,
    dice_iou,
    evaluate_set,
    f1_max,
    image_metrics,
    lesion_detection,
    normalise_maps,
    pixel_metrics,
    region_weights,
    slice_metric_rows,
    summary_rows,
)


def brute_f1_max(y: np.ndarray, s: np.ndarray) -> float:
    """Max F1 over every distinct threshold, predicting score >= t."""
    best = 0.0
    for t in np.unique(s):
        pred = s >= t
        tp = np.sum(pred & y)
        best = max(best, 2 * tp / (pred.sum() + y.sum()))
    return float(best)


def brute_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """PRO curve by looping over thresholds; regions are 8-connected per 2D image; FPR over normal pixels."""
    regions = []
    for m in masks:
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(len(regions), lab == k + 1) for k in range(n)]
    region_scores = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        region_scores += [maps[i][lab == k + 1] for k in range(n)]
    normal = maps[~masks.astype(bool)]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fprs.append(float(np.mean(normal >= t)))
        pros.append(float(np.mean([np.mean(r >= t) for r in region_scores])))
    fprs, pros = np.array(fprs), np.array(pros)
    grid_x = np.concatenate([fprs[fprs <= limit], [limit]])
    grid_y = np.concatenate([pros[fprs <= limit], [np.interp(limit, fprs, pros)]])
    return float(np.sum(0.5 * (grid_y[1:] + grid_y[:-1]) * np.diff(grid_x)) / limit)


def blob_set(seed: int, n: int = 3, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Maps with a few square lesions whose scores are raised, plus noise."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        for _ in range(2):
            r, c, h = rng.integers(0, size - 6), rng.integers(0, size - 6), rng.integers(2, 6)
            masks[i, r : r + h, c : c + h] = True
    maps = rng.normal(size=masks.shape) + 1.5 * masks
    return maps, masks


# ---- image level -------------------------------------------------------------------------------------------


def test_image_metrics_match_sklearn_and_hand_values() -> None:
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    rng = np.random.default_rng(0)
    y, s = rng.random(200) > 0.6, rng.random(200)
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert f1_max(y, s)[0] == pytest.approx(brute_f1_max(y, s), abs=1e-12)


def test_f1_max_hand_computed() -> None:
    # thresholds: >=0.8 -> F1 0.8; >=0.7 -> 2/3; >=0.2 -> 6/7; >=0.1 -> 0.75
    f1, thr = f1_max([0, 1, 1, 0, 1], [0.1, 0.9, 0.8, 0.7, 0.2])
    assert f1 == pytest.approx(6 / 7)
    assert thr == pytest.approx(0.2)


def test_perfect_and_random_scores() -> None:
    y = np.r_[np.zeros(50), np.ones(50)]
    perfect = image_metrics(y, y * 2 + 0.1)
    assert perfect["image_auroc"] == perfect["image_ap"] == perfect["image_f1_max"] == 1.0
    rng = np.random.default_rng(1)
    y, s = rng.random(20_000) > 0.5, rng.random(20_000)
    assert auroc(y, s) == pytest.approx(0.5, abs=0.02)
    vol = image_metrics([0, 1, 1], [0.2, 0.9, 0.5], prefix="volume")
    assert vol["volume_auroc"] == 1.0 and vol["volume_n"] == 3.0


@pytest.mark.parametrize(
    ("labels", "scores", "fragment"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "no negative"),
        ([0, 0], [0.1, 0.2], "no positive"),
        ([0, 1], [3, 3], "constant"),
    ],
)
def test_degenerate_image_metrics_are_nan_with_reason(labels: list, scores: list, fragment: str) -> None:
    with pytest.warns(UndefinedMetricWarning, match=fragment) as rec:
        assert math.isnan(auroc(labels, scores))
    assert rec[0].filename == __file__  # stacklevel points at the caller
    reasons: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = image_metrics(labels, scores, reasons=reasons)
    assert all(math.isnan(out[k]) for k in ("image_auroc", "image_ap", "image_f1_max"))
    assert reasons and all(fragment in r for r in reasons)


def test_bad_inputs_raise_project_errors() -> None:
    with pytest.raises(GeometryError):
        auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ConfigError):
        auroc([0, 1], [0.1, np.nan])
    with pytest.raises(GeometryError):
        PixelAccumulator().update(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ConfigError):
        PixelAccumulator(bins=7)


# ---- pixel level -------------------------------------------------------------------------------------------


def test_exact_pixel_metrics_match_sklearn_and_brute_force() -> None:
    maps, masks = blob_set(2)
    acc = PixelAccumulator(exact=True)
    for mp, mk in zip(maps, masks, strict=True):
        acc.update(mp, mk)
    out = acc.compute()
    y, s = masks.ravel(), maps.ravel()
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert out["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert out["pixel_f1_max"] == pytest.approx(brute_f1_max(y, s), abs=1e-12)
    assert out["pixel_aupro"] == pytest.approx(brute_aupro(maps, masks), abs=1e-9)
    assert aupro(maps, masks) == pytest.approx(out["pixel_aupro"], abs=1e-12)
    pred = maps >= out["threshold_oracle"]
    assert dice_iou(pred, masks)["dice"] == pytest.approx(out["dice_oracle"], abs=1e-12)
    assert out["iou_oracle"] == pytest.approx(dice_iou(pred, masks)["iou"], abs=1e-12)


def test_aupro_known_configuration() -> None:
    # one large region fully detected, one small region missed: PRO = 0.5 for every FPR in (0, 1) -> AUPRO 0.5
    mask = np.zeros((10, 10), bool)
    mask[1:5, 1:6] = True  # 20 px, scored above every normal pixel
    mask[8, 8:10] = True  # 2 px, scored below every normal pixel
    rng = np.random.default_rng(3)
    score = rng.random((10, 10))
    score[1:5, 1:6], score[8, 8:10] = 2.0, -1.0
    assert aupro([score], [mask]) == pytest.approx(0.5)
    assert brute_aupro(score[None], mask[None]) == pytest.approx(0.5)
    assert pixel_metrics(score, mask)["pixel_aupro"] == pytest.approx(0.5, abs=1e-3)  # binned
    # pixel-wise TPR would give 20/22 on that plateau; AUPRO weighs regions, not pixels
    perfect = pixel_metrics(mask * 1.0 + 0.01 * rng.random((10, 10)), mask, exact=True)
    for key in ("pixel_aupro", "pixel_auroc", "pixel_ap", "pixel_f1_max"):
        assert perfect[key] == pytest.approx(1.0), key


def test_regions_per_slice_or_volume() -> None:
    mask = np.zeros((6, 6, 4), bool)
    mask[1:3, 1:3, :] = True  # one 3D lesion over 4 slices (slice axis = last)
    acc_slice, acc_vol = PixelAccumulator(regions="slice"), PixelAccumulator(regions="volume")
    acc_slice.update(np.random.default_rng(0).random(mask.shape), mask, slice_axis=2)
    acc_vol.update(np.random.default_rng(0).random(mask.shape), mask)
    assert acc_slice.n_regions == 4 and acc_vol.n_regions == 1


def test_binned_matches_exact_within_tolerance() -> None:
    rng = np.random.default_rng(4)
    binned, exact = PixelAccumulator(bins=10_000), PixelAccumulator(exact=True)
    for i in range(6):  # growing ranges force the histogram to widen
        mask = np.zeros((48, 48), bool)
        mask[10 + i : 20 + i, 5:15] = True
        score = rng.normal(scale=1 + i, size=mask.shape) + 2.0 * mask
        binned.update(score, mask)
        exact.update(score, mask)
    b, e = binned.compute(), exact.compute()
    for key in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"):
        assert b[key] == pytest.approx(e[key], abs=1e-3), key
    assert abs(b["pixel_auroc"] - e["pixel_auroc"]) <= b["auroc_error_bound"] + 1e-12
    assert b["n_pixels"] == e["n_pixels"] == 6 * 48 * 48
    fixed = PixelAccumulator(value_range=(0.0, 1.0))
    y, s = rng.random(50_000) > 0.7, rng.random(50_000)
    fixed.update(s.reshape(250, 200), y.reshape(250, 200))
    assert fixed.compute()["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-3)
    assert fixed.compute()["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-3)


def test_pixel_degenerate_and_threshold_dice() -> None:
    with pytest.warns(UndefinedMetricWarning, match="no positive"):
        out = pixel_metrics(np.random.default_rng(0).random((8, 8)), np.zeros((8, 8)))
    assert math.isnan(out["pixel_auroc"]) and math.isnan(out["pixel_aupro"])
    reasons: list[str] = []
    out = pixel_metrics(np.ones((8, 8)), np.eye(8), exact=True, reasons=reasons)
    assert math.isnan(out["pixel_ap"]) and "constant" in reasons[0]
    assert math.isnan(PixelAccumulator().compute(reasons=[])["pixel_auroc"])  # nothing added
    score, mask = np.arange(16.0).reshape(4, 4), np.zeros((4, 4), bool)
    mask[2:, :] = True
    acc = PixelAccumulator(threshold=9.5)
    acc.update(score, mask)
    ref = dice_iou(score > 9.5, mask)
    assert acc.compute()["dice"] == pytest.approx(ref["dice"]) and acc.compute()["tp"] == ref["tp"]


def test_valid_mask_excludes_pixels() -> None:
    score = np.array([[0.9, 0.1], [0.8, 0.95]])
    mask = np.array([[1, 0], [0, 0]])
    valid = np.array([[True, True], [False, False]])
    assert pixel_metrics(score, mask, valid=valid, exact=True)["pixel_auroc"] == 1.0
    assert pixel_metrics(score, mask, exact=True)["pixel_auroc"] == pytest.approx(2 / 3)


# ---- masks ---------------------------------------------------------------------------------------------------


def test_dice_iou_hand_computed() -> None:
    ref = np.array([1, 1, 1, 1, 0, 0])
    pred = np.array([0, 0, 1, 1, 1, 0])
    out = dice_iou(pred, ref)
    assert out["dice"] == pytest.approx(4 / 7) and out["iou"] == pytest.approx(2 / 5)
    assert (out["tp"], out["fp"], out["fn"], out["tn"], out["n_pred"], out["n_ref"]) == (2, 1, 2, 1, 3, 4)
    with pytest.warns(UndefinedMetricWarning, match="both empty"):
        assert math.isnan(dice_iou(np.zeros(3), np.zeros(3))["dice"])
    assert dice_iou(np.ones(3), np.zeros(3))["dice"] == 0.0


def test_lesion_detection_3d() -> None:
    ref = np.zeros((20, 20, 10), bool)
    pred = np.zeros_like(ref)
    ref[1:5, 1:5, 1:5] = True  # 64 vox, fully hit
    pred[1:5, 1:5, 1:5] = True
    ref[10:14, 10:14, 2:6] = True  # 64 vox, hit by one voxel of a 9-voxel component -> IoU 1/72
    pred[13:16, 13:16, 5] = True
    ref[1:3, 15:17, 8] = True  # 4 vox, missed
    pred[17:19, 1:3, 1:3] = True  # 8 vox false positive
    out = lesion_detection(pred, ref, spacing=(0.5, 0.5, 2.0))
    assert (out["lesions_ref"], out["lesions_detected"], out["lesions_missed"]) == (3, 2, 1)
    assert out["lesion_sensitivity"] == pytest.approx(2 / 3)
    assert (out["components_pred"], out["components_fp"]) == (3, 1)
    assert out["volume_ref_mm3"] == pytest.approx((64 + 64 + 4) * 0.5)
    sizes = sorted(les["size_mm3"] for les in out["lesions"])
    assert sizes == pytest.approx([2.0, 32.0, 32.0])
    partial = next(les for les in out["lesions"] if les["overlap_voxels"] == 1)
    assert partial["iou"] == pytest.approx(1 / 72)
    strict = lesion_detection(pred, ref, min_iou=0.1)
    assert strict["lesions_detected"] == 1
    with pytest.warns(UndefinedMetricWarning, match="no reference lesions"):
        assert math.isnan(lesion_detection(pred, np.zeros_like(ref))["lesion_sensitivity"])
    assert math.isnan(lesion_detection(pred, ref)["volume_ref_mm3"])  # no spacing, no mm³


# ---- normalisation and rows -----------------------------------------------------------------------------------


def test_normalise_maps_modes() -> None:
    maps = [np.array([[0.0, 2.0]]), np.array([[4.0, 1.0]])]
    set_maps, info = normalise_maps(maps, "set")
    assert info == {"normalisation": "set", "lo": 0.0, "hi": 4.0, "skipped": False}
    np.testing.assert_allclose(set_maps[1], [[1.0, 0.25]])
    vol_maps, info = normalise_maps(maps, "volume")
    np.testing.assert_allclose(vol_maps[1], [[1.0, 0.0]])
    assert normalise_maps([np.array([0.2, 1.0])], "set")[1]["skipped"]  # reference quirk: max already 1
    assert normalise_maps(maps, "none")[1] == {"normalisation": "none"}
    with pytest.raises(ConfigError):
        normalise_maps(maps, "global")  # type: ignore[arg-type]
    maps3, masks3 = blob_set(5)
    raw, normed = (
        pixel_metrics(maps3, masks3, exact=True),
        pixel_metrics(np.stack(normalise_maps(maps3, "set")[0]), masks3, exact=True),
    )
    assert raw["pixel_auroc"] == pytest.approx(normed["pixel_auroc"], abs=1e-6)  # set min-max is monotone


def test_row_builders() -> None:
    maps, masks = blob_set(6, n=4)
    vol, ref = np.moveaxis(maps, 0, -1), np.moveaxis(masks, 0, -1)  # (H, W, slices)
    rows = slice_metric_rows("c1", vol.max(axis=(0, 1)), heatmap=vol, mask=ref, threshold=1.0, slice_axis=-1)
    assert len(rows) == 4 and tuple(rows[0]) == SLICE_METRIC_COLUMNS and rows[0]["label"] == 1.0
    assert rows[2]["dice"] == pytest.approx(dice_iou(maps[2] > 1.0, masks[2])["dice"])
    row = case_row("c1", score=float(vol.max()), heatmap=vol, mask=ref, threshold=1.0, spacing=(1, 1, 3))
    assert tuple(row) == CASE_METRIC_COLUMNS and row["label"] == 1.0 and isinstance(row["reasons"], str)
    assert row["dice"] == pytest.approx(dice_iou(vol > 1.0, ref)["dice"])
    assert row["pixel_auroc"] == pytest.approx(roc_auc_score(ref.ravel(), vol.ravel()), abs=1e-3)
    assert row["volume_ref_mm3"] == pytest.approx(3.0 * ref.sum())
    acc = PixelAccumulator(threshold=1.0)
    acc.update(vol, ref, slice_axis=-1)
    res = evaluate_set(
        image_labels=[0, 1, 1, 0], image_scores=[0.1, 0.9, 0.8, 0.3], pixels=acc, cases=[row], normalisation="set"
    )
    other = dict(res, pixel_auroc=0.5, image_auroc=float("nan"))
    summary = summary_rows({"BrainMRI": res, "LiverCT": other}, group_column="dataset")
    assert list(summary[0])[:9] == [
        "dataset",
        "pixel_auroc",
        "pixel_ap",
        "image_auroc",
        "image_ap",
        "pixel_f1_max",
        "pixel_aupro",
        "image_f1_max",
        "dice",
    ]
    assert len(summary[0]) == len(SUMMARY_COLUMNS)
    avg = summary[-1]
    assert avg["dataset"] == "Average" and avg["normalisation"] == "set"
    assert avg["pixel_auroc"] == pytest.approx((res["pixel_auroc"] + 0.5) / 2)
    assert avg["image_auroc"] == 1.0  # undefined groups are left out of the mean
    assert avg["n_cases"] == 2.0 and res["lesion_sensitivity"] == row["lesion_sensitivity"]


def test_binning_in_chunks_keeps_region_weights_aligned(monkeypatch: pytest.MonkeyPatch) -> None:
    import aaclip_med.metrics.pixel as pixel_module

    maps, masks = blob_set(7)
    whole = PixelAccumulator(value_range=(-6.0, 8.0))
    whole.update(maps, masks, slice_axis=0)
    monkeypatch.setattr(pixel_module, "_CHUNK", 97)
    chunked = PixelAccumulator(value_range=(-6.0, 8.0))
    chunked.update(maps, masks, slice_axis=0)
    a, b = whole.compute(), chunked.compute()
    assert a["pixel_aupro"] == pytest.approx(b["pixel_aupro"], abs=1e-12)
    assert a["pixel_aupro"] == pytest.approx(aupro(maps, masks), abs=1e-3)


@pytest.mark.parametrize("regions", ["slice", "volume"])
def test_region_weights_match_labelling_the_whole_mask(regions: str) -> None:
    """Labelling only the mask's bounding box gives the weights of labelling the whole array, in the same order."""
    rng = np.random.default_rng(3)
    for shape, lo, hi in (((30, 40, 9), (4, 7, 2), (21, 33, 8)), ((25, 31), (3, 9), (17, 30))):
        mask = np.zeros(shape, bool)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        mask[box] = rng.random(tuple(b - a for a, b in zip(lo, hi, strict=True))) < 0.4
        for axis in range(len(shape)):
            structure = np.ones((3,) * len(shape), bool)
            if regions == "slice" and len(shape) == 3:
                structure = np.zeros_like(structure)
                structure[tuple(slice(1, 2) if a == axis else slice(None) for a in range(3))] = True
            labels, n = ndimage.label(mask, structure=structure)
            sizes = np.bincount(labels.ravel())
            got, n_got = region_weights(mask[:, ::-1][:, ::-1], regions, axis)  # a view, not a copy
            assert n_got == n >= 1 and np.array_equal(got, 1.0 / sizes[labels[mask]]), (shape, axis)
    empty = [region_weights(np.zeros(shape, bool)) for shape in ((4, 5, 3), (4, 5))]
    assert [(w.size, n) for w, n in empty] == [(0, 0), (0, 0)]


def test_region_weight_cache_labels_each_mask_and_region_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Maps evaluated against one mask and one ``valid`` share one labelling; the pooled metrics do not change."""
    import aaclip_med.metrics.pixel as pixel_module

    maps, masks = blob_set(5)
    valid = np.zeros_like(masks, bool)
    valid[:, 4:, :] = True
    calls: list[int] = []
    labelled = pixel_module.region_weights

    def counting(mask: np.ndarray, regions: str = "slice", slice_axis: int = -1) -> tuple[np.ndarray, int]:
        calls.append(slice_axis)
        return labelled(mask, regions, slice_axis)  # type: ignore[arg-type]

    monkeypatch.setattr(pixel_module, "region_weights", counting)
    cache = RegionWeightCache()
    for region in (None, valid):
        for k in range(3):
            shared, alone = PixelAccumulator(value_range=(-6, 8)), PixelAccumulator(value_range=(-6, 8))
            shared.update(maps + k, masks, valid=region, slice_axis=0, regions_cache=cache)
            alone.update(maps + k, masks, valid=region, slice_axis=0)
            assert shared.compute() == alone.compute()
    assert len(cache) == 2 and len(calls) == 2 + 6  # with the cache: once per region; without: once per map
    PixelAccumulator().update(maps, masks, valid=valid, slice_axis=1, regions_cache=cache)  # another rule
    assert len(cache) == 3


def test_eval_and_sheets_share_one_minmax_rule() -> None:
    """`eval`'s per-case scaling and `normalise_maps` agree, also on a flat map (they used to differ there)."""
    from aaclip_med.cohort.summary import _Scale
    from aaclip_med.metrics import normalise_maps

    flat = np.full((2, 3), 2.5, np.float32)
    ramp = np.arange(6, dtype=np.float32).reshape(2, 3)
    for heat in (flat, ramp):
        (expected,), _ = normalise_maps([heat], "volume")
        got, threshold = _Scale("volume").apply(heat, 2.5)
        np.testing.assert_array_equal(got, expected)
        assert threshold == (0.0 if heat is flat else 0.5)
    (expected,), _ = normalise_maps([ramp], "set", value_range=(-1.0, 9.0))
    np.testing.assert_allclose(_Scale("set", -1.0, 9.0).apply(ramp, 4.0)[0], expected)
