"""Memory the sampler's store holds per 100,000 samples (stacks interned once, compact rows).

    python benchmarks/memory.py

The store that the signal handler's samples are resolved into is filled through the same code
path (`ProfileData.from_samples` builds a native store) with synthetic samples. Their shape is
typical of a real program: a few hundred functions, stacks 20–40 frames deep, and a chosen
number of distinct stacks. The figure is the store's own count of allocated bytes (capacity,
not just use), the same count that `memory_limit_mb` bounds.
"""

from __future__ import annotations

import random

from spprof import _native


def synthetic(n_samples: int, n_stacks: int, seed: int = 0, depth=None):
    """Samples for `ProfileData.from_samples`; stacks `depth` frames deep (default: 20 to 40)."""
    rng = random.Random(seed)
    functions = [(f"module{i % 20}.func{i}", f"/app/module{i % 20}.py") for i in range(300)]
    stacks = []
    for _ in range(n_stacks):
        n = depth or rng.randint(20, 40)
        stacks.append([(*functions[rng.randrange(300)], rng.randint(1, 500), False) for _ in range(n)])
    return [(i * 10_000_000, 1 + i % 4, f"thread-{i % 4}", 10_000_000, True, stacks[rng.randrange(n_stacks)])
            for i in range(n_samples)]


def main():
    print(f"{'samples':>9} {'distinct stacks':>16} {'store bytes':>12} {'bytes/sample':>13} {'MB per 100k':>12}")
    for n_samples, n_stacks in [(100_000, 100), (100_000, 2_000), (100_000, 20_000), (1_000_000, 2_000)]:
        data = _native.ProfileData.from_samples(synthetic(n_samples, n_stacks))
        used = data.bytes_used
        print(f"{n_samples:>9} {n_stacks:>16} {used:>12} {used / n_samples:>13.1f} "
              f"{used / n_samples * 100_000 / 2**20:>12.2f}")


if __name__ == "__main__":
    main()
