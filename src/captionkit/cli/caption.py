"""``captionkit caption``: caption files, folders and lists of images into JSONL, CSV or JSON."""

from __future__ import annotations

import dataclasses
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from captionkit.cli._common import DTYPE_HELP, EXIT_OK, EXIT_PARTIAL, fail, progress_bar, quiet_libraries
from captionkit.data.records import STYLES
from captionkit.errors import InputError
from captionkit.hub import DEFAULT_MODEL

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from captionkit.api import Caption, Captioner
    from captionkit.sharding import DistributedEnv, Shard


def caption(
    inputs: Annotated[list[str], typer.Argument(help="Image files, directories (recursive) or .txt lists.")],
    model: Annotated[str, typer.Option(help="Checkpoint directory or Hugging Face hub id.")] = DEFAULT_MODEL,
    beams: Annotated[int, typer.Option(help="Beam width (1 = greedy).")] = 4,
    max_length: Annotated[int, typer.Option(help="At most this many generated tokens.")] = 20,
    length_penalty: Annotated[float, typer.Option(help="Beam score = log-prob / length ** this.")] = 1.0,
    n_best: Annotated[int, typer.Option(help="Captions per image (<= beams, or samples).")] = 1,
    sample: Annotated[bool, typer.Option(help="Sample instead of beam/greedy search.")] = False,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample from the k most likely tokens (0 = all).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling.")] = None,
    style: Annotated[
        str | None, typer.Option(help="positive, negative or neutral: for models trained with style control.")
    ] = None,
    batch_size: Annotated[
        str, typer.Option(help="Images per batch, or auto: the most that fit on the GPU (8 on a CPU).")
    ] = "8",
    output: Annotated[Path | None, typer.Option(help="Output file (default: stdout).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl, csv or json.")] = "jsonl",
    resume: Annotated[bool, typer.Option(help="Skip images already in --output (or the shard's part).")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")] = None,
    dtype: Annotated[str, typer.Option(help=DTYPE_HELP)] = "fp32",
    workers: Annotated[
        str, typer.Option(help="Processes decoding images while the model runs: a number (0 = in-process) or auto.")
    ] = "0",
    prefetch: Annotated[int, typer.Option(help="Batches each worker prepares ahead (bounds memory).")] = 2,
    shard: Annotated[
        str | None,
        typer.Option(help="K/N: caption only shard K (0-based) of N. Under torchrun each rank takes its own shard."),
    ] = None,
    attention_maps: Annotated[
        Path | None,
        typer.Option(help="Write DIR/<image>/<NNN>-<token>.png attention heatmaps of each best caption."),
    ] = None,
) -> None:
    """Caption images; one record per image. Exit 0 when all succeed, 2 when some images failed.

    With --shard K/N (or under torchrun) the run takes a fixed 1/N of the inputs and writes OUTPUT with
    .part-K-of-N before its suffix; `captionkit merge` joins the parts.
    """
    quiet_libraries()
    from captionkit.api import Captioner
    from captionkit.attention import check_attention
    from captionkit.batch import caption_files
    from captionkit.batch_size import choose_batch_size, parse_batch_size
    from captionkit.decoding import DecodingConfig, check_length
    from captionkit.errors import CaptionkitError
    from captionkit.inputs import collect_inputs
    from captionkit.outputs import FORMATS, RecordWriter, read_records, repair_torn_tail
    from captionkit.sharding import distributed_env

    if fmt not in FORMATS:
        fail(f"--format: unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if resume and output is None:
        fail("--resume needs --output (the file to continue)")
    if n_best > 1 and fmt == "csv":
        fail("--n-best: CSV output holds one caption per image; use --format jsonl or json for several")
    if style is not None and style not in STYLES:
        fail(f"--style: unknown style {style!r} (expected one of {', '.join(STYLES)})")
    if prefetch < 1:
        fail(f"--prefetch: must be at least 1, got {prefetch}")
    try:
        dist = distributed_env(os.environ)
        job_shard = _choose_shard(shard, dist)
        if job_shard is not None and output is None:
            fail("--shard (or torchrun) needs --output: each shard writes its own part file")
        target = job_shard.part_path(output) if (job_shard is not None and output is not None) else output
        num_workers = _parse_workers(workers, dist.local_world_size if dist else 1)
        batch = parse_batch_size(batch_size)
        config = DecodingConfig(
            max_new_tokens=max_length,
            num_beams=1 if sample else beams,
            length_penalty=length_penalty,
            num_return_sequences=n_best,
            do_sample=sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )
        # Positions index the whole input list, the same in every shard: seeded sampling depends on them.
        items = collect_inputs(inputs)
        mine = [(i, item) for i, item in enumerate(items) if job_shard is None or job_shard.owns(item.key)]
        existing = []
        if resume and target is not None:
            torn = repair_torn_tail(target, fmt)
            if torn:
                print(f"{target}: dropped an unfinished last line (interrupted write): {torn[:60]!r}", file=sys.stderr)
            existing = read_records(target, fmt)
        done = {record.get("image") for record in existing}
        todo = [(i, item.path) for i, item in mine if str(item.path) not in done]
        captioner = Captioner.from_pretrained(model, device=_choose_device(device, dist), dtype=dtype)
        config = dataclasses.replace(config, start_token_id=captioner.style_start_token(style))
        check_length(captioner.model, config)
        if batch is None:
            batch = choose_batch_size(captioner.model, captioner.preprocessing.size, config, captioner.device)
            print(f"--batch-size auto: {batch}", file=sys.stderr)
        # Only now that the model loads and takes the settings: a typo in --model must not cost the old results.
        if target is not None and not resume and fmt != "json" and target.exists():
            target.unlink()
        on_captions = None
        if attention_maps is not None:
            check_attention(captioner.model, "--attention-maps")
            folders = _overlay_folders([item.path for item in items])
            on_captions = _overlay_writer(captioner, config.start_token_id, attention_maps, folders)
        writer = RecordWriter(target, fmt, existing)
    except CaptionkitError as error:
        fail(str(error))
    if job_shard is not None:
        print(f"shard {job_shard}: {len(mine)} of {len(items)} images -> {target}", file=sys.stderr)
    if len(todo) < len(mine):
        print(f"resuming: {len(mine) - len(todo)} of {len(mine)} images already done", file=sys.stderr)
    # Under torchrun, one progress bar per node (local rank 0's): several would overwrite each other.
    show_progress = dist is None or dist.local_rank == 0
    progress = progress_bar("captioning", len(todo)) if show_progress else nullcontext(None)
    try:
        with progress as advance:
            summary = caption_files(
                captioner,
                [path for _, path in todo],
                config,
                writer,
                batch,
                advance,
                positions=[i for i, _ in todo],
                workers=num_workers,
                prefetch=prefetch,
                on_captions=on_captions,
            )
    finally:
        writer.close()
    # Errors recorded by the interrupted run are part of this output too (resume does not retry them).
    names = {str(item.path) for _, item in mine}
    earlier = sum("error" in record and record.get("image") in names for record in existing)
    before = f" (and {earlier} recorded before resuming)" if earlier else ""
    print(f"captioned {summary.captioned} images, {summary.errors} errors{before}", file=sys.stderr)
    if dist is not None and dist.world_size > 1:
        # torchrun stops every rank when one exits non-zero: a rank with bad images must not cut the others
        # short. Its errors are in its part, and `captionkit merge` exits 2 for them.
        raise typer.Exit(EXIT_OK)
    raise typer.Exit(EXIT_PARTIAL if summary.errors or earlier else EXIT_OK)


def _overlay_folders(paths: list[Path]) -> dict[Path, str]:
    """Each input's attention-map folder name: its stem; inputs that share one get ``stem``, ``stem-2``, ... in input
    order. Made from the whole input list, which every shard, torchrun rank and resumed run sees alike, so no two of
    them give one name to different images."""
    folders: dict[Path, str] = {}
    taken: set[str] = set()
    for path in paths:
        if path in folders:
            continue
        name, count = path.stem, 1
        while name in taken:
            count += 1
            name = f"{path.stem}-{count}"
        folders[path] = name
        taken.add(name)
    return folders


def _overlay_writer(
    captioner: Captioner, start_token_id: int | None, directory: Path, folders: dict[Path, str]
) -> Callable[[list[Path], torch.Tensor, list[list[Caption]]], None]:
    """``caption_files``' callback drawing the best caption's attention maps: DIR/<folders[image]>/<NNN>-<token>.png.

    An overlay that cannot be drawn is reported, not fatal.
    """
    from captionkit.attention import write_overlays
    from captionkit.errors import CaptionkitError

    def draw(paths: list[Path], pixels: torch.Tensor, captions: list[list[Caption]]) -> None:
        best = captioner.add_attention(pixels, [found[:1] for found in captions], start_token_id)
        for path, (caption,) in zip(paths, best, strict=True):
            assert caption.tokens is not None and caption.attention is not None
            try:
                image = captioner.load_images([path])[0]
                write_overlays(image, caption.tokens, caption.attention, directory / folders[path])
            except (CaptionkitError, OSError) as error:
                print(f"{path}: no attention maps: {error}", file=sys.stderr)

    return draw


def _choose_shard(text: str | None, dist: DistributedEnv | None) -> Shard | None:
    """--shard K/N, torchrun's RANK/WORLD_SIZE, or both; None when the run is not split (N = 1 included).

    Both: shard K is split among the W ranks, as shard K*W + RANK of N*W. Each node of a multi-node job can
    then run its own torchrun with --shard NODE/NODES, with no rendezvous between nodes.
    """
    from captionkit.sharding import Shard, parse_shard

    outer = parse_shard(text) if text is not None else Shard(0, 1)
    if dist is not None:
        outer = Shard(outer.index * dist.world_size + dist.rank, outer.count * dist.world_size)
    return outer if outer.count > 1 else None


def _choose_device(device: str | None, dist: DistributedEnv | None) -> str | None:
    """Under torchrun, each process on a node takes its own GPU (cuda:LOCAL_RANK) unless told otherwise."""
    import torch

    if dist is None or device not in (None, "cuda") or not torch.cuda.is_available():
        return device
    return f"cuda:{dist.local_rank % torch.cuda.device_count()}"


def _parse_workers(text: str, processes_per_node: int) -> int:
    """A count >= 0, or auto: this process's share of the CPUs, one left for it, at most 8."""
    if text.strip().lower() == "auto":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(0, min(8, cpus // processes_per_node - 1))
    if text.strip().isdigit():
        return int(text)
    raise InputError("--workers", f"expected a number of processes (0 = none) or auto, got {text!r}")
