"""Unit tests of bwfast.topics: validation, matching, the trie and its cache.

Spec examples are from MQTT 5.0 §4.7 (topic names and filters) and §4.8.2
(shared subscriptions). Hypothesis checks the trie against brute force and
the matcher against a reference written here from the spec text.
"""
from __future__ import annotations

import gc

import bwfast.topics as topics
import pytest
from bwfast.topics import (
    MatchCache,
    SubTrie,
    parse_shared,
    topic_matches,
    valid_filter,
    valid_topic,
)
from hypothesis import given, settings
from hypothesis import strategies as st

# ---------------------------------------------------------------------------
# Reference implementations, written from the spec text, independent of ours.


def ref_matches(filt: str, topic: str) -> bool:
    """§4.7.1 wildcards plus the '$' rule [MQTT-4.7.2-1]."""
    f = filt.split("/")
    t = topic.split("/")
    if topic.startswith("$") and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)


def ref_valid_plain_filter(filt: str) -> bool:
    if not filt or "\0" in filt or len(filt.encode("utf-8", "surrogatepass")) > 65535:
        return False
    levels = filt.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def ref_valid_filter(filt: str) -> bool:
    if filt == "$share":
        return False
    if filt.startswith("$share/"):
        parts = filt.split("/", 2)
        if len(parts) < 3:
            return False
        group, real = parts[1], parts[2]
        if not group or "+" in group or "#" in group:
            return False
        return ref_valid_plain_filter(real) and len(filt.encode()) <= 65535
    return ref_valid_plain_filter(filt)


# ---------------------------------------------------------------------------
# The module itself


def test_module_is_compiled() -> None:
    """A silent pure-Python fallback must not pass for the fast path."""
    assert topics.__file__.endswith((".so", ".pyd"))
    assert type(SubTrie.match).__name__ != "function"


# ---------------------------------------------------------------------------
# valid_topic


@pytest.mark.parametrize("name", [
    "a", "/", "//", "sport/tennis/player1", "/finance", "$SYS/broker/load",
    "ACCOUNTS", "Accounts payable", "é/ü/中/😀", "a" * 65535, "é" * 32767,
])
def test_valid_topic_accepts(name: str) -> None:
    assert valid_topic(name) is True


@pytest.mark.parametrize("name", [
    "",                 # [MQTT-4.7.3-1]
    "+", "a/+", "a+",   # no wildcards in a topic name [MQTT-3.3.2-2]
    "#", "a/#", "a#b",
    "a\0b",             # [MQTT-4.7.3-2]
    "a\ud800",          # a surrogate has no UTF-8 encoding [MQTT-1.5.4-1]
    "a" * 65536,        # longer than a UTF-8 string can be (§1.5.4)
    "é" * 32768,        # 65536 bytes of UTF-8
])
def test_valid_topic_rejects(name: str) -> None:
    assert valid_topic(name) is False


