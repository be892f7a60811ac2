"""One batch captioning job from its options: which inputs this process takes, what a resumed run skips, where
records and attention overlays go, and the summary the command line turns into an exit code.

Steps: check the options; on ``--resume`` check the output and note the images it already holds; count the inputs in
one pass (this shard's, ``--shard`` and/or torchrun; those left); load the model; on ``--resume`` check that the run
asks for the settings the output was begun with, and only then drop its torn last line; caption the rest, reading the
inputs again as a stream. Neither pass holds the inputs: memory does not grow with the number of samples in
collections (only with loose files met and ``--attention-maps``' folder names); the images a resumed output holds
are looked up in an index on disk (:mod:`captionkit.jobs.done_index`).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from captionkit.api import Captioner
from captionkit.attention import check_attention
from captionkit.config import MAX_THREADS
from captionkit.decoding import DecodingConfig
from captionkit.decoding.options import DecodingRequest, decoding_request
from captionkit.errors import CaptionkitError, InputError
from captionkit.files import also_an_input, same_file
from captionkit.hub import DEFAULT_MODEL
from captionkit.jobs.batch import JobSummary, caption_items
from captionkit.jobs.batch_size import choose_batch_size
from captionkit.jobs.done_index import DoneIndex
from captionkit.jobs.earlier_output import output_exists, refuse_to_replace, remove_stale_staging
from captionkit.jobs.inputs import InputImage, iter_inputs
from captionkit.jobs.outputs import (
    FORMATS,
    Record,
    RecordWriter,
    check_appendable,
    discard_output,
    iter_records,
    repair_torn_tail,
)
from captionkit.jobs.overlay_index import read_index
from captionkit.jobs.overlays import overlay_folders, overlay_writer
from captionkit.jobs.pipeline import parse_workers
from captionkit.jobs.run_settings import check_resumed, run_settings, write_settings
from captionkit.jobs.sharding import DistributedEnv, Shard, choose_device, choose_shard, distributed_env
from captionkit.precision import dtype_name
from captionkit.shards import is_container_input
from captionkit.wording import plural, tally

# Batches each decoding worker prepares ahead, at most: far beyond what keeps a GPU fed, and each holds a batch.
MAX_PREFETCH = 1024
# progress(description, total) -> a context giving advance(n); the command line passes a progress bar.
Progress = Callable[[str, int], AbstractContextManager[Callable[[int], None] | None]]


@dataclass(frozen=True)
class CaptionJobOptions:
    """Everything ``captionkit caption`` is told, checked by :meth:`check` (``decoding`` by the model's limits)."""

    inputs: list[str]
    model: str = DEFAULT_MODEL
    # Checked options; the style and prompt are resolved once the model is loaded.
    decoding: DecodingRequest = field(default_factory=decoding_request)
    batch_size: int | None = 8  # None: the most that fit (see jobs.batch_size)
    output: Path | None = None
    fmt: str = "jsonl"
    resume: bool = False
    overwrite: bool = False  # replace an output that holds records (without it, and without resume, refused)
    device: str | None = None
    dtype: str = "fp32"
    workers: str = "0"
    prefetch: int = 2
    shard: str | None = None
    attention_maps: Path | None = None
    engine: str = "local"  # or ray (jobs/ray_engine.py)
    ray_address: str | None = None
    gpus_per_worker: str = "auto"  # a number, or auto: 1 when the Ray cluster has GPUs, else 0
    threads: int | None = None  # torch threads (per Ray actor with --engine ray); None: torch's choice, 1 on Ray

    def check(self) -> None:
        """Raise a :class:`CaptionkitError` naming the option for a value or combination the job cannot run."""
        if self.fmt not in FORMATS:
            raise InputError("--format", f"unknown format {self.fmt!r} (expected one of {', '.join(FORMATS)})")
        if self.fmt == "parquet" and self.output is None:
            raise InputError("--format", "parquet output needs --output (a .parquet file)")
        if self.resume and self.output is None:
            raise CaptionkitError("--resume needs --output (the file to continue)")
        if self.resume and self.overwrite:
            raise InputError("--overwrite", "not with --resume: --resume continues --output, --overwrite replaces it")
        if self.decoding.config.num_return_sequences > 1 and self.fmt == "csv":
            raise InputError(
                "--n-best", "CSV output holds one caption per image; use --format jsonl, json or parquet for several"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError("--batch-size", f"must be at least 1, got {self.batch_size}")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise InputError("--threads", f"must be in [1, {MAX_THREADS}], got {self.threads}")
        if self.prefetch < 1:
            raise InputError("--prefetch", f"must be at least 1, got {self.prefetch}")
        if self.prefetch > MAX_PREFETCH:  # the DataLoader loops prefetch x workers times at the start: a typo hangs
            raise InputError("--prefetch", f"must be at most {MAX_PREFETCH}, got {self.prefetch}")
        if self.engine not in ("local", "ray"):
            raise InputError("--engine", f"unknown engine {self.engine!r} (expected local or ray)")
        if self.engine == "ray" and self.attention_maps is not None:
            raise InputError("--attention-maps", "not available with --engine ray")
        ray_only = {"--ray-address": self.ray_address is not None, "--gpus-per-worker": self.gpus_per_worker != "auto"}
        for flag, given in ray_only.items():
            if self.engine == "local" and given:  # ignored by the local engine: a forgotten --engine ray
                raise InputError(flag, "only with --engine ray")
        if self.engine == "ray":
            from captionkit.jobs.ray_engine import require_ray

            self.ray_actors()
            self.ray_gpus_per_actor()
            require_ray()  # before the output is touched

    def ray_actors(self) -> int | None:
        """``--workers`` with ``--engine ray``: a number of captioner actors, or ``None`` (0 or auto: see
        :func:`~captionkit.jobs.ray_engine.actor_pool`)."""
        text = self.workers.strip()
        if text == "auto" or text == "0":
            return None
        if not text.isdigit():
            raise InputError("--workers", f"expected a number of captioner actors or auto, got {self.workers!r}")
        return int(text)

    def ray_gpus_per_actor(self) -> float | None:
        """``--gpus-per-worker``: a number >= 0, or ``None`` for auto."""
        text = self.gpus_per_worker.strip()
        if text == "auto":
            return None
        try:
            gpus = float(text)
        except ValueError:
            gpus = -1.0
        if not gpus >= 0:
            raise InputError("--gpus-per-worker", f"expected a number >= 0 or auto, got {self.gpus_per_worker!r}")
        return gpus


class CaptionJobInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during captioning, after the output was opened: ``output`` (this process's file, a shard's
    part) holds ``records`` records by then, the earlier ones of a resumed run included, and ``--resume`` goes on."""

    def __init__(self, output: Path | None, records: int, resumed: bool) -> None:
        super().__init__(f"interrupted: {output} holds {records} records")
        self.output, self.records, self.resumed = output, records, resumed


@dataclass
class JobOutcome:
    """What a job did: this run's summary, the errors an interrupted run recorded before, and whether it ran under
    torchrun."""

    summary: JobSummary
    earlier_errors: int
    under_torchrun: bool
    done_before: int = 0  # images of this share an earlier run (``--resume``) had already written
    left_out: int = 0  # samples of the inputs' shards with no image to caption (failed downloads, ...)
    load_seconds: float = 0.0  # loading the model and getting ready (``--batch-size auto``'s probe included)
    caption_seconds: float = 0.0  # from the first batch to the last record written: images / this is the job's rate

    @property
    def already_complete(self) -> bool:
        """A resumed run found nothing left to caption."""
        return self.done_before > 0 and self.summary.captioned + self.summary.errors == 0

    @property
    def partial(self) -> bool:
        """Some images failed. A torchrun process never says so (as ``train`` under torchrun): torchrun would report
        it as a crashed worker and stop the other ranks; the errors are in the output (the part files), and
        ``captionkit merge`` reports them."""
        return not self.under_torchrun and bool(self.summary.errors or self.earlier_errors)


@dataclass(frozen=True)
class _Counts:
    """What one pass over the inputs found: images in all, this share's, those left to caption, this share's
    images an interrupted run recorded as errors (resume does not retry them), and the samples of shards with no
    image to caption, by reason (all shares')."""

    images: int = 0
    mine: int = 0
    todo: int = 0
    earlier_errors: int = 0
    left_out: dict[str, int] = field(default_factory=dict)


@dataclass
class _Plan:
    """This process's share of the job: its shard, its output file, the inputs (read as a stream, never held whole)
    and, on ``--resume``, the images the output holds, with their error records (an index on disk)."""

    dist: DistributedEnv | None
    shard: Shard | None
    target: Path | None
    inputs: list[str]
    done: DoneIndex | None = None
    counts: _Counts = field(default_factory=_Counts)
    records_before: int = 0  # records the output held when a resumed run began
    from_scratch: str = ""  # why ``--resume`` finds nothing to continue: the output "does not exist yet", ...

    def mine(self) -> Iterator[tuple[int, InputImage]]:
        """This share's images with their positions, which index the whole input stream, the same in every shard:
        seeded sampling depends on them."""
        for position, item in enumerate(iter_inputs(self.inputs)):
            if self.shard is None or self.shard.owns(item.key):
                yield position, item

    def todo(self) -> Iterator[tuple[int, Path]]:
        done = self.done
        return ((i, item.path) for i, item in self.mine() if done is None or str(item.path) not in done)

    def count(self) -> _Counts:
        """One pass over the inputs (every container indexed, so a bad one fails before anything is written)."""
        images = mine = todo = errors = 0
        left_out: Counter[str] = Counter()
        for item in iter_inputs(self.inputs, left_out):
            images += 1
            self.check_not_output(item.path)
            if self.shard is None or self.shard.owns(item.key):
                mine += 1
                if self.done is None:
                    todo += 1
                    continue
                name = str(item.path)
                todo += name not in self.done
                errors += self.done.errors(name)
        return _Counts(images, mine, todo, errors, dict(left_out))

    def check_not_output(self, path: Path) -> None:
        """Refuse an input (an image, a list, a shard) that is also the output file: a fresh run deletes the output
        before it captions, and would lose that input with the results."""
        target = self.target
        # The names first: one string comparison per image, a system call only for a namesake.
        if target is not None and path.name == target.name and same_file(path, target):
            raise InputError("--output", also_an_input(target, path))


def run_caption_job(
    options: CaptionJobOptions, progress: Progress | None = None, env: Mapping[str, str] = os.environ
) -> JobOutcome:
    """Run the job ``options`` describe in this process; raises a :class:`CaptionkitError` before captioning anything
    (and before touching the output) when the options, inputs or model cannot be used."""
    options.check()
    with _torch_threads(options.threads if options.engine == "local" else None):
        plan = _plan(options, env)
        try:
            return _run(options, plan, progress)
        finally:
            if plan.done is not None:
                plan.done.close()


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch runs ``threads`` threads inside (None: unchanged); the caller's setting comes back after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(options: CaptionJobOptions, plan: _Plan, progress: Progress | None) -> JobOutcome:
    started = time.perf_counter()
    workers = parse_workers(options.workers, plan.dist.local_world_size if plan.dist else 1)
    captioner = Captioner.from_pretrained(
        options.model, device=choose_device(options.device, plan.dist, options.model), dtype=options.dtype
    )
    config = captioner.resolve_decoding(options.decoding)
    batch_size = options.batch_size
    if batch_size is None:
        batch_size = choose_batch_size(captioner.model, captioner.preprocessing.size, config, captioner.device)
        print(f"--batch-size auto: {batch_size}", file=sys.stderr)
    on_captions = None
    if options.attention_maps is not None:
        check_attention(captioner.model, "--attention-maps")
        indexed = read_index(options.attention_maps)  # earlier runs' folders stay their images'
        folders = overlay_folders((item.path for item in iter_inputs(plan.inputs)), indexed)
        on_captions = overlay_writer(captioner, config, options.attention_maps, folders, indexed)
    if options.engine == "ray":
        from captionkit.jobs.ray_engine import connect

        connect(options.ray_address)  # a wrong --ray-address must not cost the old results either
    if plan.target is not None:
        for line in remove_stale_staging(plan.target, options.fmt):
            print(line, file=sys.stderr)
        request = options.decoding
        # The dtype by its short name: a run begun with --dtype bfloat16 resumes with --dtype bf16.
        dtype = dtype_name(captioner.dtype)
        settings = run_settings(options.model, dtype, request.style, request.prompt, config)
        if options.resume:
            check_resumed(plan.target, options.fmt, settings)
            _drop_torn_tail(plan.target, options.fmt)  # only now: a refused resume leaves the output as it was
        elif options.fmt != "json":
            # Only now that the model loads and takes the settings: a typo in --model must not cost the old results.
            discard_output(plan.target, options.fmt)
        write_settings(plan.target, settings)
    writer = RecordWriter(plan.target, options.fmt, _rewritten(options, plan.target))
    _announce(plan)
    counts = plan.counts
    # Under torchrun, one progress bar per node (local rank 0's): several would overwrite each other.
    show_progress = progress is not None and counts.todo > 0 and (plan.dist is None or plan.dist.local_rank == 0)
    ready = time.perf_counter()
    try:
        with progress("captioning", counts.todo) if show_progress else nullcontext(None) as advance:
            if options.engine == "ray":
                todo = plan.todo()
                summary = _caption_on_ray(options, captioner, config, todo, counts.todo, writer, batch_size, advance)
            else:
                summary = caption_items(
                    captioner,
                    plan.todo(),
                    config,
                    writer,
                    batch_size,
                    advance,
                    workers=workers,
                    prefetch=options.prefetch,
                    on_captions=on_captions,
                )
    except KeyboardInterrupt:
        earlier = 0 if options.fmt == "json" else plan.records_before  # a JSON array is written with its old records
        raise CaptionJobInterrupted(plan.target, earlier + writer.count, options.resume) from None
    finally:
        writer.close()  # an interrupted JSON or Parquet output too: what was captioned is kept, for --resume
    seconds = {"load_seconds": ready - started, "caption_seconds": time.perf_counter() - ready}
    left_out = sum(counts.left_out.values())
    done_before = counts.mine - counts.todo
    return JobOutcome(summary, counts.earlier_errors, plan.dist is not None, done_before, left_out, **seconds)


def _caption_on_ray(
    options: CaptionJobOptions,
    captioner: Captioner,
    config: DecodingConfig,
    todo: Iterator[tuple[int, Path]],
    total: int,
    writer: RecordWriter,
    batch_size: int,
    advance: Callable[[int], None] | None,
) -> JobSummary:
    """The job on Ray: ``--workers N`` captioner actors, ``--gpus-per-worker`` GPUs each (both auto by default)."""
    from captionkit.jobs.ray_engine import RaySettings, caption_on_ray

    actors, gpus = options.ray_actors(), options.ray_gpus_per_actor()
    settings = RaySettings(options.ray_address, actors, gpus, options.dtype, options.threads or 1)
    preprocessing, limits = captioner.preprocessing, captioner.limits
    return caption_on_ray(
        todo,
        total,
        options.model,
        options.device,
        config,
        preprocessing,
        limits,
        writer,
        batch_size,
        settings,
        advance,
    )


def _plan(options: CaptionJobOptions, env: Mapping[str, str]) -> _Plan:
    dist = distributed_env(env)
    shard = choose_shard(options.shard, dist)
    if shard is not None and options.output is None:
        raise CaptionkitError("--shard (or torchrun) needs --output: each shard writes its own part file")
    target = shard.part_path(options.output) if (shard is not None and options.output is not None) else options.output
    plan = _Plan(dist, shard, target, options.inputs)
    for given in options.inputs:
        plan.check_not_output(Path(given))
    _check_overlays_outside_inputs(options.inputs, options.attention_maps)
    _check_overlays_not_output(options.attention_maps, target)
    if options.resume and target is not None:
        plan.done = DoneIndex(_counted(_resumed_records(target, options.fmt), plan))
        if plan.records_before == 0:
            plan.from_scratch = "holds no records yet" if output_exists(target, options.fmt) else "does not exist yet"
    try:
        plan.counts = plan.count()
        if plan.counts.images == 0:  # before the model loads and the output is touched: a wrong path costs nothing
            raise InputError(", ".join(options.inputs), "no images found")
        if target is not None and not options.resume and not options.overwrite:
            refuse_to_replace(target, options.fmt)  # after the pass, which finds an input that is the output
    except BaseException:
        if plan.done is not None:
            plan.done.close()
        raise
    return plan


def _check_overlays_outside_inputs(inputs: list[str], attention_maps: Path | None) -> None:
    """Refuse ``--attention-maps`` inside a folder of inputs: its overlays are PNG files, which the next run over that
    folder (``--resume`` included) would caption as images, and draw overlays of, inside it again."""
    if attention_maps is None:
        return
    maps = attention_maps.resolve()
    for given in inputs:
        folder = Path(given)
        if folder.is_dir() and not is_container_input(given) and maps.is_relative_to(folder.resolve()):
            reason = f"{attention_maps} is inside the input folder {given}: later runs would caption its overlays"
            raise InputError("--attention-maps", f"{reason}; write them outside it")


def _check_overlays_not_output(attention_maps: Path | None, target: Path | None) -> None:
    """Refuse ``--attention-maps`` that names the output file: the job makes that file first, so every overlay
    would fail to be written, and the job still end in success."""
    if attention_maps is not None and target is not None and attention_maps.resolve() == target.resolve():
        raise InputError("--attention-maps", f"{attention_maps} is also --output; write them to a folder of their own")


def _resumed_records(target: Path, fmt: str) -> Iterator[Record]:
    """The records an interrupted run left in ``target`` (a stream), its unfinished last line left out; the file is
    checked fit to append to, and left as it is until the run is known to resume it (:func:`_drop_torn_tail`)."""
    check_appendable(target, fmt)
    return iter_records(target, fmt)[0]


def _counted(records: Iterator[Record], plan: _Plan) -> Iterator[Record]:
    """``records``, counted into ``plan.records_before`` as they are read."""
    for record in records:
        plan.records_before += 1
        yield record


def _drop_torn_tail(target: Path, fmt: str) -> None:
    """Cut the unfinished last line an interrupted run left in ``target`` before appending to it (said on stderr)."""
    torn = repair_torn_tail(target, fmt)
    if torn:
        print(f"{target}: dropped an unfinished last line (interrupted write): {torn[:60]!r}", file=sys.stderr)


def _rewritten(options: CaptionJobOptions, target: Path | None) -> Iterator[Record]:
    """The records a resumed JSON output starts with (JSON is one array, rewritten whole); none for the other
    formats, which are appended to."""
    if options.resume and options.fmt == "json" and target is not None:
        return iter_records(target, "json")[0]
    return iter(())


def _announce(plan: _Plan) -> None:
    counts = plan.counts
    if plan.shard is not None:
        print(f"shard {plan.shard}: {counts.mine} of {counts.images} images -> {plan.target}", file=sys.stderr)
    if plan.from_scratch:
        print(f"resuming: {plan.target} {plan.from_scratch}, captioning from scratch", file=sys.stderr)
    done = counts.mine - counts.todo
    if done:
        print(f"resuming: {done} of {counts.mine} images already done", file=sys.stderr)
    if counts.left_out and (plan.dist is None or plan.dist.rank == 0):  # the same for every share: said once
        reasons = tally(dict(sorted(counts.left_out.items())))
        total = sum(counts.left_out.values())
        print(
            f"left out: {plural(total, 'sample')} of the shards with no image to caption ({reasons})", file=sys.stderr
        )
