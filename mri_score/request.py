"""One reconstruction request: every setting that decides an output, validated in one place.

:class:`ReconRequest` is what the ``reconstruct`` command line builds from its flags and what
:func:`mri_score.pipeline.reconstruct_file`, :func:`mri_score.pipeline.reconstruct_volume`,
:func:`mri_score.posterior.reconstruct_slice` and every benchmark take.  It is frozen and
validated on construction; a bad value raises :class:`RequestError`, which names the field
(the command line renders it with the flag's name instead, :meth:`RequestError.render`).

Its :meth:`~ReconRequest.identity` is the single record of what determines an output: it
feeds the skip-if-done key (:func:`mri_score.runs.run_key`), the output's ``request`` attr and
the std-calibration key (:func:`mri_score.uncertainty.settings_key`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mri_score.adapt import AdaptSettings
from mri_score.errors import InputError
from mri_score.guidance import CLASSIFIER_INPUTS
from mri_score.precision import PRECISIONS
from mri_score.resolution import (
    MAX_GRID_FACTOR,
    acquisition_grid_factor,
    auto_grid_factor,
    mask_acceleration,
    prior_pixel_range,
    trajectory_grid_factor,
)
from mri_score.samplers import DEFAULT_STEPS, SAMPLERS, SamplerConfig, sampler_config
from operators.coils import MAP_PHASES, MAPS_THRESHOLD, NOISE_THRESHOLD, espirit_threshold
from operators.errors import OperatorInputError
from operators.masks import MASK_TYPES, MAX_ACCELERATION

#: Output magnitude conventions: ``sense`` (the default) is the coil-combined ``|x|``, the anatomy
#: estimate; ``rss`` estimates the fastMRI target (RSS of the noisy fully sampled coil images,
#: noise floor included), for scoring against fastMRI's noisy RSS targets.
MAGNITUDES = ("sense", "rss")
#: Coil-map estimators (:func:`operators.estimate_maps`).
MAP_ESTIMATORS = ("auto", "espirit", "lowres")
#: Phase references of estimated coil maps: ``auto`` (Cartesian data: :data:`operators.coils.DEFAULT_MAP_PHASE`;
#: radial and spiral data: ``estimator``) or one of :data:`operators.coils.MAP_PHASES`.
MAP_PHASE_CHOICES = ("auto", *MAP_PHASES)

#: The command line's flag for each field (:meth:`RequestError.render`).
FLAGS = {"sampler": "--sampler", "steps": "--steps", "samples": "--samples", "seed": "--seed",
         "options": "--sampler-opt", "maps": "--maps", "maps_phase": "--maps-phase",
         "maps_threshold": "--maps-threshold", "magnitude": "--magnitude", "precision": "--precision",
         "grid": "--grid", "accel": "--accel", "mask_type": "--mask-type", "center_fraction": "--center-fraction",
         "adapt": "--adapt", "condition": "--condition", "guidance": "--guidance", "classifier": "--classifier",
         "classifier_scale": "--classifier-scale", "classifier_input": "--classifier-input", "png": "--png",
         "exports": "--export", "virtual_coils": "--virtual-coils"}
#: Image formats a reconstruction can be exported to besides its fastMRI ``.h5`` (:mod:`mri_score.export`,
#: :mod:`mri_score.cfl`).
EXPORT_FORMATS = ("nifti", "dicom", "cfl")


class RequestError(InputError):
    """A bad request field: ``template`` with ``{0}``, ``{1}``… standing for the names of ``fields``.

    ``str(err)`` names the fields as the library knows them; :meth:`render` names them as a caller
    does (the command line: its flags, :data:`FLAGS`).
    """

    def __init__(self, fields: Sequence[str], template: str) -> None:
        self.fields = tuple(fields)
        self.template = template
        super().__init__(template.format(*self.fields))

    def render(self, names: Mapping[str, str]) -> str:
        """The message with each field replaced by ``names[field]`` (the field itself when absent)."""
        return self.template.format(*(names.get(f, f) for f in self.fields))


def _number(value: Any) -> float:
    """``value`` as a finite float, or NaN."""
    if isinstance(value, bool):
        return math.nan
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


@dataclass(frozen=True)
class ReconRequest:
    """Everything that decides a reconstruction's output, validated on construction.

    Attributes
    ----------
    sampler : str
        One of :data:`mri_score.samplers.SAMPLERS`.
    steps : int, optional
        Budget of network evaluations (NFE); the sampler's default when None (filled in).
    samples : int
        Posterior samples K per slice (mean and std), ``>= 1``.
    seed : int
        Seed of the sampler noise of slice 0; slice ``i`` uses ``seed + i``.
    options : mapping or SamplerConfig
        The sampler's options; a mapping is validated into its typed config (unknown keys refused).
    maps : str
        Coil-map estimator, one of :data:`MAP_ESTIMATORS`.
    maps_phase : str
        Phase reference of the estimated maps, one of :data:`MAP_PHASE_CHOICES` (the phase the image to
        reconstruct carries; its magnitude, the output, is the same physics either way).
    maps_threshold : float or str, optional
        ESPIRiT's relative singular-value threshold in ``(0, 1)``, or ``"noise"`` (set per slice at the calibration
        matrix's noise edge: :func:`operators.espirit_noise_threshold`; on radial and spiral data from a gridded
        noise draw, :func:`mri_score.noncartesian.calibrate_noncartesian`); None: the data kind's default
        (Cartesian :data:`operators.coils.MAPS_THRESHOLD`, trajectories :data:`operators.coils.ESPIRIT_THRESHOLD`).
    magnitude : str
        Output convention, one of :data:`MAGNITUDES`.
    precision : str
        Network arithmetic, one of :data:`mri_score.precision.PRECISIONS`.
    grid : str or float
        Sampling grid: ``"auto"`` (:meth:`for_pixels`: 2x at low acceleration or on well-covered trajectories
        on matrices up to 128², or finer by the half-integer factor that brings the pixel size into the prior's
        trained range, whichever is larger; native otherwise), ``"native"`` or a factor in
        ``[1, MAX_GRID_FACTOR]`` (a number or its text).
    accel : float, optional
        Retrospective acceleration for fully sampled inputs (a file's own mask is used when None).
    mask_type, center_fraction : str, float
        The retrospective mask (fastMRI's mask functions).
    adapt : AdaptSettings, optional
        Test-time adaptation; None: the prior as it is.
    condition : str
        Label condition: ``none``, ``auto`` or a label text (:func:`mri_score.conditioning.parse_condition`).
    guidance : float, optional
        Classifier-free guidance weight ``w >= 0`` (conditional priors).
    classifier : str, optional
        Path of a noise-conditional classifier for classifier guidance toward ``condition``.
    classifier_scale : float, optional
        Classifier-guidance scale ``s > 0`` (1 when None).
    classifier_input : str
        ``noisy`` or ``denoised`` (:data:`mri_score.guidance.CLASSIFIER_INPUTS`).
    virtual_coils : str or int
        Virtual coils the sampler works on for non-Cartesian data: the samples and the maps (estimated from every
        coil) compressed alike by density-weighted SVD (:func:`mri_score.noncartesian.coil_compression`); ``"auto"``
        (:data:`mri_score.noncartesian.NONCARTESIAN_VIRTUAL_COILS` on radial and spiral data; Cartesian data keep
        every coil), ``"all"`` (no compression) or a number ``>= 1`` (non-Cartesian data only; a file with no more
        coils keeps them all).
    png : bool
        Output option: a PNG panel per file.
    exports : tuple of str
        Output option: formats of :data:`EXPORT_FORMATS` written besides the ``.h5`` (a comma-separated text is
        accepted).
    """

    sampler: str = "dds"
    steps: int | None = None
    samples: int = 2
    seed: int = 0
    options: Mapping[str, Any] | SamplerConfig = field(default_factory=dict)
    maps: str = "auto"
    maps_phase: str = "auto"
    maps_threshold: float | str | None = None
    magnitude: str = "sense"
    precision: str = "auto"
    grid: str | float = "auto"
    accel: float | None = None
    mask_type: str = "equispaced"
    center_fraction: float = 0.08
    adapt: AdaptSettings | None = None
    condition: str = "none"
    guidance: float | None = None
    classifier: str | None = None
    classifier_scale: float | None = None
    classifier_input: str = "noisy"
    virtual_coils: str | int = "auto"
    png: bool = False
    exports: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.sampler not in SAMPLERS:
            raise RequestError(["sampler"], f"{{0}}: unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        try:
            set_(self, "options", sampler_config(self.sampler, self.options))
        except RequestError:
            raise
        except InputError as err:
            raise RequestError(["options"], "{0}: " + str(err).replace("{", "{{").replace("}", "}}")) from None
        if self.steps is None:
            set_(self, "steps", DEFAULT_STEPS[self.sampler])
        if isinstance(self.steps, bool) or not isinstance(self.steps, int):
            raise RequestError(["steps"], f"{{0}} must be an integer, got {self.steps!r}")
        try:
            self.options.nfe_used(self.steps)
        except InputError as err:
            raise RequestError(["steps"], "{0}: " + str(err).replace("{", "{{").replace("}", "}}")) from None
        for name in ("samples", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise RequestError([name], f"{{0}} must be an integer, got {value!r}")
        if self.samples < 1:
            raise RequestError(["samples"], f"{{0}} must be >= 1, got {self.samples}")
        for name, allowed in (("maps", MAP_ESTIMATORS), ("maps_phase", MAP_PHASE_CHOICES), ("magnitude", MAGNITUDES),
                              ("precision", PRECISIONS), ("mask_type", MASK_TYPES), ("classifier_input", CLASSIFIER_INPUTS)):
            if getattr(self, name) not in allowed:
                raise RequestError([name], f"unknown {{0}} {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if self.maps_threshold is not None:
            set_(self, "maps_threshold", _maps_threshold_value(self.maps_threshold))
        set_(self, "grid", _grid_value(self.grid))
        set_(self, "virtual_coils", _virtual_coils_value(self.virtual_coils))
        if self.accel is not None:
            accel = _number(self.accel)
            if not 1.0 < accel <= MAX_ACCELERATION:
                raise RequestError(["accel"], f"{{0}} must be in (1, {MAX_ACCELERATION:g}], got {self.accel}")
            set_(self, "accel", accel)
        cf = _number(self.center_fraction)
        if not 0.0 < cf < 0.5:
            raise RequestError(["center_fraction"], f"{{0}} must be in (0, 0.5), got {self.center_fraction}")
        set_(self, "center_fraction", cf)
        if self.adapt is not None and not isinstance(self.adapt, AdaptSettings):
            raise RequestError(["adapt"], f"{{0}} must be AdaptSettings or None, got {type(self.adapt).__name__}")
        self._check_guidance()
        exports = self.exports.split(",") if isinstance(self.exports, str) else list(self.exports)
        exports = [str(e).strip().lower() for e in exports if str(e).strip()]
        bad = [e for e in exports if e not in EXPORT_FORMATS]
        if bad:
            raise RequestError(["exports"], f"{{0}}: unknown format {bad[0]!r}; choose from {', '.join(EXPORT_FORMATS)}")
        set_(self, "exports", tuple(dict.fromkeys(exports)))

    def _check_guidance(self) -> None:
        """Guidance fields: ranges and combinations (what needs the prior is checked when a run starts)."""
        if self.guidance is not None and not _number(self.guidance) >= 0:
            raise RequestError(["guidance"], f"{{0}} must be a finite number >= 0, got {self.guidance}")
        if self.classifier is None and (self.classifier_scale is not None or self.classifier_input != "noisy"):
            raise RequestError(["classifier_scale", "classifier_input", "classifier"], "{0}/{1} given without {2}")
        if self.classifier_scale is not None and not _number(self.classifier_scale) > 0:
            raise RequestError(["classifier_scale"], f"{{0}} must be a finite number > 0, got {self.classifier_scale}")
        if self.adapt is not None and self.guided:
            raise RequestError(["adapt", "condition", "guidance", "classifier"], "{0} cannot be combined with {1}/{2}/{3}")

    @property
    def grid_factor(self) -> float:
        """The sampling-grid factor of a ``native`` or numeric grid (an ``auto`` grid: :meth:`for_pixels` first)."""
        if self.grid == "native":
            return 1.0
        if self.grid == "auto":
            raise RequestError(["grid"], "{0} auto is resolved per volume (ReconRequest.for_pixels) before sampling")
        return float(self.grid)

    def for_pixels(self, pixel_mm: float | Sequence[float] | None, prior_meta: Mapping[str, Any] | None,
                   mask: Any = None, matrix: Sequence[int] | None = None,
                   coverage: float | None = None) -> ReconRequest:
        """This request with an ``auto`` grid resolved for the acquisition: pixels of ``pixel_mm`` (mm) against the
        prior's trained range, and the sampling ``mask`` (Cartesian) or the trajectory's grid ``coverage``
        (:func:`operators.trajectories.grid_coverage`) on the measured ``(H, W)`` ``matrix``.

        The one place the ``auto`` rule is applied: the largest of :func:`mri_score.resolution.auto_grid_factor`
        (a pixel coarser than the prior's range), :func:`mri_score.resolution.acquisition_grid_factor` (2x at
        low acceleration on matrices up to 128², the rule measured on the development data) and
        :func:`mri_score.resolution.trajectory_grid_factor` (its counterpart on trajectories, by coverage); native
        when none applies or the inputs are unknown (no mask and no coverage: the pixel rule alone).  Other grids
        are returned as they are.
        """
        if self.grid != "auto":
            return self
        factor = max(auto_grid_factor(pixel_mm, prior_pixel_range(prior_meta)),
                     acquisition_grid_factor(mask_acceleration(mask), matrix),
                     trajectory_grid_factor(coverage, matrix))
        return dataclasses.replace(self, grid="native" if factor == 1.0 else factor)

    def replace(self, **changes: Any) -> ReconRequest:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def guided(self) -> bool:
        """True when the request conditions the prior or guides it (label, weight or classifier)."""
        return self.condition not in ("", "none") or self.guidance is not None or self.classifier is not None

    def identity(self) -> dict[str, Any]:
        """Every field as plain JSON values (the sampler's options with their defaults version).

        What decides an output, recorded in its ``request`` attr and in the skip-if-done key.
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, SamplerConfig):
                value = {**value.as_dict(), "defaults_version": type(value).defaults_version}
            elif isinstance(value, AdaptSettings):
                value = dataclasses.asdict(value)
            out[f.name] = value
        return out

    def calibration_suffix(self) -> list[str]:
        """The non-default settings besides the sampler's that change the output's std, as ``name=value`` parts.

        Grid, precision, maps and their phase reference, conditioning and adaptation; empty for the defaults, so
        a key fitted under the defaults stays the same (:func:`mri_score.uncertainty.settings_key`).
        """
        default = ReconRequest(sampler=self.sampler)
        parts = []
        for name in ("grid", "precision", "maps", "maps_phase", "maps_threshold", "condition", "guidance", "classifier",
                     "classifier_scale", "classifier_input", "adapt"):
            value = getattr(self, name)
            if name == "maps_threshold" and value == MAPS_THRESHOLD:
                continue  # the Cartesian default named: the same maps (trajectories key it: noncartesian.calibration_key)
            if value != getattr(default, name):
                if isinstance(value, AdaptSettings):
                    value = ",".join(f"{k}={v}" for k, v in sorted(dataclasses.asdict(value).items()))
                parts.append(f"{name}={value}")
        return parts


#: The most virtual coils a request may name (as many coils as any receive array has).
MAX_VIRTUAL_COILS = 1024


def _virtual_coils_value(value: str | int) -> str | int:
    """``auto``, ``all`` or an integer number of virtual coils in ``[1, MAX_VIRTUAL_COILS]`` (a number or its text)."""
    text = str(value).strip().lower()
    if text in ("auto", "all"):
        return text
    if not isinstance(value, bool):
        try:
            number = int(text)
        except ValueError:
            number = 0
        if 1 <= number <= MAX_VIRTUAL_COILS:
            return number
    raise RequestError(["virtual_coils"], f"{{0}} must be auto, all or a number of coils in [1, {MAX_VIRTUAL_COILS}], "
                                          f"got {value!r}")


def _maps_threshold_value(value: str | float) -> str | float:
    """ESPIRiT's threshold (:func:`operators.coils.espirit_threshold`): a number in ``(0, 1)`` or
    :data:`operators.coils.NOISE_THRESHOLD` (the noise edge)."""
    if not isinstance(value, bool):  # float(True) is 1.0: a flag is not a threshold
        try:
            return espirit_threshold(value)
        except (OperatorInputError, TypeError):
            pass
    raise RequestError(["maps_threshold"], f"{{0}} must be {NOISE_THRESHOLD} or a number in (0, 1), got {value!r}")


def _grid_value(value: str | float) -> str | float:
    """``auto``, ``native`` or a factor in ``[1, MAX_GRID_FACTOR]`` (1 is ``native``)."""
    text = str(value).strip().lower()
    if text in ("auto", "native"):
        return text
    factor = _number(text)
    if not 1.0 <= factor <= MAX_GRID_FACTOR:
        raise RequestError(["grid"], f"{{0}} must be native, auto or a factor in [1, {MAX_GRID_FACTOR:g}], got {value!r}")
    return "native" if factor == 1.0 else factor
