"""The method registry: one entry per explanation method, from which everything else derives.

An entry says what a method is called, what kind it is (``cam``: a map from the graph's outputs;
``perturbation``: runs the model or its head again; ``input``: pixel-level, needs
``--input-gradients``), which graph outputs it reads in the explainer's one graph run, what
else the graph must have, how it is drawn, and how it is computed: ``cam(A, g, g2, g3)`` for a
map of the graph's outputs alone, else ``compute(context)``. Closed-form CAMs are formulas of
``onnxcam.models.formulas`` (then also bakeable into a graph with ``export --heatmap``).

``Explainer``, ``onnxcam explain --method``, ``onnxcam info``, the server, the demo and the
pictures all read this registry. Adding a method is one function and one ``register_method``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxcam.models.contract import (ACTIVATIONS, GRADIENTS, GRADIENTS_POW2, GRADIENTS_POW3, GUIDED_GRADIENTS,
                                     HEAD_OUTPUT, INPUT_GRADIENTS)
from onnxcam.models.formulas import FORMULAS
from onnxcam.runtime import input_methods as im
from onnxcam.runtime.ablation import ablationcam
from onnxcam.runtime.methods import closed_form, eigencam, eigengradcam
from onnxcam.runtime.scorecam import scorecam

if TYPE_CHECKING:  # pragma: no cover
    from onnxcam.runtime.explainer import Explainer

KINDS = ("cam", "perturbation", "input")
PICTURES = ("overlay", "guided", "signed")
#: (raw map [N, h, w] or [N, H, W], attributions in the input's layout or None)
Result = tuple[np.ndarray, "np.ndarray | None"]


@dataclass(frozen=True)
class MethodContext:
    """What a method's ``compute`` gets: the outputs of one graph run on the batch ``x``, the
    classes explained, the options, and the explainer (its public calls ``scores``,
    ``head_logits``, ``input_gradients``, ``batch_size``, ``head_batch_size``, ``info``)."""

    outputs: Mapping[str, np.ndarray]
    x: np.ndarray
    target: np.ndarray
    logits: np.ndarray
    options: im.InputMethodOptions
    explainer: Explainer

    @property
    def layout(self) -> str:
        return self.explainer.info.layout


@dataclass(frozen=True)
class MethodSpec:
    """One method (see the module docstring). ``requires``: graph outputs beyond the contract's
    that the method needs; ``float_input``: it perturbs the normalised float input (not a
    ``--raw-input`` graph); ``reruns``: it runs the graph or its head again; ``family``: part of
    ``all`` (the CAM family)."""

    name: str
    kind: str
    summary: str
    cam: Callable[..., np.ndarray] | None = None
    compute: Callable[[MethodContext], Result] | None = None
    reads: tuple[str, ...] = (ACTIVATIONS, GRADIENTS)
    requires: tuple[str, ...] = ()
    float_input: bool = False
    reruns: bool = False
    family: bool = True
    picture: str = "overlay"

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.picture not in PICTURES or (self.cam is None) == (self.compute is None):
            raise ValueError(f"method {self.name!r}: kind in {KINDS}, picture in {PICTURES}, and exactly one "
                             "of cam / compute")

    @property
    def bakeable(self) -> bool:
        """Whether ``export --heatmap`` can compute it in the graph (a closed-form formula)."""
        return self.name in FORMULAS

    def run(self, ctx: MethodContext) -> Result:
        if self.cam is not None:
            o = ctx.outputs
            return self.cam(o[ACTIVATIONS], o.get(GRADIENTS), o.get(GRADIENTS_POW2), o.get(GRADIENTS_POW3)), None
        return self.compute(ctx)


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the registry (its name must be new) and return it."""
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is already registered")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}") from None


def method_names(*, family: bool | None = None, bakeable: bool | None = None) -> tuple[str, ...]:
    """Registered names in order, optionally only the CAM family / only the bakeable ones."""
    return tuple(m.name for m in METHODS.values()
                 if (family is None or m.family == family) and (bakeable is None or m.bakeable == bakeable))


# -- the methods ---------------------------------------------------------------------------------
def _formula(name: str, summary: str, reads: tuple[str, ...] = (ACTIVATIONS, GRADIENTS), family: bool = True) -> None:
    register_method(MethodSpec(name, "cam", summary, cam=partial(closed_form, name), reads=reads, family=family))


def _scorecam(ctx: MethodContext) -> Result:
    ex = ctx.explainer
    return scorecam(ex.scores, ctx.x, ctx.outputs[ACTIVATIONS], ctx.target, ctx.layout, ex.batch_size), None


