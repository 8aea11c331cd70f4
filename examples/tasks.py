"""An asyncio program, for trying asyncio-aware profiles:

    python -m spprof --async-aware -o tasks.html examples/tasks.py

Three "downloads" run concurrently: each waits for its (simulated) network, then decodes what
it got. `slow` waits 0.4 s, `fast` 0.1 s, and `big` decodes three times as much as the others.
The profile has a task each: a waiting task shows `fetch` → `asyncio.sleep`, a running one
`decode`. `tests/spprof/test_async.py` runs it so.
"""

import asyncio


def decode(size):
    total = 0
    for i in range(size):
        total = (total * 31 + i) % 1_000_003
    return total


async def fetch(delay, size):
    await asyncio.sleep(delay)  # the network
    return decode(size)


async def main():
    downloads = {"slow": (0.4, 200_000), "fast": (0.1, 200_000), "big": (0.2, 600_000)}
    tasks = [asyncio.create_task(fetch(delay, size), name=name) for name, (delay, size) in downloads.items()]
    return await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main())
