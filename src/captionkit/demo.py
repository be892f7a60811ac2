"""``captionkit demo``: train a captioner on built-in synthetic scenes and caption scenes it has never seen.

Everything runs offline on a CPU in minutes: the scenes are drawn (``captionkit.data.synthetic``), a small ViT + GPT-2
is trained from scratch with the recipe in ``recipes/demo.yaml``, and the held-out test scenes are captioned
greedily. Results: ``metrics.json`` (machine-readable) and ``report.html`` (self-contained, images inlined).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from captionkit.config import TrainConfig, apply_overrides, read_yaml, train_config
from captionkit.data.records import CaptionRecord
from captionkit.data.sources import load_records
from captionkit.data.splits import first_caption_per_image, select_split
from captionkit.data.synthetic import SPLITS, SceneOptions, write_synthetic_dataset
from captionkit.demo_data import DemoData
from captionkit.errors import ConfigError, InputError
from captionkit.files import write_atomic
from captionkit.wording import plural

RECIPE = "demo.yaml"
#: What a demo writes at the end, removed at its start: an earlier demo's results must not stand beside new scenes.
RESULTS = ("metrics.json", "report.html")


class DemoInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped the demo's training at ``step`` of ``steps``: no metrics or report are written."""

    def __init__(self, step: int, steps: int) -> None:
        super().__init__(f"training stopped at step {step} of {steps}")
        self.step, self.steps = step, steps


def demo_recipe_path() -> Path:
    return Path(str(resources.files("captionkit.recipes").joinpath(RECIPE)))


