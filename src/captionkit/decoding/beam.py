"""Beam search over the step protocol, batched over images, with transformers 5's exact rules.

Every image keeps ``num_beams`` running beams and up to ``num_beams`` finished hypotheses. Each step:

1. the 2 × num_beams best continuations of all running beams are taken (by summed log-prob);
2. those ending (eos, or the max_new_tokens-th token) cannot continue; the best num_beams others run on;
3. ending continuations ranked in the first num_beams join the finished set, scored
   ``sum / length ** length_penalty`` (length = generated tokens, eos included), unless the image is closed;
4. an image closes when ``early_stopping`` says so (see :class:`DecodingConfig`) and leaves the batch.

"Impossible" is transformers' additive -1e9 rather than -inf, and the float operations follow transformers'
order, so ties and near-ties resolve the same way and results (tokens and scores) match ``generate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from captionkit.decoding.config import DecodingConfig, Hypothesis
from captionkit.decoding.steps import first_step, forbid_early_eos, image_major_rows, kept_rows
from captionkit.models.base import CaptionModel, Encoded

NEG = -1.0e9
# Finished slots still holding placeholders (or the doomed first-step copies of beam 0) score about NEG.
REAL_SCORE_FLOOR = NEG / 10


@dataclass
class _Candidates:
    """The 2K best continuations per image: (b, 2K) sums, (b, 2K, L) tokens, source beams, ends."""

    scores: torch.Tensor
    tokens: torch.Tensor
    source: torch.Tensor
    ends: torch.Tensor


@dataclass
class _Finished:
    """Per image (all images, not just the active ones): the best finished hypotheses so far, best first."""

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

    def merge(
        self, images: torch.Tensor, scores: torch.Tensor, cand: _Candidates, joins: torch.Tensor, length: int
    ) -> None:
        """Keep the K best of the slots and the candidates of ``images`` (scores already penalised)."""
        beams = self.scores.shape[1]
        merged = torch.cat((self.scores[images], scores), dim=1)
        pick = torch.topk(merged, beams, dim=1).indices
        self.scores[images] = merged.gather(1, pick)
        self.log_prob[images] = torch.cat((self.log_prob[images], cand.scores), dim=1).gather(1, pick)
        self.filled[images] = torch.cat((self.filled[images], joins), dim=1).gather(1, pick)
        new_length = torch.full_like(cand.source, length)
        self.length[images] = torch.cat((self.length[images], new_length), dim=1).gather(1, pick)
        tokens = torch.cat((self.tokens[images], cand.tokens), dim=1)
        self.tokens[images] = _gather_beams(tokens, pick)

    def hypotheses(self, count: int, eos: int) -> list[list[Hypothesis]]:
        scores, log_prob = self.scores.tolist(), self.log_prob.tolist()
        tokens, length, filled = self.tokens.tolist(), self.length.tolist(), self.filled.tolist()
        results = []
        for image in range(len(scores)):
            found = []
            for slot in range(len(scores[image])):
                if not filled[image][slot] or scores[image][slot] <= REAL_SCORE_FLOOR:
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
    finished = _Finished.empty(num_images, beams, max_new, model.pad_token_id, device)
    # Images still searched, in batch order (on the device and, with the image of each row, on the host), and
    # transformers' is_early_stop_heuristic_unsatisfied per image.
    active = torch.arange(num_images, device=device)
    active_images = list(range(num_images))
    row_image = image_major_rows(active_images, beams)
    improvable = torch.ones(num_images, dtype=torch.bool, device=device)
    # Of the 2K candidates, only the first K may join the finished set.
    in_top_k = torch.arange(2 * beams, device=device) < beams

    for position in range(max_new):
        log_probs = forbid_early_eos(log_probs, position, config.min_new_tokens, model.eos_token_id)
        cand = _candidates(log_probs, running_scores, running_tokens, position, model.eos_token_id, max_new)
        running_scores, running_tokens, source = _next_running(cand, beams)
        joins = cand.ends & in_top_k
        scores = _finished_scores(cand, joins, finished.filled[active], improvable[active], position, config)
        finished.merge(active, scores, cand, joins, position + 1)
        improvable[active] &= _may_improve(running_scores, finished, active, position, config)
        full = finished.filled[active].all(dim=1) & (config.early_stopping is True)
        # The loop's one host synchronisation: which images go on (the batch shrinks as images close).
        going_on = improvable[active] & ~full
        searching = going_on.tolist()
        if position + 1 == max_new or not any(searching):
            break
        # Row r of the next batch continues beam source[image, beam] of its image; closed images drop out.
        batch_image = torch.arange(active.numel(), device=device)[:, None]
        rows = batch_image * beams + source
        if not all(searching):
            kept = kept_rows(going_on, sum(searching))
            rows, active = rows.index_select(0, kept), active.index_select(0, kept)
            running_scores, running_tokens = running_scores[kept], running_tokens[kept]
            active_images = [image for image, on in zip(active_images, searching, strict=True) if on]
            row_image = image_major_rows(active_images, beams)
        state = model.reorder_state(state, rows.flatten(), row_image)
        log_probs, state = model.step(running_tokens[:, :, position].flatten(), state)
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
    ends = (token == eos) | (position + 1 >= max_new)
    return _Candidates(scores, tokens, source, ends)


def _next_running(cand: _Candidates, beams: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best K candidates that do not end: (b, K) scores, (b, K, L) tokens, (b, K) source beams."""
    scores = cand.scores + cand.ends.to(torch.float32) * NEG
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
    full = filled.all(dim=1, keepdim=True) & (config.early_stopping is True)
    scores = scores + full.to(torch.float32) * NEG
    scores = scores + (~improvable[:, None]).to(torch.float32) * NEG
    return scores + (~joins).to(torch.float32) * NEG


def _may_improve(
    running_scores: torch.Tensor,
    finished: _Finished,
    active: torch.Tensor,
    position: int,
    config: DecodingConfig,
) -> torch.Tensor:
    """transformers' early-stop heuristic: can the best running beam still beat the worst finished hypothesis?

    The best running beam is scored at its current length, or at max_new_tokens for ``early_stopping="never"``
    with a positive length penalty (where longer can only score better).
    """
    penalty = config.length_penalty
    length = config.max_new_tokens if config.early_stopping == "never" and penalty > 0.0 else position + 1
    best_running = running_scores[:, :1] / (length**penalty)
    scores, filled = finished.scores[active], finished.filled[active]
    worst_finished = torch.where(filled, scores.min(dim=1, keepdim=True).values, NEG)
    return (best_running > worst_finished).any(dim=1)


def _gather_beams(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(b, n, L) tensor, (b, m) beam index -> (b, m, L)."""
    return tensor.gather(1, index[:, :, None].expand(-1, -1, tensor.shape[2]))