def _ablationcam(ctx: MethodContext) -> Result:
    y = ctx.logits[np.arange(len(ctx.target)), ctx.target]
    ex = ctx.explainer

    def head(activations: np.ndarray, n: int) -> np.ndarray:
        return ex.head_logits(activations, ctx.x[n:n + 1])

    return ablationcam(head, ctx.outputs[ACTIVATIONS], y, ctx.target, ex.head_batch_size), None


def _input(fn: Callable[..., Any], *reads: str) -> Callable[[MethodContext], Result]:
    """compute() of an input-space method reading graph outputs ``reads`` (in that order)."""
    def compute(ctx: MethodContext) -> Result:
        attr, raw = fn(*(ctx.outputs[r] for r in reads), ctx.layout)
        return raw, attr
    return compute


def _guided_gradcam(ctx: MethodContext) -> Result:
    o = ctx.outputs
    attr, raw = im.guided_gradcam(o[GUIDED_GRADIENTS], o[ACTIVATIONS], o[GRADIENTS], ctx.layout,
                                  ctx.options.cam_upsample)
    return raw, attr


def _smoothgrad(ctx: MethodContext) -> Result:
    opts, ex = ctx.options, ctx.explainer
    attr, raw = im.smoothgrad(ex.input_gradients, ctx.x, ctx.target, ctx.layout, opts.n_samples, opts.noise_level,
                              opts.seed, ex.batch_size)
    return raw, attr


def _integrated_gradients(ctx: MethodContext) -> Result:
    opts, ex = ctx.options, ctx.explainer
    attr, raw = im.integrated_gradients(ex.input_gradients, ctx.x, ctx.target, ctx.layout, opts.baseline,
                                        opts.n_steps, opts.integration, ex.batch_size)
    return raw, attr


_formula("gradcam", "Grad-CAM: channels weighted by their mean gradient")
_formula("gradcam++", "Grad-CAM++: positive gradients weighted by the second/third-order terms",
         (ACTIVATIONS, GRADIENTS, GRADIENTS_POW2, GRADIENTS_POW3))
_formula("xgradcam", "XGrad-CAM: channels weighted by the activation-normalised gradient")
_formula("hirescam", "HiResCAM: element-wise gradient × activation, summed over channels")
_formula("layercam", "LayerCAM: positive gradients × activations")
_formula("gradcam-elementwise", "Grad-CAM element-wise: ReLU(gradient × activation), summed")
register_method(MethodSpec("eigencam", "cam", "Eigen-CAM: first principal component of the activations",
                           cam=eigencam, reads=(ACTIVATIONS,)))
register_method(MethodSpec("eigengradcam", "cam", "Eigen-Grad-CAM: first principal component of gradient × activation",
                           cam=eigengradcam))
register_method(MethodSpec("scorecam", "perturbation", "Score-CAM: each channel masks the input; weights from the scores",
                           compute=_scorecam, reads=(ACTIVATIONS,), float_input=True, reruns=True))
register_method(MethodSpec("ablationcam", "perturbation", "Ablation-CAM: score drop when a channel is zeroed (head only)",
                           compute=_ablationcam, reads=(ACTIVATIONS,), requires=(HEAD_OUTPUT,), reruns=True))
_formula("gradcam-counterfactual", "Counterfactual Grad-CAM: what would raise the score if removed", family=False)
register_method(MethodSpec("saliency", "input", "Saliency: max over channels of |∂S/∂input|",
                           compute=_input(im.saliency, INPUT_GRADIENTS), reads=(INPUT_GRADIENTS,),
                           requires=(INPUT_GRADIENTS,), float_input=True, family=False, picture="signed"))
register_method(MethodSpec("guided-backprop", "input", "Guided Backpropagation",
                           compute=_input(im.guided_backprop, GUIDED_GRADIENTS), reads=(GUIDED_GRADIENTS,),
                           requires=(GUIDED_GRADIENTS,), float_input=True, family=False, picture="guided"))
register_method(MethodSpec("guided-gradcam", "input", "Guided Grad-CAM: Guided Backprop × upsampled Grad-CAM",
                           compute=_guided_gradcam, reads=(ACTIVATIONS, GRADIENTS, GUIDED_GRADIENTS),
                           requires=(GUIDED_GRADIENTS,), float_input=True, family=False, picture="guided"))
register_method(MethodSpec("smoothgrad", "input", "SmoothGrad: mean input gradient of noisy copies",
                           compute=_smoothgrad, reads=(), requires=(INPUT_GRADIENTS,), float_input=True, reruns=True,
                           family=False, picture="signed"))
register_method(MethodSpec("integrated-gradients", "input", "Integrated Gradients along the path from a baseline",
                           compute=_integrated_gradients, reads=(), requires=(INPUT_GRADIENTS,), float_input=True,
                           reruns=True, family=False, picture="signed"))
