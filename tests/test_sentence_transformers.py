"""hardneg_torch.sentence_transformers: HardNegativeRankingLoss and CachedHardNegativeRankingLoss (issue 15).

What a sentence-transformers user relies on, each checked against independent code:

- the easy estimator *is* the installed MultipleNegativesRankingLoss (``scale = 1/temperature``), value and
  gradient, with 0, 1 or 2 negative columns, one-way and symmetric; the hard estimator is the reference
  ``hardneg.hcl_loss`` (float64 NumPy) on the model's embeddings with the negative columns as a shared bank;
- the cached loss has the uncached loss's value and gradients (every model parameter and a learned
  temperature, also under an outer gradient scale such as gradient accumulation's), on a real transformer;
- SentenceTransformerTrainer trains with it on an in-memory dataset: the loss falls and held-out retrieval
  rises far above chance; the model card carries the loss's config and citation;
- ``gather_across_devices`` over 2 gloo processes equals one process on the concatenated batch (and MNRL's own
  gathered loss at the easy estimator);
- the import contract: ``import hardneg_torch`` does not import sentence-transformers, and without it the module
  raises an ImportError naming the extra.

Every model is built in the test (a StaticEmbedding over a word-level tokenizer, or a tiny BertConfig model with
its own tokenizer): nothing is downloaded.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

try:
    import sentence_transformers  # noqa: F401
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        MatryoshkaLoss,
        MultipleNegativesRankingLoss,
    )
    from sentence_transformers.sentence_transformer.modules import Pooling, StaticEmbedding
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    HAVE_ST = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_ST = False

needs_st = pytest.mark.skipif(not HAVE_ST, reason='needs pip install "hardneg[sentence-transformers]"')

import hardneg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))


# --- the import contract ---------------------------------------------------------------------------------------

def test_hardneg_torch_does_not_import_sentence_transformers():
    proc = _run("import sys, hardneg_torch\n"
                "assert 'sentence_transformers' not in sys.modules, 'imported at import time'\n"
                "assert 'hardneg_torch.sentence_transformers' not in sys.modules")
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_import_without_sentence_transformers_names_the_extra():
    # sys.modules[name] = None makes `import name` raise ImportError, as if it were not installed
    proc = _run("import sys\nsys.modules['sentence_transformers'] = None\n"
                "try:\n    import hardneg_torch.sentence_transformers\n"
                "except ImportError as exc:\n    print(exc)\nelse:\n    raise SystemExit('no ImportError')")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'pip install "hardneg[sentence-transformers]"' in proc.stdout, proc.stdout


# --- models built on the spot ----------------------------------------------------------------------------------

WORDS = [f"w{i}" for i in range(60)]


def _word_tokenizer(words, specials=("[UNK]",)):
    vocab = {w: i for i, w in enumerate(list(specials) + list(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def _static_model(dim=12, seed=0, words=WORDS):
    torch.manual_seed(seed)
    return SentenceTransformer(modules=[StaticEmbedding(_word_tokenizer(words), embedding_dim=dim)], device="cpu")


def _tiny_bert(path, hidden=16, seed=0, dropout=0.0):
    """A 1-layer BERT with a word-level tokenizer, saved to ``path`` and loaded as a SentenceTransformer."""
    from sentence_transformers.base.modules import Transformer
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = _word_tokenizer(WORDS, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(path)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=32, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    BertModel(cfg).save_pretrained(path)
    tr = Transformer(path)
    return SentenceTransformer(modules=[tr, Pooling(tr.get_embedding_dimension())], device="cpu")


def _texts(n, seed, lo=1, hi=5):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def _features(model, n_columns, batch, seed=0):
    return [model.preprocess(_texts(batch, seed=seed * 100 + c)) for c in range(n_columns)]


def _loss_and_grads(loss_fn, model, features, scale=1.0):
    model.zero_grad()
    for p in loss_fn.parameters():
        p.grad = None
    value = loss_fn(features, None)
    (value * scale).backward()
    grads = {n: p.grad.detach().clone() for n, p in loss_fn.named_parameters() if p.grad is not None}
    return value.item(), grads


# --- equal to MultipleNegativesRankingLoss at the easy estimator ------------------------------------------------

@needs_st
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("n_columns", [2, 3, 4])
def test_easy_estimator_equals_installed_mnrl(n_columns, symmetric):
    from hardneg_torch.sentence_transformers import HardNegativeRankingLoss

    model = _static_model()
    features = _features(model, n_columns, batch=7, seed=n_columns)
    t = 0.05
    ours = HardNegativeRankingLoss(model, temperature=t, estimator="easy", beta=0.0, tau_plus=0.0,
                                   symmetric=symmetric)
    kw = dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction") if symmetric else {}
    mnrl = MultipleNegativesRankingLoss(model, scale=1.0 / t, **kw)
    v_ours, g_ours = _loss_and_grads(ours, model, features)
    v_mnrl, g_mnrl = _loss_and_grads(mnrl, model, features)
    # float32 throughout, different summation orders (blocked log-space vs one logsumexp): rounding ~1e-7 relative
    assert v_ours == pytest.approx(v_mnrl, rel=1e-5)
    name = "model.0.embedding.weight"
    (key,) = [k for k in g_mnrl if k.endswith("embedding.weight")]
    assert key == name
    np.testing.assert_allclose(g_ours[name].numpy(), g_mnrl[name].numpy(), rtol=1e-4,
                               atol=1e-5 * g_mnrl[name].abs().max().item())
    assert g_mnrl[name].abs().max() > 0


@needs_st
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("n_columns", [2, 4])
def test_hard_estimator_is_the_reference_cross_layout_with_a_shared_bank(n_columns, symmetric):
    from hardneg_torch.sentence_transformers import HardNegativeRankingLoss

    model = _static_model()
    features = _features(model, n_columns, batch=6, seed=10 + n_columns)
    loss_fn = HardNegativeRankingLoss(model, temperature=0.1, beta=2.0, tau_plus=0.1, symmetric=symmetric)
    value = loss_fn(features, None).item()
    with torch.no_grad():
        emb = [model(f)["sentence_embedding"].double().numpy() for f in features]
    bank = np.concatenate(emb[2:]) if n_columns > 2 else None  # every negative column, shared by all anchors
    want = hardneg.hcl_loss(emb[0], emb[1], negatives=bank, layout="cross", symmetric=symmetric,
                            temperature=0.1, beta=2.0, tau_plus=0.1)
    assert value == pytest.approx(want, rel=1e-5)
    # and it is not MNRL: the reweighting and the debiasing change the value
    easy = hardneg.hcl_loss(emb[0], emb[1], negatives=bank, layout="cross", symmetric=symmetric,
                            temperature=0.1, estimator="easy")
    assert abs(value - easy) > 1e-3


# --- gradient caching -------------------------------------------------------------------------------------------

@needs_st
@pytest.mark.parametrize("symmetric,learn", [(False, False), (True, True), (False, True)])
def test_cached_loss_has_the_uncached_value_and_gradients(tmp_path, symmetric, learn):
    from hardneg_torch.sentence_transformers import CachedHardNegativeRankingLoss, HardNegativeRankingLoss

    model = _tiny_bert(str(tmp_path / "bert"))
    features = _features(model, 3, batch=10, seed=3)
    kw = dict(temperature=0.1, beta=1.0, tau_plus=0.1, symmetric=symmetric, learn_temperature=learn)
    plain = HardNegativeRankingLoss(model, **kw)
    cached = CachedHardNegativeRankingLoss(model, mini_batch_size=3, **kw)  # 10 rows: mini-batches 3, 3, 3, 1
    # an outer scale (gradient accumulation divides the loss) must reach every gradient, the temperature's too
    v_plain, g_plain = _loss_and_grads(plain, model, features, scale=0.25)
    v_cached, g_cached = _loss_and_grads(cached, model, features, scale=0.25)
    assert v_cached == pytest.approx(v_plain, rel=1e-5)
    strip = lambda g: {k.removeprefix("loss."): v for k, v in g.items()}  # noqa: E731 - cached wraps the loss
    g_plain, g_cached = strip(g_plain), strip(g_cached)
    assert set(g_cached) == set(g_plain)
    assert ("objective.logit_scale" in g_plain) == learn
    _assert_same_gradients(g_cached, g_plain)


def _assert_same_gradients(got, want):
    # float32; the encoder runs on mini-batches instead of whole columns: ~1e-6 relative differences. The
    # absolute tolerance is relative to the largest gradient of the model: some are zero up to rounding (a
    # BERT's key bias cannot change a softmax over keys), so their own scale is noise.
    scale = max(g.abs().max().item() for g in want.values())
    assert scale > 0
    for name, g in want.items():
        np.testing.assert_allclose(got[name].numpy(), g.numpy(), rtol=1e-4, atol=1e-5 * scale, err_msg=name)


@needs_st
def test_cached_loss_without_gradients_and_under_matryoshka(tmp_path):
    from hardneg_torch.sentence_transformers import CachedHardNegativeRankingLoss, HardNegativeRankingLoss

    model = _tiny_bert(str(tmp_path / "bert"))
    features = _features(model, 2, batch=8, seed=5)
    plain = HardNegativeRankingLoss(model, temperature=0.1)
    cached = CachedHardNegativeRankingLoss(model, temperature=0.1, mini_batch_size=3)
    with torch.no_grad():  # evaluation: no cache, no hook
        assert cached(features, None).item() == pytest.approx(plain(features, None).item(), rel=1e-5)
    # MatryoshkaLoss rewraps calculate_loss (uses_gradient_cache): gradients still equal the uncached ones
    dims = [16, 8]
    v1, g1 = _loss_and_grads(MatryoshkaLoss(model, plain, dims, [1.0, 0.5]), model, features)
    v2, g2 = _loss_and_grads(MatryoshkaLoss(model, cached, dims, [1.0, 0.5]), model, features)
    assert v2 == pytest.approx(v1, rel=1e-5)
    _assert_same_gradients(g2, g1)
    learned = CachedHardNegativeRankingLoss(model, mini_batch_size=3, learn_temperature=True)
    with pytest.raises(NotImplementedError, match="MatryoshkaLoss"):
        MatryoshkaLoss(model, learned, dims)(features, None)


# --- edge cases and validation ----------------------------------------------------------------------------------

@needs_st
def test_one_pair_without_negatives_is_zero_as_in_mnrl(tmp_path):
    from hardneg_torch.sentence_transformers import CachedHardNegativeRankingLoss, HardNegativeRankingLoss

    static = _static_model()
    features = _features(static, 2, batch=1)
    assert MultipleNegativesRankingLoss(static)(features, None).item() == 0.0
    value = HardNegativeRankingLoss(static)(features, None)
    assert value.item() == 0.0
    value.backward()  # connected to the graph (the trainer calls backward on every batch)
    bert = _tiny_bert(str(tmp_path / "bert"))
    value = CachedHardNegativeRankingLoss(bert)(_features(bert, 2, batch=1), None)
    assert value.item() == 0.0
    value.backward()
    # one pair with a negative column is a real loss (the negative is a candidate)
    assert HardNegativeRankingLoss(static)(_features(static, 3, batch=1), None).item() > 0.0


@needs_st
def test_arguments_are_validated_with_the_shared_messages(tmp_path):
    from hardneg_torch.sentence_transformers import CachedHardNegativeRankingLoss, HardNegativeRankingLoss

    model = _static_model()

    def message(**kw):
        with pytest.raises((TypeError, ValueError)) as exc:
            hardneg.hcl_loss(np.ones((2, 3)), np.ones((2, 3)), layout="cross", **kw)
        return str(exc.value)

    for kw in (dict(temperature=0.0), dict(beta=-1.0), dict(tau_plus=1.0), dict(estimator="easyish"),
               dict(symmetric="yes"), dict(temperature="0.1")):
        with pytest.raises((TypeError, ValueError)) as exc:
            HardNegativeRankingLoss(model, **kw)
        assert str(exc.value) == message(**kw), kw
    with pytest.raises(TypeError, match="gather_across_devices must be a bool"):
        HardNegativeRankingLoss(model, gather_across_devices=1)
    with pytest.raises(TypeError, match="learn_temperature must be a bool"):
        HardNegativeRankingLoss(model, learn_temperature="no")
    with pytest.raises(ValueError, match="at least 2 inputs"):
        HardNegativeRankingLoss(model)(_features(model, 1, batch=4), None)
    # hyper-parameters changed between steps are validated on the next call
    loss_fn = HardNegativeRankingLoss(model)
    loss_fn.beta = -2.0
    with pytest.raises(ValueError, match="beta must be >= 0"):
        loss_fn(_features(model, 2, batch=4), None)
    with pytest.raises(ValueError, match="StaticEmbedding"):
        CachedHardNegativeRankingLoss(model)
    bert = _tiny_bert(str(tmp_path / "bert"))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="mini_batch_size must be a positive integer"):
            CachedHardNegativeRankingLoss(bert, mini_batch_size=bad)
    with pytest.raises(ValueError, match="mini_batch_num_tokens must be a positive integer or None"):
        CachedHardNegativeRankingLoss(bert, mini_batch_num_tokens=0)
    with pytest.raises(ValueError, match="tau_plus must satisfy"):
        CachedHardNegativeRankingLoss(bert, tau_plus=-0.1)


@needs_st
def test_conventions_config_citation_and_delegated_hyperparameters(tmp_path):
    from hardneg_torch.sentence_transformers import CachedHardNegativeRankingLoss, HardNegativeRankingLoss

    model = _static_model()
    loss_fn = HardNegativeRankingLoss(model, temperature=0.05, beta=0.5, learn_temperature=True)
    assert loss_fn.get_config_dict() == dict(temperature=pytest.approx(0.05), beta=0.5, tau_plus=0.1,
                                             estimator="hard", symmetric=False, learn_temperature=True,
                                             gather_across_devices=False)
    assert loss_fn.scale == pytest.approx(20.0)
    assert "robinson2021contrastive" in loss_fn.citation
    assert [n for n, _ in loss_fn.named_parameters() if not n.startswith("model.")] == ["objective.logit_scale"]
    loss_fn.temperature = 0.1  # sets the learned parameter
    assert loss_fn.objective.logit_scale.item() == pytest.approx(math.log(10.0))
    bert = _tiny_bert(str(tmp_path / "bert"))
    cached = CachedHardNegativeRankingLoss(bert, symmetric=True, mini_batch_size=4)
    assert cached.get_config_dict()["mini_batch_size"] == 4 and cached.get_config_dict()["symmetric"] is True
    assert "robinson2021contrastive" in cached.citation and "gao2021scaling" in cached.citation
    cached.beta = 3.0  # set on the wrapped loss, which computes the value
    assert cached.loss.beta == 3.0 and cached.get_config_dict()["beta"] == 3.0
    # the trainer swaps the (wrapped) model into every loss holding one, as for CachedMNRL
    assert cached.loss.model is bert


# --- training with SentenceTransformerTrainer -------------------------------------------------------------------

TOPICS, PER_TOPIC = 24, 6


def _topic_task(n_train, seed=0):
    """Queries and documents of TOPICS topics with disjoint vocabularies: a random model retrieves at chance.

    Query words of topic k are ``q{k}_*``, document words ``d{k}_*`` (so nothing is shared between a query and
    its document); the hard negative of a pair is a document of the sibling topic k ^ 1. Held out: one new
    query and one new document per topic; retrieval accuracy is the share of queries whose nearest document
    (cosine) is their own topic's — chance is 1 / TOPICS.
    """
    rng = random.Random(seed)
    q = [[f"q{k}_{j}" for j in range(PER_TOPIC)] for k in range(TOPICS)]
    d = [[f"d{k}_{j}" for j in range(PER_TOPIC)] for k in range(TOPICS)]
    text = lambda words: " ".join(rng.sample(words, 3))  # noqa: E731
    ks = [rng.randrange(TOPICS) for _ in range(n_train)]
    train = Dataset.from_dict({"anchor": [text(q[k]) for k in ks], "positive": [text(d[k]) for k in ks],
                               "negative": [text(d[k ^ 1]) for k in ks]})
    held_out = ([text(q[k]) for k in range(TOPICS)], [text(d[k]) for k in range(TOPICS)])
    return sum(q, []) + sum(d, []), train, held_out


def _retrieval_accuracy(model, held_out):
    queries, docs = held_out
    qe = model.encode(queries, convert_to_tensor=True, normalize_embeddings=True)
    de = model.encode(docs, convert_to_tensor=True, normalize_embeddings=True)
    return (qe @ de.T).argmax(dim=1).eq(torch.arange(len(queries))).float().mean().item()


def _train(model, loss_fn, train, out_dir, lr, batch=48):
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    args = SentenceTransformerTrainingArguments(
        output_dir=out_dir, num_train_epochs=1, per_device_train_batch_size=batch, learning_rate=lr,
        logging_steps=2, report_to="none", save_strategy="no", use_cpu=True, seed=0, batch_sampler="no_duplicates",
        disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss_fn)
    trainer.train()
    return trainer, [h["loss"] for h in trainer.state.log_history if "loss" in h]


@needs_st
def test_trainer_learns_retrieval_with_hard_negative_columns(tmp_path):
    from hardneg_torch.sentence_transformers import HardNegativeRankingLoss

    words, train, held_out = _topic_task(n_train=1536)
    model = _static_model(dim=32, words=words)
    before = _retrieval_accuracy(model, held_out)
    loss_fn = HardNegativeRankingLoss(model, temperature=0.05, beta=1.0, tau_plus=0.05, learn_temperature=True)
    _, losses = _train(model, loss_fn, train, str(tmp_path / "out"), lr=0.05)
    after = _retrieval_accuracy(model, held_out)
    # The first logged losses are ~log(M) at a random start; training must cut them substantially.
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2]), losses
    # chance is 1/24 ~ 0.04; 24 held-out queries: an accuracy of 0.5 is 12 correct, impossible by luck
    # (binomial tail P[X >= 12 | p = 1/24] < 1e-9)
    assert before < 0.3, before
    assert after >= 0.5, (before, after)
    assert loss_fn.temperature != pytest.approx(0.05, rel=1e-3)  # the trainer optimised the loss's parameter
    # the model card records the loss, its configuration and its citation
    model.save_pretrained(str(tmp_path / "saved"))
    card = (tmp_path / "saved" / "README.md").read_text(encoding="utf-8")
    assert "HardNegativeRankingLoss" in card and '"beta": 1.0' in card and "robinson2021contrastive" in card


@needs_st
def test_trainer_with_the_cached_loss_on_a_transformer(tmp_path):
    from hardneg_torch.sentence_transformers import CachedHardNegativeRankingLoss

    model = _tiny_bert(str(tmp_path / "bert"), hidden=16)
    rng = random.Random(1)
    # pairs of one word and its "translation" (the same word): learnable by a transformer in a few steps
    ws = [rng.choice(WORDS) for _ in range(256)]
    train = Dataset.from_dict({"anchor": ws, "positive": ws, "negative": [rng.choice(WORDS) for _ in ws]})
    loss_fn = CachedHardNegativeRankingLoss(model, temperature=0.1, mini_batch_size=16, learn_temperature=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _, losses = _train(model, loss_fn, train, str(tmp_path / "out"), lr=5e-3, batch=64)
    assert len(losses) >= 2 and all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and loss_fn.temperature != pytest.approx(0.1, rel=1e-4)


# --- gather_across_devices (2 gloo processes) -------------------------------------------------------------------

D_IN, D_OUT = 6, 5


def _columns(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(n, D_IN, generator=g, dtype=torch.float64) for _ in range(4)]
    x[1] = x[0] + 0.5 * x[1]  # positives near their anchors
    return x


def _encoder():
    torch.manual_seed(7)
    return torch.nn.Linear(D_IN, D_OUT).double()


def _gather_worker(rank, world, port, out_dir, sizes):
    import torch_workers

    from hardneg_torch.sentence_transformers import HardNegativeRankingLoss

    torch_workers.init(rank, world, port)
    try:
        cols = _columns(sum(sizes), seed=0)
        lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
        out = []
        for estimator in ("hard", "easy"):
            enc = _encoder()
            net = torch.nn.parallel.DistributedDataParallel(enc)
            emb = [net(c[lo:hi]) for c in cols]  # anchor, positive, negative_1, negative_2 of this rank
            loss_fn = HardNegativeRankingLoss(torch.nn.Identity(), temperature=0.2, symmetric=True,
                                              estimator=estimator, gather_across_devices=True,
                                              learn_temperature=True).double()
            value = loss_fn.compute_loss_from_embeddings(emb)
            value.backward()
            out += ([value.item(), loss_fn.objective.logit_scale.grad.item()]
                    + enc.weight.grad.numpy().ravel().tolist())
        if sizes[0] == sizes[1]:  # MNRL's own gather needs equal shards
            # the learned temperature started from float32 log(1/0.2): compare at the temperature used
            mnrl = MultipleNegativesRankingLoss(torch.nn.Identity(), scale=1.0 / loss_fn.temperature,
                                                gather_across_devices=True,
                                                directions=("query_to_doc", "doc_to_query"),
                                                partition_mode="per_direction")
            with torch.no_grad():
                out.append(mnrl.compute_loss_from_embeddings([enc(c[lo:hi]) for c in cols], None).item())
        np.save(os.path.join(out_dir, f"{rank}.npy"), np.array(out))
    except BaseException:
        torch_workers.abort()
        raise
    torch_workers.finish()


@needs_st
@pytest.mark.parametrize("sizes", [[4, 4], [2, 5]])
def test_gather_across_devices_equals_one_process_on_the_global_batch(sizes):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    import torch.multiprocessing as mp

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_workers

    from hardneg_torch.sentence_transformers import HardNegativeRankingLoss

    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_gather_worker, args=(2, torch_workers.free_port(), out_dir, sizes), nprocs=2, join=True)
        per_rank = [np.load(os.path.join(out_dir, f"{r}.npy")) for r in range(2)]
    cols = _columns(sum(sizes), seed=0)
    enc = _encoder()
    emb = [enc(c) for c in cols]
    n_w = D_IN * D_OUT
    for k, estimator in enumerate(("hard", "easy")):
        loss_fn = HardNegativeRankingLoss(torch.nn.Identity(), temperature=0.2, symmetric=True, estimator=estimator,
                                          gather_across_devices=True, learn_temperature=True).double()  # no-op here
        enc.zero_grad()
        single = loss_fn.compute_loss_from_embeddings(emb)
        single.backward(retain_graph=True)
        g = enc.weight.grad.numpy().ravel()
        g_t = loss_fn.objective.logit_scale.grad.item()
        base = k * (2 + n_w)
        # the ranks' losses average to the global loss (exact for uneven shards: hardneg's scaling), and DDP
        # leaves every replica with the single-process gradient; the loss itself averages the learned
        # temperature's (outside DDP). float64, so agreement is at rounding level.
        losses = [p[base] for p in per_rank]
        np.testing.assert_allclose(np.mean(losses), single.item(), rtol=1e-10)
        for p in per_rank:
            np.testing.assert_allclose(p[base + 1], g_t, rtol=1e-9)
            np.testing.assert_allclose(p[base + 2:base + 2 + n_w], g, rtol=1e-9, atol=1e-12 * np.abs(g).max())
        if estimator == "easy" and sizes[0] == sizes[1]:
            # MNRL's own gathered loss, rank by rank (its per-rank mean equals ours for equal shards)
            for p, ours in zip(per_rank, losses):
                assert p[-1] == pytest.approx(ours, rel=1e-10)


# --- signatures: drop-in beside the library's losses ------------------------------------------------------------

@needs_st
def test_signatures_follow_hcl_loss_and_the_library():
    import inspect

    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    from hardneg_torch.sentence_transformers import CachedHardNegativeRankingLoss, HardNegativeRankingLoss

    def params(fn):
        return {n: p.default for n, p in list(inspect.signature(fn).parameters.items())[1:]}  # without self

    plain, cached = params(HardNegativeRankingLoss.__init__), params(CachedHardNegativeRankingLoss.__init__)
    ref = params(hardneg.hcl_loss)  # hyper-parameters shared with hcl_loss keep its defaults
    assert all(plain[k] == ref[k] for k in ("beta", "tau_plus", "estimator"))
    assert plain["temperature"] == 1.0 / params(MultipleNegativesRankingLoss.__init__)["scale"]
    assert plain["gather_across_devices"] is False
    # the cached loss takes the uncached loss's arguments, in order, then CachedMNRL's own, with its defaults
    assert list(cached)[: len(plain)] == list(plain) and all(cached[k] == plain[k] for k in plain)
    extras = {k: v for k, v in cached.items() if k not in plain}
    theirs = params(CachedMultipleNegativesRankingLoss.__init__)
    assert extras == {k: theirs[k] for k in ("mini_batch_size", "mini_batch_num_tokens", "show_progress_bar")}
