"""Score COCO val2017 (5,000 images: first caption against the other four) with captionkit and pycocoevalcap.

Stages: PTB tokenization, BLEU-1..4, ROUGE-L, CIDEr-D (METEOR and SPICE are left out: both run the same Java jars
in either). Prints wall-clock and CPU seconds (including child processes, i.e. Java) per stage for both in the same
run, the ratios, and the largest absolute difference between the scores (corpus and per image). On a shared machine
CPU seconds are the steadier figure. Usage::

    .venv/bin/python benchmarks/bench_scoring.py [--images 5000] [--repeat 3] [--processes-only]

The timings of a repeat are taken in one process; ``--repeat N`` reports each stage's best of N. pycocoevalcap is
the reference as shipped (its tokenizer starts Java and writes a temporary file into its package folder).

Then both again as a user runs them, as processes from files (start-up, imports and reading included), best of N
after an untimed first run of each: ``captionkit score --metrics BLEU,ROUGE_L,CIDEr`` against a script that does
what pycocoevalcap's ``COCOEvalCap`` does for those metrics (pycocotools reads both files; PTB tokenizer; Bleu,
Rouge, Cider). The last line is captionkit's fixed cost: the same command on a missing file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _data import SHARED_DATA

DATA = SHARED_DATA / "coco" / "captions_val2017.json"
SOURCE = Path(__file__).resolve().parents[1] / "src"
STAGES = ("tokenize", "BLEU", "ROUGE_L", "CIDEr")


class Clock:
    """Best wall-clock and CPU seconds per stage over repeats."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @staticmethod
    def _cpu() -> float:
        # This process and its finished children: pycocoevalcap's tokenizer works in a Java child process.
        times = os.times()
        return times.user + times.system + times.children_user + times.children_system

    def time(self, stage: str, work: Callable[[], Any]) -> Any:
        wall, cpu = time.perf_counter(), self._cpu()
        result = work()
        wall, cpu = time.perf_counter() - wall, self._cpu() - cpu
        self.wall[stage] = min(self.wall.get(stage, wall), wall)
        self.cpu[stage] = min(self.cpu.get(stage, cpu), cpu)
        return result


def load(images: int) -> tuple[list[str], dict[str, list[str]], dict[str, str]]:
    data = json.loads(DATA.read_text(encoding="utf-8"))
    by_image: dict[str, list[str]] = {}
    for annotation in data["annotations"]:
        by_image.setdefault(str(annotation["image_id"]), []).append(annotation["caption"])
    ids = list(by_image)[:images]
    return ids, {i: by_image[i][1:] for i in ids}, {i: by_image[i][0] for i in ids}


def run_captionkit(ids: list[str], refs: dict[str, list[str]], cands: dict[str, str], clock: Clock) -> dict[str, Any]:
    from captionkit.evaluation.bleu import bleu_from_corpus
    from captionkit.evaluation.cider import cider_from_corpus
    from captionkit.evaluation.corpus import Corpus
    from captionkit.evaluation.rouge import rouge_l_from_corpus
    from captionkit.evaluation.tokenize import tokenize_captions

    def tokenize() -> tuple[list[list[str]], list[str]]:
        flat = tokenize_captions(c for i in ids for c in refs[i])
        grouped, start = [], 0
        for i in ids:
            grouped.append(flat[start : start + len(refs[i])])
            start += len(refs[i])
        return grouped, tokenize_captions(cands[i] for i in ids)

    references, candidates = clock.time("tokenize", tokenize)
    # The n-gram table serves BLEU and CIDEr-D; its cost is counted in BLEU, the first metric that needs it.
    corpus = clock.time("BLEU", lambda: Corpus(candidates, references))
    bleu = clock.time("BLEU+", lambda: bleu_from_corpus(corpus))
    rouge = clock.time("ROUGE_L", lambda: rouge_l_from_corpus(corpus))
    cider = clock.time("CIDEr", lambda: cider_from_corpus(corpus).tolist())
    clock.wall["BLEU"] += clock.wall.pop("BLEU+")
    clock.cpu["BLEU"] += clock.cpu.pop("BLEU+")
    scores = {f"Bleu_{k + 1}": (bleu.corpus[k], [row[k] for row in bleu.per_image]) for k in range(4)}
    scores["ROUGE_L"] = (rouge.mean, rouge.per_image)
    scores["CIDEr"] = (sum(cider) / len(cider), cider)
    return scores


