"""A DataLoader whose workers are threads of the training process (or none: `threads=0`).

Why threads: a worker *process* hands each bag to the trainer through shared memory, and every 4 KiB
page of a fresh shared-memory segment is a page fault (Linux does not back /dev/shm with huge pages
by default). Measured on a 2-core VM with 65 MB bags (scripts/bench_io.py, `large` preset): that
hand-over runs at ~600 MB/s per process against ~5 GB/s for reading the same bags from the page cache,
so 2 worker processes stream at 0.15 of a plain h5py loop. h5py releases the GIL while it reads, and
numpy while it checks values, so threads read in parallel with each other and with the training step
and the tensors they return need no copy at all.

The batches come in the sampler's order (a window of futures, consumed first-in first-out), so a
threaded loader yields exactly what a single-process one does. It subclasses DataLoader, so Lightning
can still swap in a DistributedSampler under DDP.

With `threads=0` it reads each batch in the caller's thread. That is what small bags want (a few
hundred kB: handing them to a thread costs more than reading them), and it skips the per-batch
bookkeeping of DataLoader's own single-process iterator (fetcher, profiler record, pin check):
scripts/bench_io.py measured 0.78 -> 0.86 of a plain h5py loop on the demo cohort's 0.4 MB bags.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch.utils.data import DataLoader


def pin_batch(batch: Any) -> Any:
    """Page-lock every tensor of a (nested) batch, so host-to-GPU copies can run asynchronously."""
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    if isinstance(batch, dict):
        return {k: pin_batch(v) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(pin_batch(v) for v in batch)
    return batch


class ThreadDataLoader(DataLoader):
    """`threads` reader threads, each keeping `prefetch_per_thread` batches in flight (0: none).

    The DataLoader itself runs with `num_workers=0`; any `num_workers` given is ignored in favour
    of `threads` so that Lightning re-creating the loader (DDP) keeps the threaded reading.
    """

    def __init__(self, *args: Any, threads: int = 2, prefetch_per_thread: int = 2, **kwargs: Any):
        kwargs["num_workers"] = 0
        kwargs.pop("persistent_workers", None)
        kwargs.pop("prefetch_factor", None)
        self.pin_batches = bool(kwargs.pop("pin_memory", False))
        super().__init__(*args, **kwargs)
        if threads < 0 or prefetch_per_thread < 1:
            raise ValueError(f"threads ({threads}) must be >= 0 and prefetch_per_thread ({prefetch_per_thread}) >= 1")
        self.threads, self.prefetch_per_thread = int(threads), int(prefetch_per_thread)

    def fetch(self, indices: list[int]) -> Any:
        batch = self.collate_fn([self.dataset[i] for i in indices])
        return pin_batch(batch) if self.pin_batches else batch

    def __iter__(self) -> Iterator[Any]:
        window: deque[Future] = deque()
        depth = self.threads * self.prefetch_per_thread
        # DataLoader's own iterators draw a base seed from the generator before the sampler does;
        # drawing it too keeps the shuffled order the same as with processes or no workers
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        if self.threads == 0:
            for indices in self.batch_sampler:
                yield self.fetch(list(indices))
            return
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="wsisum-reader")
        try:
            for indices in self.batch_sampler:
                window.append(pool.submit(self.fetch, list(indices)))
                if len(window) >= depth:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:  # a loop left early (or an error) cancels the reads not yet started
            pool.shutdown(wait=True, cancel_futures=True)
