"""Time to save flame graphs of a large profile: 1,000,000 samples, 30 frames deep, 5,000
distinct stacks (the synthetic samples of `memory.py`).

    maturin develop --release && python benchmarks/flamegraph_speed.py

Each figure is the median of 3 runs of `Profile.save` (render in Rust, then write the file), and of
`spprof.flamegraph.diff_svg` of the profile against a second one with other sample counts per
stack. The synthetic stacks share little beyond their root frames, so nearly every stack is wide
enough to draw: a worst case for the size of the SVG.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from memory import synthetic

from spprof import Profile, _native, flamegraph

N_SAMPLES, N_STACKS, DEPTH, RUNS = 1_000_000, 5_000, 30, 3


def profile_of(data) -> Profile:
    now = datetime.now().astimezone()
    return Profile._from_native(data, start_time=now, end_time=now, interval_ms=10,
                                python_version=platform.python_version(), platform=platform.platform())


def median_time(fn) -> float:
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    t0 = time.perf_counter()
    current = profile_of(_native.ProfileData.from_samples(synthetic(N_SAMPLES, N_STACKS, depth=DEPTH)))
    # Same stacks (same seed), other counts per stack: a baseline for the differential graph.
    baseline = profile_of(_native.ProfileData.from_samples(
        synthetic(N_SAMPLES // 2, N_STACKS, depth=DEPTH)))
    print(f"built {len(current.samples):,} samples, {N_STACKS:,} stacks, {DEPTH} frames deep "
          f"in {time.perf_counter() - t0:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        for name, save in [
            ("SVG", lambda path: current.save(path)),
            ("HTML", lambda path: current.save(path)),
            ("diff SVG", lambda path: flamegraph.diff_svg(baseline, current, path)),
        ]:
            path = Path(tmp) / ("out.html" if name == "HTML" else "out.svg")
            seconds = median_time(lambda: save(path))  # noqa: B023 (called right here)
            print(f"{name:>9}: {seconds:6.2f} s (median of {RUNS}), {path.stat().st_size / 2**20:6.1f} MB")


if __name__ == "__main__":
    main()
