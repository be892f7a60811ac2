"""Typed configs: dataclasses filled from YAML recipes and ``--set key=value`` overrides.

A recipe lists only what differs from the defaults. It is a YAML file, or one that ships in the package
(captionkit/recipes/NAME.yaml) named by NAME alone; a file on disk wins over a packaged recipe of the same name. It
may name a base recipe with ``_base_: other.yaml`` (relative to the recipe's directory, else a packaged recipe's
name); the recipe's keys override the base's, section by section. Unknown keys and values of the wrong type are
errors that name the key, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from captionkit.data.splits import MAX_SEED
from captionkit.errors import ConfigError, first_line
from captionkit.wording import closest

# The most torch threads a setting may ask for: beyond every machine's cores, and far below the thousands at which
# OpenMP fails to start its threads (a crash, or a tokenizers panic, instead of a message).
MAX_THREADS = 1024

T = TypeVar("T")


@dataclass(frozen=True)
class ModelSection:
    family: str = "vit-gpt2"
    # A registry preset (tiny, small, base) for a model trained from scratch ...
    preset: str = "small"
    # ... or a checkpoint to fine-tune: a local directory or a hub id. Overrides `preset` when set.
    pretrained: str | None = None
    # Preset fields to change, e.g. {decoder_layers: 4}; unknown fields are errors.
    overrides: dict[str, Any] = field(default_factory=dict)
    # How a new model's encoder position embeddings start: "random" (the library's init) or "sincos" (2-D table).
    position_init: str = "random"
    # ... or pretrained parts to start a new model from (a hub id or a directory in the hub layout): a vision
    # encoder and a GPT-2-family decoder (see README "Starting points"). The preset is then unused.
    encoder: str | None = None
    decoder: str | None = None
    # BLIP's conditional fine-tuning: text every caption follows (BLIP's own fine-tune: "a picture of"), fed after the
    # start token and kept out of the loss; saved with the model, whose captions then continue it.
    prompt: str | None = None

    def __post_init__(self) -> None:
        if self.pretrained and (self.encoder or self.decoder):
            raise ConfigError("model.pretrained", "a whole checkpoint or pretrained parts (model.encoder/decoder)")
        # Checked as the recipe is read, so that a typo fails before the data is (and is blamed on --set or the file).
        from captionkit.models.registry import POSITION_INITS, get_family

        family = get_family(self.family)
        if not (self.pretrained or self.encoder or self.decoder) and self.preset not in family.presets:
            known = ", ".join(family.presets)
            raise ConfigError("model.preset", f"unknown {self.family} preset {self.preset!r} (known: {known})")
        if self.position_init not in POSITION_INITS:
            known = ", ".join(POSITION_INITS)
            raise ConfigError("model.position_init", f"unknown {self.position_init!r} (known: {known})")


@dataclass(frozen=True)
class TokenizerSection:
    # Used only when no pretrained tokenizer is given: a byte-level BPE trained on the training captions.
    vocab_size: int = 4000
    lowercase: bool = True
    # A directory or hub id with tokenizer files; defaults to `model.pretrained`'s tokenizer, or `model.decoder`'s.
    pretrained: str | None = None

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ConfigError("tokenizer.vocab_size", f"must be at least 1, got {self.vocab_size}")


@dataclass(frozen=True)
class DataSection:
    # A dataset spec (a file or directory; see README "Data"), or a list of them read as one dataset, e.g. COCO
    # captions (neutral) and SentiCap (positive/negative) for style control.
    train: str | list[str] = ""
    # Validation data (a spec or a list); when empty, `val_fraction` of the training images (split by image,
    # seeded) is held out.
    val: str | list[str] = ""
    val_fraction: float = 0.05
    # Longest caption in tokens, bos/eos included; longer ones are truncated.
    max_length: int = 40
    # Keep decoded, preprocessed images in memory (small datasets such as the synthetic scenes).
    cache_images: bool = False
    # Use only the first caption of each image (canonical captions make a small task learnable quickly).
    first_caption_only: bool = False
    # Processes that decode training images ahead of the loop (0: in the training process).
    workers: int = 0
    # Training from WebDataset/Parquet shards: each reading process shuffles its samples through a buffer of this
    # many (memory: this many records, never the whole set).
    shuffle_buffer: int = 1000
    # Style control: the caption styles to train (neutral, positive, negative) and their shares of the training
    # samples, e.g. {neutral: 0.5, positive: 0.25, negative: 0.25}. Each style gets a decoder start token, so the
    # model writes the style it is asked for. Empty: no style control (every caption trains as a plain caption).
    styles: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from captionkit.data.styles import check_style_shares, named_style_shares

        # Style names in any case ({Positive: 0.5}), as a data file's style column and --style take them.
        object.__setattr__(self, "styles", named_style_shares(self.styles))
        check_style_shares(self.styles)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("data.val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        if self.max_length < 3:
            raise ConfigError("data.max_length", f"must be at least 3 (start, one token, eos), got {self.max_length}")
        if self.workers < 0:
            raise ConfigError("data.workers", f"must be 0 or more, got {self.workers}")
        if self.shuffle_buffer < 1:
            raise ConfigError("data.shuffle_buffer", f"must be 1 or more, got {self.shuffle_buffer}")


@dataclass(frozen=True)
class StageSection:
    """One stage of staged unfreezing: train only the named parameter groups until ``until_step``."""

    # The stage lasts while step < until_step; None: until the end of the run (only the last stage).
    until_step: int | None = None
    # Parameter groups the model names (vit-gpt2: encoder, embeddings, cross_attention, decoder), or "all".
    train: list[str] = field(default_factory=lambda: ["all"])


@dataclass(frozen=True)
class ScstSection:
    """Self-critical sequence training (``train.objective: scst``); see captionkit.training.scst."""

    # Captions sampled per image; the "mean" baseline (each sample's: the mean reward of the image's other
    # samples) needs at least 2, the "greedy" baseline (the reward of the image's greedy caption) at least 1.
    num_samples: int = 5
    baseline: str = "mean"
    # Longest sampled caption in generated tokens, eos included.
    max_new_tokens: int = 16
    temperature: float = 1.0
    # Subtracted from the reward of a sample cut at max_new_tokens (guards against long captions that game CIDEr).
    unfinished_penalty: float = 0.0
    # Weight of a bonus on the policy's mean entropy along the samples (guards against collapse).
    entropy_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.baseline not in SCST_BASELINES:
            raise ConfigError("train.scst.baseline", f"unknown {self.baseline!r} (known: {', '.join(SCST_BASELINES)})")
        least = 2 if self.baseline == "mean" else 1
        if self.num_samples < least:
            raise ConfigError(
                "train.scst.num_samples",
                f"must be at least {least} with the {self.baseline!r} baseline, got {self.num_samples}",
            )
        if self.max_new_tokens < 1:
            raise ConfigError("train.scst.max_new_tokens", f"must be at least 1, got {self.max_new_tokens}")
        # Sampling divides the logits by it: 0 or inf makes every sample greedy or uniform, nan makes them NaN.
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError("train.scst.temperature", f"must be a finite number > 0, got {self.temperature}")
        for key in ("unfinished_penalty", "entropy_weight"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) >= 0):
                raise ConfigError(f"train.scst.{key}", f"must be a finite number >= 0, got {getattr(self, key)}")


SCST_BASELINES = ("mean", "greedy")
OBJECTIVES = ("xe", "scst")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")
TRAIN_DEVICES = ("auto", "cpu", "cuda")
BEST_METRICS = ("val_loss", "val_perplexity", "val_cider")


@dataclass(frozen=True)
class TrainSection:
    # "xe": cross-entropy with teacher forcing on each caption. "scst": self-critical sequence training with a
    # CIDEr-D reward, batches of images (batch_size images, each with all its training references), usually
    # started from a cross-entropy model (`model.pretrained`).
    objective: str = "xe"
    scst: ScstSection = field(default_factory=ScstSection)
    steps: int = 1000
    # Samples per process per micro-batch; one optimizer step sees batch_size * grad_accumulation * processes.
    batch_size: int = 32
    grad_accumulation: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    # After warm-up: "cosine" or "linear" decay from `lr` to `lr * min_lr_ratio` at the last step, or "constant".
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    # Clip the gradient norm to this (0: no clipping).
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    # fp32, or autocast to bf16 (CPU and GPU) or fp16 (GPU only, with a gradient scaler).
    precision: str = "fp32"
    # Staged unfreezing, in order; empty: everything trains from the first step.
    stages: list[StageSection] = field(default_factory=list)
    # When no stage trains the encoder, encode each training image once and train from the cached features.
    cache_features: bool = True
    eval_every: int = 200
    # Batches of validation data per evaluation (0: the whole validation set).
    eval_batches: int = 0
    # Greedy-decode this many validation images per evaluation for CIDEr-D (0: no CIDEr-D).
    eval_images: int = 64
    # The validation metric that picks the best checkpoint and drives early stopping.
    best_metric: str = "val_loss"
    # Stop after this many evaluations without a better best_metric (0: never stop early).
    patience: int = 0
    # Write a resumable checkpoint every N optimizer steps, and at the last, into OUTPUT/checkpoints (0: only when
    # stopped by SIGTERM or Ctrl-C).
    checkpoint_every: int = 500
    # Periodic checkpoints to keep (the newest ones); the best one is kept apart.
    keep_checkpoints: int = 2
    # Also log to TensorBoard (OUTPUT/tensorboard) when the `tensorboard` extra is installed.
    tensorboard: bool = True
    seed: int = 0
    log_every: int = 20
    # Stop after this many seconds of training even if `steps` is not reached (0: no limit).
    max_seconds: float = 0.0
    threads: int = 0
    # "auto": the GPU when there is one, else the CPU; "cpu" even where a GPU is present; "cuda" or fail.
    device: str = "auto"
    # torch.compile the trained module (first steps slower while it compiles; pays off on long GPU runs).
    compile: bool = False
    # Deterministic algorithms (cuDNN, cuBLAS): a resumed run on a GPU repeats the uninterrupted one exactly, a
    # little slower. The CPU path is deterministic without it.
    deterministic: bool = False

    def __post_init__(self) -> None:
        for key, value, choices in (
            ("objective", self.objective, OBJECTIVES),
            ("schedule", self.schedule, SCHEDULES),
            ("precision", self.precision, PRECISIONS),
            ("best_metric", self.best_metric, BEST_METRICS),
            ("device", self.device, TRAIN_DEVICES),
        ):
            if value not in choices:
                raise ConfigError(f"train.{key}", f"unknown {value!r} (known: {', '.join(choices)})")
        for key in ("steps", "batch_size", "grad_accumulation", "eval_every", "log_every", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}", f"must be at least 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "eval_batches", "eval_images", "patience", "checkpoint_every", "threads"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}", f"must be 0 or more, got {getattr(self, key)}")
        if self.threads > MAX_THREADS:
            raise ConfigError("train.threads", f"must be at most {MAX_THREADS}, got {self.threads}")
        for key in ("lr", "weight_decay", "max_seconds", "min_lr_ratio", "grad_clip"):  # grad_clip 0: no clipping
            if not getattr(self, key) >= 0:
                raise ConfigError(f"train.{key}", f"must be 0 or more, got {getattr(self, key)}")
        for key in ("lr", "weight_decay"):  # an infinite step turns every weight into NaN at the first update
            if not math.isfinite(getattr(self, key)):
                raise ConfigError(f"train.{key}", f"must be a finite number, got {getattr(self, key)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError("train.label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.seed <= MAX_SEED:  # numpy's generator, seeded from it, takes no other
            raise ConfigError("train.seed", f"must be in [0, {MAX_SEED}], got {self.seed}")
        if self.best_metric == "val_cider" and not self.eval_images:
            raise ConfigError("train.best_metric", "val_cider needs train.eval_images > 0")
        _check_optimizer_settings(self)
        _check_stages(self.stages)


def _check_optimizer_settings(train: TrainSection) -> None:
    """AdamW's betas and the schedule's floor: torch refuses betas outside [0, 1) with a traceback, and a floor above
    ``lr`` would make the "decay" climb."""
    for index, beta in enumerate(train.betas):
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"train.betas[{index}]", f"must be in [0, 1), got {beta}")
    if train.min_lr_ratio > 1.0:
        reason = f"must be at most 1 (the schedule decays from lr to lr x min_lr_ratio), got {train.min_lr_ratio}"
        raise ConfigError("train.min_lr_ratio", reason)


def _check_stages(stages: list[StageSection]) -> None:
    previous = 0
    for index, stage in enumerate(stages):
        where = f"train.stages[{index}]"
        if not stage.train:
            raise ConfigError(f"{where}.train", "names no parameter group")
        if stage.until_step is None:
            if index != len(stages) - 1:
                raise ConfigError(f"{where}.until_step", "only the last stage may run to the end")
        elif stage.until_step <= previous:
            raise ConfigError(f"{where}.until_step", f"must be greater than {previous}, got {stage.until_step}")
        else:
            previous = stage.until_step
    last = len(stages) - 1
    if stages and stages[last].until_step is not None:
        # The last stage runs on to the end of the run whatever its until_step says: an end that ends nothing.
        raise ConfigError(
            f"train.stages[{last}].until_step",
            "the last stage runs to the end of the run: leave until_step out, or add a stage for what trains after",
        )


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)

    def __post_init__(self) -> None:
        # A pretrained decoder reads its own tokenizer (GPT-2's BPE): its token ids are the decoder's rows.
        if self.model.decoder and not self.tokenizer.pretrained:
            object.__setattr__(self, "tokenizer", dataclasses.replace(self.tokenizer, pretrained=self.model.decoder))

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(item) for item in value]
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, recursively; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError(where, _not_a_section(data))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", _unknown_key_reason(unknown[0], sorted(fields)))
    values = {name: _coerce(hints[name], data[name], f"{where}.{name}") for name in data}
    return cls(**values)


def _not_a_section(value: Any) -> str:
    return f"expected a mapping, got {type(value).__name__}"


def _unknown_key_reason(key: str, known: list[str]) -> str:
    close = closest(key, known)
    hint = f"did you mean {close!r}? " if close else ""
    return f"unknown key ({hint}known: {', '.join(known)})"


def _none_of(errors: list[ConfigError], value: Any) -> str:
    """One reason for a value that fits none of a union's types: "expected a string or a list, got None"."""
    got = f", got {value!r}"
    if all(error.reason.startswith("expected ") and error.reason.endswith(got) for error in errors):
        return " or ".join(error.reason.removesuffix(got) for error in errors).replace(" or expected ", " or ") + got
    return "; ".join(error.reason for error in errors)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        errors: list[ConfigError] = []
        for option in options:
            try:
                return _coerce(option, value, where)
            except ConfigError as error:
                errors.append(error)
        # An option whose shape the value has (a list) but with a bad item inside: that item is what is wrong.
        inside = [error for error in errors if error.source != where]
        if inside:
            raise inside[0]
        raise ConfigError(where, _none_of(errors, value))
    if hint is Any:
        return value
    if origin is dict:
        if value is None:  # `key:` left empty in YAML, or --set key=null: no entries
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(where, f"expected a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(where, f"expected a list, got {value!r}")
        return [_coerce(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(where, f"expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(arg, item, f"{where}[{i}]") for i, (arg, item) in enumerate(zip(args, value, strict=True)))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(where, f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(where, f"expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML reads `3e-4` (no dot) as a string; accept it as the number it plainly is.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(where, f"expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(where, f"expected a string, got {value!r}")
    raise ConfigError(where, f"unsupported config type {hint!r}")


# The recipes that ship in the package (captionkit/recipes/NAME.yaml), named NAME on the command line.
RECIPES_PACKAGE = "captionkit.recipes"
RECIPE_SUFFIX = ".yaml"
# The data keys that recipes fill with placeholders (data/coco/...) for the user to point at their copy.
PLACEHOLDER_KEYS = ("train", "val")


def packaged_recipes() -> dict[str, Path]:
    """The packaged recipes, name (the file name without ``.yaml``) -> file, in name order."""
    directory = Path(str(resources.files(RECIPES_PACKAGE)))
    recipes = {path.name.removesuffix(RECIPE_SUFFIX): path for path in directory.glob(f"*{RECIPE_SUFFIX}")}
    return dict(sorted(recipes.items()))


def resolve_recipe(recipe: str | Path) -> Path:
    """The file a recipe argument names: a file on disk as given (it wins over a packaged recipe of the same name:
    an edited copy is used), else the packaged recipe a bare name names (``coco-vit-gpt2`` or
    ``coco-vit-gpt2.yaml``, from any directory); a ConfigError listing the packaged recipes otherwise."""
    path = Path(recipe)
    if path.is_file():
        return path
    packaged = _packaged_recipe(path)
    if packaged is not None:
        return packaged
    if path.is_dir():
        raise ConfigError(path, "is a directory, not a config file")
    raise ConfigError(path, _no_recipe_reason(path))


def _packaged_recipe(path: Path) -> Path | None:
    """The packaged recipe that ``path`` names if it is a bare name (no directory part), else None."""
    if path.parent != Path("."):
        return None
    return packaged_recipes().get(path.name.removesuffix(RECIPE_SUFFIX))


def _no_recipe_reason(path: Path) -> str:
    """Why ``path`` names no recipe: a bare name lists the packaged recipes (the closest first); a path whose
    file name is a packaged recipe's (``configs/demo.yaml``, from before they shipped) says how to name it."""
    names = list(packaged_recipes())
    name = path.name.removesuffix(RECIPE_SUFFIX)
    if path.parent != Path("."):
        packaged = f" (a packaged recipe has its name: {name}, without a directory)" if name in names else ""
        return f"no such config file{packaged}"
    close = closest(name, names)
    hint = f"did you mean {close!r}? " if close else ""
    return f"no such config file or packaged recipe ({hint}recipes: {', '.join(names)})"


def is_packaged_recipe(path: Path) -> bool:
    """Whether ``path`` is one of the packaged recipes' files."""
    return path.resolve() in {recipe.resolve() for recipe in packaged_recipes().values()}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe (a file, or a packaged recipe's name: see :func:`resolve_recipe`), following ``_base_``
    chains; sections merge key by key."""
    return _merged(_read_chain(resolve_recipe(path), seen=()))


def _merged(chain: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for _, data in chain:
        result = merge(result, data)
    return result


def _read_chain(path: Path, seen: tuple[Path, ...]) -> list[tuple[Path, dict[str, Any]]]:
    """The recipe at ``path`` and its ``_base_`` recipes, each file with its own keys, the deepest base first."""
    if not path.is_file():
        raise ConfigError(path, "no such config file")
    if path.resolve() in seen:
        raise ConfigError(path, "_base_ chain loops back to itself")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_RecipeLoader) or {}
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError, ValueError) as error:
        raise ConfigError(path, f"invalid YAML ({_yaml_failure(error)})") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "a recipe must be a mapping of sections")
    base = data.pop("_base_", None)
    if base is None:
        return [(path, data)]
    return [*_read_chain(_base_path(path, str(base)), (*seen, path.resolve())), (path, data)]


def _base_path(recipe: Path, base: str) -> Path:
    """The file of ``_base_: base`` in ``recipe``: a path relative to the recipe's directory (so a packaged
    recipe's base is a packaged recipe), else the packaged recipe a bare name names (so that a copy of one, or a
    user's recipe, can build on a packaged one); a ConfigError naming the missing file otherwise."""
    path = recipe.parent / base
    if path.is_file():
        return path
    packaged = _packaged_recipe(Path(base))
    if packaged is not None:
        return packaged
    raise ConfigError(path, _no_recipe_reason(Path(base)).replace(" or packaged recipe", ""))


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping that gives one key twice."""


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: it keeps the last silently, so a recipe that
    sets ``lr`` twice would train with whichever comes later."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may repeat keys on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # PyYAML refuses it below
            if key in seen:
                line = key_node.start_mark.line + 1
                raise _DuplicateKeyError(None, None, f"duplicate key {key!r} on line {line}")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_failure(error: Exception) -> str:
    """Why PyYAML failed, in one line: beyond its syntax errors, it recurses once per nesting level and hands a
    long integer to int(), which refuses more than sys.get_int_max_str_digits() digits."""
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return first_line(error)


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge: mappings merge key by key, anything else in ``override`` replaces."""
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


def apply_overrides(data: Mapping[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings; each value is parsed as YAML (``3e-4``, ``true``, ``[1, 2]``).

    The value replaces what the recipe had at that key, a mapping included: ``--set 'data.styles={}'`` turns style
    control off rather than merging nothing into the recipe's styles.
    """
    result = dict(data)
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(assignment, "expected --set key=value (e.g. --set train.lr=3e-4)")
        try:
            value = yaml.load(text, Loader=_RecipeLoader)
        except _DuplicateKeyError as error:  # valid YAML, so not text: the same mistake as in a recipe
            raise ConfigError(f"--set {key.strip()}", f"invalid value ({error.problem})") from None
        except yaml.YAMLError:
            value = text
        except (RecursionError, ValueError) as error:
            raise ConfigError(f"--set {key.strip()}", f"invalid value ({_yaml_failure(error)})") from None
        result = _assign(result, key.strip().split("."), value)
    return result


def _assign(data: Mapping[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """A copy of ``data`` with ``value`` at ``path`` (sections created as needed; the copy shares nothing)."""
    result = dict(data)
    head, *rest = path
    if rest:
        section = result.get(head)
        result[head] = _assign(section if isinstance(section, Mapping) else {}, rest, value)
    else:
        result[head] = value
    return result


def load_train_config(path: str | Path | None, assignments: list[str] | None = None) -> TrainConfig:
    """A TrainConfig from a recipe (a file, or a packaged recipe's name) or the defaults, plus ``--set``
    overrides."""
    data = read_yaml(path) if path is not None else {}
    return train_config(data, assignments or [], where=str(path) if path is not None else "config")


def load_recipe(recipe: str | Path, assignments: Sequence[str] = ()) -> TrainConfig:
    """What ``captionkit train RECIPE --set ...`` trains: :func:`load_train_config`'s TrainConfig, once the data
    paths still at a packaged recipe's placeholders (``data/coco/...``: set neither by a ``--set`` nor by the
    user's own YAML) are found to exist; a ConfigError naming the key and how to change it otherwise."""
    chain = _read_chain(resolve_recipe(recipe), seen=())
    config = train_config(_merged(chain), assignments, where=str(recipe))
    overridden = _keys(assignments)
    for key in _placeholder_keys(chain):
        if not any(key == other or key.startswith(f"{other}.") for other in overridden):
            _check_placeholder(key, getattr(config.data, key.removeprefix("data.")))
    if "model.pretrained" not in overridden and "model" not in overridden:
        _check_pretrained_placeholder(chain, config.model.pretrained)
    return config


def _placeholder_keys(chain: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """The data keys (``data.val``) whose value comes from a packaged recipe in ``chain``: the last file that sets
    one decides."""
    return [f"data.{name}" for name in PLACEHOLDER_KEYS if _set_by_packaged_recipe(chain, "data", name)]


def _set_by_packaged_recipe(chain: list[tuple[Path, dict[str, Any]]], section: str, name: str) -> bool:
    """Whether the last file in ``chain`` that sets ``section.name`` is a packaged recipe."""
    setters = [path for path, data in chain if isinstance(data.get(section), Mapping) and name in data[section]]
    return bool(setters) and is_packaged_recipe(setters[-1])


def _check_pretrained_placeholder(chain: list[tuple[Path, dict[str, Any]]], value: str | None) -> None:
    """A ConfigError naming ``model.pretrained`` when a packaged recipe set it to the run directory of the recipe
    before it (``./runs/scenes-xe``: written as a path, never a hub id) and there is none: else the loader takes
    the missing directory for a hub id and says the hub cannot be reached."""
    if not value or not value.startswith("./") or not _set_by_packaged_recipe(chain, "model", "pretrained"):
        return
    if not Path(value).is_dir():
        reason = f"{value}: no such directory (the recipe's placeholder: --set model.pretrained=DIR, a finished run)"
        raise ConfigError("model.pretrained", reason)


def _check_placeholder(key: str, value: str | list[str]) -> None:
    """A ConfigError naming ``key`` when a dataset spec of its placeholder ``value`` names no file (or no image
    root); the reader's own words, with how to point the key elsewhere."""
    from captionkit.data.sources import parse_spec
    from captionkit.shards import is_container_input

    for spec in [value] if isinstance(value, str) else value:
        if not spec:
            continue
        parsed = parse_spec(spec)
        missing_roots = [root for root in parsed.image_roots if not root.is_dir()]
        if not parsed.path.exists() and not is_container_input(parsed.path):
            problem = f"{parsed.path}: no such file or directory"
        elif missing_roots:
            problem = f"{missing_roots[0]}: image root is not a directory"
        else:
            continue
        raise ConfigError(key, f"{problem} ({_placeholder_hint(key, value)})")


def _placeholder_hint(key: str, value: str | list[str]) -> str:
    hint = f"the recipe's placeholder: --set {key}=PATH"
    if isinstance(value, list):
        hint += f" or --set '{key}=[PATH, PATH]'"
    if key == "data.val":
        hint += f", or --set \"{key}=''\" to hold out data.val_fraction of data.train"
    return hint


def train_config(data: Mapping[str, Any], assignments: Sequence[str], where: str) -> TrainConfig:
    """A TrainConfig from recipe ``data`` (read from ``where``) plus ``--set`` overrides; an error in a key an
    override set names ``--set KEY``, not the recipe."""
    merged = dict(data)
    for index, assignment in enumerate(assignments):
        try:
            _check_sections_on_the_way(merged, assignment, assignments[:index], where)
        except ConfigError as error:
            raise _in_file(error, where) from None
        merged = apply_overrides(merged, [assignment])
    try:
        return from_dict(TrainConfig, merged, where=where)
    except ConfigError as error:
        blamed = _blame_override(error, where, assignments)
        sections = {section.name for section in dataclasses.fields(TrainConfig)}
        if blamed is error and where != "config" and error.source.partition(".")[0] in sections:
            # A section's own check names its key from the root (model.preset): in the recipe, as its readers do.
            blamed = ConfigError(f"{where}.{error.source}", error.reason)
        raise _in_file(blamed, where) from None


def _in_file(error: ConfigError, where: str) -> ConfigError:
    """An error in the recipe file ``where`` named "FILE: KEY" (``recipe.yaml: train.stepz``): the file's path and
    the key joined by "." read as one name (``recipe.yaml.train.stepz``)."""
    if where == "config" or not error.source.startswith(f"{where}."):
        return error
    return ConfigError(f"{where}: {error.source.removeprefix(f'{where}.')}", error.reason)


def _check_sections_on_the_way(data: Mapping[str, Any], assignment: str, earlier: Sequence[str], where: str) -> None:
    """A ConfigError if a section that ``assignment``'s key goes into is not a mapping in ``data``: the override
    would replace it (``train: 5`` becoming ``{steps: 1}``), and the error it has without the override would be
    lost. It names the recipe, or ``--set SECTION`` when an ``earlier`` override put it there."""
    found = _bad_section(data, assignment.partition("=")[0].strip().split("."))
    if found is None:
        return
    section, reason = found
    from_command_line = any(section == key or section.startswith(f"{key}.") for key in _keys(earlier))
    raise ConfigError(f"--set {section}" if from_command_line else f"{where}.{section}", reason)


def _bad_section(data: Mapping[str, Any], path: list[str]) -> tuple[str, str] | None:
    """The first section along ``path`` (its last key excluded) that ``data`` holds as something other than a
    mapping, where TrainConfig wants one (a section, or a dict field such as ``model.overrides``), as (its dotted
    key, the reason that loading ``data`` alone gives), or None."""
    owner: Any = TrainConfig
    value: Any = data
    for depth, name in enumerate(path[:-1]):
        if not dataclasses.is_dataclass(owner) or name not in value:
            return None  # a free-form value, or a key the recipe leaves out: nothing of the recipe's is replaced
        hint, value = typing.get_type_hints(owner).get(name), value[name]
        reason = _section_reason(hint, value)
        if reason is not None:
            return ".".join(path[: depth + 1]), reason
        owner = hint
    return None


def _section_reason(hint: Any, value: Any) -> str | None:
    """Why ``value`` cannot be the mapping ``hint`` wants, worded as :func:`from_dict` and :func:`_coerce` say it;
    None when it can, or when ``hint`` is not a mapping type."""
    if dataclasses.is_dataclass(hint) and not isinstance(value, Mapping):
        return _not_a_section(value)
    if typing.get_origin(hint) is dict and value is not None and not isinstance(value, Mapping):
        return f"expected a mapping, got {value!r}"  # None is an empty dict field (see _coerce)
    return None


def _keys(assignments: Sequence[str]) -> list[str]:
    return [assignment.partition("=")[0].strip() for assignment in assignments]


def _blame_override(error: ConfigError, where: str, assignments: Sequence[str]) -> ConfigError:
    """``error`` renamed ``--set KEY`` when the key it names came from a ``--set`` (a command-line typo is not the
    recipe file's); KEY is the deeper of the override's key and the error's."""
    location = error.source.removeprefix(f"{where}.")
    keys = [assignment.partition("=")[0].strip() for assignment in assignments]
    # The key itself or one above it first: with `--set train.steps=3 --set train=3`, "train" is `--set train`'s.
    if any(location == key or location.startswith((f"{key}.", f"{key}[")) for key in keys):
        return ConfigError(f"--set {location}", error.reason)
    for key in keys:
        if key.startswith(f"{location}."):
            return ConfigError(f"--set {key}", error.reason)
    return error
