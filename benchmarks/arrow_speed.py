"""How fast a large profile becomes a pyarrow table, and that the samples are not copied.

    maturin develop --release && python benchmarks/arrow_speed.py [n_samples]

Builds a 1,000,000-sample profile with 30-frame stacks (memory.py's synthetic generator, 2,000
distinct stacks), then times `pyarrow.table(to_arrow(kind))` for both kinds (median of 3). For
"samples" it also measures how much the process's resident memory grows while the table exists:
the store's timestamp and weight columns are shared, so the growth should be about the derived
columns only, not a second copy of the samples.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import sys
import time

import pyarrow as pa
from memory import synthetic

from spprof import _native

SHARED = ("timestamp_ns", "weight_ns")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def settle() -> int:
    """Free what can be freed and hand it back to the OS, so the next allocation shows in RSS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return rss_bytes()


def timed(fn, rounds=3):
    """Median and all times of `rounds` calls of `fn`, and the row count of the table it made."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        table = fn()
        times.append(time.perf_counter() - t0)
        rows = table.num_rows
        del table
        settle()
    return statistics.median(times), times, rows


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    t0 = time.perf_counter()
    data = _native.ProfileData.from_samples(synthetic(n, 2_000, depth=30))
    print(f"profile: {len(data):,} samples, 30 frames deep, store {data.bytes_used / 2**20:.0f} MiB "
          f"(built in {time.perf_counter() - t0:.1f} s)")

    # Memory first, in a settled process: the table stays alive while RSS is read. A small export
    # first, so that one-time set-up (pyarrow's lazy initialisation) is not counted.
    pa.table(_native.to_arrow(_native.ProfileData.from_samples(synthetic(100, 10, depth=30)), "samples"))
    before = settle()
    table = pa.table(_native.to_arrow(data, "samples"))
    grown = rss_bytes() - before
    shared = sum(table.column(c).nbytes for c in SHARED)
    derived = table.nbytes - shared
    assert table.column("timestamp_ns").chunks[0].buffers()[1].address == \
        _native._testing._column_address(data, "timestamp_ns")
    print(f"samples table: {table.nbytes / 2**20:.1f} MiB of buffers = {shared / 2**20:.1f} MiB shared with "
          f"the store ({', '.join(SHARED)}) + {derived / 2**20:.1f} MiB derived columns; "
          f"RSS grew {grown / 2**20:.1f} MiB")
    del table
    settle()

    for kind in ("samples", "frames"):
        median, times, rows = timed(lambda kind=kind: pa.table(_native.to_arrow(data, kind)))
        print(f"pyarrow.table(to_arrow({kind!r})): {rows:,} rows, median {median * 1e3:.0f} ms "
              f"({', '.join(f'{t * 1e3:.0f}' for t in times)} ms)")


if __name__ == "__main__":
    main()
