"""Differentiable MRI physics on torch complex tensors: FFT, masks, SENSE, CG and coil maps.

Everything here follows fastMRI's conventions (centred orthonormal FFT over the
last two dims, column masks on ``W``) and works on CPU and CUDA.
"""

from operators.cg import CGResult, conjugate_gradient
from operators.coils import (
    acs_width,
    birdcage_maps,
    coil_compression_matrix,
    compress_coils,
    espirit_noise_threshold,
    estimate_maps,
    expected_rss,
    lowres_coil_images,
    lowres_sense1,
    maps_espirit,
    maps_lowres,
    normalize_maps,
    rss,
    sense1_combine,
    virtual_coil_phase,
)
from operators.errors import OperatorInputError
from operators.fft import fft2c, ifft2c
from operators.grid import KspaceCrop, crop_kspace, fourier_resample, image_to_grid, pad_mask, zero_pad_kspace
from operators.linop import FFT2C, AdjointOperator, ComposedOperator, Diagonal, LinearOperator, check_adjoint, inner
from operators.masks import (
    MASK_TYPES,
    EquispacedMaskFractionFunc,
    EquiSpacedMaskFunc,
    MaskFunc,
    PoissonMaskFunc,
    RandomMaskFunc,
    create_mask_for_mask_type,
    make_mask,
    seed_from_filename,
)
from operators.sense import CoilSensitivities, Sense

__all__ = [
    "FFT2C",
    "KspaceCrop",
    "MASK_TYPES",
    "AdjointOperator",
    "CGResult",
    "CoilSensitivities",
    "ComposedOperator",
    "Diagonal",
    "EquiSpacedMaskFunc",
    "EquispacedMaskFractionFunc",
    "LinearOperator",
    "MaskFunc",
    "OperatorInputError",
    "PoissonMaskFunc",
    "RandomMaskFunc",
    "Sense",
    "acs_width",
    "birdcage_maps",
    "check_adjoint",
    "coil_compression_matrix",
    "compress_coils",
    "conjugate_gradient",
    "create_mask_for_mask_type",
    "crop_kspace",
    "espirit_noise_threshold",
    "estimate_maps",
    "expected_rss",
    "fft2c",
    "fourier_resample",
    "ifft2c",
    "image_to_grid",
    "inner",
    "lowres_coil_images",
    "lowres_sense1",
    "make_mask",
    "maps_espirit",
    "maps_lowres",
    "normalize_maps",
    "pad_mask",
    "rss",
    "seed_from_filename",
    "sense1_combine",
    "virtual_coil_phase",
    "zero_pad_kspace",
]