def run_pycocoevalcap(
    ids: list[str], refs: dict[str, list[str]], cands: dict[str, str], clock: Clock
) -> dict[str, Any]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    def tokenize() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        tokenizer = PTBTokenizer()
        gts = tokenizer.tokenize({i: [{"caption": c} for c in refs[i]] for i in ids})
        res = tokenizer.tokenize({i: [{"caption": cands[i]}] for i in ids})
        return gts, res

    gts, res = clock.time("tokenize", tokenize)
    bleu, bleu_images = clock.time("BLEU", lambda: Bleu(4).compute_score(gts, res, verbose=0))
    rouge, rouge_images = clock.time("ROUGE_L", lambda: Rouge().compute_score(gts, res))
    cider, cider_images = clock.time("CIDEr", lambda: Cider().compute_score(gts, res))
    scores = {f"Bleu_{k + 1}": (bleu[k], list(bleu_images[k])) for k in range(4)}
    scores["ROUGE_L"] = (float(rouge), list(rouge_images))
    scores["CIDEr"] = (float(cider), list(cider_images))
    return scores


# pycocoevalcap as its README runs it, less METEOR and SPICE (COCOEvalCap.evaluate always runs all five).
PYCOCOEVALCAP_SCRIPT = """
import sys
from pycocotools.coco import COCO
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

coco = COCO(sys.argv[1])
results = coco.loadRes(sys.argv[2])
ids = results.getImgIds()
tokenizer = PTBTokenizer()
gts = tokenizer.tokenize({i: coco.imgToAnns[i] for i in ids})
res = tokenizer.tokenize({i: results.imgToAnns[i] for i in ids})
for scorer in (Bleu(4), Rouge(), Cider()):
    print(scorer.method(), scorer.compute_score(gts, res)[0])
"""


