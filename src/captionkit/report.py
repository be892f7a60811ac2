"""Self-contained HTML report pages: images inlined as thumbnail data URIs, no script, no CDN, one file to share.

The pieces (a metric table, a per-style table, an image cell, a figure) are put together by each page's writer:
the demo's ``report.html``, ``evaluate --report`` and ``compare --report``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from captionkit.errors import ImageError
from captionkit.files import printable, write_atomic
from captionkit.images import load_image

THUMBNAIL = 160  # pixels on the longer side; smaller images are enlarged (crisply) up to it
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5rem; }
td, th { padding: .3rem .8rem; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
img.thumb { image-rendering: pixelated; } tr.bad td { background: #fdecea; } tr.ok td.mark { color: #1a7f37; }
ul.refs { margin: 0; padding-left: 1rem; color: #555; }
"""


def escape(value: object) -> str:
    """``value`` as HTML text. A file name that is not valid UTF-8 reaches Python with lone surrogates
    (``"caf\\udce9.jpg"``), which no UTF-8 page can hold: they are written as that escape, as the JSON outputs
    write them, instead of failing the whole page."""
    return printable(html.escape(str(value)))


def image_data_uri(path: str | Path, size: int = THUMBNAIL) -> str | None:
    """The image as a thumbnail (``size`` px on its longer side) in a data URI, PNG or JPEG, whichever is smaller:
    a photo's JPEG is a fifth of its PNG, while flat synthetic scenes stay exact and small in PNG. None when the
    image cannot be read."""
    try:
        image = load_image(Path(path))
    except ImageError:
        return None
    scale = size / max(image.size)
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
    encoded = []
    for fmt, options in (("PNG", {}), ("JPEG", {"quality": 85})):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        encoded.append((len(buffer.getvalue()), fmt.lower(), buffer.getvalue()))
    _, kind, data = min(encoded)
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")


# Rows past this many show their image by name, not as an inlined thumbnail (10-20 KB each): a report of 5,000 COCO
# images stays a few MB and opens quickly, with the worst-scoring images, which come first, in view.
MAX_THUMBNAILS = 500


def image_cell(path: str | Path, thumbnail: bool = True) -> str:
    """A table cell with the image inlined as a thumbnail, or (``thumbnail=False``) its file name."""
    if not thumbnail:
        return f'<td class="name" title="{escape(path)}">{escape(Path(path).name)}</td>'
    uri = image_data_uri(path)
    if uri is None:
        return f"<td>(unreadable: {escape(Path(path).name)})</td>"
    return f'<td><img class="thumb" src="{uri}" alt="{escape(Path(path).name)}" title="{escape(path)}"></td>'


def png_figure(path: Path, caption: str) -> str:
    """A PNG file inlined as a figure (the training curves)."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    image = f'<img src="data:image/png;base64,{data}" alt="{escape(caption)}">'
    return f"<figure>{image}<figcaption>{escape(caption)}</figcaption></figure>"


def format_number(value: Any) -> str:
    """Counts with thousands separators, scores to 4 decimals, anything else as text."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return escape(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4f}" if math.isfinite(value) else escape(value)


def metric_table(metrics: Mapping[str, Any]) -> str:
    """One row per scalar metric (name, value); nested tables and lists are left to their own sections."""
    rows = "".join(
        f'<tr><th>{escape(name)}</th><td class="number">{format_number(value)}</td></tr>'
        for name, value in metrics.items()
        if value is None or isinstance(value, int | float | str)
    )
    return f'<table class="metrics">{rows}</table>'


def grid_table(columns: Mapping[str, Mapping[str, Any]], row_label: str = "style") -> str:
    """A table with one row per style (or model) and one column per metric: ``columns`` is metric -> row -> value."""
    names = list(dict.fromkeys(row for values in columns.values() for row in values))
    head = "".join(f"<th>{escape(name)}</th>" for name in columns)
    rows = "".join(
        f"<tr><th>{escape(name)}</th>"
        + "".join(f'<td class="number">{format_number(values.get(name, "-"))}</td>' for values in columns.values())
        + "</tr>"
        for name in names
    )
    return f'<table class="grid"><tr><th>{escape(row_label)}</th>{head}</tr>{rows}</table>'


def references_list(references: Iterable[str]) -> str:
    return '<ul class="refs">' + "".join(f"<li>{escape(r)}</li>" for r in references) + "</ul>"


