"""Mixture-of-experts models (rwku.models.moe): recognition, routing, attribution, the anchor,
expert-mode training and the fast engine on tiny random models of five MoE families."""

from __future__ import annotations

import pytest
import torch

from helpers import plain_greedy
from rwku.errors import ConfigError
from rwku.models.backend import GenerationRequest
from rwku.models.hf import HFLanguageModel
from rwku.models.moe import (
    RouterCapture,
    anchor_loss,
    attribute,
    moe_layers,
    require_moe,
    routing,
    selection_shift,
)
from rwku.models.resolve import load_model, resolve_model
from rwku.models.tiny import TINY_ARCHITECTURES, make_tiny_model

MOE_ARCHS = [a for a in TINY_ARCHITECTURES if a != "llama"]


@pytest.fixture(scope="module", params=MOE_ARCHS)
def moe_dir(request, tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp(request.param), seed=0, arch=request.param)


@pytest.fixture(scope="module")
def moe_lm(moe_dir):
    loaded = load_model(resolve_model(str(moe_dir)))
    return HFLanguageModel(loaded.model, loaded.tokenizer, loaded.info, batch_size=4, progress=False)


def _batch(tok, texts):
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}


def test_every_family_is_recognised_with_its_experts(moe_lm):
    layers = moe_layers(moe_lm.model)
    cfg = moe_lm.model.config
    assert [ly.index for ly in layers] == list(range(cfg.num_hidden_layers))
    assert all(ly.num_experts == 4 and ly.top_k == 2 for ly in layers)
    sigmoid = cfg.model_type == "deepseek_v3"
    assert all(ly.scoring == ("sigmoid" if sigmoid else "softmax") for ly in layers)
    assert cfg._experts_implementation == "eager"  # switched on the CPU by load_model


def test_engine_generates_what_plain_generate_does(moe_lm):
    prompts = [
        moe_lm.chat_prompt(q) for q in ("Who wrote the novel?", "Where was the author born? " * 3, "x")
    ]
    reqs = [GenerationRequest(p, 12, group="g") for p in prompts]
    assert moe_lm.generate(reqs, stop_token_ids=[]) == [plain_greedy(moe_lm, p, 12) for p in prompts]


def test_router_capture_sees_every_token_and_probabilities_sum_to_one(moe_lm):
    b = _batch(moe_lm.tokenizer, ["The writer grew up in Maine.", "Music"])
    layers = moe_layers(moe_lm.model)
    with torch.no_grad(), RouterCapture(layers) as cap:
        moe_lm.model(**b, use_cache=False)
    for ly in layers:
        g = cap.probs[ly.index][0]
        assert g.shape == (b["input_ids"].numel(), 4)
        assert torch.allclose(g.sum(-1), torch.ones(g.shape[0]), atol=1e-5)
        assert cap.topk[ly.index][0].shape == (b["input_ids"].numel(), 2)


def test_attribution_finds_the_expert_a_hand_made_router_prefers(moe_dir):
    model = load_model(resolve_model(str(moe_dir))).model
    tok = load_model(resolve_model(str(moe_dir))).tokenizer
    with torch.no_grad():  # every token carries +5 on hidden dimension 0; layer 0's router reads it
        model.get_input_embeddings().weight[:, 0] = 5.0
        router = moe_layers(model)[0].router
        router.weight.zero_()
        router.weight[2, 0] = 4.0
    b = _batch(tok, ["The writer grew up in a small town.", "Science is patient work", "A B C"])
    att = attribute(model, [b])
    assert att.ranked()[0][:2] == (0, 2)
    assert att.ratio(0, 2) > 1.5  # sigmoid routers (DeepSeek-V3) cap it: 1/(1 + 3 x 0.5) x 4
    assert att.sequences == 3 and att.tokens == int(b["attention_mask"].sum())


def test_anchor_loss_equals_its_formula():
    g = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    mask = torch.tensor([1, 1, 0])
    by_hand = ((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.9**2 + 0.8**2)) / 2
    assert anchor_loss(g, 0, mask).item() == pytest.approx(by_hand)
    # the released code's F.mse_loss = the summed form / E on unpadded rows
    onehot = torch.nn.functional.one_hot(torch.zeros(3, dtype=torch.long), 3).float()
    assert torch.nn.functional.mse_loss(onehot, g).item() == pytest.approx(anchor_loss(g, 0).item() / 3)


def test_selection_shift_is_zero_for_the_same_model_and_counts_changes(moe_lm):
    b = _batch(moe_lm.tokenizer, ["The writer grew up in Maine.", "Music has been part of every culture"])
    r = routing(moe_lm.model, [b])
    same = selection_shift(r, r)
    assert same["mean"] == {"tv": 0.0, "changed_tokens": 0.0, "changed_slots": 0.0}
    moved = routing(moe_lm.model, [b])
    moved.selections[0] = moved.selections[0].flip(-1)  # the same set: no change counted
    assert selection_shift(r, moved)["mean"]["changed_tokens"] == 0.0
    moved.selections[0] = (moved.selections[0] + 1) % 4
    shift = selection_shift(r, moved)["per_layer"][str(r.layers[0])]
    assert shift["changed_tokens"] > 0 and 0 < shift["changed_slots"] <= 1


def test_dense_model_is_refused_with_one_clear_message(tiny_model_dir):
    model = load_model(resolve_model(str(tiny_model_dir))).model
    assert moe_layers(model) == []
    with pytest.raises(ConfigError, match="dense"):
        require_moe(model, "mode 'expert'")
