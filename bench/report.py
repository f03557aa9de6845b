"""Write the results: results.json, a Markdown table (README.md) and PNG charts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGETS = {
    "send_over_noop_p50": 1.3,
    "sync_over_send_p50": 1000.0,
    "enqueue_per_second": 3000.0,
    "drain_over_ideal": 1.3,
}
RECOMMENDED = "celery -A mailasync worker --loglevel=INFO --pool=gevent --concurrency=500"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """One row per figure the benchmark has a target for: (figure, measured, target)."""
    rows = []
    if "response" in results:
        figs = list(results["response"]["results"].values())

        def listed(key: str, digits: int) -> str:
            return "; ".join(
                f"{f['server']}, {f['clients']} client(s): {f[key]:.{digits}f}" for f in figs
            )

        def met_with(key: str, ok: Callable[[float], bool]) -> str:
            """'met with <servers>' for the servers that meet it at every concurrency."""
            names = dict.fromkeys(f["server"] for f in figs)
            met = [name for name in names if all(ok(f[key]) for f in figs if f["server"] == name)]
            return f"met with {', '.join(met)}" if met else verdict(False)

        send_target = TARGETS["send_over_noop_p50"]
        sync_target = TARGETS["sync_over_send_p50"]
        rows.append(
            (
                "/send p50 ÷ /noop p50",
                listed("send_over_noop_p50", 2),
                f"≤ {send_target:g}: {met_with('send_over_noop_p50', lambda x: x <= send_target)}",
            )
        )
        rows.append(
            (
                "one bare publish: /publish p50 ÷ /noop p50",
                listed("publish_over_noop_p50", 2),
                "the floor",
            )
        )
        rows.append(
            (
                "/send-sync p50 ÷ /send p50",
                listed("sync_over_send_p50", 0),
                f"≥ {sync_target:g}: {met_with('sync_over_send_p50', lambda x: x >= sync_target)}",
            )
        )
    if "enqueue" in results:
        kit = results["enqueue"]["per_second"]["kit"]["median"]
        target = TARGETS["enqueue_per_second"]
        rows.append(
            ("sendMail.delay() per second", f"{kit:.0f}", f"≥ {target:g}: {verdict(kit >= target)}")
        )
    if "drain" in results:
        io = [d for d in results["drain"]["runs"] if d["pool"] != "prefork"]
        if io:
            measured = "; ".join(
                f"{d['pool']} at C={d['concurrency']}: {d['over_ideal']:.2f}" for d in io
            )
            best, target = min(d["over_ideal"] for d in io), TARGETS["drain_over_ideal"]
            rows.append(
                (
                    "drain ÷ ideal, I/O pools",
                    measured,
                    f"≤ {target:g} for the best: {verdict(best <= target)}",
                )
            )
    if "scale" in results:
        speedup = results["scale"]["speedup"]
        measured = "; ".join(
            f"{count} workers: {x:.2f}" for count, x in speedup.items() if count != "1"
        )
        rows.append(("scale out: throughput ÷ one worker's", measured, "reported"))
    return rows


def targets_markdown(results: dict[str, Any]) -> str:
    """The targets as a Markdown table (for the results page and notebook 05)."""
    lines = ["| figure | measured | target |", "|---|---|---|"]
    lines += [
        f"| {figure} | {measured} | {target} |" for figure, measured, target in targets(results)
    ]
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """The results as the Markdown page bench/results/README.md."""
    m = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m bench`); see bench/README.md for what each "
        "figure means and what the benchmark found. Figures are ratios taken side by side in "
        "one run: absolute times on a shared machine vary.",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), Python {m['python']}, "
        f"RabbitMQ {m['rabbitmq']}, load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + f". Run: `{results['command']}` at {results['date']}.",
        "",
        "## Targets",
        "",
        targets_markdown(results),
        "",
    ]
    if "response" in results:
        r = results["response"]
        lines += [
            "## 1. Response time",
            "",
            f"Client: {r['load_generator']}. WORK_SECONDS={r['work_seconds']}. Servers, "
            "each running every endpoint: "
            + "; ".join(f"{name}: {text}" for name, text in r["servers"].items())
            + ".",
            "",
            "| server | clients | endpoint | requests | p50 ms | p95 ms | p99 ms |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for fig in r["results"].values():
            for name, s in fig["endpoints"].items():
                lines.append(
                    f"| {fig['server']} | {fig['clients']} | {name} | {s['n']} | "
                    f"{ms(s['p50'])} | {ms(s['p95'])} | {ms(s['p99'])} |"
                )
        lines += [
            "",
            "| server | clients | /send p50 / /noop p50 (target ≤ 1.3) | "
            "/publish p50 / /noop p50 (the floor) | /send p50 / /publish p50 | "
            "/send-sync p50 / /send p50 (target ≥ 1000) |",
            "|---|---:|---|---:|---:|---|",
        ]
        for fig in r["results"].values():
            a, b = fig["send_over_noop_p50"], fig["sync_over_send_p50"]
            lines.append(
                f"| {fig['server']} | {fig['clients']} | "
                f"{a:.2f} ({verdict(a <= TARGETS['send_over_noop_p50'])}) | "
                f"{fig['publish_over_noop_p50']:.2f} | {fig['send_over_publish_p50']:.2f} | "
                f"{b:.0f} ({verdict(b >= TARGETS['sync_over_send_p50'])}) |"
            )
        lines.append("")
        lines += in_process_table(r["in_process"])
    if "enqueue" in results:
        e = results["enqueue"]
        lines += [
            "## 2. Enqueue throughput (one producer, sendMail.delay())",
            "",
            f"{e['rounds']} alternating rounds of {e['n_per_round']} calls each.",
            "",
            "| way of publishing | calls/s median (min–max) | ms per call | cost vs kit |",
            "|---|---|---:|---:|",
        ]
        for name, s in e["per_second"].items():
            cost = e["per_second"]["kit"]["median"] / s["median"]
            lines.append(
                f"| {name} | {s['median']:.0f} ({s['min']:.0f}–{s['max']:.0f}) | "
                f"{e['ms_per_call'][name]:.3f} | {cost:.2f}× |"
            )
        kit = e["per_second"]["kit"]["median"]
        lines += [
            "",
            f"Target ≥ 3000/s: {kit:.0f}/s, {verdict(kit >= TARGETS['enqueue_per_second'])}.",
            "",
        ]
    if "drain" in results:
        lines += [
            "## 3. Drain into the local inbox",
            "",
            "Wall time from the first publish to the last mail stored; ideal = "
            "ceil(N / C) × WORK_SECONDS.",
            "",
            "| pool | concurrency | N | wall s | ideal s | wall / ideal | mails/s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for d in results["drain"]["runs"]:
            lines.append(
                f"| {d['pool']} | {d['concurrency']} | {d['n']} | {d['wall_seconds']:.1f} | "
                f"{d['ideal_seconds']:.1f} | {d['over_ideal']:.2f} | {d['mails_per_second']:.1f} |"
            )
        io = [d["over_ideal"] for d in results["drain"]["runs"] if d["pool"] != "prefork"]
        if io:
            best, target = min(io), TARGETS["drain_over_ideal"]
            lines += [
                "",
                f"Best I/O pool: {best:.2f}× ideal "
                f"(target ≤ {target:g}, {verdict(best <= target)}).",
                "",
            ]
    if "scale" in results:
        s = results["scale"]
        lines += [
            "## 4. Scale out",
            "",
            f"{s['n']} mails, WORK_SECONDS={s['work_seconds']}, each worker "
            f"--pool={s['pool']} --concurrency={s['concurrency_per_worker']}, "
            f"{s['repeats']} repeat(s).",
            "",
            "| workers | mails/s median (min–max) | throughput / one worker's |",
            "|---:|---|---:|",
        ]
        for count, t in s["throughput"].items():
            lines.append(
                f"| {count} | {t['median']:.1f} ({t['min']:.1f}–{t['max']:.1f}) | "
                f"{s['speedup'][count]:.2f}× |"
            )
        lines.append("")
    lines += [f"Recommended worker for I/O-bound sends: `{RECOMMENDED}`.", ""]
    return "\n".join(lines)


def in_process_table(figures: dict[str, Any]) -> list[str]:
    """The pieces of /send, timed in one process without HTTP."""
    us = figures["microseconds"]
    noop, send = us["/noop (WSGI)"], us["/send (WSGI)"]
    parse, delay, bare = (
        us["parse and check the JSON"],
        us["sendMail.delay()"],
        us["bare publish (py-amqp)"],
    )
    beyond = send - noop
    rows = [
        ("/noop, called as WSGI", noop, ""),
        ("/send, called as WSGI", send, ""),
        ("/send beyond /noop", beyond, "100%"),
        ("of which: parse and check the JSON", parse, f"{parse / beyond:.0%}"),
        ("of which: sendMail.delay()", delay, f"{delay / beyond:.0%}"),
        (
            "of which: the rest (request, answer, delay() slower amid them)",
            beyond - parse - delay,
            "",
        ),
        ("a bare publish (py-amqp), for comparison", bare, ""),
    ]
    return [
        "In one process, without HTTP (medians of "
        f"{figures['rounds']} alternating rounds of {figures['calls_per_round']} calls):",
        "",
        "| step | µs per call | share of /send beyond /noop |",
        "|---|---:|---:|",
        *(f"| {name} | {value:.1f} | {share} |" for name, value, share in rows),
        "",
        f"`sendMail.delay()` costs {delay / bare:.1f} times a bare publish.",
        "",
    ]


def charts(results: dict[str, Any], out: Path) -> list[Path]:
    """One PNG per benchmark that ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if "response" in results:
        figs = list(results["response"]["results"].values())
        fig, axes = plt.subplots(1, len(figs), figsize=(5 * len(figs), 4), squeeze=False)
        for ax, r in zip(axes[0], figs, strict=True):
            names = list(r["endpoints"])
            for i, q in enumerate(("p50", "p95", "p99")):
                values = [r["endpoints"][n][q] * 1000 for n in names]
                ax.bar([x + i * 0.25 for x in range(len(names))], values, width=0.25, label=q)
            ax.set_xticks([x + 0.25 for x in range(len(names))], names)
            ax.set_yscale("log")
            ax.set_ylabel("ms (log scale)")
            ax.set_title(f"{r['server']}, {r['clients']} client(s)")
            ax.legend()
        fig.suptitle("Response time")
        written.append(save(fig, out / "response.png"))
    if "drain" in results:
        runs = results["drain"]["runs"]
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = [f"{d['pool']}\nC={d['concurrency']}, N={d['n']}" for d in runs]
        ax.bar(labels, [d["over_ideal"] for d in runs])
        ax.axhline(1.3, color="red", linestyle="--", label="target 1.3")
        ax.axhline(1.0, color="grey", linestyle=":", label="ideal")
        ax.set_ylabel("wall time / ideal")
        ax.set_title("Drain into the local inbox")
        ax.legend()
        written.append(save(fig, out / "drain.png"))
    if "scale" in results:
        s = results["scale"]
        counts = [int(c) for c in s["speedup"]]
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(counts, [s["speedup"][str(c)] for c in counts], marker="o", label="measured")
        ax.plot(counts, counts, linestyle=":", color="grey", label="linear")
        ax.set_xlabel("worker processes")
        ax.set_ylabel("throughput / one worker's")
        ax.set_title("Scale out")
        ax.legend()
        written.append(save(fig, out / "scale.png"))
    if "enqueue" in results:
        e = results["enqueue"]
        fig, ax = plt.subplots(figsize=(5, 4))
        names = list(e["per_second"])
        ax.bar(names, [e["per_second"][n]["median"] for n in names])
        ax.axhline(3000, color="red", linestyle="--", label="target 3000/s")
        ax.set_ylabel("sendMail.delay() per second")
        ax.set_title("Enqueue throughput, one producer")
        ax.legend()
        written.append(save(fig, out / "enqueue.png"))
    return written


def save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(results: dict[str, Any], out: Path) -> None:
    """Write results.json, README.md and the charts into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "README.md").write_text(markdown(results))
    charts(results, out)
