"""Training data: case records -> validated slices -> a torch Dataset of model-ready samples.

:func:`build_datasets` checks every input up front (files exist, mask grids match, labels agree with masks, the
training split is not empty and has anomalous samples) and raises one :class:`~aaclip_med.errors.ManifestError`
naming the file/row and the fix before any training starts.

2D pictures are read with PIL (grey -> 3 channels), resized bicubically to the model size, and their masks are
resized with nearest neighbour and binarised (``!= 0``). Volumes are read with :func:`~aaclip_med.io.read_volume`
and cut with :meth:`~aaclip_med.volume.Volume.iter_slices`, image and mask together on the image's grid; slices
with too little foreground (the preset's rule), and with a manifest ``organ_mask`` the slices without organ, are
skipped (as at inference; the input itself is not masked); a slice is anomalous when its mask has a voxel > 0;
each volume's intensity window is derived once from its foreground, as at inference (DESIGN §0). The
kept slices of volumes are held in memory as float32 at their source size (about 0.25 MB per 240x240 slice), so
the volumes are read once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from aaclip_med.errors import AACLIPMedError, ManifestError
from aaclip_med.io import read_volume
from aaclip_med.manifest import Case
from aaclip_med.organ import read_organ_mask
from aaclip_med.presets import get_preset, preset_for_modality
from aaclip_med.training.augment import Augmenter
from aaclip_med.training.layouts import is_2d_image
from aaclip_med.transforms import CLIP_MEAN, CLIP_STD, foreground_mask, slice_transform, volume_window

__all__ = ["SliceItem", "SliceDataset", "build_datasets", "load_items"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SliceItem:
    """One 2D training sample.

    Attributes:
        case_id: The case it comes from.
        preset: Modality preset name (selects prompts, anchors and the window).
        label: 1 when the mask has an anomalous pixel (or the manifest says so for a mask-less normal image).
        split: ``train``, ``val`` or ``test``; None (the manifest leaves it empty) counts as ``train``.
        path: The 2D image file (None for a volume slice).
        mask_path: The 2D mask file, or None.
        slice_index: Index along the volume's slice axis (-1 for 2D pictures).
        pixels: Volume slice in display orientation (float32), or None for 2D pictures.
        mask_pixels: Volume mask slice (bool), or None.
        window: The volume's intensity window ``(lo, hi)`` (DESIGN §0: one window per volume, as at inference),
            or None for 2D pictures and per-image windows.
    """

    case_id: str
    preset: str
    label: int
    split: str | None
    path: str | None = None
    mask_path: str | None = None
    slice_index: int = -1
    pixels: np.ndarray | None = field(default=None, repr=False)
    mask_pixels: np.ndarray | None = field(default=None, repr=False)
    window: tuple[float, float] | None = None


def _check_exists(record: Case) -> None:
    if not record.image.exists():
        msg = f"{record.where}: image '{record.image}' does not exist; fix the path or drop it."
        raise ManifestError(msg)
    if record.mask is not None and not record.mask.exists():
        msg = f"{record.where}: mask '{record.mask}' does not exist; fix the path or drop the row."
        raise ManifestError(msg)


def _label_from_mask(record: Case, has_anomaly: bool) -> int:
    if record.label is not None and record.label != int(has_anomaly):
        state = "has anomalous pixels" if has_anomaly else "is empty"
        msg = f"{record.where}: label {record.label} but the mask '{record.mask}' {state}; fix the label or mask."
        raise ManifestError(msg)
    return int(has_anomaly)


def _items_2d(record: Case, preset: str) -> list[SliceItem]:
    try:
        with Image.open(record.image) as img:
            size = img.size
        mask_any = False
        if record.mask is not None:
            with Image.open(record.mask) as msk:
                if msk.size != size:
                    msg = (
                        f"{record.where}: mask '{record.mask}' is {msk.size[0]}x{msk.size[1]} but image "
                        f"'{record.image}' is {size[0]}x{size[1]}; masks must have the image's size."
                    )
                    raise ManifestError(msg)
                mask_any = bool(np.any(np.asarray(msk) != 0))
    except OSError as err:
        msg_0 = f"{record.where}: cannot read '{record.image}' or its mask ({err}); fix it."
        raise ManifestError(msg_0) from err
    if record.mask is None:
        if record.label == 1:
            msg = (
                f"{record.where}: label 1 but no mask; the segmentation loss needs the anomaly mask of every "
                "anomalous image, add it in the mask column."
            )
            raise ManifestError(msg)
        label = 0
    else:
        label = _label_from_mask(record, mask_any)
    mask_path = str(record.mask) if record.mask is not None else None
    return [SliceItem(record.case_id, preset, label, record.split, str(record.image), mask_path)]


def _items_3d(record: Case, preset: str | None) -> list[SliceItem]:
    try:
        volume = read_volume(record.image)
        mask_volume = read_volume(record.mask) if record.mask is not None else None
        organ = read_organ_mask(record.organ_mask, volume).mask if record.organ_mask is not None else None
    except AACLIPMedError as err:
        msg = f"{record.where}: {err}"
        raise ManifestError(msg) from err
    if mask_volume is not None and mask_volume.shape != volume.shape:
        msg = (
            f"{record.where}: mask '{record.mask}' has grid {mask_volume.shape} but image '{record.image}' has "
            f"{volume.shape}; resample the label map onto the image grid."
        )
        raise ManifestError(msg)
    if mask_volume is None and record.label == 1:
        msg = f"{record.where}: volume labelled 1 but no mask; give the label map (label > 0 = anomaly)."
        raise ManifestError(msg)
    name = preset or preset_for_modality(volume.modality)
    preset_obj = get_preset(name)
    rule = preset_obj.foreground
    fg_mask = foreground_mask(volume.data, rule, slice_axis=volume.slice_axis)
    bounds = volume_window(volume.data, fg_mask, preset_obj.window)
    fg = volume.with_data(fg_mask.astype(np.float32))
    masks = volume.with_data((mask_volume.data > 0).astype(np.float32)) if mask_volume is not None else None
    other = tuple(a for a in range(3) if a != volume.slice_axis)
    has_organ = np.asarray(organ.any(axis=other) if organ is not None else np.ones(volume.n_slices, bool))
    items = []
    mask_iter = masks.iter_slices() if masks is not None else None
    for k, (pixels, fg_slice) in enumerate(zip(volume.iter_slices(), fg.iter_slices(), strict=True)):
        mask_slice = next(mask_iter) > 0 if mask_iter is not None else np.zeros(pixels.shape, bool)
        if fg_slice.mean() < rule.min_fraction or not has_organ[k]:  # as at inference: organ slices only
            continue
        label = int(mask_slice.any())
        items.append(
            SliceItem(record.case_id, name, label, record.split, None, None, k, pixels, mask_slice, bounds)
        )
    if not items:
        logger.warning("%s: no slice of '%s' has foreground; the case is skipped", record.where, record.image)
    return items


def load_items(records: list[Case], default_preset: str | None) -> list[SliceItem]:
    """Validate the records and expand them into 2D samples (volumes are read and sliced here).

    Args:
        records: From :func:`~aaclip_med.manifest.read_manifest` or
            :func:`~aaclip_med.training.layouts.discover_folder`.
        default_preset: Preset for records without one; None lets volumes follow their modality ("reference"
            for 2D pictures).

    Returns:
        The samples of every split, in record order.

    Raises:
        ManifestError: a missing file, an unreadable file, a mask of another size/grid, a label that contradicts
            its mask, an anomalous image without a mask, or an unknown preset.
    """
    items: list[SliceItem] = []
    for record in records:
        _check_exists(record)
        preset = record.preset or default_preset
        if preset is not None:
            try:
                get_preset(preset)
            except AACLIPMedError as err:
                msg = f"{record.where}: {err}"
                raise ManifestError(msg) from err
        if is_2d_image(record.image):
            items += _items_2d(record, preset or "reference")
        else:
            items += _items_3d(record, preset)
    return items


def build_datasets(
    records: list[Case], default_preset: str | None, require_anomalies: bool = True
) -> tuple[list[SliceItem], list[SliceItem]]:
    """Validate everything and return the training and validation samples (test samples are dropped).

    Args:
        records: The case records.
        default_preset: See :func:`load_items`.
        require_anomalies: Raise when the training split has no anomalous sample (the segmentation loss needs one).

    Returns:
        ``(train_items, val_items)``; ``val_items`` may be empty.

    Raises:
        ManifestError: see :func:`load_items`; also an empty training split or one without anomalies.
    """
    items = load_items(records, default_preset)
    train = [it for it in items if it.split in ("train", None)]
    val = [it for it in items if it.split == "val"]
    if not train:
        msg = (
            f"No training samples: none of the {len(records)} cases has split=train (or all slices lack "
            "foreground); set split=train on the rows to train on."
        )
        raise ManifestError(msg)
    if require_anomalies and not any(it.label for it in train):
        msg = (
            f"The training split ({len(train)} samples) has no anomalous sample with a non-empty mask; AA-CLIP's "
            "segmentation loss needs some: add anomalous images/volumes with masks to split=train."
        )
        raise ManifestError(msg)
    return train, val


class SliceDataset(Dataset[dict[str, object]]):
    """Model-ready samples: ``{"image": (3,S,S) CLIP-normalised, "mask": (1,S,S), "label", "preset", "index"}``.

    Args:
        items: Samples from :func:`build_datasets`.
        image_size: Model input side S.
        augmenter: Training augmentation, or None (validation: normalisation only).
    """

    def __init__(self, items: list[SliceItem], image_size: int, augmenter: Augmenter | None = None) -> None:
        self.items = items
        self.image_size = image_size
        self.augmenter = augmenter
        self.epoch = 0
        self._mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
        self._windows = {name: slice_transform(get_preset(name), image_size) for name in {i.preset for i in items}}

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch`` (call before iterating)."""
        self.epoch = epoch

    def _resize_mask(self, mask: np.ndarray) -> torch.Tensor:
        m = torch.from_numpy(np.ascontiguousarray(mask != 0, dtype=np.float32))[None, None]
        m = F.interpolate(m, size=(self.image_size, self.image_size), mode="nearest")
        return (m[0] != 0).float()

    def _image01(self, item: SliceItem) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.image_size
        if item.pixels is not None:
            x = self._windows[item.preset](item.pixels, item.window)
            image = (x * self._std + self._mean).clamp(0.0, 1.0)
            mask_src = item.mask_pixels if item.mask_pixels is not None else np.zeros(item.pixels.shape, bool)
            return image, self._resize_mask(mask_src)
        with Image.open(str(item.path)) as img:
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        image = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        if item.mask_path is None:
            return image, torch.zeros(1, size, size)
        with Image.open(item.mask_path) as msk:
            mask = np.asarray(msk.convert("L").resize((size, size), Image.Resampling.NEAREST))
        return image, torch.from_numpy(mask != 0).float()[None]

    def __getitem__(self, index: int) -> dict[str, object]:
        item = self.items[index]
        image01, mask = self._image01(item)
        if self.augmenter is not None:
            image, mask = self.augmenter(image01, mask, index=index, epoch=self.epoch)
        else:
            image = (image01 - self._mean) / self._std
        return {"image": image, "mask": mask, "label": item.label, "preset": item.preset, "index": index}
