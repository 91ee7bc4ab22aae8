"""Pure array-in, array-out analysis: numpy, scipy, scikit-image, numba, finufft.

No bluesky, ophyd or caproto here (an import-linter contract checks it), so
every function can be used on data from anywhere. Conventions follow tomopy:
projections shaped (angles, rows, cols), angles in radians.

Modules
-------
optics
    Zone-plate focal length, lens equation, depth of focus, focus calibration.
tomo
    ``normalize``, ``minus_log``, ``find_center``, ``reconstruct`` (gridrec / fbp).
stripe
    ``remove_stripe_offsets``: ring artefacts (detector gain errors) out of sinograms.
stitch
    ``stitch_vertical`` of overlapping tomograms.
segment
    ``label_particles`` (Otsu, small-object removal, watershed, border clearing).
xanes
    ``normalize``, ``material_mask``, ``fit_whiteline``, ``edge_energy``,
    ``linear_combination_fit``; re-exports the alignment below.
xanes_register, xanes_align
    Feature images, sub-pixel registration, ``out_of_view``; ``align_stack`` with
    the re-sampling (super-resolution) correction.
xanes_mask
    ``edge_step_error``, ``material_mask``: which pixels hold the element.
xanes_drift
    3D XANES: drift of tomograms across energies.
attenuation
    Attenuation lengths (xraydb) and the thickness rule: a tab two attenuation
    lengths wide (``plan_tab``).
laser_path
    The laser mill's tool paths (a tab on a handle, a pillar), the spot and kerf
    model, the cut's length and time.
"""

from multiscope.config import prefer_passive_openmp_wait

# Before a numba-parallel kernel here first runs and starts OpenMP.
prefer_passive_openmp_wait()
