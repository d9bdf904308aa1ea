"""A tiny, randomly initialised chat model for fast tests.

The real default model (SmolLM2-135M) takes ~20 s to convert and seconds per evaluation
batch; end-to-end tests of evaluation and unlearning would be far too slow on it. The tiny
model here has the same *shape of interface* -- a ``LlamaForCausalLM`` saved as safetensors,
a byte-level BPE tokenizer that can encode any text, ChatML special tokens with the same ids
as SmolLM2 (``<|endoftext|>`` = 0 = unk, ``<|im_start|>`` = 1, ``<|im_end|>`` = 2 = eos = pad)
and a ChatML chat template -- so that :func:`rwku.models.resolve.resolve_model` and
:func:`rwku.models.resolve.load_model` treat it exactly like a real local checkpoint. Its
outputs are noise, which is fine: tests check plumbing, not knowledge.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from rwku.models.resolve import _quiet_progress

__all__ = [
    "DEFAULT_TINY_SYSTEM_MESSAGE",
    "TINY_ARCHITECTURES",
    "TINY_CORPUS",
    "make_tiny_gguf",
    "make_tiny_model",
]

DEFAULT_TINY_SYSTEM_MESSAGE = "You are a helpful AI assistant."
"""Default system message the tiny chat template inserts, mirroring SmolLM2's template."""

UNK_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = [UNK_TOKEN, BOS_TOKEN, EOS_TOKEN]  # ids 0, 1, 2, as in SmolLM2

# Original text written for this module. It only needs enough common English words and
# character pairs for a few hundred BPE merges; byte-level BPE covers everything else.
TINY_CORPUS = """\
The writer grew up in a small town in Maine, where the winters were long and the libraries
were warm. As a boy he read every book he could find, from adventure stories to old science
fiction magazines, and he began to write his own stories at the kitchen table after school.
His first novel was rejected many times before a publisher finally accepted it. The book was
about a quiet girl with a strange power, and it sold more copies than anyone expected.

Over the following decades he wrote dozens of novels and hundreds of short stories. Many of
them were adapted into films and television series. Critics argued about whether popular
fiction could also be serious literature, but readers did not wait for the answer. They
bought his books in airports and train stations, and they passed them to friends and family.

Question: Who wrote the novel about the haunted hotel in the mountains?
Answer: The novel was written by a famous American author of horror and suspense.
Question: Where was the author born?
Answer: He was born in Portland, a city on the coast of the state of Maine.
Question: What is the capital of France?
Answer: The capital of France is Paris.
Question: How many days are there in a week?
Answer: There are seven days in a week: Monday, Tuesday, Wednesday, Thursday, Friday,
Saturday and Sunday.

The following are multiple choice questions (with answers) about general knowledge.
Which of the following is a prime number? A. 4 B. 6 C. 7 D. 9
Answer: C
Which planet is closest to the sun? A. Venus B. Mercury C. Earth D. Mars
Answer: B

Science is the patient work of asking questions and testing answers. A scientist observes
the world, forms a hypothesis, designs an experiment, and measures the results. When the
results do not match the prediction, the hypothesis must change. This process is slow, but
it has given us medicine, electricity, computers, and a better understanding of ourselves.

Music has been part of every human culture that we know. People sing while they work, when
they celebrate, and when they mourn. Instruments made of wood, bone, metal and string have
been found in ancient graves. Today anyone with a phone can listen to songs from every
country in the world, in every style, at any hour of the day or night.

The river flows from the hills to the sea. In spring the water is high and cold; in summer
it is low and warm, and children swim near the old stone bridge. Farmers along its banks
grow wheat, corn, apples and potatoes. Every autumn the town holds a market where they sell
their harvest, and musicians play in the square until late in the evening.

Let's think step by step. First, we read the question carefully. Second, we list what we
know and what we need to find. Third, we solve each small part of the problem in order.
Finally, we check that the answer makes sense and write it down clearly.
0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 2024 1947 (true) [false] {yes} "no" 'maybe' - + = * / % $ # @ !?
"""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' and default_system %}"
    "{{ '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _chat_template(system_message: str | None) -> str:
    """Bake the default system message into the template as a Jinja ``set``.

    A real checkpoint's template carries its default system message literally (SmolLM2's
    says "You are a helpful AI assistant named SmolLM..."), so the tiny one does the same
    instead of relying on a render-time variable that callers would have to pass.
    """
    value = json.dumps(system_message or "")  # a JSON string literal is a valid Jinja literal
    return "{% set default_system = " + value + " %}" + CHAT_TEMPLATE


