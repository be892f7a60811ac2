"""One optimizer step of training: the cross-entropy step and the self-critical (SCST) step.

A step object owns everything between "here are this step's micro-batches" and "the weights moved": forward under
autocast, the loss, backward through the gradient scaler, DDP's gradient sync, unscale, clip and the optimizer step.
The training loop and the tests call the same objects.

Both steps normalise the loss by the step's token count over every micro-batch and every process, so gradient
accumulation and data parallelism match one big batch. Under DDP every backward pass ends in an all-reduce that
the other processes wait for, so all processes run as many backward passes: a micro-batch whose images are all
unreadable on one process but not on every process runs a zero-weight placeholder there (:meth:`TrainingStep._agree`).
The step's loss stays on the device (no host sync): the loop reads it when it logs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import torch

from captionkit.config import TrainSection
from captionkit.data.dataset import Batch
from captionkit.decoding.sampling import SEED_MODULUS
from captionkit.errors import ConfigError
from captionkit.models.base import CaptionModel, Encoded
from captionkit.text import CaptionTokenizer
from captionkit.training.distributed import Distributed
from captionkit.training.loss import caption_loss_total
from captionkit.training.scst import (
    Reward,
    Rollout,
    SampleScorer,
    StyleCiderReward,
    encode_for_sampling,
    policy_loss_sums,
    rollout,
    sample_styles,
)
from captionkit.training.timing import PhaseTimer
from captionkit.training.validation import Autocast

# A micro-batch of either step kind (cross-entropy: a Batch; SCST: a Batch with its rollout).
T = TypeVar("T")


def autocast_for(precision: str, device: torch.device) -> Autocast:
    if precision == "fp32":
        return nullcontext
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision", "fp16 needs a CUDA GPU (its gradient scaler); use bf16 or fp32 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


@dataclass
class StepOutput:
    """A step's mean token loss over all processes (a float64 scalar on the device) and, for SCST, its reward
    statistics. A cross-entropy step also gives its summed token NLL over all processes (on the device; the loss
    itself when there is no label smoothing) and the token count it is over: the parts of a train perplexity."""

    loss: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)
    nll_sum: torch.Tensor | None = None
    tokens: float = 0.0


class TrainingStep:
    """What both steps share: autocast, the gradient scaler, the (DDP-wrapped, optionally compiled) module, the
    agreement between processes, and the optimizer step."""

    def __init__(
        self,
        model: CaptionModel,
        optimizer: torch.optim.Optimizer,
        settings: TrainSection,
        device: torch.device,
        parallel: Distributed | None = None,
        placeholder: Batch | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.settings = settings
        self.device = device
        self.parallel = parallel or Distributed()
        self.placeholder = placeholder  # what a process without data runs under DDP (see make_placeholder)
        self.autocast = autocast_for(settings.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
        self.module: torch.nn.Module | None = None

    def rewrap(self) -> None:
        """Build the module that runs forward and backward; again whenever a stage changes what trains.

        DDP all-reduces only the parameters that required a gradient when it was built: a stage that unfreezes
        more must get a new one (built by every process at the same step; it starts from rank 0's weights, equal
        anyway), or the unfrozen part would train apart on each process.
        """
        self.module = None  # an old DDP's gradient hooks go with it
        module = self._forward_module()
        if self.parallel.enabled:
            module = torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)
        if self.settings.compile:
            module = torch.compile(module)  # type: ignore[assignment]
        self.module = module

    def _forward_module(self) -> torch.nn.Module:
        return self.model

    def _trained(self) -> torch.nn.Module:
        if self.module is None:
            self.rewrap()
        assert self.module is not None
        return self.module

    def _agree(self, items: Sequence[T | None], local_tokens: float) -> tuple[float, list[T | None], float]:
        """What this process runs in a step, agreed with the others: ``(tokens, chosen, per_process)``.

        ``items`` are this process's micro-batches, None where it has no data (every image unreadable).
        ``chosen`` keeps the micro-batches that hold data on some process (None where this one runs the placeholder)
        and leaves out those empty everywhere. ``tokens``: ``local_tokens`` summed over the processes;
        ``per_process``: the micro-batches with data per process, over which auxiliary terms are means.
        """
        tokens, *holders = self.parallel.sum([local_tokens, *(float(item is not None) for item in items)])
        chosen = [item for item, holding in zip(items, holders, strict=True) if holding]
        return tokens, chosen, sum(holders) / self.parallel.world_size

    def _sync(self, last: bool) -> AbstractContextManager[Any]:
        """DDP all-reduces the gradients on a step's last backward pass only (``no_sync`` before it)."""
        return nullcontext() if last or not self.parallel.enabled else self._trained().no_sync()  # type: ignore[operator]

    def _placeholder_backward(self, logits_of: Callable[[], torch.Tensor]) -> None:
        """Backward of 0 times the placeholder's logits: every parameter the forward uses gets a zero gradient, so
        the all-reduce sums the other processes' gradients alone. Run in eval mode: batch norm statistics stay,
        dropout draws nothing."""
        was_training = self.model.training
        self.model.eval()
        try:
            with self.autocast():
                logits = logits_of()
        finally:
            self.model.train(was_training)
        self.model.auxiliary_loss()  # the placeholder's own (an attention penalty) is dropped
        self.scaler.scale(logits.float().sum() * 0.0).backward()

    def _backward(self, loss: torch.Tensor, per_process: float, timer: PhaseTimer) -> None:
        auxiliary = self.model.auxiliary_loss()
        if auxiliary is not None:
            loss = loss + auxiliary / per_process
        timer.lap("forward")
        self.scaler.scale(loss).backward()
        timer.lap("backward")

    def _optimizer_step(self, timer: PhaseTimer) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self._trained().parameters(), self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        timer.lap("optimizer")

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=True)


