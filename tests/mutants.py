"""The mutation check: remove one guarantee at a time and a named test must fail.

    $ make mutants                       # every mutant, after a baseline run
    $ python tests/mutants.py --list     # the table of mutants, without running
    $ python tests/mutants.py ledger-sent json-only

Each mutant is one or more exact text edits. For each, the repository's files as
they are in the working tree (git's tracked and untracked-but-not-ignored files:
no .venv, no .mailasync, no default_settings.py) are copied into a temporary
folder, the edits are applied there, and the mutant's tests run in the copy with
the venv's pytest. The mutant is killed if a test fails, and survives if they all
pass: a guarantee whose removal no test notices is a guarantee nobody checks.

The tests first run on an unmutated copy and must pass there, or the check means
nothing. An edit whose text is not found exactly once stops the check, since a
mutant that changed nothing would survive, or be killed, for the wrong reason.
The tests need RabbitMQ: a skipped test counts as a failure of the check. Runs
get C_FORCE_ROOT=1: as root, Celery refuses to start a worker that accepts
pickle, which would kill the JSON-only mutant before any pickle is sent.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
TIME_LIMIT = 900.0  # seconds for one pytest run; pytest-timeout stops one test at 300


@dataclass(frozen=True)
class Edit:
    """Replace `find`, which must occur exactly once in `path`, with `replace`."""

    path: str
    find: str
    replace: str


@dataclass(frozen=True)
class Mutant:
    """A guarantee removed by `edits`; at least one of `tests` must then fail."""

    key: str  # what to type on the command line
    guarantee: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]


MUTANTS = (
    # Both pools lose mail under this mutant; one is enough (each run waits 90 s for it).
    Mutant(
        "acks-late",
        "acks late",
        (Edit("kit/guarantees.py", "task_acks_late=True", "task_acks_late=False"),),
        (
            "tests/test_faults.py::test_sigkill_mid_batch_loses_no_mail_and_sends_none_twice[threads]",
        ),
    ),
    Mutant(
        "reject-on-worker-lost",
        "reject on worker lost",
        (
            Edit(
                "kit/guarantees.py",
                "task_reject_on_worker_lost=True",
                "task_reject_on_worker_lost=False",
            ),
        ),
        ("tests/test_guarantees.py::test_prefork_child_killed_alone_is_redelivered",),
    ),
    Mutant(
        "prefetch-1",
        "prefetch 1",
        (
            Edit(
                "kit/guarantees.py", "worker_prefetch_multiplier=1", "worker_prefetch_multiplier=4"
            ),
        ),
        ("tests/test_guarantees.py::test_busy_worker_holds_one_task",),
    ),
    Mutant(
        "ledger-sent",
        "the ledger's sent marks",
        # No mail is ever seen as sent: a redelivery after the send sends again.
        (
            Edit(
                "kit/tracking.py",
                "return self.store.get(SENT_KEY_PREFIX + ensure_bytes(key)) is not None",
                "return False",
            ),
        ),
        ("tests/test_guarantees.py::test_redelivery_after_send_is_skipped",),
    ),
    Mutant(
        "ledger-claim",
        "the ledger's claims",
        # Every claim succeeds, held by another run or not: two runs at once both send.
        (
            Edit(
                "kit/tracking.py",
                "if self._add(name, until):",
                "if self._add(name, until) or True:",
            ),
        ),
        (
            "tests/test_connection_drop.py"
            "::test_every_mail_once_when_rabbitmq_drops_the_workers_connections",
        ),
    ),
    Mutant(
        "tls-context",
        "the TLS context",
        (
            Edit(
                "kit/mailer.py",
                "context = ssl.create_default_context()",
                "context = ssl._create_unverified_context()",
            ),
        ),
        (
            "tests/test_tls.py::test_an_untrusted_server_never_sees_the_login",
            "tests/test_tls.py::test_a_certificate_for_another_name_is_refused",
        ),
    ),
    # Two limits: Flask's MAX_CONTENT_LENGTH for a body with a Content-Length, and
    # read_body's own check for a chunked one, which werkzeug cuts at the limit silently.
    Mutant(
        "size-limit",
        "the request size limit",
        (Edit("app.py", 'app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES', "pass"),),
        ("tests/test_fuzz.py::test_written_list_is_refused_with_a_json_error[huge body]",),
    ),
    Mutant(
        "size-limit-chunked",
        "the request size limit, chunked bodies",
        (
            Edit(
                "kit/web.py",
                "if request.content_length is None and len(raw) >= MAX_REQUEST_BYTES:",
                "if False:",
            ),
        ),
        ("tests/test_fuzz.py::test_the_real_server_refuses_them_too",),
    ),
    Mutant(
        "json-only",
        "JSON only",
        (
            Edit(
                "kit/guarantees.py",
                ' accept_content=["json"]',  # the space: not result_accept_content
                ' accept_content=["json", "pickle"]',
            ),
        ),
        ("tests/test_security.py::test_a_pickled_task_is_refused_and_never_runs",),
    ),
)


@dataclass(frozen=True)
class Run:
    """One pytest run: passed, failed, or neither (error, skip, time limit), and why."""

    outcome: str  # "passed", "failed" or "error"
    reason: str
    seconds: float


def working_tree_files() -> list[str]:
    """The repository's files as git sees them now: tracked, plus untracked and not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    # A tracked file deleted in the working tree is still listed by --cached.
    return sorted({name for name in listed.split("\0") if name and (ROOT / name).is_file()})


