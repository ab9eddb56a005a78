#!/usr/bin/env python3
"""Write a tiny random-weights LLaMA-architecture GGUF model for fast tests.

The model is garbage as a language model, but llama.cpp loads and runs it like
any other LLaMA: real SentencePiece-style ("llama") tokenization with byte
fallback, a ChatML chat template with real control tokens, prefill, decode, KV
cache, continuous batching, /metrics.

Properties a load tester can rely on (all deterministic for a given seed):

* vocabulary: <unk>=0, <s>=1 (BOS, added to every prompt), </s>=2 (EOS),
  <|im_start|>=3, <|im_end|>=4 (ChatML control tokens), 256 byte tokens
  <0x00>..<0xFF> (ids 5..260), then SPM pieces learned by a small BPE run over
  the built-in text below (about 830 tokens in all by default).
* By default the model NEVER samples a control token (EOS, <|im_end|>, ...) nor
  a byte token that is not printable ASCII, \t or \n: the output length is
  exactly max_tokens / n_predict (or the slot's context, when neither is given)
  and every generated token decodes to complete UTF-8 on its own, so a stream
  carries exactly one token per chunk. This is done with
  a constant "bias" dimension in the residual stream (see build_weights). With
  --natural-eos the EOS/<|im_end|> rows are left random, so generations stop at
  a random point (about 1 in vocab/2 chance per token).

Needs the PyPI packages `gguf` and `numpy` only.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import numpy as np

try:
    import gguf
except ImportError:  # pragma: no cover - message for humans
    sys.exit("make_tiny_gguf.py: needs the 'gguf' and 'numpy' packages (pip install gguf numpy)")

SPACE = "\u2581"  # SentencePiece's word-boundary marker

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Text the tokenizer's pieces are learned from. Any English-ish text works; this
# one is fixed so that the vocabulary (and so token counts) never changes.
CORPUS = """
A load tester sends many requests to a server at the same time and measures how
long each one takes. For a language model server the interesting numbers are the
time to the first token, the time between tokens, the number of tokens per second
for each request and for the whole server, and how these change when the number
of concurrent requests grows. The server keeps a cache of keys and values for
every token of every running request; when the cache is full, new requests wait
in a queue. A prompt is first split into tokens, then processed in one large
batch (the prefill), and then the model produces one token at a time (the decode)
until it reaches the end of sequence token or the maximum number of tokens.
Continuous batching lets the server add a new request to the running batch
between two decode steps, so short requests do not wait for long ones.
The quick brown fox jumps over the lazy dog. Hello world! How are you today?
What is the capital of France? Paris is the capital of France. Tell me a story
about a dragon who lived in a castle near the sea. Once upon a time there was a
little girl who loved to read books in the garden with her friends and family.
Please write a short poem about the moon, the stars and the night sky.
Explain how a computer works in simple words: it reads numbers from memory,
adds and compares them, and writes the results back, billions of times a second.
The system prompt says: you are a helpful assistant. The user asks a question and
the assistant answers it. Numbers like 0 1 2 3 4 5 6 7 8 9 10 42 100 1000 2024.
"""


def learn_pieces(text: str, n_merges: int) -> list[tuple[str, float]]:
    """A small BPE run in SentencePiece form: words start with U+2581, every
    intermediate merge result is a piece, so llama.cpp's SPM merger (which only
    merges adjacent symbols whose concatenation is in the vocabulary, best score
    first) reaches the long pieces. Returns [(piece, score)], best first."""
    words = collections.Counter(SPACE + w for w in text.split())
    # start: single characters (printable ASCII, the marker, and whatever the text has)
    chars = {SPACE} | {chr(c) for c in range(0x21, 0x7F)}
    for w in words:
        chars.update(w)
    pieces: list[tuple[str, float]] = []
    seen = set()
    # merges first (they carry the high scores), single chars after them
    seqs = {w: list(w) for w in words}
    for i in range(n_merges):
        pairs: collections.Counter = collections.Counter()
        for w, n in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        # deterministic: highest count, then lexicographic
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merged = a + b
        if merged not in seen:
            seen.add(merged)
            pieces.append((merged, -float(i)))
        for w in words:
            s = seqs[w]
            out, j = [], 0
            while j < len(s):
                if j + 1 < len(s) and s[j] == a and s[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            seqs[w] = out
    base = -float(n_merges) - 1.0
    for k, c in enumerate(sorted(chars)):
        if c not in seen:
            seen.add(c)
            pieces.append((c, base - k))
    return pieces


def build_vocab(vocab_size: int):
    T = gguf.TokenType
    tokens: list[str] = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    scores: list[float] = [0.0] * len(tokens)
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL, T.CONTROL, T.CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(T.BYTE)
    n_fixed = len(tokens)
    if vocab_size == 0:  # everything the corpus yields
        pieces = learn_pieces(CORPUS, n_merges=100000)
        vocab_size = n_fixed + len(pieces)
    elif vocab_size < n_fixed + 100:
        sys.exit(f"make_tiny_gguf.py: --vocab must be 0 or at least {n_fixed + 100}")
    else:
        pieces = learn_pieces(CORPUS, n_merges=vocab_size - n_fixed)
    room = vocab_size - n_fixed
    singles = [p for p in pieces if len(p[0]) == 1]
    merges = [p for p in pieces if len(p[0]) > 1][: max(0, room - len(singles))]
    for piece, score in merges + singles:
        tokens.append(piece)
        scores.append(score)
        types.append(T.NORMAL)
    # pad (the merge run may stop early on a small corpus)
    while len(tokens) < vocab_size:
        tokens.append(f"<unused{len(tokens)}>")
        scores.append(-1e9)
        types.append(T.UNUSED)
    return tokens[:vocab_size], scores[:vocab_size], types[:vocab_size]


def build_weights(rng, n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff, suppress):
    """Random weights. Dimension 0 of the residual stream is a constant: every
    token embedding has 1.0 there, and no layer writes to it (row 0 of
    attn_output and ffn_down is zero). After the final RMS norm it is therefore
    always positive, so an output row with a large negative entry in column 0
    gets a hopelessly low logit: that is how `suppress` tokens are never sampled.
    """
    f32 = np.float32
    head_dim = n_embd // n_head
    w = {}

    def rnd(*shape, scale):
        return (rng.standard_normal(shape) * scale).astype(f32)

    emb = rnd(n_vocab, n_embd, scale=1.0)
    emb[:, 0] = 1.0
    w["token_embd.weight"] = emb
    s_in = 1.0 / np.sqrt(n_embd)
    for i in range(n_layer):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = np.ones(n_embd, dtype=f32)
        w[p + "attn_q.weight"] = rnd(n_head * head_dim, n_embd, scale=s_in)
        w[p + "attn_k.weight"] = rnd(n_head_kv * head_dim, n_embd, scale=s_in)
        w[p + "attn_v.weight"] = rnd(n_head_kv * head_dim, n_embd, scale=s_in)
        o = rnd(n_embd, n_head * head_dim, scale=s_in)
        o[0, :] = 0.0
        w[p + "attn_output.weight"] = o
        w[p + "ffn_norm.weight"] = np.ones(n_embd, dtype=f32)
        w[p + "ffn_gate.weight"] = rnd(n_ff, n_embd, scale=s_in)
        w[p + "ffn_up.weight"] = rnd(n_ff, n_embd, scale=s_in)
        d = rnd(n_embd, n_ff, scale=1.0 / np.sqrt(n_ff))
        d[0, :] = 0.0
        w[p + "ffn_down.weight"] = d
    w["output_norm.weight"] = np.ones(n_embd, dtype=f32)
    out = rnd(n_vocab, n_embd, scale=1.5 * s_in)
    out[:, 0] = 0.0
    for t in suppress:
        out[t, :] = 0.0
        out[t, 0] = -1000.0
    w["output.weight"] = out
    return w


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("output", help="path of the .gguf file to write")
    ap.add_argument("--vocab", type=int, default=0,
                    help="vocabulary size; 0 (default) = every piece the built-in text yields "
                         "(about 830); larger values are padded with unused tokens")
    ap.add_argument("--embd", type=int, default=64, help="embedding width (default 64)")
    ap.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2)")
    ap.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    ap.add_argument("--kv-heads", type=int, default=2, help="KV heads, GQA (default 2)")
    ap.add_argument("--ff", type=int, default=192, help="feed-forward width (default 192)")
    ap.add_argument("--ctx", type=int, default=32768, help="trained context length (default 32768)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--natural-eos", action="store_true",
                    help="let the model sample EOS/<|im_end|> (random output lengths)")
    a = ap.parse_args(argv)
    if a.embd % a.heads or a.heads % a.kv_heads:
        ap.error("--embd must be a multiple of --heads, --heads a multiple of --kv-heads")

    tokens, scores, types = build_vocab(a.vocab)
    T = gguf.TokenType
    suppress = [i for i, t in enumerate(types) if t in (T.CONTROL, T.UNKNOWN, T.UNUSED)]
    # byte tokens that are not complete printable UTF-8 on their own (control
    # characters other than \t and \n, DEL, and every byte >= 0x80)
    suppress += [i for i, tok in enumerate(tokens) if types[i] == T.BYTE
                 and not (0x20 <= int(tok[3:5], 16) < 0x7F or int(tok[3:5], 16) in (0x09, 0x0A))]
    if a.natural_eos:
        suppress = [i for i in suppress if i not in (2, 4)]
    rng = np.random.default_rng(a.seed)
    weights = build_weights(rng, len(tokens), a.embd, a.layers, a.heads, a.kv_heads, a.ff, suppress)

    tmp = a.output + ".tmp"
    wr = gguf.GGUFWriter(tmp, "llama")
    wr.add_name("retrace-tiny-random")
    wr.add_description("random weights, for load-testing llama.cpp; output is garbage")
    wr.add_file_type(gguf.LlamaFileType.ALL_F32)
    wr.add_context_length(a.ctx)
    wr.add_embedding_length(a.embd)
    wr.add_block_count(a.layers)
    wr.add_feed_forward_length(a.ff)
    wr.add_head_count(a.heads)
    wr.add_head_count_kv(a.kv_heads)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_rope_dimension_count(a.embd // a.heads)
    wr.add_rope_freq_base(10000.0)
    wr.add_vocab_size(len(tokens))
    wr.add_tokenizer_model("llama")
    wr.add_token_list(tokens)
    wr.add_token_scores(scores)
    wr.add_token_types([int(t) for t in types])
    wr.add_unk_token_id(0)
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_add_bos_token(True)
    wr.add_add_eos_token(False)
    wr.add_add_space_prefix(True)
    wr.add_chat_template(CHAT_TEMPLATE)
    for name, arr in weights.items():
        wr.add_tensor(name, arr)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    os.replace(tmp, a.output)
    n_params = sum(v.size for v in weights.values())
    print(f"wrote {a.output}: llama, {len(tokens)} tokens, {a.layers} layers, "
          f"{a.embd} wide, {n_params} params, {os.path.getsize(a.output)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