def test_validators_reject_none() -> None:
    with pytest.raises(TypeError):
        valid_topic(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        valid_filter(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        valid_topic(b"a")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# valid_filter


@pytest.mark.parametrize("filt, ok", [
    ("#", True),
    ("a/#", True),
    ("a#", False),                       # [MQTT-4.7.1-1]
    ("a/#/b", False),                    # '#' must be last
    ("#/", False),
    ("+", True),
    ("a+", False),                       # [MQTT-4.7.1-2]
    ("+a/b", False),
    ("a/++", False),
    ("+/+", True),
    ("a/+/", True),
    ("+/#", True),
    ("", False),                         # [MQTT-4.7.3-1]
    ("/", True),
    ("//", True),
    ("a\0b", False),                     # [MQTT-4.7.3-2]
    ("sport/tennis/player1/#", True),    # §4.7.1.2 examples
    ("sport/#", True),
    ("sport/tennis/#", True),
    ("sport/tennis#", False),
    ("sport/tennis/#/ranking", False),
    ("+/tennis/#", True),                # §4.7.1.3 examples
    ("sport+", False),
    ("sport/+/player1", True),
    ("$share/g/a", True),                # §4.8.2
    ("$share/g/a/+/#", True),
    ("$share/g/#", True),
    ("$share/consumer1/sport/tennis/+", True),
    ("$share//a", False),                # empty ShareName [MQTT-4.8.2-1]
    ("$share/g", False),                 # no filter after the group
    ("$share/g/", False),                # empty filter after the group
    ("$share/", False),
    ("$share", False),
    ("$share/g+/a", False),              # [MQTT-4.8.2-2]
    ("$share/g#/a", False),
    ("$share/+/a", False),
    ("$share/g/a#", False),              # the filter part must be valid too
    ("$share/g/a/#/b", False),
    ("a/$share", True),                  # an ordinary level elsewhere
    ("$shared/a", True),
    ("$share/g/$share", True),
    ("a" * 65535, True),
    ("a" * 65536, False),
    ("$share/g/" + "a" * (65535 - 9), True),
    ("$share/g/" + "a" * (65536 - 9), False),
])
def test_valid_filter(filt: str, ok: bool) -> None:
    assert valid_filter(filt) is ok
    assert ref_valid_filter(filt) is ok


@given(st.text(alphabet="ab/+#$\0é", max_size=12))
def test_valid_filter_agrees_with_reference(filt: str) -> None:
    assert valid_filter(filt) == ref_valid_filter(filt)
    assert valid_filter("$share/g/" + filt) == ref_valid_filter("$share/g/" + filt)


@given(st.text(alphabet="ab/+#$\0é", max_size=12))
def test_valid_topic_agrees_with_reference(name: str) -> None:
    expected = bool(name) and not any(c in name for c in "+#\0")
    assert valid_topic(name) == expected


# ---------------------------------------------------------------------------
# parse_shared


@pytest.mark.parametrize("filt, expected", [
    ("$share/g/a", ("g", "a")),
    ("$share/consumer1/sport/tennis/+", ("consumer1", "sport/tennis/+")),
    ("$share/g/#", ("g", "#")),
    ("$share/g//", ("g", "/")),
    ("$share/g/$share/h/x", ("g", "$share/h/x")),
    ("sport/#", (None, "sport/#")),
    ("a/$share/g/x", (None, "a/$share/g/x")),
    ("$shared/g/x", (None, "$shared/g/x")),
])
def test_parse_shared(filt: str, expected: tuple[str | None, str]) -> None:
    assert valid_filter(filt)
    assert parse_shared(filt) == expected


# ---------------------------------------------------------------------------
# topic_matches: spec examples


@pytest.mark.parametrize("filt, topic, ok", [
    # §4.7.1.2 multi-level wildcard
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/tennis/player1/#", "sport/tennis/player2", False),
    ("sport/#", "sport", True),
    ("#", "sport", True),
    ("#", "/", True),
    # §4.7.1.3 single-level wildcard
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+/tennis/#", "sport/tennis", True),
    ("sport/+/player1", "sport/tennis/player1", True),
    # §4.7.2 topics beginning with '$' [MQTT-4.7.2-1]
    ("#", "$SYS/monitor/Clients", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("$SYS/#", "$SYS", True),
    ("+", "$", False),
    ("#", "a/$SYS", True),
    ("a/+", "a/$x", True),
    ("+/#", "/$x", True),
    # §4.7.3 names are case sensitive; a leading '/' makes a distinct level
    ("ACCOUNTS", "Accounts", False),
    ("finance", "/finance", False),
    ("/finance", "/finance", True),
    ("Accounts payable", "Accounts payable", True),
])
def test_topic_matches_spec(filt: str, topic: str, ok: bool) -> None:
    assert topic_matches(filt, topic) is ok
    assert ref_matches(filt, topic) is ok
    trie = SubTrie()
    trie.add(filt, "c", 1)
    assert trie.match_filters(topic) == ([filt] if ok else [])


# ---------------------------------------------------------------------------
# SubTrie: add / remove / get / len / generation


def test_add_remove_replace_return_values() -> None:
    trie = SubTrie()
    assert trie.add("a/b", "c1", 1) is True
    assert trie.add("a/b", "c1", 2) is False      # replaced
    assert trie.get("a/b") == {"c1": 2}
    assert trie.add("a/b", "c2", 3) is True
    assert trie.remove("a/b", "c1") is True
    assert trie.remove("a/b", "c1") is False      # already gone
    assert trie.remove("a/b", "nobody") is False
    assert trie.remove("x/y", "c2") is False       # no such filter
    assert trie.remove("a", "c2") is False         # a prefix node, no subs
    assert trie.get("a/b") == {"c2": 3}
    assert trie.remove("a/b", "c2") is True
    assert trie.get("a/b") is None


def test_len_filters_and_contains() -> None:
    trie = SubTrie()
    for filt in ("a", "a/b", "a/+", "a/#", "#", "+", "/", "//"):
        trie.add(filt, "c1", 1)
        trie.add(filt, "c2", 2)
    assert len(trie) == 8
    assert sorted(trie.filters()) == sorted(["a", "a/b", "a/+", "a/#", "#", "+", "/", "//"])
    assert "a/+" in trie and "a/c" not in trie and 3 not in trie
    trie.remove("a/+", "c1")
    assert len(trie) == 8
    trie.remove("a/+", "c2")
    assert len(trie) == 7 and "a/+" not in trie


def test_get_is_exact_and_not_a_copy() -> None:
    trie = SubTrie()
    trie.add("a/+", "c1", 1)
    subs = trie.get("a/+")
    assert subs is not None
    assert trie.get("a/x") is None               # no wildcard matching in get
    assert trie.get("a") is None                 # prefix node without subs
    assert trie.match("a/x")[0] is subs          # the same object everywhere
    trie.add("a/+", "c1", 5)                     # a replaced value shows through
    assert subs == {"c1": 5}


def test_generation_bumps() -> None:
    trie = SubTrie()
    g = trie.generation
    assert isinstance(g, int)
    trie.add("a", "c1", 1)
    assert trie.generation == g + 1
    trie.add("a", "c1", 2)                       # replace: same subscribers
    assert trie.generation == g + 1
    trie.add("a", "c2", 1)
    assert trie.generation == g + 2
    trie.remove("a", "missing")                  # nothing removed
    assert trie.generation == g + 2
    trie.remove("a", "c1")
    assert trie.generation == g + 3
    trie.clear()
    assert trie.generation == g + 4
    with pytest.raises(AttributeError):
        trie.generation = 0  # type: ignore[misc]


def test_add_rejects_invalid_and_shared_filters() -> None:
    trie = SubTrie()
    for bad in ("", "a/#/b", "a+", "a#", "$share/g/a", "$share", "a\0"):
        with pytest.raises(ValueError):
            trie.add(bad, "c", 1)
    assert len(trie) == 0 and trie.node_count() == 0 and trie.generation == 0


def test_none_arguments() -> None:
    trie = SubTrie()
    with pytest.raises(ValueError):
        trie.add(None, "c", 1)  # type: ignore[arg-type]
    assert trie.remove(None, "c") is False  # type: ignore[arg-type]
    assert trie.get(None) is None  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        trie.match(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# SubTrie: pruning


def test_prune_to_zero_nodes() -> None:
    trie = SubTrie()
    filters = ["a/b/c", "a/b", "a/+/c", "a/#", "#", "+/+/+", "/", "//x", "$SYS/#"]
    for i, filt in enumerate(filters):
        trie.add(filt, "c1", i)
        trie.add(filt, "c2", i)
    assert trie.node_count() > 0
    for filt in reversed(filters):
        trie.remove(filt, "c1")
    assert len(trie) == len(filters)
    for filt in filters:
        trie.remove(filt, "c2")
    assert len(trie) == 0
    assert trie.node_count() == 0
    assert trie.filters() == []


def test_prune_keeps_nodes_still_in_use() -> None:
    trie = SubTrie()
    trie.add("a/b/c", "c1", 1)
    trie.add("a/b", "c1", 1)
    trie.add("a/+/#", "c1", 1)
    trie.remove("a/b/c", "c1")
    assert sorted(trie.match_filters("a/b")) == ["a/+/#", "a/b"]
    assert trie.node_count() == 4                # a, a/b, a/+, a/+/#
    trie.remove("a/b", "c1")
    assert trie.node_count() == 3
    trie.remove("a/+/#", "c1")
    assert trie.node_count() == 0


def test_many_distinct_filters_leave_nothing_behind() -> None:
    """Millions of clients come and go: the trie must not keep their nodes."""
    trie = SubTrie()
    for round_ in range(3):
        filters = [f"dev/{round_}-{i}/{'+' if i % 3 == 0 else 'x'}/#" for i in range(20000)]
        for i, filt in enumerate(filters):
            assert trie.add(filt, i, None)
        assert len(trie) == 20000
        for i, filt in enumerate(filters):
            assert trie.remove(filt, i)
        assert len(trie) == 0
        assert trie.node_count() == 0
    gc.collect()


def test_clear() -> None:
    trie = SubTrie()
    trie.add("a/b", "c", 1)
    trie.add("#", "c", 1)
    trie.clear()
    assert len(trie) == 0 and trie.node_count() == 0
    assert trie.match("a/b") == []
    assert trie.add("a/b", "c", 1) is True


# ---------------------------------------------------------------------------
# SubTrie: matching


def test_match_returns_each_filter_once() -> None:
    trie = SubTrie()
    filters = ["#", "sport/#", "sport/+", "+/+", "+/tennis", "sport/tennis",
               "sport/tennis/#", "+/#", "sport/tennis/+"]
    for filt in filters:
        trie.add(filt, "c", filt)
    got = trie.match_filters("sport/tennis")
    assert len(got) == len(set(got))
    assert sorted(got) == sorted(f for f in filters if ref_matches(f, "sport/tennis"))
    subs = trie.match("sport/tennis")
    assert sorted(s["c"] for s in subs) == sorted(got)


def test_match_dollar_topics() -> None:
    """[MQTT-4.7.2-1] at the trie level."""
    trie = SubTrie()
    for filt in ("#", "+/x", "+/#", "+", "$SYS/#", "$SYS/+", "$SYS/x"):
        trie.add(filt, "c", 1)
    assert sorted(trie.match_filters("$SYS/x")) == ["$SYS/#", "$SYS/+", "$SYS/x"]
    assert sorted(trie.match_filters("$SYS")) == ["$SYS/#"]
    assert sorted(trie.match_filters("a/x")) == ["#", "+/#", "+/x"]
    assert sorted(trie.match_filters("a")) == ["#", "+", "+/#"]


def test_match_empty_levels() -> None:
    trie = SubTrie()
    for filt in ("/", "+/+", "/+", "+", "//", "+/", "#"):
        trie.add(filt, "c", 1)
    assert sorted(trie.match_filters("/")) == sorted(["/", "+/+", "/+", "+/", "#"])
    assert sorted(trie.match_filters("//")) == ["#", "//"]


def test_match_deep_topic_does_not_recurse() -> None:
    """A 30000-level filter and topic stay within the 65535-byte limit."""
    deep = "/".join(["a"] * 30000)
    trie = SubTrie()
    trie.add(deep, "c", 1)
    trie.add("a/" * 29999 + "#", "c", 1)
    trie.add("+/" * 29999 + "+", "c", 1)
    assert len(trie.match(deep)) == 3
    assert len(trie.match(deep + "/a")) == 1
    for filt in trie.filters():
        trie.remove(filt, "c")
    assert trie.node_count() == 0


# ---------------------------------------------------------------------------
# MatchCache


def test_match_cache_hits_and_invalidation() -> None:
    trie = SubTrie()
    trie.add("a/+", "c1", 1)
    cache = MatchCache(trie, maxsize=8)
    first = cache.match("a/b")
    assert first == [{"c1": 1}] and cache.misses == 1
    assert cache.match("a/b") is first and cache.hits == 1
    trie.add("a/+", "c1", 2)                       # replace: no invalidation needed
    assert cache.match("a/b") is first and first == [{"c1": 2}]
    trie.add("a/b", "c2", 3)                       # new filter: invalidated
    assert sorted(len(s) for s in cache.match("a/b")) == [1, 1]
    trie.remove("a/+", "c1")
    assert cache.match("a/b") == [{"c2": 3}]
    trie.clear()
    assert cache.match("a/b") == []


def test_match_cache_bounded() -> None:
    trie = SubTrie()
    trie.add("#", "c", 1)
    cache = MatchCache(trie, maxsize=4)
    for i in range(100):
        assert cache.match(f"t/{i}") == [{"c": 1}]
        assert len(cache) <= 4
    assert cache.maxsize == 4 and cache.trie is trie
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError):
        MatchCache(trie, maxsize=0)
    with pytest.raises(TypeError):
        MatchCache(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Hypothesis: the trie agrees with brute force


LEVELS = ["", "a", "b", "$x"]
filter_levels = st.lists(st.sampled_from(LEVELS + ["+", "#"]), min_size=1, max_size=4)
topic_levels = st.lists(st.sampled_from(LEVELS), min_size=1, max_size=5)
filters_st = st.lists(filter_levels.map("/".join).filter(valid_filter), max_size=12)
topics_st = st.lists(topic_levels.map("/".join), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(filters_st, topics_st)
def test_trie_match_agrees_with_brute_force(filters: list[str], topic_list: list[str]) -> None:
    trie = SubTrie()
    for filt in filters:
        trie.add(filt, "c", filt)
    cache = MatchCache(trie, maxsize=3)
    for topic in topic_list:
        expected = sorted({f for f in filters if topic_matches(f, topic)})
        assert expected == sorted({f for f in filters if ref_matches(f, topic)})
        got = trie.match_filters(topic)
        assert sorted(got) == expected                 # each filter once
        subs = trie.match(topic)
        assert sorted(s["c"] for s in subs) == expected
        assert all(s is trie.get(s["c"]) for s in subs)
        assert cache.match(topic) == subs


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), filter_levels.map("/".join).filter(valid_filter),
                          st.sampled_from(["k1", "k2", "k3"])), max_size=40))
def test_trie_model(ops: list[tuple[bool, str, str]]) -> None:
    """Random add/remove against a dict model: returns, len, generation, pruning."""
    trie = SubTrie()
    model: dict[str, dict[str, int]] = {}
    generation = trie.generation
    for i, (is_add, filt, key) in enumerate(ops):
        subs = model.get(filt, {})
        if is_add:
            new = key not in subs
            assert trie.add(filt, key, i) is new
            model.setdefault(filt, {})[key] = i
            generation += new
        else:
            had = key in subs
            assert trie.remove(filt, key) is had
            if had:
                del subs[key]
                if not subs:
                    del model[filt]
            generation += had
        assert trie.generation == generation
        assert len(trie) == len(model)
        assert sorted(trie.filters()) == sorted(model)
        for filt_, subs_ in model.items():
            assert trie.get(filt_) == subs_
    for filt, subs in list(model.items()):
        for key in list(subs):
            assert trie.remove(filt, key)
    assert len(trie) == 0 and trie.node_count() == 0
