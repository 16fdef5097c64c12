"""Overlapping the stages of a streamed job (decode, model, write) with threads and bounded queues.

The stages keep their order: what comes out is what a plain loop gives, item for item, so a pipelined run
writes the same files as a sequential one. An error in a stage reaches the caller at the item where it
happened, after every earlier item has been handled; memory stays bounded by the queues' depths.
The stages that run here (decord, PIL resizes, OpenCV drawing and encoding, CUDA copies) release the GIL,
so threads overlap them with the model without copying frames between processes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

_END = object()


class StageClock:
    """Seconds spent in each named stage, summed over the run (each stage is timed by its own thread)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start

    def rounded(self) -> dict[str, float]:
        return {stage: round(s, 4) for stage, s in self.seconds.items()}


class _Stoppable:
    """A bounded queue whose producer gives up when ``stop`` is set (the consumer went away)."""

    def __init__(self, depth: int):
        self.queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self.stop = threading.Event()

    def put(self, entry) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False


class Prefetcher:
    """Iterates ``items`` in a background thread, up to ``depth`` items ahead of the consumer.

    Iterating the prefetcher yields the same items in the same order; an exception raised by ``items`` is
    raised by the prefetcher after the items before it. ``close()`` (or leaving the ``with`` block) stops the
    thread even when the consumer stopped early.
    """

    def __init__(self, items: Iterable, depth: int, name: str = "prefetch"):
        self._channel = _Stoppable(depth)
        self._thread = threading.Thread(target=self._produce, args=(items,), name=name, daemon=True)
        self._thread.start()

    def _produce(self, items: Iterable) -> None:
        try:
            for item in items:
                if not self._channel.put((item, None)):
                    return
        except BaseException as e:  # noqa: BLE001  delivered to the consumer in order
            self._channel.put((_END, e))
            return
        self._channel.put((_END, None))

    def __iter__(self) -> Iterator:
        while True:
            item, error = self._channel.queue.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item

    def close(self) -> None:
        self._channel.stop.set()
        self._thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class OrderedConsumer:
    """Calls ``handle(item)`` for each submitted item, in submission order, in a background thread; at most
    ``depth`` items wait. The first error stops the handling: the items after it are dropped, and ``submit``
    or ``close`` raise it. ``close()`` handles everything submitted before it, then returns."""

    def __init__(self, handle: Callable, depth: int, name: str = "consumer"):
        self._handle = handle
        self._channel = _Stoppable(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._consume, name=name, daemon=True)
        self._thread.start()

    def _consume(self) -> None:
        while True:
            item = self._channel.queue.get()
            if item is _END:
                return
            if self._error is None:
                try:
                    self._handle(item)
                except BaseException as e:  # noqa: BLE001  raised in the submitting thread
                    self._error = e
                    self._channel.stop.set()  # a blocked submit wakes up and raises

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, item) -> None:
        self._raise_if_failed()
        if not self._channel.put(item):
            self._raise_if_failed()

    def close(self) -> None:
        """Waits for the items already submitted, then raises the first error of the run, if any."""
        if self._thread.is_alive():
            while self._thread.is_alive():
                try:
                    self._channel.queue.put(_END, timeout=0.05)
                    break
                except queue.Full:
                    continue
            self._thread.join()
        self._raise_if_failed()


class InlineConsumer:
    """The sequential twin of :class:`OrderedConsumer`: ``submit`` handles the item at once."""

    def __init__(self, handle: Callable):
        self._handle = handle

    def submit(self, item) -> None:
        self._handle(item)

    def close(self) -> None:
        pass


def consumer(handle: Callable, depth: int, name: str = "consumer") -> OrderedConsumer | InlineConsumer:
    """A background consumer when ``depth > 0``, else one that handles each item in the caller's thread."""
    return OrderedConsumer(handle, depth, name) if depth > 0 else InlineConsumer(handle)


@contextmanager
def prefetched(items: Iterable, depth: int, name: str = "prefetch"):
    """``items`` produced ``depth`` ahead in a background thread, or iterated in place when ``depth`` is 0."""
    if depth <= 0:
        yield iter(items)
        return
    prefetcher = Prefetcher(items, depth, name)
    try:
        yield iter(prefetcher)
    finally:
        prefetcher.close()