def copy_repository(to: Path) -> None:
    for name in working_tree_files():
        target = to / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target, follow_symlinks=False)


def found_once(edit: Edit, text: str) -> None:
    """Stop the check unless the edit's text occurs exactly once in `text`."""
    found = text.count(edit.find)
    if found != 1:
        raise SystemExit(f"mutants: {edit.find!r} occurs {found} times in {edit.path}, not once")


def apply(edit: Edit, copy: Path) -> None:
    """Make the edit in the copy."""
    path = copy / edit.path
    text = path.read_text()
    found_once(edit, text)
    path.write_text(text.replace(edit.find, edit.replace))


def broker_url() -> str:
    """The broker `make test` would use: CELERY_BROKER_URL if set, else RabbitMQ or embedded."""
    sys.path.insert(0, str(ROOT))
    from kit.broker import choose

    url, banner = choose(dict(os.environ))
    if not os.environ.get("CELERY_BROKER_URL"):  # make's recipe has already said which
        print(banner, file=sys.stderr)
    return url


def summary_line(output: str, kind: str) -> str:
    """pytest's first line that starts with `kind` (FAILED, ERROR, SKIPPED, E), or ''."""
    for line in output.splitlines():
        if line.startswith(kind + " "):
            return line
    return ""


def run_tests(copy: Path, tests: tuple[str, ...], broker: str, limit: float) -> Run:
    """Run `tests` in the copy, in a process group of their own, stopped at `limit` seconds."""
    env = {**os.environ, "PYTHONPATH": str(copy), "CELERY_BROKER_URL": broker}
    # As root (CI, containers) Celery refuses to start a worker that accepts pickle:
    # the JSON-only mutant would then be killed by the refusal, not by a pickle run.
    env["C_FORCE_ROOT"] = "1"
    command = [str(PYTHON), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=copy,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        stop(process)
        return Run("error", f"no result in {limit:.0f} s", time.monotonic() - started)
    except BaseException:  # Ctrl-C or SIGTERM here: the run has its own session, so stop it
        stop(process)
        raise
    seconds = time.monotonic() - started
    if process.returncode == 0:
        skipped = summary_line(output, "SKIPPED")
        if skipped:  # a test that did not run proves nothing either way
            return Run("error", skipped, seconds)
        return Run("passed", "", seconds)
    failed = summary_line(output, "FAILED")
    if process.returncode == 1 and failed:
        error = summary_line(output, "E").removeprefix("E").strip()  # the first failure's reason
        return Run("failed", f"{failed.split(' - ')[0]}: {error[:160]}", seconds)
    # A collection or set-up error, a test id that does not exist, an interrupt...
    last = output.strip().splitlines()[-3:] or ["no output"]
    reason = summary_line(output, "ERROR") or " / ".join(last)
    return Run("error", f"pytest exit {process.returncode}: {reason}", seconds)


def stop(process: subprocess.Popen[str]) -> None:
    """Stop a pytest run and its process group: SIGINT first, so fixtures stop their workers."""
    for signum, grace in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        try:
            process.communicate(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_in_copy(edits: tuple[Edit, ...], tests: tuple[str, ...], broker: str, limit: float) -> Run:
    """Copy the repository, apply `edits`, run `tests`, then delete the copy."""
    with tempfile.TemporaryDirectory(prefix="mailasync-mutant-") as folder:
        copy = Path(folder)
        copy_repository(copy)
        for edit in edits:
            apply(edit, copy)
        return run_tests(copy, tests, broker, limit)


def short(test: str) -> str:
    return test.removeprefix("tests/")


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    """Rows of (guarantee, test, result, seconds) in aligned columns."""
    header = ("guarantee", "test", "result", "seconds")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def list_mutants(mutants: list[Mutant]) -> None:
    for mutant in mutants:
        print(f"{mutant.key}: {mutant.guarantee}")
        for edit in mutant.edits:
            print(f"    {edit.path}: {edit.find!r}\n        -> {edit.replace!r}")
        for test in mutant.tests:
            print(f"    must fail: {test}")


def choose_mutants(keys: list[str]) -> list[Mutant]:
    by_key = {mutant.key: mutant for mutant in MUTANTS}
    unknown = [key for key in keys if key not in by_key]
    if unknown:
        raise SystemExit(f"mutants: unknown {', '.join(unknown)}; choose from {', '.join(by_key)}")
    return [by_key[key] for key in keys] if keys else list(MUTANTS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keys", nargs="*", help="run only these mutants (default: all)")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument(
        "--time-limit", type=float, default=TIME_LIMIT, help="seconds for each pytest run"
    )
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the pytest run is stopped
    mutants = choose_mutants(options.keys)
    for edit in (edit for mutant in mutants for edit in mutant.edits):
        found_once(edit, (ROOT / edit.path).read_text())  # before any long run
    if options.list:
        list_mutants(mutants)
        return 0

    broker = broker_url()
    started = time.monotonic()
    tests = tuple(dict.fromkeys(test for mutant in mutants for test in mutant.tests))
    baseline = run_in_copy((), tests, broker, options.time_limit)
    rows = [
        (
            "none (baseline)",
            f"the {len(tests)} tests below",
            baseline.outcome,
            f"{baseline.seconds:.0f}",
        )
    ]
    if baseline.outcome != "passed":
        print_table(rows)
        print(f"\nbaseline: the tests must pass unmutated, and did not: {baseline.reason}")
        return 1

    results: list[str] = []
    reasons: list[str] = []
    for mutant in mutants:
        print(f"mutant {mutant.key}...", file=sys.stderr, flush=True)
        run = run_in_copy(mutant.edits, mutant.tests, broker, options.time_limit)
        result = {"failed": "killed", "passed": "survived"}.get(run.outcome, "error")
        first, *more = [short(test) for test in mutant.tests]
        rows.append((mutant.guarantee, first, result, f"{run.seconds:.0f}"))
        rows.extend(("", test, "", "") for test in more)
        results.append(result)
        reasons.append(f"{mutant.key}: {result}" + (f": {run.reason}" if run.reason else ""))

    print()
    print_table(rows)
    print("\n" + "\n".join(reasons))
    print(f"\ntotal: {time.monotonic() - started:.0f} s")
    return 0 if all(result == "killed" for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
