"""A TOY GGUF model for serving tests: a tiny llama-architecture model with RANDOM weights. It knows nothing.

It exists so the real llama.cpp ``llama-server`` (``images/llamacpp``) can load a model, answer
``/v1/chat/completions`` (with ``--jinja``), report ``/metrics`` and ``/health`` within a second on a CPU - the
serving path, not the quality of the answers, which are random bytes.

What llama.cpp needs and this file carries:

- ``general.architecture = llama``, 2 blocks, 64-wide embeddings, 4 query heads sharing 2 KV heads (GQA), a
  128-wide SwiGLU FFN; the 2-D weights in F16, the norms in F32 (``general.file_type`` = mostly F16); well under
  1 MB.
- A working byte-level BPE tokenizer (``tokenizer.ggml.model = gpt2``, pre-tokenizer ``gpt-2``): the 256 GPT-2
  byte tokens (any text tokenizes), merges that build a few common English words, and three control tokens,
  ``<|endoftext|>`` (BOS), ``<|im_start|>`` and ``<|im_end|>`` (EOS). No BOS is prepended (as in chatml models).
- ``tokenizer.chat_template``: a plain chatml Jinja template.

The weights come from ``numpy.random.default_rng(seed)``: the same seed writes the same bytes.

CLI: ``python -m kimi_testbed.toy_gguf OUT.gguf [--seed N]`` prints what it wrote.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt

ARCHITECTURE = "llama"
NAME = "kimi-testbed-toy (random weights, for serving tests only)"
CONTEXT_LENGTH = 2048
EMBEDDING_LENGTH = 64
BLOCK_COUNT = 2
HEAD_COUNT = 4
HEAD_COUNT_KV = 2
FEED_FORWARD_LENGTH = 128
RMS_EPS = 1e-5
ROPE_FREQ_BASE = 10000.0

BOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (BOS, IM_START, IM_END)
# Words the merges build (each prefix of "Ġword" and of "word" becomes a token): enough for a real merge table.
WORDS = ("the", "and", "hello", "world", "model", "kimi", "you", "is", "to", "of", "in", "it", "that", "for")

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class ToyModel:
    """What ``write_toy_gguf`` wrote (a toy: random weights)."""

    path: Path
    seed: int
    architecture: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    context_length: int
    tensor_count: int
    bos_token_id: int
    eos_token_id: int
    chat_template: str
    size_bytes: int


def byte_tokens() -> list[str]:
    """GPT-2's byte-level alphabet: one printable character per byte value, in byte order (``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping: dict[int, int] = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = 256 + extra
            extra += 1
    return [chr(mapping[b]) for b in range(256)]


def vocabulary() -> tuple[list[str], list[str], list[int]]:
    """The tokens, the BPE merges (``"left right"``, by rank) and the token types, in id order."""
    tokens = byte_tokens()
    merges: list[str] = []
    known = set(tokens)
    space = tokens[ord(" ")]  # "Ġ"
    for word in WORDS:
        for text in (space + word, word):
            for end in range(2, len(text) + 1):
                left, right, merged = text[: end - 1], text[end - 1], text[:end]
                if merged not in known:
                    merges.append(f"{left} {right}")
                    tokens.append(merged)
                    known.add(merged)
    types = [int(gguf.TokenType.NORMAL)] * len(tokens) + [int(gguf.TokenType.CONTROL)] * len(SPECIAL_TOKENS)
    return [*tokens, *SPECIAL_TOKENS], merges, types


def _weights(rng: np.random.Generator, rows: int, cols: int) -> npt.NDArray[np.float16]:
    """A (rows x cols) matrix in numpy order - ggml's ne = [cols, rows] - scaled by 1/sqrt(fan-in)."""
    matrix: npt.NDArray[np.float32] = rng.standard_normal((rows, cols), dtype=np.float32) / np.float32(np.sqrt(cols))
    return matrix.astype(np.float16)


