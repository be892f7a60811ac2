"""The training loop's mechanics against numbers computed by hand: the learning rate of each optimizer step under
gradient accumulation, clipping of the unscaled, accumulated gradient, AdamW's groups and the moments of a group a
later stage unfreezes, bf16 autocast on the CPU, and an exact resume across a stage switch with accumulation.

The by-hand model is a table of next-token logits, ``table[previous] + bias``: the gradient of the token-mean
cross-entropy is ``softmax - one-hot`` per predicted token, summed here in a plain loop.
"""

from __future__ import annotations

import json
import math
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from _helpers import FAMILIES, tiny_model
from _resume import assert_same_weights, crash_at, untimed
from captionkit.config import StageSection, TrainSection, load_train_config
from captionkit.data.dataset import Batch
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.errors import InputError
from captionkit.models.registry import train_tokenizer
from captionkit.run_layout import latest_checkpoint
from captionkit.training import checkpoint as ckpt
from captionkit.training import setup as optimizer_setup
from captionkit.training.loop import train
from captionkit.training.setup import _param_groups, build_optimizer
from captionkit.training.stages import Stages
from captionkit.training.steps import CrossEntropyStep

CPU = torch.device("cpu")
SIZE = 6  # tokens of the by-hand model


class Table(torch.nn.Module):
    """Next-token logits ``table[previous] + bias``; the image plays no part. Groups for ``train.stages``."""

    family = "table"

    def __init__(self, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(SIZE, SIZE, generator=generator))
        self.bias = torch.nn.Parameter(torch.randn(SIZE, generator=generator))

    def forward(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoded: object = None,
    ) -> torch.Tensor:
        return self.table[input_ids] + self.bias

    def auxiliary_loss(self) -> None:
        return None

    def parameter_groups(self) -> dict[str, list[str]]:
        return {"decoder": ["table"], "head": ["bias"]}


def micro_batches() -> list[Batch]:
    """Two micro-batches of 4 + 2 and 4 predicted tokens (padding where the mask is 0)."""
    first = torch.tensor([[1, 3, 4, 5, 2], [1, 5, 2, 0, 0]])
    first_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    second = torch.tensor([[1, 4, 4, 3, 2]])
    return [
        Batch(torch.zeros(2, 3, 4, 4), first, first_mask, ["a", "b"], 0),
        Batch(torch.zeros(1, 3, 4, 4), second, torch.ones_like(second), ["c"], 0),
    ]


def hand_gradients(table: torch.Tensor, bias: torch.Tensor, micro: list[Batch]) -> dict[str, torch.Tensor]:
    """The gradient of the mean token cross-entropy over every micro-batch, in float64."""
    pairs = []
    for batch in micro:
        for ids, mask in zip(batch.input_ids.tolist(), batch.attention_mask.tolist(), strict=True):
            real = [token for token, keep in zip(ids, mask, strict=True) if keep]
            pairs += list(pairwise(real))
    assert len(pairs) == 10
    grads = {"table": torch.zeros(SIZE, SIZE, dtype=torch.float64), "bias": torch.zeros(SIZE, dtype=torch.float64)}
    for previous, target in pairs:
        row = torch.softmax(table[previous].double() + bias.double(), dim=-1)
        row[target] -= 1.0
        grads["table"][previous] += row / len(pairs)
        grads["bias"] += row / len(pairs)
    return grads


def test_clipping_is_of_the_unscaled_gradient_of_the_whole_step_by_hand(single_thread):
    model = Table(seed=0)
    before = {name: value.detach().clone() for name, value in model.named_parameters()}
    clip = 0.05
    step = CrossEntropyStep(model, torch.optim.SGD(model.parameters(), lr=1.0), TrainSection(grad_clip=clip), CPU)  # type: ignore[arg-type]
    # The scaler fp16 runs with on a GPU (loss x 1024): clipping must see the gradient it scaled back.
    step.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    step(micro_batches(), step=0)

    grads = hand_gradients(before["table"], before["bias"], micro_batches())
    norm = math.sqrt(sum(float(grad.pow(2).sum()) for grad in grads.values()))
    assert norm > 4 * clip  # clipping shrinks this step
    factor = clip / (norm + 1e-6)  # torch's clip_grad_norm_
    for name, value in model.named_parameters():
        expected = before[name].double() - factor * grads[name]
        assert torch.allclose(value.detach().double(), expected, atol=1e-6), name
    assert step.scaler.get_scale() == 1024.0  # a finite step: the scale stays


