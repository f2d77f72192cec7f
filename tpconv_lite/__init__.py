"""tpconv_lite: the code of the tpconv-lite book, from a benzene convolution to a diffusion score model.

Only public names are re-exported here; each lives in a module that holds one idea.
"""

from tpconv_lite.attention import EquivariantAttention
from tpconv_lite.conditioning import LM_EDGE_DIM, LM_NODE_DIM, chain_conditioning
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
from tpconv_lite.harmonic import (
    EntropySchedule,
    ForwardDiffusionKernel,
    HarmonicConfig,
    HarmonicDiffusion,
    HarmonicSDE,
    PolymerSDE,
    RateSchedule,
    harmonic_loss,
)
from tpconv_lite.irreps import irreps_to_rs, rs_to_irreps
from tpconv_lite.metrics import (
    ca_ca_distances,
    clash_fraction,
    compare_structures,
    kabsch_rmsd,
    radius_of_gyration,
    structure_measures,
    tm_score,
    virtual_angles,
)
from tpconv_lite.proteins import Chain, build_dataset, load_chain, load_dataset, write_pdb
from tpconv_lite.radial import GaussianSmearing, RadialMLP, cosine_basis
from tpconv_lite.score_model import ChainBatch, ResidueGraph, ResiLevelTensorProductScoreModel, ScoreModelConfig
from tpconv_lite.rotations import random_o3
from tpconv_lite.testing import EquivarianceReport, assert_equivariant, check_equivariance

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "assert_equivariant",
    "benzene",
    "build_dataset",
    "ca_ca_distances",
    "ca_dihedrals",
    "Chain",
    "chain_conditioning",
    "ChainBatch",
    "check_equivariance",
    "clash_fraction",
    "compare_structures",
    "cosine_basis",
    "e3x_irreps",
    "e3x_to_irreps",
    "edge_geometry",
    "edge_softmax",
    "EntropySchedule",
    "EquivarianceReport",
    "EquivariantAttention",
    "ForwardDiffusionKernel",
    "FusedTensorProduct",
    "GaussianFourierProjection",
    "GaussianSmearing",
    "get_timestep_embedding",
    "handedness",
    "harmonic_loss",
    "HarmonicConfig",
    "HarmonicDiffusion",
    "HarmonicSDE",
    "ideal_helix",
    "irreps_to_e3x",
    "irreps_to_rs",
    "kabsch_rmsd",
    "knn_graph",
    "LM_EDGE_DIM",
    "LM_NODE_DIM",
    "load_chain",
    "load_dataset",
    "Molecule",
    "PointConvolution",
    "PolymerSDE",
    "RadialMLP",
    "radius_graph",
    "radius_of_gyration",
    "random_o3",
    "RateSchedule",
    "ResidueGraph",
    "ResiLevelTensorProductScoreModel",
    "rs_to_irreps",
    "sample_chains",
    "scatter",
    "score_matching_loss",
    "ScoreModelConfig",
    "sinusoidal_embedding",
    "structure_measures",
    "TensorProductConvLayer",
    "tm_score",
    "toy_chains",
    "train_score_model",
    "VESDE",
    "virtual_angles",
    "write_pdb",
]
