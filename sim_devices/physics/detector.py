"""TXM imaging chain: zone-plate optics, defocus blur, flat field, noise, drift.

Turns the line integrals of :func:`.projector.project` into uint16 camera frames:

``counts = gain * Poisson(I0 * t * flat(u, v) * blur(exp(-p))) + dark + read noise``

clipped to the ADC range.  Units: lengths in um unless the name says ``_mm`` or
``_nm``; energies in keV; times in s; intensities in photons (``I0``) or ADU.

Zone-plate optics (Fresnel zone plate of diameter ``D`` and outermost zone width
``dr``; ``lambda[nm] = 1.23984 / E[keV]``):

* focal length ``f = D dr / lambda``;
* thin-lens equation ``1/p + 1/q = 1/f`` (``p`` sample-to-zone-plate,
  ``q`` zone-plate-to-detector), magnification ``M = q / p``;
* numerical aperture ``NA = lambda / (2 dr)``; depth of focus (full width)
  ``DOF = 4 dr^2 / lambda`` (23 um for 30 nm zones at 8 keV, as in Spence 2021);
* defocus blur: 0 inside ``|defocus| <= DOF/2``, beyond it the geometric blur disc
  has radius ``NA (|defocus| - DOF/2)``, modelled as a Gaussian of sigma half that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage

from multiscope.analysis.optics import depth_of_focus_um, focal_length_mm, wavelength_nm

from .projector import DetectorGeometry

__all__ = [
    "DetectorModel",
    "DriftModel",
    "EnergyDriftModel",
    "ZonePlate",
    "defocus_blur_sigma_um",
    "depth_of_focus_um",
    "expected_photons",
    "flat_field",
    "focal_length_mm",
    "image_distance_mm",
    "in_focus_object_distance_mm",
    "magnification",
    "numerical_aperture",
    "object_defocus_um",
    "render_dark",
    "render_flat",
    "render_frame",
    "wavelength_nm",
]


# --------------------------------------------------------------------------------------
# Zone-plate optics
# --------------------------------------------------------------------------------------
def image_distance_mm(f_mm: float, p_mm: float) -> float:
    """Image distance q from the lens equation ``1/p + 1/q = 1/f`` (mm in, mm out).

    ``p`` (object distance) must exceed ``f`` for a real image.
    """
    if p_mm <= f_mm:
        raise ValueError(f"object distance {p_mm} mm must exceed focal length {f_mm} mm")
    return f_mm * p_mm / (p_mm - f_mm)


def in_focus_object_distance_mm(f_mm: float, q_mm: float) -> float:
    """Object distance p that is in focus for a detector at image distance q (mm)."""
    return image_distance_mm(f_mm, q_mm)  # the lens equation is symmetric in p, q


def magnification(p_mm: float, q_mm: float) -> float:
    """Lateral magnification ``M = q / p`` (dimensionless)."""
    return q_mm / p_mm


def object_defocus_um(f_mm: float, p_mm: float, q_mm: float) -> float:
    """Defocus of the sample plane for given zone-plate and detector positions.

    Parameters
    ----------
    f_mm : float
        Focal length at the current energy, mm (:func:`focal_length_mm`).
    p_mm : float
        Actual sample-to-zone-plate distance, mm.
    q_mm : float
        Actual zone-plate-to-detector distance, mm.

    Returns
    -------
    float
        ``p - p_focus`` in um (sign: positive = sample too far from the zone plate);
        pass to :func:`render_frame` as ``defocus_um``.
    """
    return (p_mm - in_focus_object_distance_mm(f_mm, q_mm)) * 1e3


def numerical_aperture(outermost_zone_nm: float, energy_keV: float) -> float:
    """Zone-plate numerical aperture ``lambda / (2 dr)`` (dimensionless)."""
    return wavelength_nm(energy_keV) / (2.0 * outermost_zone_nm)


def defocus_blur_sigma_um(defocus_um: float, outermost_zone_nm: float, energy_keV: float) -> float:
    """Gaussian sigma (um, sample plane) of the defocus blur.

    Zero within half the depth of focus, then ``NA (|defocus| - DOF/2) / 2``.
    """
    excess = abs(defocus_um) - 0.5 * depth_of_focus_um(outermost_zone_nm, energy_keV)
    if excess <= 0.0:
        return 0.0
    return 0.5 * numerical_aperture(outermost_zone_nm, energy_keV) * excess


@dataclass(frozen=True)
class ZonePlate:
    """Fresnel zone-plate objective (default: 60 um diameter, 30 nm outermost zone)."""

    diameter_um: float = 60.0
    outermost_zone_nm: float = 30.0

    def focal_length_mm(self, energy_keV: float) -> float:
        """Focal length at ``energy_keV``, mm."""
        return focal_length_mm(self.diameter_um, self.outermost_zone_nm, energy_keV)

    def depth_of_focus_um(self, energy_keV: float) -> float:
        """Full depth of focus at ``energy_keV``, um."""
        return depth_of_focus_um(self.outermost_zone_nm, energy_keV)

    def blur_sigma_um(self, defocus_um: float, energy_keV: float) -> float:
        """Defocus blur sigma in the sample plane, um."""
        return defocus_blur_sigma_um(defocus_um, self.outermost_zone_nm, energy_keV)


# --------------------------------------------------------------------------------------
# Detector model
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectorModel:
    """Camera + illumination parameters (immutable; derive variants with ``replace``).

    Parameters
    ----------
    geometry : DetectorGeometry
        Frame size, effective pixel size (um) and rotation-axis offset (px).
    photons_per_s : float
        Photons per pixel per second at the flat-field maximum with no sample.
    gain_adu_per_photon : float
        Camera conversion gain, ADU per detected photon.
    dark_offset_adu : float
        Bias level, ADU.
    dark_current_adu_per_s : float
        Mean thermal dark signal (Poisson), ADU/s.
    read_noise_adu : float
        Gaussian read noise rms, ADU.
    flat_rms : float
        Rms of the smooth fixed-pattern flat-field non-uniformity (fraction).
    beam_falloff : float
        Fractional intensity drop of the Gaussian beam profile at the frame corners.
    saturation_adu : int
        ADC full scale; values are clipped to ``[0, saturation_adu]``.
    seed : int
        Seed of the fixed flat-field pattern.
    zone_plate : ZonePlate
        Objective, for the defocus blur.
    """

    geometry: DetectorGeometry = field(default_factory=DetectorGeometry)
    photons_per_s: float = 5000.0
    gain_adu_per_photon: float = 1.0
    dark_offset_adu: float = 100.0
    dark_current_adu_per_s: float = 1.0
    read_noise_adu: float = 3.0
    flat_rms: float = 0.03
    beam_falloff: float = 0.2
    saturation_adu: int = 65535
    seed: int = 0
    zone_plate: ZonePlate = field(default_factory=ZonePlate)

    def flat_field(self) -> np.ndarray:
        """Relative illumination x detector response, (rows, cols) float32, max ~1."""
        g = self.geometry
        return flat_field(g.rows, g.cols, self.seed, self.flat_rms, self.beam_falloff)


@lru_cache(maxsize=8)
def flat_field(rows: int, cols: int, seed: int, rms: float, falloff: float) -> np.ndarray:
    """Smooth, seeded flat-field pattern (read-only, cached).

    A Gaussian beam profile (``1 - falloff`` at the corners, slightly off-centre)
    times ``1 + n(u, v)`` where ``n`` is a smooth random field of rms ``rms``
    (white noise on an 8 x 8 grid, cubic-spline upsampled).

    Returns
    -------
    numpy.ndarray
        float32 (rows, cols), normalised to max 1.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((8, 8))
    fine = ndimage.zoom(coarse, (rows / 8.0, cols / 8.0), order=3, mode="nearest")[:rows, :cols]
    fine = (fine - fine.mean()) / max(float(fine.std()), 1e-12)
    off = 0.05 * rng.uniform(-1.0, 1.0, size=2)  # beam centre not exactly on the detector
    v = np.linspace(-1.0, 1.0, rows)[:, None] - off[0]
    u = np.linspace(-1.0, 1.0, cols)[None, :] - off[1]
    # exp(-k * 2) = 1 - falloff at the corner (u^2 + v^2 = 2).
    k = -0.5 * math.log(max(1.0 - falloff, 1e-6))
    profile = np.exp(-k * (u * u + v * v))
    out = (profile * (1.0 + rms * fine)).astype(np.float32)
    out /= out.max()
    out.flags.writeable = False
    return out