def test_a_group_a_later_stage_unfreezes_starts_its_adamw_moments_there_by_hand(single_thread):
    model = Table(seed=1)
    settings = TrainSection(lr=0.1, weight_decay=0.5, grad_clip=0.0)
    optimizer = build_optimizer(model, SimpleNamespace(train=settings), CPU)  # type: ignore[arg-type]
    stages = Stages(model, [StageSection(until_step=2, train=["head"]), StageSection(train=["all"])])  # type: ignore[arg-type]
    step = CrossEntropyStep(model, optimizer, settings, CPU)  # type: ignore[arg-type]
    start = model.table.detach().clone()
    for index in range(2):
        stages.apply(index)
        step(micro_batches(), step=index)
        # Frozen: not moved, not even by weight decay (the table is in the decayed group).
        assert torch.equal(model.table.detach(), start)
        assert model.table not in optimizer.state

    assert stages.apply(2)
    table, bias = model.table.detach().clone(), model.bias.detach().clone()
    grad = hand_gradients(table, bias, micro_batches())["table"]
    step(micro_batches(), step=2)

    moments = optimizer.state[model.table]
    assert moments["step"].item() == 1.0 and optimizer.state[model.bias]["step"].item() == 3.0
    beta1, beta2 = settings.betas
    assert torch.allclose(moments["exp_avg"].double(), (1 - beta1) * grad, atol=1e-7)
    assert torch.allclose(moments["exp_avg_sq"].double(), (1 - beta2) * grad**2, atol=1e-9)
    # AdamW's first step for this tensor: decay, then lr x m̂ / (sqrt(v̂) + eps) with m̂ = g and v̂ = g².
    expected = table.double() * (1 - 0.1 * 0.5) - 0.1 * grad / (grad.abs() + 1e-8)
    assert torch.allclose(model.table.detach().double(), expected, atol=1e-6)


# Each family's position tables and learned tokens (a ViT's class token), by name; every other tensor of two or
# more dimensions is decayed, no bias or norm (GIT's CLIP tower keeps its class token as a vector: a bias-like 1-d).
POSITION_TABLES = {
    "blip": {
        "hf.vision_model.embeddings.position_embedding",
        "hf.vision_model.embeddings.class_embedding",
        "hf.text_decoder.bert.embeddings.position_embeddings.weight",
    },
    "git": {
        "hf.git.embeddings.position_embeddings.weight",
        "hf.git.image_encoder.vision_model.embeddings.position_embedding.weight",
    },
    "prefix-gpt2": {
        "encoder.embeddings.position_embeddings",
        "encoder.embeddings.cls_token",
        "gpt2.transformer.wpe.weight",
    },
    "vit-gpt2": {
        "ved.encoder.embeddings.position_embeddings",
        "ved.encoder.embeddings.cls_token",
        "ved.decoder.transformer.wpe.weight",
    },
}


@pytest.mark.parametrize("family", FAMILIES)
def test_no_weight_decay_on_biases_norms_position_tables_and_class_tokens(family):
    tokenizer = train_tokenizer(family, ["a dog runs on the grass", "a cat sits"] * 10, 300)
    model = tiny_model(family, tokenizer=tokenizer)
    decay, no_decay = _param_groups(model, 0.01)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    kept = {id(parameter) for parameter in no_decay["params"]}
    undecayed = {name for name, parameter in model.named_parameters() if id(parameter) in kept}
    tables = POSITION_TABLES.get(family, set())
    assert undecayed == tables | {name for name, parameter in model.named_parameters() if parameter.ndim < 2}


def test_clipcaps_learned_prefix_constants_are_not_decayed():
    tokenizer = train_tokenizer("prefix-gpt2", ["a dog runs on the grass", "a cat sits"] * 10, 300)
    model = tiny_model("prefix-gpt2", tokenizer=tokenizer, mapper="transformer")
    _, no_decay = _param_groups(model, 0.01)
    kept = {id(parameter) for parameter in no_decay["params"]}
    assert id(model.mapper.prefix_const) in kept
    assert id(model.mapper.linear.weight) not in kept  # the mapper's matrices are decayed as any


def test_a_timm_position_table_is_kept_from_decay_by_its_name():
    vit = torch.nn.Module()
    vit.pos_embed = torch.nn.Parameter(torch.zeros(1, 5, 4))  # timm's name for a ViT's position table
    vit.proj = torch.nn.Linear(4, 4)
    decay, no_decay = _param_groups(vit, 0.01)
    assert [tuple(p.shape) for p in decay["params"]] == [(4, 4)]
    assert [tuple(p.shape) for p in no_decay["params"]] == [(1, 5, 4), (4,)]


