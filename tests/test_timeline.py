"""timeline.py: events to spans, lanes and overlap, on hand-made event lists."""

from __future__ import annotations

from celery import Celery

from kit.lab import timeline


def make_capture(events: list[dict]) -> timeline.EventCapture:
    """A capture that never listened, holding the given events."""
    capture = timeline.EventCapture(Celery("timeline-test"))
    for event in events:
        capture._on_event(event)
    return capture


def life(task_id: str, host: str, sent: float, started: float, done: float, runner: str = ""):
    events = [
        {"type": "task-sent", "uuid": task_id, "timestamp": sent, "hostname": "producer"},
        {"type": "task-received", "uuid": task_id, "timestamp": sent + 0.01, "hostname": host},
        {"type": "task-started", "uuid": task_id, "timestamp": started, "hostname": host},
        {"type": "task-succeeded", "uuid": task_id, "timestamp": done, "hostname": host},
    ]
    if runner:
        events.append({"type": timeline.RUNNER_EVENT, "uuid": task_id, "runner": runner})
    return events


def test_spans_keep_only_the_given_tasks_and_sort_by_start() -> None:
    capture = make_capture(
        life("b", "w1@box", 0.0, 2.0, 3.0)
        + life("a", "w1@box", 0.0, 1.0, 2.0)
        + life("other", "w9@box", 0.0, 0.5, 0.6)
        + [{"type": "worker-heartbeat", "hostname": "w1@box", "timestamp": 1.0}]
    )
    spans = capture.spans({"a": "#0", "b": "#1"})
    assert [s.label for s in spans] == ["#0", "#1"]
    assert spans[0].hostname == "w1@box" and spans[0].state == "SUCCESS"
    assert spans[1].waited == 2.0 and spans[1].ran == 1.0
    assert capture.done_ids() == {"a", "b", "other"}


def test_a_task_with_no_events_is_pending() -> None:
    (span,) = make_capture([]).spans({"x": "#0"})
    assert span.state == "PENDING" and span.started is None and span.waited is None


def test_overlap_counts_tasks_running_at_once() -> None:
    one_at_a_time = make_capture(
        life("a", "w1@box", 0, 0, 1) + life("b", "w1@box", 0, 1, 2) + life("c", "w1@box", 0, 2, 3)
    ).spans({"a": "a", "b": "b", "c": "c"})
    assert timeline.max_overlap(one_at_a_time) == 1
    assert timeline.start_order(one_at_a_time) == ["a", "b", "c"]
    side_by_side = make_capture(
        life("a", "w1@box", 0, 0, 2)
        + life("b", "w2@box", 0, 0.5, 1)
        + life("c", "w1@box", 0, 0.8, 3)
    ).spans({"a": "a", "b": "b", "c": "c"})
    assert timeline.max_overlap(side_by_side) == 3
    assert timeline.done_order(side_by_side) == ["b", "a", "c"]


def test_lanes_use_the_runner_or_else_the_first_free_slot() -> None:
    spans = make_capture(
        life("a", "w1@box", 0, 0, 2, runner="ForkPoolWorker-1")
        + life("b", "w2@box", 0, 0, 1)
        + life("c", "w2@box", 0, 0.5, 2)
        + life("d", "w2@box", 0, 1, 3)
    ).spans({"a": "a", "b": "b", "c": "c", "d": "d"})
    assert timeline.lanes(spans) == {
        "a": "w1 / ForkPoolWorker-1",
        "b": "w2 / slot 0",
        "c": "w2 / slot 1",
        "d": "w2 / slot 0",  # b's slot is free again when d starts
    }


def test_runner_name_outside_a_pool_is_the_thread() -> None:
    assert timeline.runner_name() == "MainThread"


def test_chart_draws_one_lane_per_runner() -> None:
    spans = make_capture(
        life("a", "w1@box", 0, 0, 1, runner="thread 0")
        + life("b", "w1@box", 0, 0, 1, runner="thread 1")
    ).spans({"a": "#0", "b": "#1"})
    figure = timeline.timeline_chart(spans)
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert labels == ["w1 / thread 0", "w1 / thread 1"]


def test_the_senders_own_times_stand_in_for_task_sent_events() -> None:
    events = [e for e in life("a", "w1@box", 0.0, 2.0, 3.0) if e["type"] != "task-sent"]
    (span,) = make_capture(events).spans({"a": "#0"}, sent={"a": 0.5})
    assert span.sent == 0.5 and span.waited == 1.5


def test_lanes_sort_by_number() -> None:
    assert sorted(["w / slot 10", "w / slot 2", "w / slot 1"], key=timeline.natural) == [
        "w / slot 1",
        "w / slot 2",
        "w / slot 10",
    ]
