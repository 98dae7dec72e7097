"""What every benchmark script shares: alternating rounds, per-round ratios, medians with spread.

A ratio between two sides A and B is only honest when both sides are measured under the same
machine load. So every comparison here runs in rounds that alternate the order (A B, B A, A B, ...),
computes the ratio inside each round, and reports the median of those per-round ratios with their
min-max spread and the load average seen during the rounds. Nothing here picks a best round.

    from common import alternate, report   # a script's own folder is first on sys.path
    rounds = alternate({"torch": run_torch, "openvino": run_ov}, rounds=5)
    print(report(rounds, baseline="torch", unit="clips/s"))

Each `run_*` returns a rate (higher is better: clips/s, queries/s), or use `timed` to turn a
function into one.
"""

import os
import statistics
import time
from pathlib import Path

# the shared real clip (ActivityNet, 480x360, 14 s at 30 fps), when this checkout sits beside it
SHARED_VIDEO = Path(__file__).resolve().parents[2] / "shared/data/videos/v_ZNVhz7ctTq0.mp4"


def load_average():
    """The 1-minute load average, the figure printed beside every measurement."""
    return os.getloadavg()[0]


def process_tree(pid):
    """The process `pid` and its children (a server's master and its workers), as psutil sees
    them."""
    import psutil  # only the server benchmarks need it

    master = psutil.Process(pid)
    return [master, *master.children()]


def tree_cpu_seconds(pid):
    """User + system CPU seconds used so far by `pid` and its children."""
    return sum(sum(p.cpu_times()[:2]) for p in process_tree(pid))


def timed(work, amount=1):
    """A runner that calls `work()` once and returns `amount / seconds` (work may return the
    amount itself, e.g. how many clips it processed)."""
    def run():
        start = time.perf_counter()
        done = work()
        elapsed = time.perf_counter() - start
        return (done if isinstance(done, (int, float)) and done else amount) / elapsed
    return run


def alternate(runners, rounds=5, warmup=False):
    """Run every runner once per round, the order reversed every other round.

    runners: {name: callable returning a rate}. Returns a list of rounds, each
    {"rates": {name: rate}, "load": load average after the round}. `warmup=True` first calls each
    runner once, untimed (first calls pay for lazy initialisation, caches, thread pools).
    """
    names = list(runners)
    if warmup:
        for name in names:
            runners[name]()
    results = []
    for index in range(rounds):
        order = names if index % 2 == 0 else names[::-1]
        rates = {name: runners[name]() for name in order}
        results.append({"rates": rates, "load": load_average()})
    return results


def median_spread(values):
    """(median, min, max) of a list of numbers."""
    values = list(values)
    return statistics.median(values), min(values), max(values)


def ratios(rounds, name, baseline):
    """Per-round ratios rate[name] / rate[baseline], each from the same round."""
    return [r["rates"][name] / r["rates"][baseline] for r in rounds]


def summary(rounds, name, baseline):
    """The figures of `report` for one side as a dict (for JSON lines): the median rate with its
    spread, the median per-round ratio to `baseline` with its spread, and the load range."""
    rate, low, high = median_spread(r["rates"][name] for r in rounds)
    ratio, rlow, rhigh = median_spread(ratios(rounds, name, baseline))
    loads = [r["load"] for r in rounds]
    return {"rate": round(rate, 4), "rate_min": round(low, 4), "rate_max": round(high, 4),
            "ratio": round(ratio, 4), "ratio_min": round(rlow, 4), "ratio_max": round(rhigh, 4),
            "rounds": len(rounds), "load_min": round(min(loads), 2),
            "load_max": round(max(loads), 2), "cores": os.cpu_count()}


def report(rounds, baseline, unit="/s"):
    """One line per side: median rate with spread, and the median per-round ratio to `baseline`
    with its spread; the load range of the rounds closes the table."""
    lines = []
    for name in rounds[0]["rates"]:
        rate, low, high = median_spread(r["rates"][name] for r in rounds)
        line = f"{name:<24} {rate:10.3f} {unit} (min {low:.3f}, max {high:.3f})"
        if name != baseline:
            ratio, rlow, rhigh = median_spread(ratios(rounds, name, baseline))
            line += f"  x{ratio:.2f} vs {baseline} (per-round min {rlow:.2f}, max {rhigh:.2f})"
        lines.append(line)
    loads = [r["load"] for r in rounds]
    lines.append(f"{len(rounds)} alternating rounds; load average {min(loads):.1f}-{max(loads):.1f} "
                 f"on {os.cpu_count()} cores")
    return "\n".join(lines)


def real_video(folder, width=854, height=480):
    """A video of `width` x `height` (H.264, yuv420p) in `folder`: the shared real clip scaled to
    that size, or the sample pattern where ../shared is absent -> its path."""
    import av

    from ig65m.sample import write_sample_video, write_video

    path = Path(folder) / f"video{height}p.mp4"
    if not SHARED_VIDEO.is_file():
        return write_sample_video(path, seconds=14, width=width, height=height) and path
    with av.open(str(SHARED_VIDEO)) as container:
        frames = (frame.to_ndarray(width=width, height=height, format="rgb24")
                  for frame in container.decode(video=0))
        write_video(path, frames, fps=30)
    return path
