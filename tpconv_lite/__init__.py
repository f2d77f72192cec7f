"""tpconv_lite: the code of the tpconv-lite book, from a benzene convolution to a diffusion score model.

Only public names are re-exported here; each lives in a module that holds one idea.
"""

from tpconv_lite.attention import EquivariantAttention
from tpconv_lite.conv_layer import TensorProductConvLayer
from tpconv_lite.convolution import PointConvolution
from tpconv_lite.data import Molecule, benzene
from tpconv_lite.diffusion import (
    VESDE,
    ca_dihedrals,
    handedness,
    ideal_helix,
    sample_chains,
    score_matching_loss,
    toy_chains,
    train_score_model,
)
from tpconv_lite.embeddings import GaussianFourierProjection, get_timestep_embedding, sinusoidal_embedding
from tpconv_lite.fused import FusedTensorProduct, e3x_irreps, e3x_to_irreps, irreps_to_e3x
from tpconv_lite.graph import edge_geometry, edge_softmax, knn_graph, radius_graph, scatter
from tpconv_lite.irreps import irreps_to_rs, rs_to_irreps
from tpconv_lite.radial import GaussianSmearing, RadialMLP, cosine_basis
from tpconv_lite.score_model import ChainBatch, ResidueGraph, ResiLevelTensorProductScoreModel, ScoreModelConfig
from tpconv_lite.rotations import random_o3
from tpconv_lite.testing import EquivarianceReport, assert_equivariant, check_equivariance

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "assert_equivariant",
    "benzene",
    "ca_dihedrals",
    "ChainBatch",
    "check_equivariance",
    "cosine_basis",
    "e3x_irreps",
    "e3x_to_irreps",
    "edge_geometry",
    "edge_softmax",
    "EquivarianceReport",
    "EquivariantAttention",
    "FusedTensorProduct",
    "GaussianFourierProjection",
    "GaussianSmearing",
    "get_timestep_embedding",
    "handedness",
    "ideal_helix",
    "irreps_to_e3x",
    "irreps_to_rs",
    "knn_graph",
    "Molecule",
    "PointConvolution",
    "RadialMLP",
    "radius_graph",
    "random_o3",
    "ResidueGraph",
    "ResiLevelTensorProductScoreModel",
    "rs_to_irreps",
    "sample_chains",
    "scatter",
    "score_matching_loss",
    "ScoreModelConfig",
    "sinusoidal_embedding",
    "TensorProductConvLayer",
    "toy_chains",
    "train_score_model",
    "VESDE",
]
