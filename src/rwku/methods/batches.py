"""Corpus records → training tensors, as the RWKU reference (LLaMA-Factory) builds them.

Three record shapes, produced by the corpus module (keys are fixed):

* passages (GA, NPO, GA*, SimNPO; also retain text): ``{"text": ...}`` — raw text + eos, no
  chat template, cut at ``max_length`` tokens; labels = input ids.
* pairs (DPO): ``{"prompt", "chosen", "rejected"}`` — the prompt is the user turn
  ("{intro} Please write a short biography of {target}.", see :data:`DPO_PROMPT`) through the
  chat template with the generation prompt; chosen = counterfactual, rejected = factual text;
  labels only on the response tokens.
* refusals (RT): ``{"question", "answer"}`` — user turn = the generated question, assistant
  turn = a refusal line; labels only on the answer tokens.

Every builder returns right-padded tensors ``input_ids``, ``attention_mask`` and ``labels``
(``-100`` = not a target); the pair builder returns them prefixed ``chosen_`` and ``rejected_``.

Fidelity notes (reference = LLaMA-Factory at RWKU commit b8a03b3):

* Passages are tokenized with ``add_special_tokens=False`` and the eos appended, as the
  reference's pre-training preprocessing does (without packing). Its GA/NPO collator
  (``DataCollatorForLanguageModeling``) masks every token equal to the pad id, and the pad
  token *is* the eos, so the appended eos is never a target there; ``label_eos=False`` (the
  default) reproduces that, ``label_eos=True`` trains on it.
* Chat examples are encoded as two segments — prompt and response — each tokenized on its own
  (the reference's template encoder does the same), and truncated with the reference's
  ``infer_max_len`` rule, which splits ``max_length`` between prompt and response in
  proportion to their lengths. The response segment is whatever the model's chat template
  renders after the generation prompt (the answer plus its end-of-turn marker), so the model
  learns to end its turn the way its template does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from rwku.methods.losses import IGNORE_INDEX

DPO_PROMPT = "{intro} Please write a short biography of {target}."
"""The DPO user turn (reference ``generation/pair_generation.py``)."""

Record = Mapping[str, Any]


def dpo_prompt(target: str, intro: str) -> str:
    return DPO_PROMPT.format(intro=intro, target=target)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``(input_ids, labels)`` rows into ``input_ids``, ``attention_mask``, ``labels``."""
    width = max((len(ids) for ids, _ in rows), default=0)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[i, : len(ids)] = 1
        labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def passage_batch(
    records: Sequence[Record], tokenizer, max_length: int = 512, label_eos: bool = False
) -> dict[str, torch.Tensor]:
    """Raw text + eos, cut at ``max_length`` tokens; labels = input ids (see module notes on eos)."""
    pad_id = _pad_id(tokenizer)
    rows = []
    for rec in records:
        ids = (_encode(tokenizer, rec["text"]) + [tokenizer.eos_token_id])[:max_length]
        labels = ids if label_eos else [IGNORE_INDEX if t == pad_id else t for t in ids]
        rows.append((ids, list(labels)))
    return collate(rows, pad_id)


def chat_prompt_ids(tokenizer, user: str) -> list[int]:
    """Token ids of one user turn through the chat template, with the generation prompt."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    return _encode(tokenizer, text)


def response_ids(tokenizer, user: str, response: str) -> list[int]:
    """Token ids of the assistant turn as the template renders it after the generation prompt.

    The newline some templates put after the end-of-turn marker (ChatML's after ``<|im_end|>``)
    separates turns and is left out, as in the reference, whose responses end at the
    end-of-turn token. Falls back to ``response + eos`` for a template whose full rendering
    does not start with its prompt rendering (some rewrite earlier turns once an answer follows).
    """
    user_msg = {"role": "user", "content": user}
    prompt = tokenizer.apply_chat_template([user_msg], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [user_msg, {"role": "assistant", "content": response}], tokenize=False, add_generation_prompt=False
    )
    tail = full[len(prompt) :].rstrip("\n")
    if full.startswith(prompt) and response.strip() in tail:
        return _encode(tokenizer, tail)
    return _encode(tokenizer, response) + [tokenizer.eos_token_id]


def infer_max_len(
    source_len: int, target_len: int, cutoff_len: int, reserved_label_len: int = 1
) -> tuple[int, int]:
    """The reference's split of ``cutoff_len`` between prompt (source) and response (target)."""
    max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    max_target_len = max(max_target_len, reserved_label_len)
    max_source_len = cutoff_len - min(max_target_len, target_len)
    return max_source_len, max_target_len


def _sft_row(prompt: list[int], response: list[int]) -> tuple[list[int], list[int]]:
    return prompt + response, [IGNORE_INDEX] * len(prompt) + response


def refusal_batch(records: Sequence[Record], tokenizer, max_length: int = 512) -> dict[str, torch.Tensor]:
    """User turn = question, assistant turn = refusal; labels only on the answer tokens."""
    rows = []
    for rec in records:
        prompt = chat_prompt_ids(tokenizer, rec["question"])
        answer = response_ids(tokenizer, rec["question"], rec["answer"])
        src, tgt = infer_max_len(len(prompt), len(answer), max_length)
        rows.append(_sft_row(prompt[:src], answer[:tgt]))
    return collate(rows, _pad_id(tokenizer))


def pair_batch(records: Sequence[Record], tokenizer, max_length: int = 512) -> dict[str, torch.Tensor]:
    """DPO pairs: ``chosen_*`` and ``rejected_*`` tensors sharing each record's prompt."""
    chosen_rows, rejected_rows = [], []
    for rec in records:
        prompt = chat_prompt_ids(tokenizer, rec["prompt"])
        chosen = response_ids(tokenizer, rec["prompt"], rec["chosen"])
        rejected = response_ids(tokenizer, rec["prompt"], rec["rejected"])
        src, tgt = infer_max_len(len(prompt), max(len(chosen), len(rejected)), max_length)
        chosen_rows.append(_sft_row(prompt[:src], chosen[:tgt]))
        rejected_rows.append(_sft_row(prompt[:src], rejected[:tgt]))
    pad_id = _pad_id(tokenizer)
    out = {f"chosen_{k}": v for k, v in collate(chosen_rows, pad_id).items()}
    out.update({f"rejected_{k}": v for k, v in collate(rejected_rows, pad_id).items()})
    return out


def build_batch(
    corpus: str, records: Sequence[Record], tokenizer, max_length: int = 512
) -> dict[str, torch.Tensor]:
    """The batch for a method's ``corpus`` kind (``passages``/``wiki_passages``/``pairs``/``refusals``)."""
    if corpus in ("passages", "wiki_passages"):
        return passage_batch(records, tokenizer, max_length)
    if corpus == "pairs":
        return pair_batch(records, tokenizer, max_length)
    if corpus == "refusals":
        return refusal_batch(records, tokenizer, max_length)
    raise ValueError(f"unknown corpus kind {corpus!r}")


def concat_pair(batch: Mapping[str, torch.Tensor], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows as one right-padded batch [2B, T], for a single forward.

    Right padding with masked attention leaves the logits of real positions unchanged, and the
    padded labels are ``-100``, so log-probs match two separate forwards.
    """
    width = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    out = {}
    for key, value in fill.items():
        parts = []
        for side in ("chosen", "rejected"):
            t = batch[f"{side}_{key}"]
            parts.append(torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value))
        out[key] = torch.cat(parts, dim=0)
    return out
