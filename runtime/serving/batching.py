"""Dynamic batching: requests for one model that arrive close together run as one graph call.

Each model has one :class:`Batcher` with ``runners`` threads. A request's images, with one class
per image and its method, wait in its queue; one runner at a time collects: it takes the first
waiting request, then whatever else arrives within ``max_delay`` seconds, up to ``max_batch_size``
images, and runs each method's requests as one batch (``Explainer.explain``) — a request larger
than the limit runs alone. While it runs, the next runner collects the next batch, so gathering,
the host-side post-processing and the session's run overlap (on a CPU, two runners with one
onnxruntime thread each keep two cores busy as unbatched workers do).
The results are split back per request, so every request keeps its own classes and method.
If a batch fails (one request's input breaks the graph), its requests run one by one, so only
that request gets the error.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from onnxcam.runtime.explainer import Explainer
from onnxcam.runtime.explanation import Explanation


@dataclass
class _Job:
    x: np.ndarray
    classes: np.ndarray  # int64, one per image (negative: top-1)
    method: str
    done: Future = field(default_factory=Future)


class Batcher:
    """The batching threads of one explainer (see the module docstring)."""

    def __init__(self, explainer: Explainer, max_batch_size: int, max_delay: float, runners: int = 1) -> None:
        if max_batch_size < 1 or max_delay < 0 or runners < 1:
            raise ValueError("max_batch_size and runners must be ≥ 1 and max_delay ≥ 0")
        self.explainer, self.max_batch_size, self.max_delay = explainer, max_batch_size, max_delay
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._collecting = threading.Lock()  # one runner gathers a batch at a time
        self._threads = [threading.Thread(target=self._loop, name=f"onnxcam-batcher-{i}", daemon=True)
                         for i in range(runners)]
        for thread in self._threads:
            thread.start()

    def explain(self, x: np.ndarray, classes: np.ndarray, method: str) -> Explanation:
        """``Explainer.explain(x, method, classes)``, run together with other waiting requests."""
        job = _Job(x, np.asarray(classes, np.int64), method)
        self._queue.put(job)
        return job.done.result()

    def close(self) -> None:
        """Finish the waiting requests, then stop the threads."""
        self._queue.put(None)
        for thread in self._threads:
            thread.join()
        while True:  # what was put back behind the end marker still runs
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._run([job])

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """``first`` and the requests that arrive within ``max_delay`` while the images fit; and
        whether the queue was closed meanwhile."""
        jobs, size = [first], len(first.x)
        deadline = time.monotonic() + self.max_delay
        while size < self.max_batch_size:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            if size + len(job.x) > self.max_batch_size:  # runs in the next batch
                self._queue.put(job)
                break
            jobs.append(job)
            size += len(job.x)
        return jobs, False

    def _loop(self) -> None:
        closed = False
        while not closed:
            with self._collecting:
                first = self._queue.get()
                jobs, closed = ([], True) if first is None else self._collect(first)
                if closed:
                    self._queue.put(None)  # the end marker, again for the next runner
            for method in dict.fromkeys(j.method for j in jobs):
                self._run([j for j in jobs if j.method == method])

    def _run(self, jobs: list[_Job]) -> None:
        try:
            res = self.explainer.explain(np.concatenate([j.x for j in jobs]), method=jobs[0].method,
                                         class_index=np.concatenate([j.classes for j in jobs]))
        except Exception as exc:  # noqa: BLE001  (handed to the request, or retried one by one)
            if len(jobs) == 1:
                jobs[0].done.set_exception(exc)
            else:
                for job in jobs:
                    self._run([job])
            return
        start = 0
        for job in jobs:
            job.done.set_result(res.part(slice(start, start + len(job.x))))
            start += len(job.x)
