"""Who gets a message: the local subscription trie (and, later, routes to peers).

A PUBLISH is matched once, through a topic -> subscribers cache that the trie's
generation counter invalidates. Each client gets one copy with the highest
QoS of its matching subscriptions and all their subscription identifiers
(MQTT 5.0 §3.3.4, overlapping subscriptions). Shared subscriptions
(`$share/group/filter`) deliver each message to one member of the group,
round robin over the members that are connected (MQTT 5.0 §4.8.2).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from bwfast.message import Message
from bwfast.topics import MatchCache, SubTrie, parse_shared

if TYPE_CHECKING:
    from bwfast.session import Session, SubOpts


class SharedGroup:
    """Members of one `$share/group/filter`: client id -> (session, options)."""

    __slots__ = ("members", "order", "next")

    def __init__(self) -> None:
        self.members: dict[str, tuple[Session, SubOpts]] = {}
        self.order: list[str] = []
        self.next = 0

    def pick(self, msg: Message) -> tuple[Session, SubOpts] | None:
        """The next member, preferring connected ones; None if the group is empty."""
        order = self.order
        n = len(order)
        fallback = None
        for i in range(n):
            cid = order[(self.next + i) % n]
            member = self.members[cid]
            if member[0].conn is not None:
                self.next = (self.next + i + 1) % n
                return member
            if fallback is None:
                fallback = member
        if fallback is not None:
            self.next = (self.next + 1) % n
        return fallback


class Router:
    def __init__(self) -> None:
        self.trie = SubTrie()
        self.cache = MatchCache(self.trie)

    # -- subscriptions ------------------------------------------------------------------
    def subscribe(self, session: Session, filt: str, opts: SubOpts) -> None:
        group, real = parse_shared(filt)
        if group is None:
            self.trie.add(filt, session.client_id, (session, opts))
            return
        key = ("$share", group)
        subs = self.trie.get(real)
        grp = subs.get(key) if subs else None
        if grp is None:
            grp = SharedGroup()
            self.trie.add(real, key, grp)
        if session.client_id not in grp.members:
            grp.order.append(session.client_id)
        grp.members[session.client_id] = (session, opts)

    def unsubscribe(self, session: Session, filt: str) -> None:
        group, real = parse_shared(filt)
        if group is None:
            self.trie.remove(filt, session.client_id)
            return
        key = ("$share", group)
        subs = self.trie.get(real)
        grp = subs.get(key) if subs else None
        if grp is None or session.client_id not in grp.members:
            return
        del grp.members[session.client_id]
        grp.order.remove(session.client_id)
        if not grp.members:
            self.trie.remove(real, key)

    # -- delivery -------------------------------------------------------------------------
    def publish(self, msg: Message) -> int:
        """Deliver to every matching local subscription; return how many got it."""
        matched = self.cache.match(msg.topic)
        if not matched:
            return 0
        if len(matched) == 1:
            return self._deliver_one_filter(matched[0], msg)
        return self._deliver_overlapping(matched, msg)

    def _deliver_one_filter(self, subs: dict, msg: Message) -> int:
        n = 0
        origin = msg.origin
        qos_in = msg.qos
        for key, value in subs.items():
            if type(key) is tuple:
                member = value.pick(msg)
                if member is None:
                    continue
                session, opts = member
            else:
                session, opts = value
                if opts.no_local and key == origin:
                    continue
            qos = opts.qos if opts.qos < qos_in else qos_in
            session.deliver(msg, qos, msg.retain if opts.rap else False,
                            [opts.sub_id] if opts.sub_id else None)
            n += 1
        return n

    def _deliver_overlapping(self, matched: list, msg: Message) -> int:
        """Several filters match: one copy per client, max QoS, all sub ids [MQTT-3.3.4-2]."""
        best: dict[str, list] = {}
        shared: list[tuple[Session, SubOpts]] = []
        origin = msg.origin
        for subs in matched:
            for key, value in subs.items():
                if type(key) is tuple:
                    member = value.pick(msg)
                    if member is not None:
                        shared.append(member)
                    continue
                session, opts = value
                if opts.no_local and key == origin:
                    continue
                cur = best.get(key)
                if cur is None:
                    best[key] = [session, opts.qos, opts.rap, [opts.sub_id] if opts.sub_id else []]
                else:
                    if opts.qos > cur[1]:
                        cur[1] = opts.qos
                    cur[2] = cur[2] or opts.rap
                    if opts.sub_id:
                        cur[3].append(opts.sub_id)
        qos_in = msg.qos
        for session, qos, rap, sub_ids in best.values():
            session.deliver(msg, min(qos, qos_in), msg.retain if rap else False, sub_ids or None)
        for session, opts in shared:
            session.deliver(msg, min(opts.qos, qos_in), msg.retain if opts.rap else False,
                            [opts.sub_id] if opts.sub_id else None)
        return len(best) + len(shared)