def write_page(path: str | Path, title: str, sections: Sequence[str]) -> Path:
    page = (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n<h1>{escape(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
    path = Path(path)
    write_atomic(path, page)
    return path


def write_evaluation_report(path: str | Path, results: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any]) -> Path:
    """``evaluate --report``: the metric table, then each image with its caption, references and per-image scores,
    worst CIDEr-D first when it was computed (unreadable images before all). Results in several styles
    (``--as-validation`` of a style model: one caption per image and style) get a style column."""
    scored = [r for r in results if "caption" in r]
    names = list(dict.fromkeys(name for r in scored for name in r.get("metrics", {})))
    failed = [r for r in results if "caption" not in r]
    scored.sort(key=lambda r: r.get("metrics", {}).get("CIDEr", 0.0))
    styled = any("style" in r for r in scored)
    head = ("<th>style</th>" if styled else "") + "".join(f"<th>{escape(name)}</th>" for name in names)
    span = len(names) + 2 + styled
    rows = [
        f'<tr class="bad"><td>{escape(r["image"])}</td><td colspan="{span}">{escape(r.get("error"))}</td></tr>'
        for r in failed
    ]
    for row, result in enumerate(scored):
        style = f"<td>{escape(result.get('style', '-'))}</td>" if styled else ""
        scores = result.get("metrics", {})
        cells = "".join(f'<td class="number">{format_number(scores.get(n, "-"))}</td>' for n in names)
        picture = image_cell(result["image"], row < MAX_THUMBNAILS)
        rows.append(
            f'<tr data-image-id="{escape(result["image_id"])}">{picture}'
            f"<td>{escape(result['caption'])}</td>"
            f"<td>{references_list(result.get('references', ()))}</td>{style}{cells}</tr>"
        )
    order = "worst CIDEr-D first" if "CIDEr" in names else "in input order (no CIDEr-D to sort by)"
    images = len({r["image_id"] for r in scored})
    shown = f"{len(scored)} captions of {images} images (one per style)" if styled else f"{len(scored)} images"
    intro = (
        f"<p>{shown}, {order}"
        + (f"; {len(failed)} could not be read (listed first)" if failed else "")
        + _thumbnails_note(len(scored))
        + ". Per-image scores are each image's caption against that image's references.</p>"
    )
    table = f"<table><tr><th>image</th><th>caption</th><th>references</th>{head}</tr>{''.join(rows)}</table>"
    sections = ["<h2>Metrics</h2>", metric_table(metrics), *metric_details(metrics), intro, table]
    return write_page(path, "captionkit evaluation", sections)


#: Tables of a table per row (metric -> value for each domain or style) in an evaluation's metrics: their titles.
_PER_ROW = {"domains": ("Per domain", "domain"), "styles": ("Per style", "style")}


def metric_details(metrics: Mapping[str, Any]) -> list[str]:
    """What :func:`metric_table` leaves out of an evaluation's metrics, so that a page shared alone still says it:
    its notes (a caption given to every image, a metric left out), what each figure is computed over, the metrics
    per domain (nocaps) or per style (``--as-validation``), and any other table of figures (``logged_validation``)."""
    sections = []
    for key, value in metrics.items():
        if key == "notes" and isinstance(value, list) and value:
            sections += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{escape(note)}</li>" for note in value) + "</ul>"]
        elif key == "computed_over" and isinstance(value, Mapping) and value:
            rows = "".join(f"<tr><th>{escape(name)}</th><td>{escape(text)}</td></tr>" for name, text in value.items())
            sections += ["<h2>Computed over</h2>", f'<table class="computed-over">{rows}</table>']
        elif isinstance(value, Mapping) and value and all(isinstance(row, Mapping) for row in value.values()):
            title, label = _PER_ROW.get(key, (key, key))
            sections += [f"<h2>{escape(title)}</h2>", grid_table(_by_metric(value), row_label=label)]
        elif isinstance(value, Mapping) and value:
            sections += [f"<h2>{escape(key)}</h2>", metric_table(value)]
    return sections


def _by_metric(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """row -> metric -> value as metric -> row -> value (what :func:`grid_table` takes), scalars only."""
    columns: dict[str, dict[str, Any]] = {}
    for row, values in rows.items():
        for name, value in values.items():
            if value is None or isinstance(value, int | float | str):
                columns.setdefault(name, {})[row] = value
    return columns


def write_comparison_report(
    path: str | Path,
    records: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    references: Mapping[str, Sequence[str]] | None = None,
    scores: Mapping[str, Mapping[str, float]] | None = None,
    per_image: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """``compare --report``: each image with every model's caption; with ``references`` (image path -> captions),
    also the references, each caption's CIDEr-D (``per_image``: image path -> model -> score) and the corpus metric
    table (``scores``: metric -> model -> value), images where some model scores worst first."""
    per_image = per_image or {}
    failed = [r for r in records if "error" in r]
    worst = {image: min(by_model.values()) for image, by_model in per_image.items()}
    shown = sorted((r for r in records if "error" not in r), key=lambda r: worst.get(r["image"], 0.0))
    span = len(names) + (references is not None)
    rows = [
        f'<tr class="bad"><td>{escape(r["image"])}</td><td colspan="{span}">{escape(r["error"])}</td></tr>'
        for r in failed
    ]
    for row, record in enumerate(shown):
        image = record["image"]
        cells = "".join(_caption_cell(record["captions"][name], per_image.get(image, {}).get(name)) for name in names)
        refs = f"<td>{references_list(references.get(image, ()))}</td>" if references is not None else ""
        rows.append(f'<tr data-image="{escape(image)}">{image_cell(image, row < MAX_THUMBNAILS)}{cells}{refs}</tr>')
    head = "".join(f"<th>{escape(name)}</th>" for name in names)
    head += "<th>references</th>" if references is not None else ""
    sections = []
    if scores:
        sections += ["<h2>Metrics</h2>", grid_table(scores, row_label="model")]
    order = "images where some model scores worst first" if per_image else "in input order"
    unread = f"; {len(failed)} could not be read (listed first)" if failed else ""
    sections += [
        f"<p>{len(shown)} images, {order}{unread}{_thumbnails_note(len(shown))}.</p>",
        f"<table><tr><th>image</th>{head}</tr>{''.join(rows)}</table>",
    ]
    return write_page(path, "captionkit comparison", sections)


def _thumbnails_note(rows: int) -> str:
    """What the page says when rows past :data:`MAX_THUMBNAILS` show their images by name."""
    return f"; thumbnails of the first {MAX_THUMBNAILS:,}, the others by name" if rows > MAX_THUMBNAILS else ""


def _caption_cell(caption: str, cider: float | None) -> str:
    score = f' <span class="number">(CIDEr-D {format_number(cider)})</span>' if cider is not None else ""
    return f"<td>{escape(caption)}{score}</td>"
