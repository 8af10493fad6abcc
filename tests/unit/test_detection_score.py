"""bench/detection_score.py: events -> detections -> precision, recall, culprit accuracy."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from detection_score import Detection, Injected, Run, detection_of, detections_from, score

HANG = "ranks [0, 1, 2, 3] made no step for 10.1s (threshold 10.0s); rank 2 (pid 77) is hung: x"


def test_events_become_detections() -> None:
    cases = [
        ("hang", HANG, ("hung", 2)),
        (
            "failure",
            "rank 1 pid 9 signal SIGKILL, last step reported 3; looks like out_of_memory (k)",
            ("out_of_memory", 1),
        ),
        (
            "failure",
            "rank 3 pid 9 exit code 1, last step reported 3; looks like user_bug (ValueError: x)",
            ("user_bug", 3),
        ),
        ("finding", "pod 2 straggler for 3 windows: compute_s = 0.4", ("straggler", 2)),
        ("leader_decision", "node 1 lost: stream lost; restart 1 of 3", ("lost_peer", 1)),
        ("hang_suspected", "ranks [0] made no step; no single rank stands out yet", None),
        ("respawn", "rank 1 pid 5 replaced after an abort", None),
        ("leader_decision", "leader replaced; job rebuilt", None),
    ]
    for kind, message, expected in cases:
        found = detection_of(kind, message, 5.0)
        assert (found and (found.kind, found.culprit)) == expected or found is expected, message


def test_a_hang_and_its_failure_are_one_detection() -> None:
    events = [
        (11.0, "failure", "rank 2 pid 77 signal SIGKILL, last step reported 9; looks like hung"),
        (10.0, "hang", HANG),
    ]
    [only] = detections_from(events)
    assert (only.kind, only.culprit, only.time_unix) == ("hung", 2, 10.0)


def test_scores_per_class() -> None:
    runs = [
        Run("hang", Injected("hung", 2, 100.0), [Detection("hung", 2, 110.0, "")]),
        Run(
            "hang",
            Injected("hung", 2, 100.0),
            [Detection("hung", 1, 105.0, ""), Detection("hung", 2, 112.0, "")],
        ),
        Run("hang", Injected("hung", 2, 100.0), []),
        Run("clean", None, [Detection("straggler", 0, 50.0, "")]),
        Run("oom", Injected("out_of_memory", 1, 10.0), [Detection("out_of_memory", 1, 9.0, "")]),
    ]
    hung = score(runs)["hung"].summary()
    assert (hung["tp"], hung["fp"], hung["fn"]) == (2, 1, 1)
    assert hung["precision"] == 2 / 3 and hung["recall"] == 2 / 3
    assert hung["culprit_accuracy"] == 0.5  # the second run named rank 1 first
    assert (hung["latency_median_s"], hung["latency_max_s"]) == (11.0, 12.0)
    straggler = score(runs)["straggler"].summary()
    assert (straggler["fp"], straggler["precision"], straggler["recall"]) == (1, 0.0, None)
    oom = score(runs)["out_of_memory"].summary()  # before the injection: not a hit
    assert (oom["tp"], oom["fp"], oom["fn"]) == (0, 1, 1)
