"""Affine (or rigid) registration of a whole head to the skull-stripped MNI template (SimpleITK).

The template has no skull, so the similarity (Mattes mutual information) is measured only within its brain mask
grown by ``MASK_MARGIN_MM``: the scalp and neck of the scan then never pull on the fit. Raw scans can be rotated
by tens of degrees and shifted by centimetres, and their centre of mass lies low because of the neck, so coarse
grid searches over shifts, then rotations, then shifts again pick the start of a rigid fit, which in turn starts
the affine one.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from alz_monai.preprocess.images import sitk

if TYPE_CHECKING:
    import SimpleITK

__all__ = ["TRANSFORM_KINDS", "register_to_template"]

logger = logging.getLogger(__name__)

TRANSFORM_KINDS = ("affine", "rigid")
MASK_MARGIN_MM = 8.0
LEVEL_SPACINGS_MM = (8.0, 4.0, 2.0)
"""Pyramid of the fits; levels finer than the template or the scan are dropped."""
SAMPLING_FRACTION = 0.2
HISTOGRAM_BINS = 32
ITERATIONS = 200
SEED = 0
"""SimpleITK's "seed from the clock": the metric's samples are drawn afresh per run, so two runs differ slightly. Every
fixed seed tried (1, 7, 42) made the fits of most synthetic raw heads fail, the clock seed did not."""
SHIFT_SEARCH_STEPS = (0, 0, 0, 3, 3, 3)
ROTATION_SEARCH_STEPS = (2, 2, 2, 0, 0, 0)
FINE_SHIFT_SEARCH_STEPS = (0, 0, 0, 1, 1, 1)
"""Grid points either side of the start per rigid parameter (rotations about x, y, z, then shifts)."""
SEARCH_ROTATION_STEP_DEG = 10.0
SEARCH_SHIFT_STEP_MM = 15.0
RIGID_STARTS = 3
"""Rigid fits started from the best rotations of the grid; the one of lowest final metric is kept."""


def register_to_template(moving: SimpleITK.Image, template: SimpleITK.Image, mask: SimpleITK.Image,
                         kind: str = "affine") -> SimpleITK.Transform:
    """The transform taking template points (LPS mm) to the scan's: what ``sitk.Resample`` needs to map it."""
    if kind not in TRANSFORM_KINDS:
        raise ValueError(f"transform kind {kind!r} is not one of {', '.join(TRANSFORM_KINDS)}")
    itk = sitk()
    moving = itk.Cast(moving, itk.sitkFloat32)
    margin = [max(1, int(round(MASK_MARGIN_MM / spacing))) for spacing in mask.GetSpacing()]
    fixed_mask = itk.BinaryDilate(mask, margin)
    levels = _levels(template, moving)
    fits = [_fit(template, moving, fixed_mask, start, levels) for start in _rigid_starts(template, moving, fixed_mask)]
    rigid = itk.Euler3DTransform(min(fits, key=lambda fit: fit[1])[0])
    if kind == "rigid":
        return rigid
    affine = itk.AffineTransform(3)
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    affine.SetCenter(rigid.GetCenter())
    return _fit(template, moving, fixed_mask, affine, levels[-2:])[0]


def _levels(template: SimpleITK.Image, moving: SimpleITK.Image) -> list[tuple[int, float]]:
    """(shrink factor of the template, smoothing sigma in mm) per pyramid level."""
    finest = max(max(template.GetSpacing()), max(moving.GetSpacing()))
    spacings = [spacing for spacing in LEVEL_SPACINGS_MM if spacing >= finest] or [finest]
    base = min(template.GetSpacing())
    return [(max(1, int(round(spacing / base))), spacing / 2.0) for spacing in spacings]


def _method(fixed_mask: SimpleITK.Image) -> SimpleITK.ImageRegistrationMethod:
    itk = sitk()
    method = itk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(SAMPLING_FRACTION, SEED)
    method.SetMetricFixedMask(fixed_mask)
    method.SetInterpolator(itk.sitkLinear)
    return method


def _fit(template: SimpleITK.Image, moving: SimpleITK.Image, fixed_mask: SimpleITK.Image,
         transform: SimpleITK.Transform, levels: list[tuple[int, float]]) -> tuple[SimpleITK.Transform, float]:
    """The fitted transform and its final metric value (lower is better)."""
    method = _method(fixed_mask)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=ITERATIONS,
                                                    relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([shrink for shrink, _ in levels])
    method.SetSmoothingSigmasPerLevel([sigma for _, sigma in levels])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(template, moving)
    logger.debug("%s fit: metric %.4f after %d iterations (%s)", transform.GetName(), method.GetMetricValue(),
                 method.GetOptimizerIteration(), method.GetOptimizerStopConditionDescription())
    return transform, method.GetMetricValue()


def _rigid_starts(template: SimpleITK.Image, moving: SimpleITK.Image,
                  fixed_mask: SimpleITK.Image) -> list[SimpleITK.Euler3DTransform]:
    """Rigid starts from coarse grids around the centres of mass: the best shift, the ``RIGID_STARTS`` best rotations
    about it, each with its best shift again. Several starts, because a tilted head can fool a single best guess."""
    itk = sitk()
    centred = itk.CenteredTransformInitializer(template, moving, itk.Euler3DTransform(),
                                               itk.CenteredTransformInitializerFilter.MOMENTS)
    shrink, sigma = _levels(template, moving)[0]
    coarse = (itk.Shrink(itk.SmoothingRecursiveGaussian(template, sigma), [shrink] * 3),
              itk.SmoothingRecursiveGaussian(moving, sigma))
    coarse_mask = itk.Resample(fixed_mask, coarse[0], itk.Transform(), itk.sitkNearestNeighbor)
    shifted = _grid_search(*coarse, coarse_mask, centred, SHIFT_SEARCH_STEPS)[0]
    rotated = _grid_search(*coarse, coarse_mask, shifted, ROTATION_SEARCH_STEPS)[:RIGID_STARTS]
    return [_grid_search(*coarse, coarse_mask, start, FINE_SHIFT_SEARCH_STEPS)[0] for start in rotated]


def _grid_search(template: SimpleITK.Image, moving: SimpleITK.Image, fixed_mask: SimpleITK.Image,
                 start: SimpleITK.Euler3DTransform, steps: tuple[int, ...]) -> list[SimpleITK.Euler3DTransform]:
    """``start`` moved by whole steps along each parameter, best metric first."""
    itk = sitk()
    method = _method(fixed_mask)
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetOptimizerAsExhaustive(list(steps), stepLength=1.0)
    method.SetOptimizerScales([math.radians(SEARCH_ROTATION_STEP_DEG)] * 3 + [SEARCH_SHIFT_STEP_MM] * 3)
    candidate = itk.Euler3DTransform(start)
    method.SetInitialTransform(candidate, inPlace=True)
    visited: list[tuple[float, tuple[float, ...]]] = []
    method.AddCommand(itk.sitkIterationEvent,
                      lambda: visited.append((method.GetMetricValue(), candidate.GetParameters())))
    method.Execute(template, moving)
    ranked = []
    for _, parameters in sorted(visited):
        transform = itk.Euler3DTransform(start)
        transform.SetParameters(parameters)
        ranked.append(transform)
    return ranked
