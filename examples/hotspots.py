"""A small CPU-bound program for trying spprof:

    python -m spprof -o profile.json examples/hotspots.py

Per round, `slow_sum` takes two to four times as long as `fast_sum` (a Python loop against the
built-in `sum` over the same numbers; the ratio depends on the Python version), and `parse_lines`
two to three times as long as `slow_sum`: the profile should show that order. `tests/spprof/test_cli.py` checks these ratios
with `cpu_ratios()`.
"""

import sys
import time


def fast_sum(n):
    return sum(range(n))


def slow_sum(n):
    total = 0
    for i in range(n):
        total += i
    return total


def parse_lines(count):
    text = "\n".join(f"{i},{i * i},{i % 7}" for i in range(count))
    return [tuple(int(x) for x in line.split(",")) for line in text.splitlines()]


STEPS = ((fast_sum, 300_000), (slow_sum, 300_000), (parse_lines, 20_000))


def main(rounds):
    for _ in range(rounds):
        for function, size in STEPS:
            function(size)


def cpu_ratios(rounds=5):
    """(slow_sum / fast_sum, parse_lines / slow_sum) in CPU time of this thread."""
    spent = {}
    for function, size in STEPS:
        t0 = time.thread_time()
        for _ in range(rounds):
            function(size)
        spent[function.__name__] = time.thread_time() - t0
    return spent["slow_sum"] / spent["fast_sum"], spent["parse_lines"] / spent["slow_sum"]


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
