"""benchmarks/common.py: alternating order, ratios from the same round, medians (no best-of)."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "bench_common", Path(__file__).resolve().parents[1] / "benchmarks" / "common.py")
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)


def recording(name, calls, rates):
    def run():
        calls.append(name)
        return rates.pop(0)
    return run


def test_order_alternates_and_warmup_is_not_a_round():
    calls = []
    runners = {"a": recording("a", calls, [0, 1, 1, 1]), "b": recording("b", calls, [0, 1, 1, 1])}
    rounds = common.alternate(runners, rounds=3, warmup=True)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert len(rounds) == 3 and all(r["rates"] == {"a": 1, "b": 1} for r in rounds)


def test_ratio_is_the_median_of_per_round_ratios():
    # Load drifts: round 2 is slow for both. Best-of would divide b's 10 by a's 20 (0.5);
    # per-round ratios are 0.9, 0.9, 0.8 -> median 0.9.
    rounds = [{"rates": {"a": 20, "b": 18}, "load": 1.0},
              {"rates": {"a": 5, "b": 4.5}, "load": 8.0},
              {"rates": {"a": 12.5, "b": 10}, "load": 3.0}]
    assert common.ratios(rounds, "b", "a") == pytest.approx([0.9, 0.9, 0.8])
    figures = common.summary(rounds, "b", "a")
    assert figures["ratio"] == pytest.approx(0.9)
    assert (figures["ratio_min"], figures["ratio_max"]) == pytest.approx((0.8, 0.9))
    assert (figures["rate"], figures["load_min"], figures["load_max"]) == (10, 1.0, 8.0)
    text = common.report(rounds, baseline="a", unit="clips/s")
    assert "x0.90 vs a (per-round min 0.80, max 0.90)" in text
    assert "3 alternating rounds; load average 1.0-8.0" in text
