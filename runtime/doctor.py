"""What this machine can run: the installed onnxruntime distributions, every execution provider
of the build (probed, with onnxruntime's reason when it does not work), whether a GPU is visible,
and what ``providers=None`` picks. ``onnxcam doctor`` prints it."""
from __future__ import annotations

from typing import Any

import onnxruntime as ort
from onnxcam.runtime import providers as P


def report() -> dict[str, Any]:
    """The facts as JSON-able values."""
    probes = [P.probe(name) for name in ort.get_available_providers()]
    return {
        "onnxruntime": ort.__version__,
        "distributions": P.installed_runtimes(),
        "device": ort.get_device(),
        "gpu_visible": P.gpu_visible(),
        "providers": [{"name": p.name, "works": p.works, "reason": p.reason} for p in probes],
        "default": [p if isinstance(p, str) else p[0] for p in P.resolve_providers(None)],
    }


def text(facts: dict[str, Any]) -> str:
    """``report()`` as lines for a person."""
    lines = [f"onnxruntime {facts['onnxruntime']} ({facts['device']} build): {', '.join(facts['distributions'])}",
             f"GPU visible: {'yes' if facts['gpu_visible'] else 'no'}"]
    if len(facts["distributions"]) > 1:
        lines.append("warning: several onnxruntime distributions share one package (see the warning above)")
    width = max(len(p["name"]) for p in facts["providers"])
    for p in facts["providers"]:
        state = "works" if p["works"] else f"does not work: {p['reason']}"
        lines.append(f"  {p['name'].ljust(width)}  {state}")
    lines.append(f"default (providers=None): {', '.join(facts['default'])}")
    return "\n".join(lines)
