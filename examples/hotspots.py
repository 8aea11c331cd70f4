"""A small CPU-bound program for trying spprof:

    python -m spprof -o profile.json examples/hotspots.py

`slow_sum` should take about three times as long as `fast_sum`, and `parse_lines` about twice.
"""

import sys


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


def main(rounds):
    for _ in range(rounds):
        fast_sum(600_000)
        slow_sum(300_000)
        parse_lines(20_000)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
