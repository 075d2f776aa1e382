"""A tiny random-weight llama-architecture GGUF that llama.cpp loads and generates from in milliseconds.

Why: tests and the local cloud's fast mode need a *real* model file going through the real
llama.cpp code path (load, tokenize, decode, sample, stream) without a 100 MB download.
Design decisions:
- 2 layers, dim 64, 4 heads, FFN 128, f32 weights: ~0.5 MB, loads in a few ms.
- A real SentencePiece-style ("llama") tokenizer section: control tokens, the 256 byte-fallback
  tokens ``<0xNN>`` (llama.cpp needs them, e.g. for its newline token) and a few hundred word
  pieces, so any UTF-8 text tokenizes.
- A ChatML chat template, so chat requests use the same template path real instruct models use.
- The output rows of the control tokens (EOS included) are zero while all other logits are
  random with a wide spread: greedy decoding therefore never stops early on EOS, which makes
  "generate exactly max_tokens" deterministic for tests; stop strings still work.
- ``pooling="mean"`` adds ``llama.pooling_type`` so the model also serves embeddings
  (llama.cpp pools hidden states of a decoder model when asked to).
"""
from __future__ import annotations

import string
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CONTROL = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
_WORDS = (
    "the a an and or of to in on for with is are was be it this that you we they he she "
    "hello world model edge device task answer question data token stream time fast small "
    "user assistant system what how why when where who which yes no one two three four five"
).split()
# llama.cpp's SPM tokenizer marks a leading space with U+2581.
_SPACE = "\u2581"

_POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3}


def _vocab(pad_to: int | None = None) -> tuple[list[str], list[float], list[int]]:
    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    for i, tok in enumerate(_CONTROL):
        tokens.append(tok)
        scores.append(0.0)
        types.append(2 if i == 0 else 3)  # UNKNOWN for <unk>, CONTROL for the rest
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(6)  # BYTE
    pieces: list[str] = [_SPACE]
    pieces += list(string.ascii_letters + string.digits + string.punctuation)
    pieces += [_SPACE + c for c in string.ascii_lowercase]
    pieces += [_SPACE + w for w in _WORDS] + list(_WORDS)
    seen = set(tokens)
    for piece in pieces:
        if piece in seen:
            continue
        seen.add(piece)
        tokens.append(piece)
        scores.append(-float(len(tokens)) / 1000.0 + len(piece))  # longer pieces merge first
        types.append(1)  # NORMAL
    while pad_to is not None and len(tokens) < pad_to:  # filler words, to give a model a real vocab size
        tokens.append(f"{_SPACE}w{len(tokens)}")
        scores.append(-float(len(tokens)) / 1000.0)
        types.append(1)
    return tokens, scores, types


def write_tiny_gguf(
    path: str | Path,
    *,
    name: str = "tiny-llama",
    seed: int = 0,
    n_ctx: int = 512,
    pooling: str | None = None,
    dim: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    ffn: int = 128,
    n_kv_heads: int | None = None,
    n_vocab: int | None = None,
    tie_output: bool = False,
) -> Path:
    """Write a tiny llama GGUF to ``path`` (returns it). Same seed -> same weights -> same sha256.

    The defaults make the tiny test model. The shape parameters also make a same-shape stand-in
    of a real model (e.g. SmolLM2-135M: dim 576, 30 layers, 9 heads, 3 KV heads, FFN 1536,
    49152 tokens) for timing work where the real file cannot be present.
    """
    import numpy as np
    from gguf import GGUFWriter, LlamaFileType, PoolingType

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab(n_vocab)
    n_vocab = len(tokens)
    head_dim = dim // n_heads
    n_kv = n_kv_heads or n_heads

    def mat(rows: int, cols: int, scale: float) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    writer = GGUFWriter(str(path), arch="llama")
    writer.add_name(name)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(dim)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(LlamaFileType.ALL_F32)
    writer.add_vocab_size(n_vocab)
    if pooling is not None:
        writer.add_pooling_type(PoolingType(_POOLING[pooling]))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    embd = mat(n_vocab, dim, 1.0)
    writer.add_tensor("output_norm.weight", np.ones(dim, dtype=np.float32))
    if tie_output:  # llama.cpp then uses the embedding matrix as the output layer (as SmolLM2 does)
        embd[: len(_CONTROL)] = 0.0
    else:
        out = mat(n_vocab, dim, 1.0)
        out[: len(_CONTROL)] = 0.0  # control tokens (EOS too) never win a greedy pick; see docstring
        writer.add_tensor("output.weight", out)
    writer.add_tensor("token_embd.weight", embd)
    s = 1.0 / np.sqrt(dim)
    for i in range(n_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(dim, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", mat(n_heads * head_dim, dim, s))
        writer.add_tensor(f"blk.{i}.attn_k.weight", mat(n_kv * head_dim, dim, s))
        writer.add_tensor(f"blk.{i}.attn_v.weight", mat(n_kv * head_dim, dim, s))
        writer.add_tensor(f"blk.{i}.attn_output.weight", mat(dim, n_heads * head_dim, s))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(dim, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", mat(ffn, dim, s))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", mat(ffn, dim, s))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", mat(dim, ffn, 1.0 / np.sqrt(ffn)))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
