"""nasbnn-hw: hardware-aware neural architecture search for binary neural networks."""
from nasbnn_hw.core.arch import Arch, Block, validate
from nasbnn_hw.errors import ArchError, CheckpointError, NasBnnError, SpaceError
from nasbnn_hw.core.layers import LayerConfig, OpsCount, arch_layers, count_ops
from nasbnn_hw.core.sampling import largest, sample_in_range, sample_uniform, smallest
from nasbnn_hw.core.space import SearchSpace, StageSpec, get_space, load_space

__version__ = "0.1.0"

__all__ = ["Arch", "Block", "validate", "ArchError", "CheckpointError", "NasBnnError", "SpaceError",
           "LayerConfig", "OpsCount", "arch_layers", "count_ops", "largest", "smallest", "sample_uniform",
           "sample_in_range", "SearchSpace", "StageSpec", "get_space", "load_space", "__version__"]
