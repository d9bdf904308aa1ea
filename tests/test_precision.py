"""Opt-in evaluation precisions: int8 linear layers on CPU, and a cache that never hands one
precision's results to another."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from rwku.cli import app
from rwku.errors import ModelError
from rwku.models.resolve import load_model, resolve_model


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids).logits[0].float()


def test_int8_quantizes_every_linear_layer_and_stays_close_to_float32(tiny_model_dir):
    spec = resolve_model(str(tiny_model_dir))
    fp32 = load_model(spec)
    int8 = load_model(spec, dtype="int8")
    assert int8.info["dtype"] == "int8-dynamic" and fp32.info["dtype"] == "float32"
    assert not [m for m in int8.model.modules() if type(m) is nn.Linear]  # all replaced
    n_linear = sum(type(m) is nn.Linear for m in fp32.model.modules())
    quantized = [m for m in int8.model.modules() if type(m).__name__ == "Linear" and type(m) is not nn.Linear]
    assert len(quantized) == n_linear > 0
    ids = fp32.tokenizer("Stephen King wrote the novel", return_tensors="pt").input_ids
    a, b = _logits(fp32.model, ids), _logits(int8.model, ids)
    assert not torch.equal(a, b)  # a different computation ...
    rel = (a - b).norm() / a.norm()
    assert rel < 0.05, rel  # ... that stays close to float32


def test_other_precisions_get_their_own_fingerprint(tiny_model_dir):
    spec = resolve_model(str(tiny_model_dir))
    fps = {d: load_model(spec, dtype=d).info["fingerprint"] for d in ("float32", "bfloat16", "int8")}
    assert len(set(fps.values())) == 3
    assert fps["bfloat16"] == f"{fps['float32']}|bfloat16" and fps["int8"] == f"{fps['float32']}|int8-dynamic"


def test_int8_is_cpu_only(tiny_model_dir):
    from rwku.models.precision import quantize_linears_int8

    with pytest.raises(ModelError, match="CPU evaluation only"):
        quantize_linears_int8(nn.Sequential(nn.Linear(2, 2)), "cuda")


def test_eval_with_int8_does_not_reuse_the_float32_results(
    data_dir, tmp_path, tiny_model_dir, isolated_cache
):
    runner = CliRunner()
    outputs = {}
    for dtype in ("float32", "int8", "float32"):
        out = tmp_path / f"{dtype}.json"
        args = ["eval", "--target", "Stephen King", "--data", str(data_dir), "--model", str(tiny_model_dir)]
        args += ["--limit", "2", "--suites", "forget", "--dtype", dtype, "--out", str(out), "-q"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        res = json.loads(out.read_text())
        outputs.setdefault(dtype, []).append(res)
    first, again = outputs["float32"]
    (int8,) = outputs["int8"]
    assert int8["cached_suites"] == [] and again["cached_suites"] == ["forget"]
    assert int8["model"]["dtype"] == "int8-dynamic"
    lls = [i["likelihood"] for i in int8["items"]["forget"]]
    assert lls != [i["likelihood"] for i in first["items"]["forget"]]  # computed, not copied


def test_unknown_dtype_is_one_clear_error(data_dir, tiny_model_dir):
    result = CliRunner().invoke(
        app,
        ["eval", "--target", "1", "--data", str(data_dir), "--model", str(tiny_model_dir), "--dtype", "int4"],
    )
    assert result.exit_code == 2 and "unknown dtype 'int4'" in result.output
