"""``captionkit demo``: train a captioner on built-in synthetic scenes and caption scenes it has never seen.

Everything runs offline on a CPU in minutes: the scenes are drawn (``captionkit.data.synthetic``), a small ViT + GPT-2
is trained from scratch with the recipe in ``recipes/demo.yaml``, and the held-out test scenes are captioned
greedily. Results: ``metrics.json`` (machine-readable) and ``report.html`` (self-contained, images inlined).
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from captionkit.config import TrainConfig, apply_overrides, read_yaml, train_config
from captionkit.data.records import CaptionRecord
from captionkit.data.sources import load_records
from captionkit.data.splits import first_caption_per_image, select_split
from captionkit.data.synthetic import SceneOptions, write_synthetic_dataset
from captionkit.demo_data import DemoData
from captionkit.files import write_atomic

RECIPE = "demo.yaml"


def demo_recipe_path() -> Path:
    return Path(str(resources.files("captionkit.recipes").joinpath(RECIPE)))


def demo_config(data_file: Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """The demo's training recipe pointed at ``data_file``, with ``--set``-style overrides."""
    data = read_yaml(demo_recipe_path())
    data = apply_overrides(data, [f"data.train={data_file}", f"data.val={data_file}"])
    return train_config(data, overrides, where=RECIPE)


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
) -> dict[str, Any]:
    """Draw scenes, train, caption the test scenes; write metrics.json and report.html; return the metrics."""
    from captionkit.api import Captioner
    from captionkit.training.loop import train

    output = Path(output)
    data = data or DemoData()
    started = time.perf_counter()
    options = SceneOptions(
        held_out_fraction=data.held_out_fraction, order=data.order, layout=data.layout, grid=data.grid
    )
    data_file = write_synthetic_dataset(
        output / "data", data.num_train, data.num_val, data.num_test, data.seed, data.image_size, options
    )
    data_seconds = time.perf_counter() - started
    extra = [f"train.seed={data.seed}", *overrides, *([f"train.steps={steps}"] if steps is not None else [])]
    config = demo_config(data_file, extra)
    # Always a fresh run: the scenes were just drawn again, so an old checkpoint in the same place is stale.
    result = train(config, output / "model", log=log, resume=False)

    captioner = Captioner.from_pretrained(output / "model")
    records = load_records(data_file)
    tests = first_caption_per_image([r for r in select_split(records, "test") if r.style == "neutral"])
    started_captioning = time.perf_counter()
    # Every test scene in every style the model was trained to write (neutral first).
    generated = {
        style: _caption_all(captioner, tests, captioner.decoding_config(style, max_new_tokens=config.data.max_length))
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
    write_report(output / "report.html", tests, generated, metrics)
    return metrics


def _caption_all(captioner: Any, records: Sequence[CaptionRecord], decoding: Any, batch: int = 64) -> list[str]:
    generated = []
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        captions = captioner.caption_pil(captioner.load_images([r.image_path for r in chunk]), decoding)
        generated.extend(found[0].text for found in captions)
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
        "style_accuracy": {style: round(scores.style_accuracy, 4) for style, scores in table.items()},
        "style_content_exact_match": {
            style: round(scores.content_exact or 0.0, 4) for style, scores in table.items() if style != "neutral"
        },
    }


def _image_data_uri(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        # Scale the tiny scenes up (nearest neighbour keeps them crisp) so a reader can see them.
        buffer = io.BytesIO()
        image.resize((image.width * 3, image.height * 3), Image.Resampling.NEAREST).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_report(
    path: Path,
    records: Sequence[CaptionRecord],
    generated: dict[str, list[str]],
    metrics: dict[str, Any],
    limit: int = 120,
) -> Path:
    """A self-contained HTML page: metrics, then each test image beside its generated captions (one column per style
    the model writes, neutral first) and its reference caption."""
    styled = [style for style in generated if style != "neutral"]
    rows = []
    for index, record in enumerate(records[:limit]):
        caption = generated["neutral"][index]
        ok = caption == record.caption
        extra = "".join(f"<td>{html.escape(generated[style][index])}</td>" for style in styled)
        rows.append(
            f'<tr class="{"ok" if ok else "bad"}"><td><img src="{_image_data_uri(record.image_path)}" alt=""></td>'
            f"<td>{html.escape(caption)}</td>{extra}<td>{html.escape(record.caption)}</td>"
            f"<td>{'✓' if ok else '✗'}</td></tr>"
        )
    summary = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in metrics.items())
    headers = "".join(f"<th>{html.escape(style)}</th>" for style in styled)
    styles_note = "; the style columns show the captions written on request in each style" if styled else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>captionkit demo</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: .3rem .8rem; border-bottom: 1px solid #ddd; text-align: left; }}
img {{ image-rendering: pixelated; }} tr.bad td {{ background: #fdecea; }} tr.ok td:last-child {{ color: #1a7f37; }}
</style></head><body>
<h1>captionkit demo: captions of unseen synthetic scenes</h1>
<ul>{summary}</ul>
<p>Showing {len(rows)} of {len(records)} test images. Exact match compares the generated (neutral) caption with the
canonical reference caption{styles_note}.</p>
<table><tr><th>image</th><th>generated</th>{headers}<th>reference</th><th></th></tr>
{"".join(rows)}
</table></body></html>
"""
    write_atomic(path, page)
    return path
