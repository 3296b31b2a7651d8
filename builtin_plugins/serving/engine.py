"""Generation off the request threads: a bounded queue and one worker thread that decodes the requests waiting
together as one left-padded batch.

Each HTTP request thread turns its request into a :class:`Job` and :meth:`BatchEngine.submit`\\ s it; when
``max_queue`` jobs are already waiting, :class:`QueueFull` is raised and the request is answered 503 with
``Retry-After``. The worker takes up to ``max_batch`` waiting jobs at once and decodes them together over one
KV cache: prompts are padded on the left (every prompt ends at the last position), position ids are counted
from the attention mask so a padded row sees exactly the positions it would see alone, and every row keeps
its own sampling settings, seed, stop texts, ``max_tokens`` and log-probability request (see
:class:`~.decoding.RowDecoder`). A finished row is dropped from the batch (and from the cache), so a short
answer never waits for a long one to be computed. Jobs that arrive while a batch runs wait for the next one
(static batching: no row joins a batch that has started).

The pieces of text each row produces go to its job's own queue, which the request thread reads (and streams),
so answers cannot be mixed up between requests. Importing this module does not import torch.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .decoding import Piece, RowDecoder

LOG = logging.getLogger("ift.serve")


class QueueFull(Exception):
    """The engine's queue holds ``max_queue`` waiting jobs; try again after ``retry_after`` seconds."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(f"{waiting} requests are already waiting")
        self.waiting, self.retry_after = waiting, retry_after


class ClientGone(ConnectionError):
    """The client closed its connection while its request waited or was decoded."""


class EngineStopped(RuntimeError):
    """The server is shutting down (or its worker failed): the job will not be answered."""


@dataclass
class Job:
    """One request to decode: prompt ids and the row's decoder; pieces come back through :meth:`pieces`."""

    ids: list[int]
    decoder: RowDecoder
    out: queue.SimpleQueue[Piece | BaseException] = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    answered: bool = False
    """Set once the last piece (or an error) is on :attr:`out`: the request thread then waits no more."""

    def deliver(self, item: Piece | BaseException) -> None:
        if not self.answered:
            self.answered = isinstance(item, BaseException) or item.finish_reason is not None
            self.out.put(item)

    def pieces(self, client_gone: Callable[[], bool] = lambda: False) -> Iterator[Piece]:
        """The pieces as they are produced, up to the one with ``finish_reason``; re-raises a worker error.
        While waiting, ``client_gone`` is asked twice a second: when it says so, the job is cancelled (a
        waiting job is then never decoded, a running one leaves its batch) and :class:`ClientGone` raised."""
        while True:
            try:
                item = self.out.get(timeout=0.5)
            except queue.Empty:
                if client_gone():
                    self.cancel()
                    raise ClientGone() from None
                continue
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return

    def cancel(self) -> None:
        """The client went away: stop decoding this row (its slot is freed at the next step)."""
        self.cancelled.set()


class BatchEngine:
    """The worker thread and its queue over one :class:`~.model.ServedModel`'s model."""

    def __init__(self, model: Any, *, pad_id: int, cache_arg: str, max_batch: int = 8, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.model, self.pad_id, self.cache_arg = model, pad_id, cache_arg
        self.max_batch, self.max_queue = max_batch, max_queue
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._running = 0
        self._batch_seconds: deque[float] = deque(maxlen=20)
        self.batches = 0  # batches decoded so far, and the largest one (for the log and the tests)
        self.largest_batch = 0
        self._thread = threading.Thread(target=self._loop, name="ift-serve-engine", daemon=True)
        self._thread.start()

    # --- the request side ----------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job``; raise :class:`QueueFull` when ``max_queue`` jobs are waiting already."""
        with self._cond:
            if self._stopped:
                raise EngineStopped("the server is shutting down")
            if len(self._waiting) >= self.max_queue:  # drop jobs whose clients left, then count again
                self._waiting = deque(job for job in self._waiting if not job.cancelled.is_set())
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(len(self._waiting), self._retry_after())
            self._waiting.append(job)
            self._cond.notify()

    def load(self) -> dict[str, int]:
        """How many jobs wait and how many are being decoded now (``GET /health`` reports it)."""
        with self._cond:
            waiting = sum(1 for job in self._waiting if not job.cancelled.is_set())
            return {
                "waiting": waiting,
                "running": self._running,
                "max_queue": self.max_queue,
                "max_batch": self.max_batch,
            }

    def _retry_after(self) -> int:
        """Seconds until the queue has likely moved: the batches ahead of a new request, at the recent pace."""
        recent = sum(self._batch_seconds) / len(self._batch_seconds) if self._batch_seconds else 1.0
        ahead = math.ceil((len(self._waiting) + 1) / self.max_batch)
        return max(1, min(60, math.ceil(recent * ahead)))

    def stop(self) -> None:
        """Refuse new jobs, fail the waiting ones, and let the worker finish its batch and exit."""
        with self._cond:
            self._stopped = True
            waiting, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()
        for job in waiting:
            job.deliver(EngineStopped("the server is shutting down"))
        self._thread.join(timeout=30)

    # --- the worker ----------------------------------------------------------------------------

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._waiting and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            batch: list[Job] = []
            while self._waiting and len(batch) < self.max_batch:
                job = self._waiting.popleft()
                if not job.cancelled.is_set():
                    batch.append(job)
            self._running = len(batch)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:
                continue
            started = time.perf_counter()
            try:
                self._decode(batch)
            except Exception as exc:  # a bug or an out-of-memory: fail these requests, keep serving
                LOG.error("generation failed for a batch of %d:\n%s", len(batch), traceback.format_exc())
                for job in batch:
                    job.deliver(exc)
            finally:
                with self._cond:
                    self._running = 0
                    self._batch_seconds.append(time.perf_counter() - started)
                    self.batches += 1
                    self.largest_batch = max(self.largest_batch, len(batch))

    def _decode(self, batch: list[Job]) -> None:
        import torch

        model = self.model
        device = next(model.parameters()).device
        width = max(len(job.ids) for job in batch)
        ids = torch.tensor([[self.pad_id] * (width - len(j.ids)) + j.ids for j in batch], device=device)
        mask = torch.tensor([[0] * (width - len(j.ids)) + [1] * len(j.ids) for j in batch], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        rows = list(batch)  # the jobs still decoding, in the order of the batch's rows
        past = None
        with torch.no_grad():
            while True:
                out = model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{self.cache_arg: past}
                )
                past = getattr(out, self.cache_arg)
                logits = out.logits[:, -1].float()
                tokens, keep = [], []
                for row, job in enumerate(rows):
                    if job.cancelled.is_set():
                        job.decoder.done = True
                        continue
                    token, piece = job.decoder.step(logits[row])
                    if piece is not None:
                        job.deliver(piece)
                    if not job.decoder.done:
                        tokens.append(token)
                        keep.append(row)
                if not keep:
                    return
                if len(keep) < len(rows):  # drop finished rows from the batch and the cache
                    index = torch.tensor(keep, device=device)
                    past = _select_rows(past, index)
                    mask, positions = mask[index], positions[index]
                    rows = [rows[row] for row in keep]
                ids = torch.tensor(tokens, device=device)[:, None]
                mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
                positions = positions[:, -1:] + 1


def _select_rows(past: Any, index: Any) -> Any:
    """The KV cache of the rows in ``index`` only (a transformers ``Cache``, or the legacy tuple form)."""
    if hasattr(past, "batch_select_indices"):
        past.batch_select_indices(index)
        return past
    return tuple(tuple(t[index] for t in layer) for layer in past)
