"""cnn-lstm(-attention) and prefix-gpt2 against their papers, recomputed by hand from the models' weights.

The references below are written from the formulas (Show and Tell, Vinyals 2015; Show, Attend and Tell, Xu 2015;
ClipCap, Mokady 2021, as users know them from sgrvinod's tutorial and ClipCap's code) with plain tensor algebra: the
LSTM cell from its gate equations, additive attention from its definition, GPT-2 from its block equations. They read
the models' parameters but none of the models' own forward code, so a model that drifts from the formulas fails here
even where it agrees with itself (teacher forcing against its own step protocol).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from _families import peaked, pixels
from _helpers import tiny_model
from captionkit.decoding import DecodingConfig, generate
from captionkit.models.base import Encoded
from captionkit.models.cnn_lstm import CnnLstmAttentionModel
from captionkit.training.loss import caption_loss_total

pytestmark = pytest.mark.usefixtures("single_thread")

IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
Tensor = torch.Tensor


# --- Show and Tell / Show, Attend and Tell, by hand


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, cell: torch.nn.LSTMCell) -> tuple[Tensor, Tensor]:
    """One LSTM step from its equations (gates in torch's order: input, forget, cell, output)."""
    gates = x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def soft_attention(model: CnnLstmAttentionModel, regions: Tensor, h: Tensor, mask: Tensor | None) -> Tensor:
    """Bahdanau: e_i = v . tanh(W a_i + U h + b) + b_v, alpha = softmax over the valid regions."""
    keys = regions @ model.region_keys.weight.T + model.region_keys.bias  # (B, N, A)
    query = h @ model.hidden_query.weight.T + model.hidden_query.bias  # (B, A)
    scores = torch.tanh(keys + query[:, None]) @ model.attention_score.weight[0] + model.attention_score.bias
    if mask is not None:
        scores = torch.where(mask, scores, torch.tensor(-math.inf))
    weights = torch.exp(scores - scores.max(dim=1, keepdim=True).values)  # exp(-inf) = 0 for a masked region
    return weights / weights.sum(dim=1, keepdim=True)


def show_attend_tell(
    model: CnnLstmAttentionModel, regions: Tensor, input_ids: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(logits (B, T, V), alphas (B, T, N), betas (B, T)) of Xu et al.'s decoder, teacher forced."""
    valid = torch.ones(regions.shape[:2]) if mask is None else mask.float()
    mean = (regions * valid[..., None]).sum(dim=1) / valid.sum(dim=1, keepdim=True)
    h = mean @ model.init_h.weight.T + model.init_h.bias
    c = mean @ model.init_c.weight.T + model.init_c.bias
    logits, alphas, betas = [], [], []
    for t in range(input_ids.shape[1]):
        alpha = soft_attention(model, regions, h, mask)
        beta = torch.sigmoid(h @ model.gate.weight[0] + model.gate.bias)  # a gating scalar per row
        context = beta[:, None] * (alpha[..., None] * regions).sum(dim=1)
        x = torch.cat([model.embed.weight[input_ids[:, t]], context], dim=1)
        h, c = lstm_cell(x, h, c, model.cell)
        logits.append(h @ model.output.weight.T + model.output.bias)
        alphas.append(alpha)
        betas.append(beta)
    return torch.stack(logits, 1), torch.stack(alphas, 1), torch.stack(betas, 1)


def show_and_tell(model: torch.nn.Module, regions: Tensor, input_ids: Tensor) -> Tensor:
    """Vinyals et al.: x_{-1} = W_I CNN(I) (the mean-pooled feature map) from a zero state, then the words."""
    image = regions.mean(dim=1) @ model.image_input.weight.T + model.image_input.bias
    zeros = torch.zeros(regions.shape[0], model.config.hidden_size)
    h, c = lstm_cell(image, zeros, zeros, model.cell)
    logits = []
    for t in range(input_ids.shape[1]):
        h, c = lstm_cell(model.embed.weight[input_ids[:, t]], h, c, model.cell)
        logits.append(h @ model.output.weight.T + model.output.bias)
    return torch.stack(logits, 1)


def step_logits(model: torch.nn.Module, encoded: Encoded, input_ids: Tensor) -> Tensor:
    """The step protocol's log-probabilities, one token at a time: (B, T, V)."""
    state = model.init_state(encoded)
    out = []
    for t in range(input_ids.shape[1]):
        log_probs, state = model.step(input_ids[:, t], state)
        out.append(log_probs)
    return torch.stack(out, 1)


def caption_ids(rows: int, length: int, vocab: int, seed: int) -> Tensor:
    ids = torch.randint(3, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = IDS["bos_token_id"]
    return ids


def test_resnet50_grid_is_49_tokens_of_2048_in_row_major_order() -> None:
    model = tiny_model("cnn-lstm-attention", 0, vocab_size=16, **{"image_size": 224}, **_resnet50()).eval()
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = model.encoder(pixel_values=image)
        tokens = model.encode(image).tokens
        state = model.init_state(Encoded(tokens))
    grid = output.last_hidden_state
    assert grid.shape == (1, 2048, 7, 7) and tokens.shape == (1, 49, 2048)
    for index in (0, 6, 7, 30, 48):  # token r * 7 + c is grid cell (r, c)
        assert torch.equal(tokens[0, index], grid[0, :, index // 7, index % 7])
    # h0, c0 come from the mean feature, which is the ResNet's own global average pool.
    pooled = output.pooler_output.flatten(1)
    torch.testing.assert_close(state.h, model.init_h(pooled), rtol=0, atol=1e-5)
    torch.testing.assert_close(state.c, model.init_c(pooled), rtol=0, atol=1e-5)


def _resnet50() -> dict:
    # The base preset's encoder (ResNet-50) with a tiny decoder, so the test builds in about a second.
    return {
        "encoder_embedding_size": 64,
        "encoder_hidden_sizes": (256, 512, 1024, 2048),
        "encoder_depths": (3, 4, 6, 3),
        "encoder_layer_type": "bottleneck",
        "freeze_encoder": True,
    }


def test_show_attend_and_tell_matches_the_paper_in_forward_steps_and_maps() -> None:
    model = peaked("cnn-lstm-attention", seed=11, std=0.2)
    images, input_ids = pixels(3, 1), caption_ids(3, 7, 16, 1)
    with torch.no_grad():
        encoded = model.encode(images)
        logits, alphas, betas = show_attend_tell(model, encoded.tokens, input_ids)
        forward = model(images, input_ids)
        stepped = step_logits(model, encoded, input_ids)
        maps = model.attention_maps(images, input_ids)
    torch.testing.assert_close(forward, logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(stepped, logits.log_softmax(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(model.last_attention, alphas, rtol=0, atol=1e-6)
    assert maps is not None and maps.shape == (3, 7, 4, 4)
    torch.testing.assert_close(maps.flatten(2), alphas, rtol=0, atol=1e-6)
    torch.testing.assert_close(alphas.sum(-1), torch.ones(3, 7))
    # Not a degenerate check: the gate is a real scalar in (0, 1) that varies, and attention is not uniform.
    assert 0.05 < float(betas.min()) < float(betas.max()) < 0.95
    assert float((alphas - 1 / 16).abs().max()) > 0.02


def test_attention_is_a_distribution_over_the_valid_regions_only() -> None:
    model = peaked("cnn-lstm-attention", seed=12, std=0.2)
    input_ids = caption_ids(2, 5, 16, 2)
    with torch.no_grad():
        regions = model.encode(pixels(2, 2)).tokens
        mask = torch.tensor([[True] * 16, [True] * 9 + [False] * 7])
        logits, alphas, _ = show_attend_tell(model, regions, input_ids, mask)
        forward = model(None, input_ids, encoded=Encoded(regions, mask))
        stepped = step_logits(model, Encoded(regions, mask), input_ids)
    torch.testing.assert_close(forward, logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(stepped, logits.log_softmax(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(model.last_attention, alphas, rtol=0, atol=1e-6)
    assert torch.equal(model.last_attention[1, :, 9:], torch.zeros(5, 7))
    torch.testing.assert_close(model.last_attention.sum(-1), torch.ones(2, 5))


def test_doubly_stochastic_penalty_is_lambda_sum_over_regions_mean_over_images() -> None:
    model = peaked("cnn-lstm-attention", seed=13, std=0.2, attention_penalty=0.7)
    images = pixels(2, 3)
    input_ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        _, alphas, _ = show_attend_tell(model, model.encode(images).tokens, input_ids)
        model(images, input_ids, mask)
    # Xu et al. eq. 14: lambda * sum_i (1 - sum_t alpha_ti)^2, t over the steps that predict a real token
    # (4 in the first caption, 2 in the second), averaged over the batch.
    first = 0.7 * sum((1 - float(alphas[0, :4, i].sum())) ** 2 for i in range(16))
    second = 0.7 * sum((1 - float(alphas[1, :2, i].sum())) ** 2 for i in range(16))
    penalty = model.auxiliary_loss()
    assert penalty is not None
    assert float(penalty) == pytest.approx((first + second) / 2, rel=1e-5)


def test_show_and_tell_feeds_the_image_once_before_the_words() -> None:
    model = peaked("cnn-lstm", seed=14, std=0.2)
    images, input_ids = pixels(3, 4), caption_ids(3, 6, 16, 4)
    with torch.no_grad():
        encoded = model.encode(images)
        logits = show_and_tell(model, encoded.tokens, input_ids)
        forward = model(images, input_ids)
        stepped = step_logits(model, encoded, input_ids)
    torch.testing.assert_close(forward, logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(stepped, logits.log_softmax(-1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["cnn-lstm", "cnn-lstm-attention"])
def test_greedy_decoding_scores_are_the_by_hand_log_probabilities(family: str) -> None:
    model = peaked(family, seed=15, std=0.2)
    images = pixels(2, 5)
    found = generate(model, images, config=DecodingConfig(max_new_tokens=6))
    reference = show_attend_tell if model.attends else show_and_tell
    for row, hypotheses in enumerate(found):
        words = hypotheses[0].token_ids + [model.eos_token_id] * hypotheses[0].finished
        ids = torch.tensor([[model.bos_token_id, *words]])
        with torch.no_grad():
            out = reference(model, model.encode(images[row : row + 1]).tokens, ids)
        logits = out[0] if isinstance(out, tuple) else out
        log_probs = logits[0, :-1].log_softmax(-1)
        # Greedy picks the by-hand argmax at every step, and its score is the by-hand sum.
        assert log_probs.argmax(-1).tolist()[: len(words)] == words
        expected = float(log_probs.gather(1, torch.tensor(words)[:, None]).sum())
        assert hypotheses[0].log_prob == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("family", ["cnn-lstm", "cnn-lstm-attention"])
def test_a_frozen_resnet_uses_its_running_statistics_in_training_mode(family: str) -> None:
    images, input_ids = pixels(4, 6), caption_ids(4, 5, 16, 6)
    frozen = peaked(family, seed=16, std=0.2, freeze_encoder=True)
    trained = peaked(family, seed=16, std=0.2, freeze_encoder=False)
    with torch.no_grad():
        frozen_eval, trained_eval = frozen.eval()(images, input_ids), trained.eval()(images, input_ids)
        frozen_train, trained_train = frozen.train()(images, input_ids), trained.train()(images, input_ids)
    torch.testing.assert_close(frozen_eval, trained_eval, rtol=0, atol=0)  # same weights
    # Frozen: the batch norms keep their statistics, so training mode (no dropout in tiny) changes nothing.
    torch.testing.assert_close(frozen_train, frozen_eval, rtol=0, atol=0)
    # Trained: batch statistics are used in training mode, as for any ResNet being fine-tuned.
    assert not torch.allclose(trained_train, trained_eval, atol=1e-3)


# --- ClipCap, by hand


def gpt2_by_hand(gpt2: torch.nn.Module, embeds: Tensor) -> Tensor:
    """GPT-2's logits from its block equations (pre-norm, causal attention, gelu_new MLP, tied head), positions
    0..L-1 added to the input embeddings: (B, L, width) -> (B, L, V)."""
    t = gpt2.transformer
    length = embeds.shape[1]
    x = embeds + t.wpe.weight[:length]
    causal = torch.ones(length, length).tril().bool()
    for block in t.h:
        heads = block.attn.num_heads
        a = F.layer_norm(x, x.shape[-1:], block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
        q, k, v = (a @ block.attn.c_attn.weight + block.attn.c_attn.bias).split(x.shape[-1], dim=2)
        q, k, v = (z.unflatten(2, (heads, -1)).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(2, 3) / math.sqrt(q.shape[-1])).masked_fill(~causal, -math.inf)
        attended = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
        x = x + attended @ block.attn.c_proj.weight + block.attn.c_proj.bias
        m = F.layer_norm(x, x.shape[-1:], block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
        m = m @ block.mlp.c_fc.weight + block.mlp.c_fc.bias
        m = 0.5 * m * (1 + torch.tanh(math.sqrt(2 / math.pi) * (m + 0.044715 * m**3)))
        x = x + m @ block.mlp.c_proj.weight + block.mlp.c_proj.bias
    x = F.layer_norm(x, x.shape[-1:], t.ln_f.weight, t.ln_f.bias, t.ln_f.eps)
    return x @ t.wte.weight.T


def clipcap_mlp_prefix(model: torch.nn.Module, embedding: Tensor) -> Tensor:
    """ClipCap's MLP mapper: Linear -> tanh -> Linear to K * width, viewed as K tokens; on the embedding itself, or
    after the linear projection that ``mapper_style: torch`` models have."""
    torch_style = model.config.mapper_style == "torch"
    projected = embedding @ model.project.weight.T + model.project.bias if torch_style else embedding
    first, last = model.mapper.mlp[0], model.mapper.mlp[2]
    hidden = torch.tanh(projected @ first.weight.T + first.bias)
    flat = hidden @ last.weight.T + last.bias
    return flat.view(embedding.shape[0], model.config.prefix_length, model.config.decoder_hidden_size)


def torch_transformer_prefix(model: torch.nn.Module, embedding: Tensor) -> Tensor:
    """The transformer mapper of ``mapper_style: torch`` (models saved before ClipCap's own; ClipCap's is computed by
    hand in test_clipcap_mapper.py): ClipCap's layout (K tokens from a linear map after the projection, K learned
    constants appended, a pre-norm transformer with full attention over the 2K, the constants' outputs kept) in
    torch's layers (biased q/k/v, GELU)."""
    k, width = model.config.prefix_length, model.config.decoder_hidden_size
    projected = embedding @ model.project.weight.T + model.project.bias
    spread = (projected @ model.mapper.expand.weight.T + model.mapper.expand.bias).view(-1, k, width)
    x = torch.cat([spread, model.mapper.constants.expand(spread.shape[0], -1, -1)], dim=1)
    for layer in model.mapper.transformer.layers:
        heads = layer.self_attn.num_heads
        a = F.layer_norm(x, (width,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
        q, k_, v = (a @ layer.self_attn.in_proj_weight.T + layer.self_attn.in_proj_bias).split(width, dim=2)
        q, k_, v = (z.unflatten(2, (heads, -1)).transpose(1, 2) for z in (q, k_, v))
        attended = ((q @ k_.transpose(2, 3) / math.sqrt(q.shape[-1])).softmax(-1) @ v).transpose(1, 2).flatten(2)
        x = x + attended @ layer.self_attn.out_proj.weight.T + layer.self_attn.out_proj.bias
        m = F.layer_norm(x, (width,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)
        m = F.gelu(m @ layer.linear1.weight.T + layer.linear1.bias)
        x = x + m @ layer.linear2.weight.T + layer.linear2.bias
    return x[:, k:]


@pytest.mark.parametrize(("mapper", "style"), [("mlp", "clipcap"), ("mlp", "torch"), ("transformer", "torch")])
def test_clipcap_prefix_through_gpt2_matches_forward_and_steps(mapper: str, style: str) -> None:
    # ClipCap's transformer mapper is computed by hand in test_clipcap_mapper.py.
    model = peaked("prefix-gpt2", seed=17, std=0.1, mapper=mapper, mapper_style=style)
    images, input_ids = pixels(3, 7), caption_ids(3, 6, 16, 7)
    with torch.no_grad():
        cls = model.encoder(pixel_values=images).last_hidden_state[:, 0]  # the image embedding: the CLS token
        encoded = model.encode(images)
        by_hand = clipcap_mlp_prefix if mapper == "mlp" else torch_transformer_prefix
        prefix = by_hand(model, cls)
        embeds = torch.cat([prefix, model.gpt2.transformer.wte.weight[input_ids]], dim=1)
        logits = gpt2_by_hand(model.gpt2, embeds)[:, 4:]  # the caption positions, after the 4 prefix tokens
        forward = model(images, input_ids)
        stepped = step_logits(model, encoded, input_ids)
    assert torch.equal(encoded.tokens[:, 0], cls)
    assert prefix.shape == (3, 4, 64)
    torch.testing.assert_close(model.prefix(encoded), prefix, rtol=0, atol=1e-5)
    torch.testing.assert_close(forward, logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(stepped, logits.log_softmax(-1), rtol=0, atol=1e-5)


def test_the_loss_reads_caption_targets_only() -> None:
    model = peaked("prefix-gpt2", seed=18, std=0.1)
    images = pixels(2, 8)
    input_ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        cls = model.encoder(pixel_values=images).last_hidden_state[:, 0]
        embeds = torch.cat([clipcap_mlp_prefix(model, cls), model.gpt2.transformer.wte.weight[input_ids]], dim=1)
        log_probs = gpt2_by_hand(model.gpt2, embeds).log_softmax(-1)
        loss, _ = caption_loss_total(model(images, input_ids, mask), input_ids, mask)
    # Position 4 + t (t = 0 is bos) predicts caption token t + 1; the prefix positions 0..3 predict nothing.
    targets = [(0, t, int(input_ids[0, t + 1])) for t in range(4)] + [
        (1, t, int(input_ids[1, t + 1])) for t in range(2)
    ]
    expected = -sum(float(log_probs[row, 4 + t, token]) for row, t, token in targets)
    assert float(loss) == pytest.approx(expected, abs=1e-4)


def test_with_encoder_and_gpt2_frozen_only_the_mapper_learns() -> None:
    model = peaked("prefix-gpt2", seed=19, std=0.1, freeze_encoder=True, freeze_decoder=True, decoder_dropout=0.5)
    images, input_ids = pixels(2, 9), caption_ids(2, 5, 16, 9)
    with torch.no_grad():
        evaluated = model.eval()(images, input_ids)
    model.train()
    logits = model(images, input_ids)
    # A frozen GPT-2 stays in eval mode: its 0.5 dropout draws nothing, training mode gives the eval logits.
    torch.testing.assert_close(logits, evaluated, rtol=0, atol=0)
    logits.logsumexp(-1).sum().backward()
    learned = {name.split(".", 1)[0] for name, p in model.named_parameters() if p.grad is not None}
    assert learned == {"mapper"}  # ClipCap's MLP reads the embedding itself: no projection to learn
    assert all(p.grad.abs().sum() > 0 for p in model.mapper.parameters())


# --- ClipCap's mapper widths when starting from CLIP and GPT-2


@pytest.fixture(scope="module")
def clip_and_gpt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    from _hub_parts import save_clip, save_gpt2

    directory = tmp_path_factory.mktemp("parts")
    return str(save_clip(directory / "clip")), str(save_gpt2(directory / "gpt2"))  # GPT-2 width 32


@pytest.mark.parametrize(
    ("overrides", "width"),
    [
        ({}, 10 * 32 // 2),  # ClipCap's MLP: prefix_length * width / 2
        ({"prefix_length": 6}, 6 * 32 // 2),
        # ClipCap's transformer mapper: feed-forward 2 * width (mlp_ratio 2), whatever the prefix length.
        ({"mapper": "transformer", "prefix_length": 40, "freeze_decoder": True}, 2 * 32),
        ({"mapper": "transformer", "prefix_length": 10}, 2 * 32),
        ({"mapper_hidden_size": 48}, 48),  # a width the user sets is the width
        ({"mapper": "transformer", "mapper_hidden_size": 48}, 48),
    ],
)
def test_from_parts_takes_clipcaps_mapper_width_or_the_one_given(
    clip_and_gpt2: tuple[str, str], overrides: dict, width: int
) -> None:
    from captionkit.models.prefix_gpt2 import PrefixGpt2Model

    model = PrefixGpt2Model.from_parts(*clip_and_gpt2, **overrides)
    assert model.config.mapper_hidden_size == width
    if model.config.mapper == "mlp":
        assert model.mapper.mlp[0].out_features == width
    else:
        assert {layer.mlp.fc1.out_features for layer in model.mapper.transformer.layers} == {width}


def test_from_parts_names_a_prefix_length_of_the_wrong_type(clip_and_gpt2: tuple[str, str]) -> None:
    from captionkit.errors import ConfigError
    from captionkit.models.prefix_gpt2 import PrefixGpt2Model

    with pytest.raises(ConfigError) as raised:
        PrefixGpt2Model.from_parts(*clip_and_gpt2, prefix_length="ten")
    assert str(raised.value) == "prefix_length: expected int, got str 'ten'"


def test_the_captioners_attention_maps_are_the_by_hand_weights_of_each_word(tmp_path) -> None:
    from PIL import Image

    from _data import real_photos
    from _helpers import save_tiny_model
    from captionkit.api import Captioner

    captions = ("a dog runs on the grass", "a cat sits on a red couch", "two birds fly over the sea")
    directory = save_tiny_model(tmp_path / "lstm", "cnn-lstm-attention", seed=3, captions=captions)
    captioner = Captioner.from_pretrained(directory, device="cpu")
    model = captioner.model
    draw = torch.Generator().manual_seed(3)
    with torch.no_grad():  # peaked decoder weights: captions with words in them
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2 and not name.startswith("encoder."):
                parameter.normal_(0.0, 0.3, generator=draw)
    images = [Image.open(path).convert("RGB") for path in real_photos(2)]
    results = captioner.caption(images, attention=True, num_beams=2, num_return_sequences=2, max_new_tokens=5)
    pixels_of = torch.from_numpy(captioner.preprocessing(images))
    seen = 0
    for row, result in enumerate(results):
        for caption in result.captions:
            ids = torch.tensor([[model.bos_token_id, *caption.token_ids]])
            with torch.no_grad():
                _, alphas, _ = show_attend_tell(model, model.encode(pixels_of[row : row + 1]).tokens, ids)
            # Map k is the attention while the caption's k-th word was chosen, on the 4 x 4 ResNet grid.
            expected = alphas[0, : len(caption.token_ids)].reshape(-1, 4, 4).numpy()
            assert caption.attention.shape == expected.shape
            assert abs(caption.attention - expected).max() < 1e-5
            seen += len(caption.token_ids)
    assert seen > 0
