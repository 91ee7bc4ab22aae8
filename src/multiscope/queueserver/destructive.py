"""Queued destructive plans name their cut: a restarted item cannot cut twice.

The RE Manager puts an item ended by an abort, a halt or a failure back at the head
of the queue, with the arguments it was added with; the next ``queue_start`` runs it
again from its start. A laser cut left to take "the next cut number" would then cut
its path a second time. Each plan that numbers its cuts (a ``cut_number`` parameter:
the mill refuses a number it has made, before anything moves or fires) is given to
the manager with ``cut_number`` required, so a queued cut always carries its number
and a restarted item is refused by the mill instead of cutting again. In a session
the parameter keeps its default (the next number).
"""

import functools
import inspect

from .annotations import public_plans

__all__ = ["CUT_NUMBER", "require_cut_numbers"]

#: The parameter by which a plan names the cut it makes.
CUT_NUMBER = "cut_number"


def require_cut_numbers(namespace: dict) -> list[str]:
    """Make ``cut_number`` a required parameter of every plan in ``namespace`` that has one.

    Each such plan is replaced by a wrapper with the same name, docstring and marks
    whose signature (what the manager validates an item against) has ``cut_number:
    int`` without a default; the plan itself is called unchanged.

    Parameters
    ----------
    namespace : dict
        Plans by name, changed in place (the RE Worker's namespace).

    Returns
    -------
    list of str
        The names of the plans changed.
    """
    changed = []
    for name, obj in public_plans(namespace):
        signature = inspect.signature(obj)
        parameter = signature.parameters.get(CUT_NUMBER)
        if parameter is None or parameter.default is inspect.Parameter.empty:
            continue
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            # A required parameter after defaulted positionals is no valid signature:
            # name the plan and the rule instead of inspect's bare ValueError.
            raise TypeError(f"{name}: {CUT_NUMBER} must be keyword-only (queued cuts need it)")
        required = parameter.replace(default=inspect.Parameter.empty, annotation=int)
        namespace[name] = _with_signature(obj, signature.replace(parameters=[
            required if p.name == CUT_NUMBER else p for p in signature.parameters.values()
        ]))  # fmt: skip
        changed.append(name)
    return changed


def _with_signature(plan, signature: inspect.Signature):
    @functools.wraps(plan)
    def queued(*args, **kwargs):
        return (yield from plan(*args, **kwargs))

    queued.__signature__ = signature
    return queued
