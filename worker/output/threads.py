"""One function over a few items in threads: image conversion and uploads wait on I/O or release the GIL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


def map_in_threads(
    function: Callable[[ItemT], ResultT], items: Sequence[ItemT], *, max_workers: int
) -> list[ResultT]:
    """``[function(item) for item in items]``, in order, on up to ``max_workers`` threads.

    One item (or one worker) runs in the calling thread: no pool for the common single-image job. The
    first exception raised by ``function`` propagates once every started call has finished.
    """
    workers = min(len(items), max_workers)
    if workers <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="output") as pool:
        return list(pool.map(function, items))
