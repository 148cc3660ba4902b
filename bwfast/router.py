"""Who gets a message: local subscriptions and the routes to peer workers.

A PUBLISH is matched once, on the worker that received it, through topic ->
subscribers caches that the tries' generation counters invalidate
(DESIGN.md, "Routing"):

- local subscribers get it at once; a client gets one copy with the highest
  QoS of its matching subscriptions and all their subscription identifiers
  (MQTT 5.0 §3.3.4, overlapping subscriptions);
- each peer worker with a matching route gets it once, however many
  subscribers it has;
- a shared subscription `$share/group/filter` gets it once: the group's
  members may sit on several workers, and this worker picks one worker per
  message, round robin, then that worker picks one member (MQTT 5.0 §4.8.2).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bwfast.errors import MQTTError
from bwfast.fastpath import MAX_GROUPS, Plan
from bwfast.message import Message
from bwfast.packet import check_topic
from bwfast.topics import MatchCache, SubTrie, parse_shared

if TYPE_CHECKING:
    from bwfast.history import History
    from bwfast.session import Session, SubOpts

# How shared groups are treated while delivering locally.
SHARED_PICK, SHARED_COLLECT, SHARED_SKIP = 0, 1, 2
MAX_PLANS = 100_000
REMOTE_PEERS = 1 << 20  # peer ids from here on are other nodes (nodes.REMOTE_BASE)  # fast-lane plans kept (topic bytes -> Plan); past that they start over


class SharedGroup:
    """Local members of one `$share/group/filter`: client id -> (session, options)."""

    __slots__ = ("name", "filter", "members", "order", "next")

    def __init__(self, name: str, filt: str) -> None:
        self.name = name
        self.filter = filt
        self.members: dict[str, tuple[Session, SubOpts]] = {}
        self.order: list[str] = []
        self.next = 0

    def pick(self, topic: str) -> tuple[Session, SubOpts] | None:
        """The next member that may read ``topic``, preferring connected ones; None if
        there is none."""
        order = self.order
        n = len(order)
        fallback = None
        for i in range(n):
            cid = order[(self.next + i) % n]
            member = self.members[cid]
            if member[0].acl is not None and member[0].denied(topic):
                continue
            if member[0].conn is not None:
                self.next = (self.next + i + 1) % n
                return member
            if fallback is None:
                fallback = member
        if fallback is not None:
            self.next = (self.next + 1) % n
        return fallback

    def pick_would_fail(self, topic: str) -> bool:
        """No member may read ``topic`` (with the ACL off, never)."""
        for session, _ in self.members.values():
            if session.acl is None or not session.denied(topic):
                return False
        return True


class Router:
    def __init__(self) -> None:
        self.trie = SubTrie()
        self.cache = MatchCache(self.trie)
        self.local_routes: dict[str, int] = {}  # route key (the filter as subscribed) -> local count
        self.peers = SubTrie()                   # filter -> {peer: True} / {("$share", g, peer): (g, real)}
        self.peer_cache = MatchCache(self.peers)
        self.peer_filters: dict[int, set[str]] = {}
        self._rr: dict[tuple[str, str], int] = {}
        # The fast lane's plans (bwfast.fastpath): dropped whenever a subscription,
        # a route, or a subscriber's connection, liveness or holder changes.
        self.plans: dict[bytes, Plan] = {}
        self.history: History | None = None  # for the plans' command rings
        self.orphans: dict[int, Any] = {}     # dead peers (Cluster.orphans): no plan forwards there

    def invalidate(self) -> None:
        if self.plans:
            self.plans.clear()

    def make_plan(self, key: bytes) -> Plan | None:
        """The fast-lane plan for a topic (cached); None when the name is invalid."""
        try:
            topic = check_topic(key)
        except MQTTError:
            return None  # the general path reports it
        plans = self.plans
        if len(plans) >= MAX_PLANS:
            plans.clear()
        plan = plans[key] = Plan(topic)
        if topic.startswith("$"):
            return plan
        clients: set[str] = set()
        history = self.history
        assert history is not None
        for subs in self.cache.match(topic):
            for cid, value in subs.items():
                if type(cid) is tuple:  # ("$share", name) -> SharedGroup
                    slot = plan.group((value.name, value.filter))
                    for member in value.order:
                        session, opts = value.members[member]
                        if not _plain(session, opts):
                            return plan
                        if session.acl is not None and session.denied(topic):
                            continue  # the ACL's generation moving drops this plan
                        slot.local.append((session.conn, history.command_ring(member), member,
                                           session.version == 5))
                    if slot.local:
                        plan.local_groups[slot.key] = slot
                    continue
                session, opts = value
                if not _plain(session, opts):
                    return plan
                if session.acl is not None and session.denied(topic):
                    continue
                if cid in clients:
                    continue  # overlapping subscriptions: one copy [MQTT-3.3.4-2]
                clients.add(cid)
                ring = history.command_ring(cid)
                (plan.v5 if session.version == 5 else plan.v4).append((session.conn, ring, cid))
        if self.peer_filters:
            peers: set[int] = set()
            for subs in self.peer_cache.match(topic):
                for key, value in subs.items():
                    peer = int(key[2] if type(key) is tuple else key)
                    if peer in self.orphans or peer >= REMOTE_PEERS:
                        return plan  # other nodes (bwfast/nodes.py): the general path
                    if type(key) is tuple:  # ("$share", name, peer) -> (name, filter)
                        plan.group(tuple(value)).peers.append(peer)
                    else:
                        peers.add(peer)
            plan.peers = sorted(peers)
        if len(plan.groups) > MAX_GROUPS:
            return plan
        # A group whose members here may not read the topic, and no peer has members.
        plan.groups = [slot for slot in plan.groups if slot.local or slot.peers]
        for slot in plan.groups:
            slot.peers.sort()
        plan.ok = True
        return plan

    # -- local subscriptions -------------------------------------------------------------------
    def subscribe(self, session: Session, filt: str, opts: SubOpts) -> bool:
        """Add or replace a subscription; True when it is this worker's first for ``filt``."""
        group, real = parse_shared(filt)
        cid = session.client_id
        if group is None:
            new = self.trie.add(filt, cid, (session, opts))
        else:
            key = ("$share", group)
            subs = self.trie.get(real)
            grp = subs.get(key) if subs else None
            if grp is None:
                grp = SharedGroup(group, real)
                self.trie.add(real, key, grp)
            new = cid not in grp.members
            if new:
                grp.order.append(cid)
            grp.members[cid] = (session, opts)
        self.invalidate()
        if not new:
            return False
        count = self.local_routes.get(filt, 0)
        self.local_routes[filt] = count + 1
        return count == 0

    def unsubscribe(self, session: Session, filt: str) -> bool:
        """Remove a subscription; True when it was this worker's last for ``filt``."""
        group, real = parse_shared(filt)
        cid = session.client_id
        if group is None:
            # Only this session's own entry: a session handed over and back may
            # already have a newer Session object under the same client id.
            subs = self.trie.get(filt)
            mine = subs.get(cid) if subs else None
            if mine is None or mine[0] is not session or not self.trie.remove(filt, cid):
                return False
        else:
            key = ("$share", group)
            subs = self.trie.get(real)
            grp = subs.get(key) if subs else None
            if grp is None or cid not in grp.members or grp.members[cid][0] is not session:
                return False
            del grp.members[cid]
            grp.order.remove(cid)
            if not grp.members:
                self.trie.remove(real, key)
        self.invalidate()
        count = self.local_routes.get(filt, 0) - 1
        if count > 0:
            self.local_routes[filt] = count
            return False
        self.local_routes.pop(filt, None)
        return True

    # -- routes to peers --------------------------------------------------------------------------
    def add_peer_route(self, peer: int, filt: str) -> None:
        self.invalidate()
        group, real = parse_shared(filt)
        if group is None:
            self.peers.add(filt, peer, True)
        else:
            self.peers.add(real, ("$share", group, peer), (group, real))
        self.peer_filters.setdefault(peer, set()).add(filt)

    def remove_peer_route(self, peer: int, filt: str) -> None:
        self.invalidate()
        group, real = parse_shared(filt)
        if group is None:
            self.peers.remove(filt, peer)
        else:
            self.peers.remove(real, ("$share", group, peer))
        filters = self.peer_filters.get(peer)
        if filters is not None:
            filters.discard(filt)

    def replace_peer_routes(self, peer: int, filters: list[str]) -> None:
        for filt in list(self.peer_filters.get(peer, ())):
            self.remove_peer_route(peer, filt)
        for filt in filters:
            self.add_peer_route(peer, filt)

    # -- delivery -----------------------------------------------------------------------------------
    def publish(self, msg: Message) -> tuple[int, dict[int, list] | None]:
        """Deliver locally; return (local deliveries, {peer: [normal, [(real, group)...]]})."""
        matched = self.cache.match(msg.topic)
        pmatched = self.peer_cache.match(msg.topic) if self.peer_filters else None
        if not pmatched:
            return self._deliver(matched, msg, SHARED_PICK, None), None
        forwards: dict[int, list] = {}
        candidates: dict[tuple[str, str], list[Any]] = {}
        for subs in pmatched:
            for key, value in subs.items():
                if type(key) is tuple:
                    candidates.setdefault(value, []).append(key[2])
                else:
                    fwd = forwards.get(key)
                    if fwd is None:
                        forwards[key] = [True, []]
                    else:
                        fwd[0] = True
        sink: dict[tuple[str, str], SharedGroup] = {}
        n = self._deliver(matched, msg, SHARED_COLLECT, sink)
        for grp in sink.values():
            if grp.pick_would_fail(msg.topic):
                continue  # none of its members here may read it: a peer's members may
            candidates.setdefault((grp.name, grp.filter), []).append(grp)
        for gkey, cands in candidates.items():
            i = self._rr.get(gkey, 0)
            self._rr[gkey] = i + 1
            choice = cands[i % len(cands)]
            if type(choice) is int:
                fwd = forwards.get(choice)
                if fwd is None:
                    fwd = forwards[choice] = [False, []]
                fwd[1].append(gkey)
            else:
                n += self._deliver_group(choice, msg)
        return n, forwards

    def deliver_forwarded(self, msg: Message, normal: bool, groups: list) -> int:
        """A peer matched this message for us: deliver to the local side it chose."""
        n = self._deliver(self.cache.match(msg.topic), msg, SHARED_SKIP, None) if normal else 0
        for name, real in groups:
            subs = self.trie.get(real)
            grp = subs.get(("$share", name)) if subs else None
            if grp is not None:
                n += self._deliver_group(grp, msg)
        return n

    def _deliver_group(self, grp: SharedGroup, msg: Message) -> int:
        member = grp.pick(msg.topic)
        if member is None:
            return 0
        session, opts = member
        session.deliver(msg, min(opts.qos, msg.qos), msg.retain if opts.rap else False,
                        [opts.sub_id] if opts.sub_id else None)
        return 1

    def _deliver(self, matched: list, msg: Message, shared: int,
                 sink: dict[tuple[str, str], SharedGroup] | None) -> int:
        if not matched:
            return 0
        if len(matched) == 1:
            return self._deliver_one_filter(matched[0], msg, shared, sink)
        return self._deliver_overlapping(matched, msg, shared, sink)

    def _deliver_one_filter(self, subs: dict, msg: Message, shared: int,
                            sink: dict[tuple[str, str], SharedGroup] | None) -> int:
        n = 0
        origin = msg.origin
        qos_in = msg.qos
        for key, value in subs.items():
            if type(key) is tuple:
                if shared == SHARED_PICK:
                    n += self._deliver_group(value, msg)
                elif shared == SHARED_COLLECT and sink is not None:
                    sink[(value.name, value.filter)] = value
                continue
            session, opts = value
            if opts.no_local and key == origin:
                continue
            qos = opts.qos if opts.qos < qos_in else qos_in
            session.deliver(msg, qos, msg.retain if opts.rap else False,
                            [opts.sub_id] if opts.sub_id else None)
            n += 1
        return n

    def _deliver_overlapping(self, matched: list, msg: Message, shared: int,
                             sink: dict[tuple[str, str], SharedGroup] | None) -> int:
        """Several filters match: one copy per client, max QoS, all sub ids [MQTT-3.3.4-2]."""
        best: dict[str, list] = {}
        groups: list[SharedGroup] = []
        origin = msg.origin
        for subs in matched:
            for key, value in subs.items():
                if type(key) is tuple:
                    if shared == SHARED_PICK:
                        groups.append(value)
                    elif shared == SHARED_COLLECT and sink is not None:
                        sink[(value.name, value.filter)] = value
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
        n = len(best)
        for grp in groups:
            n += self._deliver_group(grp, msg)
        return n


def _plain(session: Session, opts: SubOpts) -> bool:
    """A subscriber the fast lane can write to as it is (see bwfast.fastpath)."""
    conn = session.conn
    return (conn is not None and session.live and not opts.no_local and not opts.sub_id
            and session.moved_to < 0 and session.seen is None and not session.max_packet
            and not conn.alias_max_out and not session.queue)
