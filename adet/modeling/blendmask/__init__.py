from .basis_module import BASIS_MODULE_REGISTRY, ProtoNet, build_basis_module
from .blender import Blender, blend
from .blendmask import BlendMask

__all__ = ["BASIS_MODULE_REGISTRY", "ProtoNet", "build_basis_module", "Blender", "blend", "BlendMask"]
