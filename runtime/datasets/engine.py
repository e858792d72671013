"""Explain any number of images with bounded memory: the local dataset engine.

``iter_explain`` decodes and preprocesses images on a thread pool (Pillow releases the GIL while
decoding) a few batches ahead of the session, runs the graph once per batch for all methods, and
yields one :class:`Item` per source in input order — its results, or the one-line reason it
failed. A failure (an unreadable file, an image that breaks the graph) costs that image only; a
batch that fails is retried image by image. At most ``(prefetch + 1) · batch_size`` decoded
images are alive at a time, so memory does not grow with the number of images. The engine
itself is :func:`iter_batches` (read on threads, run per batch, in order); ``iter_explain`` and the
evaluation's ``runtime.metrics.dataset.iter_evaluate`` are two uses of it.
"""
from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from onnxcam.models.errors import OnnxcamError
from onnxcam.runtime.datasets.sources import Source
from onnxcam.runtime.datasets.storage import is_uri, read_bytes
from onnxcam.runtime.errors import ClassIndexError, ImageError, ModelError
from onnxcam.runtime.explainer import Explainer, Explanation
from onnxcam.runtime.images import EncodedImage, Geometry, load_image
from PIL import Image


@dataclass
class Item:
    """One image of a run: ``index`` in the input order, its source, and either ``results``
    (method → its :class:`Explanation` of this image alone; for an evaluation, its
    ``ImageScores``) or ``error`` (one line)."""

    index: int
    source: Source
    results: dict[str, Any] | None = None
    error: str | None = None
    geometry: Geometry | None = None
    image: Image.Image | None = None  # the decoded photo, kept only with ``keep_images``
    pictures: dict[str, bytes] | None = None  # method → PNG of its picture, when a run asks for them


@dataclass
class Decoded:
    """One source read for a batch: its input ``x`` and geometry (and the photo, and what else
    the batch needs, e.g. ground truth), or why it could not be read."""

    x: np.ndarray | None
    geometry: Geometry | None
    image: Image.Image | None
    error: str | None
    extra: Any = None


def readable(location: str) -> str | EncodedImage:
    """A local path as is; a URI's bytes, read through its ``pyarrow.fs`` file system."""
    if not is_uri(location):
        return location
    try:
        return EncodedImage(read_bytes(location), location)
    except FileNotFoundError:
        raise ImageError(f"{location}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{location}: is a directory, not an image file") from None
    except OSError as exc:
        raise ImageError(" ".join(f"{location}: cannot read ({exc})".split())) from None


def picture_pngs(item: Item, layout: str, color: str) -> dict[str, bytes]:
    """Method → the PNG of ``item``'s picture (``runtime.pictures.method_picture``: the heatmap
    over the photo, or the input-space picture); the item must keep its photo."""
    from onnxcam.runtime.pictures import method_picture

    pngs = {}
    for method, explanation in item.results.items():
        buffer = io.BytesIO()
        method_picture(explanation, 0, item.image, item.geometry, layout, color).save(buffer, "PNG")
        pngs[method] = buffer.getvalue()
    return pngs


def with_pictures(item: Item, layout: str, color: str) -> Item:
    """``item`` with its pictures made (:func:`picture_pngs`) and its photo dropped; a picture
    that cannot be made fails the item (one line)."""
    if item.results is None:
        return item
    try:
        pictures = picture_pngs(item, layout, color)
    except Exception as exc:  # noqa: BLE001  (out of memory on a huge photo, …)
        return Item(item.index, item.source, error=f"{item.source.path}: cannot make its pictures "
                                                    f"({type(exc).__name__}: {exc})")
    return replace(item, pictures=pictures, image=None)


def decode(prepare: Callable[[Image.Image], tuple[np.ndarray, Geometry]], source: Source,
           keep_image: bool = False) -> Decoded:
    """Read one image and ``prepare`` it (``Explainer.prepare_image``); a failure becomes its
    one-line reason."""
    try:
        image = load_image(readable(source.path))
        x, geometry = prepare(image)
        return Decoded(x, geometry, image if keep_image else None, None)
    except OnnxcamError as exc:
        return Decoded(None, None, None, str(exc))
    except MemoryError:
        return Decoded(None, None, None, f"{source.path}: out of memory while reading the image")
    except Exception as exc:  # noqa: BLE001  (a decoder failure still gets one line)
        return Decoded(None, None, None, f"{source.path}: cannot read ({type(exc).__name__}: {exc})")


