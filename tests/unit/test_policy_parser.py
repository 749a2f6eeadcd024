"""The qrexec policy parser and loader: tokens, actions, includes, files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qlite.errors import AccessDenied, PolicySyntaxError
from qlite.rpc.policy import Policy, Rule, lint, load_policy, parse_policy
from qlite.rpc.policy.files import c_locale_sorted, read_policy_path, valid_file_name
from qlite.rpc.policy.parser import MAX_INCLUDE_DEPTH
from qlite.rpc.policy.tokens import QubeName

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "policies"


def one(line: str) -> Rule:
    rules = parse_policy(line, "x.policy")
    assert len(rules) == 1
    return rules[0]


def syntax_error(text: str, filename: str = "x.policy", loader=None) -> str:
    with pytest.raises(PolicySyntaxError) as info:
        parse_policy(text, filename, loader)
    return str(info.value)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- lines, tokens and actions --------------------------------------------------


@pytest.mark.parametrize(
    "line, service, argument, source, target, action, params",
    [
        # the service and argument columns
        ("qubes.Filecopy * @anyvm @anyvm ask", "qubes.Filecopy", None, "@anyvm", "@anyvm", "ask", {}),
        ("* * @anyvm @anyvm deny", "*", None, "@anyvm", "@anyvm", "deny", {}),
        ("svc + work vault allow", "svc", "", "work", "vault", "allow", {}),
        ("svc +foo work vault allow", "svc", "foo", "work", "vault", "allow", {}),
        ("svc +a+b.c_d-e work vault allow", "svc", "a+b.c_d-e", "work", "vault", "allow", {}),
        # every source token
        ("svc * dom0 work allow", "svc", None, "dom0", "work", "allow", {}),
        ("svc * @adminvm work allow", "svc", None, "@adminvm", "work", "allow", {}),
        ("svc * * work allow", "svc", None, "*", "work", "allow", {}),
        ("svc * @tag:anon-vm work deny", "svc", None, "@tag:anon-vm", "work", "deny", {}),
        ("svc * @type:TemplateVM work deny", "svc", None, "@type:TemplateVM", "work", "deny", {}),
        ("svc * @dispvm:default-dvm work deny", "svc", None, "@dispvm:default-dvm", "work", "deny", {}),
        ("svc * @dispvm:@tag:dvm work deny", "svc", None, "@dispvm:@tag:dvm", "work", "deny", {}),
        # every target token
        ("svc * work * deny", "svc", None, "work", "*", "deny", {}),
        ("svc * work dom0 allow", "svc", None, "work", "dom0", "allow", {}),
        ("svc * work @adminvm allow", "svc", None, "work", "@adminvm", "allow", {}),
        ("svc * work @default ask", "svc", None, "work", "@default", "ask", {}),
        ("svc * work @dispvm allow", "svc", None, "work", "@dispvm", "allow", {}),
        ("svc * work @dispvm:default-dvm allow", "svc", None, "work", "@dispvm:default-dvm", "allow", {}),
        ("svc * work @dispvm:@tag:dvm allow", "svc", None, "work", "@dispvm:@tag:dvm", "allow", {}),
        ("svc * work @tag:work allow", "svc", None, "work", "@tag:work", "allow", {}),
        ("svc * work @type:AppVM allow", "svc", None, "work", "@type:AppVM", "allow", {}),
        ("svc * work @type:AdminVM allow", "svc", None, "work", "@type:AdminVM", "allow", {}),
        # every action with every parameter it takes
        (
            "svc * work vault allow target=personal user=root notify=yes autostart=no",
            "svc",
            None,
            "work",
            "vault",
            "allow",
            {"target": "personal", "user": "root", "notify": "yes", "autostart": "no"},
        ),
        ("svc * work vault deny notify=no", "svc", None, "work", "vault", "deny", {"notify": "no"}),
        (
            "svc * work @default ask target=vault default_target=vault user=user notify=yes autostart=yes",
            "svc",
            None,
            "work",
            "@default",
            "ask",
            {"target": "vault", "default_target": "vault", "user": "user", "notify": "yes", "autostart": "yes"},
        ),
        ("svc * work @default allow target=dom0", "svc", None, "work", "@default", "allow", {"target": "dom0"}),
        ("svc * work @default allow target=@adminvm", "svc", None, "work", "@default", "allow", {"target": "@adminvm"}),
        ("svc * work @default allow target=@dispvm", "svc", None, "work", "@default", "allow", {"target": "@dispvm"}),
        # qrexec's own parser tests
        (
            "test.Service +argument @tag:tag1 @type:AppVM ask target=test-vm2 user=user",
            "test.Service",
            "argument",
            "@tag:tag1",
            "@type:AppVM",
            "ask",
            {"target": "test-vm2", "user": "user"},
        ),
        (
            "test.Service +argument @anyvm @default allow target=@dispvm:test-vm2",
            "test.Service",
            "argument",
            "@anyvm",
            "@default",
            "allow",
            {"target": "@dispvm:test-vm2"},
        ),
        (
            "test.Service +argument @anyvm @default ask default_target=test-vm1",
            "test.Service",
            "argument",
            "@anyvm",
            "@default",
            "ask",
            {"default_target": "test-vm1"},
        ),
        (
            "test.Service +argument @anyvm @adminvm ask default_target=@adminvm",
            "test.Service",
            "argument",
            "@anyvm",
            "@adminvm",
            "ask",
            {"default_target": "@adminvm"},
        ),
        # whitespace: tabs, runs of blanks, leading and trailing blanks
        (
            "  qubes.GetDate\t*\t@anyvm   @anyvm\tallow  target=dom0  ",
            "qubes.GetDate",
            None,
            "@anyvm",
            "@anyvm",
            "allow",
            {"target": "dom0"},
        ),
    ],
)
def test_valid_lines(line, service, argument, source, target, action, params):
    rule = one(line)
    assert (rule.service, rule.argument, str(rule.source), str(rule.target), rule.action) == (
        service,
        argument,
        source,
        target,
        action,
    )
    assert dict(rule.params) == params
    assert (rule.file, rule.line) == ("x.policy", 1)


def test_rule_params_are_read_only_and_rules_compare_by_value():
    rule = one("svc * work vault allow target=personal")
    with pytest.raises(TypeError):
        rule.params["target"] = "vault"  # type: ignore[index]
    assert rule == one("svc * work vault allow target=personal")
    assert hash(rule) == hash(one("svc * work vault allow target=personal"))
    built = Rule("svc", None, QubeName("work"), QubeName("vault"), "allow", {"user": "root"}, "f", 1)
    with pytest.raises(TypeError):
        built.params["user"] = "x"  # type: ignore[index]


def test_comments_blank_lines_and_line_numbers():
    text = (
        "# a comment\n"
        "\n"
        "   # an indented comment with trailing blanks   \n"
        "svc * work vault allow\n"
        "\t\n"
        "svc * work @anyvm deny\r\n"
        "#svc * work vault allow\n"
    )
    rules = parse_policy(text, "/etc/qlite/policy.d/30-user.policy")
    assert [(r.line, r.action) for r in rules] == [(4, "allow"), (6, "deny")]
    assert all(r.file == "/etc/qlite/policy.d/30-user.policy" for r in rules)
    assert parse_policy("", "x.policy") == []


@pytest.mark.parametrize(
    "line, message",
    [
        # fields
        ("svc * work vault", "expected SERVICE +ARGUMENT SOURCE TARGET ACTION"),
        ("svc", "got 1 words"),
        # service and argument
        ("qubes+Filecopy * work vault allow", "invalid service name 'qubes+Filecopy'"),
        ("qubes/Filecopy * work vault allow", "invalid service name"),
        ("svc foo work vault allow", "must be '*' or start with '+'"),
        ("svc +a/b work vault allow", "invalid argument '+a/b'"),
        ("* +argument @anyvm @default allow target=work", "a '*' service takes only a '*' argument"),
        # tokens
        ("svc * @invalid work allow", "invalid source '@invalid'"),
        ("svc * work @invalid deny", "invalid target '@invalid'"),
        ("svc * @default work allow", "'@default' cannot be used as a source"),
        ("svc * @dispvm work allow", "'@dispvm' cannot be used as a source"),
        ("svc * work @tag: allow", "invalid target '@tag:'"),
        ("svc * @tag:@x work allow", "invalid source '@tag:@x'"),
        ("svc * work @type:AppVm allow", "the type must be one of"),
        ("svc * work @type: allow", "invalid target '@type:'"),
        ("svc * work @dispvm: allow", "invalid target '@dispvm:'"),
        ("svc * work @dispvm:@tag: allow", "invalid target '@dispvm:@tag:'"),
        ("svc * work @dispvm:@type:AppVM allow", "invalid target"),
        ("svc * work bad$name allow", "not a qube name"),
        ("svc * 1work vault allow", "invalid source '1work'"),
        # actions
        ("svc * work vault permit", "invalid action 'permit'"),
        ("svc * work vault Allow", "invalid action 'Allow'"),
        # parameters
        ("svc * work vault allow extra", "parameter 'extra' is not KEY=VALUE"),
        ("svc * work vault allow # no inline comments", "parameter '#' is not KEY=VALUE"),
        ("svc * work vault allow invalid=xx", "unknown parameter 'invalid'"),
        ("svc * work vault deny target=work", "deny does not take target="),
        ("svc * work vault deny user=user", "deny does not take user="),
        ("svc * work vault deny default_target=work", "deny does not take default_target="),
        ("svc * work vault deny autostart=no", "deny does not take autostart="),
        ("svc * work vault allow default_target=work", "allow does not take default_target="),
        ("svc * work vault allow notify", "parameter 'notify' is not KEY=VALUE"),
        ("svc * work vault allow notify=xx", "notify= must be yes or no, not 'xx'"),
        ("svc * work vault ask autostart=true", "autostart= must be yes or no"),
        ("svc * work vault allow user=root user=user", "parameter 'user' given twice"),
        ("svc * work vault allow user=", "invalid user= ''"),
        ("svc * work vault allow user=a;b", "invalid user="),
        ("svc * work vault allow target=", "target= must be a qube name"),
        # @default and redirects
        ("svc * work @default allow", "allow to @default needs target="),
        ("test.Service +argument @anyvm @default allow", "allow to @default needs target="),
        (
            "svc * work @default allow target=@tag:x",
            "target= must be a qube name, dom0, @adminvm, @dispvm or @dispvm:NAME",
        ),
        ("svc * work @anyvm allow target=@type:AppVM", "not '@type:AppVM'"),
        ("svc * work @anyvm allow target=@anyvm", "not '@anyvm'"),
        ("svc * work @anyvm allow target=*", "not '*'"),
        ("svc * work @anyvm allow target=@default", "not '@default'"),
        ("svc * work @anyvm ask target=@dispvm:@tag:dvm", "not '@dispvm:@tag:dvm'"),
        ("svc * work @anyvm ask default_target=@tag:x", "default_target= must be a qube name"),
        # directives
        ("!compat-4.0", "!compat-4.0 is not supported"),
        ("!includes x", "unknown directive '!includes'"),
        ("!include", "!include takes exactly one path"),
        ("!include a b", "!include takes exactly one path"),
        ("!include-service svc * ", "!include-service takes SERVICE ARGUMENT FILE"),
        ("!include-service svc foo file", "must be '*' or start with '+'"),
        ("!include-service * +x file", "a '*' service takes only a '*' argument"),
        ("!include file", "includes are not available"),
    ],
)
def test_syntax_errors_name_the_file_and_line(line, message):
    text = "# first line\nsvc * work vault allow\n" + line + "\nsvc * work vault deny\n"
    error = syntax_error(text)
    assert error.startswith("x.policy:3: "), error
    assert message in error
    assert "\n" not in error


def test_policy_syntax_error_is_an_access_denied():
    with pytest.raises(AccessDenied):
        parse_policy("svc * work vault maybe", "x.policy")


# -- includes -------------------------------------------------------------------


def test_include_relative_and_absolute(tmp_path):
    other = write(tmp_path / "lib" / "other.policy", "# other\nsvc * work @anyvm deny\n")
    main = write(
        tmp_path / "main.policy",
        f"a * work vault allow\n!include lib/other.policy\n!include {other}\nb * work vault allow\n",
    )
    text, name = read_policy_path(str(main))
    rules = parse_policy(text, name, read_policy_path)
    assert [(r.service, Path(r.file).name, r.line) for r in rules] == [
        ("a", "main.policy", 1),
        ("svc", "other.policy", 2),
        ("svc", "other.policy", 2),
        ("b", "main.policy", 4),
    ]
    assert rules[1].file == str(other.resolve())


def test_nested_include_is_relative_to_the_including_file(tmp_path):
    write(tmp_path / "a" / "b" / "leaf.policy", "leaf * work vault allow\n")
    write(tmp_path / "a" / "mid.policy", "!include b/leaf.policy\n")
    text = "!include a/mid.policy\n"
    rules = parse_policy(text, str(tmp_path / "top.policy"), read_policy_path)
    assert [r.service for r in rules] == ["leaf"]


def test_include_dir_reads_policy_files_in_c_locale_order(tmp_path):
    d = tmp_path / "inc"
    write(d / "9-b.policy", "nine * work vault allow\n")
    write(d / "10-a.policy", "ten * work vault allow\n")
    write(d / "a.policy", "letter * work vault allow\n")
    write(d / "README", "not policy\n")
    write(d / ".hidden.policy", "broken line\n")
    write(d / "notes.policy~", "broken line\n")
    (d / "sub.policy").mkdir()  # a directory is not a policy file
    rules = parse_policy(
        "first * work vault allow\n!include-dir inc\nlast * work vault allow\n",
        str(tmp_path / "main.policy"),
        read_policy_path,
    )
    assert [r.service for r in rules] == ["first", "ten", "nine", "letter", "last"]


def test_include_dir_empty_is_fine_and_missing_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    main = str(tmp_path / "main.policy")
    assert parse_policy("!include-dir empty\n", main, read_policy_path) == []
    error = syntax_error("\n!include-dir missing\n", main, read_policy_path)
    assert error.startswith(f"{main}:2: cannot read {tmp_path}/missing/: No such file or directory")


def test_include_dir_with_a_bad_file_name_is_an_error(tmp_path):
    write(tmp_path / "inc" / "10-ok.policy", "svc * work vault allow\n")
    write(tmp_path / "inc" / "Z.policy", "svc * work vault allow\n")
    main = str(tmp_path / "main.policy")
    error = syntax_error("# x\n!include-dir inc\n", main, read_policy_path)
    assert error.startswith(f"{main}:2: invalid policy file name 'Z.policy' in inc")


def test_include_service_reads_the_old_format(tmp_path):
    write(
        tmp_path / "qubes.Filecopy",
        (
            "## 4.0 format\n"
            "@tag:work   @default    ask\n"
            "$tag:work   $tag:work   allow\n"
            "@anyvm      @dispvm     ask,default_target=$dispvm\n"
            "$include:more\n"
        ),
    )
    write(tmp_path / "more", "@anyvm @anyvm deny notify=no\n")
    rules = parse_policy(
        "!include-service qubes.Filecopy + qubes.Filecopy\n!include-service * * more\n",
        str(tmp_path / "main.policy"),
        read_policy_path,
    )
    assert [
        (r.service, r.argument, str(r.source), str(r.target), r.action, dict(r.params), Path(r.file).name, r.line)
        for r in rules
    ] == [
        ("qubes.Filecopy", "", "@tag:work", "@default", "ask", {}, "qubes.Filecopy", 2),
        ("qubes.Filecopy", "", "@tag:work", "@tag:work", "allow", {}, "qubes.Filecopy", 3),
        ("qubes.Filecopy", "", "@anyvm", "@dispvm", "ask", {"default_target": "@dispvm"}, "qubes.Filecopy", 4),
        ("qubes.Filecopy", "", "@anyvm", "@anyvm", "deny", {"notify": "no"}, "more", 1),
        ("*", None, "@anyvm", "@anyvm", "deny", {"notify": "no"}, "more", 1),
    ]


@pytest.mark.parametrize(
    "line, message",
    [
        ("@anyvm @anyvm", "expected SOURCE TARGET ACTION"),
        ("@dispvm @default allow", "'@dispvm' cannot be used as a source"),
        ("@anyvm @default allow", "allow to @default needs target="),
        ("@anyvm @default allow,target=@tag:x", "target= must be a qube name"),
        ("@anyvm @anyvm deny,user=user", "deny does not take user="),
        ("!include-dir x", "only !include may appear in a !include-service file"),
    ],
)
def test_include_service_errors_name_the_included_file(tmp_path, line, message):
    old = write(tmp_path / "old", "# 4.0\n" + line + "\n")
    main = str(tmp_path / "main.policy")
    error = syntax_error("!include-service svc * old\n", main, read_policy_path)
    assert error.startswith(f"{old}:2: "), error
    assert message in error


def test_include_loop_is_an_error_at_the_line_that_closes_it(tmp_path):
    a = write(tmp_path / "a.policy", "svc * work vault allow\n!include b.policy\n")
    b = write(tmp_path / "b.policy", "# b\n\n!include a.policy\n")
    text, name = read_policy_path(str(a))
    error = syntax_error(text, name, read_policy_path)
    assert error == f"{b}:3: include loop: {a} -> {b} -> {a}"


def test_self_include_and_include_dir_of_own_directory_are_loops(tmp_path):
    me = write(tmp_path / "me.policy", "!include me.policy\n")
    assert syntax_error(me.read_text(), str(me), read_policy_path) == f"{me}:1: include loop: {me} -> {me}"
    d = tmp_path / "d"
    own = write(d / "10-own.policy", "!include-dir .\n")
    error = syntax_error("!include-dir d\n", str(tmp_path / "main.policy"), read_policy_path)
    assert error.startswith(f"{own}:1: include loop: {own} -> {own}")


def test_include_depth_is_bounded(tmp_path):
    depth = MAX_INCLUDE_DEPTH + 3
    for i in range(depth):
        write(tmp_path / f"f{i}.policy", f"!include f{i + 1}.policy\n")
    write(tmp_path / f"f{depth}.policy", "svc * work vault allow\n")
    error = syntax_error("!include f0.policy\n", str(tmp_path / "main.policy"), read_policy_path)
    assert f"includes nest deeper than {MAX_INCLUDE_DEPTH} files" in error
    assert error.startswith(str(tmp_path / f"f{MAX_INCLUDE_DEPTH - 1}.policy") + ":1: ")


@pytest.mark.parametrize(
    "line, missing",
    [
        ("!include missing.policy", "missing.policy"),
        ("!include-service svc * missing", "missing"),
        ("!include /nonexistent/x.policy", "/nonexistent/x.policy"),
    ],
)
def test_missing_include_file_is_an_error(tmp_path, line, missing):
    main = str(tmp_path / "main.policy")
    error = syntax_error("svc * work vault allow\n" + line + "\n", main, read_policy_path)
    assert error == f"{main}:2: cannot read {tmp_path / missing}: No such file or directory"


def test_include_of_a_directory_or_a_fifo_is_an_error(tmp_path):
    (tmp_path / "dir.policy").mkdir()
    os.mkfifo(tmp_path / "fifo")
    main = str(tmp_path / "main.policy")
    assert syntax_error("!include dir.policy\n", main, read_policy_path).endswith("dir.policy: not a regular file")
    assert syntax_error("!include fifo\n", main, read_policy_path).endswith("fifo: not a regular file")


def test_include_loader_errors_are_wrapped_with_the_directive_location():
    def loader(path):
        if path == "boom":
            raise PolicySyntaxError("loader says no")
        return "svc * work vault allow\n", path

    assert [r.file for r in parse_policy("!include ok\n", "x.policy", loader)] == ["ok"]
    assert syntax_error("\n!include boom\n", "x.policy", loader) == "x.policy:2: cannot read boom: loader says no"


# -- files and directories ----------------------------------------------------


def test_c_locale_order():
    assert c_locale_sorted(["a", "Z", "9-b", "10-a", "_x", "-y"]) == ["-y", "10-a", "9-b", "Z", "_x", "a"]


@pytest.mark.parametrize(
    "name, valid",
    [
        ("90-default.policy", True),
        ("30-user.policy", True),
        ("a_b.c-d.policy", True),
        ("x.policy", True),
        ("Z.policy", False),
        ("30 user.policy", False),
        ("30-ü.policy", False),
        ("30-user.Policy", False),
        (".hidden.policy", False),
        ("README", False),
        ("30-user.policy.swp", False),
    ],
)
def test_file_names(name, valid):
    assert valid_file_name(name) is valid


def test_admin_file_replaces_the_shipped_one_and_files_merge_in_name_order(tmp_path):
    shipped, admin = tmp_path / "shipped", tmp_path / "admin"
    write(shipped / "90-default.policy", "shipped90 * @anyvm @anyvm ask\n")
    write(shipped / "50-tools.policy", "shipped50 * @anyvm @anyvm ask\n")
    write(admin / "90-default.policy", "admin90 * @anyvm @anyvm deny\n")
    write(admin / "30-user.policy", "admin30 * @anyvm @anyvm allow\n")
    write(admin / "README", "ignored\n")
    policy = load_policy([shipped, admin])
    assert policy.error is None
    assert [r.service for r in policy.rules] == ["admin30", "shipped50", "admin90"]
    assert policy.rules[0].file == str((admin / "30-user.policy").resolve())
    # the order of DIRS is precedence: the later directory wins
    assert [r.service for r in load_policy([admin, shipped]).rules] == ["admin30", "shipped50", "shipped90"]


def test_an_empty_admin_file_removes_the_shipped_rules(tmp_path):
    write(tmp_path / "admin" / "90-default.policy", "")
    assert load_policy([SHIPPED, tmp_path / "admin"]) == Policy(rules=())


def test_load_order_is_c_locale(tmp_path):
    for name in ("a", "9-b", "10-a", "_u", "0.x"):
        write(tmp_path / f"{name}.policy", f"svc +{name.replace('_', 'u')} @anyvm @anyvm allow\n")
    assert [r.argument for r in load_policy([tmp_path]).rules] == ["0.x", "10-a", "9-b", "uu", "a"]


def test_missing_directories_hold_no_rules(tmp_path):
    assert load_policy([tmp_path / "nope", SHIPPED, tmp_path / "nope2"]) == load_policy([SHIPPED])
    assert load_policy([]) == Policy(rules=())


def test_shipped_policy_is_valid():
    assert lint([SHIPPED]) == []
    policy = load_policy([SHIPPED])
    assert policy.error is None
    assert {r.service for r in policy.rules} == {
        "qubes.Filecopy",
        "qubes.OpenInVM",
        "qubes.VMShell",
        "qubes.VMExec",
        "qubes.GetDate",
        "qubes.ConnectTCP",
    }
    assert all(r.file == str(SHIPPED / "90-default.policy") for r in policy.rules)


@pytest.mark.parametrize(
    "files, error",
    [
        (
            {"30-user.policy": "svc * work vault allow\n\nsvc * work vault sometimes\n"},
            "{d}/30-user.policy:3: invalid action 'sometimes'",
        ),
        ({"Z.policy": "svc * work vault allow\n"}, "{d}/Z.policy:0: invalid policy file name"),
        ({"30-user.policy": b"svc * work vault allow\n\xff\n"}, "{d}/30-user.policy:0: cannot read: not UTF-8 text"),
        ({"30-user.policy": "!include nope.policy\n"}, "{d}/30-user.policy:1: cannot read {d}/nope.policy"),
        (
            {"30-user.policy": "svc * work vault allow\n", "40-x.policy": "!include 30-user.policy\n!include ../\n"},
            "{d}/40-x.policy:2: cannot read {parent}: not a regular file",
        ),
    ],
)
def test_a_broken_file_breaks_the_whole_policy(tmp_path, files, error):
    admin = tmp_path.resolve() / "admin"
    admin.mkdir()
    for name, content in files.items():
        (admin / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    policy = load_policy([SHIPPED, admin])
    assert policy.rules == ()
    assert policy.error is not None
    assert policy.error.startswith(error.format(d=admin, parent=admin.parent)), policy.error


def test_an_unreadable_policy_directory_breaks_the_policy(tmp_path):
    not_a_dir = write(tmp_path / "file", "x")
    policy = load_policy([SHIPPED, not_a_dir])
    assert policy.rules == ()
    assert policy.error == f"{not_a_dir}:0: cannot read the policy directory: Not a directory"


def test_lint_reports_every_error_and_goes_on(tmp_path):
    admin = tmp_path.resolve() / "admin"
    write(admin / "30-user.policy", "svc * work vault nope\nsvc * work vault allow\nsvc * @default vault allow\n")
    write(admin / "40-more.policy", "!include missing.policy\nsvc * work @default allow\n!bogus\n")
    write(admin / "Bad.policy", "svc * work vault allow\n")
    d = admin.resolve()
    errors = lint([SHIPPED, admin])
    assert [e.split(": ", 1)[0] for e in errors] == [
        f"{admin}/Bad.policy:0",
        f"{d}/30-user.policy:1",
        f"{d}/30-user.policy:3",
        f"{d}/40-more.policy:1",
        f"{d}/40-more.policy:2",
        f"{d}/40-more.policy:3",
    ]
    assert lint([SHIPPED]) == []


def test_lint_reports_every_bad_name_in_an_included_directory(tmp_path):
    write(tmp_path / "inc" / "A.policy", "x\n")
    write(tmp_path / "inc" / "B.policy", "x\n")
    write(tmp_path / "inc" / "10-ok.policy", "svc * work vault oops\n")
    write(tmp_path / "admin" / "30-user.policy", "!include-dir ../inc\n")
    errors = lint([tmp_path / "admin"])
    user = (tmp_path / "admin" / "30-user.policy").resolve()
    assert errors == [
        f"{user}:1: invalid policy file name 'A.policy' in ../inc: use only 0-9, a-z, '_', '.' and '-', "
        "ending in .policy",
        f"{user}:1: invalid policy file name 'B.policy' in ../inc: use only 0-9, a-z, '_', '.' and '-', "
        "ending in .policy",
        f"{(tmp_path / 'inc' / '10-ok.policy').resolve()}:1: invalid action 'oops' (expected allow, deny or ask)",
    ]


# -- properties -----------------------------------------------------------------

WORDS = st.sampled_from(
    [
        "*",
        "+",
        "+arg",
        "svc",
        "qubes.Filecopy",
        "@anyvm",
        "@adminvm",
        "dom0",
        "@default",
        "@dispvm",
        "@dispvm:dvm",
        "@dispvm:@tag:t",
        "@tag:t",
        "@tag:",
        "@type:AppVM",
        "@type:Bad",
        "work",
        "allow",
        "deny",
        "ask",
        "target=work",
        "target=@tag:t",
        "default_target=@dispvm",
        "user=root",
        "notify=yes",
        "autostart=no",
        "notify=maybe",
        "x=y",
        "!include",
        "!include-dir",
        "!include-service",
        "!compat-4.0",
        "#",
        "$anyvm",
    ]
)
LINES = st.lists(st.one_of(st.lists(WORDS, max_size=8).map(" ".join), st.text(max_size=40)), max_size=12)


@given(st.one_of(st.text(), LINES.map("\n".join)))
def test_parse_policy_raises_only_policy_syntax_errors(text):
    try:
        rules = parse_policy(text, "fuzz.policy")
    except PolicySyntaxError as err:
        assert str(err).startswith("fuzz.policy:")
        assert "\n" not in str(err)
    else:
        assert all(r.action in ("allow", "deny", "ask") for r in rules)


@given(
    st.dictionaries(
        st.sampled_from(["10-a.policy", "30-user.policy", "Z.policy", "README", "90-default.policy"]),
        st.one_of(LINES.map("\n".join), st.binary(max_size=64)),
        max_size=4,
    )
)
def test_load_policy_never_raises(files):
    with tempfile.TemporaryDirectory() as tmp:
        admin = Path(tmp)
        for name, content in files.items():
            (admin / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        policy = load_policy([SHIPPED, admin])
        errors = lint([SHIPPED, admin])
    assert (policy.error is None) == (errors == [])
    if policy.error is not None:
        assert policy.rules == ()
        assert policy.error == errors[0]