def test_bf16_autocast_on_the_cpu_takes_the_loss_in_fp32_and_keeps_fp32_weights(single_thread):
    tokenizer = train_tokenizer("vit-gpt2", ["a dog runs on the grass", "a cat sits"] * 10, 300)
    model = tiny_model("vit-gpt2", tokenizer=tokenizer).train()
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    batch = Batch(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), ids, mask, ["a", "b"], 0)
    model.eval()  # no dropout: the step's forward repeats this one
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(batch.pixel_values, ids, mask).detach()
    assert logits.dtype == torch.bfloat16
    log_probs = logits[:, :-1].double().log_softmax(-1)
    targets = [(0, 0, 5), (0, 1, 6), (0, 2, 7), (0, 3, 2), (1, 0, 8), (1, 1, 2)]
    expected = -sum(float(log_probs[row, position, token]) for row, position, token in targets) / len(targets)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    output = CrossEntropyStep(model, optimizer, TrainSection(precision="bf16"), CPU)([batch], step=0)  # type: ignore[arg-type]
    # In fp32 from the bf16 logits: within fp32 rounding of the float64 sum (bf16's own is about 1e-2).
    assert output is not None and output.loss.item() == pytest.approx(expected, rel=1e-6)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}
    grads = [parameter.grad for parameter in model.parameters() if parameter.grad is not None]
    assert grads and {grad.dtype for grad in grads} == {torch.float32}
    assert {moment.dtype for state in optimizer.state.values() for moment in state.values()} == {torch.float32}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("scenes"), 32, 8, 4, seed=1, image_size=32)


def loop_settings(scenes: Path, *extra: str) -> list[str]:
    return [
        "train.device=cpu",
        f"data.train={scenes}",
        f"data.val={scenes}",
        "data.first_caption_only=true",
        "data.cache_images=true",
        "model.preset=tiny",
        "tokenizer.vocab_size=300",
        "train.batch_size=4",
        "train.grad_accumulation=2",
        "train.eval_every=100",
        "train.eval_images=0",
        "train.log_every=1",
        "train.threads=1",
        "train.tensorboard=false",
        *extra,
    ]


def test_each_optimizer_step_of_accumulated_micro_batches_takes_the_schedules_next_lr(scenes, tmp_path, single_thread):
    settings = ["train.steps=5", "train.warmup_steps=2", "train.schedule=linear", "train.min_lr_ratio=0.2"]
    config = load_train_config(None, loop_settings(scenes, *settings, "train.lr=1e-3", "train.checkpoint_every=5"))
    result = train(config, tmp_path / "run")
    # Warm-up: 1/2 and 2/2 of lr at steps 0 and 1; then lr down to lr x 0.2 over steps 2..4 (0.5 of the way at 3).
    # Entry n (counted from 1) logs the lr step n - 1 ran with.
    lrs = [entry["lr"] for entry in result.history]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 6e-4, 2e-4], rel=1e-12)
    checkpoint = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert checkpoint is not None
    saved, tensors = ckpt.read_training_state(checkpoint)
    # 5 optimizer steps (not 10: one per 2 accumulated micro-batches), over 5 x 2 x 4 samples.
    assert saved["loop"]["step"] == 5 and saved["loop"]["cursor"] == 40
    assert tensors["optimizer.0.step"].item() == 5.0


def test_a_resume_at_an_accumulation_boundary_inside_staged_unfreezing_equals_the_uninterrupted_run(
    scenes, tmp_path, single_thread
):
    # Checkpoint at step 2: only the cross-attention has AdamW moments; the rest starts its own at step 3.
    settings = loop_settings(
        scenes,
        "model.overrides={decoder_dropout: 0.1, encoder_dropout: 0.1}",  # dropout: the RNG states resume too
        "train.steps=4",
        "train.warmup_steps=1",
        "train.lr=3e-3",
        "train.checkpoint_every=2",
        "train.stages=[{until_step: 3, train: [cross_attention]}, {train: [all]}]",
    )
    reference = train(load_train_config(None, settings), tmp_path / "reference")
    crash_at(3, load_train_config(None, settings), tmp_path / "run")
    resumed = train(load_train_config(None, settings), tmp_path / "run")
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "step-000002"
    assert untimed(resumed.history) == untimed(reference.history)
    assert_same_weights(tmp_path / "reference", tmp_path / "run")