def _sigma_px(model: DetectorModel, defocus_um: float, energy_keV: float) -> float:
    return model.zone_plate.blur_sigma_um(defocus_um, energy_keV) / model.geometry.pixel_size_um


def _digitise(photons, exposure_s, rng, model: DetectorModel) -> np.ndarray:
    adu = photons.astype(np.float32) * np.float32(model.gain_adu_per_photon)
    adu += np.float32(model.dark_offset_adu)
    if model.dark_current_adu_per_s > 0:
        adu += rng.poisson(model.dark_current_adu_per_s * exposure_s, size=adu.shape)
    if model.read_noise_adu > 0:
        adu += rng.standard_normal(adu.shape, dtype=np.float32) * np.float32(model.read_noise_adu)
    np.rint(adu, out=adu)
    np.clip(adu, 0, model.saturation_adu, out=adu)
    return adu.astype(np.uint16)


def expected_photons(
    line_integrals: np.ndarray,
    exposure_s: float,
    detector_model: DetectorModel,
    defocus_um: float = 0.0,
    energy_keV: float = 8.0,
) -> np.ndarray:
    """Noise-free mean photon count per pixel, ``I0 t flat blur(exp(-p))``.

    Parameters are those of :func:`render_frame`; returns float32 (rows, cols).
    """
    m = detector_model
    p = np.asarray(line_integrals, dtype=np.float32)
    if p.shape != (m.geometry.rows, m.geometry.cols):
        raise ValueError(f"line_integrals shape {p.shape} != detector {m.geometry}")
    if exposure_s < 0:
        raise ValueError("exposure_s must be >= 0")
    image = np.exp(-p)
    sigma = _sigma_px(m, defocus_um, energy_keV)
    if sigma > 0.05:  # below ~1/20 px a Gaussian kernel is a no-op
        # Blur acts on intensity (after Beer-Lambert), not on the line integrals.
        image = ndimage.gaussian_filter(image, sigma, mode="nearest", truncate=3.0)
    return image * m.flat_field() * np.float32(m.photons_per_s * exposure_s)


