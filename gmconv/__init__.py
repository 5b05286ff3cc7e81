"""GMConv: convolution kernels under a learned concentric Gaussian mask (Chen et al., arXiv 2302.04544).

The reusable layer of this project; it depends on torch alone.

    from gmconv import GMConv2d, GMConvOptions, convert_to_gmconv, fold_gmconv, sigma_parameters, sigma_stats
    from gmconv import reparameterize  # fold, then timm's re-parameterisation (RepVGG, MobileOne, ...)
    from gmconv import erf_map, erf_stats  # effective receptive fields, to measure what σ does
    from gmconv import reuse_masked_weights  # evaluate unfolded: each masked weight computed once
"""

from .conv import GMConv2d
from .convert import ConversionReport, convert_to_gmconv, enlarge_kernel, gmconv_from_conv, replace_convs
from .dynamic import DynamicGMConv2d
from .erf import erf_map, erf_stats
from .fold import fold_gmconv, fold_layer
from .options import GMConvOptions
from .params import sigma_parameters
from .reparam import reparameterize
from .reuse import reuse_masked_weights
from .stats import sigma_stats, sigma_without_gradient

__all__ = [
    "ConversionReport",
    "DynamicGMConv2d",
    "GMConv2d",
    "GMConvOptions",
    "convert_to_gmconv",
    "enlarge_kernel",
    "erf_map",
    "erf_stats",
    "fold_gmconv",
    "fold_layer",
    "gmconv_from_conv",
    "reparameterize",
    "replace_convs",
    "reuse_masked_weights",
    "sigma_parameters",
    "sigma_stats",
    "sigma_without_gradient",
]
