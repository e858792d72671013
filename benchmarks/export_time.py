"""Time and peak memory of ``onnxcam export``, each run in a fresh process.

Cases: the torch source ``torchvision:resnet50`` (seeded random weights saved to a file, so the
same weights every run), the same with ``--heatmap gradcam --raw-input`` (every optional pass),
and the ONNX file of resnet50 (the parse / normalise path). Each case runs ``--runs`` times in a
new Python process (imports included, as a user sees it); the table gives the median wall time and
the highest peak RSS of the child process (``ru_maxrss``). ``--compare TREE`` also runs another
checkout of onnxcam (e.g. ``git worktree add /tmp/old REV``) through ``PYTHONPATH``, alternating
with this one run by run, so both see the same machine. Prints a Markdown table.

    python benchmarks/export_time.py [--runs 3] [--model resnet50] [--compare /tmp/old]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import load_average

CHILD = """
import json, sys, time
start = time.perf_counter()
from onnxcam.exporter import export
export(sys.argv[1], out=sys.argv[2], overwrite=True, **json.loads(sys.argv[3]))
print(time.perf_counter() - start)
"""


def run_case(source: str, kwargs: dict, out: Path) -> tuple[float, float, float]:
    """(wall seconds, seconds from the export call to its end, peak RSS MB) of one export in a
    child process. Call it in a process of its own: ru_maxrss of children is the largest so far."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, source, str(out), json.dumps(kwargs)], check=True,
                          capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, float(done.stdout.strip().splitlines()[-1]), peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--compare", type=Path, help="another onnxcam checkout to run alternately")
    args = parser.parse_args()

    import torch
    import torchvision

    work = Path(tempfile.mkdtemp(prefix="onnxcam-export-time-"))
    torch.manual_seed(0)
    net = torchvision.models.get_model(args.model, weights=None).eval()
    weights = work / f"{args.model}.pth"
    torch.save(net.state_dict(), weights)
    onnx_file = work / f"{args.model}.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 224, 224),), str(onnx_file), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}}, opset_version=17)
    cases = [
        (f"torch source (torchvision:{args.model} --weights)", f"torchvision:{args.model}",
         {"weights": str(weights)}),
        ("torch source + --heatmap gradcam --raw-input", f"torchvision:{args.model}",
         {"weights": str(weights), "heatmap": "gradcam", "raw_input": True}),
        (f"ONNX file ({onnx_file.stat().st_size / 1e6:.0f} MB)", str(onnx_file), {}),
    ]
    trees = [("this tree", None)] + ([(str(args.compare), shadow_tree(args.compare, work))] if args.compare else [])
    print(f"onnxcam export, {args.runs} fresh processes per case and tree, {os.cpu_count()} CPUs, "
          f"load average {load_average()} at start\n")
    print("| case | onnxcam | median wall (s) | median in-process (s) | peak RSS (MB) |")
    print("|---|---|---:|---:|---:|")
    for label, source, kwargs in cases:
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _ in trees}
        for _ in range(args.runs):
            for name, pythonpath in reversed(trees):  # alternate: the machine's noise hits both
                results[name].append(measure_isolated(source, kwargs, work / "out.cam.onnx", pythonpath))
        for name, _ in trees:
            walls, inside, peaks = zip(*results[name])
            print(f"| {label} | {name} | {statistics.median(walls):.2f} | {statistics.median(inside):.2f} | "
                  f"{max(peaks):.0f} |")
    print(f"\nload average at end: {load_average()}")


def shadow_tree(tree: Path, work: Path) -> Path:
    """A directory that, first on ``PYTHONPATH``, makes ``import onnxcam.*`` load ``tree``."""
    root = work / "shadow"
    (root / "onnxcam").mkdir(parents=True, exist_ok=True)
    for name in ("exporter", "runtime", "models", "cli"):
        link = root / "onnxcam" / name
        if not link.exists():
            link.symlink_to(tree.resolve() / name)
    return root


def measure_isolated(source: str, kwargs: dict, out: Path, pythonpath: Path | None = None) -> tuple[float, float, float]:
    """``run_case`` inside its own process, so that its children's peak RSS is its own."""
    code = ("import sys, json; sys.path.insert(0, %r); from export_time import run_case; "
            "from pathlib import Path; print(json.dumps(run_case(sys.argv[1], json.loads(sys.argv[2]), "
            "Path(sys.argv[3]))))" % str(Path(__file__).parent))
    env = {**os.environ, **({"PYTHONPATH": str(pythonpath)} if pythonpath else {})}
    done = subprocess.run([sys.executable, "-c", code, source, json.dumps(kwargs), str(out)], check=True,
                          capture_output=True, text=True, env=env)
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