def explain_batch(explainer: Explainer, x: np.ndarray, methods: Sequence[str], classes: np.ndarray,
                  names: Sequence[str]) -> list[dict[str, Explanation] | str]:
    """Per image of ``x``: method → its explanation, or why it failed. The batch runs once; when it
    fails, image by image, so one image that breaks the graph loses only itself. Errors of the
    model or of the classes (the same for every image) are raised."""
    try:
        res = explainer.explain_many(x, methods=list(methods), class_index=classes)
        return [{m: r.select(j) for m, r in res.items()} for j in range(len(x))]
    except (ClassIndexError, ModelError):
        raise
    except Exception as exc:  # noqa: BLE001
        if len(x) == 1:
            return [f"{names[0]}: explanation failed ({type(exc).__name__}: {exc})"]
    return [explain_batch(explainer, x[j:j + 1], methods, classes[j:j + 1], names[j:j + 1])[0] for j in range(len(x))]


def _class_error(source: Source, num_classes: int | None) -> str | None:
    """Why a source's own class (from a manifest) cannot be explained, or None."""
    if source.class_index is None or num_classes is None or source.class_index < num_classes:
        return None
    return f"{source.path}: class {source.class_index} is out of range (the model has {num_classes} classes)"


def _run(explainer: Explainer, batch: list[tuple[int, Source, Decoded]], methods: Sequence[str],
         class_index: int | None) -> list[Item]:
    checked = []
    for i, s, d in batch:
        error = d.error or _class_error(s, explainer.info.num_classes)
        checked.append((i, s, d if error is None else Decoded(None, None, None, error)))
    good = [(i, s, d) for i, s, d in checked if d.error is None]
    items = {i: Item(i, s, error=d.error) for i, s, d in checked if d.error is not None}
    if good:
        classes = np.array([s.class_index if s.class_index is not None else (-1 if class_index is None else class_index)
                            for _, s, _ in good], np.int64)
        outcomes = explain_batch(explainer, np.stack([d.x for _, _, d in good]), methods, classes,
                                 [s.path for _, s, _ in good])
        for (i, s, d), outcome in zip(good, outcomes):
            items[i] = Item(i, s, error=outcome) if isinstance(outcome, str) else \
                Item(i, s, results=outcome, geometry=d.geometry, image=d.image)
    return [items[i] for i, _, _ in batch]


Batch = list[tuple[int, Source, "Decoded"]]


def iter_batches(sources: Iterable[Source | str], read: Callable[[Source], Decoded], run: Callable[[Batch], list[Item]],
                 batch_size: int, *, workers: int = 2, prefetch: int = 2) -> Iterator[Item]:
    """The engine: ``read`` each source on ``workers`` threads, ``prefetch`` batches of
    ``batch_size`` ahead of ``run``, which turns one batch into its items; yields them in order."""
    pending: deque[tuple[int, Source, Future]] = deque()
    stream = ((i, s if isinstance(s, Source) else Source(str(s))) for i, s in enumerate(sources))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="onnxcam-decode") as pool:
        def fill() -> None:
            while len(pending) < (prefetch + 1) * batch_size:
                nxt = next(stream, None)
                if nxt is None:
                    return
                pending.append((*nxt, pool.submit(read, nxt[1])))

        fill()
        while pending:
            batch = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
            fill()  # decode the next batches while this one runs
            yield from run([(i, s, f.result()) for i, s, f in batch])


def iter_explain(explainer: Explainer, sources: Iterable[Source | str], methods: Sequence[str],
                 class_index: int | None = None, *, batch_size: int | None = None, workers: int = 2,
                 prefetch: int = 2, keep_images: bool = False) -> Iterator[Item]:
    """Explain ``sources`` with ``methods`` (see the module docstring), yielding one
    :class:`Item` per source in order. ``class_index``: the class for sources without their own
    (None: each image's top-1); ``batch_size``: images per graph run (default: the explainer's);
    ``workers`` decoding threads; ``prefetch`` batches decoded ahead; ``keep_images`` keeps the
    decoded photo on each item (for overlays)."""
    explainer.preprocessing()  # a graph without preprocessing metadata cannot read files
    return iter_batches(sources, lambda source: decode(explainer.prepare_image, source, keep_images),
                        lambda batch: _run(explainer, batch, methods, class_index),
                        batch_size or explainer.batch_size, workers=workers, prefetch=prefetch)