class CrossEntropyStep(TrainingStep):
    """Teacher forcing: the summed token cross-entropy of every micro-batch over the step's token count."""

    def __call__(self, micro: Sequence[Batch], step: int, timer: PhaseTimer | None = None) -> StepOutput | None:
        """Forward and backward every micro-batch, then one optimizer step; None when no process had data."""
        timer = timer or PhaseTimer(self.device, enabled=False)
        present = [batch if len(batch) else None for batch in micro]
        local_tokens = sum(int(batch.attention_mask[:, 1:].sum()) for batch in present if batch is not None)
        tokens, chosen, per_process = self._agree(present, float(local_tokens))
        if tokens == 0:
            return None
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss, NLL
        for index, batch in enumerate(chosen):
            with self._sync(last=index == len(chosen) - 1):
                if batch is None:  # another process holds data: only under DDP
                    self._placeholder_backward(self._placeholder_logits)
                    continue
                with self.autocast():
                    logits, ids, mask = self.logits(batch)
                loss_sum, nll_sum = caption_loss_total(logits, ids, mask, self.settings.label_smoothing)
                # DDP averages gradients over processes: scale by their number so the result is the global mean.
                self._backward(loss_sum * (self.parallel.world_size / tokens), per_process, timer)
            total += torch.stack([loss_sum.detach(), nll_sum.detach()]).double()
        self._optimizer_step(timer)
        total = self.parallel.sum_tensor(total)  # one all-reduce for both
        return StepOutput(total[0] / tokens, nll_sum=total[1], tokens=tokens)

    def _placeholder_logits(self) -> torch.Tensor:
        assert self.placeholder is not None
        return self.logits(self.placeholder)[0]

    def logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced logits of ``batch`` from the trained module (pixels, or cached encoder features), with the
        batch's ids and mask on the device."""
        encoded = Encoded(self._to_device(batch.features)) if batch.features is not None else None
        pixels = None if encoded is not None else self._to_device(batch.pixel_values)
        ids, mask = self._to_device(batch.input_ids), self._to_device(batch.attention_mask)
        return self._trained()(pixels, ids, mask, encoded=encoded), ids, mask