def test_an_old_checkpoint_whose_adamw_groups_differ_is_one_input_error_saying_how_to_go_on(
    scenes, tmp_path, single_thread
):
    settings = loop_settings(scenes, "train.warmup_steps=1", "train.checkpoint_every=1")
    train(load_train_config(None, [*settings, "train.steps=1"]), tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000001"
    state_file = checkpoint / ckpt.TRAINER_STATE
    saved = json.loads(state_file.read_text())
    decayed, kept = (group["params"] for group in saved["optimizer"]["param_groups"])
    decayed.append(kept.pop())  # a position table an older captionkit decayed
    saved["captionkit_version"] = "0.9.0"
    del saved["optimizer_groups"]  # which checkpoints did not name
    state_file.write_text(json.dumps(saved))
    with pytest.raises(InputError) as error:
        train(load_train_config(None, [*settings, "train.steps=2"]), tmp_path / "run")
    assert str(error.value) == (
        f"{checkpoint}: its optimizer groups the parameters as {len(decayed)} + {len(kept)} for weight decay, this "
        f"captionkit as {len(decayed) - 1} + {len(kept) + 1} (the checkpoint's captionkit: 0.9.0): pass --no-resume "
        "to start over, or resume with the captionkit that wrote it"
    )


def test_a_run_keeps_the_weight_decay_split_it_started_with_when_resumed_by_a_captionkit_that_splits_otherwise(
    scenes, tmp_path, single_thread, monkeypatch
):
    """Started by a captionkit that decayed the ViT's class token, resumed by one that does not: the run goes on
    decaying it (the checkpoint names each group's parameters), exactly as the uninterrupted run would have."""
    settings = loop_settings(
        scenes, "train.steps=4", "train.warmup_steps=1", "train.checkpoint_every=2", "train.weight_decay=0.5"
    )
    older = tuple(name for name in optimizer_setup._NO_DECAY_NAMES if name != "cls_token")
    with monkeypatch.context() as patch:
        patch.setattr(optimizer_setup, "_NO_DECAY_NAMES", older)
        reference = train(load_train_config(None, settings), tmp_path / "reference")
        crash_at(3, load_train_config(None, settings), tmp_path / "run")
    saved = ckpt.read_training_state(tmp_path / "run" / "checkpoints" / "step-000002")[0]
    assert "ved.encoder.embeddings.cls_token" in saved["optimizer_groups"][0]  # decayed when it started
    resumed = train(load_train_config(None, settings), tmp_path / "run")
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "step-000002"
    assert untimed(resumed.history) == untimed(reference.history)
    assert_same_weights(tmp_path / "reference", tmp_path / "run")
    # A fresh run with this captionkit leaves the class token alone, so the two runs' tokens differ.
    fresh = train(load_train_config(None, settings), tmp_path / "fresh")
    assert untimed(fresh.history) != untimed(reference.history)


def test_a_checkpoint_naming_parameters_this_model_lacks_is_one_input_error(scenes, tmp_path, single_thread):
    settings = loop_settings(scenes, "train.warmup_steps=1", "train.checkpoint_every=1")
    train(load_train_config(None, [*settings, "train.steps=1"]), tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000001"
    state_file = checkpoint / ckpt.TRAINER_STATE
    saved = json.loads(state_file.read_text())
    saved["optimizer_groups"][0][0] = "no.such.parameter"
    state_file.write_text(json.dumps(saved))
    with pytest.raises(InputError) as error:
        train(load_train_config(None, [*settings, "train.steps=2"]), tmp_path / "run")
    assert str(error.value) == (
        f"{checkpoint}: its optimizer holds other parameters than this run's model (a checkpoint of another model?): "
        "pass --no-resume to start over"
    )


def test_a_run_resumed_with_changed_adamw_settings_trains_with_them(scenes, tmp_path, single_thread):
    settings = loop_settings(scenes, "train.warmup_steps=1", "train.checkpoint_every=1")
    train(load_train_config(None, [*settings, "train.steps=1"]), tmp_path / "run")
    changed = ["train.steps=2", "train.weight_decay=0.5", "train.betas=[0.8, 0.99]"]
    resumed = train(load_train_config(None, [*settings, *changed]), tmp_path / "run", resume=True)
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "step-000001"
    # --resume applies every change but the model's and tokenizer's: step 2 ran with the new decay and betas.
    saved = ckpt.read_training_state(tmp_path / "run" / "checkpoints" / "step-000002")[0]
    groups = saved["optimizer"]["param_groups"]
    assert [(group["weight_decay"], group["betas"]) for group in groups] == [(0.5, [0.8, 0.99]), (0.0, [0.8, 0.99])]
