"""`make demo`'s headings: bold on a terminal only, so a piped log has no escape codes."""

import io

import pytest

from tests.sandbox import demo


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream, environ, expected", [
    (Terminal(), {}, True),
    (Terminal(), {"TERM": "xterm-256color"}, True),
    (Terminal(), {"NO_COLOR": "1"}, False),
    (Terminal(), {"NO_COLOR": ""}, True),  # no-color.org: only a non-empty value counts
    (Terminal(), {"TERM": "dumb"}, False),
    (io.StringIO(), {}, False),
], ids=["terminal", "xterm", "no-color", "empty-no-color", "dumb", "pipe"])
def test_colour_only_on_a_terminal(stream, environ, expected):
    assert demo.use_colour(stream, environ) is expected


def test_a_piped_heading_is_plain_text(capsys, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    demo.say("First run")
    assert capsys.readouterr().out == "\n==> First run\n"
