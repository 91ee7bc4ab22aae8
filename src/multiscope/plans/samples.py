"""Samples: make one known to the catalog, so its history can be read back.

A sample brought to the instruments (an electrode sheet, a coin cell) is registered
with :func:`register_sample`: a run with no events whose start document holds the
``sample`` block (:func:`sample_record_md`). A sample made by an instrument (the
laser mill's tab) is registered by the run that makes it, with the same block.
Every other plan takes ``sample_id`` (:func:`~multiscope.plans.preflight.sample_md`);
:meth:`multiscope.catalog.Catalog.sample_history` reads it all back in order.

Examples
--------
>>> RE(register_sample("sheet-1", material="NMC811", description="80 um on Al"))  # doctest: +SKIP
>>> RE(tomo_scan(cam, sample, shutter, 181, sample_id="tab-3"))                   # doctest: +SKIP
>>> print(catalog.sample_history("tab-3"))                                        # doctest: +SKIP
"""

from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp

from .preflight import PlanArgumentError, sample_md

__all__ = ["register_sample"]  # sample_record_md: for plans that make a sample

#: Longest free-text description of a sample (characters).
MAX_DESCRIPTION_LENGTH = 500


def sample_record_md(
    sample_id: str, *, material: str = "", parent_id: str = "", description: str = ""
) -> dict:
    """The start-document entries registering a sample, after checking them.

    Parameters
    ----------
    sample_id : str
        The sample's id (required here).
    material : str
        What it is made of, e.g. ``"NMC811"``.
    parent_id : str
        The sample it was cut from, if any.
    description : str
        Free text (at most :data:`MAX_DESCRIPTION_LENGTH` characters).

    Returns
    -------
    dict
        ``{"sample_id": ..., "sample": {"id", "material", "parent_id", "description"}}``.

    Raises
    ------
    PlanArgumentError
        For a missing or malformed id, a parent that is the sample itself, or a
        description that is not short text.
    """
    entry = sample_md(sample_id)
    if not entry:
        raise PlanArgumentError("sample_id is required to register a sample (e.g. 'tab-3')")
    sample_md(parent_id)
    if parent_id == sample_id:
        raise PlanArgumentError(f"sample {sample_id!r} cannot be cut from itself")
    for name, value in (("material", material), ("description", description)):
        if not isinstance(value, str):
            raise PlanArgumentError(f"{name} must be a string, got {value!r}")
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise PlanArgumentError(
            f"description has {len(description)} characters; at most {MAX_DESCRIPTION_LENGTH}"
        )
    block = {"id": sample_id, "material": material, "parent_id": parent_id,
             "description": description}  # fmt: skip
    return {**entry, "sample": block}


def register_sample(
    sample_id: str,
    *,
    material: str = "",
    parent_id: str = "",
    description: str = "",
    md: dict | None = None,
):
    """Register a sample: a run with no events that records what the sample is.

    Parameters
    ----------
    sample_id, material, parent_id, description
        As :func:`sample_record_md`.
    md : dict, optional
        Metadata merged over the plan's own.

    Yields
    ------
    msg : Msg
        Messages for the RunEngine (open and close a run; nothing moves).

    Raises
    ------
    PlanArgumentError
        Before any message, for a bad argument.
    """
    _md = {
        "plan_name": "register_sample",
        "num_points": 0,
        **sample_record_md(
            sample_id, material=material, parent_id=parent_id, description=description
        ),
    }
    _md.update(md or {})
    return (yield from bpp.run_wrapper(bps.null(), md=_md))
