"""bwfast.acl without a broker: Mosquitto's acl_file syntax, the LMDB row format,
and the decisions a client's ClientAcl makes (CONTRACT.md, "Access control").

The acl_file texts are written as Mosquitto's documentation (mosquitto.conf(5),
"acl_file") shows them; the broker-backed checks are in test_acl.py.
"""

from __future__ import annotations

import pytest

from bwfast.acl import (
    READ,
    WRITE,
    AclError,
    Rule,
    Rules,
    check_rule,
    filter_covers,
    filters_intersect,
    parse_acl_file,
    read_acl_file,
    rule_key,
    rule_value,
)

MOSQUITTO_EXAMPLE = """\
# This affects access control for clients with no username.
topic read $SYS/#

# This only affects clients with username "roger".
user roger
topic foo/bar

# This affects all clients.
pattern write $SYS/broker/connection/%c/state
"""


def rules_of(text: str, default_allow: bool = False) -> Rules:
    rules = Rules(default_allow)
    rules.load(parse_acl_file(text))
    return rules


# ---------------------------------------------------------------- parsing


def test_mosquitto_documentation_example() -> None:
    assert parse_acl_file(MOSQUITTO_EXAMPLE) == [
        Rule("anonymous", "", "$SYS/#", "read"),
        Rule("username", "roger", "foo/bar", "readwrite"),  # access omitted = readwrite
        Rule("pattern", "", "$SYS/broker/connection/%c/state", "write"),
    ]


def test_comments_blank_lines_and_spaces() -> None:
    text = "\n   # indented comment\n\n  topic   read   a/b  \r\n\t\n#topic deny x\n"
    assert parse_acl_file(text) == [Rule("anonymous", "", "a/b", "read")]


@pytest.mark.parametrize("word", ["read", "write", "readwrite", "deny"])
def test_every_access_word(word: str) -> None:
    assert parse_acl_file(f"user u\ntopic {word} a/#\npattern {word} b/%u")[0].access == word
    assert parse_acl_file(f"pattern {word} b/%u")[0] == Rule("pattern", "", "b/%u", word)


def test_rules_before_any_user_line_are_anonymous_and_later_users_switch() -> None:
    rules = parse_acl_file("topic a\nuser one\ntopic b\nuser two\ntopic deny c\npattern d/%u")
    assert [(r.kind, r.who, r.topic) for r in rules] == [
        ("anonymous", "", "a"), ("username", "one", "b"), ("username", "two", "c"),
        ("pattern", "", "d/%u"),
    ]


def test_a_topic_named_like_an_access_word_needs_the_access_word() -> None:
    assert parse_acl_file("topic read read")[0] == Rule("anonymous", "", "read", "read")
    assert parse_acl_file("topic a/read")[0].access == "readwrite"


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("topic read a\nbogus x", 2, "expected 'topic', 'pattern' or 'user'"),
        ("user", 1, "'user' needs a name"),
        ("user   ", 1, "'user' needs a name"),
        ("topic read", 1, "not a valid topic filter"),
        ("topic", 1, "not a valid topic filter"),
        ("topic read a/#/b", 1, "not a valid topic filter"),
        ("pattern write a+/b", 1, "not a valid topic filter"),
        ("# ok\ntopic deny a\npattern read x/%u/#/y", 3, "not a valid topic filter"),
    ],
)
def test_bad_lines_name_file_and_line(text: str, line: int, what: str) -> None:
    with pytest.raises(AclError) as e:
        parse_acl_file(text, "/etc/acl")
    assert f"/etc/acl line {line}" in str(e.value) and what in str(e.value)


def test_read_acl_file_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AclError, match=r"\[acl\] file: cannot read"):
        read_acl_file(str(tmp_path / "missing"))
    bad = tmp_path / "latin1"
    bad.write_bytes(b"topic caf\xe9\n")
    with pytest.raises(AclError, match="not UTF-8"):
        read_acl_file(str(bad))
    good = tmp_path / "acl"
    good.write_text(MOSQUITTO_EXAMPLE)
    assert len(read_acl_file(str(good))) == 3


# ---------------------------------------------------------------- run-time rules (LMDB rows)


