"""rootfs.conf parsing, the host's apt mirrors, and the mmdebstrap command."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from qlite.core.rootfs import (
    DEFAULT_MIRROR,
    RootfsConfig,
    host_debian_uris,
    mirror_lines,
    mmdebstrap_command,
    parse_rootfs_conf,
)
from qlite.errors import InvalidValue

GOOD = [
    ("suite = bookworm", RootfsConfig(suite="bookworm")),
    ("suite=bookworm", RootfsConfig(suite="bookworm")),
    ("  suite   =   trixie  ", RootfsConfig(suite="trixie")),
    ("# a comment\n\nsuite = bookworm # trailing comment\n", RootfsConfig(suite="bookworm")),
    ("suite = bookworm\nvariant = apt", RootfsConfig(suite="bookworm", variant="apt")),
    (
        "suite = bookworm\ncomponents = main contrib non-free-firmware",
        RootfsConfig(suite="bookworm", components=("main", "contrib", "non-free-firmware")),
    ),
    (
        "suite = bookworm\ninclude = ca-certificates, sudo  python3",
        RootfsConfig(suite="bookworm", include=("ca-certificates", "sudo", "python3")),
    ),
    ("suite = bookworm\ninclude = a,b,c", RootfsConfig(suite="bookworm", include=("a", "b", "c"))),
    ("suite = bookworm\ninclude =", RootfsConfig(suite="bookworm")),
    ("suite = bookworm\ninclude = sudo,", RootfsConfig(suite="bookworm", include=("sudo",))),
    ("suite = bookworm\ninclude = , sudo", RootfsConfig(suite="bookworm", include=("sudo",))),
    ("suite = old\nsuite = bookworm", RootfsConfig(suite="bookworm")),
    ("\r\nsuite = bookworm\r\n", RootfsConfig(suite="bookworm")),
]


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_parse_good(text, expected):
    assert parse_rootfs_conf(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "'suite' is required"),
        ("# nothing\n", "'suite' is required"),
        ("variant = minbase", "'suite' is required"),
        ("suite =", "'suite' is empty"),
        ("suite = # comment only", "'suite' is empty"),
        ("suite bookworm", "rootfs.conf:1: expected 'key = value'"),
        ("suite = bookworm\n\njunk", "rootfs.conf:3:"),
        ("suite = bookworm\nmirror = http://x", "unknown key 'mirror'"),
        ("suite = bookworm\nSuite = x", "unknown key 'Suite'"),
        ("suite = bookworm\n= x", "unknown key ''"),
    ],
)
def test_parse_bad(text, fragment):
    with pytest.raises(InvalidValue, match=fragment) as exc:
        parse_rootfs_conf(text)
    assert "\n" not in str(exc.value)


conf_texts = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.tuples(
            st.sampled_from(["suite", "variant", "components", "include", "x", "", " suite"]),
            st.sampled_from(["=", "", " = ", "=="]),
            st.text(alphabet="abc ,#=\t-", max_size=20),
        ),
        max_size=6,
    ).map(lambda items: "\n".join(k + s + v for k, s, v in items)),
)


@settings(max_examples=300, deadline=None)
@given(conf_texts)
def test_parse_raises_only_invalid_value(text):
    try:
        cfg = parse_rootfs_conf(text)
    except InvalidValue as exc:
        assert "\n" not in str(exc)
    else:
        assert cfg.suite


@settings(max_examples=300, deadline=None)
@given(conf_texts)
@example("suite = bookworm\nvariant =")
@example("suite = bookworm\ncomponents =")
@example("suite = bookworm\ninclude = sudo,")
def test_a_parsed_config_has_no_empty_values(text):
    """Whatever it accepts must make a valid mmdebstrap command line: no
    empty --variant=, no empty component list, no empty package name."""
    try:
        cfg = parse_rootfs_conf(text)
    except InvalidValue:
        return
    assert cfg.variant, cfg
    assert cfg.components and all(cfg.components), cfg
    assert all(cfg.include), cfg


# -- the host's apt sources ---------------------------------------------------------


def write_sources(tmp_path, deb822: dict[str, str] | None = None, one_line: str | None = None):
    d = tmp_path / "sources.list.d"
    d.mkdir()
    for name, text in (deb822 or {}).items():
        (d / name).write_text(text)
    lst = tmp_path / "sources.list"
    if one_line is not None:
        lst.write_text(one_line)
    return d, lst


DEBIAN_SOURCES = """\
Types: deb deb-src
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

# the security archive
Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBF...
 -----END PGP PUBLIC KEY BLOCK-----
