"""SparseInst: instance context encoder, IAM decoder, Hungarian matcher and criterion."""
from .criterion import SPARSE_INST_CRITERION_REGISTRY, SparseInstCriterion, build_sparse_inst_criterion
from .decoder import (
    SPARSE_INST_DECODER_REGISTRY,
    BaseIAMDecoder,
    GroupIAMDecoder,
    GroupIAMSoftDecoder,
    build_sparse_inst_decoder,
)
from .encoder import SPARSE_INST_ENCODER_REGISTRY, InstanceContextEncoder, build_sparse_inst_encoder
from .matcher import SPARSE_INST_MATCHER_REGISTRY, SparseInstMatcher, build_sparse_inst_matcher
from .sparseinst import SparseInst

__all__ = [
    "SparseInst", "InstanceContextEncoder", "BaseIAMDecoder", "GroupIAMDecoder", "GroupIAMSoftDecoder",
    "SparseInstMatcher", "SparseInstCriterion", "build_sparse_inst_encoder", "build_sparse_inst_decoder",
    "build_sparse_inst_matcher", "build_sparse_inst_criterion", "SPARSE_INST_ENCODER_REGISTRY",
    "SPARSE_INST_DECODER_REGISTRY", "SPARSE_INST_MATCHER_REGISTRY", "SPARSE_INST_CRITERION_REGISTRY",
]
