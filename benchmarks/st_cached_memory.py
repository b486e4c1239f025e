"""Peak memory and step time of CachedHardNegativeRankingLoss vs HardNegativeRankingLoss (sentence-transformers).

A small transformer (a BertConfig model built on the spot with a word-level tokenizer: nothing is downloaded)
trains on (anchor, positive) pairs of synthetic text, float32, CPU, AdamW.

- **Memory.** Each configuration runs in its own subprocess, so that the peak resident memory (``ru_maxrss``)
  belongs to it alone: the uncached and the cached loss at ``--compare-batch`` pairs, and the cached loss at
  ``--cached-batch`` pairs (65,536; one step by default, ``--cached-steps``: its peak is the figure asked for, and
  it takes minutes on 2 cores). Reported: the peak RSS, the RSS just before the first step (libraries, model,
  optimiser state and the tokenised batch) and their difference, what the training step itself needed.
- **Time.** Both losses on the same model and batch in one process, alternating step by step (so that a shared
  machine's slow phases hit both alike), one warm-up step each, then ``--steps`` rounds: the ratio of the cached
  step time to the uncached one, of the fastest steps and of the medians.

::

    flock /tmp/hardneg-heavy.lock python benchmarks/st_cached_memory.py            # the figures of the docs
    python benchmarks/st_cached_memory.py --cached-batch 512 --compare-batch 256 --steps 2   # a quick check
    python benchmarks/st_cached_memory.py --timing-only                             # only the time ratio

The last stdout line is a JSON report (with the load average before and after). docs/integrations.md quotes it,
with the machine and the load it ran under.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

VOCAB = 2000


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _build_model(path: str, hidden: int, layers: int):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + [f"w{i}" for i in range(VOCAB)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(path)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=4 * hidden, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(path)
    tr = Transformer(path)
    return SentenceTransformer(modules=[tr, Pooling(tr.get_embedding_dimension())], device="cpu")


def _setup(args):
    """The model and one batch of ``args.batch`` tokenised (anchor, positive) pairs."""
    import random

    with tempfile.TemporaryDirectory() as tmp:
        model = _build_model(tmp, args.hidden, args.layers)
    rng = random.Random(0)
    topics = [rng.sample(range(VOCAB), 20) for _ in range(args.batch)]  # a pair shares its topic's words
    text = lambda t: " ".join(f"w{rng.choice(t)}" for _ in range(args.words))  # noqa: E731
    features = [model.preprocess([text(t) for t in topics]), model.preprocess([text(t) for t in topics])]
    return model, features


def run_interleaved(args) -> dict:
    """Step times of both losses on the same model and batch, alternating (a shared machine's slow phases hit
    both alike): one warm-up step each, then ``args.steps`` rounds; min and median per loss."""
    import torch

    from hardneg_torch.sentence_transformers import CachedHardNegativeRankingLoss, HardNegativeRankingLoss

    model, features = _setup(args)
    losses = {"plain": HardNegativeRankingLoss(model),
              "cached": CachedHardNegativeRankingLoss(model, mini_batch_size=args.mini_batch)}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = {k: [] for k in losses}
    for rep in range(args.steps + 1):
        for name, loss_fn in losses.items():
            t0 = time.perf_counter()
            loss_fn(features, None).backward()
            opt.step()
            opt.zero_grad()
            if rep > 0:  # the first round is the warm-up
                times[name].append(time.perf_counter() - t0)
    out = dict(variant="interleaved", batch=args.batch, mini_batch=args.mini_batch, step_s=times)
    for stat, fn in (("min", min), ("median", statistics.median)):
        out[f"{stat}_s"] = {k: fn(v) for k, v in times.items()}
        out[f"ratio_{stat}"] = fn(times["cached"]) / fn(times["plain"])
    return out


def run_one(args) -> dict:
    """One configuration, in this process: build, tokenise, then time ``args.steps`` training steps."""
    import torch

    from hardneg_torch.sentence_transformers import CachedHardNegativeRankingLoss, HardNegativeRankingLoss

    model, features = _setup(args)
    if args.variant == "cached":
        loss_fn = CachedHardNegativeRankingLoss(model, mini_batch_size=args.mini_batch)
    else:
        loss_fn = HardNegativeRankingLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    opt.zero_grad(set_to_none=False)  # allocate the gradients (and below, Adam's state) before the baseline
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad()
    baseline = _rss_bytes()
    times, losses = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = loss_fn(features, None)
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(variant=args.variant, batch=args.batch,
                mini_batch=args.mini_batch if args.variant == "cached" else None, hidden=args.hidden,
                layers=args.layers, words=args.words, dim=model.get_embedding_dimension(),
                params=sum(p.numel() for p in model.parameters()), threads=torch.get_num_threads(),
                peak_rss_gib=peak / 2**30, rss_before_step_gib=baseline / 2**30,
                step_extra_gib=(peak - baseline) / 2**30, step_s=times, losses=losses)


def _child(variant: str, batch: int, steps: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--batch", str(batch), "--mini-batch", str(args.mini_batch),
           "--hidden", str(args.hidden), "--layers", str(args.layers), "--words", str(args.words),
           "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return dict(variant=variant, batch=batch, error=proc.stderr[-2000:], returncode=proc.returncode)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cached-batch", type=int, default=65536, help="pairs per batch of the cached-memory run")
    p.add_argument("--compare-batch", type=int, default=4096, help="pairs per batch of the cached/uncached timing")
    p.add_argument("--mini-batch", type=int, default=1024, help="mini_batch_size of the cached loss")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--words", type=int, default=8, help="words per text")
    p.add_argument("--steps", type=int, default=5, help="training steps of the timing runs")
    p.add_argument("--cached-steps", type=int, default=1, help="training steps of the cached-memory run")
    p.add_argument("--timing-only", action="store_true", help="only the interleaved cached/uncached timing")
    p.add_argument("--child", choices=["cached", "plain", "interleaved"], help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.variant = args.child
        print(json.dumps(run_interleaved(args) if args.child == "interleaved" else run_one(args)))
        return 0
    report = dict(load_before=_load(), cpus=os.cpu_count(), runs=[])
    runs = [] if args.timing_only else [("plain", args.compare_batch, args.steps),
                                        ("cached", args.compare_batch, args.steps),
                                        ("cached", args.cached_batch, args.cached_steps)]
    for variant, batch, steps in runs + [("interleaved", args.compare_batch, args.steps)]:
        report["runs"].append(_child(variant, batch, steps, args))
        r = report["runs"][-1]
        if "error" in r:
            print(f"{variant} B={batch}: failed: {r['error'][-300:]}", file=sys.stderr, flush=True)
        elif variant == "interleaved":
            print(f"interleaved B={batch}: min {r['min_s']}, cached/plain {r['ratio_min']:.2f} (min), "
                  f"{r['ratio_median']:.2f} (median)", file=sys.stderr, flush=True)
        else:
            print(f"{variant:6s} B={batch:6d}: peak RSS {r['peak_rss_gib']:.2f} GiB (step +{r['step_extra_gib']:.2f}"
                  f" GiB), steps {', '.join(f'{s:.1f}' for s in r['step_s'])} s", file=sys.stderr, flush=True)
    report["load_after"] = _load()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