class Processes:
    """Best wall-clock and CPU seconds of command lines run as processes, with their children's (Java; the child
    process in which `captionkit score` tokenizes)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        # As an installed package runs: with bytecode caches (this environment may set PYTHONDONTWRITEBYTECODE,
        # which would make every captionkit run compile its modules again, while site-packages have theirs).
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        # The captionkit of this checkout, whatever the environment has installed (an editable install may point
        # at another checkout).
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE), os.environ.get("PYTHONPATH")]))

    def run(self, name: str, command: list[str], check: bool = True) -> None:
        import resource
        import subprocess

        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(command, check=check, capture_output=True, env=self.env)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        self.wall[name] = min(self.wall.get(name, wall), wall)
        self.cpu[name] = min(self.cpu.get(name, cpu), cpu)


def time_processes(ids: list[str], refs: dict[str, list[str]], cands: dict[str, str], repeat: int) -> Processes:
    """pycocoevalcap and ``captionkit score``, each run as a process on the same two files, best of ``repeat``
    after one untimed run each (bytecode caches written, files in the page cache, as on a user's second run).

    Also times captionkit's fixed cost: the same command on a missing file (interpreter, imports, option parsing)."""
    import sys
    import tempfile

    processes = Processes()
    with tempfile.TemporaryDirectory() as folder:
        refs_file, cands_file = Path(folder) / "refs.json", Path(folder) / "cands.json"
        annotations = [(i, c) for i in ids for c in refs[i]]
        document = {
            "info": {},
            "licenses": [],
            "type": "captions",
            "images": [{"id": int(i), "file_name": f"{i}.jpg"} for i in ids],
            "annotations": [{"id": n, "image_id": int(i), "caption": c} for n, (i, c) in enumerate(annotations)],
        }
        refs_file.write_text(json.dumps(document), encoding="utf-8")
        cands_file.write_text(json.dumps([{"image_id": int(i), "caption": cands[i]} for i in ids]), encoding="utf-8")
        score = [sys.executable, "-m", "captionkit.cli", "score", "--metrics", "BLEU,ROUGE_L,CIDEr", "--refs"]
        commands = {
            "pycocoevalcap": [sys.executable, "-c", PYCOCOEVALCAP_SCRIPT, str(refs_file), str(cands_file)],
            "captionkit": [*score, str(refs_file), "--cands", str(cands_file)],
        }
        for name, command in commands.items():
            processes.run(name, command)
            processes.wall.pop(name), processes.cpu.pop(name)  # the untimed first run
        for _ in range(repeat):
            for name, command in commands.items():
                processes.run(name, command)
            processes.run("start-up", [*score, str(Path(folder) / "missing.json"), "--cands", str(cands_file)], False)
    return processes


def ratio(reference: float, ours: float) -> str:
    """``reference / ours`` as ``12.3x``, or n/a where ``ours`` is 0: os.times() counts CPU time in clock ticks (10 ms),
    so a small stage reads 0 s, which printed 10000000.0x or 0.0x."""
    return f"{reference / ours:6.1f}x" if ours > 0 else f"{'n/a':>7}"


def compare_in_process(ids: list[str], refs: dict[str, list[str]], cands: dict[str, str], repeat: int) -> None:
    """Both libraries stage by stage in this process: seconds, ratios, and the largest difference of the scores."""
    import numpy  # noqa: F401 -- both sides use it; keep its import out of the timings

    ours, theirs = Clock(), Clock()
    for _ in range(repeat):
        mine = run_captionkit(ids, refs, cands, ours)
        reference = run_pycocoevalcap(ids, refs, cands, theirs)
    print(f"{'stage':<10} {'pycocoevalcap':>22} {'captionkit':>22} {'ratio':>14}")
    print(f"{'':<10} {'wall s':>11}{'cpu s':>11} {'wall s':>11}{'cpu s':>11} {'wall':>7}{'cpu':>7}")
    for stage in (*STAGES, "total"):
        if stage == "total":
            values = [sum(c.wall.values()) for c in (theirs, ours)] + [sum(c.cpu.values()) for c in (theirs, ours)]
        else:
            values = [theirs.wall[stage], ours.wall[stage], theirs.cpu[stage], ours.cpu[stage]]
        wall_ref, wall_ours, cpu_ref, cpu_ours = values
        print(
            f"{stage:<10} {wall_ref:11.3f}{cpu_ref:11.3f} {wall_ours:11.3f}{cpu_ours:11.3f}"
            f" {ratio(wall_ref, wall_ours)}{ratio(cpu_ref, cpu_ours)}"
        )
    print("largest absolute difference (corpus / per image):")
    worst = 0.0
    for name, (value, per_image) in reference.items():
        corpus_diff = abs(value - mine[name][0])
        image_diff = max(abs(a - b) for a, b in zip(per_image, mine[name][1], strict=True))
        worst = max(worst, corpus_diff, image_diff)
        print(f"  {name:<8} {value:.6f}  {corpus_diff:.1e} / {image_diff:.1e}")
    print("identical to 1e-6:", "yes" if worst <= 1e-6 else f"NO (max difference {worst:.2e})")


def report_processes(processes: Processes, repeat: int) -> None:
    wall, cpu = processes.wall, processes.cpu
    print(f"as processes from files (start-up and reading included), best of {repeat}: wall s (cpu s, Java's too)")
    for name in ("pycocoevalcap", "captionkit"):
        print(f"  {name:<14} {wall[name]:6.2f} ({cpu[name]:.2f})")
    ratio_wall, ratio_cpu = (ratio(times["pycocoevalcap"], times["captionkit"]).strip() for times in (wall, cpu))
    print(f"  ratio          {ratio_wall:>6} ({ratio_cpu})")
    start_up = f"{wall['start-up']:.2f} ({cpu['start-up']:.2f})"
    print(f"  captionkit's start-up alone (interpreter, imports, options): {start_up}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=1, help="Best of N, in process and as processes.")
    parser.add_argument("--processes-only", action="store_true", help="Only the comparison as processes.")
    args = parser.parse_args()
    sys.path.insert(0, str(SOURCE))  # in this process too, the captionkit of this checkout
    ids, refs, cands = load(args.images)
    print(f"{len(ids)} images, {sum(len(r) for r in refs.values())} references")
    if not args.processes_only:
        compare_in_process(ids, refs, cands, args.repeat)
    report_processes(time_processes(ids, refs, cands, args.repeat), args.repeat)


if __name__ == "__main__":
    main()
