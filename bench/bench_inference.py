"""Inference speed: CLOUD (ours) against the reference stack (Hugging Face BertModel + BertTokenizer), one process.

Materials: a seeded sample of `../shared/data/mp37k.parquet`, encoded (untimed) by the project's encoder twice:
the `official` variant (byte-identical to the reference strings' format, which the reference WordPiece
vocabulary was built for) feeds the reference stack, the `detailed` variant (what the shipped model reads)
feeds ours. Same materials, same count, each stack in its own string format.

Stacks, all timed from SCOPE strings to predictions (tokenization included), same device, same threads:
- ours, shipped: `load_bundle("default")` through `cloud_core.inference.predict_strings` (what `predict` runs
  after encoding: tokenize, sort by length, batches padded to their longest string, forward, heads, Debye Cv);
- ours, reference size: a `CloudModel` with 12 layers, width 768, 12 heads (random weights), same function;
- reference: `transformers.BertModel` of the same size (random weights) + a linear head on the pooled output,
  `BertTokenizer` over `cloud_reference/vocab.txt` per batch with `padding="max_length", max_length=64,
  truncation=True`, eval mode, `torch.no_grad()`, as the reference code runs it. The tokenizer is the Rust-backed
  one (`BertTokenizer` in transformers 5, `BertTokenizerFast` in 4); the Python one (`BertTokenizer` in
  transformers 4, `BertTokenizerLegacy` in 5) is timed on the same strings and reported as a second row
  (its tokenization time + the same forward time).

Each stack: one warm-up pass (excluded), then `--passes` timed passes, interleaved across stacks so that load
from other processes spreads evenly; the median is reported.

    python bench/bench_inference.py [--n 4096] [--n-large 512] [--batch-size 256] [--threads 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cloud_core.bundle import load_bundle  # noqa: E402
from cloud_core.encode import EncodeSettings, encode_table  # noqa: E402
from cloud_core.inference import MIN_BATCH_TOKENS, batch_end, model_lengths, predict_strings  # noqa: E402
from cloud_core.model import CloudModel, ModelConfig  # noqa: E402
from cloud_core.tokenizer import tokenize  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
VOCAB = DATA / "cloud_reference" / "vocab.txt"
REF_MAX_LENGTH = 64


# ----------------------------------------------------------------------------------------------- strings


def load_strings(n: int, seed: int, max_length: int, prepared: Path | None = None) -> tuple[list[str], list[str], int]:
    """(official, detailed) SCOPE strings of the same materials, the first n mp37k sample rows that both encode
    and whose detailed string fits our model (at most `max_length` tokens); and how many were left out as too long.

    `prepared`: bench/bench_gpu.py's inputs table (mp37k encoded ahead, for a machine without the shared data).
    """
    if prepared is not None:
        both = pl.read_parquet(prepared, columns=["official", "detailed"]).rename(
            {"official": "scope", "detailed": "scope_detailed"}
        )
        both = both.sample(min(both.height, int(n * 1.05) + 64), seed=seed)
    else:
        frame = pl.read_parquet(DATA / "mp37k.parquet", columns=["material_id", "cif"])
        frame = frame.sample(min(frame.height, int(n * 1.05) + 64), seed=seed)
        encoded = {
            v: encode_table(frame, EncodeSettings(variant=v), workers=1).select("id", "scope")
            for v in ("official", "detailed")
        }
        both = (
            encoded["official"]
            .join(encoded["detailed"], on="id", suffix="_detailed", maintain_order="left")
            .drop_nulls()
        )
    tokens = tokenize(both["scope_detailed"].to_list(), max_length=max_length)
    fits = np.ones(both.height, dtype=bool)
    fits[tokens.too_long] = False
    too_long = int((~fits[: int(np.searchsorted(np.cumsum(fits), n)) + 1]).sum())
    both = both.filter(pl.Series(fits)).head(n)
    if both.height < n:
        raise SystemExit(f"only {both.height} of the sample encoded; ask for fewer strings")
    return both["scope"].to_list(), both["scope_detailed"].to_list(), too_long


# ----------------------------------------------------------------------------------------------- reference stack


def read_vocab(path: Path) -> dict[str, int]:
    return {line.rstrip("\n"): i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines())}


def reference_tokenizers(path: Path):
    """(fast, python) BertTokenizers over the reference vocabulary, whichever transformers is installed.

    Case is kept (`do_lower_case=False`): the vocabulary holds element symbols (`Bi`, `Ru`) and upper-case
    generator letters, so lower-casing would break every element into word pieces. transformers 5 ignores
    `BertTokenizer(vocab_file=...)` (the tokenizer silently gets a 5-token vocabulary and every token
    becomes [UNK]); the vocabulary has to be passed as `vocab=`.
    """
    import transformers

    major = int(transformers.__version__.split(".")[0])
    if major >= 5:
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

        assert "vocab" in inspect.signature(transformers.BertTokenizer.__init__).parameters
        fast = transformers.BertTokenizer(vocab=read_vocab(path), do_lower_case=False)
        python = BertTokenizerLegacy(vocab_file=str(path), do_lower_case=False)
    else:
        fast = transformers.BertTokenizerFast(vocab_file=str(path), do_lower_case=False)
        python = transformers.BertTokenizer(vocab_file=str(path), do_lower_case=False)
    return fast, python


class ReferenceModel(torch.nn.Module):
    """BertModel + a linear regression head on the pooled [CLS] output (the usual HF fine-tuning shape)."""

    def __init__(self, vocab_size: int, pad_token_id: int, width: int, layers: int, heads: int):
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * width,
            max_position_embeddings=512,
            pad_token_id=pad_token_id,
        )
        self.bert = BertModel(config)
        self.head = torch.nn.Linear(width, 1)

    def forward(self, **inputs) -> torch.Tensor:
        return self.head(self.bert(**inputs).pooler_output).squeeze(-1)


def reference_predict(model: ReferenceModel, tokenizer, strings: list[str], device, batch_size: int, autocast):
    outputs = []
    with torch.no_grad():
        for start in range(0, len(strings), batch_size):
            batch = tokenizer(
                strings[start : start + batch_size],
                padding="max_length",
                max_length=REF_MAX_LENGTH,
                truncation=True,
                return_tensors="pt",
            ).to(device)
            with autocast():
                outputs.append(model(**batch).float().cpu())
    return torch.cat(outputs)


# ----------------------------------------------------------------------------------------------- ours


def reference_size_model(
    shipped: ModelConfig, width: int, layers: int, heads: int, pool_pairs: bool = False
) -> CloudModel:
    sizes = {"d_model": width, "n_layer": layers, "n_head": heads, "pool_pairs": pool_pairs}
    config = ModelConfig.from_dict({**shipped.to_dict(), **sizes})
    torch.manual_seed(0)
    return CloudModel(config).eval()


def our_lengths(strings: list[str], model: CloudModel, batch_size: int, device: torch.device) -> dict[str, float]:
    """Tokens per string (with [CLS]), per string inside the model (generator code pooled into one token), and
    per string as padded in predict_strings' batches (the same ordering and cuts predict_strings makes)."""
    tokens = tokenize(strings, max_length=model.config.max_length)
    lengths = model_lengths(model, tokens)
    ordered = np.sort(lengths, kind="stable")
    min_tokens = MIN_BATCH_TOKENS.get(device.type, MIN_BATCH_TOKENS["cuda"])
    padded, batches, start = 0, 0, 0
    while start < len(ordered):
        stop = batch_end(ordered, start, batch_size, min_tokens)
        padded += int(ordered[stop - 1]) * (stop - start)
        batches, start = batches + 1, stop
    raw = tokens.mask.sum(1).numpy()
    return {
        "tokens": float(raw.mean()),
        "pooled": float(lengths.mean()),
        "padded": padded / len(ordered),
        "batches": batches,
        "max": int(raw.max()),
    }


