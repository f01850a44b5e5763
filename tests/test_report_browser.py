"""Render the HTML reports in headless Chromium: images decode, no console errors, a screenshot is produced."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aaclip_med import report

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM = os.environ.get("AACLIP_CHROMIUM") or next(filter(None, map(shutil.which, _CANDIDATES)), None)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium/Chrome binary found (set AACLIP_CHROMIUM)")


def _chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        *args,
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.search(r"CONSOLE|Uncaught|Refused to", line)]


@pytest.fixture
def case_page(tmp_path: Path) -> Path:
    yy, xx = np.mgrid[:64, :64]
    blob = np.exp(-((yy - 30) ** 2 + (xx - 36) ** 2) / 40.0)
    slices = [report.OverlaySlice(k, 100.0 * blob + k, 2.0 + blob, blob > 0.6, 2.5 * k, 3.0) for k in (7, 8, 9)]
    overlays = report.write_overlays(slices, tmp_path / "overlays", untrained=True)
    scores = 2.0 + np.sin(np.linspace(0, 6, 40))
    scored = np.ones(40, dtype=bool)
    scored[:4] = False
    prov = report.provenance({"preset": "mri"}, {"name": "demo", "untrained_backbone": True}, [])
    return report.write_case_html(
        tmp_path / "report.html",
        case_id="demo-case",
        overlays=overlays,
        slice_scores=scores,
        scored=scored,
        threshold=2.8,
        score=float(scores.max()),
        qa={"warnings": ["modality guessed: MR"]},
        provenance=prov,
        metrics={"pixel_auroc": 0.9},
        untrained=True,
    )


def test_case_page_images_decode_without_console_errors(case_page: Path, tmp_path: Path) -> None:
    done = _chromium(case_page, tmp_path / "profile-dom", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r"<body[^>]*>", done.stdout)
    assert body is not None
    assert 'data-images-ok="true"' in body.group(0)
    assert 'data-images-count="3"' in body.group(0)
    assert report.UNTRAINED_BANNER in done.stdout
    assert _console_errors(done.stderr) == []


def test_case_page_screenshot(case_page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "screenshot.png"
    done = _chromium(
        case_page,
        tmp_path / "profile-shot",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        "--hide-scrollbars",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert _console_errors(done.stderr) == []
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (2000, 1200, 3)
    banner = pixels[5:40, 100:1100].reshape(-1, 3).astype(int)
    assert np.mean((banner[:, 0] > 150) & (banner[:, 1] < 80)) > 0.5  # the red untrained banner on top
