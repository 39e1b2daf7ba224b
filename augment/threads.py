"""Run independent CPU tasks concurrently, sharing torch's intra-op threads between them.

For CPU work that intra-op threads parallelise poorly: draws from torch's CPU generator, which are
sequential (two chunks drawing from two generators on two threads keep both cores busy, where
intra-op threads leave one waiting), and chains of many small ops, each of which would wake and
join the intra-op threads (Noise2Net's sub-batches).
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Sequence

import torch

_pools: dict[tuple[int, int], concurrent.futures.ThreadPoolExecutor] = {}


def _pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """A pool of ``workers`` threads of this process (a forked child makes its own)."""
    key = (os.getpid(), workers)
    if key not in _pools:
        _pools[key] = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="cpu-task")
    return _pools[key]


def thread_balanced_parts(n: int, max_size: int) -> list[tuple[int, int]]:
    """Split range(n) into contiguous (start, stop) parts of at most ``max_size`` items, sizes within one of
    each other; when it takes more than one part, their number is rounded up to a multiple of
    ``torch.get_num_threads()`` (at most n parts), so that :func:`run_on_cpu_threads` gives every thread the
    same work: 32 items of at most 12 on two threads are 4 x 8, not 12 + 12 + 8 (the thread with 12 + 8
    finishing last). n <= max_size stays one part (one pass with intra-op threads)."""
    parts = -(-n // max(1, max_size))
    if parts > 1:
        threads = torch.get_num_threads()
        parts = min(n, -(-parts // threads) * threads)
    return [(n * i // parts, n * (i + 1) // parts) for i in range(parts)]


def run_on_cpu_threads(tasks: Sequence[Callable[[], None]]) -> None:
    """Call every task once, on min(tasks, ``torch.get_num_threads()``) threads that share torch's
    threads between them (one intra-op thread each on a 2-core machine), under ``torch.no_grad`` and
    the caller's inference mode; in the calling thread when there is one thread or one task. Returns
    when all have finished; the first exception is raised after that."""
    threads = torch.get_num_threads()
    workers = min(threads, len(tasks))
    if workers == 1:
        with torch.no_grad():
            for task in tasks:
                task()
        return

    inference = torch.is_inference_mode_enabled()

    def with_share_of_threads(task: Callable[[], None]) -> None:
        torch.set_num_threads(threads // workers)  # this thread's OpenMP setting (and torch's default)
        # grad and inference modes are per thread: the caller's do not reach a worker (inference_mode(False)
        # turns grad mode on, so no_grad comes second)
        with torch.inference_mode(inference), torch.no_grad():
            task()

    futures = [_pool(workers).submit(with_share_of_threads, task) for task in tasks]
    concurrent.futures.wait(futures)
    torch.set_num_threads(threads)  # torch's default for new threads, which the workers changed
    for future in futures:
        future.result()
