"""Test-time adaptation of a score prior to the volume being reconstructed (``reconstruct --adapt``).

The prior was trained on synthetic anatomy; a real volume is off its distribution.  Adaptation
fine-tunes a small part of the denoiser on the volume itself, self-supervised, before the final
reconstruction:

1. a **pilot** reconstruction of every slice with a smaller budget (``pilot_nfe``, K = 1) gives
   the posterior mean ``x̂`` of each slice, from the undersampled data only;
2. the GroupNorm affine parameters and the biases (``params="bias"``, ~0.5 % of the weights; or only
   the GroupNorm parameters, ``params="norm"``) are trained for ``steps`` Adam steps with the
   prior's own denoising score-matching loss (:func:`mri_score.losses.edm_loss`) on the pilot images
   (random slices, random left-right flips; on the sampling grid, resampled by the pipeline when
   ``grid_factor`` > 1, so the pixel size is the final pass's), with σ drawn from the prior's training distribution but
   kept above ``sigma_min`` (in the scaled units where the ACS image's 99th percentile is 1), so the
   network learns the volume's large-scale anatomy and contrast, not the pilot's fine-scale errors;
3. the volume is reconstructed again with the adapted network and the full settings; every
   slice keeps the pilot's calibration (maps, scale, σ_y).

The network that the caller passed is never changed (a copy is adapted).  Everything is seeded by
``settings.seed``: the same call gives the same result.  Cost: the pilot (``pilot_nfe`` /
``steps`` of the final budget per slice) plus ``steps`` training steps of ``batch`` crops; bounded by
construction, not by a clock, so that results are reproducible.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from mri_score.errors import InputError
from mri_score.losses import edm_loss, sigma_distribution
from mri_score.network import EDMDenoiser, complex_to_channels

#: Which parameters adaptation may change.
ADAPT_PARAMS = ("norm", "bias")
#: Upper bound on adaptation steps (a typo such as 10**6 would run for days).
MAX_ADAPT_STEPS = 2000


@dataclass(frozen=True)
class AdaptSettings:
    """How to adapt the prior to a volume (:func:`adapt_denoiser`).

    Attributes
    ----------
    steps : int
        Adam steps on the pilot images, in ``[1, MAX_ADAPT_STEPS]``.
    lr : float
        Adam learning rate.
    batch : int
        Images per step (random slices of the volume, with replacement).
    crop : int
        Random square crop side (pixels) of each image, ``min(crop, H, W)``; bounds the cost per step.
    sigma_min : float
        Lowest σ trained on, in the scaled units (image 99th percentile ~ 1).
    params : str
        ``bias`` (GroupNorm affine + every bias) or ``norm`` (GroupNorm affine only).
    pilot_nfe : int, optional
        NFE of the pilot reconstruction; half the final budget when None.
    """

    steps: int = 40
    lr: float = 1e-3
    batch: int = 4
    crop: int = 128
    sigma_min: float = 0.1
    params: str = "bias"
    pilot_nfe: int | None = None

    @classmethod
    def from_options(cls, **options: object) -> AdaptSettings:
        """Settings from optional values (e.g. command-line flags): a None keeps the default."""
        return cls(**{k: v for k, v in options.items() if v is not None})

    def __post_init__(self) -> None:
        if not 1 <= int(self.steps) <= MAX_ADAPT_STEPS:
            raise InputError(f"adaptation steps must be in [1, {MAX_ADAPT_STEPS}], got {self.steps}")
        if not 0 < float(self.lr) <= 1.0:
            raise InputError(f"adaptation learning rate must be in (0, 1], got {self.lr}")
        if not 1 <= int(self.batch) <= 64:
            raise InputError(f"adaptation batch must be in [1, 64], got {self.batch}")
        if int(self.crop) < 16:
            raise InputError(f"adaptation crop must be >= 16 pixels, got {self.crop}")
        if not 0 < float(self.sigma_min) < 80:
            raise InputError(f"adaptation sigma_min must be in (0, 80), got {self.sigma_min}")
        if self.params not in ADAPT_PARAMS:
            raise InputError(f"unknown adaptation params {self.params!r}; choose one of {', '.join(ADAPT_PARAMS)}")
        if self.pilot_nfe is not None and int(self.pilot_nfe) < 1:
            raise InputError(f"pilot NFE must be >= 1, got {self.pilot_nfe}")


def adaptable_parameters(model: torch.nn.Module, params: str) -> list[torch.nn.Parameter]:
    """The parameters ``params`` names (:data:`ADAPT_PARAMS`): GroupNorm affine, plus every bias for ``bias``."""
    if params not in ADAPT_PARAMS:
        raise InputError(f"unknown adaptation params {params!r}; choose one of {', '.join(ADAPT_PARAMS)}")
    chosen: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.GroupNorm) and module.affine:
            chosen[id(module.weight)] = module.weight
            chosen[id(module.bias)] = module.bias
        elif params == "bias" and getattr(module, "bias", None) is not None and isinstance(module.bias, torch.nn.Parameter):
            chosen[id(module.bias)] = module.bias
    return list(chosen.values())


def _sigma_distribution(model: EDMDenoiser) -> tuple[float, float]:
    """``(p_mean, p_std)`` of ln σ the prior was trained with (its metadata), EDM's otherwise."""
    sigma = ((getattr(model, "meta", None) or {}).get("config") or {}).get("sigma")
    try:
        return sigma_distribution(sigma)
    except (AttributeError, TypeError, ValueError):
        return sigma_distribution(None)


