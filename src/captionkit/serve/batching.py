"""Micro-batching: images from concurrent requests that share a model and decoding settings run as one batch.

Requests that differ only in style share batches too: each image starts from its own style's token (the engine's
``starts``), exactly as it would in a batch of its style alone.

One :class:`MicroBatcher` per model. Requests add their images to a queue keyed by the decoding config; one
worker takes the key whose oldest image has waited longest, waits until ``max_batch`` images of that key are
there or ``max_wait`` has passed since the oldest arrived, and runs them in one model call on its own thread (one
thread per model: a model is never run by two threads at once, and the event loop stays free meanwhile).

Seeded sampling is batched only within its request: sample ``i`` of image ``j`` then comes from
``seed + j`` whatever else is in flight, so the same request always gets the same captions. It does not wait
``max_wait`` either, since no other request can join it.

The queue is bounded: a request whose images do not fit raises :class:`QueueFull` at once (the API answers 503
with Retry-After) instead of waiting behind work it cannot finish in time. A request that is cancelled (its
timeout passed) leaves the queue; images of it already in a running batch are computed and dropped.

A failure inside a batch (the model raises, returns the wrong number of results) fails that batch's requests
only; the worker goes on with the next batch. Should the worker itself end on an unexpected error, every waiting
request fails at once with :class:`BatcherFailed`, later ones are refused with it, and :attr:`MicroBatcher.failure`
says why (the API's ``/readyz`` then answers 503) instead of requests waiting for their timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from PIL import Image

from captionkit.api import Caption
from captionkit.decoding import DecodingConfig
from captionkit.errors import CaptionkitError, first_line

logger = logging.getLogger("captionkit.serve")

# (images, config, image_offset, attention, starts) -> n-best captions per image: Captioner.caption_pil's signature.
RunBatch = Callable[[Sequence[Image.Image], DecodingConfig, int, bool, Sequence[int | None]], list[list[Caption]]]


class QueueFull(Exception):
    """The model's queue has no room for this request's images."""


class BatcherStopped(Exception):
    """The server is shutting down; the request was not run."""


class BatcherFailed(Exception):
    """The worker ended on an unexpected error: nothing more runs on this model until the server restarts."""


@dataclass
class _Item:
    image: Image.Image
    offset: int
    start: int | None  # its request's start token (a style's; None: the model's bos)
    future: asyncio.Future[list[Caption]]
    arrived: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _Key:
    config: DecodingConfig  # without the start token, which each item carries: styles batch together
    request: int | None  # set for seeded sampling: batch only with the same request
    attention: bool = False  # requests for attention maps batch together


class MicroBatcher:
    """Collects images into batches for one model; see the module docstring."""

    def __init__(
        self,
        run: RunBatch,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._queues: dict[_Key, deque[_Item]] = {}
        self._queued = 0
        self._arrived = asyncio.Event()
        self._requests = itertools.count()
        self._executor: ThreadPoolExecutor | None = None
        self._worker: asyncio.Task[None] | None = None
        self._running: list[_Item] = []  # the batch taken off the queue and not yet answered
        self._stopping = False
        self._failure: str | None = None

    @property
    def queued(self) -> int:
        """Images waiting (not yet in a running batch)."""
        return self._queued

    @property
    def failure(self) -> str | None:
        """Why the worker ended unexpectedly (one line), or None while it runs or after a normal stop."""
        return self._failure

    def start(self) -> None:
        self._arrived = asyncio.Event()  # made here: an event belongs to the loop that first waits on it
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captionkit-model")
        self._stopping = False
        self._failure = None
        self._worker = asyncio.create_task(self._work())
        self._worker.add_done_callback(self._worker_ended)

    async def stop(self) -> None:
        """Stop the worker; requests still queued (or in a batch it leaves unfinished) fail with
        :class:`BatcherStopped`."""
        self._stopping = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        _fail([*self._running, *(item for queue in self._queues.values() for item in queue)], BatcherStopped())
        self._running = []
        self._queues.clear()
        self._queued = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(
        self, images: Sequence[Image.Image], config: DecodingConfig, attention: bool = False
    ) -> list[list[Caption]]:
        """The n-best captions of each image (with attention maps if asked); raises :class:`QueueFull` when they
        do not fit in the queue."""
        if self._failure is not None:
            raise BatcherFailed(self._failure)
        if self._worker is None:
            raise BatcherStopped()
        if self._queued + len(images) > self.max_queue:
            raise QueueFull(f"{self._queued} of {self.max_queue} image places taken, {len(images)} needed")
        own = config.do_sample and config.seed is not None
        key = _Key(replace(config, start_token_id=None), next(self._requests) if own else None, attention)
        loop = asyncio.get_running_loop()
        start = config.start_token_id
        items = [_Item(image, index, start, loop.create_future()) for index, image in enumerate(images)]
        self._queues.setdefault(key, deque()).extend(items)
        self._queued += len(items)
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:
            self._forget(key, items)

    def _forget(self, key: _Key, items: list[_Item]) -> None:
        """Take a finished or cancelled request's items that are still queued out of the queue."""
        queue = self._queues.get(key)
        if not queue:
            return
        mine = {id(item) for item in items}
        kept = deque(item for item in queue if id(item) not in mine)
        self._queued -= len(queue) - len(kept)
        if kept:
            self._queues[key] = kept
        else:
            del self._queues[key]

    async def _work(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._queues:
                await self._run_one_batch()

    def _worker_ended(self, worker: asyncio.Task[None]) -> None:
        """Done callback of the worker: unless :meth:`stop` ended it, fail every waiting request now and remember
        why, rather than leave them to time out while the server looks ready."""
        if self._stopping:
            return
        error = None if worker.cancelled() else worker.exception()
        reason = "cancelled" if error is None else f"{type(error).__name__}: {first_line(error)}"
        self._failure = f"the captioning worker stopped ({reason})"
        logger.error("captionkit serve: %s; restart the server", self._failure, exc_info=error)
        waiting = [*self._running, *(item for queue in self._queues.values() for item in queue)]
        self._queues.clear()
        self._queued = 0
        self._running = []
        _fail(waiting, BatcherFailed(self._failure))

    async def _run_one_batch(self) -> None:
        key = min(self._queues, key=lambda k: self._queues[k][0].arrived)
        # A seeded request's key is its own, and all its images came at once: nothing can join it, so waiting
        # max_wait for company would only delay it.
        deadline = self._queues[key][0].arrived + (self.max_wait_s if key.request is None else 0.0)
        while len(self._queues.get(key, ())) < self.max_batch and (wait := deadline - time.monotonic()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait)
            except TimeoutError:
                break
        queue = self._queues.get(key)
        if not queue:
            return  # its requests were cancelled while it waited
        batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
        if not queue:
            del self._queues[key]
        self._queued -= len(batch)
        self._running = [item for item in batch if not item.future.done()]
        try:
            if self._running:
                await self._run_batch(key, self._running)
        except Exception as error:  # anything going wrong with this batch fails its requests, not the worker
            if not isinstance(error, CaptionkitError):
                logger.error("captionkit serve: error in a batch of %d images", len(self._running), exc_info=error)
            _fail(self._running, error)
        self._running = []  # not on BaseException: the worker is ending, and _worker_ended fails these too

    async def _run_batch(self, key: _Key, live: list[_Item]) -> None:
        """Run ``live`` in one model call on the model thread and answer each item."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        images = [item.image for item in live]
        offset = live[0].offset if key.request is not None else 0
        starts = [item.start for item in live]
        results = await loop.run_in_executor(
            self._executor, self._run, images, key.config, offset, key.attention, starts
        )
        if len(results) != len(live):
            raise RuntimeError(f"the model returned captions for {len(results)} of {len(live)} images")
        for item, captions in zip(live, results, strict=True):
            if not item.future.done():
                item.future.set_result(captions)
        if self._on_batch is not None:
            self._on_batch(len(live), time.perf_counter() - started)


def _fail(items: Sequence[_Item], error: BaseException) -> None:
    """Fail the items' futures not yet answered with ``error``. Each is marked retrieved: the request awaiting
    it reports the error, and its other items (or one it already gave up on) should not log it again."""
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)
            item.future.exception()
