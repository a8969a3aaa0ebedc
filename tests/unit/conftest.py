"""Unit-test fixtures: woci's logger back to a plain state around every test."""

import logging

import pytest

import oci_upst_session_manager as woci


@pytest.fixture(autouse=True)
def plain_woci_logger():
    """main() binds a handler to the sys.stderr of its moment and stops propagation; undo
    that so caplog sees woci's warnings and no handler outlives its captured stream."""

    def reset():
        for handler in list(woci.log().handlers):
            woci.log().removeHandler(handler)
        woci.log().propagate = True
        woci.log().setLevel(logging.NOTSET)

    reset()
    yield
    reset()
