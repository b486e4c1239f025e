r"""Hard-negative ranking losses for sentence-transformers (``pip install "hardneg[sentence-transformers]"``).

:class:`HardNegativeRankingLoss` is a drop-in beside sentence-transformers' ``MultipleNegativesRankingLoss``
(MNRL): the same input columns — ``(anchor, positive)`` or ``(anchor, positive, negative_1, ..., negative_k)``
— and the same candidate sets, with the hard-negative objective of Robinson et al. (ICLR 2021) computed by
:func:`hardneg_torch.hcl_loss` in the cross layout (docs/layouts.md). :class:`CachedHardNegativeRankingLoss`
is the same loss with gradient caching (GradCache, as ``CachedMultipleNegativesRankingLoss``), for batches
far larger than the encoder's activations allow.

**The candidates.** For a batch of B rows and k negative columns, anchor ``anchor[i]`` is scored against every
positive of the batch (``positive[i]`` is its positive, the other B - 1 are negatives) and against all k·B
negatives of the batch (a bank shared by every anchor, as MNRL concatenates them): M = B - 1 + kB negatives.
With u = e / ||e|| (MNRL's ``cos_sim``), s_ij = u_i · v_j / t and a_i = s of the positive:

.. math::

    R_i = M \frac{\sum_{j \in N_i} e^{(1+\beta) s_{ij}}}{\sum_{j \in N_i} e^{\beta s_{ij}}},\qquad
    Ng_i = \max\Big(\frac{R_i - \tau^+ M e^{a_i}}{1-\tau^+},\; M e^{-1/t}\Big),\qquad
    \text{loss} = \frac{1}{B}\sum_i -\log\frac{e^{a_i}}{e^{a_i} + Ng_i}.

``estimator="easy"`` uses :math:`Ng_i = \sum_j e^{s_{ij}}`: that is MNRL with ``scale = 1/temperature``
exactly (``beta``/``tau_plus`` are then ignored); ``beta=0`` is the debiased loss (Chuang et al., NeurIPS
2020). ``symmetric=True`` adds the reverse direction — each positive against all anchors, no negative
columns — and averages the 2B anchors' losses, which at ``estimator="easy"`` is MNRL with
``directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"``.

The loss's memory is linear in the batch (no B x B matrix is formed, forward or backward), so with gradient
caching a whole training step is memory-linear: only one mini-batch of encoder activations is alive at a time.
Importing this module needs sentence-transformers >= 6.0; ``import hardneg_torch`` never imports it.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Iterable, List, Optional, Union

import torch
from torch import Tensor, nn

try:
    from sentence_transformers.base.losses import CachedLossMixin, has_static_embedding_input
    from sentence_transformers.base.losses.merged_forward import embed_columns
except ImportError as exc:  # not installed, or a version before 6.0 (no base.losses)
    raise ImportError(
        "hardneg_torch.sentence_transformers needs sentence-transformers >= 6.0 with its training extras; "
        f'install them with: pip install "hardneg[sentence-transformers]" ({exc})'
    ) from exc

from hardneg.validation import _check_bool, check_hyperparameters

from .distributed import all_gather_with_grad
from .loss import hcl_loss
from .module import HCLLoss

__all__ = ["HardNegativeRankingLoss", "CachedHardNegativeRankingLoss"]

_HCL_CITATION = """
@inproceedings{robinson2021contrastive,
    title={Contrastive Learning with Hard Negative Samples},
    author={Robinson, Joshua and Chuang, Ching-Yao and Sra, Suvrit and Jegelka, Stefanie},
    booktitle={International Conference on Learning Representations (ICLR)},
    year={2021},
    eprint={2010.04592},
    archivePrefix={arXiv}
}
"""

_GRADCACHE_CITATION = """
@misc{gao2021scaling,
    title={Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
    author={Luyu Gao and Yunyi Zhang and Jiawei Han and Jamie Callan},
    year={2021},
    eprint={2101.06983},
    archivePrefix={arXiv},
    primaryClass={cs.LG}
}
"""

def _gathering(flag: bool) -> bool:
    """Whether to gather across devices now: asked for, and a torch.distributed group of > 1 rank is running.

    As sentence-transformers' ``all_gather_with_grad``, ``gather_across_devices=True`` is a no-op in a
    single process, so the same training script runs with and without ``torchrun``.
    """
    if not flag:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _delegate(holder: str, name: str, check=None, settable: bool = True) -> property:
    """A property forwarding ``name`` to the object held in ``self.<holder>``: both losses expose MNRL-style
    attributes whose one source of truth is the object that computes the loss (``check(name, value)`` runs
    before a set)."""

    def get(self):
        return getattr(getattr(self, holder), name)

    def set_(self, value) -> None:
        if check is not None:
            check(name, value)
        setattr(getattr(self, holder), name, value)

    return property(get, set_ if settable else None, doc=f"``{name}``, held by ``self.{holder}``.")


class _MeanGradOverRanks(torch.autograd.Function):
    """Identity; its backward averages the gradient over the ranks of the default group.

    A learned temperature lives in the loss, not in the DDP-wrapped model, so DDP does not average its gradient.
    Under ``gather=True`` each rank's d loss / d t is its share, scaled like the loss (hardneg_torch.distributed),
    so their mean is the single-process gradient: this all-reduce is what DDP would do for a replicated parameter.
    It runs inside every rank's backward at the same place, as the gather's own all-reduce does.
    """

    @staticmethod
    def forward(ctx, t):
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad / dist.get_world_size()


class HardNegativeRankingLoss(nn.Module):
    r"""Hard-negative contrastive loss (Robinson et al., ICLR 2021) for sentence-transformers, beside MNRL.

    A drop-in for ``MultipleNegativesRankingLoss``: same input columns, same candidates (every positive and
    every negative of the batch), ``temperature = 1/scale``. The objective is :func:`hardneg_torch.hcl_loss`
    with ``layout="cross"`` (normalised embeddings, i.e. cosine similarity): the negatives are reweighted by
    their hardness (``beta``) and debiased for false negatives (``tau_plus``). See the module docstring for
    the formula; at ``estimator="easy"`` it is MNRL's value exactly.

    Parameters
    ----------
    model : SentenceTransformer
        The model whose ``sentence_embedding`` outputs are trained.
    temperature : float, default 0.05
        t > 0 (MNRL's default ``scale=20`` is t = 0.05); with ``learn_temperature``, the initial value.
    beta : float, default 1.0
        Hardness, >= 0 (``math.inf``: worst-case negatives; 0: the debiased loss).
    tau_plus : float, default 0.1
        Class prior of false negatives, 0 <= tau_plus < 1 (0: no debiasing).
    estimator : {"hard", "easy"}, default "hard"
        "easy" is InfoNCE / MNRL (beta and tau_plus ignored).
    symmetric : bool, default False
        Also rank the anchors for each positive (positive[i] against every anchor, no negative columns) and
        average both directions, as CLIP and MNRL's ``("query_to_doc", "doc_to_query")`` per-direction variant.
    learn_temperature : bool, default False
        Learn t as ``exp(-logit_scale)``, a 0-d parameter of this loss (:class:`hardneg_torch.HCLLoss`'s
        implementation, exact closed-form gradient). ``SentenceTransformerTrainer`` optimises the loss's
        parameters with the model's (note: with the trainer's ``weight_decay`` > 0 it decays ``logit_scale``
        too, pulling t towards 1).
    gather_across_devices : bool, default False
        Under ``torch.distributed`` (e.g. ``torchrun``), use every rank's positives and negatives as candidates
        (gathered with gradient: :func:`hardneg_torch.hcl_loss`'s ``gather=True``, plus the negative columns).
        Each rank's loss covers its own anchors and is scaled so that DDP's gradient averaging gives the
        gradient of one process on the global batch; a learned temperature's gradient is averaged over the
        ranks by the loss itself (it is not part of the DDP-wrapped model). A no-op in a single process.

    Inputs
    ------
    ``(anchor, positive)`` pairs or ``(anchor, positive, negative_1, ..., negative_k)`` tuples; no labels (a
    label column is ignored, as MNRL does). Use ``BatchSamplers.NO_DUPLICATES`` so that no in-batch candidate
    duplicates an anchor's positive. A batch of one pair without negative columns (the last batch of an epoch)
    has no negative: its loss is 0, as MNRL's.

    Raises
    ------
    TypeError, ValueError
        Bad hyper-parameters, with the messages of :func:`hardneg.validation.check_hyperparameters` (shared by
        every hardneg backend); fewer than two input columns.

    References
    ----------
    Robinson, Chuang, Sra, Jegelka. Contrastive Learning with Hard Negative Samples. ICLR 2021.
    Chuang, Robinson, Lin, Torralba, Jegelka. Debiased Contrastive Learning. NeurIPS 2020.
    Henderson et al. Efficient Natural Language Response Suggestion for Smart Reply, 2017 (MNRL).

    Examples
    --------
    A tiny model built on the spot (nothing downloaded); any ``SentenceTransformer`` works the same way:

    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> from sentence_transformers import SentenceTransformer
    >>> from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    >>> vocab = {w: i for i, w in enumerate(["[UNK]", "a", "b", "c", "d"])}
    >>> tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    >>> tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    >>> model = SentenceTransformer(modules=[StaticEmbedding(tok, embedding_dim=8)], device="cpu")
    >>> loss = HardNegativeRankingLoss(model, temperature=0.05, beta=1.0, tau_plus=0.1)
    >>> features = [model.preprocess(col) for col in (["a b", "c"], ["a", "c d"], ["d", "b"])]
    >>> loss(features, None).backward()
    """

    def __init__(
        self,
        model: nn.Module,
        temperature: float = 0.05,
        beta: float = 1.0,
        tau_plus: float = 0.1,
        estimator: str = "hard",
        symmetric: bool = False,
        learn_temperature: bool = False,
        gather_across_devices: bool = False,
    ) -> None:
        super().__init__()
        _check_bool("gather_across_devices", gather_across_devices)
        self.model = model
        # HCLLoss validates the hyper-parameters (shared messages) and holds the learnable temperature.
        self.objective = HCLLoss(temperature=temperature, beta=beta, tau_plus=tau_plus, estimator=estimator,
                                 layout="cross", symmetric=symmetric, learn_temperature=learn_temperature)
        self.gather_across_devices = gather_across_devices

    # -- hyper-parameters: held by self.objective (validated again on every call) --------------------------
    beta = _delegate("objective", "beta")
    tau_plus = _delegate("objective", "tau_plus")
    estimator = _delegate("objective", "estimator")
    symmetric = _delegate("objective", "symmetric", check=_check_bool)
    learn_temperature = _delegate("objective", "learn_temperature", settable=False)

    @property
    def temperature(self) -> float:
        """The temperature the next step uses (the learned one with ``learn_temperature``), as a float."""
        t = self.objective.effective_temperature()
        return float(t.detach()) if isinstance(t, Tensor) else float(t)

    @temperature.setter
    def temperature(self, value: float) -> None:
        check_hyperparameters(temperature=value, beta=self.beta, tau_plus=self.tau_plus, estimator=self.estimator,
                              clamp=True, normalize=True, reduction="mean")
        if self.objective.logit_scale is not None:
            with torch.no_grad():
                self.objective.logit_scale.fill_(math.log(1.0 / float(value)))
        self.objective.temperature = value

    @property
    def scale(self) -> float:
        """MNRL's name for 1 / temperature."""
        return 1.0 / self.temperature

    # -- the loss -----------------------------------------------------------------------------------------
    def forward(self, sentence_features: Iterable[dict], labels: Optional[Tensor] = None) -> Tensor:
        """The loss of a batch: ``sentence_features`` holds one tokenised dict per input column."""
        sentence_features = list(sentence_features)
        if len(sentence_features) < 2:
            raise ValueError(f"Expected at least 2 inputs (anchor, positive), got {len(sentence_features)}")
        embeddings = embed_columns(self.model, sentence_features)
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: List[Tensor], labels: Optional[Tensor] = None) -> Tensor:
        """The loss from the columns' embeddings: ``[anchor (B, d), positive (B, d), negative_1 (B, d), ...]``.

        ``labels`` is unused (the positive of anchor i is positive[i]), as in MNRL.
        """
        return self._loss(embeddings, self.objective.effective_temperature())

    def _loss(self, embeddings: List[Tensor], temperature: Union[float, Tensor]) -> Tensor:
        embeddings = list(embeddings)
        if len(embeddings) < 2:
            raise ValueError(f"Expected at least 2 embeddings (anchor, positive), got {len(embeddings)}")
        anchors, positives = embeddings[0], embeddings[1]
        # All negative columns form one bank shared by every anchor (MNRL's candidate set).
        negatives = torch.cat(embeddings[2:]) if len(embeddings) > 2 else None
        gather = _gathering(self.gather_across_devices)
        if gather and negatives is not None:
            # hcl_loss(gather=True) gathers anchors and positives; the bank is gathered here, with gradient, so
            # that every rank's negatives are candidates of every anchor (as MNRL gathers all its documents).
            negatives = all_gather_with_grad(negatives)
        if gather and isinstance(temperature, Tensor) and temperature.requires_grad:
            temperature = _MeanGradOverRanks.apply(temperature)
        if not gather and negatives is None and anchors.dim() == 2 and anchors.shape[0] == 1:
            # One pair and nothing else has no negative (hcl_loss refuses it); MNRL's value there is
            # -log(e^a / e^a) = 0. Return that zero connected to both columns, so that gradient caching
            # finds a (zero) gradient for each.
            return (anchors.sum() + positives.sum()) * 0.0
        o = self.objective
        return hcl_loss(anchors, positives, temperature=temperature, beta=o.beta, tau_plus=o.tau_plus,
                        estimator=o.estimator, negatives=negatives, layout="cross", symmetric=o.symmetric,
                        gather=gather)

    # -- sentence-transformers conventions ----------------------------------------------------------------
    def get_config_dict(self) -> dict[str, Any]:
        """The hyper-parameters, for the model card (``temperature`` is the current, possibly learned, one)."""
        return {
            "temperature": self.temperature,
            "beta": self.beta,
            "tau_plus": self.tau_plus,
            "estimator": self.estimator,
            "symmetric": self.symmetric,
            "learn_temperature": self.learn_temperature,
            "gather_across_devices": self.gather_across_devices,
        }

    @property
    def citation(self) -> str:
        return _HCL_CITATION


def _temperature_backward_hook(grad_output: Tensor, loss_obj: "CachedHardNegativeRankingLoss", grad: Tensor):
    """Back-propagate the cached d loss / d t into ``logit_scale``, scaled like the embeddings' gradients.

    ``grad_output`` is what the outer backward hands the loss (the gradient-accumulation division, the fp16
    scaler), so the temperature's gradient is scaled exactly as sentence-transformers' hook scales the
    replayed embeddings'.
    """
    with torch.enable_grad():
        t = loss_obj.loss.objective.effective_temperature()
        (t * (grad.to(t.dtype) * grad_output.detach().to(t.dtype))).backward()


class CachedHardNegativeRankingLoss(CachedLossMixin, nn.Module):
    r""":class:`HardNegativeRankingLoss` with gradient caching (GradCache), for very large batches.

    Three steps, as sentence-transformers' ``CachedMultipleNegativesRankingLoss``: (1) embed every column in
    mini-batches of ``mini_batch_size`` without an autograd graph, keeping each mini-batch's RNG state;
    (2) compute the loss on the whole batch and back-propagate it to the embeddings only, caching
    d loss / d embeddings; (3) in the backward pass, re-embed each mini-batch with a graph (replaying its RNG
    state, so dropout draws the same masks) and back-propagate the cached gradient into the model. Only one
    mini-batch of encoder activations is alive at a time, and step (2) is :func:`hardneg_torch.hcl_loss`,
    whose memory is linear in the batch: the whole step needs O(B d) memory besides one mini-batch.
    Value and gradients equal the uncached loss's (up to float rounding); the price is a second forward pass
    of the encoder.

    Parameters
    ----------
    model : SentenceTransformer
        The model whose ``sentence_embedding`` outputs are trained; not a ``StaticEmbedding`` model.
    temperature : float, default 0.05
        t > 0, as :class:`HardNegativeRankingLoss` (the hyper-parameters live on the wrapped loss,
        ``self.loss``; setting them here sets them there).
    beta : float, default 1.0
        Hardness, >= 0, as :class:`HardNegativeRankingLoss`.
    tau_plus : float, default 0.1
        Class prior of false negatives, 0 <= tau_plus < 1, as :class:`HardNegativeRankingLoss`.
    estimator : {"hard", "easy"}, default "hard"
        "easy" is InfoNCE / MNRL, as :class:`HardNegativeRankingLoss`.
    symmetric : bool, default False
        Also rank the anchors for each positive, as :class:`HardNegativeRankingLoss`.
    learn_temperature : bool, default False
        Learn t as ``exp(-logit_scale)``; its cached gradient is applied in the backward pass, scaled by the
        outer gradient (gradient accumulation, the fp16 scaler) like the embeddings'.
    gather_across_devices : bool, default False
        Use every rank's positives and negatives as candidates, as :class:`HardNegativeRankingLoss`.
    mini_batch_size : int, default 32
        Rows embedded at a time; memory grows with it, speed too (up to the device's saturation).
    mini_batch_num_tokens : int, optional
        Pack the mini-batches by token count instead (sentence-transformers' option of the same name).
    show_progress_bar : bool, default False
        Show a progress bar over the mini-batches.

    Raises
    ------
    ValueError
        A model whose input module is a ``StaticEmbedding`` (its inputs cannot be split into mini-batches;
        use :class:`HardNegativeRankingLoss`), a bad ``mini_batch_size`` / ``mini_batch_num_tokens``, and the
        errors of :class:`HardNegativeRankingLoss`. ``NotImplementedError`` for ``learn_temperature=True``
        under ``MatryoshkaLoss``, which rewraps ``calculate_loss`` with per-dimension weights that the cached
        temperature gradient would miss.

    References
    ----------
    Gao, Zhang, Han, Callan. Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup. RepL4NLP
    2021 (GradCache).
    """

    def __init__(
        self,
        model: nn.Module,
        temperature: float = 0.05,
        beta: float = 1.0,
        tau_plus: float = 0.1,
        estimator: str = "hard",
        symmetric: bool = False,
        learn_temperature: bool = False,
        gather_across_devices: bool = False,
        mini_batch_size: int = 32,
        mini_batch_num_tokens: Optional[int] = None,
        show_progress_bar: bool = False,
    ) -> None:
        super().__init__()
        if has_static_embedding_input(model):
            raise ValueError(
                "CachedHardNegativeRankingLoss is not compatible with a SentenceTransformer model based on a "
                "StaticEmbedding, whose inputs cannot be split into mini-batches along a batch dimension; use "
                "HardNegativeRankingLoss instead (a StaticEmbedding model needs no gradient caching)"
            )
        for name, value, optional in (("mini_batch_size", mini_batch_size, False),
                                      ("mini_batch_num_tokens", mini_batch_num_tokens, True)):
            if optional and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer{' or None' if optional else ''}; got {value!r}")
        _check_bool("show_progress_bar", show_progress_bar)
        self.model = model
        self.loss = HardNegativeRankingLoss(model, temperature=temperature, beta=beta, tau_plus=tau_plus,
                                            estimator=estimator, symmetric=symmetric,
                                            learn_temperature=learn_temperature,
                                            gather_across_devices=gather_across_devices)
        self.mini_batch_size = mini_batch_size
        self.mini_batch_num_tokens = mini_batch_num_tokens
        self.show_progress_bar = show_progress_bar
        self._temperature_grads: List[Tensor] = []

    # -- hyper-parameters, delegated to the wrapped loss --------------------------------------------------
    beta = _delegate("loss", "beta")
    tau_plus = _delegate("loss", "tau_plus")
    estimator = _delegate("loss", "estimator")
    symmetric = _delegate("loss", "symmetric")
    temperature = _delegate("loss", "temperature")
    gather_across_devices = _delegate("loss", "gather_across_devices")
    learn_temperature = _delegate("loss", "learn_temperature", settable=False)

    @property
    def scale(self) -> float:
        """MNRL's name for 1 / temperature."""
        return self.loss.scale

    # -- GradCache ----------------------------------------------------------------------------------------
    def calculate_loss(self, reps: List[List[Tensor]], labels: Optional[Tensor] = None, *,
                       with_backward: bool = False) -> Tensor:
        """The loss of the whole batch from the cached mini-batch embeddings (``reps[column][mini_batch]``).

        Computed in one call (hcl_loss is memory-linear: no need to chunk the B x B scores as CachedMNRL
        does). With ``with_backward``, back-propagate to the embeddings and return the detached value; a
        learnable temperature's gradient is cached too and applied by the backward hook (scaled by the
        outer gradient), not accumulated here.
        """
        embeddings = [torch.cat(column) for column in reps]
        temperature = self.loss.objective.effective_temperature()
        leaf = None
        if with_backward and isinstance(temperature, Tensor) and temperature.requires_grad:
            leaf = temperature = temperature.detach().requires_grad_()
        loss = self.loss._loss(embeddings, temperature)
        if with_backward:
            loss.backward()
            loss = loss.detach()
            if leaf is not None and leaf.grad is not None:
                self._temperature_grads.append(leaf.grad)
        return loss

    def forward(self, sentence_features: Iterable[dict], labels: Optional[Tensor] = None) -> Tensor:
        sentence_features = list(sentence_features)
        if len(sentence_features) < 2:
            raise ValueError(f"Expected at least 2 inputs (anchor, positive), got {len(sentence_features)}")
        if self.learn_temperature and torch.is_grad_enabled() and "calculate_loss" in vars(self):
            raise NotImplementedError(
                "learn_temperature=True is not supported when calculate_loss is wrapped (MatryoshkaLoss): the "
                "cached temperature gradient would miss the wrapper's weights; use a fixed temperature there"
            )
        self._temperature_grads = []
        loss = self.forward_cached(sentence_features, labels)
        grads, self._temperature_grads = self._temperature_grads, []
        if grads and loss.requires_grad:
            loss.register_hook(partial(_temperature_backward_hook, loss_obj=self, grad=sum(grads)))
        return loss

    def get_config_dict(self) -> dict[str, Any]:
        return {
            **self.loss.get_config_dict(),
            "mini_batch_size": self.mini_batch_size,
            "mini_batch_num_tokens": self.mini_batch_num_tokens,
        }

    @property
    def citation(self) -> str:
        return _HCL_CITATION + _GRADCACHE_CITATION
