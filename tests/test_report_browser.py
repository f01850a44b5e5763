"""Render the HTML reports in headless Chromium: images decode, no console errors, a screenshot is produced."""

from __future__ import annotations

import html as html_lib
import json
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


# --- the slice viewer ---------------------------------------------------------------------------------------

# Drives the page like a user: waits for the viewer, moves the slider, toggles the heat, scrolls with the wheel
# and the arrow keys, clicks the score curve; after each step it hashes the viewer canvas. The results go into
# <body data-test="..."> for --dump-dom. Appended to a copy of the page (the product page has no test code).
_DRIVER = """
<script>
(function () {
  function hash() {
    var c = document.getElementById("v-canvas"), copy = document.createElement("canvas");
    copy.width = c.width; copy.height = c.height;
    var cx = copy.getContext("2d", { willReadFrequently: true });
    cx.drawImage(c, 0, 0);
    var d = cx.getImageData(0, 0, c.width, c.height).data;
    var h = 0;
    for (var i = 0; i < d.length; i += 1) { h = (h * 31 + d[i] * (1 + (i % 7))) % 1000000007; }
    return h;
  }
  function fire(el, type) { el.dispatchEvent(new Event(type, { bubbles: true })); }
  function step() {
    var root = document.getElementById("viewer");
    if (root.getAttribute("data-ready") !== "true") { return setTimeout(step, 50); }
    var out = { start: root.getAttribute("data-index"), hashes: {} }, slider = document.getElementById("v-slice");
    out.hashes.start = hash();
    slider.value = "SLIDE_TO"; fire(slider, "input");
    out.after_slider = root.getAttribute("data-index"); out.hashes.slider = hash();
    out.info = document.getElementById("v-info").textContent;
    document.getElementById("v-heat").click();
    out.hashes.heat_off = hash();
    document.getElementById("v-heat").click();
    out.hashes.heat_on = hash();
    var wheel = new WheelEvent("wheel", { deltaY: -100, bubbles: true, cancelable: true });
    document.getElementById("v-canvas").dispatchEvent(wheel);
    out.after_wheel = root.getAttribute("data-index");
    root.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowUp", bubbles: true }));
    out.after_key = root.getAttribute("data-index");
    var svg = document.querySelector("#slice-scores svg"), box = svg.getBoundingClientRect();
    var scale = box.width / svg.viewBox.baseVal.width;
    var x0 = +svg.getAttribute("data-x0"), x1 = +svg.getAttribute("data-x1");
    var x = box.left + scale * (x0 + (x1 - x0) * CLICK_AT / (NSLICES - 1));
    svg.dispatchEvent(new MouseEvent("click", { clientX: x, clientY: box.top + box.height / 2, bubbles: true }));
    out.after_click = root.getAttribute("data-index");
    out.click_info = document.getElementById("v-info").textContent;
    var unscored = document.getElementById("v-slice"); unscored.value = "0"; fire(unscored, "input");
    out.unscored_info = document.getElementById("v-info").textContent;
    document.getElementById("v-view").value = "coronal"; fire(document.getElementById("v-view"), "change");
    out.coronal = root.getAttribute("data-view"); out.hashes.coronal = hash();
    document.getElementById("v-view").value = "axial"; fire(document.getElementById("v-view"), "change");
    slider.value = "SLIDE_TO"; fire(slider, "input");
    document.body.setAttribute("data-test", JSON.stringify(out));
  }
  step();
})();
</script>
"""