def test_check_rule_and_row_format() -> None:
    r = check_rule("pattern", "ignored", "devices/%u/#", "readwrite")
    assert r == Rule("pattern", "", "devices/%u/#", "readwrite")
    assert rule_value(r) == ["pattern", "", "devices/%u/#", "readwrite"]
    assert rule_key(r) == b"pattern\x00\x00devices/%u/#"
    for kind, who, topic, access, field in [
        ("group", "x", "a", "read", "kind"), ("username", "", "a", "read", "username"),
        ("clientid", "a\x00b", "a", "read", "clientid"), ("username", "u", "a", "all", "access"),
        ("username", "u", "a/#/b", "read", "topic"), ("username", "u", "", "read", "topic"),
    ]:
        with pytest.raises(AclError, match=field):
            check_rule(kind, who, topic, access)


# ---------------------------------------------------------------- decisions


def test_pattern_substitutes_username_and_client_id() -> None:
    rules = rules_of("pattern readwrite devices/%u/#\npattern write inbox/%c")
    dev1 = rules.for_client("dev1", "c1")
    assert dev1.may_read("devices/dev1/x") and dev1.may_write("devices/dev1/x")
    assert not dev1.may_read("devices/dev2/secret") and not dev1.may_write("devices/dev2/cmd")
    assert dev1.may_write("inbox/c1") and not dev1.may_read("inbox/c1")
    assert not dev1.may_write("inbox/c2")
    anon = rules.for_client(None, "c3")
    assert not anon.may_read("devices/%u/x")  # %u rules never apply to anonymous clients
    assert anon.may_write("inbox/c3")


def test_anonymous_user_and_clientid_rules_apply_to_whom_they_name() -> None:
    rules = Rules()
    rules.load(parse_acl_file("topic read public/#\nuser roger\ntopic roger/#")
               + [Rule("clientid", "sensor-1", "sensors/1/#", "write")])
    assert rules.for_client(None, "x").may_read("public/a")
    assert not rules.for_client("roger", "x").may_read("public/a")  # anonymous rules only
    assert rules.for_client("roger", "x").may_write("roger/a")
    assert not rules.for_client("rogers", "x").may_write("roger/a")
    assert rules.for_client("anyone", "sensor-1").may_write("sensors/1/t")
    assert not rules.for_client("anyone", "sensor-1").may_read("sensors/1/t")


def test_deny_wins_over_any_grant_and_default_allow_is_a_deny_list() -> None:
    text = "user u\ntopic readwrite a/#\ntopic deny a/secret/#\npattern deny %u/private"
    for allow in (False, True):
        acl = rules_of(text, allow).for_client("u", "c")
        assert acl.may_read("a/x") and acl.may_write("a/x")
        assert not acl.may_read("a/secret/x") and not acl.may_write("a/secret/x")
        assert not acl.may_read("u/private")
        assert acl.may_read("elsewhere") is allow


def test_read_write_bits() -> None:
    acl = rules_of("user u\ntopic read r/#\ntopic write w/#\ntopic read rw\ntopic write rw"
                   ).for_client("u", "c")
    assert acl.allowed("r/1") == READ and acl.allowed("w/1") == WRITE
    assert acl.allowed("rw") == READ | WRITE and acl.allowed("none") == 0


def test_wildcards_do_not_match_dollar_topics_in_rules() -> None:
    acl = rules_of("user u\ntopic read #\ntopic read +/x").for_client("u", "c")
    assert acl.may_read("a/b") and not acl.may_read("$SYS/broker/uptime")
    assert not acl.may_read("$x/x")
    assert not acl.may_subscribe("$SYS/#")
    acl2 = rules_of("user u\ntopic read $SYS/broker/clients/#").for_client("u", "c")
    assert acl2.may_subscribe("$SYS/#") and acl2.may_read("$SYS/broker/clients/connected")
    assert not acl2.may_read("$SYS/broker/uptime")


