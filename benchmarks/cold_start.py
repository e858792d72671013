"""Cold start: one ``onnxcam explain MODEL IMAGE --out DIR`` from process start to PNG written.

ResNet-50 (torchvision, seeded random weights) at ``layer4`` is exported once to a temporary
``.cam.onnx``; the image is scikit-image's ``chelsea`` photo saved as JPEG (or ``--image``).
Each timed run spawns a fresh helper process, which starts the command as a subprocess and
records its wall time (``subprocess.run``, start to exit, i.e. after the PNG is written) and its
peak resident memory (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` — the helper has no other
children, so this is the command's own RSS high-water mark). A fresh output directory per run.

"Cold" means a new process each time; the OS file cache is warm (the model file was just
written) and Python's bytecode cache is populated, as on an installed system: an untimed
priming run first compiles every imported module into a private ``PYTHONPYCACHEPREFIX`` (the
repository tree is not touched), and its numbers are printed as a separate row.
Interpreter-only (``python -c pass``) and import-only rows help read where the time goes.

    python benchmarks/cold_start.py [--runs 7] [--threads N] [--method gradcam] [--image PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import load_average

HELPER = r"""
import json, resource, subprocess, sys, time
cmd = json.loads(sys.argv[1])
start = time.perf_counter()
proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
wall = time.perf_counter() - start
rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
print(json.dumps({"wall": wall, "rss_mb": rss_kb / 1024, "rc": proc.returncode,
                  "stderr": proc.stderr.decode(errors="replace")[-2000:]}))
"""


def measure(cmd: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", HELPER, json.dumps(cmd)], env=env, capture_output=True,
                         text=True, check=True)
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {result['rc']}):\n{result['stderr']}")
    return result


def export_model(path: Path) -> None:
    import torch

    from onnxcam.exporter import export

    torch.manual_seed(0)
    export("torchvision:resnet50", target_layer="layer4", out=path)


def write_image(path: Path) -> None:
    from PIL import Image
    from skimage import data

    Image.fromarray(data.chelsea()).save(path, quality=95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None,
                        help="pass --threads N to onnxcam explain (default: its own default)")
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--image", default=None, help="image to explain (default: skimage chelsea as JPEG)")
    parser.add_argument("--model", default=None, help="an existing ResNet-50 .cam.onnx (default: export one)")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs: the median of at least 5 runs")
    onnxcam = shutil.which("onnxcam", path=str(Path(sys.executable).parent)) or shutil.which("onnxcam")
    if onnxcam is None:
        raise SystemExit("the onnxcam command is not installed next to this Python")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = Path(args.model) if args.model else tmp / "resnet50.cam.onnx"
        if not args.model:
            export_model(model)
        image = Path(args.image) if args.image else tmp / "chelsea.jpg"
        if not args.image:
            write_image(image)
        from PIL import Image

        with Image.open(image) as im:
            image_desc = f"{image.name} {im.width}×{im.height}"

        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        env["TQDM_DISABLE"] = "1"
        extra = ["--threads", str(args.threads)] if args.threads is not None else []

        def explain_cmd(i: int) -> list[str]:
            return [onnxcam, "explain", str(model), str(image), "--method", args.method,
                    "--out", str(tmp / f"out-{i}"), *extra]

        def check_png(i: int) -> None:
            pngs = list((tmp / f"out-{i}").glob("*.png"))
            if not pngs:
                raise SystemExit(f"run {i}: no PNG written")

        python = sys.executable
        rows = []
        load_start = load_average()
        prime = measure(explain_cmd(0), env)
        check_png(0)
        rows.append(("`onnxcam explain`, first run (bytecode cache empty: compiles every module)", [prime]))
        runs = []
        for i in range(1, args.runs + 1):
            runs.append(measure(explain_cmd(i), env))
            check_png(i)
        rows.append(("**`onnxcam explain`, cold process** (bytecode cached)", runs))
        base = [measure([python, "-c", "pass"], env) for _ in range(args.runs)]
        rows.append(("`python -c pass` (interpreter start)", base))
        imports = [measure([python, "-c", "import numpy, onnxruntime, PIL.Image, click, tqdm; "
                            "import onnxcam.cli.main, onnxcam.runtime"], env) for _ in range(args.runs)]
        rows.append(("imports only (numpy, onnxruntime, Pillow, click, tqdm, onnxcam CLI + runtime)", imports))
        load_end = load_average()

        size_mb = model.stat().st_size / 2**20
        print(f"Cold `onnxcam explain` of one image: ResNet-50 @ layer4 ({size_mb:.0f} MB .cam.onnx), {image_desc}, "
              f"method {args.method}, threads {args.threads if args.threads is not None else 'default'}; "
              f"{os.cpu_count()} CPUs; load average (1/5/15 min) {load_start} at start, {load_end} at end\n")
        print("| what | runs | median wall (s) | min–max (s) | peak RSS (MB) |")
        print("|---|---:|---:|---:|---:|")
        for name, results in rows:
            walls = [r["wall"] for r in results]
            rss = max(r["rss_mb"] for r in results)
            spread = f"{min(walls):.2f}–{max(walls):.2f}" if len(walls) > 1 else ""
            print(f"| {name} | {len(results)} | {statistics.median(walls):.2f} | {spread} | {rss:.0f} |")
        wall = statistics.median(r["wall"] for r in runs)
        rss = max(r["rss_mb"] for r in runs)
        print(f"\n- goal < 1.5 s: {'met' if wall < 1.5 else 'NOT met'} ({wall:.2f} s median); "
              f"goal < 500 MB: {'met' if rss < 500 else 'NOT met'} ({rss:.0f} MB, highest of the runs)")


if __name__ == "__main__":
    main()