"""


def test_deb822_multi_stanza(tmp_path):
    d, lst = write_sources(tmp_path, {"debian.sources": DEBIAN_SOURCES})
    assert host_debian_uris(d, lst) == {
        "bookworm": "http://mirror.example/debian",
        "bookworm-updates": "http://mirror.example/debian",
        "bookworm-security": "http://security.example/debian-security",
    }


def test_deb822_skips_deb_src_only_and_takes_the_first_uri(tmp_path):
    d, lst = write_sources(
        tmp_path,
        {
            "a.sources": "Types: deb-src\nURIs: http://src.example/debian\nSuites: sid\n",
            "b.sources": "Types: deb\nURIs: http://one.example/debian http://two.example/debian\nSuites: trixie\n",
        },
    )
    assert host_debian_uris(d, lst) == {"trixie": "http://one.example/debian"}


def test_deb822_continuation_lines(tmp_path):
    d, lst = write_sources(
        tmp_path,
        {
            "c.sources": "Types: deb\nURIs:\n http://cont.example/debian\nSuites: bookworm\n  bookworm-updates\n",
        },
    )
    assert host_debian_uris(d, lst) == {
        "bookworm": "http://cont.example/debian",
        "bookworm-updates": "http://cont.example/debian",
    }


def test_deb822_disabled_stanza_is_ignored(tmp_path):
    d, lst = write_sources(
        tmp_path,
        {
            "a.sources": "Enabled: no\nTypes: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\n",
            "b.sources": "Types: deb\nURIs: http://enabled.example/debian\nSuites: bookworm\n",
        },
    )
    assert host_debian_uris(d, lst) == {"bookworm": "http://enabled.example/debian"}


ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian.gpg] http://opt.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb http://plain.example/debian bookworm-updates main contrib
deb [signed-by=/k.gpg] http://sec.example/debian-security bookworm-security main
deb http://later.example/debian bookworm main
deb incomplete
"""


def test_one_line_format(tmp_path):
    d, lst = write_sources(tmp_path, one_line=ONE_LINE)
    assert host_debian_uris(d, lst) == {
        "bookworm": "http://opt.example/debian",
        "bookworm-updates": "http://plain.example/debian",
        "bookworm-security": "http://sec.example/debian-security",
    }


def test_deb822_wins_over_sources_list(tmp_path):
    d, lst = write_sources(
        tmp_path,
        {"debian.sources": "Types: deb\nURIs: http://deb822.example/debian\nSuites: bookworm\n"},
        one_line="deb http://oneline.example/debian bookworm main\ndeb http://oneline.example/debian sid main\n",
    )
    assert host_debian_uris(d, lst) == {
        "bookworm": "http://deb822.example/debian",
        "sid": "http://oneline.example/debian",
    }


def test_missing_files_give_nothing(tmp_path):
    assert host_debian_uris(tmp_path / "nope.d", tmp_path / "nope.list") == {}


def test_only_dot_sources_files_are_read_as_deb822(tmp_path):
    d, lst = write_sources(
        tmp_path,
        {
            "x.sources.bak": "Types: deb\nURIs: http://bak.example/debian\nSuites: bookworm\n",
        },
    )
    assert host_debian_uris(d, lst) == {}


# -- mirrors and the command --------------------------------------------------------


@pytest.mark.parametrize(
    ("uris", "expected"),
    [
        (
            {},
            [
                f"deb {DEFAULT_MIRROR} bookworm main",
                f"deb {DEFAULT_MIRROR} bookworm-updates main",
            ],
        ),
        (
            {"bookworm": "http://m/debian"},
            [
                "deb http://m/debian bookworm main",
                "deb http://m/debian bookworm-updates main",
            ],
        ),
        (
            {
                "bookworm": "http://m/debian",
                "bookworm-updates": "http://u/debian",
                "bookworm-security": "http://s/debian-security",
                "sid": "http://x",
            },
            [
                "deb http://m/debian bookworm main",
                "deb http://u/debian bookworm-updates main",
                "deb http://s/debian-security bookworm-security main",
            ],
        ),
    ],
)
def test_mirror_lines(uris, expected):
    assert mirror_lines(RootfsConfig(suite="bookworm"), uris) == expected


def test_mirror_lines_components():
    cfg = RootfsConfig(suite="trixie", components=("main", "contrib"))
    assert mirror_lines(cfg, {}) == [
        f"deb {DEFAULT_MIRROR} trixie main contrib",
        f"deb {DEFAULT_MIRROR} trixie-updates main contrib",
    ]


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (
            RootfsConfig(suite="bookworm"),
            [
                "mmdebstrap",
                "--variant=minbase",
                "--format=tar",
                "bookworm",
                "/t/rootfs.tar",
                "deb http://m bookworm main",
                "deb http://m bookworm-updates main",
            ],
        ),
        (
            RootfsConfig(suite="bookworm", variant="apt", include=("sudo", "ca-certificates")),
            [
                "mmdebstrap",
                "--variant=apt",
                "--format=tar",
                "--include=sudo,ca-certificates",
                "bookworm",
                "/t/rootfs.tar",
                "deb http://m bookworm main",
                "deb http://m bookworm-updates main",
            ],
        ),
    ],
)
def test_mmdebstrap_command(cfg, expected):
    assert mmdebstrap_command(cfg, "/t/rootfs.tar", {"bookworm": "http://m"}) == expected


def test_the_shipped_rootfs_conf_parses():
    from qlite.paths import SHARE_DIR

    conf = SHARE_DIR / "images" / "debian-12" / "rootfs.conf"
    assert conf.is_file(), "the default template must be built from an mmdebstrap rootfs"
    cfg = parse_rootfs_conf(conf.read_text())
    assert cfg.suite == "bookworm"
    assert all(cfg.include)