@pytest.fixture
def viewer_page(tmp_path: Path) -> Path:
    """A 40-slice volume: a bright lesion on slices 20-25, heat only inside a disc, slices 0-3 not scored."""
    from types import SimpleNamespace

    from aaclip_med.volume import Volume

    n = 40
    zz, yy, xx = np.meshgrid(np.arange(n), np.arange(64), np.arange(64), indexing="ij")
    body = (yy - 32) ** 2 + (xx - 32) ** 2 < 26**2
    lesion = ((yy - 26) ** 2 + (xx - 38) ** 2 < 36) & (zz >= 20) & (zz <= 25)
    data = np.where(body, 40.0, -1000.0) + 80.0 * lesion
    data = np.transpose(data, (2, 1, 0)).astype(np.float32)  # (x, y, z) voxel order, z = slices
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    volume = Volume(data, affine, "CT", "synthetic.nii.gz", {})
    scored = np.arange(n) >= 4
    voxels = np.transpose(body, (2, 1, 0)) & scored[None, None, :]
    heat = np.where(voxels, 2.0 + 4.0 * np.transpose(lesion, (2, 1, 0)), -3.0).astype(np.float32)
    scores = np.where(scored, np.where((np.arange(n) >= 20) & (np.arange(n) <= 25), 6.0, 2.0), -3.0)
    result = SimpleNamespace(heatmap=heat, mask=(heat > 4.0).astype(np.uint8), scored_voxels=voxels, scored=scored,
                             slice_scores=scores, threshold=4.0, slice_axis=2, window=(-160.0, 240.0))  # fmt: skip
    reference = np.roll(np.transpose(lesion, (2, 1, 0)), 4, axis=0)  # the expert's outline, off by 4 voxels
    viewer = report.viewer_data(volume, result, reference=reference)
    overlays = report.write_overlays(
        report.volume_overlay_slices(volume, result, [22]), tmp_path / "overlays", window=result.window,
        threshold=4.0, untrained=True,
    )  # fmt: skip
    return report.write_case_html(tmp_path / "viewer.html", case_id="viewer-case", overlays=overlays,
                                  slice_scores=scores, scored=scored, threshold=4.0, score=6.0,
                                  viewer=viewer, untrained=True)  # fmt: skip


def _driven(page: Path, slide_to: int, click_at: int) -> Path:
    html = page.read_text(encoding="utf-8")
    driver = _DRIVER.replace("SLIDE_TO", str(slide_to)).replace("CLICK_AT", str(click_at))
    driven = page.with_name(f"driven_{slide_to}.html")
    driven.write_text(html.replace("</body>", driver.replace("NSLICES", "40") + "</body>"), encoding="utf-8")
    return driven


def test_viewer_scrolls_toggles_and_follows_the_curve(viewer_page: Path, tmp_path: Path) -> None:
    done = _chromium(_driven(viewer_page, 30, 10), tmp_path / "profile-viewer", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    assert _console_errors(done.stderr) == []
    found = re.search(r'data-test="([^"]*)"', done.stdout)
    assert found is not None, "the driver did not finish: the viewer never became ready"
    out = json.loads(html_lib.unescape(found.group(1)))
    assert out["start"] == "20"  # opens on the highest-scoring slice
    assert out["after_slider"] == "30"
    assert "slice 30 of 39" in out["info"] and "z = 60.0 mm" in out["info"] and "score 2.000" in out["info"]
    hashes = out["hashes"]
    assert hashes["slider"] != hashes["start"]  # slice 30 has no lesion, slice 20 has
    assert hashes["heat_off"] != hashes["slider"]  # the heat toggle changes the picture
    assert hashes["heat_on"] == hashes["slider"]  # and toggling back restores it
    assert (out["after_wheel"], out["after_key"]) == ("31", "32")
    assert out["after_click"] == "10" and "slice 10 of 39" in out["click_info"]
    assert "not scored" in out["unscored_info"]
    assert out["coronal"] == "coronal" and hashes["coronal"] != hashes["slider"]


def test_viewer_screenshot_shows_heat_and_masks(viewer_page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "viewer.png"
    done = _chromium(_driven(viewer_page, 22, 22), tmp_path / "profile-viewer-shot", f"--screenshot={shot}",
                     "--window-size=1200,1100", "--hide-scrollbars")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert _console_errors(done.stderr) == []
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)[350:1000, :650]  # the canvas, not the legend
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert ((r > 200) & (g > 150) & (b < 120)).sum() > 100  # the lesion's heat, top of the colour scale (yellow)
    assert ((r < 60) & (g > 200) & (b > 200)).sum() > 20  # the cyan mask contour
    assert ((r > 80) & (r < 130) & (g > 230) & (b > 80) & (b < 130)).sum() > 20  # the green reference contour
