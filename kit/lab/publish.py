"""Run the notebooks for committing, and check what their committed outputs show.

    $ make notebooks       # runs every notebook in place, on the broker make picks

Solution cells are saved without their outputs, so that the answer does not sit
under the exercise on GitHub. ``problems`` lists what a committed output must
never show: a path or host name of the machine, a traceback, a warning.
"""

from __future__ import annotations

import platform
import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from kit.settings import ROOT

SOLUTION_TAG = "solution"
TRACEBACK_OR_WARNING = re.compile(r"Traceback \(most recent call last\)|Warning\b|WARNING/")


def strip_solutions(notebook: nbformat.NotebookNode) -> None:
    """Empty the outputs of cells tagged `solution`."""
    for cell in notebook.cells:
        if SOLUTION_TAG in cell.metadata.get("tags", []):
            cell.outputs = []
            cell.execution_count = None


def run(path: Path) -> None:
    """Execute the notebook at `path` from its own folder and save it without solution outputs."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, resources={"metadata": {"path": path.parent}})
    client.execute()
    strip_solutions(notebook)
    nbformat.write(notebook, path)


def output_text(cell: nbformat.NotebookNode) -> str:
    """Everything a code cell's outputs show as text."""
    parts = []
    for output in cell.get("outputs", []):
        parts.append("".join(output.get("text", "")))
        parts.append("".join(output.get("traceback", [])))
        for kind in ("text/plain", "text/html", "text/markdown"):
            parts.append("".join(output.get("data", {}).get(kind, "")))
    return "\n".join(parts)


def problems(path: Path) -> list[str]:
    """What the committed outputs of the notebook at `path` must not show, cell by cell."""
    notebook = nbformat.read(path, as_version=4)
    found = []
    for number, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        text = output_text(cell)
        if SOLUTION_TAG in cell.metadata.get("tags", []) and cell.get("outputs"):
            found.append(f"cell {number}: a solution saved with its output")
        if str(ROOT) in text or "/root/" in text:
            found.append(f"cell {number}: a path of this machine")
        if f"@{platform.node()}" in text:
            found.append(f"cell {number}: this machine's host name")
        if match := TRACEBACK_OR_WARNING.search(text):
            found.append(f"cell {number}: {match.group(0)!r}")
    return found


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"running {name}", flush=True)
        run(Path(name))
