"""Tests of tpconv_lite.conditioning: layout of the features, validation, and their fit to the score model."""

import pytest
import torch

from tpconv_lite.conditioning import (
    LM_EDGE_DIM,
    LM_NODE_DIM,
    MAX_SEPARATION,
    RESIDUE_TYPES,
    SECONDARY_STRUCTURES,
    chain_conditioning,
    node_features,
    pair_features,
)
from tpconv_lite.score_model import ChainBatch, ResiLevelTensorProductScoreModel, ScoreModelConfig


def test_dims_are_the_natural_sizes():
    assert (LM_NODE_DIM, LM_EDGE_DIM) == (21 + 3, 2 * 32 + 1)
    assert len(set(RESIDUE_TYPES)) == 21 and SECONDARY_STRUCTURES == "HE-"


def test_node_features_layout():
    node = node_features("ACX", "HE-", dtype=torch.float64)
    assert node.shape == (3, LM_NODE_DIM) and node.dtype == torch.float64
    assert node.sum(dim=1).tolist() == [2.0, 2.0, 2.0]
    assert node[:, :21].argmax(dim=1).tolist() == [0, 1, 20]
    assert node[:, 21:].argmax(dim=1).tolist() == [0, 1, 2]
    unknown_ss = node_features("AC")
    assert unknown_ss[:, 21:].abs().sum() == 0 and unknown_ss[:, :21].sum() == 2


def test_pair_features_are_the_clipped_signed_separation():
    n = 80
    pair = pair_features(n)
    assert pair.shape == (n, n, LM_EDGE_DIM) and (pair.sum(dim=-1) == 1).all()
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    expected = (j - i).clamp(-MAX_SEPARATION, MAX_SEPARATION) + MAX_SEPARATION
    assert torch.equal(pair.argmax(dim=-1), expected)
    # the two directions of a pair differ, so an edge j -> i knows which residue comes first
    assert not torch.equal(pair[0, 1], pair[1, 0])


def test_a_score_model_with_these_dims_reads_them():
    config = ScoreModelConfig(resi_conv_layers=1, resi_ns=4, lm_node_dim=LM_NODE_DIM, lm_edge_dim=LM_EDGE_DIM)
    model = ResiLevelTensorProductScoreModel(config)
    node, pair = chain_conditioning("MKTAYIAK", "-HHHHHH-")
    data = ChainBatch.from_chains([torch.randn(8, 3)], [node], [pair], torch.tensor([1.0]), torch.tensor([1.0]))
    assert model(data).shape == (8, 3)


def test_bad_input_names_what_is_wrong():
    with pytest.raises(ValueError, match=r"\['B', 'Z'\]"):
        node_features("AZB")
    with pytest.raises(ValueError, match=r"ss has letters \['G'\]"):
        node_features("AAA", "HGH")
    with pytest.raises(ValueError, match="as long as the sequence \\(3\\), got 2"):
        node_features("AAA", "HH")
    with pytest.raises(ValueError, match="lower|outside"):
        node_features("acd")
    with pytest.raises(ValueError, match="non-empty"):
        node_features("")
    with pytest.raises(ValueError, match="n must be"):
        pair_features(0)
