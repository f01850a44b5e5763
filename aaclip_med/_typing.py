"""Names for recurring types (as TorchIO ``typing.py``)."""

from __future__ import annotations

import os
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

PathLike: TypeAlias = "str | os.PathLike[str]"
Array: TypeAlias = npt.NDArray[Any]
Array2D: TypeAlias = npt.NDArray[np.float32]
Array3D: TypeAlias = npt.NDArray[np.float32]
Affine: TypeAlias = npt.NDArray[np.float64]
