"""``rwku experts``: which experts of a mixture-of-experts model hold a target (UOE/SEUF Eq. 2).

The attribution ``s_i^(l)`` (:func:`rwku.models.moe.attribute`) is computed on the target's
forget corpus — the same passages ``rwku run --method ga`` trains on (model-written and cached
by default) — and, to show how stable the choice is, separately on its first and second half,
as the paper's App. D compares calibration sets: per layer the top-1 agreement and the top-k
overlap (k = the model's routing top-k), and whether the best (layer, expert) overall is the
same. ``--mode expert`` with the default ``--experts 1`` trains the table's first row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["expert_table", "format_expert_table", "stability"]


def stability(a: Any, b: Any) -> dict[str, Any]:
    """Agreement of two attributions (:class:`rwku.models.moe.Attribution`) of the same layers."""
    per_layer = {}
    for layer, k, sa, sb in zip(a.layers, a.top_k, a.scores, b.scores):
        top_a = sorted(range(len(sa)), key=lambda e: -sa[e])
        top_b = sorted(range(len(sb)), key=lambda e: -sb[e])
        per_layer[str(layer)] = {
            "top1_agrees": top_a[0] == top_b[0],
            "topk_overlap": round(len(set(top_a[:k]) & set(top_b[:k])) / k, 4),
        }
    n = max(len(per_layer), 1)
    return {
        "top1_agreement": round(sum(v["top1_agrees"] for v in per_layer.values()) / n, 4),
        "topk_overlap": round(sum(v["topk_overlap"] for v in per_layer.values()) / n, 4),
        "best_agrees": a.ranked()[0][:2] == b.ranked()[0][:2],
        "per_layer": per_layer,
    }


def _attribute_records(model: Any, tokenizer: Any, records: Sequence[dict], max_length: int) -> Any:
    from rwku.methods.trainer import make_batches
    from rwku.models.moe import attribute

    return attribute(model, make_batches("passages", records, tokenizer, 8, max_length))


def expert_table(cfg: Any, top: int = 3, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Attribution of ``cfg.targets[0]``'s forget corpus on ``cfg.model`` (an UnlearnConfig).

    Returns a JSON-ready dict: per layer the ``top`` experts with affinity s and its ratio to
    uniform routing, the overall ranking, and the stability between the corpus halves.
    """
    import torch

    from rwku.data import open_data
    from rwku.errors import ConfigError
    from rwku.experiments.unlearn import load_corpus_for
    from rwku.methods import get_method
    from rwku.models.hf import HFLanguageModel
    from rwku.models.moe import require_moe
    from rwku.models.resolve import load_model

    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    data = open_data(cfg.data)
    target = data.target(cfg.targets[0])
    loaded = load_model(
        cfg.model, dtype=cfg.dtype, device=cfg.device, trust_remote_code=cfg.trust_remote_code
    )
    layers = require_moe(loaded.model, "rwku experts")
    lm = HFLanguageModel(
        loaded.model, loaded.tokenizer, loaded.info, batch_size=cfg.eval_batch_size, progress=False
    )
    log(f"building the forget corpus for {target.name} ({cfg.corpus}) ...")
    records = load_corpus_for(
        get_method("ga"), cfg, data, lm, target, loaded.info.get("fingerprint") or "unknown"
    )
    if len(records) < 2:
        raise ConfigError(f"the forget corpus of {target.name} has {len(records)} record(s); need at least 2")
    log(f"attributing {len(records)} passages over {len(layers)} sparse layers ...")
    full = _attribute_records(loaded.model, loaded.tokenizer, records, cfg.max_length)
    half = len(records) // 2
    a = _attribute_records(loaded.model, loaded.tokenizer, records[:half], cfg.max_length)
    b = _attribute_records(loaded.model, loaded.tokenizer, records[half:], cfg.max_length)
    per_layer = []
    for layer, n, k, scores in zip(full.layers, full.num_experts, full.top_k, full.scores):
        best = sorted(range(n), key=lambda e: -scores[e])[:top]
        per_layer.append(
            {
                "layer": layer,
                "experts": n,
                "top_k": k,
                "top": [
                    {"expert": e, "affinity": round(scores[e], 6), "ratio": round(scores[e] * n, 4)}
                    for e in best
                ],
            }
        )
    return {
        "target": target.name,
        "model": loaded.info.get("name"),
        "passages": len(records),
        "tokens": full.tokens,
        "ranking": [
            {"expert": f"{layer}.{e}", "affinity": round(s, 6), "ratio": round(full.ratio(layer, e), 4)}
            for layer, e, s in full.ranked()[:10]
        ],
        "layers": per_layer,
        "stability": {"halves": [half, len(records) - half], **stability(a, b)},
    }


def format_expert_table(result: dict[str, Any]) -> str:
    """The attribution as text: the best experts overall, then per layer, then the stability."""
    lines = [
        f"Expert attribution for {result['target']} ({result['passages']} passages, {result['tokens']} tokens)",
        "",
        "best (layer.expert)  affinity  x uniform",
    ]
    lines += [f"  {r['expert']:<18} {r['affinity']:.4f}    {r['ratio']:.2f}" for r in result["ranking"][:5]]
    lines += [
        "",
        "layer  top experts (affinity, x uniform)             top-1 same in both halves  top-k overlap",
    ]
    stab = result["stability"]
    for row in result["layers"]:
        tops = ", ".join(f"{t['expert']} ({t['affinity']:.3f}, {t['ratio']:.2f})" for t in row["top"])
        s = stab["per_layer"][str(row["layer"])]
        lines.append(
            f"{row['layer']:>5}  {tops:<44} {'yes' if s['top1_agrees'] else 'no':<26} {s['topk_overlap']:.2f}"
        )
    lines += [
        "",
        f"stability between halves ({stab['halves'][0]} / {stab['halves'][1]} passages): top-1 agreement "
        f"{stab['top1_agreement']:.2f}, top-k overlap {stab['topk_overlap']:.2f}, best expert "
        f"{'the same' if stab['best_agrees'] else 'different'}",
    ]
    return "\n".join(lines)
