"""Peak memory of loading a checkpoint in fp32, in bf16 cast after an fp32 load (the old path), and in bf16 read
directly (``dtype=``), for each family's ``base`` preset, side by side.

Each family's base model (random weights) is saved once, then each case loads it in a fresh Python process, so that
every peak is that load's own. A load is the model half of ``Captioner.from_pretrained(dir, device="cpu",
dtype=...)``: the registry's :func:`captionkit.models.registry.load_model`, then ``model.to("cpu", dtype)`` as the
Captioner does (the tokenizer and preprocessing, a few MB, are left out). ``bf16-old`` is the fp32 load then the
cast, as ``from_pretrained`` did before it read weights in their dtype. Usage::

    .venv/bin/python benchmarks/bench_load_memory.py [--families vit-gpt2,blip] [--preset base] [--json out.json]

Two measures; "added" is the load's own (the value after the imports subtracted):

* ``maxrss``: ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the process's peak resident set. It counts the pages of
  a file the loader maps (transformers maps safetensors files) while they are resident, although the kernel may
  drop them at will: a transformers fp32 load whose tensors stay mapped to the file adds almost nothing until the
  weights are read, and a cast reads all of them.
* ``anon``: the peak of ``RssAnon`` (memory of the process's own, not file pages), sampled every millisecond by a
  thread while the load runs; a shorter spike can be missed.

The ratios compare bf16-new with bf16-old, and with the fp32 weights' size (0.5 is the half-precision size).
Figures are this machine's, comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _tables import markdown_table

CASES = ("fp32", "bf16-old", "bf16-new")
MB = 1024 * 1024


def _rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _anon_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


class AnonPeak(threading.Thread):
    """The highest RssAnon seen, sampled every millisecond until :meth:`stop`."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _anon_mb()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.001):
            self.peak = max(self.peak, _anon_mb())

    def stop(self) -> float:
        self._done.set()
        self.join()
        return max(self.peak, _anon_mb())


def child(case: str, directory: str) -> None:
    """Load ``directory`` as ``case`` says and print the memory figures (MB) and the weights' dtype as JSON."""
    import torch

    from captionkit.models.registry import family_of, get_family, load_model
    from captionkit.precision import model_dtype

    get_family(family_of(Path(directory))).load_class()  # the model module's imports belong to the baseline
    torch.set_num_threads(1)
    maxrss_before, anon_before = _rss_peak_mb(), _anon_mb()
    sampler = AnonPeak()
    sampler.start()
    started = time.perf_counter()
    if case == "fp32":
        model = load_model(directory).to("cpu", torch.float32)
    elif case == "bf16-old":
        model = load_model(directory).to("cpu", torch.bfloat16)
    else:
        model = load_model(directory, dtype=torch.bfloat16).to("cpu", torch.bfloat16)
    seconds = time.perf_counter() - started
    anon_peak = sampler.stop()
    found = {
        "maxrss_mb": _rss_peak_mb() - maxrss_before,
        "anon_peak_mb": anon_peak - anon_before,
        "anon_after_mb": _anon_mb() - anon_before,
        "maxrss_total_mb": _rss_peak_mb(),
        "seconds": seconds,
        "dtype": str(model_dtype(model)),
    }
    print(json.dumps(found))


def in_child(*args: str) -> Any:
    """Run this script with ``args`` in a new process: the JSON its last line prints.

    Everything that imports torch or holds a model runs in a child, never here: a process started from this one
    begins with this one's peak RSS as its own ``ru_maxrss`` (Linux keeps it across exec), which would hide the
    load's.
    """
    command = [sys.executable, __file__, *args]
    environment = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def save_model(family: str, preset: str, directory: str) -> None:
    """Save a random ``family``/``preset`` model into ``directory``; print its parameter count and fp32 weights MB."""
    import torch

    from captionkit.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(family, preset)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(directory)
    weights = sum(path.stat().st_size for path in Path(directory).glob("*.safetensors"))
    print(json.dumps({"parameters": parameters, "weights_mb": weights / MB}))


def list_families() -> None:
    from captionkit.models.registry import list_models

    print(json.dumps(list(list_models())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=None, help="comma-separated (default: every registered family)")
    parser.add_argument("--preset", default="base")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--save", nargs=3, metavar=("FAMILY", "PRESET", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--list", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.save:
        save_model(*args.save)
        return
    if args.list:
        list_families()
        return
    families = args.families.split(",") if args.families else in_child("--list")
    chosen = [case for case in CASES if case in args.cases.split(",")]
    results: dict[str, Any] = {}
    rows = []
    for family in families:
        root = Path(tempfile.mkdtemp(prefix=f"load-memory-{family}-"))
        try:
            saved = in_child("--save", family, args.preset, str(root / "model"))
            parameters, weights_mb = saved["parameters"], saved["weights_mb"]
            cases = {case: in_child("--child", case, str(root / "model")) for case in chosen}
        finally:
            shutil.rmtree(root, ignore_errors=True)
        results[family] = {"parameters": parameters, "fp32_weights_mb": weights_mb, "cases": cases}

        def figures(key: str, found: dict[str, dict[str, Any]] = cases) -> str:
            return " / ".join(f"{found[case][key]:.0f}" if case in found else "-" for case in CASES)

        anon = {case: max(found["anon_peak_mb"], 1.0) for case, found in cases.items()}
        rows.append(
            [
                family,
                f"{parameters / 1e6:.1f}M",
                f"{weights_mb:.0f}",
                figures("maxrss_total_mb"),
                figures("maxrss_mb"),
                figures("anon_peak_mb"),
                f"{anon['bf16-new'] / anon['bf16-old']:.2f}" if {"bf16-new", "bf16-old"} <= set(anon) else "-",
                f"{anon['bf16-new'] / weights_mb:.2f}" if "bf16-new" in anon else "-",
                " / ".join(f"{cases[case]['seconds']:.1f}" if case in cases else "-" for case in CASES),
            ]
        )
        print(f"{family}: done", file=sys.stderr)
    cases = " / ".join(CASES)
    columns = ["family", "params", "fp32 weights MB", f"maxrss MB {cases}", f"maxrss added MB {cases}"]
    columns += [f"anon peak added MB {cases}"]
    columns += ["anon new/old", "anon new/fp32 weights", f"load s {cases}"]
    print(f"preset {args.preset}, CPU, one torch thread, a fresh process per case; added: by the load, not the imports")
    print(markdown_table(columns, rows))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
