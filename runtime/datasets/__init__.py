"""Whole datasets: the image sources of a run, the streaming local engine, Parquet output
(``onnxcam.runtime.datasets.parquet``, extra ``onnxcam[parquet]``)."""
from onnxcam.runtime.datasets.engine import Item, explain_batch, iter_explain
from onnxcam.runtime.datasets.sources import Source, expand_sources

__all__ = ["Item", "Source", "expand_sources", "explain_batch", "iter_explain"]