def test_may_subscribe_grants_partly_denied_filters_only() -> None:
    acl = rules_of("user u\ntopic read a/#\ntopic deny a/secret/#\npattern readwrite d/%u/#"
                   ).for_client("u", "c")
    assert acl.may_subscribe("#") and acl.may_subscribe("+/+") and acl.may_subscribe("a/#")
    assert acl.may_subscribe("d/u/#") and acl.may_subscribe("d/+/x")
    assert not acl.may_subscribe("a/secret/#") and not acl.may_subscribe("a/secret/+")
    assert not acl.may_subscribe("b/#") and not acl.may_subscribe("d/other/#")
    # write-only grants don't make a filter readable
    assert not rules_of("user u\ntopic write w/#").for_client("u", "c").may_subscribe("w/#")
    # default allow: only a deny covering the whole filter refuses it
    allow = rules_of("user u\ntopic deny a/#", True).for_client("u", "c")
    assert allow.may_subscribe("#") and allow.may_subscribe("b") and allow.may_subscribe("+")
    assert not allow.may_subscribe("a/+") and not allow.may_subscribe("a")  # a/# matches "a"


def test_filter_geometry() -> None:
    assert filters_intersect("a/+", "+/b") and filters_intersect("#", "a/b/c")
    assert filters_intersect("a/#", "a") and not filters_intersect("a/+", "a")
    assert not filters_intersect("a/b", "a/c") and not filters_intersect("#", "$SYS/#")
    assert filters_intersect("$SYS/#", "$SYS/+/x")
    assert filter_covers("a/#", "a/b/+") and filter_covers("+/#", "a")
    assert not filter_covers("a/+", "a/#") and not filter_covers("#", "$SYS/a")
    assert filter_covers("a/+/c", "a/b/c") and not filter_covers("a/b/c", "a/+/c")


def test_a_reload_drops_cached_decisions() -> None:
    rules = rules_of("user u\ntopic readwrite a/#")
    acl = rules.for_client("u", "c")
    assert acl.may_read("a/1") and acl.may_write("a/1")
    assert acl.known_writable("a/1") and not acl.known_writable("a/2")  # a/2 not decided yet
    generation = rules.generation
    rules.load(parse_acl_file("user u\ntopic deny a/1\ntopic readwrite a/#"))
    assert rules.generation == generation + 1
    assert not acl.known_writable("a/1")  # stale: the lane must ask the general path again
    assert not acl.may_read("a/1") and not acl.may_write("a/1") and acl.may_read("a/2")
    assert not acl.known_writable("a/1")


def test_cache_is_bounded() -> None:
    acl = rules_of("user u\ntopic read #").for_client("u", "c")
    for i in range(10_000):
        assert acl.may_read(f"t/{i}")
    assert len(acl.cache) <= 4096


def test_the_readme_example_means_what_it_says() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("      # acl_file:", 1)[1].split("\n\n", 1)[0]
    rules = Rules()
    rules.load(parse_acl_file("# acl_file:" + block))
    assert rules.for_client(None, "c").may_read("public/news")
    dashboard = rules.for_client("dashboard", "c")
    assert dashboard.may_read("devices/d1/state") and not dashboard.may_read("devices/d1/secret")
    assert not dashboard.may_write("devices/d1/cmd")
    d1 = rules.for_client("d1", "c")
    assert d1.may_write("devices/d1/secret") and not d1.may_read("devices/d2/state")


def test_a_wildcard_in_a_username_or_client_id_never_widens_a_pattern() -> None:
    rules = rules_of("pattern readwrite devices/%u/#\npattern read clients/%c/#\n"
                     "pattern deny private/%c\nuser +\ntopic read private/#")
    for username, cid in [("+", "c1"), ("#", "c1"), ("a+b", "c1"), ("u", "+"), ("u", "#"),
                          ("u", "x/+/y")]:
        acl = rules.for_client(username, cid)
        assert not acl.may_read("devices/dev2/secret") and not acl.may_write("devices/dev2/x")
        assert not acl.may_read("clients/other/state")
    assert rules.for_client("+", "c1").may_read("private/a")  # its own user rules still apply
    assert rules.for_client("u", "c/1").may_read("clients/c/1/x")  # a slash is no wildcard


def test_stored_rules_leave_out_bad_rows(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    from bwfast.acl import DB, stored_rules
    from bwfast.store import Store

    store = Store(str(tmp_path))
    try:
        good = check_rule("username", "u", "a/#", "read")
        store.put(DB, rule_key(good), rule_value(good))
        store.put(DB, b"bad1", ["username", "u", "a/#/b", "read"])
        store.put(DB, b"bad2", ["username", "u"])
        store.put(DB, b"bad3", "not a list")
        store.commit()
        assert stored_rules(store) == [good]
        assert caplog.text.count("not a valid rule") == 3
    finally:
        store.close()
