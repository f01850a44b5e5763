"""Tests of aaclip_med.report: overlays, sheets, JSON, provenance and the HTML pages (no browser here)."""

from __future__ import annotations

import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from aaclip_med import report
from aaclip_med._files import atomic_path, sha256_file, staged_output
from aaclip_med.errors import ConfigError, GeometryError, UnsupportedFormatError
from aaclip_med.report.run_json import PROVENANCE_PACKAGES


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


def _slice(k: int, size: int = 48) -> report.OverlaySlice:
    yy, xx = np.mgrid[:size, :size]
    blob = np.exp(-((yy - 20) ** 2 + (xx - 28) ** 2) / 18.0)
    image = (40.0 + 200.0 * blob).astype(np.float32)
    heat = (2.0 + 1.5 * blob).astype(np.float32)
    return report.OverlaySlice(k, image, heat, heat > 3.0, -10.0 + 2.5 * k, float(heat.max()))


class _FakeVolume:
    """Duck-typed stand-in for aaclip_med.volume.Volume (display slice = rot90 of the stored slice)."""

    def __init__(self, data: np.ndarray, affine: np.ndarray) -> None:
        self.data, self.affine, self.source = data, affine, "fake.nii.gz"

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def get_slice(self, index: int, axis: int | None = None) -> np.ndarray:
        return np.rot90(np.take(self.data, index, axis=2 if axis is None else axis))

    def with_data(self, data: np.ndarray) -> _FakeVolume:
        return _FakeVolume(data, self.affine)


@pytest.fixture
def case_inputs() -> dict:
    rng = np.random.default_rng(0)
    scores = (2.0 + rng.random(30)).astype(np.float32)
    scored = np.ones(30, dtype=bool)
    scored[:3] = False
    scores[~scored] = 0.0
    scores[10:13] += 1.5
    return {"slice_scores": scores, "scored": scored, "threshold": 3.0, "score": float(scores.max())}


# --- overlays -----------------------------------------------------------------------------------------------


def test_write_overlays_pngs(tmp_path: Path) -> None:
    paths = report.write_overlays([_slice(3), _slice(12)], tmp_path / "ov", window=(0, 255))
    assert [p.name for p in paths] == ["slice_0003.png", "slice_0012.png"]
    for path in paths:
        with Image.open(path) as img:
            img.load()
            assert img.size == (500, 600)
    assert _no_temp_files(tmp_path)


def test_overlay_untrained_caption_is_drawn(tmp_path: Path) -> None:
    def red_pixels(untrained: bool) -> int:
        (path,) = report.write_overlays([_slice(1)], tmp_path / str(untrained), untrained=untrained)
        top = np.asarray(Image.open(path).convert("RGB"))[:45].astype(int)
        return int(((top[..., 0] > 200) & (top[..., 1] < 120)).sum())

    assert red_pixels(True) > 50
    assert red_pixels(False) == 0


def test_overlay_accepts_tuples_and_checks_shapes(tmp_path: Path) -> None:
    image = np.zeros((16, 16))
    (path,) = report.write_overlays([(5, image, None, None, None, None)], tmp_path, size_px=200)
    assert Image.open(path).size == (200, 240)
    with pytest.raises(GeometryError, match="slice 5"):
        report.write_overlays([(5, image, np.zeros((8, 8)))], tmp_path)


def test_window_limits() -> None:
    image = np.arange(101, dtype=np.float32)
    assert report.window_limits(image, (-200, 250)) == (-200.0, 250.0)
    assert report.window_limits(image, "liver_ct") == (-200.0, 250.0)
    lo, hi = report.window_limits(image)  # 1-99 percentiles
    assert (lo, hi) == pytest.approx((1.0, 99.0))
    assert report.window_limits(np.zeros((4, 4))) == (0.0, 1.0)  # flat slice: never a zero-width window
    with pytest.raises(ConfigError):
        report.window_limits(image, 3)


def test_top_slices_skips_unscored() -> None:
    scores = np.array([5.0, 1.0, 3.0, 3.0, 9.0])
    scored = np.array([True, True, True, True, False])
    assert report.top_slices(scores, scored, n=3) == [0, 2, 3]


