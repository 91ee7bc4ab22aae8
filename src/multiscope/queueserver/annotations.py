"""Queueserver annotations for plan parameters of the project's own types (decision 0030).

The RE Manager validates a queued item against each plan's annotations with pydantic,
but only annotations it can rebuild by evaluating their text with ``typing``,
``collections``, ``enum`` and ``bluesky`` in scope. An annotation naming one of our
classes (``ChamberGeometry | None``) is dropped, and any value passed validation.

A parameter annotated with a dataclass receives, through the queueserver's own
``parameter_annotation_decorator``, the annotation of what a queued item can hold for
it: a JSON object of the dataclass's fields. The annotation is generated from the
dataclass's fields when the worker's namespace is set up, so it never drifts from the
code::

    typing.Optional[typing.Dict[typing.Literal['sem_fib_deg', ...], float]]

The keys must be field names; the values of one of the fields' types. pydantic
refuses ``typing.TypedDict`` on Python < 3.12 (it wants ``typing_extensions``'s,
which the manager's evaluation scope does not hold), so the type of each key is not
tied to the key: with mixed field types (``ChamberLimits``) a value of another field's
type passes the manager, and the plan refuses it when called (in the worker, before
anything moves).
"""

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable

__all__ = ["annotate_project_types", "is_plan", "project_type_annotation", "public_plans"]

_SIMPLE = (bool, int, float, str)


def _expression(tp) -> str:
    """``tp`` as text the RE Manager evaluates back (``typing`` in scope), or TypeError."""
    if tp is type(None):
        return "NoneType"
    if tp in _SIMPLE:
        return tp.__name__
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"typing.Tuple[{_expression(args[0])}, ...]"
        return f"typing.Tuple[{', '.join(_expression(a) for a in args)}]"
    if origin in (list, frozenset, set) or origin is typing.Sequence:
        return f"typing.List[{_expression(args[0])}]"
    if origin in (typing.Union, types.UnionType):
        return f"typing.Union[{', '.join(_expression(a) for a in args)}]"
    raise TypeError(f"no queueserver annotation for {tp!r}")


def project_type_annotation(cls: type, optional: bool = False) -> str:
    """The queueserver annotation of a JSON object of ``cls``'s fields.

    Parameters
    ----------
    cls : dataclass type
    optional : bool
        Also accept ``None``.

    Returns
    -------
    str
        ``typing.Dict[typing.Literal[<field names>], <the fields' types>]``, in
        ``typing.Optional[...]`` when ``optional``.
    """
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kinds = list(dict.fromkeys(_expression(hints[name]) for name in fields))
    values = kinds[0] if len(kinds) == 1 else f"typing.Union[{', '.join(kinds)}]"
    keys = ", ".join(repr(name) for name in fields)
    text = f"typing.Dict[typing.Literal[{keys}], {values}]"
    return f"typing.Optional[{text}]" if optional else text


def _dataclass_of(annotation) -> tuple[type | None, bool]:
    """The dataclass an annotation names (alone or with None), and whether None is allowed."""
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return annotation, False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        classes = [a for a in args if dataclasses.is_dataclass(a) and isinstance(a, type)]
        if len(classes) == 1:
            return classes[0], type(None) in args
    return None, False


def is_plan(obj) -> bool:
    """Whether ``obj`` is a plan: marked by bluesky's ``@plan`` or a generator function."""
    return callable(obj) and (
        getattr(obj, "_is_plan_", False) or inspect.isgeneratorfunction(inspect.unwrap(obj))
    )


def public_plans(namespace: dict) -> list[tuple[str, Callable]]:
    """The ``(name, plan)`` pairs of ``namespace`` the manager lists: plans not named ``_*``."""
    return [(name, obj) for name, obj in list(namespace.items())
            if not name.startswith("_") and is_plan(obj)]  # fmt: skip


def annotate_project_types(namespace: dict) -> list[str]:
    """Give every plan parameter annotated with a dataclass an annotation the manager checks.

    Replaces each such plan in ``namespace`` by the queueserver's
    ``parameter_annotation_decorator`` wrapper of it (same name, signature,
    docstring and marks); plans without such parameters are left as they are.

    Parameters
    ----------
    namespace : dict
        The RE Worker's namespace (or any dict of plans).

    Returns
    -------
    list of str
        ``plan(parameter)`` for each parameter annotated.
    """
    from bluesky_queueserver import parameter_annotation_decorator

    annotated = []
    for name, obj in public_plans(namespace):
        parameters: dict[str, dict] = {}
        for parameter in inspect.signature(obj).parameters.values():
            cls, optional = _dataclass_of(parameter.annotation)
            if cls is not None:
                text = project_type_annotation(cls, optional)
                parameters[parameter.name] = {"annotation": text}
                annotated.append(f"{name}({parameter.name})")
        if parameters:
            decorate: Callable = parameter_annotation_decorator({"parameters": parameters})
            namespace[name] = decorate(obj)
    return annotated
