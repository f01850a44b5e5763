"""In-region pixel metrics and the trivial baseline of ``eval``: does the model beat the raw image?

Pixel metrics over all voxels mostly measure "tissue against background". Beside them, ``eval`` pools the same
pixel metrics (AUROC, AP, F1-max, AUPRO) over two more regions and for two more maps:

- regions: ``all`` (every voxel, as the papers), ``foreground`` (the preset's foreground of the input image: the
  body for CT, the brain for MRI; the voxels the model scores), ``organ`` (the ``organ_mask`` column of the labels
  CSV, when given);
- maps: ``model`` (the heatmap as written), ``intensity`` (the input image itself, brighter = more anomalous), and
  with an organ mask ``intensity_deviation`` (``|intensity - median intensity inside the organ|``: hypo- and
  hyperdense lesions both stand out, the usual CT baseline). Both baselines are expressed in standard deviations
  of the case's foreground (``(intensity - mean) / std``): a monotone change within a case (its own AUROC does not
  move), so that pooling cases whose scanners use other intensity scales (raw MRI) stays meaningful.

Where a baseline map reaches a higher pixel AUROC than the model in the same region, :func:`verdicts` says so in
words; the sentences go to ``summary.json``, the report and the ``eval`` output.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aaclip_med.errors import AACLIPMedError

if TYPE_CHECKING:
    from aaclip_med.cohort.case_volumes import CaseVolumes

__all__ = ["BASELINE_MAPS", "CASE_BASELINE_COLUMNS", "REGIONS", "RegionSet", "region_rows", "verdicts"]

logger = logging.getLogger(__name__)

REGIONS = ("all", "foreground", "organ")
BASELINE_MAPS = ("intensity", "intensity_deviation")
_CASE_KEYS = {
    ("model", "foreground"): "pixel_auroc_foreground",
    ("model", "organ"): "pixel_auroc_organ",
    ("intensity", "all"): "baseline_pixel_auroc",
    ("intensity", "foreground"): "baseline_pixel_auroc_foreground",
    ("intensity", "organ"): "baseline_pixel_auroc_organ",
    ("intensity_deviation", "organ"): "deviation_pixel_auroc_organ",
}
CASE_BASELINE_COLUMNS = tuple(_CASE_KEYS.values())  # the in-region and baseline columns of cases.csv
_MAP_WORDS = {
    "intensity": "the raw-intensity baseline",
    "intensity_deviation": "the |intensity - organ median| baseline",
}
_REGION_WORDS = {"all": "over all voxels", "foreground": "inside the foreground", "organ": "inside the organ mask"}


@dataclass
class RegionSet:
    """Pooled accumulators of one group (preset), keyed by ``(map, region)``; ``(model, all)`` lives elsewhere."""

    pixels: dict[tuple[str, str], Any] = field(default_factory=dict)

    def update(
        self,
        volumes: CaseVolumes,
        heatmap: np.ndarray,
        ref: np.ndarray,
        preset: str,
        slice_axis: int,
        organ_mask: Path | None = None,
        organ: str | None = None,
        label: int | None = None,
    ) -> dict[str, Any]:
        """Add one case; returns its cases.csv columns (:data:`CASE_BASELINE_COLUMNS`) or ``baseline_reasons``.

        Args:
            volumes: The case's volumes: its image (the input the heatmap was computed from: the baseline map
                and the foreground come from it) is read there, once for the whole evaluation.
            heatmap: The model's map as evaluated (raw or normalised).
            ref: The reference mask (bool, the heatmap's grid).
            preset: The preset the case was scored with (its foreground rule).
            slice_axis: The slice axis (AUPRO regions, the body's hole filling).
            organ_mask: The case's organ mask (read by :func:`~aaclip_med.organ.read_organ_mask`), or None.
            organ: Structure inside a folder or zip of organ masks.
            label: Organ label of a multi-label map (None: > 0).
        """
        from aaclip_med import metrics
        from aaclip_med.intensity import foreground_mask
        from aaclip_med.organ import read_organ_mask
        from aaclip_med.presets import get_preset

        case_id = volumes.case.case_id
        if str(volumes.case.image).startswith("sha256:"):
            why = (
                "baselines skipped: the run recorded its input as a hash (names are hashed by default); give the "
                "image in an 'image' column of the labels CSV, or run with --keep-names or --base-dir"
            )
            logger.warning("%s: %s", case_id, why)
            return {"baseline_reasons": why}
        try:
            volume = volumes.image()
            data = volume.data
            organ_region = (read_organ_mask(organ_mask, volume, organ=organ, label=label).mask
                            if organ_mask is not None else None)  # fmt: skip
        except AACLIPMedError as err:
            why = f"baselines skipped: {str(err).splitlines()[0]}"
            logger.warning("%s: %s", case_id, why)
            return {"baseline_reasons": why}
        for name, arr in (("image", data), ("organ mask", organ_region)):
            if arr is not None and arr.shape != heatmap.shape:
                why = f"baselines skipped: the {name} grid {arr.shape} differs from the heatmap's {heatmap.shape}"
                logger.warning("%s: %s", case_id, why)
                return {"baseline_reasons": why}
        regions: dict[str, np.ndarray | None] = {
            "all": None,
            "foreground": foreground_mask(data, get_preset(preset).foreground, slice_axis=slice_axis),
        }
        fg = regions["foreground"]
        values = data[fg] if fg is not None and np.count_nonzero(fg) > 1 else data
        z = ((data - np.float32(values.mean())) / np.float32(values.std() or 1.0)).astype(np.float32)
        maps: dict[str, np.ndarray] = {"model": heatmap, "intensity": z}
        if organ_region is not None:
            regions["organ"] = organ_region
            maps["intensity_deviation"] = np.abs(z - np.float32(np.median(z[organ_region])))
        row: dict[str, Any] = {}
        for map_name, values in maps.items():
            for region, valid in regions.items():
                if (map_name, region) == ("model", "all") or (map_name in BASELINE_MAPS[1:] and region != "organ"):
                    continue  # the model over all voxels is the peer-paper row; a deviation needs its organ
                acc = self.pixels.setdefault((map_name, region), metrics.PixelAccumulator())
                acc.update(values, ref, valid=valid, slice_axis=slice_axis, regions_cache=volumes.regions)
                if (map_name, region) in _CASE_KEYS:
                    one = metrics.PixelAccumulator(with_aupro=False)
                    one.update(values, ref, valid=valid, slice_axis=slice_axis)
                    row[_CASE_KEYS[(map_name, region)]] = one.compute(reasons=[])["pixel_auroc"]
        return row


def region_rows(groups: Mapping[str, RegionSet], model_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The summary rows: per preset, the model over all voxels (``model_rows``) then every other map x region.

    Args:
        groups: Preset -> its :class:`RegionSet`.
        model_rows: The peer-paper summary rows (model over all voxels), ``preset`` first, ``Average`` last.

    Returns:
        Rows with ``preset, map, region`` first; the extra rows carry the pixel metrics (other columns NaN).
    """
    from aaclip_med import metrics

    columns = list(model_rows[0]) if model_rows else []
    out: list[dict[str, Any]] = []
    for row in model_rows:
        preset = str(row.get("preset"))
        out.append(_ordered({**row, "map": "model", "region": "all"}, columns))
        if preset not in groups:
            continue
        for map_name in ("model", "intensity", *BASELINE_MAPS[1:]):
            for region in REGIONS:
                acc = groups[preset].pixels.get((map_name, region))
                if acc is None:
                    continue
                reasons: list[str] = []
                res = metrics.summary_rows({str(preset): acc.compute(reasons=reasons)}, group_column="preset",
                                           average=False)[0]  # fmt: skip
                extra = {k: res.get(k, np.nan) for k in columns if k not in ("preset", "normalisation", "reasons")}
                extra.update(preset=preset, map=map_name, region=region, normalisation=row.get("normalisation"),
                             reasons="; ".join(reasons), n_cases=float(acc.n_cases))  # fmt: skip
                out.append(_ordered(extra, columns))
    return out


def _ordered(row: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    head = ["preset", "map", "region"]
    return {k: row.get(k, np.nan) for k in head + [c for c in columns if c not in head]}


def verdicts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One sentence per preset and region comparing the model's pixel AUROC with each baseline's.

    Example:
        >>> rows = [{"preset": "ct", "map": "model", "region": "all", "pixel_auroc": 0.6},
        ...         {"preset": "ct", "map": "intensity", "region": "all", "pixel_auroc": 0.9}]
        >>> verdicts(rows)[0].split(";")[0]
        'ct, over all voxels: the raw-intensity baseline BEATS the model (pixel AUROC 0.900 vs 0.600)'
        >>> verdicts([{**rows[0], "pixel_auroc": 0.34}, {**rows[1], "pixel_auroc": 0.16}])[0][:46]
        'ct, over all voxels: neither the model nor the'
    """
    by_key = {(r.get("preset"), r.get("map"), r.get("region")): r for r in rows}
    out = []
    for (preset, map_name, region), row in by_key.items():
        model = by_key.get((preset, "model", region))
        if map_name not in BASELINE_MAPS or model is None:
            continue
        base, ours = float(row.get("pixel_auroc", np.nan)), float(model.get("pixel_auroc", np.nan))
        if not (np.isfinite(base) and np.isfinite(ours)):
            continue
        where = f"{preset}, {_REGION_WORDS.get(str(region), region)}"
        what = _MAP_WORDS[str(map_name)]
        if base > ours:
            out.append(f"{where}: {what} BEATS the model (pixel AUROC {base:.3f} vs {ours:.3f}); here the model "
                       "ranks voxels worse than the input image alone.")  # fmt: skip
        elif ours <= 0.5:  # "beats" would mislead: neither ranks the lesion above the rest
            out.append(f"{where}: neither the model nor {what} ranks lesion voxels above chance (pixel AUROC "
                       f"{ours:.3f} vs {base:.3f}).")  # fmt: skip
        else:
            out.append(f"{where}: the model beats {what} (pixel AUROC {ours:.3f} vs {base:.3f}).")
    return out
