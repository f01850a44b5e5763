"""The numbered notebooks in pipelines/notebooks run headless (nbclient, the venv's python3 kernel)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "pipelines" / "notebooks").glob("[0-9][0-9]_*.ipynb"))
nbformat = pytest.importorskip("nbformat", reason="needs the 'notebooks' extra")
nbclient = pytest.importorskip("nbclient", reason="needs the 'notebooks' extra")
pytest.importorskip("ipykernel", reason="needs the 'notebooks' extra")


def test_notebooks_are_numbered_and_carry_the_banner() -> None:
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03"]
    for path in NOTEBOOKS:
        first = nbformat.read(path, as_version=4).cells[0]
        assert "demo/untrained model: not clinical accuracy" in first.source.lower(), path.name


@pytest.mark.slow  # three kernels each import torch and score a study (~1-2 min on 2 cores)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path) -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    nb = nbformat.read(path, as_version=4)
    ksm = KernelSpecManager()
    ksm.kernel_dirs.insert(0, str(Path(sys.prefix) / "share" / "jupyter" / "kernels"))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", kernel_spec_manager=ksm,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
