r"""InfoGraph (Sun et al., ICLR 2020) in plain PyTorch: a GIN encoder and the two projection heads.

The structure follows the released InfoGraph / HCL graph code (``graph/gin.py``, ``graph/deepinfomax.py``),
written here without PyTorch Geometric:

- **GIN layer** (Xu et al. 2019, ε = 0): :math:`h' = \mathrm{BN}(\mathrm{ReLU}(\mathrm{MLP}(h + \sum_{u\in
  N(v)} h_u)))` with MLP = Linear → ReLU → Linear; 3 layers of width 32.
- **Node features**: a constant 1 per node (the TU graphs without attributes get no more), so everything the
  encoder knows comes from the structure.
- **Embeddings**: local = the concatenation of the 3 layers' node outputs (N, 96); graph = the concatenation
  of each layer's sum-pooled output (G, 96). The graph embedding is what the evaluation classifies (frozen,
  in eval mode: BatchNorm uses its running statistics).
- **Heads** (``local_d``, ``global_d``; what the loss sees): 3 × (Linear → ReLU) plus a linear shortcut,
  96 → 96, applied to the local and to the graph embeddings.
- **Initialisation**: every Linear Xavier-uniform with zero bias (InfoGraph's ``init_emb``), BatchNorm
  γ = 1, β = 0, drawn from a ``torch.Generator`` seeded with the training seed.

The loss is ``hardneg_torch.jsd_loss(local_d(l), global_d(g), batch, ...)``: InfoGraph's local–global
Jensen–Shannon estimator and its hard-negative versions (docs/graphs.md).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

__all__ = ["GIN", "InfoGraph", "build_model", "HIDDEN", "LAYERS"]

HIDDEN = 32
LAYERS = 3


class GINLayer(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(), nn.Linear(d_out, d_out))
        self.bn = nn.BatchNorm1d(d_out)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        # sum over in-neighbours (edge_index holds both directions of every undirected edge)
        agg = torch.zeros_like(x).index_add_(0, edge_index[1], x[edge_index[0]])
        return self.bn(torch.relu(self.mlp(x + agg)))


class GIN(nn.Module):
    """The encoder: ``forward(edge_index, batch, num_nodes, num_graphs) -> (graph (G, 96), local (N, 96))``."""

    def __init__(self, hidden: int = HIDDEN, layers: int = LAYERS):
        super().__init__()
        dims = [1] + [hidden] * layers
        self.layers = nn.ModuleList(GINLayer(a, b) for a, b in zip(dims, dims[1:]))

    def forward(self, edge_index, batch, num_nodes: int, num_graphs: int) -> Tuple[torch.Tensor, torch.Tensor]:
        dtype = self.layers[0].mlp[0].weight.dtype
        x = torch.ones(num_nodes, 1, dtype=dtype)
        hs = []
        for layer in self.layers:
            x = layer(x, edge_index)
            hs.append(x)
        local = torch.cat(hs, dim=1)
        graph = torch.zeros(num_graphs, local.shape[1], dtype=dtype).index_add_(0, batch, local)  # add pooling
        return graph, local


class FF(nn.Module):
    """InfoGraph's projection head: 3 × (Linear → ReLU) plus a linear shortcut."""

    def __init__(self, d: int):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU())
        self.shortcut = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + self.shortcut(x)


class InfoGraph(nn.Module):
    """Encoder plus heads: ``forward(...) -> (local (N, 96), graph (G, 96))``, the two inputs of ``jsd_loss``."""

    def __init__(self, hidden: int = HIDDEN, layers: int = LAYERS):
        super().__init__()
        self.encoder = GIN(hidden, layers)
        d = hidden * layers
        self.local_d = FF(d)
        self.global_d = FF(d)

    def forward(self, edge_index, batch, num_nodes: int, num_graphs: int) -> Tuple[torch.Tensor, torch.Tensor]:
        graph, local = self.encoder(edge_index, batch, num_nodes, num_graphs)
        return self.local_d(local), self.global_d(graph)


def build_model(seed: int, dtype: torch.dtype = torch.float32) -> InfoGraph:
    """A freshly initialised InfoGraph model; the same ``seed`` gives the same weights (in any dtype: they are
    drawn in float32 and then cast)."""
    gen = torch.Generator().manual_seed(int(seed))
    model = InfoGraph()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, generator=gen)
                m.bias.zero_()
    return model.to(dtype)
