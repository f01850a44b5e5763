"""The ``aaclip-med`` commands beside scoring, which cli.py adds: ``train`` and two command groups (sub-apps).

``train``: both AA-CLIP stages on the user's data (:func:`aaclip_med.training.train`).
``weights``: list the registered models, import a backbone file for offline use, verify adapters against a model.
``reference``: build a normal-reference memory (:func:`aaclip_med.reference.build.build_reference`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from aaclip_med.cli_options import (
    AdapterOpt,
    BackboneOpt,
    DeviceOpt,
    NoProgressOpt,
    PresetOpt,
    SizeOpt,
    check_paths,
    fail,
    heavy_imports,
    train_config,
    user_errors,
)
from aaclip_med.config import TrainConfig

__all__ = ["reference_app", "train", "weights_app"]

weights_app = typer.Typer(help="List models; import and verify weights.")


@weights_app.command("list")
@user_errors
def weights_list() -> None:
    """List the registered models and where their weights come from."""
    from aaclip_med.model.factory import MODEL_REGISTRY

    for name, spec in MODEL_REGISTRY.items():
        typer.echo(f"{name:<20} {spec.arch} (default weights: {spec.default_backbone}); {spec.description}")


@weights_app.command("import")
@user_errors
def weights_import(
    file: Annotated[Path, typer.Argument(help="A CLIP weights file (e.g. ViT-L-14-336px.pt from OpenAI).")],
    model: Annotated[str, typer.Option(help="Model whose backbone the file is for.")] = "aaclip-vitl14-336",
    image_size: Annotated[
        list[int] | None,
        typer.Option(help="Input size to check the file at (repeatable); default: the model's run size (518)."),
    ] = None,
    trust_pickle: Annotated[bool, typer.Option(help="Allow a full-pickle file (it can run code).")] = False,
) -> None:
    """Import backbone weights for offline use.

    Loads the file into the model's backbone at its native size and at the run size (518 for the paper's
    model), then copies it into the offline weights folder ($AACLIP_MED_WEIGHTS_DIR).
    """
    from aaclip_med.model.factory import import_backbone

    dest, digest, sizes = import_backbone(file, model, tuple(image_size or ()), trust_pickle)
    typer.echo(f"imported {dest} (sha256 {digest}); loads into {model} at {', '.join(map(str, sizes))} px")


@weights_app.command("verify")
@user_errors
def weights_verify(
    adapters: Annotated[str, typer.Argument(help="Adapter .safetensors, or a reference checkpoint folder.")],
    model: Annotated[str, typer.Option(help="Model the adapters are for.")] = "aaclip-vitl14-336",
) -> None:
    """Check adapter weights against a model.

    Keys and shapes must fit; prints the checkpoint's metadata.
    """
    from aaclip_med.model.factory import create_model
    from aaclip_med.model.weights import check_adapter_state, read_adapters

    ckpt = read_adapters(adapters)
    expected = {k: v.shape for k, v in create_model(model, backbone_weights="random").adapter_state().items()}
    check_adapter_state(expected, ckpt.state, ckpt.source)
    typer.echo(json.dumps({"source": ckpt.source, "sha256": ckpt.sha256, "metadata": ckpt.metadata}, indent=2))
    typer.echo(f"ok: {len(ckpt.state)} tensors fit {model}")


reference_app = typer.Typer(help="Normal-reference memories: score against a site's own normal studies.")


@reference_app.command("build")
@user_errors
def reference_build(
    inputs: Annotated[
        list[Path], typer.Argument(metavar="INPUTS...", help="Normal volumes, folders, manifests (label 0/masks).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Memory file to write (.safetensors).")],
    preset: Annotated[str, typer.Option(help="Scoring preset (window, foreground, prompts).")],
    model: Annotated[str, typer.Option(help="Model name (see `aaclip-med weights list`).")] = "aaclip-vitl14-336",
    adapter_weights: AdapterOpt = None,
    backbone_weights: BackboneOpt = None,
    image_size: SizeOpt = None,
    max_patches: Annotated[int, typer.Option(min=1, help="Patches kept per level (uniform random).")] = 20000,
    max_slices: Annotated[int | None, typer.Option(min=1, help="Use at most N normal slices (random).")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the slice/patch sample and a random backbone.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16, fp16.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Slices per forward pass.")] = 8,
    mask_rule: Annotated[str, typer.Option(help="Masked sources: lesion-free 'slices' or 'patches'.")] = "slices",
    window: Annotated[
        str, typer.Option(help="Memory window: 'full' foreground range (no clipped lesions) or the 'preset' one.")
    ] = "full",
) -> None:
    """Build a normal-reference memory from normal studies.

    Adapted patch tokens inside the foreground, with the scoring transforms; score with `run --reference OUT`.
    """
    from aaclip_med.model.factory import create_model
    from aaclip_med.reference.build import MASK_RULES, WINDOW_RULES, build_reference, reference_sources

    if mask_rule not in MASK_RULES:  # cheap checks before the model build
        fail(f"--mask-rule {mask_rule!r} is not valid; use {' or '.join(MASK_RULES)}")
    if window not in WINDOW_RULES:
        fail(f"--window {window!r} is not valid; use {' or '.join(WINDOW_RULES)}")
    reference_sources(inputs)
    net = create_model(model, backbone_weights=backbone_weights, adapter_weights=adapter_weights, device=device,
                       precision=precision, image_size=image_size, seed=seed)  # fmt: skip
    memory = build_reference(inputs, out, model=net, preset=preset, max_patches=max_patches, max_slices=max_slices,
                             seed=seed, batch_size=batch_size, mask_rule=mask_rule, window=window)  # fmt: skip
    meta = memory.metadata
    typer.echo(f"memory {out}: {memory.n_patches} of {meta['n_patches_collected']} normal patches per level, "
               f"{meta['n_slices']} slices, {len(meta['sources'])} studies (sha256 {memory.sha256})")  # fmt: skip
    typer.echo(f"use it: aaclip-med run STUDY --model {model} --preset {preset} --reference {out}")


_TRAIN = TrainConfig()  # the defaults the training flags' help shows


@user_errors
def train(
    data: Annotated[Path, typer.Argument(help="Manifest CSV or data folder (BMAD, MVTec/VisA, volumes).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Training run folder.")],
    config: Annotated[
        Path | None, typer.Option(help="Training TOML (TrainConfig keys); the flags given override it.")
    ] = None,
    model: Annotated[str | None, typer.Option(help=f"Model name (default {_TRAIN.model}).")] = None,
    backbone_weights: BackboneOpt = None,
    image_size: SizeOpt = None,
    text_epochs: Annotated[
        int | None, typer.Option(min=0, help=f"Stage 1 epochs, text adapter ({_TRAIN.text_epochs}).")
    ] = None,
    image_epochs: Annotated[
        int | None, typer.Option(min=0, help=f"Stage 2 epochs, image adapter ({_TRAIN.image_epochs}).")
    ] = None,
    text_batch_size: Annotated[
        int | None, typer.Option(min=1, help=f"Stage 1 slices per step ({_TRAIN.text_batch_size}).")
    ] = None,
    image_batch_size: Annotated[
        int | None, typer.Option(min=1, help=f"Stage 2 slices per step ({_TRAIN.image_batch_size}).")
    ] = None,
    text_lr: Annotated[
        float | None, typer.Option(min=0, help=f"Stage 1 learning rate ({_TRAIN.text_lr}).")
    ] = None,
    image_lr: Annotated[
        float | None, typer.Option(min=0, help=f"Stage 2 learning rate ({_TRAIN.image_lr}).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seeds data order, augmentation, random backbone (0).")] = None,
    device: DeviceOpt = None,
    precision: Annotated[str | None, typer.Option(help="auto (default), fp32, bf16, fp16.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in OUT.")] = False,
    preset: PresetOpt = None,
    vv_axis: Annotated[str | None, typer.Option(help="Stage-1 V-V axis: tokens (default), batch (ref.).")] = None,
    threshold_rule: Annotated[
        str | None, typer.Option(help="Threshold on validation: f1 (default), youden or fpr:0.05.")
    ] = None,
    stage1_levels: Annotated[
        str | None, typer.Option(help="Stage-1 loss levels: last (default, reference) or all.")
    ] = None,
    stage1_cls_loss: Annotated[
        bool, typer.Option("--stage1-cls-loss", help="Add the image-level loss to stage 1 (paper Eq. 4).")
    ] = False,
    no_progress: NoProgressOpt = False,
) -> None:
    """Train both AA-CLIP stages on your labelled data.

    Images or volumes; writes OUT/adapters.safetensors.
    """
    from aaclip_med._files import TRAINING_OUTPUTS, check_output_folder

    check_paths(data, config)
    cfg = train_config(config, locals())  # bad settings fail here, before the slow imports
    check_output_folder(out, [data], overwrite=True, flag="--out", ours=TRAINING_OUTPUTS)
    heavy_imports("the training code")
    from aaclip_med.training import train as train_adapters

    path = train_adapters(data, out, cfg, resume=resume, progress=not no_progress)
    typer.echo(f"adapters: {path}")
    typer.echo(f"use them: aaclip-med run STUDY --model {cfg.model} --adapter-weights {path}")
