"""Notebook 03 run end to end in JupyterLab, in a real browser (Debian's chromium).

The test starts JupyterLab with `make lab`'s command line, opens notebook 03 in
chromium (driven by Playwright, with its executable path set to the system's
chromium: Playwright's own browser download cannot work here), runs all cells
from the Run menu, and checks in the page that the chart rendered and no cell
raised. The screenshot lands in test-artifacts/browser-notebook03.png.

JupyterLab serves a copy of the notebook from a temporary folder, so the
committed notebook is never saved over; PYTHONPATH lets the copy import the
kit's modules as it does from notebooks/.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import requests

from kit.processes import Background, free_port

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "03_flask_and_requests.ipynb"
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
SCREENSHOT = ROOT / "test-artifacts" / "browser-notebook03.png"
BROKEN = "broken.ipynb"
# Without the networking flags chromium tries to reach outside hosts, which fails here.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
RUN_TIMEOUT_S = 180
# JupyterLab renders a cell's exception as stderr text holding its traceback.
STDERR_OUTPUT = '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]'
# The status bar says "Python 3 (ipykernel) | Idle" once the kernel is up and waiting;
# the toolbar's indicator already says idle while the kernel is still starting.
KERNEL_IDLE = """() => (document.querySelector(".jp-StatusBar-Widget")?.textContent ?? "")
    .includes("| Idle")"""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no chromium at {CHROMIUM}: the browser test needs Debian's chromium "
        "(apt-get install chromium chromium-driver; .ci/run installs it)",
    ),
]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_broken_notebook(path: Path) -> None:
    """A chart, then a cell that raises: what the test must catch."""
    cells = [
        "import matplotlib.pyplot as plt\n\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()",
        "1 / 0",
        "print('never reached')",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, path)


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    """`make lab`'s JupyterLab on a free port, serving a copy of notebook 03."""
    tmp_path = tmp_path_factory.mktemp("jupyterlab")
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    write_broken_notebook(root / BROKEN)
    # All cells stay in the page (no windowing), so every prompt and output can be read;
    # no news or update checks (they would reach outside hosts).
    for plugin, values in {
        "notebook-extension/tracker": {"windowingMode": "none"},
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        path = tmp_path / "lab-settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    argv = [
        str(Path(sys.executable).parent / "jupyter"),
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        *(["--allow-root"] if os.geteuid() == 0 else []),  # CI machines run as root
    ]
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        # A developer's own Jupyter configuration and workspaces stay out of the test.
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
    }
    server = Background("jupyterlab", argv, env, port=port)
    server.token = token  # type: ignore[attr-defined]
    server.start().wait_for_port(timeout=90)
    yield server
    try:  # shut the kernels down through Jupyter, then stop its process group
        requests.post(
            f"{server.url}/api/shutdown", headers={"Authorization": f"token {token}"}, timeout=10
        )
        server.process.wait(20)  # type: ignore[union-attr]
    except Exception:
        pass
    server.stop()


PROMPTS = ".jp-Notebook .jp-CodeCell .jp-InputArea-prompt"
# True once nothing waits as [*] and either every code cell has a number or a cell raised
# (Run All stops at the first error).
RUN_FINISHED = """() => {
    const prompts = [...document.querySelectorAll(PROMPTS)].map(p => p.textContent);
    const raised = [...document.querySelectorAll(STDERR_OUTPUT)]
        .some(e => e.textContent.includes("Traceback"));
    return prompts.length > 0 && !prompts.some(p => p.includes('*'))
        && (raised || prompts.every(p => /\\[\\d+\\]/.test(p)));
}""".replace("PROMPTS", json.dumps(PROMPTS)).replace("STDERR_OUTPUT", json.dumps(STDERR_OUTPUT))


@dataclass
class Run:
    prompts: list[str]
    tracebacks: list[str]
    image_sizes: list[tuple[int, int]]
    seconds: float


def run_in_chromium(jupyterlab: Background, name: str, profile: Path, screenshot: Path) -> Run:
    """Open notebook `name` in JupyterLab in chromium, Run All Cells, read the page."""
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    screenshot.parent.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            user_data_dir=str(profile),  # fresh, thrown away afterwards
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = browser.new_page()
            token = jupyterlab.token  # type: ignore[attr-defined]
            # A workspace of its own, reset: only this notebook opens, no tab restored.
            workspace = Path(name).stem
            address = f"{jupyterlab.url}/lab/workspaces/{workspace}/tree/{name}"
            page.goto(f"{address}?reset&token={token}", timeout=60_000)
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
            page.wait_for_function(KERNEL_IDLE, timeout=60_000)
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            try:
                page.wait_for_function(RUN_FINISHED, timeout=RUN_TIMEOUT_S * 1000)
                page.wait_for_function(KERNEL_IDLE, timeout=30_000)
            finally:
                page.screenshot(path=str(screenshot))
            charts = page.locator(".jp-Notebook .jp-RenderedImage img")
            if charts.count():
                charts.first.scroll_into_view_if_needed()
                page.screenshot(path=str(screenshot))
            return Run(
                prompts=page.locator(PROMPTS).all_inner_texts(),
                tracebacks=[
                    text
                    for text in page.locator(STDERR_OUTPUT).all_inner_texts()
                    if "Traceback" in text
                ],
                image_sizes=[
                    tuple(img.evaluate("img => [img.naturalWidth, img.naturalHeight]"))
                    for img in charts.all()
                ],
                seconds=time.monotonic() - started,
            )
        finally:
            browser.close()


def test_notebook_03_runs_in_jupyterlab_in_chromium(jupyterlab, tmp_path: Path) -> None:
    committed = digest(NOTEBOOK)
    run = run_in_chromium(jupyterlab, NOTEBOOK.name, tmp_path / "profile", SCREENSHOT)
    print(f"notebook 03 ran in JupyterLab in chromium: {run.seconds:.1f} s; {SCREENSHOT}")

    assert not run.tracebacks, "a cell raised:\n" + "\n---\n".join(run.tracebacks)
    assert len(run.prompts) >= 10, run.prompts
    assert all(p.strip("[]: ").isdigit() for p in run.prompts), run.prompts  # all cells ran
    assert run.image_sizes, "no chart in the page"
    width, height = run.image_sizes[0]
    assert width > 100 and height > 100, run.image_sizes  # a PNG that decoded, not a stub
    assert digest(NOTEBOOK) == committed, "the committed notebook was modified"


def test_a_cell_that_raises_is_caught(jupyterlab, tmp_path: Path) -> None:
    """The check above is real: a notebook whose second cell raises fails it."""
    screenshot = tmp_path / "broken.png"
    run = run_in_chromium(jupyterlab, BROKEN, tmp_path / "profile", screenshot)
    assert len(run.tracebacks) == 1 and "ZeroDivisionError" in run.tracebacks[0], run.tracebacks
    assert run.prompts[-1].strip("[]: ") == "", run.prompts  # Run All stopped at the error
    assert run.image_sizes  # the chart before it did render
