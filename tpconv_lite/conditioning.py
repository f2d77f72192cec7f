"""Per-residue and per-pair features of a chain from its sequence, in place of EigenFold's OmegaFold embeddings.

EigenFold conditions its score model on OmegaFold's embeddings of the sequence (``lm_node_dim = 256`` per
residue, ``lm_edge_dim = 128`` per pair). This book cannot run OmegaFold, so it gives the model what the
sequence says directly, at their natural sizes (no padding):

- node features (n, ``LM_NODE_DIM`` = 24): columns 0-20 one-hot residue type in the order of
  ``RESIDUE_TYPES`` (the 20 amino acids by one-letter code, then ``X`` for any other), columns 21-23 one-hot
  secondary structure in the order of ``SECONDARY_STRUCTURES`` (``H`` helix, ``E`` strand, ``-`` other); all
  three are 0 when no secondary structure is given;
- pair features (n, n, ``LM_EDGE_DIM`` = 65): ``pair[i, j]`` is the one-hot of the sequence separation
  ``j - i`` clipped to ``[-32, 32]`` (column ``j - i + 32``), as AlphaFold's relative positions.

A :class:`~tpconv_lite.score_model.ScoreModelConfig` with ``lm_node_dim=LM_NODE_DIM`` and
``lm_edge_dim=LM_EDGE_DIM`` reads them through :meth:`~tpconv_lite.score_model.ChainBatch.from_chains`.
"""

from __future__ import annotations

import torch
from torch import Tensor

RESIDUE_TYPES = "ACDEFGHIKLMNPQRSTVWYX"  # 20 amino acids, then X (unknown or non-standard)
SECONDARY_STRUCTURES = "HE-"  # helix, strand, anything else
MAX_SEPARATION = 32  # sequence separations are clipped to [-MAX_SEPARATION, MAX_SEPARATION]
LM_NODE_DIM = len(RESIDUE_TYPES) + len(SECONDARY_STRUCTURES)
LM_EDGE_DIM = 2 * MAX_SEPARATION + 1


def _one_hot(text: str, alphabet: str, what: str, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    """(len(text), len(alphabet)) one-hot rows; ValueError naming the letters not in ``alphabet``."""
    unknown = sorted(set(text) - set(alphabet))
    if unknown:
        raise ValueError(f"{what} has letters {unknown} outside the alphabet {alphabet!r}")
    index = torch.tensor([alphabet.index(letter) for letter in text], dtype=torch.long, device=device)
    return torch.nn.functional.one_hot(index, len(alphabet)).to(dtype)


def node_features(
    sequence: str,
    ss: str | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """One-hot residue type and secondary structure of each residue.

    Args:
        sequence: one-letter codes from ``RESIDUE_TYPES`` (upper case), at least one.
        ss: one letter from ``SECONDARY_STRUCTURES`` per residue, or ``None`` (those columns stay 0).

    Returns:
        (n, LM_NODE_DIM) features.

    Example:
        >>> node_features("GA", "H-")[:, [5, 0, 21, 23]]  # G, A, helix, other
        tensor([[1., 0., 1., 0.],
                [0., 1., 0., 1.]])
    """
    if not isinstance(sequence, str) or len(sequence) == 0:
        raise ValueError(f"sequence must be a non-empty string, got {sequence!r}")
    residues = _one_hot(sequence, RESIDUE_TYPES, "sequence", dtype, device)
    if ss is None:
        structure = torch.zeros(len(sequence), len(SECONDARY_STRUCTURES), dtype=dtype, device=device)
    elif not isinstance(ss, str) or len(ss) != len(sequence):
        length = len(ss) if isinstance(ss, str) else type(ss).__name__
        raise ValueError(f"ss must be a string as long as the sequence ({len(sequence)}), got {length}")
    else:
        structure = _one_hot(ss, SECONDARY_STRUCTURES, "ss", dtype, device)
    return torch.cat([residues, structure], dim=1)


def pair_features(
    n: int,
    *,
    max_separation: int = MAX_SEPARATION,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """One-hot of the clipped sequence separation ``j - i`` of every pair of a chain of ``n`` residues.

    Returns:
        (n, n, 2 max_separation + 1) features; ``pair[i, j, clip(j - i) + max_separation] = 1``.

    Example:
        >>> pair = pair_features(4, max_separation=1)
        >>> pair.argmax(dim=-1)  # 0: j before i, 1: j = i, 2: j after i
        tensor([[1, 2, 2, 2],
                [0, 1, 2, 2],
                [0, 0, 1, 2],
                [0, 0, 0, 1]])
    """
    for name, value, minimum in (("n", n, 1), ("max_separation", max_separation, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    k = torch.arange(n, device=device)
    separation = (k[None, :] - k[:, None]).clamp(-max_separation, max_separation) + max_separation
    return torch.nn.functional.one_hot(separation, 2 * max_separation + 1).to(dtype)


def chain_conditioning(
    sequence: str,
    ss: str | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """The node features (n, LM_NODE_DIM) and pair features (n, n, LM_EDGE_DIM) of one chain.

    Example:
        >>> node, pair = chain_conditioning("MKV", "-EE")
        >>> node.shape, pair.shape
        (torch.Size([3, 24]), torch.Size([3, 3, 65]))
    """
    node = node_features(sequence, ss, dtype=dtype, device=device)
    return node, pair_features(len(sequence), dtype=dtype, device=device)
