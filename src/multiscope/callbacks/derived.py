"""Derived runs: the documents a live analysis publishes, with their provenance.

Every callback that stores a result (a reconstruction, a XANES map, a stitched
mosaic) publishes it as a run of its own, linked to its raw run by
``derived_from``, so the catalog finds it beside the data (decision 0006). This
module builds those documents once, for all of them, and sends them through an
``emit(name, doc)`` callable (the catalog writer, a fan-out, a test's list):

``start``
    The caller's metadata (``plan_name``, ``derived_from``, ``parameters``,
    ``figures``, ``files`` / ``results``...) plus the provenance
    (:func:`provenance`: ``software`` package versions, ``analysis_functions``
    qualified names); made JSON-safe.
``descriptor`` ``primary``
    One data key per scalar (``dtype`` integer or number; tiled tables take
    scalars), small arrays inline, and optionally a ``volume`` referenced in an
    HDF5 file (``external="STREAM:"``, float32, shape ``[1, z, y, x]``).
``stream_resource``, ``stream_datum``
    Only with a volume: ``application/x-hdf5`` at ``/entry/data/data``, one row.
``event`` (seq_num 1), then ``stop`` (``success``).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
from event_model import compose_run

__all__ = [
    "HDF5_MIMETYPE",
    "VOLUME_DATASET",
    "derived_run_documents",
    "json_safe",
    "provenance",
    "publish_derived_run",
    "qualified_name",
    "software_versions",
]

VOLUME_DATASET = "/entry/data/data"
HDF5_MIMETYPE = "application/x-hdf5"

#: Distributions whose versions a derived run records.
_DISTRIBUTIONS = (
    "multiscope",
    "numpy",
    "scipy",
    "scikit-image",
    "finufft",
    "numba",
    "h5py",
    "event-model",
    "matplotlib",
)

Emit = Callable[[str, dict], object]


def software_versions() -> dict[str, str]:
    """Versions of the packages an analysis depends on (for provenance)."""
    out = {"python": platform.python_version()}
    for dist in _DISTRIBUTIONS:
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def qualified_name(func) -> str:
    """``module.qualname`` of a function, as the provenance names it."""
    return f"{func.__module__}.{func.__qualname__}"


def provenance(functions: Iterable[Callable]) -> dict:
    """The provenance keys of a derived run's start: ``software``, ``analysis_functions``."""
    return {
        "software": software_versions(),
        "analysis_functions": [qualified_name(f) for f in functions],
    }


def json_safe(value):
    """JSON-friendly copy of metadata (numpy scalars/arrays to Python)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _scalar_kind(value) -> str:
    return "integer" if isinstance(value, int | np.integer) else "number"


def derived_run_documents(
    metadata: dict,
    *,
    scalars: dict[str, float],
    volume_path: str | os.PathLike | None = None,
    volume_shape: Sequence[int] | None = None,
    arrays: dict[str, np.ndarray] | None = None,
    volume_key: str = "volume",
) -> list[tuple[str, dict]]:
    """Documents of a one-event derived run, optionally with a volume in an HDF5 file.

    Parameters
    ----------
    metadata : dict
        Start-document metadata (``plan_name``, ``derived_from``, ...); JSON-safe.
    scalars : dict of str to int or float
        Scalar data keys of the event (``dtype`` integer or number).
    volume_path : path-like, optional
        HDF5 file holding the volume at ``/entry/data/data``, shape ``(1, z, y, x)``.
    volume_shape : sequence of int, optional
        ``(z, y, x)``; required with ``volume_path``.
    arrays : dict of str to ndarray, optional
        Small array data keys of the event (sent inline).
    volume_key : str, optional
        Data key of the volume.

    Returns
    -------
    list of (name, doc)
        start, descriptor, [stream_resource, stream_datum,] event, stop.
    """
    arrays = {k: np.asarray(v) for k, v in (arrays or {}).items()}
    bundle = compose_run(metadata=metadata)
    data_keys: dict[str, dict] = {}
    if volume_path is not None:
        shape = [1, *(int(s) for s in volume_shape)]
        data_keys[volume_key] = {
            "source": f"file:{os.fspath(volume_path)}",
            "dtype": "array",
            "dtype_numpy": np.dtype(np.float32).str,
            "shape": shape,
            "external": "STREAM:",
        }
    for key, value in scalars.items():
        data_keys[key] = {"source": "derived", "dtype": _scalar_kind(value), "shape": []}
    for key, value in arrays.items():
        data_keys[key] = {
            "source": "derived",
            "dtype": "array",
            "dtype_numpy": value.dtype.str,
            "shape": list(value.shape),
        }
    desc = bundle.compose_descriptor(
        name="primary", data_keys=data_keys, hints={"derived": {"fields": list(scalars)}}
    )
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    if volume_path is not None:
        resource = bundle.compose_stream_resource(
            mimetype=HDF5_MIMETYPE,
            uri=f"file://localhost{Path(volume_path).absolute()}",
            data_key=volume_key,
            parameters={"dataset": VOLUME_DATASET, "chunk_shape": shape},
        )
        datum = resource.compose_stream_datum(
            indices={"start": 0, "stop": 1},
            seq_nums={"start": 1, "stop": 2},
            descriptor=desc.descriptor_doc,
        )
        docs += [("stream_resource", resource.stream_resource_doc), ("stream_datum", datum)]
    now = time.time()
    data = {
        **{k: int(v) if _scalar_kind(v) == "integer" else float(v) for k, v in scalars.items()},
        **{k: v.tolist() for k, v in arrays.items()},
    }
    event = desc.compose_event(data=data, timestamps={k: now for k in data}, seq_num=1)
    docs += [("event", event), ("stop", bundle.compose_stop(exit_status="success"))]
    return docs


def publish_derived_run(emit: Emit | None, metadata: dict, **documents) -> str:
    """Build a derived run (:func:`derived_run_documents`) and send it through ``emit``.

    Parameters
    ----------
    emit : callable or None
        ``emit(name, doc)`` for each document, in order; None: build only.
    metadata : dict
        Start metadata, made JSON-safe here (include :func:`provenance`).
    **documents
        ``scalars`` and the optional volume and array keywords of
        :func:`derived_run_documents`.

    Returns
    -------
    str
        The derived run's uid.
    """
    docs = derived_run_documents(json_safe(metadata), **documents)
    if emit is not None:
        for name, doc in docs:
            emit(name, doc)
    return docs[0][1]["uid"]
