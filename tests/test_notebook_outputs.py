"""What the committed notebooks show before anyone runs them: nothing of this machine."""

from pathlib import Path

import nbformat
import pytest

from kit.lab.publish import problems, strip_solutions

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_outputs_show_no_path_host_traceback_warning_or_answer(path: Path) -> None:
    assert problems(path) == []


def test_the_check_finds_each_kind_of_problem(tmp_path: Path) -> None:
    from kit.settings import ROOT

    notebook = nbformat.v4.new_notebook()
    texts = [f"file://{ROOT}/x", "SecurityWarning: superuser", "Traceback (most recent call last)"]
    notebook.cells = [nbformat.v4.new_code_cell("x") for _ in texts]
    for cell, text in zip(notebook.cells, texts, strict=True):
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    notebook.cells[0].metadata["tags"] = ["solution"]
    path = tmp_path / "bad.ipynb"
    nbformat.write(notebook, path)
    assert len(problems(path)) == 4
    strip_solutions(notebook)
    nbformat.write(notebook, path)
    assert len(problems(path)) == 2