def render_frame(
    line_integrals: np.ndarray,
    exposure_s: float,
    rng: np.random.Generator,
    detector_model: DetectorModel,
    defocus_um: float = 0.0,
    energy_keV: float = 8.0,
) -> np.ndarray:
    """Simulate one camera frame of a projection.

    Parameters
    ----------
    line_integrals : numpy.ndarray
        (rows, cols) ``integral mu dl`` from :func:`.projector.project`.
    exposure_s : float
        Exposure time, s.
    rng : numpy.random.Generator
        Noise source (photon, dark and read noise).
    detector_model : DetectorModel
        Camera and illumination parameters.
    defocus_um : float
        Sample-plane defocus, um (see :func:`object_defocus_um`); blurs the image
        once it exceeds half the depth of focus.
    energy_keV : float
        Photon energy, keV (sets wavelength for the depth of focus / blur).

    Returns
    -------
    numpy.ndarray
        uint16 (rows, cols) frame in ADU, including the dark offset.
    """
    expected = expected_photons(line_integrals, exposure_s, detector_model, defocus_um, energy_keV)
    return _digitise(rng.poisson(expected), exposure_s, rng, detector_model)


def render_flat(
    exposure_s: float,
    rng: np.random.Generator,
    detector_model: DetectorModel,
) -> np.ndarray:
    """Flat (open-beam, sample out) frame, uint16 ADU."""
    expected = detector_model.flat_field() * np.float32(detector_model.photons_per_s * exposure_s)
    return _digitise(rng.poisson(expected), exposure_s, rng, detector_model)


def render_dark(
    exposure_s: float,
    rng: np.random.Generator,
    detector_model: DetectorModel,
) -> np.ndarray:
    """Dark (shutter closed) frame, uint16 ADU: offset + dark current + read noise."""
    g = detector_model.geometry
    return _digitise(np.zeros((g.rows, g.cols), np.float32), exposure_s, rng, detector_model)


