"""Volume geometry properties and the iter_slices / stack_slices round trip in display orientation."""

from __future__ import annotations

import numpy as np
import pytest

from aaclip_med.errors import GeometryError
from aaclip_med.volume import Volume, display_plan, stack_slices
from tests.conftest import rotation

RAS = np.diag([1.2, 0.9, 2.5, 1.0])
LPS_BRATS = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
SAGITTAL = np.array([[0, 0, -1.5, 60.0], [1.0, 0, 0, -100], [0, -1.1, 0, 80], [0, 0, 0, 1]])  # i: A, j: I, k: L


def make(affine: np.ndarray, shape=(6, 7, 5)) -> Volume:
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    return Volume(data, affine, "MR", "synthetic", {})


def world(vol: Volume, ijk) -> np.ndarray:
    return (vol.affine @ [*ijk, 1])[:3]


@pytest.mark.parametrize("affine", [RAS, LPS_BRATS, SAGITTAL], ids=["ras", "lps", "sagittal"])
def test_round_trip_is_identity(affine: np.ndarray) -> None:
    vol = make(affine)
    slices = list(vol.iter_slices())
    assert len(slices) == vol.n_slices
    np.testing.assert_array_equal(stack_slices(slices, like=vol), vol.data)
    for axis in range(3):
        np.testing.assert_array_equal(stack_slices(list(vol.iter_slices(axis)), like=vol, axis=axis), vol.data)


def test_sagittal_storage_slices_along_superior_axis() -> None:
    vol = make(SAGITTAL)
    assert vol.slice_axis == 1 and vol.n_slices == 7 and vol.orientation == "AIL"


@pytest.mark.parametrize(
    "affine", [RAS, LPS_BRATS, SAGITTAL, np.vstack([np.c_[rotation() * 1.3, [1, 2, 3]], [0, 0, 0, 1]])]
)
def test_display_is_radiological(affine: np.ndarray) -> None:
    """Row 0 is the anterior end, column 0 the patient-right end; rows and columns follow the world axes."""
    vol = make(affine)
    plan = display_plan(vol.affine)
    index = 2
    img = vol.get_slice(index)
    # voxel index of each display pixel, recovered by stacking an index map back
    shape = vol.shape
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    coords = [Volume(c.astype(np.float32), vol.affine, None, "", {}).get_slice(index) for c in (ii, jj, kk)]
    top_left = world(vol, [c[0, 0] for c in coords])
    below = world(vol, [c[1, 0] for c in coords])
    right = world(vol, [c[0, 1] for c in coords])
    assert below[1] < top_left[1]  # moving down goes posterior (-y in RAS)
    assert right[0] < top_left[0]  # moving right goes to the patient's left (-x in RAS)
    assert img.shape == coords[0].shape and plan.axis == vol.slice_axis


def test_lps_axial_display_is_dicom_native_view() -> None:
    """For a usual DICOM axial volume (data = pixel_array.T) the display slice is the pixel array itself."""
    pixel_array = np.arange(7 * 9, dtype=np.float32).reshape(7, 9)
    affine = np.diag([-0.7, -0.7, 2.5, 1.0])
    vol = Volume(pixel_array.T[:, :, None], affine, "CT", "x", {})
    np.testing.assert_array_equal(vol.get_slice(0), pixel_array)


def test_properties_and_errors() -> None:
    vol = make(RAS)
    assert vol.orientation == "RAS" and vol.spacing == pytest.approx((1.2, 0.9, 2.5))
    assert vol.shape == (6, 7, 5) and vol.data.dtype == np.float32
    with pytest.raises(GeometryError, match="differs from the volume grid"):
        vol.with_data(np.zeros((6, 7, 4)))
    assert vol.with_data(np.ones(vol.shape)).data.sum() == vol.data.size
    with pytest.raises(GeometryError, match="one map per slice"):
        stack_slices(list(vol.iter_slices())[:-1], like=vol)
    with pytest.raises(GeometryError, match="plane shape"):
        stack_slices([np.zeros((3, 3))] * vol.n_slices, like=vol)
    with pytest.raises(GeometryError, match="must be 3D"):
        Volume(np.zeros((3, 3)), np.eye(4), None, "x", {})
    with pytest.raises(GeometryError, match="out of range"):
        vol.get_slice(99)