def test_write_volume_overlays_with_volume_like(tmp_path: Path) -> None:
    data = np.zeros((20, 24, 6), dtype=np.float32)
    data[5:10, 6:12, 2] = 100.0
    heat = data / 50.0 + 1.0
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[2, 3] = -40.0
    result = SimpleNamespace(
        heatmap=heat,
        mask=(heat > 2.5).astype(np.uint8),
        threshold=2.5,
        slice_axis=2,
        preset="ct",
        untrained_backbone=True,
        slice_scores=heat.max(axis=(0, 1)),
        scored=np.array([False, True, True, True, True, False]),
        scored_voxels=None,
        window=None,
    )
    paths = report.write_volume_overlays(_FakeVolume(data, affine), result, tmp_path, n=2)
    assert paths[0].name == "slice_0002.png"
    assert len(paths) == 2
    assert report.slice_position_mm(affine, data.shape, 2, 2) == (pytest.approx(-35.0), "z")


def test_volume_overlay_slices_share_orientation_with_real_volume(tmp_path: Path) -> None:
    from aaclip_med.volume import Volume

    data = np.zeros((12, 10, 5), dtype=np.float32)
    data[2, 7, 3] = 500.0  # an off-centre bright voxel: any flip or transpose would move it
    affine = np.array([[-0.7, 0, 0, 90], [0, -0.7, 0, 100], [0, 0, 3.0, -20], [0, 0, 0, 1]])  # LPS-stored
    volume = Volume(data, affine, "CT", "synthetic.nii.gz", {})
    heat = data / 100.0
    result = SimpleNamespace(  # the fields of inference.VolumeResult (importing it would import torch)
        score=5.0,
        slice_scores=heat.max(axis=(0, 1)),
        scored=np.ones(5, dtype=bool),
        heatmap=heat,
        mask=(heat > 1).astype(np.uint8),
        threshold=1.0,
        slice_axis=volume.slice_axis,
        preset="ct",
        untrained_backbone=False,
        scored_voxels=None,
        window=None,
    )
    (item,) = report.volume_overlay_slices(volume, result, [3])
    peak = np.unravel_index(np.argmax(item.image), item.image.shape)
    assert np.unravel_index(np.argmax(item.heat), item.heat.shape) == peak
    assert item.mask[peak] == 1 and item.mask.sum() == 1
    assert (item.position_mm, item.position_axis) == (pytest.approx(-11.0), "z")
    (path,) = report.write_volume_overlays(volume, result, tmp_path, n=1)
    assert path.name == "slice_0003.png"


# --- sheets and JSON ----------------------------------------------------------------------------------------


def test_write_sheet_columns_and_full_precision(tmp_path: Path) -> None:
    rows = [
        {"case_id": "a", "score": np.float32(0.1), "auroc": 0.123456789012345, "n": np.int64(7), "extra": 1},
        {"case_id": "b", "score": np.float64(2 / 3), "auroc": None, "n": 3},
    ]
    path = report.write_sheet(rows, tmp_path / "cases.csv", columns=["case_id", "score", "auroc", "n"])
    with path.open(newline="") as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == ["case_id", "score", "auroc", "n"]
    assert np.float32(read[0]["score"]) == np.float32(0.1)
    assert float(read[0]["auroc"]) == 0.123456789012345
    assert float(read[1]["score"]) == 2 / 3
    assert read[1]["auroc"] == ""
    assert read[0]["n"] == "7"
    default = report.write_sheet(rows, tmp_path / "all.csv")
    assert default.read_text().splitlines()[0] == "case_id,score,auroc,n,extra"
    assert _no_temp_files(tmp_path)


def test_slice_rows_columns(tmp_path: Path, case_inputs: dict) -> None:
    mask = np.zeros((4, 4, 30), dtype=np.uint8)
    mask[:2, :2, 11] = 1
    rows = report.slice_rows(
        "c1", case_inputs["slice_scores"], case_inputs["scored"], 3.0, mask=mask, slice_axis=2
    )
    path = report.write_sheet(rows, tmp_path / "slices.csv", report.SLICE_COLUMNS)
    with path.open(newline="") as handle:
        read = list(csv.DictReader(handle))
    assert tuple(read[0]) == report.SLICE_COLUMNS
    assert len(read) == 30
    # with a mask, "flagged" means "has a mask voxel": it agrees with the mask even where scores say otherwise
    assert [r["slice"] for r in read if r["flagged"] == "True"] == ["11"]
    assert read[11]["mask_voxels"] == "4"
    no_mask = report.slice_rows("c1", case_inputs["slice_scores"], case_inputs["scored"], 3.0)
    assert [r["slice"] for r in no_mask if r["flagged"]] == [10, 11, 12]  # without one: score > threshold
    assert read[0]["scored"] == "False"
    with pytest.raises(ConfigError, match="slice_axis"):
        report.slice_rows("c1", [1.0], [True], 0.5, mask=mask)