def _tensors(rng: np.random.Generator, n_vocab: int) -> dict[str, npt.NDArray[np.float16] | npt.NDArray[np.float32]]:
    head_dim = EMBEDDING_LENGTH // HEAD_COUNT
    ones = np.ones(EMBEDDING_LENGTH, dtype=np.float32)
    out: dict[str, npt.NDArray[np.float16] | npt.NDArray[np.float32]] = {
        "token_embd.weight": rng.standard_normal((n_vocab, EMBEDDING_LENGTH), dtype=np.float32).astype(np.float16),
        "output_norm.weight": ones.copy(),
        "output.weight": _weights(rng, n_vocab, EMBEDDING_LENGTH),
    }
    for i in range(BLOCK_COUNT):
        out |= {
            f"blk.{i}.attn_norm.weight": ones.copy(),
            f"blk.{i}.attn_q.weight": _weights(rng, HEAD_COUNT * head_dim, EMBEDDING_LENGTH),
            f"blk.{i}.attn_k.weight": _weights(rng, HEAD_COUNT_KV * head_dim, EMBEDDING_LENGTH),
            f"blk.{i}.attn_v.weight": _weights(rng, HEAD_COUNT_KV * head_dim, EMBEDDING_LENGTH),
            f"blk.{i}.attn_output.weight": _weights(rng, EMBEDDING_LENGTH, HEAD_COUNT * head_dim),
            f"blk.{i}.ffn_norm.weight": ones.copy(),
            f"blk.{i}.ffn_gate.weight": _weights(rng, FEED_FORWARD_LENGTH, EMBEDDING_LENGTH),
            f"blk.{i}.ffn_up.weight": _weights(rng, FEED_FORWARD_LENGTH, EMBEDDING_LENGTH),
            f"blk.{i}.ffn_down.weight": _weights(rng, EMBEDDING_LENGTH, FEED_FORWARD_LENGTH),
        }
    return out


def write_toy_gguf(path: Path, *, seed: int = 0) -> ToyModel:
    """Write the toy model (random weights from ``seed``; same seed, same bytes) to ``path`` and describe it."""
    tokens, merges, types = vocabulary()
    bos, eos = tokens.index(BOS), tokens.index(IM_END)
    tensors = _tensors(np.random.default_rng(seed), len(tokens))

    writer = gguf.GGUFWriter(path, ARCHITECTURE)
    writer.add_name(NAME)
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(EMBEDDING_LENGTH)
    writer.add_block_count(BLOCK_COUNT)
    writer.add_feed_forward_length(FEED_FORWARD_LENGTH)
    writer.add_head_count(HEAD_COUNT)
    writer.add_head_count_kv(HEAD_COUNT_KV)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_rope_dimension_count(EMBEDDING_LENGTH // HEAD_COUNT)
    writer.add_rope_freq_base(ROPE_FREQ_BASE)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    return ToyModel(
        path=path,
        seed=seed,
        architecture=ARCHITECTURE,
        n_vocab=len(tokens),
        n_embd=EMBEDDING_LENGTH,
        n_layer=BLOCK_COUNT,
        n_head=HEAD_COUNT,
        n_head_kv=HEAD_COUNT_KV,
        n_ff=FEED_FORWARD_LENGTH,
        context_length=CONTEXT_LENGTH,
        tensor_count=len(tensors),
        bos_token_id=bos,
        eos_token_id=eos,
        chat_template=CHAT_TEMPLATE,
        size_bytes=path.stat().st_size,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kimi_testbed.toy_gguf",
        description="Write a tiny llama-architecture GGUF with RANDOM weights, for serving tests (not quality).",
    )
    parser.add_argument("out", type=Path, help="the .gguf file to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = parser.parse_args(argv)
    model = write_toy_gguf(args.out, seed=args.seed)
    print(
        f"{model.path}: {model.size_bytes} bytes, {model.architecture}, {model.tensor_count} tensors, "
        f"vocab {model.n_vocab} (bos {model.bos_token_id}, eos {model.eos_token_id}), seed {model.seed}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
