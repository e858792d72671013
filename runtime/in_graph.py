"""CAM heatmaps computed where the explanation graph ran: the device path.

On a GPU, copying the target layer's activations and gradients ([N, K, h, w] each, up to four
tensors) back to the host for numpy costs more than the arithmetic. Here the explanation graph
runs on OrtValues that stay on its device; for each closed-form method a small ONNX graph
(``onnxcam.models.heatmap_graph``: the method's formula and the runtime's post-processing) reads
them there, and only the logits, the explained classes and each method's ``raw`` [N, h, w] and
``heatmap`` [N, H, W] are copied to the host. The results equal the numpy path's (1e-4). Methods
without a closed form (Eigen-CAM's SVD, Score-CAM, input-space methods) keep the numpy path.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from onnxcam.models.contract import LOGITS, TARGET
from onnxcam.models.formulas import FORMULAS
from onnxcam.models.heatmap_graph import heatmap_graph
from onnxcam.runtime.providers import Runner
from onnxcam.runtime.tensorrt import TENSORRT


def in_graph_methods() -> tuple[str, ...]:
    """The methods this path computes (the closed-form ones)."""
    return tuple(FORMULAS)


class InGraphHeatmaps:
    """The per-method heatmap graphs of one explanation graph's session, made on first use, on the
    same providers (without TensorRT: a graph this small is not worth an engine)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        options = runner.session.get_provider_options()
        self.providers = [(p, options.get(p, {})) for p in runner.providers if p != TENSORRT]
        self._sessions: dict[str, tuple[Runner, tuple[str, ...]]] = {}

    def _graph(self, method: str) -> tuple[Runner, tuple[str, ...]]:
        if method not in self._sessions:
            model, reads = heatmap_graph(method)
            self._sessions[method] = (Runner(model, self.providers, spinning=False), reads)
        return self._sessions[method]

    def outputs(self, methods: Iterable[str]) -> list[str]:
        """The explanation graph's outputs to fetch: logits, classes and what the methods' graphs read."""
        return [LOGITS, TARGET, *sorted({r for m in methods for r in self._graph(m)[1]})]

    def run(self, chunks, methods: Sequence[str], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, dict]:
        """(logits, explained classes, {method: (raw, heatmap)}) over ``chunks`` of
        (images in the chunk, feeds) of the explanation graph."""
        names = self.outputs(methods)
        hw = np.array(size, np.int64)
        logits, target, maps = [], [], {m: ([], []) for m in methods}
        for count, feeds in chunks:
            got = dict(zip(names, self.runner.run_values(names, feeds)))
            logits.append(got[LOGITS].numpy()[:count])
            target.append(got[TARGET].numpy()[:count])
            for method in methods:
                graph, reads = self._graph(method)
                raw, heatmap = graph.run_values(["raw", "heatmap"], {**{r: got[r] for r in reads}, "size": hw})
                maps[method][0].append(raw.numpy()[:count])
                maps[method][1].append(heatmap.numpy()[:count])
        joined = {m: (np.concatenate(r).astype(np.float32), np.concatenate(h).astype(np.float32))
                  for m, (r, h) in maps.items()}
        return np.concatenate(logits).astype(np.float32), np.concatenate(target).astype(np.int64), joined
