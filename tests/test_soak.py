"""bench.soak's memory table: growth is measured from each process's own "10th minute"."""

from __future__ import annotations


def test_growth_of_a_replica_started_by_the_kill_is_measured_after_its_start_up():
    """A 600 s soak (1/6 = 100 s). The proxy runs from the start and steps from 100 to 110 MB at
    300 s: +10%. A model replica first seen at 300 s (after the kill) starts at 50 MB and settles at
    200 MB: its reference is 1/6 of the run into its own life (400 s), not its start-up, so +0%.
    Samples are (seconds, process, MB); NaN samples (a process gone) are ignored."""
    from bench.soak import rss_growth

    samples = [(float(t), "proxy 1", 100.0 if t < 300 else 110.0) for t in range(0, 600, 10)]
    samples += [(float(t), "model_base 2", 50.0 if t < 320 else 200.0) for t in range(300, 600, 10)]
    samples += [(605.0, "model_base 2", float("nan"))]
    rows = {r[0]: r for r in rss_growth(samples, 600.0)}
    assert rows["proxy 1"][1:5] == ["100", "110", "+10.0%", "110"]
    assert rows["model_base 2"][1:5] == ["200", "200", "+0.0%", "200"]
    assert rows["model_base 2"][5] == "300-590 s"