class ScstStep(TrainingStep):
    """Self-critical: sample and reward every micro-batch (no gradients), then the policy gradient of each,
    normalised by the step's sampled-token count over all processes (as the cross-entropy step is).

    The samples of a step are a function of the step number alone (:meth:`seed`), so a resumed run samples
    exactly what the uninterrupted one did. With a :class:`StyleCiderReward` (a run with ``data.styles``) each
    image's captions are sampled in its training sample's style (its caption's start token) and rewarded against
    the image's references in that style.
    """

    def __init__(
        self,
        model: CaptionModel,
        optimizer: torch.optim.Optimizer,
        settings: TrainSection,
        device: torch.device,
        tokenizer: CaptionTokenizer,
        reward: Reward,
        parallel: Distributed | None = None,
        placeholder: Batch | None = None,
    ) -> None:
        super().__init__(model, optimizer, settings, device, parallel, placeholder)
        self.tokenizer = tokenizer
        self.reward = reward

    @property
    def _styled(self) -> bool:
        return isinstance(self.reward, StyleCiderReward)

    def _forward_module(self) -> torch.nn.Module:
        return SampleScorer(self.model)  # its forward runs the encoder too: DDP sees every trained parameter

    @property
    def _global_batch(self) -> int:
        return self.settings.batch_size * self.parallel.world_size

    def seed(self, step: int) -> int:
        """The sampling seed of a step's first micro-batch. Image j of micro-batch m draws from
        seed + m * global_batch + j."""
        per_step = self.settings.grad_accumulation * self._global_batch
        return (self.settings.seed * 1_000_003 + step * per_step) % SEED_MODULUS

    def rollouts(self, micro: Sequence[Batch], step: int) -> list[tuple[Batch, Rollout] | None]:
        """Each micro-batch with its sampled, rewarded captions; None where every image is unreadable here."""
        offset = self.parallel.rank * self.settings.batch_size  # this process's first image in a global batch
        work: list[tuple[Batch, Rollout] | None] = []
        for index, batch in enumerate(micro):
            if not len(batch):
                work.append(None)
                continue
            with self.autocast():
                if batch.features is not None:
                    encoded = Encoded(self._to_device(batch.features))
                else:
                    encoded = encode_for_sampling(self.model, self._to_device(batch.pixel_values))
                seed = (self.seed(step) + index * self._global_batch) % SEED_MODULUS
                styles = sample_styles(self.tokenizer, batch.input_ids) if self._styled else None
                sampled = rollout(
                    self.model, self.tokenizer, encoded, batch.image_ids, self.reward, self.settings.scst, seed, offset,
                    styles,
                )  # fmt: skip
            work.append((batch, sampled))
        return work

    def __call__(self, micro: Sequence[Batch], step: int, timer: PhaseTimer | None = None) -> StepOutput | None:
        """Sampling counts as forward time. None when every image of the step was unreadable on every process."""
        timer = timer or PhaseTimer(self.device, enabled=False)
        work = self.rollouts(micro, step)
        done = [item for item in work if item is not None]
        local = [
            float(sum(s.tokens for _, s in done)),
            float(sum(len(s.ids) for _, s in done)),
            float(sum(s.rewards.sum() for _, s in done)),
            float(sum(s.baseline.sum() for _, s in done)),
        ]
        self.optimizer.zero_grad(set_to_none=True)
        tokens, chosen, per_process = self._agree(work, local[0])
        policy_total, entropy_total = self._policy_backward(chosen, tokens, per_process, timer)
        tokens, samples, reward_sum, baseline_sum, policy_sum, entropy_sum = self.parallel.sum(
            [*local, policy_total, entropy_total]
        )
        if samples == 0:
            return None
        self._optimizer_step(timer)
        stats = {
            "reward": reward_sum / samples,
            "reward_baseline": baseline_sum / samples,
            "sample_length": tokens / samples,
            "entropy": entropy_sum / max(tokens, 1.0),
        }
        loss = torch.tensor(policy_sum / max(tokens, 1.0), dtype=torch.float64, device=self.device)
        return StepOutput(loss, stats)

    def _policy_backward(
        self, chosen: list[tuple[Batch, Rollout] | None], tokens: float, per_process: float, timer: PhaseTimer
    ) -> tuple[float, float]:
        """Backward of each chosen micro-batch's policy loss; (policy sum, entropy sum) of this process."""
        settings = self.settings.scst
        policy_total = entropy_total = 0.0
        for index, item in enumerate(chosen):
            with self._sync(last=index == len(chosen) - 1):
                if item is None:
                    assert self.placeholder is not None  # another process holds data: only under DDP
                    placeholder = self.placeholder
                    rows = torch.zeros(1, dtype=torch.long, device=self.device)
                    self._placeholder_backward(partial(self.scores, placeholder, placeholder.input_ids, rows))
                    continue
                batch, sampled = item
                with self.autocast():
                    logits = self.scores(batch, sampled.ids, sampled.rows, sampled.mask)
                policy, entropy = policy_loss_sums(logits, sampled, settings.temperature)
                # DDP averages gradients over processes: scale by their number so the result is the global mean.
                loss = (policy - settings.entropy_weight * entropy) * (self.parallel.world_size / max(tokens, 1.0))
                self._backward(loss, per_process, timer)
            policy_total += float(policy.detach())
            entropy_total += float(entropy.detach())
        return policy_total, entropy_total

    def scores(
        self, batch: Batch, ids: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced logits of captions ``ids`` of the images ``rows`` of ``batch``, from the trained module."""
        features = None if batch.features is None else self._to_device(batch.features)
        pixels = None if features is not None else self._to_device(batch.pixel_values)
        ids = self._to_device(ids)
        mask = torch.ones_like(ids) if mask is None else self._to_device(mask)
        return self._trained()(pixels, features, ids, mask, rows)


def make_placeholder(features: Mapping[str, object] | None, image_size: tuple[int, int], model: CaptionModel) -> Batch:
    """One made-up sample shaped like the training data (zero pixels or features, the caption bos eos): what a
    process without data runs so that its backward pass joins the others' all-reduce."""
    ids = torch.tensor([[model.bos_token_id, model.eos_token_id]])
    cached = None
    if features is not None:
        shape = next(value.shape for value in features.values() if isinstance(value, torch.Tensor))
        cached = torch.zeros(1, *shape)
    pixels = torch.zeros(1, 3, *image_size) if cached is None else torch.empty(0)
    return Batch(pixels, ids, torch.ones_like(ids), ["placeholder"], 0, cached)