def adapt_denoiser(model: EDMDenoiser, images: torch.Tensor, settings: AdaptSettings, seed: int = 0) -> EDMDenoiser:
    """A copy of ``model`` fine-tuned on ``images`` by denoising score matching (see the module notes).

    Parameters
    ----------
    model : EDMDenoiser
        The prior; not modified.
    images : torch.Tensor
        complex64 ``(N, H, W)``: the pilot posterior means in the scaled units (data / scale).
    settings : AdaptSettings
    seed : int
        Seed of the slice choice, flips, crops, σ and noise.

    Returns
    -------
    EDMDenoiser
        The adapted copy, in eval mode, on ``model``'s device, with ``meta`` and an ``adapted`` record.
    """
    if images.ndim != 3 or not images.is_complex() or images.shape[0] < 1:
        raise InputError(f"adaptation needs complex images (N, H, W), got {tuple(images.shape)} {images.dtype}")
    device = next(model.parameters()).device
    adapted = copy.deepcopy(model).to(device)
    adapted.meta = getattr(model, "meta", {})
    for p in adapted.parameters():
        p.requires_grad_(False)
    params = adaptable_parameters(adapted, settings.params)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=float(settings.lr))
    gen = torch.Generator().manual_seed(int(seed))
    p_mean, p_std = _sigma_distribution(model)
    data = complex_to_channels(images.detach().to(torch.complex64)).float()
    n, _, h, w = data.shape
    side_h, side_w = min(int(settings.crop), h), min(int(settings.crop), w)
    precision = {"device_type": device.type, "dtype": torch.float32, "enabled": False}
    losses = []
    with torch.enable_grad():
        for _ in range(int(settings.steps)):
            idx = torch.randint(0, n, (int(settings.batch),), generator=gen)
            top = torch.randint(0, h - side_h + 1, (int(settings.batch),), generator=gen)
            left = torch.randint(0, w - side_w + 1, (int(settings.batch),), generator=gen)
            flip = torch.rand(int(settings.batch), generator=gen) < 0.5
            crops = []
            for i, t, lft, f in zip(idx.tolist(), top.tolist(), left.tolist(), flip.tolist()):
                c = data[i, :, t : t + side_h, lft : lft + side_w]
                crops.append(torch.flip(c, dims=(-1,)) if f else c)
            batch = torch.stack(crops).to(device)
            loss = edm_loss(adapted, batch, gen, p_mean, p_std, adapted.sigma_data, precision,
                            sigma_min=float(settings.sigma_min))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    for p in adapted.parameters():
        p.requires_grad_(False)
    adapted.adapted = {"steps": int(settings.steps), "params": settings.params, "trained": sum(p.numel() for p in params),
                       "first_loss": losses[0], "last_loss": losses[-1]}
    return adapted.eval()
