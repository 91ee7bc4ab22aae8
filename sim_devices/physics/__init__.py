"""Physics of the simulated TXM: materials, electrode-tab phantom, projector, camera.

Pure numpy/numba code, no EPICS: per frame, the simulated TXM IOC calls

>>> tab = make_tab(seed=0)                                      # doctest: +SKIP
>>> model = DetectorModel()                                     # doctest: +SKIP
>>> p = project(tab, angle_rad, energy_keV, model.geometry, center_um=c)  # doctest: +SKIP
>>> frame = render_frame(p, exposure_s, rng, model, defocus_um, energy_keV)  # doctest: +SKIP

through :class:`sim_devices.physics.txm_scene.TXMScene`, the whole TXM scene (optics,
alignment, chemistry, drift) as a pure function of the instrument state; the XANES
edge model is :mod:`sim_devices.physics.xanes`.

Units: um, keV, s, rad; mu in 1/um.  Axis conventions are in
:mod:`sim_devices.physics.phantom` (tab frame) and
:mod:`sim_devices.physics.projector` (lab frame, detector rows/columns).
"""

from multiscope.config import prefer_passive_openmp_wait

from .detector import (
    DetectorModel,
    DriftModel,
    EnergyDriftModel,
    ZonePlate,
    defocus_blur_sigma_um,
    depth_of_focus_um,
    expected_photons,
    flat_field,
    focal_length_mm,
    image_distance_mm,
    in_focus_object_distance_mm,
    magnification,
    numerical_aperture,
    object_defocus_um,
    render_dark,
    render_flat,
    render_frame,
    wavelength_nm,
)
from .materials import (
    MATERIAL_IDS,
    MATERIALS,
    Material,
    attenuation_length_um,
    material_mu,
    mu_table,
)
from .phantom import ElectrodeTab, VoxelVolume, cached_tab, make_tab
from .projector import DetectorGeometry, project, slab_chord_um

# Before the projector's numba-parallel kernel first runs and starts OpenMP.
prefer_passive_openmp_wait()

__all__ = [
    "MATERIALS",
    "MATERIAL_IDS",
    "DetectorGeometry",
    "DetectorModel",
    "DriftModel",
    "ElectrodeTab",
    "EnergyDriftModel",
    "Material",
    "VoxelVolume",
    "ZonePlate",
    "attenuation_length_um",
    "defocus_blur_sigma_um",
    "depth_of_focus_um",
    "expected_photons",
    "flat_field",
    "focal_length_mm",
    "image_distance_mm",
    "in_focus_object_distance_mm",
    "magnification",
    "cached_tab",
    "make_tab",
    "material_mu",
    "mu_table",
    "numerical_aperture",
    "object_defocus_um",
    "project",
    "render_dark",
    "render_flat",
    "render_frame",
    "slab_chord_um",
    "wavelength_nm",
]
