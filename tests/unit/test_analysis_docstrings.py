"""The docstring examples of the XANES and stripe-removal analysis modules run as written."""

import doctest

import pytest

from multiscope.analysis import stripe, xanes, xanes_align, xanes_mask, xanes_register


@pytest.mark.parametrize(
    "module", [xanes, xanes_mask, xanes_register, xanes_align, stripe], ids=lambda m: m.__name__
)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