def demo_config(data_file: Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """The demo's training recipe pointed at ``data_file``, with ``--set``-style overrides."""
    data = read_yaml(demo_recipe_path())
    data = apply_overrides(data, [f"data.train={data_file}", f"data.val={data_file}"])
    return train_config(data, overrides, where=RECIPE)


#: Recipe keys the demo sets itself: it trains and validates on the scenes it draws, then captions their test split.
DEMO_SETS = ("data.train", "data.val")


def refuse_data_overrides(overrides: Sequence[str]) -> None:
    """Refuse ``--set data.train=...`` (or ``data.val``): the demo would train on that data, then caption and score
    the scenes it drew, as if the model had learnt them. Other data is trained with ``captionkit train``."""
    for override in overrides:
        key = override.partition("=")[0].strip()
        if key in DEMO_SETS:
            raise ConfigError(
                f"--set {key}",
                "the demo trains on the scenes it draws; to train its recipe on other data, run "
                f"`captionkit train demo --output DIR --set {key}=...`",
            )


def word_accuracy(generated: str, reference: str) -> float:
    """Share of word positions where the generated caption has the reference's word (over the longer length)."""
    gen, ref = generated.split(), reference.split()
    if not gen and not ref:
        return 1.0
    same = sum(a == b for a, b in zip(gen, ref, strict=False))
    return same / max(len(gen), len(ref))


def score_captions(pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Exact match and word accuracy of (generated, canonical reference) pairs."""
    if not pairs:
        return {"exact_match": 0.0, "token_accuracy": 0.0}
    exact = sum(gen == ref for gen, ref in pairs) / len(pairs)
    words = sum(word_accuracy(gen, ref) for gen, ref in pairs) / len(pairs)
    return {"exact_match": round(exact, 4), "token_accuracy": round(words, 4)}


def run_demo(
    output: str | Path,
    steps: int | None = None,
    data: DemoData | None = None,
    overrides: Sequence[str] = (),
    log: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Draw scenes, train, caption the test scenes; write metrics.json and report.html; return the metrics.

    ``log`` gets training's log entries, ``progress`` shows training's progress line on stderr, ``say`` gets one line
    as each of the other stages (drawing, captioning) starts."""
    from captionkit.api import Captioner
    from captionkit.training.finish import CURVES
    from captionkit.training.loop import train

    output = Path(output)
    data = data or DemoData()
    refuse_data_overrides(overrides)
    extra = [f"train.seed={data.seed}", *overrides, *([f"train.steps={steps}"] if steps is not None else [])]
    # The recipe and its overrides checked first: a mistyped --set must not wait for 20,000 scenes to be drawn.
    checked = demo_config(output / "data" / "captions.jsonl", extra)
    if checked.data.styles and "neutral" not in checked.data.styles:
        # The demo scores the neutral captions against the canonical ones: a model without them has nothing to score.
        raise ConfigError(
            "--set data.styles",
            "the demo scores neutral captions: keep neutral among the styles, or turn style control off with "
            "data.styles={}",
        )
    remove_old_results(output)
    started = time.perf_counter()
    options = SceneOptions(
        held_out_fraction=data.held_out_fraction, order=data.order, layout=data.layout, grid=data.grid
    )
    remove_old_scenes(output / "data")
    tell = say or (lambda _line: None)
    scenes = data.num_train + data.num_val + data.num_test
    tell(f"drawing {scenes} scenes ({data.num_train} train, {data.num_val} validation, {data.num_test} test)")
    data_file = write_synthetic_dataset(
        output / "data", data.num_train, data.num_val, data.num_test, data.seed, data.image_size, options, data.workers
    )
    config = demo_config(data_file, extra)
    data_seconds = time.perf_counter() - started
    # Always a fresh run: the scenes were just drawn again, so an old checkpoint in the same place is stale.
    result = train(config, output / "model", log=log, resume=False, progress=progress)
    if result.interrupted:  # the training loop saved a checkpoint and returned: there is no final model to caption
        raise DemoInterrupted(result.steps, config.train.steps)

    captioner = Captioner.from_pretrained(output / "model")
    records = load_records(data_file)
    tests = first_caption_per_image([r for r in select_split(records, "test") if r.style == "neutral"])
    styles = ", ".join(captioner.styles)
    tell(f"captioning {plural(len(tests), 'unseen scene')} in each style the model writes ({styles})")
    started_captioning = time.perf_counter()
    # Every test scene in every style the model was trained to write (neutral first).
    generated = {
        style: _caption_all(
            captioner, tests, captioner.decoding_config(style, num_beams=1, max_new_tokens=config.data.max_length)
        )
        for style in captioner.styles
    }
    caption_seconds = time.perf_counter() - started_captioning

    metrics: dict[str, Any] = {
        **score_captions([(gen, r.caption) for gen, r in zip(generated["neutral"], tests, strict=True)]),
        "test_images": len(tests),
        "train_images": data.num_train,
        "train_steps": result.steps,
        "train_seconds": round(result.seconds, 2),
        "data_seconds": round(data_seconds, 2),
        "caption_seconds": round(caption_seconds, 2),
        "val_loss": result.val_loss,
        "model_parameters": captioner.num_parameters,
        "seed": data.seed,
    }
    if len(generated) > 1:
        metrics |= style_metrics(generated, tests, select_split(records, "train"))
    write_atomic(output / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_report(output / "report.html", tests, generated, metrics, curves=output / "model" / CURVES)
    return metrics


def remove_old_results(output: Path) -> None:
    """Delete an earlier demo's ``metrics.json`` and ``report.html`` in ``output``: a run that fails or is stopped
    would otherwise leave them beside its own scenes and model, as if they were its results. A directory in their
    place is refused before any work (writing the file there would fail only after the training)."""
    paths = [output / name for name in RESULTS]
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            raise InputError("--output", f"{path} is a directory; the demo writes its {path.name} there")
    for path in paths:
        if path.is_file() or path.is_symlink():
            path.unlink()


def remove_old_scenes(data_dir: Path) -> int:
    """Delete the scene images an earlier demo drew in ``data_dir`` (``images/<split>/<split>-NNNNNN.png``) and
    return how many: a smaller draw overwrites only its own, and the others would stay in ``images/test`` with no
    caption in ``captions.jsonl`` (and be captioned by ``captionkit caption DIR/data/images/test``). Any other file is
    left alone."""
    removed = 0
    for split in SPLITS:
        folder = data_dir / "images" / split
        if not folder.is_dir():
            continue
        for path in folder.glob(f"{split}-*.png"):
            if re.fullmatch(rf"{split}-[0-9]{{6,}}\.png", path.name) and path.is_file() and not path.is_symlink():
                path.unlink()
                removed += 1
    return removed


def _caption_all(captioner: Any, records: Sequence[CaptionRecord], decoding: Any, batch: int = 64) -> list[str]:
    generated: list[str] = []
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        captions = captioner.caption_pil(captioner.load_images([r.image_path for r in chunk]), decoding)
        generated.extend(found[0].caption for found in captions)
    return generated


def style_metrics(
    generated: dict[str, list[str]],
    tests: Sequence[CaptionRecord],
    train_records: Sequence[CaptionRecord],
    classifier_images: int = 2000,
) -> dict[str, Any]:
    """Style accuracy per requested style (a classifier trained on the training captions of ``classifier_images``
    scenes) and content exact match: the styled caption without its style words equals the canonical caption."""
    from captionkit.evaluation.style import StyleClassifier, evaluate_styles

    images = {r.image_id for r in train_records[: classifier_images * 20]}
    classifier = StyleClassifier.fit((r.caption, r.style) for r in train_records if r.image_id in images)
    ids = [r.image_id for r in tests]
    table = evaluate_styles(
        {style: dict(zip(ids, captions, strict=True)) for style, captions in generated.items()},
        classifier,
        neutral={r.image_id: r.caption for r in tests},
    )
    return {
        "style_accuracy": {
            style: None if scores.style_accuracy is None else round(scores.style_accuracy, 4)
            for style, scores in table.items()
        },
        "style_content_exact_match": {
            style: round(scores.content_exact or 0.0, 4) for style, scores in table.items() if style != "neutral"
        },
    }


def write_report(
    path: Path,
    records: Sequence[CaptionRecord],
    generated: dict[str, list[str]],
    metrics: dict[str, Any],
    limit: int = 120,
    curves: Path | None = None,
) -> Path:
    """A self-contained HTML page: the metric table, the per-style table, the training curves (when ``curves`` is a
    PNG), then the test images beside their generated captions (one column per style the model writes, neutral
    first) and their reference caption, failures first."""
    from captionkit.report import escape, grid_table, image_cell, metric_table, png_figure, write_page

    styled = [style for style in generated if style != "neutral"]
    rows = []
    shown = list(enumerate(records))
    shown.sort(key=lambda item: generated["neutral"][item[0]] == item[1].caption)  # stable: failures first
    for index, record in shown[:limit]:
        caption = generated["neutral"][index]
        ok = caption == record.caption
        extra = "".join(f"<td>{escape(generated[style][index])}</td>" for style in styled)
        rows.append(
            f'<tr class="{"ok" if ok else "bad"}">{image_cell(record.image_path)}'
            f'<td>{escape(caption)}</td>{extra}<td>{escape(record.caption)}</td><td class="mark">{"✓" if ok else "✗"}'
            "</td></tr>"
        )
    failures = sum(gen != r.caption for gen, r in zip(generated["neutral"], records, strict=True))
    sections = ["<h2>Metrics</h2>", metric_table(metrics)]
    if "style_accuracy" in metrics:
        columns = {"style accuracy": metrics["style_accuracy"]}
        columns["content exact match"] = metrics.get("style_content_exact_match", {})
        sections += ["<h2>Styles</h2>", grid_table(columns)]
    if curves is not None and curves.is_file():
        sections += ["<h2>Training</h2>", png_figure(curves, "training curves (log axes for loss and perplexity)")]
    headers = "".join(f"<th>{escape(style)}</th>" for style in styled)
    styles_note = "; the style columns show the captions written on request in each style" if styled else ""
    sections += [
        "<h2>Test images</h2>",
        f"<p>Showing {len(rows)} of {len(records)} test images, failures ({failures}) first. Exact match compares "
        f"the generated (neutral) caption with the canonical reference caption{styles_note}.</p>",
        f"<table><tr><th>image</th><th>generated</th>{headers}<th>reference</th><th></th></tr>{''.join(rows)}</table>",
    ]
    return write_page(path, "captionkit demo: captions of unseen synthetic scenes", sections)
