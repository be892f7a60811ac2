"""Beam search over the step protocol, batched over images, with transformers 5's exact rules.

Every image keeps ``num_beams`` running beams and up to ``num_beams`` finished hypotheses. Each step:

1. the 2 × num_beams best continuations of all running beams are taken (by summed log-prob);
2. those ending (eos, or the max_new_tokens-th token) cannot continue; the best num_beams others run on;
3. ending continuations ranked in the first num_beams join the finished set, scored
   ``sum / length ** length_penalty`` (length = generated tokens, eos included), unless the image is closed;
4. an image closes when ``early_stopping`` says so (see :class:`DecodingConfig`) and leaves the batch.

"Impossible" is transformers' additive -1e9 rather than -inf, and the float operations follow transformers'
order, so ties and near-ties resolve the same way and results (tokens and scores) match ``generate``. One departure,
where an image has fewer possible continuations than beams (a tiny vocabulary, or a model that rules most tokens
out): an ending continuation of an impossible beam (a first-step copy of beam 0, summing about -1e9) never joins
the finished set. transformers lets it, and its score divided by a long length ** length_penalty can outrank, and
push out, a real hypothesis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from captionkit.decoding.config import DecodingConfig, Hypothesis
from captionkit.decoding.steps import first_step, forbid_early_eos, image_major_rows, kept_rows
from captionkit.models.base import CaptionModel, Encoded

NEG = -1.0e9
# Continuations of the doomed first-step copies of beam 0 sum log-probs of about NEG (or -inf, eos before
# min_new_tokens): impossible. Their penalised scores cannot tell them apart: NEG / length ** length_penalty rises far
# above any floor for long ones.
IMPOSSIBLE_LOG_PROB = NEG / 10


@dataclass
class _Candidates:
    """The 2K best continuations per image: (b, 2K) sums, (b, 2K, L) tokens, source beams, ends."""

    scores: torch.Tensor
    tokens: torch.Tensor
    source: torch.Tensor
    ends: torch.Tensor


@dataclass
class _Finished:
    """Per image: the best finished hypotheses so far, best first. During the search, one row per image still
    searched (the batch's images, in batch order); the closed images' rows move to an all-images copy."""

    scores: torch.Tensor  # (B, K) length-penalised; NEG-ish for empty slots
    log_prob: torch.Tensor  # (B, K) summed log-probs
    tokens: torch.Tensor  # (B, K, L)
    length: torch.Tensor  # (B, K) generated tokens, eos included
    filled: torch.Tensor  # (B, K) bool: transformers' is_sent_finished

    @classmethod
    def empty(cls, num_images: int, beams: int, max_new: int, pad: int, device: torch.device) -> _Finished:
        return cls(
            scores=torch.full((num_images, beams), NEG, dtype=torch.float32, device=device),
            log_prob=torch.zeros((num_images, beams), dtype=torch.float32, device=device),
            tokens=torch.full((num_images, beams, max_new), pad, dtype=torch.long, device=device),
            length=torch.zeros((num_images, beams), dtype=torch.long, device=device),
            filled=torch.zeros((num_images, beams), dtype=torch.bool, device=device),
        )

    def merge(self, scores: torch.Tensor, cand: _Candidates, joins: torch.Tensor, length: torch.Tensor) -> None:
        """Keep the K best of the slots and the candidates (scores already penalised; ``length``: (b, 2K), the
        candidates' generated tokens)."""
        beams = self.scores.shape[1]
        merged = torch.cat((self.scores, scores), dim=1)
        pick = torch.topk(merged, beams, dim=1).indices
        self.scores = merged.gather(1, pick)
        self.log_prob = torch.cat((self.log_prob, cand.scores), dim=1).gather(1, pick)
        self.filled = torch.cat((self.filled, joins), dim=1).gather(1, pick)
        self.length = torch.cat((self.length, length), dim=1).gather(1, pick)
        self.tokens = _gather_beams(torch.cat((self.tokens, cand.tokens), dim=1), pick)

    def select(self, rows: torch.Tensor) -> _Finished:
        """Rows ``rows`` (the images that go on)."""
        return _Finished(*(field.index_select(0, rows) for field in self._fields()))

    def store_into(self, everyone: _Finished, images: torch.Tensor) -> None:
        """Write these rows into ``everyone`` (all images) as the rows ``images``."""
        for mine, theirs in zip(self._fields(), everyone._fields(), strict=True):
            theirs.index_copy_(0, images, mine)

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return (self.scores, self.log_prob, self.tokens, self.length, self.filled)

    def hypotheses(self, count: int, eos: int) -> list[list[Hypothesis]]:
        scores, log_prob = self.scores.tolist(), self.log_prob.tolist()
        tokens, length, filled = self.tokens.tolist(), self.length.tolist(), self.filled.tolist()
        results = []
        for image in range(len(scores)):
            found = []
            for slot in range(len(scores[image])):
                if not filled[image][slot]:
                    continue
                generated = tokens[image][slot][: length[image][slot]]
                finished = generated[-1] == eos
                ids = generated[:-1] if finished else generated
                found.append(Hypothesis(ids, scores[image][slot], log_prob[image][slot], finished))
            results.append(found[:count])
        return results


def beam_search(
    model: CaptionModel, encoded: Encoded, config: DecodingConfig, starts: Sequence[int | None] | None = None
) -> list[list[Hypothesis]]:
    """The ``num_return_sequences`` best hypotheses per image, best first (transformers' beam search)."""
    beams, max_new = config.num_beams, config.max_new_tokens
    num_images = encoded.tokens.shape[0]
    device = encoded.tokens.device
    log_probs, state = first_step(model, encoded, beams, config.start_token_id, config.prompt_ids, starts)
    # Only beam 0 is live at first; the others start at NEG so that the first step does not pick K copies.
    running_scores = torch.zeros((num_images, beams), dtype=torch.float32, device=device)
    running_scores[:, 1:] = NEG
    running_tokens = torch.full((num_images, beams, max_new), model.pad_token_id, device=device)
    # The searched images' finished hypotheses and transformers' is_early_stop_heuristic_unsatisfied, one row per
    # image still searched; ``active``: those images, in batch order (on the device and, with the image of each
    # row, on the host). Closed images' finished rows go to ``closed`` (all images) as they leave.
    finished = _Finished.empty(num_images, beams, max_new, model.pad_token_id, device)
    closed: _Finished | None = None
    improvable = torch.ones(num_images, dtype=torch.bool, device=device)
    active = torch.arange(num_images, device=device)
    active_images = list(range(num_images))
    row_image = image_major_rows(active_images, beams)
    # Made once: which of the 2K candidates may join the finished set (the first K), the first row of each image's
    # beams, and each step's candidate length.
    in_top_k = torch.arange(2 * beams, device=device) < beams
    first_rows = torch.arange(num_images, device=device)[:, None] * beams
    lengths = torch.arange(1, max_new + 1, device=device)[:, None, None].expand(-1, num_images, 2 * beams)

    for position in range(max_new):
        batch = active.shape[0]
        log_probs = forbid_early_eos(log_probs, position, config.min_new_tokens, model.eos_token_id)
        cand = _candidates(log_probs, running_scores, running_tokens, position, model.eos_token_id, max_new)
        running_scores, running_tokens, source = _next_running(cand, beams)
        joins = cand.ends & in_top_k & (cand.scores > IMPOSSIBLE_LOG_PROB)
        scores = _finished_scores(cand, joins, finished.filled, improvable, position, config)
        finished.merge(scores, cand, joins, lengths[position, :batch])
        improvable = improvable & _may_improve(running_scores, finished, position, config)
        going_on = improvable
        if config.early_stopping is True:
            going_on = going_on & ~finished.filled.all(dim=1)
        # The loop's one host synchronisation: which images go on (the batch shrinks as images close).
        searching = going_on.tolist()
        if position + 1 == max_new or not any(searching):
            break
        # Row r of the next batch continues beam source[image, beam] of its image; closed images drop out.
        rows = first_rows[:batch] + source
        if not all(searching):
            kept = kept_rows(going_on, sum(searching))
            if closed is None:
                closed = _Finished.empty(num_images, beams, max_new, model.pad_token_id, device)
            finished.store_into(closed, active)
            finished, improvable = finished.select(kept), improvable.index_select(0, kept)
            rows, active = rows.index_select(0, kept), active.index_select(0, kept)
            running_scores, running_tokens = running_scores[kept], running_tokens[kept]
            active_images = [image for image, on in zip(active_images, searching, strict=True) if on]
            row_image = image_major_rows(active_images, beams)
        state = model.reorder_state(state, rows.flatten(), row_image)
        log_probs, state = model.step(running_tokens[:, :, position].flatten(), state)
    if closed is not None:
        finished.store_into(closed, active)
        finished = closed
    return finished.hypotheses(config.num_return_sequences, model.eos_token_id)


def _candidates(
    log_probs: torch.Tensor,
    running_scores: torch.Tensor,
    running_tokens: torch.Tensor,
    position: int,
    eos: int,
    max_new: int,
) -> _Candidates:
    batch, beams = running_scores.shape
    vocab = log_probs.shape[-1]
    totals = (log_probs.view(batch, beams, vocab) + running_scores[:, :, None]).view(batch, beams * vocab)
    scores, index = torch.topk(totals, 2 * beams, dim=1)
    source, token = index // vocab, index % vocab
    tokens = _gather_beams(running_tokens, source)
    tokens[:, :, position] = token
    # transformers' stopping criteria: eos, or the sequence reaching max_new_tokens generated tokens.
    ends = token == eos if position + 1 < max_new else torch.ones_like(token, dtype=torch.bool)
    return _Candidates(scores, tokens, source, ends)


def _next_running(cand: _Candidates, beams: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best K candidates that do not end: (b, K) scores, (b, K, L) tokens, (b, K) source beams."""
    scores = _plus_neg(cand.scores, cand.ends)
    keep = torch.topk(scores, beams, dim=1).indices
    return scores.gather(1, keep), _gather_beams(cand.tokens, keep), cand.source.gather(1, keep)


def _finished_scores(
    cand: _Candidates,
    joins: torch.Tensor,
    filled: torch.Tensor,
    improvable: torch.Tensor,
    position: int,
    config: DecodingConfig,
) -> torch.Tensor:
    """Length-penalised candidate scores, plus NEG where a candidate may not join (transformers' order)."""
    scores = cand.scores / ((position + 1) ** config.length_penalty)
    if config.early_stopping is True:  # otherwise transformers adds 0.0 here, which changes no score
        scores = _plus_neg(scores, filled.all(dim=1, keepdim=True))
    scores = _plus_neg(scores, ~improvable[:, None])
    return _plus_neg(scores, ~joins)


def _plus_neg(scores: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """``scores + where.float() * NEG`` in one operation, bit for bit (NEG x 1 and NEG x 0 are exact)."""
    return torch.add(scores, where, alpha=NEG)


def _may_improve(
    running_scores: torch.Tensor, finished: _Finished, position: int, config: DecodingConfig
) -> torch.Tensor:
    """transformers' early-stop heuristic: can the best running beam still beat the worst finished hypothesis?

    The best running beam is scored at its current length, or at max_new_tokens for ``early_stopping="never"``
    with a positive length penalty (where longer can only score better).
    """
    penalty = config.length_penalty
    length = config.max_new_tokens if config.early_stopping == "never" and penalty > 0.0 else position + 1
    best_running = running_scores[:, :1] / (length**penalty)
    worst_finished = torch.where(finished.filled, finished.scores.min(dim=1, keepdim=True).values, NEG)
    return (best_running > worst_finished).any(dim=1)


def _gather_beams(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(b, n, L) tensor, (b, m) beam index -> (b, m, L)."""
    return tensor.gather(1, index[:, :, None].expand(-1, -1, tensor.shape[2]))
