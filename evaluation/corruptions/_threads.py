"""Run independent CPU tasks on torch's threads, one intra-op thread each.

For work bound by torch's CPU generator, which draws sequentially: two chunks drawing from two
generators on two threads keep both cores busy, where intra-op threads leave one waiting.
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
        _pools[key] = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="corrupt")
    return _pools[key]


def run_on_cpu_threads(tasks: Sequence[Callable[[], None]]) -> None:
    """Call every task once, spread over ``torch.get_num_threads()`` threads, each running torch
    ops single-threaded under ``torch.no_grad``; in the calling thread when there is one thread or
    one task. Returns when all have finished; the first exception is raised after that."""
    threads = torch.get_num_threads()
    if threads == 1 or len(tasks) == 1:
        for task in tasks:
            task()
        return

    def single_threaded(task: Callable[[], None]) -> None:
        torch.set_num_threads(1)  # this thread's OpenMP setting (and torch's default for new threads)
        with torch.no_grad():
            task()

    futures = [_pool(min(threads, len(tasks))).submit(single_threaded, task) for task in tasks]
    concurrent.futures.wait(futures)
    torch.set_num_threads(threads)  # restores torch's default, which the workers set to 1
    for future in futures:
        future.result()
