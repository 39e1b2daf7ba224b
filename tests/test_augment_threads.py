"""augment.threads: thread-balanced splits and running tasks concurrently on torch's threads."""

from __future__ import annotations

import threading

import pytest
import torch
from test_augment_networks import one_thread  # noqa: F401  (autouse fixture)

from augment.threads import run_on_cpu_threads, thread_balanced_parts


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("n", "max_size"), [(32, 12), (4, 1), (3, 1), (7, 6), (7, 7), (100, 9), (5, 0)])
def test_parts_cover_the_range_evenly_in_a_multiple_of_the_thread_count(n, max_size, threads):
    torch.set_num_threads(threads)
    parts = thread_balanced_parts(n, max_size)
    assert [start for start, _ in parts] == [0] + [stop for _, stop in parts[:-1]]  # contiguous, in order
    assert parts[-1][1] == n
    sizes = [stop - start for start, stop in parts]
    fewest = -(-n // max(1, max_size))  # parts of at most max_size items
    assert max(sizes) <= max(1, max_size) and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    if fewest == 1:
        assert len(parts) == 1  # fits one pass: left to intra-op threads
    else:  # the smallest multiple of the thread count from there, or one item per part
        assert len(parts) == next((k for k in range(fewest, n + 1) if k % threads == 0), n)


def test_thread_balanced_parts_example():
    torch.set_num_threads(2)
    assert thread_balanced_parts(32, 12) == [(0, 8), (8, 16), (16, 24), (24, 32)]  # not 12 + 12 + 8
    torch.set_num_threads(1)
    assert thread_balanced_parts(32, 12) == [(0, 10), (10, 21), (21, 32)]


def test_tasks_all_run_on_worker_threads_and_the_first_error_is_raised_after_all():
    torch.set_num_threads(2)
    ran, names = [], []

    def task(i: int):
        def run() -> None:
            names.append(threading.current_thread().name)
            assert not torch.is_grad_enabled()
            ran.append(i)
            if i == 1:
                raise RuntimeError("task 1 failed")

        return run

    with pytest.raises(RuntimeError, match="task 1 failed"):
        run_on_cpu_threads([task(i) for i in range(4)])
    assert sorted(ran) == [0, 1, 2, 3]
    modes = []
    with torch.inference_mode():  # the caller's inference mode reaches the workers
        run_on_cpu_threads([lambda: modes.append(torch.is_inference_mode_enabled())] * 2)
    run_on_cpu_threads([lambda: modes.append(torch.is_inference_mode_enabled())] * 2)
    assert modes == [True, True, False, False]
    assert all(name.startswith("cpu-task") for name in names)
    assert torch.get_num_threads() == 2  # the caller's setting is restored
    torch.set_num_threads(1)
    names.clear()
    run_on_cpu_threads([task(0), task(2)])
    assert names == [threading.current_thread().name] * 2  # one thread: in the caller
