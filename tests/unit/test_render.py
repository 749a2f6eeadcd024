"""The CLI's table: aligned, one line per row, nothing a terminal would act on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qlite.cli.render import colour_wanted, format_table, printable, width


@pytest.mark.parametrize(
    "columns, rows, expected",
    [
        (["NAME", "STATE"], [], "NAME  STATE\n"),
        (
            ["NAME", "STATE"],
            [["work", "Running"], ["vault", "Halted"]],
            "NAME   STATE\nwork   Running\nvault  Halted\n",
        ),
        # empty and missing values are shown as "-", trailing blanks are dropped
        (["A", "B", "C"], [["x", None, ""]], "A  B  C\nx  -  -\n"),
        (["PROPERTY", "", "VALUE"], [["label", "-", "red"]], "PROPERTY     VALUE\nlabel     -  red\n"),
        # numbers and other values are printed with str()
        (["#", "SHA"], [[0, "ab"], [10, "cd"]], "#   SHA\n0   ab\n10  cd\n"),
        # wide characters take two columns
        (["N", "X"], [["日本", "1"], ["ab", "2"]], "N     X\n日本  1\nab    2\n"),
    ],
)
def test_format_table(columns, rows, expected):
    assert format_table(columns, rows) == expected


def test_colour_is_bold_header_and_the_labels_colour_on_the_first_cell():
    out = format_table(["NAME", "LABEL"], [["work", "blue"], ["odd", "x"]], ["blue", "default"], colour=True)
    assert out == "\x1b[1mNAME  LABEL\x1b[0m\n\x1b[1;34mwork\x1b[0m  blue\nodd   x\n"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("plain", "plain"),
        ("evil\x1b]0;title\x07", "evil?]0;title?"),
        ("two\nlines\r", "two?lines?"),
        ("tab\there", "tab?here"),
        (None, "-"),
        ("", "-"),
        ("\u200bzero-width", "?zero-width"),
    ],
)
def test_printable(value, expected):
    assert printable(value) == expected


@pytest.mark.parametrize("text, expected", [("abc", 3), ("日本", 4), ("e\u0301", 1), ("", 0)])
def test_width(text, expected):
    assert width(text) == expected


class Stream:
    def __init__(self, tty: bool):
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    "env, tty, expected",
    [
        ({}, True, True),
        ({}, False, False),
        ({"NO_COLOR": "1"}, True, False),
        ({"FORCE_COLOR": "1"}, False, True),
        ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, True, False),
        ({"TERM": "dumb"}, True, False),
    ],
)
def test_colour_wanted(monkeypatch, env, tty, expected):
    for key in ("NO_COLOR", "FORCE_COLOR", "TERM"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert colour_wanted(Stream(tty)) is expected


cells = st.one_of(st.none(), st.integers(), st.text(max_size=12))


@given(
    st.integers(1, 5).flatmap(
        lambda n: st.tuples(
            st.lists(st.text(alphabet="ABCDEFGH ", min_size=1, max_size=8), min_size=n, max_size=n),
            st.lists(st.lists(cells, min_size=n, max_size=n), max_size=6),
        )
    )
)
def test_every_row_is_one_safe_line_and_the_columns_line_up(table):
    columns, rows = table
    lines = format_table(columns, rows).split("\n")
    assert lines[-1] == "" and len(lines) == len(rows) + 2
    lines = lines[:-1]
    assert all(ch.isprintable() for line in lines for ch in line)
    # Column i starts at the same terminal column on every line.
    for i in range(1, len(columns)):
        widths = [max(width(printable(v)) for v in [columns[j], *(r[j] for r in rows)]) for j in range(i)]
        offset = sum(widths) + 2 * i
        for line, values in zip(lines, [columns, *rows], strict=True):
            cell = printable(values[i])
            assert line_at(line, offset).startswith(cell.rstrip()), (line, offset, cell)


def line_at(line: str, column: int) -> str:
    """LINE from terminal column COLUMN on."""
    seen = 0
    for index, ch in enumerate(line):
        if seen >= column:
            return line[index:]
        seen += width(ch)
    return ""
