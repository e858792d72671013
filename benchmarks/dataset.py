"""The local dataset engine against a plain loop, and its memory as the dataset grows.

Rows: images/s of ``onnxcam explain --parquet`` (the local engine: decoding threads ahead of the
session, Parquet shards written as it goes) and of two plain Python loops over ``Explainer``
(image by image, and in batches of the same size, decoding and explaining one after the other);
and the peak RSS of the engine on 200 and on 2,000 images (goal: growth < 200 MB, i.e. memory does
not grow with the dataset). Goal for the speed: the engine ≥ 1.3× the batched loop on 2 cores.

    python benchmarks/dataset.py [--model tests/data/tiny.cam.onnx] [--images 1000] [--size 320]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["gradcam", "gradcam++"]


def write_images(folder: Path, count: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    paths = []
    for i in range(count):
        paths.append(folder / f"{i:05d}.jpg")
        Image.fromarray(np.roll(base, i, axis=1)).save(paths[-1], quality=90)
    return paths


def loop(model: str, paths: list[Path], batch: int) -> float:
    """Seconds for a plain loop: read and preprocess a batch, explain it, next batch."""
    from onnxcam.runtime import Explainer

    explainer = Explainer(model, batch_size=batch)
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        x, _ = explainer.prepare([str(p) for p in paths[i:i + batch]])
        explainer.explain_many(x, methods=METHODS)
    return time.perf_counter() - start


def in_process(model: str, paths: list[Path], out: Path | None, batch: int) -> float:
    """Seconds for the local engine in this process: ``iter_explain`` alone (``out`` None) or
    writing the Parquet dataset."""
    from onnxcam.runtime import Explainer
    from onnxcam.runtime.datasets import Source, iter_explain
    from onnxcam.runtime.datasets.parquet import explain_to_parquet

    explainer = Explainer(model, batch_size=batch, spinning=False)  # as `onnxcam explain` makes it
    sources = [Source(str(p)) for p in paths]
    start = time.perf_counter()
    if out is None:
        for _ in iter_explain(explainer, sources, METHODS):
            pass
    else:
        explain_to_parquet(explainer, sources, out, METHODS, overwrite=True)
    return time.perf_counter() - start


def on_ray(model: str, paths: list[Path], batch: int, actors: int) -> float:
    """Seconds for ``ray_explain`` with ``actors`` actors (Ray already started, so its start-up
    is not counted here; it is printed on its own)."""
    from onnxcam.runtime.datasets import Source
    from onnxcam.runtime.datasets.ray_engine import RayOptions, ray_explain

    start = time.perf_counter()
    for _ in ray_explain(model, [Source(str(p)) for p in paths], METHODS, batch_size=batch,
                         options=RayOptions(actors=actors, cpus_per_actor=0.5)):
        pass
    return time.perf_counter() - start


def engine(model: str, folder: Path, out: Path, batch: int) -> tuple[float, int]:
    """(seconds, peak RSS in bytes) of ``onnxcam explain --parquet`` in a fresh process."""
    code = ("import resource, sys, time; from onnxcam.cli.main import main; t = time.perf_counter()\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    args = ["explain", model, str(folder), "--parquet", str(out), "-b", str(batch), "--overwrite"]
    for m in METHODS:
        args += ["-m", m]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    seconds, rss_kib = done.stdout.split()[-2:]
    return float(seconds), int(rss_kib) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "tests" / "data" / "tiny.cam.onnx"))
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=320, help="side of the generated JPEGs")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ray", action="store_true", help="also the Ray engine with 1 and 2 actors")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        paths = write_images(folder, args.images, args.size)
        loop(args.model, paths[:16], args.batch)  # warm-ups: imports, thread pools, Arrow's writer
        in_process(args.model, paths[:16], Path(tmp) / "warm-up", args.batch)
        one = loop(args.model, paths, 1)
        batched = loop(args.model, paths, args.batch)
        streamed = in_process(args.model, paths, None, args.batch)
        written = in_process(args.model, paths, Path(tmp) / "in-process", args.batch)
        seconds, _ = engine(args.model, folder, Path(tmp) / "out", args.batch)
        print("| run | images/s | vs batched loop |\n|---|---|---|")
        for name, t in (("loop, one image at a time", one), (f"loop, batches of {args.batch}", batched),
                        ("engine: iter_explain", streamed), ("engine: explain_to_parquet", written),
                        ("engine: `onnxcam explain --parquet` (with start-up)", seconds)):
            print(f"| {name} | {args.images / t:.1f} | {batched / t:.2f}× |")
        if args.ray:
            import ray

            start = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            print(f"\nRay local start-up: {time.perf_counter() - start:.1f} s")
            print("| Ray actors | images/s | vs batched loop |\n|---|---|---|")
            for actors in (1, 2):
                t = on_ray(args.model, paths, args.batch, actors)
                print(f"| {actors} | {args.images / t:.1f} | {batched / t:.2f}× |")
            ray.shutdown()
        small, large = Path(tmp) / "small", Path(tmp) / "large"
        write_images(small, 200, args.size)
        write_images(large, 2000, args.size)
        rss = [engine(args.model, d, Path(tmp) / f"out-{d.name}", args.batch)[1] for d in (small, large)]
        print(f"\npeak RSS: 200 images {rss[0] / 2**20:.0f} MB, 2,000 images {rss[1] / 2**20:.0f} MB, "
              f"growth {(rss[1] - rss[0]) / 2**20:.0f} MB (goal < 200 MB)")
    print("(the engine's time includes its process's start-up and the Parquet writing)")


if __name__ == "__main__":
    main()