def test_write_xlsx(tmp_path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    path = report.write_xlsx(
        {"cases": [{"case_id": "a", "score": np.float32(0.5)}], "summary": []}, tmp_path / "r.xlsx"
    )
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["cases", "summary"]
    assert [c.value for c in book["cases"][2]] == ["a", 0.5]
    with pytest.raises(ConfigError, match="sheet name"):
        report.write_xlsx({"a/b": []}, tmp_path / "bad.xlsx")


def test_json_round_trip_with_numpy(tmp_path: Path) -> None:
    obj = {
        "f32": np.float32(0.25),
        "i64": np.int64(3),
        "arr": np.arange(3),
        "b": np.bool_(True),
        "nan": float("nan"),
        "path": tmp_path,
        "nested": {1: (np.float64(1.5),)},
    }
    path = report.write_json(obj, tmp_path / "x.json")
    assert json.loads(path.read_text()) == {
        "f32": 0.25,
        "i64": 3,
        "arr": [0, 1, 2],
        "b": True,
        "nan": None,
        "path": str(tmp_path),
        "nested": {"1": [1.5]},
    }
    assert _no_temp_files(tmp_path)


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_staged_output_failure_removes_the_parents_it_created(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    for out in (tmp_path / "new" / "deeper" / "out", tmp_path / "old" / "deeper" / "out"):
        with pytest.raises(RuntimeError), staged_output(out) as tmp:
            (tmp / "half.csv").write_text("partial")
            raise RuntimeError
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["old"]  # the existing folder stays
    with pytest.raises(RuntimeError), staged_output(tmp_path / "new" / "deeper" / "out"):
        (tmp_path / "new" / "busy").mkdir()  # a parent that someone fills meanwhile is kept
        raise RuntimeError
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["new", "new/busy", "old"]
    with staged_output(tmp_path / "ok" / "deeper" / "out") as tmp:  # success: the parents stay, of course
        (tmp / "done.csv").write_text("x")
    assert (tmp_path / "ok" / "deeper" / "out" / "done.csv").is_file()


# --- provenance ---------------------------------------------------------------------------------------------


def test_provenance(tmp_path: Path) -> None:
    series = tmp_path / "series"
    series.mkdir()
    (series / "b.dcm").write_bytes(b"b" * 10)
    (series / "a.dcm").write_bytes(b"a" * 5)
    single = tmp_path / "vol.nii.gz"
    single.write_bytes(b"nifti")
    meta = {"name": "demo", "adapter_sha256": "f" * 64, "untrained_backbone": True}
    prov = report.provenance({"preset": "ct"}, meta, [single, series], {"score": 1.5})
    assert prov["model"]["name"] == "demo"
    assert prov["model"]["weights_sha256"] == "f" * 64
    assert prov["model"]["untrained_backbone"] is True
    assert prov["packages"]["numpy"] == np.__version__
    assert set(PROVENANCE_PACKAGES) == set(prov["packages"])
    file_rec, folder_rec = prov["inputs"]
    assert file_rec["sha256"] == sha256_file(single)
    assert (folder_rec["kind"], folder_rec["n_files"], folder_rec["n_bytes"]) == ("folder", 2, 15)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", prov["created_utc"])
    (series / "a.dcm").write_bytes(b"a" * 6)
    assert report.input_record(series)["sha256"] != folder_rec["sha256"]
    round_trip = json.loads(report.write_json(prov, tmp_path / "run.json").read_text())
    assert round_trip["timings"] == {"score": 1.5}
    with pytest.raises(UnsupportedFormatError, match="missing"):
        report.provenance({}, None, [tmp_path / "missing"])


# --- HTML ---------------------------------------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in {"src", "href"} and value is not None:
                self.refs.append((tag, name, value))


def _refs(html: str) -> list[tuple[str, str, str]]:
    parser = _Links()
    parser.feed(html)
    return parser.refs


def _case_html(tmp_path: Path, case_inputs: dict, untrained: bool) -> str:
    overlays = report.write_overlays([_slice(11), _slice(12)], tmp_path / "overlays", untrained=untrained)
    prov = report.provenance({"preset": "ct"}, {"name": "demo", "weights_sha256": "e" * 64}, [])
    path = report.write_case_html(
        tmp_path / "report.html",
        case_id="<case 1>",
        overlays=overlays,
        qa={"warnings": ["odd spacing"]},
        provenance=prov,
        metrics={"dice": 0.5},
        untrained=untrained,
        **case_inputs,
    )
    return path.read_text()


def test_case_html_is_self_contained(tmp_path: Path, case_inputs: dict) -> None:
    html = _case_html(tmp_path, case_inputs, untrained=False)
    refs = _refs(html)
    assert [tag for tag, _, _ in refs] == ["img", "img"]
    assert all(value.startswith("data:image/png;base64,") for _, _, value in refs)
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", html)
    assert "@import" not in html and "url(" not in html
    for section in ("summary", "top-slices", "slice-scores", "histogram", "metrics", "qa", "provenance"):
        assert f'id="{section}"' in html
    assert "&lt;case 1&gt;" in html and "<case 1>" not in html  # autoescaped
    assert "odd spacing" in html and "e" * 64 in html
    assert "10-12" in html  # flagged slices
    assert report.UNTRAINED_BANNER not in html
    assert _no_temp_files(tmp_path)


def test_case_html_untrained_banner(tmp_path: Path, case_inputs: dict) -> None:
    html = _case_html(tmp_path, case_inputs, untrained=True)
    assert report.UNTRAINED_BANNER in html
    assert 'id="untrained-banner"' in html


def test_cohort_html(tmp_path: Path) -> None:
    case_page = tmp_path / "cases" / "b" / "report.html"
    case_page.parent.mkdir(parents=True)
    case_page.write_text("<html></html>")
    cases = [{"case_id": "a", "score": 1.0}, {"case_id": "b", "score": 3.0}, {"case_id": "c", "score": None}]
    path = report.write_cohort_html(
        tmp_path / "report.html",
        cases=cases,
        summary=[{"metric": "image_auroc", "value": 0.75}],
        failures=[{"case_id": "d", "error": "DicomSeriesError: no series"}],
        untrained=True,
    )
    html = path.read_text()
    assert [value for _, name, value in _refs(html) if name == "href"] == ["cases/b/report.html"]
    assert html.index(">b<") < html.index(">a<") < html.index(">c<")  # sorted by score, missing last
    assert "image_auroc" in html and "DicomSeriesError: no series" in html
    assert report.UNTRAINED_BANNER in html
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", html)


def test_histogram_threshold_label_stays_inside_the_plot() -> None:
    from aaclip_med.report.plots import histogram_svg

    for threshold, anchor in ((2.0, "end"), (0.0, "start")):  # line near the right edge, then the left
        svg = str(histogram_svg(np.linspace(0.0, 1.9, 20), threshold))
        (tag,) = re.findall(r'<text x="([\d.]+)"[^>]*text-anchor="(\w+)"[^>]*>threshold', svg)
        assert tag[1] == anchor
        assert float(tag[0]) < 760 if anchor == "end" else float(tag[0]) > 0


# --- the slice viewer's data --------------------------------------------------------------------------------


def _viewer_case(thick: float = 2.0) -> tuple:
    from aaclip_med.volume import Volume

    data = np.zeros((10, 12, 6), dtype=np.float32)
    data[2, 7, 3] = 500.0  # an off-centre bright voxel: any flip or transpose would move it
    affine = np.array([[-0.7, 0, 0, 90], [0, -0.7, 0, 100], [0, 0, thick, -20], [0, 0, 0, 1]])  # LPS-stored
    volume = Volume(data, affine, "CT", "synthetic.nii.gz", {})
    voxels = np.zeros(data.shape, bool)
    voxels[1:9, 1:11, 1:5] = True
    heat = np.where(voxels, 4.0 + data / 50.0, -5.0).astype(np.float32)  # 4 inside, 14 at the voxel
    heat[5, 5, 2] = -1.0  # below the colour floor (threshold 4 - 4 = 0)
    result = SimpleNamespace(heatmap=heat, mask=(heat > 10).astype(np.uint8), scored_voxels=voxels,
                             scored=np.array([False, True, True, True, True, False]), slice_axis=2,
                             slice_scores=np.array([-5.0, 4.0, 4.0, 14.0, 4.0, -5.0]), threshold=4.0,
                             window=(-160.0, 240.0))  # fmt: skip
    return volume, result


def _inflate(text: str, shape: list[int]) -> np.ndarray:
    import base64
    import zlib

    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.uint8).reshape(shape)


def test_viewer_data_channels_follow_the_display_and_the_fixed_heat_scale() -> None:
    volume, result = _viewer_case()
    reference = volume.data > 0
    data = report.viewer_data(volume, result, reference=reference)
    n, rows, cols = data["shape"]
    assert (n, rows, cols) == (6, 12, 10) and data["factor"] == 1
    names = ("image", "heat", "mask", "reference")
    image, heat, mask, ref = (_inflate(data["channels"][k], data["shape"]) for k in names)
    peak = np.unravel_index(np.argmax(volume.get_slice(3)), (rows, cols))
    assert np.unravel_index(np.argmax(image[3]), (rows, cols)) == peak  # same orientation as the overlays
    assert heat[3][peak] == 255 and mask[3][peak] == 1 and ref[3][peak] == 1 and mask.sum() == ref.sum() == 1
    assert (heat[0] == 0).all() and (heat[5] == 0).all()  # skipped slices: not scored
    assert (heat[2] == 0).sum() == rows * cols - 80  # outside the score region: not scored
    assert (heat[2] == 1).sum() == 1  # the voxel at or below the floor
    assert report.heat_scale(4.0) == tuple(data["heat_scale"]) == (0.0, 8.0)
    assert np.unique(heat[1][heat[1] > 1]).tolist() == [128]  # 4.0 sits in the middle of the scale
    assert data["windows"][0] == {"name": "as the model saw it", "lo": -160.0, "hi": 240.0}
    lo, hi = data["image_range"]
    assert (lo, hi) == (-160.0, 240.0)  # the window the model saw, widened to the 0.5-99.5 % of the volume
    assert data["positions_mm"][3] == pytest.approx(-14.0) and data["axis_name"] == "z"
    assert data["reformat"] and data["scored"][0] is False
    assert len(bytes.fromhex(data["heat_lut"])) == 768


def test_viewer_data_reduces_large_slices_and_refuses_reformats_of_thick_slices() -> None:
    volume, result = _viewer_case(thick=5.0)
    data = report.viewer_data(volume, result, max_px=5)
    assert data["shape"] == [6, 4, 4] and data["factor"] == 3
    assert data["spacing_mm"] == pytest.approx([5.0, 2.1, 2.1])
    heat = _inflate(data["channels"]["heat"], data["shape"])
    assert heat[3].max() == 255  # the hot voxel survives the reduction (max)
    assert data["reformat"]  # 5 mm slices against 2.1 mm pixels: at most 4x
    assert not report.viewer_data(volume, result)["reformat"]  # against 0.7 mm pixels: too thick


def test_case_html_viewer_json_cannot_break_out_of_its_script(tmp_path: Path, case_inputs: dict) -> None:
    volume, result = _viewer_case()
    viewer = report.viewer_data(volume, result)
    viewer["windows"][0]["name"] = "</script><script>alert(1)</script>"
    html = report.write_case_html(tmp_path / "r.html", case_id="c", overlays=[], viewer=viewer,
                                  **case_inputs).read_text()  # fmt: skip
    assert "alert(1)" in html and "</script><script>alert" not in html
    assert 'id="viewer"' in html and 'id="v-ref"' not in html  # no reference mask: no toggle
    assert "default-src 'none'" in html  # the CSP blocks every external load


@pytest.mark.slow
def test_viewer_page_stays_within_the_size_budget(tmp_path: Path) -> None:
    """A 512x512x130 CT (noisy body, noisy heat inside it) fits the 15 MB budget of reports/README.md."""
    from types import SimpleNamespace

    from aaclip_med.volume import Volume

    rng = np.random.default_rng(0)
    shape = (512, 512, 130)
    xx, yy = np.meshgrid(np.arange(512), np.arange(512), indexing="ij")
    body = ((xx - 256) / 230.0) ** 2 + ((yy - 256) / 170.0) ** 2 < 1.0
    data = np.where(body[..., None], 40.0, -1000.0) + rng.normal(0.0, 20.0, shape)
    voxels = np.broadcast_to(body[..., None], shape)
    heat = np.where(voxels, rng.normal(2.0, 2.0, shape), -9.0).astype(np.float32)
    result = SimpleNamespace(heatmap=heat, mask=(heat > 6.0).astype(np.uint8), scored_voxels=voxels,
                             scored=np.ones(130, bool), slice_scores=heat.max(axis=(0, 1)), threshold=4.0,
                             slice_axis=2, window=(-160.0, 240.0))  # fmt: skip
    volume = Volume(data.astype(np.float32), np.diag([0.7, 0.7, 2.5, 1.0]), "CT", "big.nii.gz", {})
    page = report.write_case_html(tmp_path / "big.html", case_id="big", overlays=[],
                                  slice_scores=result.slice_scores,
                                  scored=result.scored, threshold=4.0, score=8.0,
                                  viewer=report.viewer_data(volume, result))  # fmt: skip
    assert page.stat().st_size <= 15 * 2**20


def test_cohort_html_links_are_relative_and_quoted(tmp_path: Path) -> None:
    runs = tmp_path / "batch" / "cases"
    for case_id in ("pat 1", "b#2"):
        (runs / case_id).mkdir(parents=True)
        (runs / case_id / "report.html").write_text("<html></html>")
    pages = {c: runs / c / "report.html" for c in ("pat 1", "b#2")}
    staging = tmp_path / "other" / ".eval.partial"  # written here, renamed to other/eval afterwards
    cases = [{"case_id": "pat 1", "score": 2.0}, {"case_id": "b#2", "score": 1.0}, {"case_id": "c", "score": 0.0}]
    html = report.write_cohort_html(staging / "report.html", cases=cases, case_pages=pages,
                                    link_from=tmp_path / "other" / "eval").read_text()  # fmt: skip
    hrefs = [value for _, name, value in _refs(html) if name == "href"]
    assert hrefs == ["../../batch/cases/pat%201/report.html", "../../batch/cases/b%232/report.html"]
    assert "Case ids link to the case pages." in html
    lone = report.write_cohort_html(tmp_path / "lone.html", cases=[{"case_id": "x", "score": 1.0}]).read_text()
    assert "No case page was found" in lone


def test_score_curve_ticks_are_whole_slices_and_round_values() -> None:
    from aaclip_med.report.plots import nice_ticks, score_curve_svg

    scores = np.array([-0.401, 0.2, 2.29, 1.4] * 10)
    svg = str(score_curve_svg(scores, np.ones(40, bool), 0.943))
    ticks = re.findall(r'<text x="[\d.]+" y="[\d.]+" text-anchor="(end|middle)">(-?[\d.]+)</text>', svg)
    y = [float(v) for anchor, v in ticks if anchor == "end"]
    x = [float(v) for anchor, v in ticks if anchor == "middle"]
    assert y == [-0.5, 0.0, 0.5, 1.0, 1.5, 2.0] and x == [0, 5, 10, 15, 20, 25, 30, 35]
    assert 'data-x0="' in svg and 'data-x1="' in svg  # the viewer's click hooks
    assert nice_ticks(-22.3, -7.1) == [-20.0, -15.0, -10.0] and nice_ticks(0.0, 1.0, 7, integer=True) == [0.0, 1.0]


def test_overlay_colour_bar_is_fixed_in_map_units(tmp_path: Path) -> None:
    """Slices with other heat levels give the same value the same colour: the scale hangs on the threshold."""
    image = np.zeros((32, 32), np.float32)
    heat = np.full((32, 32), 3.0, np.float32)
    hotter = heat + 100.0 * (np.arange(32) == 0)
    paths = report.write_overlays([report.OverlaySlice(0, image, heat), report.OverlaySlice(1, image, hotter)],
                                  tmp_path, threshold=3.0)  # fmt: skip
    a, b = (np.asarray(Image.open(p).convert("RGB")) for p in paths)
    assert (a[300, 250] == b[300, 250]).all()  # the image centre: the same value 3.0, the same colour
    bar = a[500:515, 50:450].astype(int)  # the colour bar band under the image
    assert bar[..., 0].std() > 30  # a gradient
    cyan = (bar[..., 0] < 60) & (bar[..., 1] > 200) & (bar[..., 2] > 200)
    assert cyan.any() and abs(np.flatnonzero(cyan.any(axis=0)).mean() - 200) < 6  # threshold mark at mid-bar