# --------------------------------------------------------------------------------------
# Sample drift
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DriftModel:
    """Slow, smooth, seeded random drift of the sample position versus time.

    A stationary Gaussian process per axis, built as a random-phase sum of
    ``n_modes`` cosines with angular frequencies drawn from ``N(0, 1/T)``: the
    covariance is ``rms^2 exp(-tau^2 / (2 T^2))``, so over times << T it wanders
    like a smooth random walk with typical speed ``rms / T``.  It is a pure function
    of time (no state), so any frame at any time is reproducible.  Off by default.

    Parameters
    ----------
    rms_um : tuple of float
        Rms excursion along tab-frame (x, y, z), um; zeros disable drift.
    correlation_time_s : float
        Correlation time T, s (defaults give ~rms/300 um per second).
    seed : int
        Seed of the drift realisation.
    n_modes : int
        Number of cosine modes per axis.
    """

    rms_um: tuple[float, float, float] = (0.0, 0.0, 0.0)
    correlation_time_s: float = 300.0
    seed: int = 0
    n_modes: int = 32

    def offset_um(self, t_s: float | np.ndarray) -> np.ndarray:
        """Drift offset at time(s) ``t_s`` (s): shape ``(3,)`` or ``(len(t), 3)``, um.

        Add it to ``center_um`` of :func:`.projector.project` (the sample moves by
        ``-offset`` in the image).
        """
        t = np.asarray(t_s, dtype=np.float64)
        rms = np.asarray(self.rms_um, dtype=np.float64)
        if not np.any(rms):
            return np.zeros(t.shape + (3,))
        rng = np.random.default_rng(self.seed)
        omega = rng.normal(0.0, 1.0 / self.correlation_time_s, size=(3, self.n_modes))
        phase = rng.uniform(0.0, 2.0 * np.pi, size=(3, self.n_modes))
        arg = t[..., None, None] * omega + phase
        amp = rms * math.sqrt(2.0 / self.n_modes)
        out = np.cos(arg).sum(axis=-1) * amp
        # Remove the t = 0 value so the sample starts where it was put.
        out -= np.cos(phase).sum(axis=-1) * amp
        return out


@dataclass(frozen=True)
class EnergyDriftModel:
    """Seeded sample jump at every energy: a pure function of (seed, energy).

    Each energy move (monochromator, zone plate, thermal load) leaves the sample at a
    slightly different place in the image.  The jump at energy ``E`` is drawn from
    a Gaussian of rms ``rms_um`` per image axis with an RNG seeded by
    ``(seed, round(E / resolution_eV))``, then shortened to at most ``max_um``:
    any frame at any energy is reproducible, and revisiting an energy revisits
    its position.  Zero outside ``window_keV`` (when given) and when ``rms_um`` is 0.

    Parameters
    ----------
    rms_um : float
        Rms jump per image axis, um (sample plane).
    max_um : float
        Largest jump length, um.
    seed : int
        Seed of the realisation.
    window_keV : tuple of float, optional
        (low, high): energies outside get no jump (None: every energy).
    resolution_eV : float
        Energies closer than this share a draw (rounding of the energy key), eV.

    Examples
    --------
    >>> d = EnergyDriftModel(rms_um=0.1, max_um=0.3, seed=1)
    >>> bool(d.offset_um(8.35) == d.offset_um(8.35) != d.offset_um(8.351))
    True
    """

    rms_um: float = 0.0
    max_um: float = math.inf
    seed: int = 0
    window_keV: tuple[float, float] | None = None  # noqa: N815 - unit spelling
    resolution_eV: float = 0.01  # noqa: N815

    def offset_um(self, energy_keV: float) -> tuple[float, float]:
        """Image-plane jump ``(x, y)`` at ``energy_keV``, um.

        ``x`` moves the image towards larger detector columns, ``y`` towards larger
        rows (down); both in the sample plane (divide by the pixel size for px).
        """
        e = float(energy_keV)
        if not self.rms_um > 0 or not math.isfinite(e):
            return (0.0, 0.0)
        if self.window_keV is not None and not self.window_keV[0] < e < self.window_keV[1]:
            return (0.0, 0.0)
        key = int(round(e * 1000.0 / self.resolution_eV))
        rng = np.random.default_rng([int(self.seed) & 0xFFFFFFFF, 0x0E0D51F7, max(key, 0)])
        x, y = rng.normal(0.0, float(self.rms_um), size=2)
        length = math.hypot(x, y)
        if length > self.max_um:
            x, y = x * self.max_um / length, y * self.max_um / length
        return (float(x), float(y))
