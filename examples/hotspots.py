"""A small CPU-bound program for trying spprof:

    python -m spprof -o profile.json examples/hotspots.py

Per round, `slow_sum` takes three times as long as `fast_sum` (the same loop over three times the
numbers), and the profile should show about that ratio between them; `parse_lines` (string work)
is the third hotspot. `tests/spprof/test_cli.py` checks the ratio with `cpu_ratio()`.
"""

import statistics
import sys
import time


def fast_sum(n):
    total = 0
    for i in range(n):
        total += i
    return total


def slow_sum(n):
    total = 0
    for i in range(3 * n):
        total += i
    return total


def parse_lines(count):
    text = "\n".join(f"{i},{i * i},{i % 7}" for i in range(count))
    return [tuple(int(x) for x in line.split(",")) for line in text.splitlines()]


STEPS = ((fast_sum, 100_000), (slow_sum, 100_000), (parse_lines, 20_000))


def main(rounds):
    for _ in range(rounds):
        for function, size in STEPS:
            function(size)


def cpu_ratio(rounds=15):
    """slow_sum / fast_sum in CPU time: the median over ``rounds`` of the two called back to
    back (so that both see the same machine: another process's load changes the cost of each)."""
    ratios = []
    for _ in range(rounds):
        spent = []
        for function, size in STEPS[:2]:
            t0 = time.thread_time()
            function(size)
            spent.append(time.thread_time() - t0)
        ratios.append(spent[1] / spent[0])
    return statistics.median(ratios)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
