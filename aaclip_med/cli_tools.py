"""The ``weights`` and ``reference`` command groups of ``aaclip-med`` (typer sub-apps that cli.py adds).

``weights``: list the registered models, import a backbone file for offline use, verify adapters against a model.
``reference``: build a normal-reference memory (:func:`aaclip_med.reference.build.build_reference`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from aaclip_med.cli_options import AdapterOpt, BackboneOpt, SizeOpt, fail, user_errors

__all__ = ["reference_app", "weights_app"]

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
