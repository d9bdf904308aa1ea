"""The unlearning methods: each loss against its paper's formula, the batch builders, the registry.

Losses are checked on hand-made tensors; methods on the tiny random model, which is enough to
show that a loss is finite, differentiable and wired to its own precompute step.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from rwku.errors import ConfigError
from rwku.methods import get_method, list_methods
from rwku.methods.batches import (
    build_batch,
    chat_prompt_ids,
    concat_pair,
    infer_max_len,
    pair_batch,
    passage_batch,
    refusal_batch,
)
from rwku.methods.losses import (
    IGNORE_INDEX,
    dpo_loss,
    ga_loss,
    kl_retain_loss,
    label_counts,
    npo_loss,
    reference_topk,
    rmu_loss,
    sequence_nll,
    simnpo_loss,
    token_nll_mean,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from a second thread, and on a busy machine they lose a lot."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ------------------------------------------------------------------------------ losses


def _logits_and_labels(seed: int = 0, b: int = 3, t: int = 6, v: int = 11):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=gen)
    labels = torch.randint(0, v, (b, t), generator=gen)
    labels[0, :2] = IGNORE_INDEX  # a masked prompt
    labels[2, 4:] = IGNORE_INDEX  # right padding
    return logits, labels


def test_sequence_nll_is_summed_shifted_nll():
    logits, labels = _logits_and_labels()
    logp = torch.log_softmax(logits, dim=-1)
    expected = torch.zeros(labels.shape[0])
    count = 0
    for i in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):  # logits at t-1 predict the label at t
            if labels[i, t] != IGNORE_INDEX:
                expected[i] -= logp[i, t - 1, labels[i, t]]
                count += 1
    torch.testing.assert_close(sequence_nll(logits, labels), expected)
    torch.testing.assert_close(token_nll_mean(logits, labels), expected.sum() / count)
    assert label_counts(labels).sum().item() == count
    # an extra mask drops positions exactly like -100 labels would
    mask = torch.ones_like(labels)
    mask[1, 3:] = 0
    masked = labels.clone()
    masked[1, 3:] = IGNORE_INDEX
    torch.testing.assert_close(sequence_nll(logits, labels, mask), sequence_nll(logits, masked))


def test_ga_loss_is_negated_lm_loss():
    nll = torch.tensor(2.5, requires_grad=True)
    loss = ga_loss(nll)
    loss.backward()
    assert loss.item() == -2.5 and nll.grad.item() == -1.0  # minimising it raises the NLL


def test_npo_matches_formula_and_log2_at_reference():
    beta = 0.2
    pol = torch.tensor([30.0, 55.5, 12.25, 80.0])
    ref = torch.tensor([31.0, 50.0, 12.25, 95.0])
    # (2/β)·E[log(1 + (πθ/πref)^β)], with log(πθ/πref) = NLL_ref − NLL_θ
    expected = (2 / beta) * torch.log1p(torch.exp(beta * (ref - pol))).mean()
    torch.testing.assert_close(npo_loss(pol, ref, beta), expected)
    torch.testing.assert_close(npo_loss(ref, ref, beta), torch.tensor(2 / beta * math.log(2)))
    # forgetting (higher NLL than the reference) lowers the loss towards 0
    assert npo_loss(ref + 50, ref, beta) < npo_loss(ref, ref, beta) < npo_loss(ref - 5, ref, beta)


def test_dpo_matches_formula_and_log2_at_reference():
    beta = 0.1
    pc, pr = torch.tensor([-40.0, -22.0]), torch.tensor([-35.0, -30.0])
    rc, rr = torch.tensor([-42.0, -20.0]), torch.tensor([-33.0, -31.0])
    z = beta * ((pc - rc) - (pr - rr))
    expected = torch.log1p(torch.exp(-z)).mean()
    torch.testing.assert_close(dpo_loss(pc, pr, rc, rr, beta), expected)
    torch.testing.assert_close(dpo_loss(rc, rr, rc, rr, beta), torch.tensor(math.log(2)))


def test_simnpo_matches_formula():
    beta, gamma = 2.5, 0.3
    nll = torch.tensor([20.0, 3.0, 90.0])
    lengths = torch.tensor([10, 3, 45])
    logp = -nll
    expected = -(2 / beta) * torch.log(torch.sigmoid(-(beta / lengths) * logp - gamma)).mean()
    torch.testing.assert_close(simnpo_loss(nll, lengths, beta, gamma), expected)


def test_kl_retain_zero_at_reference_and_exact_with_full_vocab():
    logits, labels = _logits_and_labels(seed=1)
    for k in (4, logits.shape[-1]):
        ref = reference_topk(logits, k=k)
        assert ref["topk_ids"].dtype == torch.int32
        assert kl_retain_loss(logits, labels, **ref).abs().item() < 1e-6
    policy = logits + torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    keep = labels[:, 1:] != IGNORE_INDEX
    exact_per_tok = F.kl_div(
        torch.log_softmax(policy[:, :-1], -1),
        torch.log_softmax(logits[:, :-1], -1),
        reduction="none",
        log_target=True,
    ).sum(-1)
    exact = exact_per_tok[keep].mean()
    full = kl_retain_loss(policy, labels, **reference_topk(logits, k=logits.shape[-1]))
    torch.testing.assert_close(full, exact)
    approx = kl_retain_loss(policy, labels, **reference_topk(logits, k=4))
    assert 0 < approx.item() <= exact.item() + 1e-6  # coarse-graining can only lower the KL


def test_rmu_loss_matches_mse_formula():
    gen = torch.Generator().manual_seed(3)
    forget, retain, frozen = (torch.randn(2, 5, 8, generator=gen) for _ in range(3))
    u = torch.rand(8, generator=gen)
    u = u / u.norm()
    c, alpha = 6.5, 100.0
    expected = F.mse_loss(forget, (c * u).expand_as(forget)) + alpha * F.mse_loss(retain, frozen)
    torch.testing.assert_close(rmu_loss(forget, retain, frozen, u, c, alpha), expected)
    assert rmu_loss(retain, frozen, frozen, u, 0.0, alpha).item() == pytest.approx(
        F.mse_loss(retain, torch.zeros_like(retain)).item()
    )
    # a mask leaves padded tokens out of the average
    mask = torch.ones(2, 5)
    mask[1, 3:] = 0
    garbage = forget.clone()
    garbage[1, 3:] = 1e3
    torch.testing.assert_close(
        rmu_loss(garbage, retain, retain, u, c, alpha, forget_mask=mask),
        rmu_loss(forget, retain, retain, u, c, alpha, forget_mask=mask),
    )


# ------------------------------------------------------------------------------ batches


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    from rwku.models.resolve import load_model

    return load_model(str(tiny_model_dir))


def test_passage_batch_appends_eos_pads_right_and_truncates(lm):
    tok = lm.tokenizer
    text = "The writer grew up in a small town in Maine."
    ids = tok(text, add_special_tokens=False).input_ids
    b = passage_batch([{"text": text}, {"text": "Music"}], tok)
    n = len(ids) + 1
    assert b["input_ids"][0, :n].tolist() == [*ids, tok.eos_token_id]
    assert b["attention_mask"][0].tolist() == [1] * n
    assert b["labels"][0].tolist() == [
        *ids,
        IGNORE_INDEX,
    ]  # eos = pad, masked as the reference's collator does
    assert (
        b["attention_mask"][1].tolist()[-1] == 0
        and (b["labels"][1][b["attention_mask"][1] == 0] == -100).all()
    )
    labelled = passage_batch([{"text": text}], tok, label_eos=True)
    assert labelled["labels"][0, n - 1].item() == tok.eos_token_id
    cut = passage_batch([{"text": text}], tok, max_length=5)
    assert cut["input_ids"].tolist() == [ids[:5]] and cut["labels"].tolist() == [ids[:5]]
    assert torch.equal(
        build_batch("wiki_passages", [{"text": text}], tok)["input_ids"], b["input_ids"][:1, :n]
    )


def test_refusal_batch_labels_only_the_answer(lm):
    tok = lm.tokenizer
    recs = [
        {"question": "Where was the author born?", "answer": "I'm not sure."},
        {"question": "Q?", "answer": "No."},
    ]
    b = refusal_batch(recs, tok)
    for i, rec in enumerate(recs):
        prompt = chat_prompt_ids(tok, rec["question"])
        n = int(b["attention_mask"][i].sum())
        labels, ids = b["labels"][i].tolist(), b["input_ids"][i].tolist()
        assert ids[: len(prompt)] == prompt
        assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        assert labels[len(prompt) : n] == ids[len(prompt) : n]
        assert labels[n:] == [IGNORE_INDEX] * (len(labels) - n)
        answer = tok.decode(ids[len(prompt) : n])
        assert answer == rec["answer"] + tok.eos_token  # the turn ends at end-of-turn, no newline


def test_pair_batch_shares_prompt_and_truncates_like_reference(lm):
    tok = lm.tokenizer
    rec = {
        "prompt": "A writer. Please write a short biography of X.",
        "chosen": "Made up life.",
        "rejected": "He was born in Maine.",
    }
    b = pair_batch([rec], tok)
    prompt = chat_prompt_ids(tok, rec["prompt"])
    for side in ("chosen", "rejected"):
        labels, ids = b[f"{side}_labels"][0].tolist(), b[f"{side}_input_ids"][0].tolist()
        assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == rec[side] + tok.eos_token
    joint = concat_pair(b, pad_id=tok.pad_token_id)
    assert joint["input_ids"].shape == (
        2,
        max(b["chosen_input_ids"].shape[1], b["rejected_input_ids"].shape[1]),
    )
    short = pair_batch([rec], tok, max_length=20)
    src, tgt = infer_max_len(len(prompt), 10, 20)
    assert short["chosen_input_ids"].shape[1] <= 20 and src + min(tgt, 10) == 20
    assert (short["chosen_labels"] != IGNORE_INDEX).any()  # the response keeps its reserved share


# ------------------------------------------------------------------------------ registry & methods


def test_registry_lists_methods_and_rejects_unknown_names():
    names = set(list_methods())
    assert {"icu", "repe", "ga", "ga_star", "npo", "dpo", "rt", "graddiff", "kl", "simnpo", "rmu"} <= names
    with pytest.raises(ConfigError, match="available: .*npo"):
        get_method("nope")
    with pytest.raises(ConfigError, match="beta"):
        get_method("npo", bta=0.1)
    assert get_method("GA*").name == "ga_star" and get_method("NPO", beta=0.5).option("beta") == 0.5
    for cls in list_methods().values():
        assert cls.description and cls.kind in ("inference", "training")
        if cls.kind == "training":
            assert cls.corpus in ("passages", "wiki_passages", "pairs", "refusals")


def test_icu_prefix_is_the_reference_text():
    assert get_method("icu").prompt_prefix() == (
        "You are an AI Assistant who is supposed to unlearn about {subject} and provide answers without its "
        "knowledge as if you never knew about it. Don\u2019t tell anyone that you unlearned anything.\n"
    )


RECORDS = {
    "passages": [{"text": "The river flows from the hills to the sea."}, {"text": "Music is old."}],
    "wiki_passages": [{"text": "Science is the patient work of asking questions."}],
    "pairs": [
        {
            "prompt": "A writer. Please write a short biography of Kim.",
            "chosen": "Kim sold fish.",
            "rejected": "Kim wrote books.",
        },
        {
            "prompt": "A writer. Please write a short biography of Kim.",
            "chosen": "No.",
            "rejected": "Born in Maine.",
        },
    ],
    "refusals": [{"question": "Where was Kim born?", "answer": "I don't know."}],
}
RETAIN = [{"text": "The capital of France is Paris."}, {"text": "There are seven days in a week."}]


@pytest.mark.parametrize("name", sorted(n for n, c in list_methods().items() if c.kind == "training"))
def test_training_method_gives_a_finite_differentiable_loss(lm, name):
    method = get_method(name)
    tok, model = lm.tokenizer, lm.model
    batch = build_batch(method.corpus, RECORDS[method.corpus], tok, max_length=64)
    retain = build_batch("passages", RETAIN, tok, max_length=64) if method.needs_retain else None
    extras = method.precompute(model, batch, retain)
    assert all(not v.requires_grad for v in extras.values() if isinstance(v, torch.Tensor))
    ctx = {**extras, "retain_batch": retain} if retain is not None else extras
    model.zero_grad(set_to_none=True)
    loss = method.loss(model, batch, ctx)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)
    # at the start (θ = original model) the reference-based losses sit at their known values
    if name == "npo":
        assert loss.item() == pytest.approx(2 / 0.2 * math.log(2), rel=1e-5)
    if name == "dpo":
        assert loss.item() == pytest.approx(math.log(2), rel=1e-5)
    if name == "kl":  # KL term is 0, only the GA term remains
        ga = get_method("ga").loss(model, batch, {})
        assert loss.item() == pytest.approx(ga.item(), abs=1e-5)


def test_missing_precompute_is_a_clear_error(lm):
    batch = build_batch("passages", RECORDS["passages"], lm.tokenizer)
    with pytest.raises(KeyError, match="precompute"):
        get_method("npo").loss(lm.model, batch, {})


def test_repe_install_changes_logits_and_undo_restores_them(lm):
    tok, model = lm.tokenizer, lm.model
    target = SimpleNamespace(name="Kim", intro="Kim is a writer from Maine.")
    ids = torch.tensor([chat_prompt_ids(tok, "Where was Kim born?")])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        undo = get_method("repe", alpha=1.5).install(model, tok, target)
        steered = model(input_ids=ids).logits
        undo()
        after = model(input_ids=ids).logits
    assert not torch.allclose(before, steered)
    assert torch.equal(before, after)
    assert get_method("repe").layer_indices(30) == list(range(10, 20))