def _train_tokenizer(vocab_size: int):
    """Train a GPT-2-style byte-level BPE on :data:`TINY_CORPUS` (deterministic, ~50 ms)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the corpus so that pair frequencies, not corpus order, drive the merges.
    tok.train_from_iterator([TINY_CORPUS] * 4, trainer=trainer)
    return tok


def make_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 2048,
    system_message: str | None = DEFAULT_TINY_SYSTEM_MESSAGE,
    arch: str = "llama",
    num_experts: int = 4,
    top_k: int = 2,
) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` chat checkpoint to ``out_dir`` and return it.

    ``vocab_size`` is an upper bound: the BPE stops early if the built-in corpus runs out of
    merges (it supports the default 512), and the model's vocabulary always equals the
    tokenizer's, so every id the model can emit decodes to text. The directory afterwards holds ``config.json``, ``generation_config.json``,
    ``model.safetensors`` and the tokenizer files, like any Hugging Face checkpoint. The same
    ``seed`` (and arguments) always gives the same weights and tokenizer, so tests can compare
    fingerprints across runs. ``system_message`` is the default system prompt the chat
    template inserts when the conversation has none (``None`` for no default). Runs in well
    under a second on a laptop CPU.

    ``arch`` picks the architecture: ``llama`` (dense, the default) or one of the sparse
    mixture-of-experts families of :data:`TINY_ARCHITECTURES` (Mixtral, Qwen2-MoE with its
    shared expert, Qwen3-MoE, OLMoE, DeepSeek-V3 with a shared expert and sigmoid routing),
    with ``num_experts`` routed experts per layer of which ``top_k`` serve each token.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (bytes + special tokens)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    backend = _train_tokenizer(vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=max_position_embeddings,
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = _chat_template(system_message)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    if ids != [0, 1, 2]:  # the trainer puts special tokens first; guard the SmolLM2-like layout
        raise RuntimeError(f"unexpected special token ids {ids}")

    config = _tiny_config(
        arch,
        vocab_size=backend.get_vocab_size(),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        num_experts=num_experts,
        top_k=top_k,
    )
    # Seed a private generator state so the caller's global RNG stream is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model.eval()
    with _quiet_progress():  # a progress bar for writing 140 kB is noise in test logs
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    return out


TINY_ARCHITECTURES = ("llama", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3")
"""What ``make_tiny_model(arch=...)`` builds: the dense default and five MoE families."""


def _tiny_config(
    arch: str,
    *,
    vocab_size: int,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    max_position_embeddings: int,
    num_experts: int,
    top_k: int,
):
    """The transformers config of a tiny model of family ``arch`` (see :func:`make_tiny_model`)."""
    from transformers import AutoConfig

    if arch not in TINY_ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(TINY_ARCHITECTURES)}")
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        unk_token_id=0,
    )
    moe_size = max(8, intermediate_size // 2)
    extra: dict = {
        "llama": {},
        "mixtral": {"num_local_experts": num_experts, "num_experts_per_tok": top_k},
        "qwen2_moe": {
            "num_experts": num_experts,
            "num_experts_per_tok": top_k,
            "moe_intermediate_size": moe_size,
            "shared_expert_intermediate_size": intermediate_size,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "norm_topk_prob": False,
        },
        "qwen3_moe": {
            "num_experts": num_experts,
            "num_experts_per_tok": top_k,
            "moe_intermediate_size": moe_size,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "norm_topk_prob": True,
        },
        "olmoe": {"num_experts": num_experts, "num_experts_per_tok": top_k, "norm_topk_prob": False},
        "deepseek_v3": {
            "n_routed_experts": num_experts,
            "num_experts_per_tok": top_k,
            "moe_intermediate_size": moe_size,
            "n_shared_experts": 1,
            "first_k_dense_replace": 0,
            "n_group": 1,
            "topk_group": 1,
            "norm_topk_prob": True,
            "routed_scaling_factor": 1.0,
            "q_lora_rank": None,
            "kv_lora_rank": 16,
            "qk_rope_head_dim": 4,
            "qk_nope_head_dim": 4,
            "v_head_dim": 8,
            "rope_interleave": False,
        },
    }[arch]
    if arch == "deepseek_v3":  # multi-head latent attention: no GQA, head sizes of its own
        common.pop("head_dim")
        common["num_key_value_heads"] = num_heads
    return AutoConfig.for_model(arch, **common, **extra)


def _permute_for_gguf(weight, n_head: int):
    """Reorder q/k rows the way llama.cpp's converter does (transformers undoes it on load)."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def make_tiny_gguf(out_path: str | Path, seed: int = 0, **kwargs) -> Path:
    """Write the tiny model of :func:`make_tiny_model` as an unquantised (F32) llama GGUF file.

    The real default model is a GGUF whose first load takes ~20 s; this ~150 kB file
    exercises the very same code path (transformers' GGUF reader, dequantisation, tokenizer
    conversion, rwku's safetensors conversion cache) in about a second. Its weights equal
    those of ``make_tiny_model(dir, seed, **kwargs)``, so both give the same logits.
    """
    import gguf
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer
    from transformers import LlamaConfig

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rwku-tiny-") as tmp:
        src = make_tiny_model(tmp, seed=seed, **kwargs)
        cfg = LlamaConfig.from_pretrained(src)
        weights = load_file(src / "model.safetensors")
        tok = Tokenizer.from_file(str(src / "tokenizer.json"))
        chat_template = (src / "chat_template.jinja").read_text(encoding="utf-8")

    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(tok.to_str())["model"]["merges"]]
    token_types = [gguf.TokenType.CONTROL if t in SPECIAL_TOKENS else gguf.TokenType.NORMAL for t in tokens]

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("rwku tiny llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(chat_template)

    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            w = weights[f"model.layers.{i}.{hf_name}.weight"]
            if hf_name == "self_attn.q_proj":
                w = _permute_for_gguf(w, cfg.num_attention_heads)
            elif hf_name == "self_attn.k_proj":
                w = _permute_for_gguf(w, cfg.num_key_value_heads)
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", w.copy())
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
