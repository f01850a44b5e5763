"""The AA-CLIP model: a frozen open_clip CLIP with residual adapters, text anchors and anomaly maps (spec 1-4, 6).

The adapted forward passes loop over open_clip's own ``resblocks`` (reusing its modules) because the adapters
rewrite the residual stream between blocks. Map arithmetic lives in :mod:`aaclip_med.model.maps`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from aaclip_med._version import __version__
from aaclip_med.errors import ConfigError
from aaclip_med.model.adapters import ImageAdapter, build_text_adapter, residual_blend
from aaclip_med.model.backends import Engine, build_engine, check_trainable_backend
from aaclip_med.model.blocks import CPU_CHUNK, Layout, derive_layout, sdpa_block
from aaclip_med.model.guard import NOT_APPLICABLE, PENDING, Int8Fallback, run_int8_guard
from aaclip_med.model.maps import Encoded, concat_encoded, level_anomaly_maps
from aaclip_med.model.prompts import build_prompts
from aaclip_med.model.spec import ModelSpec, check_backbone_match, check_trainable_precision
from aaclip_med.model.surgery import VVAxis, check_vv_axis, vv_block
from aaclip_med.model.weights import AdapterCheckpoint, check_adapter_state, write_adapters
from aaclip_med.presets import ModalityPreset, get_preset

if TYPE_CHECKING:
    from open_clip.model import CLIP

__all__ = [  # Layout, derive_layout, sdpa_block and CPU_CHUNK live in aaclip_med.model.blocks
    "AACLIP",
    "CPU_CHUNK",
    "Layout",
    "SliceOutput",
    "derive_layout",
    "sdpa_block",
]

logger = logging.getLogger(__name__)

class SliceOutput(NamedTuple):
    """Per-slice model output (DESIGN section 0)."""

    score: torch.Tensor  # (B,) max of maps
    maps: torch.Tensor  # (B,H,W) sum over levels of 50*(s_abn - s_nor) + 0.5 after blur and upsampling
    det_score: torch.Tensor  # (B,) (det . T_abn + 1) / 2
    level_maps: torch.Tensor | None  # (L,B,H,W)


class AACLIP(nn.Module):
    """AA-CLIP around an open_clip ``CLIP``; build it with :func:`aaclip_med.model.factory.create_model`.

    Attributes:
        clip: The frozen open_clip backbone.
        spec: The registry entry it was built from.
        layout: Tap and adapter positions.
        text_adapter: Text block adapters plus the final projection (stage 1 parameters).
        image_adapter: Vision block adapters, seg and det projections (stage 2 parameters).
        input_size: Square input size in pixels.
        untrained_backbone: True when the backbone was randomly initialised on purpose.
        threshold: Calibrated threshold from the adapter checkpoint (raw map units), or None.
        threshold_presets: Presets that threshold was calibrated on; empty when unknown.
        preset_thresholds: Thresholds calibrated per preset (checkpoint ``thresholds``); they come first.
    """

    def __init__(
        self,
        clip: CLIP,
        spec: ModelSpec,
        tokenizer: Callable[[list[str]], torch.Tensor],
        input_size: int,
        precision: str,
        backbone_info: dict[str, Any],
    ) -> None:
        super().__init__()
        self.clip: Any = clip.eval().requires_grad_(False)  # open_clip CLIP (untyped)
        self.spec = spec
        self.tokenizer = tokenizer
        self.input_size = input_size
        self.precision = precision
        self.backend = "eager"  # engine of the vision path in score_slices (aaclip_med.model.backends)
        self.attention = "sdpa"  # kernel of the vision blocks' attention core (aaclip_med.model.attention)
        self.attention_choice = "rule"  # how it was chosen (aaclip_med.model.tuning): measured, cached, rule, ...
        self.attention_seconds: dict[str, float] | None = None  # the probe's best seconds per kernel, if any
        self._engine: Engine | None = None  # built on the first scored batch for backends other than eager
        self.vision_weights_released = False  # True once an OpenVINO engine holds the only copy
        self.int8_guard: dict[str, Any] | str = NOT_APPLICABLE  # PENDING: auto-int8 decided on the first call
        self.int8_fallback: Int8Fallback | None = None  # what a failed guard scores in instead of fp32 (AMX: bf16)
        self.int8_engine: str | None = None  # quantised engine of the int8 layers (aaclip_med.model.quantize)
        self.precision_choice = "rule"  # how auto chose: rule, asked, env, measured or cached (precision_probe)
        self.precision_seconds: dict[str, float] | None = None  # the AMX probe's block seconds per precision
        self.backbone_info = backbone_info
        self.untrained_backbone: bool = backbone_info["source"] == "random"
        self.threshold: float | None = None
        self.threshold_presets: tuple[str, ...] = ()  # presets the threshold was calibrated on (empty: any)
        self.preset_thresholds: dict[str, float] = {}  # per-preset thresholds ("thresholds"), before the above
        self.adapter_info: dict[str, Any] = {"source": None}
        self.lam_text, self.lam_image = spec.lam_text, spec.lam_image
        visual = self.clip.visual
        width, text_width = visual.transformer.width, self.clip.transformer.width
        embed_dim = visual.proj.shape[1]
        self.layout = derive_layout(len(visual.transformer.resblocks), len(self.clip.transformer.resblocks))
        self.image_adapter = ImageAdapter(
            width, embed_dim, self.layout.image_adapt_until, len(self.layout.taps), spec.relu
        )
        self.text_adapter = build_text_adapter(text_width, embed_dim, self.layout.text_adapt_until)
        self._anchor_cache: dict[tuple[Any, ...], torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        weight: torch.Tensor = self.clip.visual.conv1.weight
        return weight.device

    def train(self, mode: bool = True) -> AACLIP:
        """Set adapter training mode; the backbone always stays in eval mode (patch dropout off, as reference)."""
        super().train(mode)
        self.clip.eval()
        return self

    def trainable_parameters(self, stage: int) -> list[nn.Parameter]:
        """Parameters optimised in ``stage`` 1 (text adapter) or 2 (image adapter)."""
        if stage not in (1, 2):
            msg = f"stage={stage} is not a training stage; use 1 (text adapter) or 2 (image adapter)."
            raise ConfigError(msg)
        check_trainable_precision(self.precision)
        check_trainable_backend(self.backend)
        if self.int8_guard == PENDING:  # a trained model never becomes int8 (precision auto -> fp32 here)
            logger.info("precision auto: the model is being trained, so it stays fp32 (no int8 guard)")
            self.int8_guard, self.int8_fallback = NOT_APPLICABLE, None
        return list((self.text_adapter if stage == 1 else self.image_adapter).parameters())

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        if dtype is None and self.device.type == "cuda":
            # fp32 means fp32: cuDNN's default TF32 patch-embedding convolution moved the ViT-L maps at 518 by
            # 1.7e-4 from the reference on an H100 (5e-6 without TF32).
            cudnn = torch.backends.cudnn
            with cudnn.flags(cudnn.enabled, cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False):
                yield
        elif dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=dtype):
                yield

    # ---- text -------------------------------------------------------------------------------------------------
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Adapted text encoder (spec 2.3): adapters after the first blocks, EOT token, adapter projection."""
        clip = self.clip
        x = clip.token_embedding(tokens) + clip.positional_embedding
        for i, block in enumerate(clip.transformer.resblocks):
            x = block(x, attn_mask=clip.attn_mask)
            if i < self.layout.text_adapt_until:
                x = residual_blend(x, self.text_adapter[i](x), self.lam_text)
        x = clip.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return self.text_adapter[-1](x)  # type: ignore[no-any-return]

    def anchors_from_prompts(self, normal: Sequence[str], abnormal: Sequence[str]) -> torch.Tensor:
        """Text anchors (spec 3) with gradient: (D,2), column 0 normal, 1 abnormal, unit columns."""
        tokens = self.tokenizer([*normal, *abnormal]).to(self.device)
        emb = F.normalize(self.encode_text(tokens).float(), dim=-1)
        anchors = [F.normalize(part.mean(0), dim=-1) for part in (emb[: len(normal)], emb[len(normal) :])]
        return torch.stack(anchors, dim=1)

    def text_anchors(self, preset: str | ModalityPreset) -> torch.Tensor:
        """Anchors for a preset's prompts, cached by the resolved sentences and the text-adapter versions."""
        normal, abnormal = build_prompts(get_preset(preset).prompts)
        versions = tuple(p._version for p in self.text_adapter.parameters())  # bumped by optimiser steps and loads
        key = (tuple(normal), tuple(abnormal), self.device, self.precision, versions)
        if key not in self._anchor_cache:
            with torch.no_grad(), self._autocast():
                self._anchor_cache[key] = self.anchors_from_prompts(normal, abnormal).float()
        return self._anchor_cache[key]

    # ---- vision -----------------------------------------------------------------------------------------------
    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        """Patch grid (rows, cols) for an input batch."""
        patch = self.clip.visual.patch_size
        return x.shape[-2] // patch[0], x.shape[-1] // patch[1]

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        visual = self.clip.visual
        x = visual.conv1(x).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        return visual.ln_pre(visual.patch_dropout(x))  # type: ignore[no-any-return]

    def vision_taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Adapted residual stream (CLS first, before ``ln_post``) after each tap block: list of (B,N+1,W)."""
        x = self._embed(x)
        taps = []
        for i, block in enumerate(self.clip.visual.transformer.resblocks):
            x = sdpa_block(block, x, self.attention)
            if i < self.layout.image_adapt_until:
                x = residual_blend(x, self.image_adapter.layer_adapters[i](x), self.lam_image)
            if i + 1 in self.layout.taps:
                taps.append(x)
        return taps

    def encode_levels(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Adapted vision features (spec 2.4): per-level normalised seg tokens (B,N,D) and the det token (B,D).

        Without gradient on CPU, runs at most ``CPU_CHUNK`` images per pass: a ViT-L block at 8 images is ~1.5x
        slower per image than at 1-2, as activations leave the cache (benchmarks/README.md).
        """
        if x.device.type == "cpu" and not torch.is_grad_enabled() and len(x) > CPU_CHUNK:
            return concat_encoded([self.encode_levels(chunk) for chunk in torch.split(x, CPU_CHUNK)])
        ln_post = self.clip.visual.ln_post
        tokens = [ln_post(t[:, 1:]) for t in self.vision_taps(x)]
        seg = [F.normalize(proj(t), dim=-1) for proj, t in zip(self.image_adapter.seg_proj, tokens, strict=True)]
        det = F.normalize(self.image_adapter.det_proj(tokens[-1]), dim=-1).mean(dim=1)
        return seg, det

    def surgery_tokens(self, x: torch.Tensor, vv_axis: VVAxis = "tokens") -> list[torch.Tensor]:
        """Frozen stage-1 residual stream (no adapters; V-V attention from the first tap): list of (B,N+1,W).

        Raises:
            ConfigError: the model is ``int8`` (the stage-1 path is for training and needs the fp32 weights).
        """
        check_trainable_precision(self.precision)
        check_trainable_backend(self.backend)
        vv_axis = check_vv_axis(vv_axis)
        x = self._embed(x)
        taps = []
        for i, block in enumerate(self.clip.visual.transformer.resblocks):
            x = vv_block(block, x, vv_axis) if i + 1 >= self.layout.surgery_from else block(x)
            if i + 1 in self.layout.taps:
                taps.append(x)
        return taps

    def surgery_features(self, x: torch.Tensor, vv_axis: VVAxis = "tokens") -> list[torch.Tensor]:
        """Stage-1 patch features (spec 1): ``normalize(ln_post(t) @ proj) + normalize(encode_image(x))``.

        The sum is not re-normalised. Computed without gradient (the backbone is frozen).
        """
        visual = self.clip.visual
        with torch.no_grad():
            glob = F.normalize(self.clip.encode_image(x), dim=-1)[:, None]
            return [
                F.normalize(visual.ln_post(t[:, 1:]) @ visual.proj, dim=-1) + glob
                for t in self.surgery_tokens(x, vv_axis)
            ]

    def score_slices(
        self, x: torch.Tensor, preset: str | ModalityPreset = "reference", return_levels: bool = True
    ) -> SliceOutput:
        """Anomaly maps and scores for CLIP-normalised slices (spec 6; DESIGN section 0).

        Args:
            x: (B,3,H,W) CLIP-normalised images, H and W multiples of the patch size.
            preset: Preset name or object: prompts and blur.
            return_levels: Also return the per-level maps.

        Returns:
            :class:`SliceOutput` with float32 tensors on the model's device.
        """
        preset = get_preset(preset)
        with torch.inference_mode():
            x = x.to(self.device, torch.float32)
            seg, det = self.encode(x, preset)  # first: a guarded model settles its precision, the anchors' too
        anchors = self.text_anchors(preset)  # outside inference mode: cached for training too
        with torch.inference_mode():
            levels = level_anomaly_maps(
                seg, anchors, self.grid(x), (x.shape[-2], x.shape[-1]), preset.blur_kernel, preset.blur_sigma
            )
            maps = levels.sum(0)
            det_score = (det.float() @ anchors[:, 1] + 1) / 2
            return SliceOutput(maps.flatten(1).amax(1), maps, det_score, levels if return_levels else None)

    def encode(self, x: torch.Tensor, preset: str | ModalityPreset = "reference") -> Encoded:
        """The one vision path of inference: :meth:`encode_levels` of float32 images through the model's backend.

        Used by :meth:`score_slices` and the normal-reference code. On a guarded model (``precision="auto"`` picked
        int8) the first call runs the int8 accuracy guard on its first ``CPU_CHUNK`` images with ``preset``'s
        prompts and blur (:mod:`aaclip_med.model.guard`).
        """
        if self.int8_guard != PENDING or x.device.type != "cpu":  # int8 (and so its guard) is CPU only
            return self._encode(x)
        head = run_int8_guard(self, x[:CPU_CHUNK], get_preset(preset))
        return head if len(x) <= CPU_CHUNK else concat_encoded([head, self._encode(x[CPU_CHUNK:])])

    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``encode_levels`` through the model's backend (eager: autocast at the model's precision)."""
        if self.backend == "eager":
            with self._autocast():
                return self.encode_levels(x)
        if self._engine is None:
            with torch.inference_mode(False), torch.no_grad():  # conversion/tracing needs ordinary tensors
                self._engine = build_engine(self)
        return self._engine(x)

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Adapter tensors under checkpoint keys ``text_adapter.*`` / ``image_adapter.*``."""
        state = {f"text_adapter.{k}": v for k, v in self.text_adapter.state_dict().items()}
        state.update({f"image_adapter.{k}": v for k, v in self.image_adapter.state_dict().items()})
        return state

    def metadata(self) -> dict[str, Any]:
        """Provenance for ``run.json`` and checkpoint metadata."""
        return {
            "model": self.spec.name,
            "backbone": dict(self.backbone_info),
            "backbone_status": "untrained backbone" if self.untrained_backbone else "pretrained backbone",
            "untrained_backbone": self.untrained_backbone,
            "adapter_sha256": self.adapter_info.get("sha256"),
            "input_size": self.input_size,
            "taps": list(self.layout.taps),
            "image_adapt_until": self.layout.image_adapt_until,
            "text_adapt_until": self.layout.text_adapt_until,
            "lam_text": self.lam_text,
            "lam_image": self.lam_image,
            "relu": self.spec.relu,
            "quick_gelu": self.spec.quick_gelu,
            "precision": self.precision,
            "precision_choice": self.precision_choice,
            "precision_seconds": None if self.precision_seconds is None else dict(self.precision_seconds),
            "int8_engine": self.int8_engine,
            "int8_guard": dict(self.int8_guard) if isinstance(self.int8_guard, dict) else self.int8_guard,
            "backend": self.backend,
            "attention": self.attention,
            "attention_choice": self.attention_choice,
            "attention_seconds": None if self.attention_seconds is None else dict(self.attention_seconds),
            "adapters": dict(self.adapter_info),
            "threshold": self.threshold,
            "aaclip_med_version": __version__,
        }

    def save_adapters(self, path: str, metadata: dict[str, Any] | None = None) -> str:
        """Save the adapters to ``.safetensors`` with the model metadata plus ``metadata`` (prompts, threshold...).

        Returns:
            The written path.
        """
        # how this run computes, not what was trained
        runtime = ("adapters", "precision", "precision_choice", "precision_seconds", "int8_engine", "int8_guard",
                   "backend", "attention", "attention_choice", "attention_seconds")  # fmt: skip
        meta = {k: v for k, v in self.metadata().items() if k not in runtime}
        meta.update(metadata or {})
        return str(write_adapters(path, self.adapter_state(), meta))

    def load_adapters(self, ckpt: AdapterCheckpoint) -> None:
        """Load a checkpoint read by :func:`aaclip_med.model.weights.read_adapters` after checking it fits.

        Raises:
            WeightsError: missing/unexpected keys, wrong shapes, or a different backbone than it was trained on.
        """
        if ckpt.metadata is not None:  # first: "trained for another model" says more than a list of keys
            check_backbone_match(ckpt.metadata, self.backbone_info, ckpt.source)
        check_adapter_state({k: v.shape for k, v in self.adapter_state().items()}, ckpt.state, ckpt.source)
        if self.vision_weights_released:
            msg = (
                f"{ckpt.source}: this model's OpenVINO engine already holds the only copy of the vision weights, "
                "so new adapters cannot be compiled in; build the model with these adapter_weights instead."
            )
            raise ConfigError(msg)
        if ckpt.metadata is not None:
            self.threshold = ckpt.metadata.get("threshold")
            self.threshold_presets = tuple(ckpt.metadata.get("presets") or ())
            self.preset_thresholds = {str(k): float(v) for k, v in (ckpt.metadata.get("thresholds") or {}).items()}
        else:
            logger.info("%s has no metadata (reference checkpoint): backbone identity not checked", ckpt.source)
        with torch.no_grad():
            for key, value in self.adapter_state().items():
                value.copy_(ckpt.state[key])
        self.adapter_info = {"source": ckpt.source, "sha256": ckpt.sha256}
        self._anchor_cache.clear()
        self._engine = None  # an engine holds a converted copy of the old adapters: rebuild on the next batch
