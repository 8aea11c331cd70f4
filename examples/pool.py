"""A program whose work runs in worker processes, for trying one profile across processes:

    python -m spprof --subprocesses -o pool.svg examples/pool.py

Four workers each run `parse` and `checksum` on chunks of text; `checksum` (a loop over every
byte) takes most of their time. The flame graph has a root per process: the program, which only
waits, and each worker. `tests/spprof/test_subprocesses.py` runs it so.
"""

import multiprocessing


def parse(text):
    return [line.split(",") for line in text.splitlines()]


def checksum(rows):
    total = 0
    for row in rows:
        for field in row:
            for ch in field:
                total = (total * 31 + ord(ch)) % 1_000_003
    return total


def work(seed):
    text = "\n".join(f"{i},{i * seed},{i % 7}" for i in range(60_000))
    return checksum(parse(text))


if __name__ == "__main__":
    with multiprocessing.Pool(4) as pool:
        print(sum(pool.map(work, range(8))))
