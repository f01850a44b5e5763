"""Sanity checks on what a run read and scored: outputs that would look fine but mean nothing get a warning.

Each check returns warning texts; the pipeline logs them and adds them to ``qa.json`` (and the HTML report), so
a "2/3 slices flagged" on a 3x3x3 image or "0 flagged" on a blank volume never passes silently.
"""

from __future__ import annotations

from aaclip_med.volume import Volume

__all__ = ["MIN_IN_PLANE", "result_warnings", "volume_warnings"]

MIN_IN_PLANE = 16  # fewer pixels per side than this hold no structure the model could read (it sees 224+ px)


def volume_warnings(volume: Volume) -> list[str]:
    """Warnings about the image itself: too small to mean anything, or constant."""
    warns = []
    axis = volume.slice_axis
    in_plane = [n for a, n in enumerate(volume.shape) if a != axis]
    if min(in_plane) < MIN_IN_PLANE:
        warns.append(
            f"the image is only {in_plane[0]}x{in_plane[1]} voxels per slice ({volume.n_slices} slices); "
            "the model "
            f"needs at least {MIN_IN_PLANE}x{MIN_IN_PLANE} to see any structure, so its scores mean nothing. "
            "Check that this is the intended image."
        )
    lo, hi = float(volume.data.min()), float(volume.data.max())
    if lo == hi:
        warns.append(
            f"the image is constant (every voxel is {lo:g}): there is nothing to score; check the export of the "
            "image."
        )
    return warns


def result_warnings(n_scored: int, n_slices: int, preset: str) -> list[str]:
    """Warnings about the scoring: no slice scored means the score and empty mask say nothing."""
    if n_scored:
        return []
    return [
        f"no slice was scored: none of the {n_slices} slices has enough foreground by the '{preset}' preset's "
        "rule, so the volume score 0 and the empty mask say nothing (they do not mean 'normal'). Check the image "
        "and the --preset."
    ]

