"""One evaluated case's volumes, each read at most once: the metrics, the baselines and the case page share them.

``aaclip-med eval`` needs a case's source image twice (the raw-intensity baseline, the case page's slice viewer)
and its reference mask twice (the metrics, the page's outline); a DICOM series can take tens of seconds to read.
:func:`~aaclip_med.cohort.summary.assemble` makes one :class:`CaseVolumes` per case and lets it go when the case
is done, so a read is never repeated and at most one case's volumes are held at a time (memory stays flat in the
cohort's size). The arrays handed out are read-only: they are shared, so no consumer may change them in place.
The case's AUPRO regions are shared the same way (:attr:`CaseVolumes.regions`): every map evaluated against the
reference mask in a region (the model's, the baselines') reuses one labelling of its connected components.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

import numpy as np

from aaclip_med.errors import AACLIPMedError, ManifestError
from aaclip_med.manifest import Case
from aaclip_med.metrics.pixel import RegionWeightCache
from aaclip_med.volume import Volume

__all__ = ["CaseVolumes", "read_array"]

_T = TypeVar("_T", Volume, np.ndarray)


def read_array(path: Path) -> np.ndarray:
    """The voxel array of one of the run's own NIfTI outputs (``heatmap.nii.gz``, ``mask.nii.gz``)."""
    import nibabel as nib

    img = cast(nib.Nifti1Image, nib.load(str(path)))
    return np.asarray(img.dataobj)


class CaseVolumes:
    """Lazy reads of one case's volumes, each done once; a read that failed raises its error again, unread.

    Attributes:
        case: The case (``image``, ``mask`` are read from it).
        case_dir: Its finished run folder (``heatmap.nii.gz``, ``mask.nii.gz``).
        regions: The AUPRO region weights of the case's reference mask per evaluated region, computed once for
            all maps (pass it to :meth:`~aaclip_med.metrics.PixelAccumulator.update` as ``regions_cache``).

    Example:
        >>> vols = CaseVolumes(Case("c1", Path("c1.nii.gz"), mask=Path("c1_mask.nii.gz")), Path("out/cases/c1"))
        >>> vols.image().shape  # doctest: +SKIP
        (512, 512, 120)
    """

    def __init__(self, case: Case, case_dir: Path) -> None:
        """Nothing is read until a volume is asked for."""
        self.case = case
        self.case_dir = case_dir
        self._read: dict[str, Volume | np.ndarray | AACLIPMedError] = {}
        self.regions = RegionWeightCache()

    def image(self) -> Volume:
        """The source image the run scored (``case.image``).

        Raises:
            AACLIPMedError: It cannot be read (the subclass :func:`~aaclip_med.io.read_volume` raised).
        """
        return self._once("image", lambda: _frozen_volume(self.case.image))

    def reference(self) -> Volume:
        """The reference mask as read (``case.mask``; the evaluation binarises it).

        Raises:
            ManifestError: The case has no mask.
            AACLIPMedError: It cannot be read.
        """
        mask = self.case.mask
        if mask is None:
            msg = f"Case {self.case.case_id} has no reference mask; give it in the labels' mask column."
            raise ManifestError(msg)
        return self._once("reference", lambda: _frozen_volume(mask))

    def heatmap(self) -> np.ndarray:
        """The run's ``heatmap.nii.gz`` in raw map units, float32."""
        path = self.case_dir / "heatmap.nii.gz"
        return self._once("heatmap", lambda: _frozen(read_array(path).astype(np.float32)))

    def prediction(self) -> np.ndarray:
        """The run's ``mask.nii.gz`` as stored (0/1)."""
        return self._once("prediction", lambda: _frozen(read_array(self.case_dir / "mask.nii.gz")))

    def _once(self, key: str, read: Callable[[], _T]) -> _T:
        if key not in self._read:
            try:
                self._read[key] = read()
            except AACLIPMedError as err:
                self._read[key] = err
        value = self._read[key]
        if isinstance(value, AACLIPMedError):
            raise value
        return cast(_T, value)


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _frozen_volume(path: Path) -> Volume:
    from aaclip_med.io import read_volume

    volume = read_volume(path)
    _frozen(volume.data)
    return volume