# ----------------------------------------------------------------------------------------------- timing


@dataclass
class Stack:
    name: str
    n: int
    run: Callable[[int], object]  # runs the stack on its first k strings
    check: Callable[[object], str]
    times: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def rate(self) -> float:
        return self.n / self.median


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, result


def check_frame(frame: pl.DataFrame) -> str:
    errors = int(frame["error"].is_not_null().sum())
    values = frame.drop("error").to_numpy()
    finite = bool(np.isfinite(values).all())
    if errors or not finite:
        raise SystemExit(f"our predictions are not sane: {errors} error rows, all finite: {finite}")
    return f"{frame.height} rows, 0 errors, all finite"


def check_tensor(values: torch.Tensor) -> str:
    if not torch.isfinite(values).all():
        raise SystemExit("reference outputs are not finite")
    return f"{values.numel()} outputs, all finite"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096, help="strings for the shipped model")
    parser.add_argument("--n-large", type=int, default=512, help="strings for the two 768-wide stacks (same for both)")
    parser.add_argument("--batch-size", type=int, default=256, help="strings per batch, every stack")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=64, help="strings of the untimed warm-up pass")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--strings", type=Path, help="bench/bench_gpu.py --prepare's table instead of encoding mp37k")
    parser.add_argument("--vocab", type=Path, default=VOCAB, help="the reference WordPiece vocabulary")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")
    import transformers

    n_large = min(args.n_large, args.n)
    load_at_start = os.getloadavg()
    shipped = load_bundle("default", device).model
    started = time.perf_counter()
    official, detailed, too_long = load_strings(args.n, args.seed, shipped.config.max_length, args.strings)
    print(
        f"encoded {len(official)} materials (official + detailed) in {time.perf_counter() - started:.1f} s; "
        f"{too_long} left out on the way: detailed string over the model's {shipped.config.max_length} tokens"
    )
    official_large, detailed_large = official[:n_large], detailed[:n_large]

    ours_large = reference_size_model(shipped.config, args.width, args.layers, args.heads).to(device)
    ours_pairs = reference_size_model(shipped.config, args.width, args.layers, args.heads, pool_pairs=True).to(device)
    fast_tok, python_tok = reference_tokenizers(args.vocab)
    vocab_size = len(read_vocab(args.vocab))
    assert len(fast_tok) == vocab_size, f"tokenizer has {len(fast_tok)} tokens, vocab.txt {vocab_size}"
    torch.manual_seed(0)
    reference = ReferenceModel(vocab_size, fast_tok.pad_token_id, args.width, args.layers, args.heads)
    reference = reference.to(device).eval()
    # What the reference runs on a GPU is float32; ours runs under bf16 autocast there (predict_strings), so on
    # CUDA the reference is timed both ways.
    fp32 = contextlib.nullcontext
    bf16 = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731

    # Tokenizer sanity: both reference tokenizers agree, nothing is [UNK], how much is cut at 64.
    enc_fast = fast_tok(official, padding="max_length", max_length=REF_MAX_LENGTH, truncation=True)
    enc_python = python_tok(official[:n_large], padding="max_length", max_length=REF_MAX_LENGTH, truncation=True)
    assert enc_fast["input_ids"][:n_large] == enc_python["input_ids"], "fast and Python BertTokenizer disagree"
    ids = np.array(enc_fast["input_ids"])
    ref_real = np.array(enc_fast["attention_mask"]).sum(1)
    untruncated = fast_tok(official, truncation=False)["input_ids"]
    ref_full = np.array([len(x) for x in untruncated])
    unk_share = float((ids == fast_tok.unk_token_id).sum() / ref_real.sum())
    assert unk_share < 0.001, f"{unk_share:.1%} of the reference tokens are [UNK]: vocabulary not loaded?"

    ours_len = our_lengths(detailed, shipped, args.batch_size, device)
    ours_len_large = our_lengths(detailed_large, ours_large, args.batch_size, device)
    ours_len_official = our_lengths(official_large, ours_large, args.batch_size, device)
    ours_len_pairs = our_lengths(detailed_large, ours_pairs, args.batch_size, device)

    def ours(model: CloudModel, strings: list[str]) -> Callable[[int], object]:
        return lambda k: predict_strings(model, strings[:k], device, args.batch_size)

    def bert(autocast) -> Callable[[int], object]:
        return lambda k: reference_predict(reference, fast_tok, official_large[:k], device, args.batch_size, autocast)

    def tokenizer_only(tokenizer) -> Callable[[int], object]:
        return lambda k: [
            tokenizer(
                official_large[i : min(i + args.batch_size, k)],
                padding="max_length",
                max_length=REF_MAX_LENGTH,
                truncation=True,
                return_tensors="pt",
            )
            for i in range(0, k, args.batch_size)
        ]

    precision = "bf16 autocast" if device.type == "cuda" else "float32"
    large = f"{args.layers} layers, width {args.width}"
    # The stacks the ratios compare are named here, so reordering the table cannot change what a ratio divides.
    shipped_first = Stack(
        f"ours, shipped, first {n_large}", n_large, ours(shipped, detailed_large), check_frame, note=precision
    )
    ours_big = Stack(f"ours, {large}", n_large, ours(ours_large, detailed_large), check_frame, note=precision)
    ours_big_pairs = Stack(
        f"ours, {large}, Wyckoff:element and element:amount pairs pooled (pool_pairs)",
        n_large,
        ours(ours_pairs, detailed_large),
        check_frame,
        note=precision,
    )
    ref = Stack(f"reference BertModel, {large}", n_large, bert(fp32), check_tensor, note="float32")
    stacks = [
        Stack(
            f"ours, shipped ({shipped.config.n_layer} layers, width {shipped.config.d_model})",
            len(detailed),
            ours(shipped, detailed),
            check_frame,
            note=precision,
        ),
        shipped_first,
        ours_big,
        ours_big_pairs,
        Stack(
            f"ours, {large}, reading the reference's own (official) strings",
            n_large,
            ours(ours_large, official_large),
            check_frame,
            note=precision,
        ),
        ref,
    ]
    if device.type == "cuda":
        stacks.append(Stack(f"reference BertModel, {large}, bf16", n_large, bert(bf16), check_tensor, note="bf16"))
    # Tokenization alone (part of the stacks above; timed separately to show where the time goes).
    stages = [
        Stack("ours: tokenize (polars)", n_large, lambda k: tokenize(detailed_large[:k]), lambda _: ""),
        Stack("reference: fast BertTokenizer", n_large, tokenizer_only(fast_tok), lambda _: ""),
        Stack("reference: Python BertTokenizer", n_large, tokenizer_only(python_tok), lambda _: ""),
    ]

    for stack in stacks + stages:  # warm-up on the first strings, not timed; the outputs are checked below
        seconds, _ = timed(lambda stack=stack: stack.run(min(args.warmup, stack.n)), device)
        print(f"warm-up {stack.name}: {seconds:.2f} s", flush=True)
    for p in range(args.passes):
        for stack in stacks + stages:
            seconds, result = timed(lambda stack=stack: stack.run(stack.n), device)
            stack.times.append(seconds)
            if p == 0:
                stack.note = ", ".join(x for x in (stack.note, stack.check(result)) if x)
            print(f"pass {p + 1} {stack.name}: {seconds:.2f} s", flush=True)

    by_name = {s.name: s for s in stacks + stages}
    python_tok_s = by_name["reference: Python BertTokenizer"].median
    fast_tok_s = by_name["reference: fast BertTokenizer"].median
    ref_python_rate = n_large / (ref.median - fast_tok_s + python_tok_s)

    load = os.getloadavg()
    command = "python bench/bench_inference.py " + " ".join(sys.argv[1:])
    print()
    print(
        f"{platform.node()}, {device}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"threads {args.threads}, batch {args.batch_size}, passes {args.passes} (median), "
        f"load average at start {load_at_start[0]:.2f}, at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"BERT attention: {reference.bert.config._attn_implementation}"
    )
    print(f"command: {command}")
    print()
    print("| stack | strings | median s (passes) | structures/s | vs reference BERT | notes |")
    print("|---|---|---|---|---|---|")
    for s in stacks:
        passes = " / ".join(f"{t:.2f}" for t in s.times)
        print(f"| {s.name} | {s.n} | {s.median:.2f} ({passes}) | {s.rate:,.0f} | {s.rate / ref.rate:.2f}x | {s.note} |")
    print(
        f"| reference BertModel with the Python BertTokenizer (transformers 4's `BertTokenizer`) | {n_large} | "
        f"{n_large / ref_python_rate:.2f} (forward {ref.median - fast_tok_s:.2f} + tokenize {python_tok_s:.2f}) | "
        f"{ref_python_rate:,.0f} | {ref_python_rate / ref.rate:.2f}x | derived: forward of the row above + the "
        f"Python tokenizer's median |"
    )
    print()
    print("| tokenization alone | strings | median s | structures/s |")
    print("|---|---|---|---|")
    for s in stages:
        print(f"| {s.name} | {s.n} | {s.median:.3f} | {s.rate:,.0f} |")
    print()
    ref_large = ref_full[:n_large]
    print(
        f"Tokens per string (mean; ours with [CLS], the reference with [CLS] and [SEP]). Reference [UNK] share "
        f"{unk_share:.2%}. Left out of the sample: {too_long} materials whose detailed string is longer than the "
        f"shipped model's {shipped.config.max_length} tokens (the reference would truncate them)."
    )
    print()
    print("| strings | tokenizer | tokens | inside the model | as padded (batches) | longest |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {n_large} official | reference WordPiece | {ref_large.mean():.1f} | "
        f"{np.minimum(ref_large, REF_MAX_LENGTH).mean():.1f} ({(ref_large > REF_MAX_LENGTH).mean():.1%} cut at "
        f"{REF_MAX_LENGTH}) | {REF_MAX_LENGTH} ({-(-n_large // args.batch_size)}) | {ref_large.max()} |"
    )
    for label, n_strings, lengths, pooled in (
        ("detailed", args.n, ours_len, "generator code and pairs" if shipped.config.pool_pairs else "generator code"),
        ("detailed", n_large, ours_len_large, "generator code"),
        ("detailed", n_large, ours_len_pairs, "generator code and pairs"),
        ("official", n_large, ours_len_official, "generator code"),
    ):
        print(
            f"| {n_strings} {label} | ours | {lengths['tokens']:.1f} | {lengths['pooled']:.1f} ({pooled} "
            f"pooled) | {lengths['padded']:.1f} ({lengths['batches']}) | {lengths['max']} |"
        )
    print()
    print(
        f"Ratios: ours {args.layers}x{args.width} vs reference BERT {ours_big.rate / ref.rate:.2f}x, with pairs "
        f"pooled {ours_big_pairs.rate / ref.rate:.2f}x (target 3x); shipped vs reference BERT "
        f"{shipped_first.rate / ref.rate:.1f}x."
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": command,
                    "load": load,
                    "stacks": {s.name: {"n": s.n, "times": s.times, "rate": s.rate} for s in stacks + stages},
                    "ref_tokens": float(ref_full.mean()),
                    "ours_tokens": ours_len,
                    "ours_tokens_large": ours_len_large,
                    "ours_tokens_official": ours_len_official,
                    "ours_tokens_pairs": ours_len_pairs,
                    "load_at_start": load_at_start,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
