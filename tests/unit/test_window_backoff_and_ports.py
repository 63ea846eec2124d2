"""Pure rules of the command line and the retry schedule: ports are checked by the parser, and a
request's backoff fits its batch's window."""

from __future__ import annotations

import pytest

from eventbatch.cli import _parser
from eventbatch.config import load_settings
from eventbatch.worker.scheduler import Backoff


@pytest.mark.parametrize("argv", [["serve", "--port", "99999"], ["api", "--port", "-5"],
                                  ["mock-upstream", "--port", "65536"], ["mock-upstream", "--control-port", "x"],
                                  ["worker", "--metrics-port", "70000"]])
def test_a_port_out_of_range_is_one_parser_error_not_a_traceback(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "is not a port number; give 0 to 65535" in err and "Traceback" not in err


def test_ports_in_range_parse():
    assert _parser().parse_args(["serve", "--port", "0"]).port == 0
    assert _parser().parse_args(["mock-upstream", "--port", "65535"]).port == 65535


def _total_worst_wait(b: Backoff, attempts: int) -> float:
    return sum(min(b.cap, b.base * 2 ** (n - 1)) for n in range(1, attempts))


def test_the_backoff_of_the_default_window_is_the_settings_own():
    s = load_settings({})
    b = Backoff.for_window(s)
    assert (b.base, b.cap) == (s.retry_base_seconds, s.retry_max_seconds)


@pytest.mark.parametrize("window", [60, 300, 3600])
def test_every_attempt_fits_in_a_quarter_of_a_short_window(window):
    s = load_settings({"EVENTBATCH_WINDOW_SECONDS": str(window)})
    b = Backoff.for_window(s)
    assert _total_worst_wait(b, s.max_attempts) <= window / 4 + 1e-9
    assert all(0 <= b.delay(n) <= b.cap for n in range(1, 40))
