"""Fine-tune a sentence-transformers model with hard-negative columns and hardneg's HardNegativeRankingLoss.

Dependencies: ``pip install "hardneg[sentence-transformers]"`` (torch, sentence-transformers >= 6 with its
training extras: datasets, accelerate). Nothing is downloaded: the model is a ``StaticEmbedding`` over a
word-level tokenizer built here, and the text is synthetic.

The task: 32 topics in 16 sibling pairs. A query of topic k is made of k's query words; a document of topic k
mixes words of k's own document vocabulary with words of a vocabulary its sibling k ^ 1 shares. Each training
row is (anchor = query, positive = a document of its topic, negative = a document of the sibling topic): the
explicit negative shares half its words with the positive, a hard negative that random in-batch documents
are not. Held out: 4 new queries per topic retrieve among one new document per topic (cosine similarity);
the metric is top-1 accuracy, chance 1/32.

The loss is used exactly as ``MultipleNegativesRankingLoss`` would be (same columns, same trainer), with the
paper's hardness weighting (beta) and debiasing (tau_plus) and a learned temperature.

Threshold: 128 held-out queries; by chance (p = 1/32) the number correct is Binomial(128, 1/32), whose
probability of reaching 0.5 (64 correct) is below 1e-40 — passing it means the model learned the topics,
siblings included. The trained model typically scores well above it (printed below).

Runs in well under a minute on 2 CPU cores. The last line is ``RESULT {...}`` (json) for tests/test_examples.py.
"""

from __future__ import annotations

import json
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing to download; fail rather than try
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from sentence_transformers import (  # noqa: E402
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.sentence_transformer.modules import StaticEmbedding  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

from hardneg_torch.sentence_transformers import HardNegativeRankingLoss  # noqa: E402

TOPICS = 32  # 16 sibling pairs (k, k ^ 1)
WORDS_PER_VOCAB = 6
THRESHOLD = 0.5
SEED = 0


def build_task(rng: random.Random, n_train: int):
    query_words = [[f"q{k}_{j}" for j in range(WORDS_PER_VOCAB)] for k in range(TOPICS)]
    own_words = [[f"d{k}_{j}" for j in range(WORDS_PER_VOCAB)] for k in range(TOPICS)]
    family_words = [[f"f{k // 2}_{j}" for j in range(WORDS_PER_VOCAB)] for k in range(TOPICS)]  # shared by k, k^1

    def query(k):
        return " ".join(rng.sample(query_words[k], 3))

    def document(k):
        words = rng.sample(own_words[k], 2) + rng.sample(family_words[k], 2)
        rng.shuffle(words)
        return " ".join(words)

    topics = [rng.randrange(TOPICS) for _ in range(n_train)]
    train = Dataset.from_dict({
        "anchor": [query(k) for k in topics],
        "positive": [document(k) for k in topics],
        "negative": [document(k ^ 1) for k in topics],  # the hard negative: the sibling topic
    })
    held_out_queries = [(query(k), k) for k in range(TOPICS) for _ in range(4)]
    held_out_docs = [document(k) for k in range(TOPICS)]
    vocab = ["[UNK]"] + sum(query_words, []) + sum(own_words, []) + sorted({w for f in family_words for w in f})
    return vocab, train, held_out_queries, held_out_docs


def retrieval_accuracy(model, queries, docs) -> float:
    """Share of held-out queries whose most similar held-out document (cosine) is their topic's."""
    q = model.encode([text for text, _ in queries], convert_to_tensor=True, normalize_embeddings=True)
    d = model.encode(docs, convert_to_tensor=True, normalize_embeddings=True)
    want = torch.tensor([k for _, k in queries])
    return (q @ d.T).argmax(dim=1).eq(want).float().mean().item()


def main() -> None:
    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    vocab, train, queries, docs = build_task(rng, n_train=4096)
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    model = SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=32)], device="cpu")
    before = retrieval_accuracy(model, queries, docs)

    # A drop-in for MultipleNegativesRankingLoss(model, scale=20): temperature = 1 / scale.
    loss = HardNegativeRankingLoss(model, temperature=0.05, beta=1.0, tau_plus=0.05, learn_temperature=True)
    args = SentenceTransformerTrainingArguments(
        output_dir=os.path.join("/tmp", f"hardneg-st-example-{os.getpid()}"), num_train_epochs=2,
        per_device_train_batch_size=64, learning_rate=0.05, batch_sampler="no_duplicates",  # see the loss's docs
        logging_steps=32, report_to="none", save_strategy="no", use_cpu=True, seed=SEED, disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    after = retrieval_accuracy(model, queries, docs)

    print(f"training loss: {losses[0]:.3f} -> {losses[-1]:.3f}; learned temperature {loss.temperature:.4f}")
    print(f"held-out top-1 retrieval: {before:.3f} before, {after:.3f} after training (chance {1 / TOPICS:.3f})")
    print("RESULT " + json.dumps({"metric": "heldout_top1_retrieval", "value": after, "chance": 1 / TOPICS,
                                  "threshold": THRESHOLD}))


if __name__ == "__main__":
    main()
