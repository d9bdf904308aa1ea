"""The local mixture-of-experts testbed: the default dense model, sparsely upcycled.

No MoE weights are reachable here (no hub, none on the package registries), so rwku builds
one from the default dense model (SmolLM2-135M-Instruct, a Llama): every decoder layer's MLP
becomes a ``MixtralSparseMoeBlock`` with :data:`NUM_EXPERTS` routed experts, each an exact
copy of the dense MLP, and a router that sends every token to :data:`TOP_K` of them
(Komatsuzaki et al. 2022, "Sparse Upcycling", arXiv 2212.05055). The result is a
``MixtralForCausalLM`` — one of transformers' own MoE classes, with its fused expert tensors,
its top-k router and its eager/grouped_mm experts implementations — so everything rwku does
with MoE models runs on it unchanged.

Why upcycling and not MoEfication (Zhang et al. 2022, arXiv 2110.01786) — docs/moe.md has the
longer version: upcycling computes what the dense model computes (Mixtral renormalises the
top-k weights to sum to one, so identical experts give the dense MLP's output up to float
rounding), hence the testbed's RWKU scores are the dense model's and every later difference
is the unlearning's. MoEfication partitions neurons into experts so that they hold different
knowledge, but its top-k routing drops neurons and changes the model's outputs, so a study on
it would mix "what MoEfication broke" into "what unlearning did". The price of upcycling: the
experts start identical, so which expert "holds" a target is decided by the router alone —
the router is drawn at random (normal, std = the config's ``initializer_range``, seeded), so
tokens do spread over the experts and the attribution has something to find.

Built once per dense model (keyed by its fingerprint) into ``<cache>/models/moe-testbed-*``
and written atomically; the alias :data:`MOE_ALIAS` resolves to it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from rwku.errors import ModelError

__all__ = ["MOE_ALIAS", "NUM_EXPERTS", "TOP_K", "build_testbed", "testbed_dir", "upcycle"]

MOE_ALIAS = "smollm2-135m-moe"
"""Alias of the upcycled testbed (``rwku moe-testbed`` builds it)."""
NUM_EXPERTS = 4
TOP_K = 2
_MANIFEST = "rwku-testbed.json"
_POINTER = "moe-testbed-latest.json"


def upcycle(dense: Any, num_experts: int = NUM_EXPERTS, top_k: int = TOP_K, seed: int = 0) -> Any:
    """A ``MixtralForCausalLM`` whose every expert is a copy of ``dense``'s MLP (a Llama model)."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = dense.config
    if cfg.model_type != "llama":
        raise ModelError(f"upcycling needs a Llama-architecture dense model, not {cfg.model_type!r}")
    if not 1 <= top_k <= num_experts:
        raise ModelError(f"top_k must be in 1..{num_experts}, got {top_k}")
    rope = getattr(cfg, "rope_parameters", None) or {"rope_theta": getattr(cfg, "rope_theta", 10000.0)}
    moe_cfg = MixtralConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        hidden_act=cfg.hidden_act,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters=dict(rope),
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        num_local_experts=num_experts,
        num_experts_per_tok=top_k,
        router_jitter_noise=0.0,
        output_router_logits=False,
        sliding_window=None,
        initializer_range=cfg.initializer_range,
    )
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise ModelError("upcycling into Mixtral needs a dense model without attention or MLP biases")
    with torch.device("meta"):
        moe = MixtralForCausalLM(moe_cfg)
    moe = moe.to_empty(device="cpu").to(dense.dtype)
    dense_sd = dense.state_dict()
    new_sd: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(seed)
    for name in moe.state_dict():
        if ".mlp." not in name:
            if name not in dense_sd:
                if name == "lm_head.weight" and moe_cfg.tie_word_embeddings:
                    continue
                raise ModelError(f"upcycling: the dense model has no {name}")
            new_sd[name] = dense_sd[name]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}.mlp."
        gate_up = torch.cat([dense_sd[p + "gate_proj.weight"], dense_sd[p + "up_proj.weight"]], dim=0)
        new_sd[p + "experts.gate_up_proj"] = gate_up.unsqueeze(0).repeat(num_experts, 1, 1)
        new_sd[p + "experts.down_proj"] = (
            dense_sd[p + "down_proj.weight"].unsqueeze(0).repeat(num_experts, 1, 1)
        )
        router = torch.randn(num_experts, cfg.hidden_size, generator=gen) * cfg.initializer_range
        new_sd[p + "gate.weight"] = router.to(dense.dtype)
    missing, unexpected = moe.load_state_dict(new_sd, strict=False, assign=True)
    missing = [m for m in missing if not (m == "lm_head.weight" and moe_cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(f"upcycling: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if moe_cfg.tie_word_embeddings:
        moe.tie_weights()
    moe.generation_config = dense.generation_config
    moe.eval()
    return moe


def testbed_dir(fingerprint: str, num_experts: int, top_k: int, cache_dir: Any = None) -> Path:
    from rwku.models.resolve import model_cache_dir

    return model_cache_dir(cache_dir) / f"moe-testbed-{fingerprint[:16]}-e{num_experts}k{top_k}"


def build_testbed(
    dense: str | None = None,
    *,
    num_experts: int = NUM_EXPERTS,
    top_k: int = TOP_K,
    seed: int = 0,
    cache_dir: Any = None,
    force: bool = False,
    log: Any = print,
) -> tuple[Path, dict[str, Any]]:
    """Upcycle ``dense`` (default: the default model) and cache it; return (folder, manifest).

    A complete cached build is reused unless ``force``. The manifest records the dense model's
    fingerprint, the shape of the MoE, the seed, the build time and the peak memory.
    """
    import resource

    import torch
    import transformers

    from rwku.models.resolve import _quiet_progress, load_model, model_cache_dir

    t0 = time.perf_counter()
    loaded = load_model(dense, dtype="float32", device="cpu", cache_dir=cache_dir)
    fingerprint = loaded.info.get("fingerprint") or "unknown"
    final = testbed_dir(fingerprint, num_experts, top_k, cache_dir)
    pointer = model_cache_dir(cache_dir) / _POINTER
    if (final / _MANIFEST).is_file() and not force:
        manifest = json.loads((final / _MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("seed") == seed:
            _write_pointer(pointer, final)
            log(f"the testbed is already built: {final}")
            return final, manifest
    log(f"upcycling {loaded.info.get('name')} into a Mixtral MoE ({num_experts} experts, top-{top_k}) ...")
    with torch.no_grad():
        moe = upcycle(loaded.model, num_experts, top_k, seed)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        with _quiet_progress():
            moe.save_pretrained(tmp, safe_serialization=True)
            loaded.tokenizer.save_pretrained(tmp)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        manifest = {
            "dense_model": loaded.info.get("name"),
            "dense_fingerprint": fingerprint,
            "architecture": "MixtralForCausalLM",
            "num_experts": num_experts,
            "top_k": top_k,
            "seed": seed,
            "num_parameters": sum(p.numel() for p in moe.parameters()),
            "dense_parameters": loaded.info.get("num_parameters"),
            "build_seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(peak, 1),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _write_pointer(pointer, final)
    log(f"testbed written to {final} ({manifest['build_seconds']} s)")
    return final, manifest


def _write_pointer(pointer: Path, final: Path) -> None:
    pointer.write_text(json.dumps({"path": str(final)}), encoding="utf-8")


def resolve_testbed(cache_dir: Any = None) -> Path:
    """The folder the alias :data:`MOE_ALIAS` names: the last testbed built."""
    from rwku.models.resolve import model_cache_dir

    pointer = model_cache_dir(cache_dir) / _POINTER
    try:
        path = Path(json.loads(pointer.read_text(encoding="utf-8"))["path"])
    except (OSError, ValueError, KeyError):
        path = None
    if path is None or not (path / _MANIFEST).is_file():
        raise ModelError(
            f"the MoE testbed ({MOE_ALIAS}) is not built yet; build it with `rwku moe-testbed` "
            "(one command, about a minute, cached)"
        )
    return path
