"""Reference computations the engine tests compare against: plain, unbatched transformers."""

from __future__ import annotations

import torch

from rwku.models.hf import HFLanguageModel

#: Forget passages and retain text of the trainer tests (tiny models, a handful of steps).
PASSAGES = [
    {"text": "The writer grew up in a small town in Maine, where the winters were long."},
    {"text": "His first novel was rejected many times before a publisher accepted it."},
    {"text": "Many of his stories were adapted into films and television series."},
    {"text": "Readers bought his books in airports and train stations."},
]
RETAIN = [{"text": "The capital of France is Paris."}, {"text": "There are seven days in a week."}]


def plain_greedy(lm: HFLanguageModel, prompt: str, max_new: int, logits_processor=None) -> str:
    """Greedy continuation of ``prompt`` by ``model.generate`` on one unpadded row (with
    ``logits_processor``, a list of transformers processors, when given)."""
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids.to(lm.model.device)
    out = lm.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new,
        do_sample=False,
        eos_token_id=lm.tokenizer.eos_token_id,
        pad_token_id=lm.pad_id,
        logits_processor=logits_processor,
    )
    full = lm.tokenizer.decode(out[0], skip_special_tokens=True)
    return full[len(lm.tokenizer.decode(ids[0], skip_special_tokens=True)) :]
