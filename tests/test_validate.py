"""The shared value checks (gateway.config.validate) and the wording each caller keeps on top of them."""

from __future__ import annotations

import math

import pytest

from gateway.config import ConfigError
from gateway.config.validate import Refused, as_bool, as_int, as_number, integer, number
from gateway.simulator.settings import check


def refused(fn, *args, **kw) -> Refused:
    with pytest.raises(Refused) as info:
        fn(*args, **kw)
    return info.value


def test_as_int_types():
    assert as_int(3) == 3 and as_int(3.0) == 3 and type(as_int(3.0)) is int
    assert refused(as_int, True).range is False  # a bool is never a number
    assert refused(as_int, 2.5).range is False
    assert refused(as_int, 3.0, whole_floats=False).range is False
    assert refused(as_int, "3").range is False  # strings only where the source is text
    assert as_int(" 3 ", text=True) == 3
    assert refused(as_int, "3.0", text=True).range is False
    assert refused(as_int, None).range is False


def test_as_int_bounds_report_the_int():
    r = refused(as_int, 7.0, 1, 5)
    assert r.range is True and r.value == 7 and type(r.value) is int
    assert as_int(5, 1, 5) == 5 and as_int(-(10**30)) == -(10**30)


def test_as_number():
    assert as_number(2) == 2.0 and as_number("0.5", text=True) == 0.5
    assert refused(as_number, False).range is False
    assert refused(as_number, "0.5").range is False
    assert refused(as_number, 0, 0, 1, lo_open=True).range is True
    assert as_number(0, 0, 1) == 0.0
    assert refused(as_number, math.nan, 0, 1).range is True  # NaN is never in range
    r = refused(as_number, "2", 0, 1, text=True)
    assert r.range and r.value == "2"  # the raw value, as the messages quote it


def test_as_bool():
    assert [as_bool(v) for v in (True, " Yes ", "off", 1, "0")] == [True, True, False, True, False]
    with pytest.raises(Refused):
        as_bool("maybe")


def test_config_wording_is_kept():
    with pytest.raises(ConfigError, match=r"^X: expected an integer, got 'a'$"):
        integer("X", "a")
    with pytest.raises(ConfigError, match=r"^X: must be between 1 and 5, got 9$"):
        integer("X", 9.0, 1, 5)
    with pytest.raises(ConfigError, match=r"^X: must be in \(0, 1\], got '0'$"):
        number("X", "0", 0, 1, lo_open=True)
    with pytest.raises(ConfigError, match=r"^X: expected a number, got True$"):
        number("X", True, 0, 1)


@pytest.mark.parametrize(
    "update, message",
    [
        ({"latency_ms": "5"}, "latency_ms must be a number, got '5'"),
        ({"latency_ms": -1}, "latency_ms must be >= 0, got -1"),
        ({"error_rate": 2}, "error_rate must be between 0 and 1, got 2"),
        ({"error_status": 600.0}, "error_status must be between 400 and 599, got 600"),
        ({"chunk_tokens": 1.5}, "chunk_tokens must be an integer, got 1.5"),
        ({"retry_after": True}, "retry_after must be an integer, got True"),
    ],
)
def test_simulator_wording_is_kept(update, message):
    with pytest.raises(ValueError) as info:
        check(update)
    assert str(info.value) == message


def test_simulator_normalises():
    assert check({"latency_ms": 5, "response_tokens": 12.0}) == {"latency_ms": 5.0, "response_tokens": 12}
    assert type(check({"response_tokens": 12.0})["response_tokens"]) is int
