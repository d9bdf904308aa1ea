"""Fluency n-gram entropy on texts with known n-gram counts, and offline punkt provisioning."""

from __future__ import annotations

import math
import shutil
import zipfile
from pathlib import Path

import nltk
import pytest

from rwku.errors import RwkuError
from rwku.evaluation.metrics import mean_ngram_entropy, ngram_entropy
from rwku.evaluation.metrics import punkt as punkt_module
from rwku.evaluation.metrics.punkt import PUNKT_ENGLISH_SHA256, ensure_punkt, punkt_files_match


@pytest.fixture(scope="module")
def english_dir() -> Path:
    try:
        return ensure_punkt()
    except RwkuError as error:
        pytest.skip(f"punkt data unavailable: {error}")


def _h(counts: list[int]) -> float:
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts)


def _weighted(h2: float, h3: float) -> float:
    return (h2 * 2 / 3 + h3 * 4 / 3) / 2


def test_repetitive_text(english_dir: Path) -> None:
    # tokens a b a b: bigrams (a,b) x2, (b,a) x1; trigrams (a,b,a), (b,a,b) once each.
    expected = _weighted(_h([2, 1]), _h([1, 1]))
    assert ngram_entropy("a b a b") == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx((0.9182958340544896 * 2 / 3 + 4 / 3) / 2, abs=1e-12)


def test_punctuation_is_tokenized(english_dir: Path) -> None:
    # word_tokenize: Hello , world . -> 3 distinct bigrams, 2 distinct trigrams.
    assert nltk.word_tokenize("Hello, world.") == ["Hello", ",", "world", "."]
    assert ngram_entropy("Hello, world.") == pytest.approx(_weighted(math.log2(3), 1.0), abs=1e-12)
    # two sentences, split by punkt; "don't" becomes "do" "n't"
    assert nltk.word_tokenize("I don't know. He does.") == ["I", "do", "n't", "know", ".", "He", "does", "."]


def test_all_repeated(english_dir: Path) -> None:
    # one distinct bigram and trigram: zero entropy
    assert ngram_entropy("go go go go go") == 0.0


def test_too_short_scores_zero_like_numpy(english_dir: Path) -> None:
    # No n-grams: numpy's sum over an empty array is 0.0 (not nan), as in the reference.
    assert ngram_entropy("") == 0.0
    assert ngram_entropy("hello") == 0.0
    # two tokens: one bigram (entropy 0), no trigram
    assert ngram_entropy("hello there") == 0.0


def test_mean(english_dir: Path) -> None:
    texts = ["a b a b", "hello", "Hello, world."]
    expected = (ngram_entropy(texts[0]) + 0.0 + ngram_entropy(texts[2])) / 3
    assert mean_ngram_entropy(texts) == pytest.approx(expected, abs=1e-12)
    with pytest.warns(RuntimeWarning):
        assert math.isnan(mean_ngram_entropy([]))


# --- punkt provisioning -------------------------------------------------------------------


def test_ensure_punkt_gives_the_pinned_files(english_dir: Path) -> None:
    assert english_dir.is_dir()
    assert ensure_punkt() == english_dir  # once per process
    assert sorted(p.name for p in english_dir.iterdir() if p.name in PUNKT_ENGLISH_SHA256) == sorted(
        PUNKT_ENGLISH_SHA256
    )
    assert nltk.sent_tokenize("Mr. Smith arrived. He sat down.") == ["Mr. Smith arrived.", "He sat down."]


def _fresh(monkeypatch: pytest.MonkeyPatch, cache: Path, nltk_path: list[str]) -> None:
    monkeypatch.setattr(punkt_module, "_ready", None)
    monkeypatch.setattr(punkt_module, "cache_nltk_dir", lambda: cache)
    monkeypatch.setattr(nltk.data, "path", nltk_path)
    monkeypatch.setattr(punkt_module, "_llama_index_root", lambda: None)


def _copy_english(english_dir: Path, root: Path) -> None:
    target = root / "tokenizers" / "punkt_tab" / "english"
    target.mkdir(parents=True)
    for name in PUNKT_ENGLISH_SHA256:
        shutil.copy(english_dir / name, target / name)


def test_uses_cache_dir(english_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache" / "nltk_data"
    _copy_english(english_dir, cache)
    _fresh(monkeypatch, cache, [str(tmp_path / "nothing")])
    found = ensure_punkt(download=False)
    assert found == cache / "tokenizers" / "punkt_tab" / "english"
    assert nltk.data.path[0] == str(cache)
    assert punkt_files_match(found)


def test_uses_llama_index_copy(english_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    llama = tmp_path / "llama_index" / "core" / "_static" / "nltk_cache"
    _copy_english(english_dir, llama)
    _fresh(monkeypatch, tmp_path / "empty-cache", [])
    monkeypatch.setattr(punkt_module, "_llama_index_root", lambda: llama)
    assert ensure_punkt(download=False) == llama / "tokenizers" / "punkt_tab" / "english"


def test_error_says_how_to_provide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fresh(monkeypatch, tmp_path / "empty-cache", [])
    with pytest.raises(RwkuError) as raised:
        ensure_punkt(download=False)
    message = str(raised.value)
    assert "NLTK_DATA" in message
    assert "python -m rwku.evaluation.metrics.punkt" in message


def _fake_pip(wheel_files: dict[str, bytes]):
    def run(command: list[str], **_: object) -> None:
        dest = Path(command[command.index("-d") + 1])
        with zipfile.ZipFile(dest / "llama_index_core-0.14.25-py3-none-any.whl", "w") as wheel:
            for name, data in wheel_files.items():
                wheel.writestr(name, data)

    return run


def test_download_extracts_only_punkt_tab(
    english_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = "llama_index/core/_static/nltk_cache/"
    files = {
        f"{prefix}tokenizers/punkt_tab/english/{name}": (english_dir / name).read_bytes()
        for name in PUNKT_ENGLISH_SHA256
    }
    files[f"{prefix}tokenizers/punkt_tab/german/abbrev_types.txt"] = b"z.b\n"
    files[f"{prefix}corpora/stopwords/english"] = b"the\n"
    files["llama_index/core/__init__.py"] = b""
    cache = tmp_path / "cache"
    _fresh(monkeypatch, cache, [])
    monkeypatch.setattr(punkt_module.subprocess, "run", _fake_pip(files))
    found = ensure_punkt()
    assert found == cache / "tokenizers" / "punkt_tab" / "english"
    extracted = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())
    assert extracted == sorted(
        [f"tokenizers/punkt_tab/english/{name}" for name in PUNKT_ENGLISH_SHA256]
        + ["tokenizers/punkt_tab/german/abbrev_types.txt"]
    )


def test_download_refuses_wrong_hash(
    english_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = "llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/english/"
    files = {prefix + name: (english_dir / name).read_bytes() for name in PUNKT_ENGLISH_SHA256}
    files[prefix + "abbrev_types.txt"] += b"tampered\n"
    cache = tmp_path / "cache"
    _fresh(monkeypatch, cache, [])
    monkeypatch.setattr(punkt_module.subprocess, "run", _fake_pip(files))
    with pytest.raises(RwkuError, match="sha256"):
        ensure_punkt()
    assert not (cache / "tokenizers" / "punkt_tab").exists()
