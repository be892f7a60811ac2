"""Greedy decoding and sampling: one token per row and step, finished rows dropped from the batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from captionkit.decoding.config import DecodingConfig, Hypothesis
from captionkit.decoding.sampling import ImageGenerators, draw_seed, warp_scores
from captionkit.decoding.steps import first_step, forbid_early_eos, image_major_rows, kept_rows
from captionkit.models.base import CaptionModel, Encoded

# (R, V) log-probs, the image of each row (kept on the host) -> (R,) next tokens
Chooser = Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor]


def greedy_or_sample(
    model: CaptionModel,
    encoded: Encoded,
    config: DecodingConfig,
    image_offset: int = 0,
    starts: Sequence[int | None] | None = None,
) -> list[list[Hypothesis]]:
    """Greedy (argmax) or, with ``config.do_sample``, ``num_return_sequences`` samples per image.

    Rows are image-major (image i owns rows i*n .. i*n+n-1); a row leaves the batch when it emits eos.
    """
    num_images = encoded.tokens.shape[0]
    per_image = config.num_return_sequences if config.do_sample else 1
    device = encoded.tokens.device
    choose: Chooser = _sampler(config, num_images, image_offset, device) if config.do_sample else _argmax

    log_probs, state = first_step(model, encoded, per_image, config.start_token_id, config.prompt_ids, starts)
    num_rows = num_images * per_image
    out = _Outputs(num_rows, config.max_new_tokens, model.pad_token_id, device)
    alive = torch.arange(num_rows, device=device)  # output row of each batch row
    row_image = image_major_rows(range(num_images), per_image)  # the image of each batch row, on the host
    for position in range(config.max_new_tokens):
        log_probs = forbid_early_eos(log_probs, position, config.min_new_tokens, model.eos_token_id)
        tokens = choose(log_probs, row_image)
        ended = out.record(alive, position, tokens, log_probs, model.eos_token_id)
        if position + 1 == config.max_new_tokens:
            break
        ended_rows = ended.tolist()  # the loop's one host synchronisation: which rows go on
        if any(ended_rows):
            going_on = [row for row, end in enumerate(ended_rows) if not end]
            if not going_on:
                break
            row_image = tuple(row_image[row] for row in going_on)
            keep = kept_rows(~ended, len(going_on))
            alive, tokens = alive[keep], tokens[keep]
            state = model.reorder_state(state, keep, row_image)
        log_probs, state = model.step(tokens, state)
    return out.hypotheses(per_image, config.length_penalty, model.eos_token_id)


class _Outputs:
    """Generated tokens and summed log-probs per output row."""

    def __init__(self, num_rows: int, max_new_tokens: int, pad_token_id: int, device: torch.device) -> None:
        self.tokens = torch.full((num_rows, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
        self.log_prob = torch.zeros(num_rows, dtype=torch.float32, device=device)
        self.length = torch.zeros(num_rows, dtype=torch.long, device=device)
        self.finished = torch.zeros(num_rows, dtype=torch.bool, device=device)

    def record(
        self, rows: torch.Tensor, position: int, tokens: torch.Tensor, log_probs: torch.Tensor, eos: int
    ) -> torch.Tensor:
        """Store this step's tokens for ``rows``; returns which of them emitted eos."""
        self.tokens[rows, position] = tokens
        self.log_prob[rows] += log_probs.gather(1, tokens[:, None]).squeeze(1)
        self.length[rows] = position + 1
        ended = tokens == eos
        self.finished[rows] = ended
        return ended

    def hypotheses(self, per_image: int, length_penalty: float, eos: int) -> list[list[Hypothesis]]:
        tokens, log_prob = self.tokens.tolist(), self.log_prob.tolist()
        length, finished = self.length.tolist(), self.finished.tolist()
        # float32 tensor / Python float, as beam search (and transformers) compute it: equal bit for bit. One division
        # of all rows per length found, read back at once, rather than a division and a read per row (on a GPU a
        # wait each; the division by a host number is the same element by element whatever the tensor's size).
        lengths = sorted(set(length))
        by_length = torch.stack([self.log_prob / (n**length_penalty) for n in lengths]).tolist()
        scores = dict(zip(lengths, by_length, strict=True))
        rows = []
        for row in range(len(tokens)):
            kept = length[row] - int(finished[row])  # the final eos is not part of the caption
            rows.append(Hypothesis(tokens[row][:kept], scores[length[row]][row], log_prob[row], finished[row]))
        return [_best_first(rows[i : i + per_image]) for i in range(0, len(rows), per_image)]


def _best_first(hypotheses: list[Hypothesis]) -> list[Hypothesis]:
    # Stable: equal scores keep sample order.
    return sorted(hypotheses, key=lambda hypothesis: -hypothesis.score)


def _argmax(log_probs: torch.Tensor, row_image: tuple[int, ...]) -> torch.Tensor:
    return log_probs.argmax(dim=-1)


def _sampler(config: DecodingConfig, num_images: int, image_offset: int, device: torch.device) -> Chooser:
    seed = draw_seed() if config.seed is None else config.seed
    generators = ImageGenerators(num_images, seed + image_offset, device)

    def sample(log_probs: torch.Tensor, row_image: tuple[int, ...]) -> torch.Tensor:
        scores = warp_scores(log_probs, config.temperature, config.top_k, config.top_p)
        return generators.sample(scores.softmax(dim=-1), row_image)

    return sample
