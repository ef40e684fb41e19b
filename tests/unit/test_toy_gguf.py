"""The toy GGUF model (kimi_testbed.toy_gguf: random weights, for serving tests): written, then read back with gguf's
own reader - the architecture and shape llama.cpp's llama loader expects, a complete byte-level tokenizer, the chat
template, and the same bytes for the same seed. Loading it in the real llama-server is the llamacpp image's test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

gguf = pytest.importorskip("gguf", reason="the gguf package (PyPI) writes and reads the toy model")

from kimi_testbed import toy_gguf  # noqa: E402  (after the importorskip)


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    assert field is not None, f"{key} missing"
    return field.contents()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[toy_gguf.ToyModel, Any]:
    path = tmp_path_factory.mktemp("toy") / "toy.gguf"
    model = toy_gguf.write_toy_gguf(path, seed=7)
    return model, gguf.GGUFReader(path)


def test_the_toy_model_is_a_tiny_llama_with_the_tensors_llamas_loader_needs(
    written: tuple[toy_gguf.ToyModel, Any],
) -> None:
    model, reader = written
    assert _field(reader, "general.architecture") == "llama" == model.architecture
    assert model.size_bytes == model.path.stat().st_size < 5 * 2**20
    assert _field(reader, "llama.block_count") == model.n_layer
    assert _field(reader, "llama.attention.head_count_kv") == model.n_head_kv
    names = {t.name for t in reader.tensors}
    per_block = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"}
    expected |= {f"blk.{i}.{t}.weight" for i in range(model.n_layer) for t in per_block}
    assert names == expected and len(reader.tensors) == model.tensor_count == 3 + 9 * model.n_layer
    shapes = {t.name: [int(n) for n in t.shape] for t in reader.tensors}  # ggml order: ne[0] first
    assert shapes["token_embd.weight"] == [model.n_embd, model.n_vocab]
    assert shapes["blk.0.attn_k.weight"] == [model.n_embd, model.n_embd // model.n_head * model.n_head_kv]


def test_the_tokenizer_is_complete_byte_level_bpe_with_chatml(written: tuple[toy_gguf.ToyModel, Any]) -> None:
    model, reader = written
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == model.n_vocab == len(_field(reader, "tokenizer.ggml.token_type"))
    assert set(toy_gguf.byte_tokens()) <= set(tokens) and len(set(tokens)) == len(tokens), "every byte, no duplicate"
    for merge in _field(reader, "tokenizer.ggml.merges"):
        left, right = merge.split(" ")
        assert left in tokens and right in tokens and left + right in tokens, merge
    assert tokens[_field(reader, "tokenizer.ggml.bos_token_id")] == "<|endoftext|>"
    assert tokens[_field(reader, "tokenizer.ggml.eos_token_id")] == "<|im_end|>" == tokens[model.eos_token_id]
    template = _field(reader, "tokenizer.chat_template")
    assert template == model.chat_template and "<|im_start|>" in template and "add_generation_prompt" in template


def test_the_same_seed_writes_the_same_bytes(tmp_path: Path) -> None:
    a, b, c = (toy_gguf.write_toy_gguf(tmp_path / f"{n}.gguf", seed=s) for n, s in (("a", 1), ("b", 1), ("c", 2)))
    assert a.path.read_bytes() == b.path.read_bytes() != c.path.read_bytes()
