# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""The fast lane: QoS 0 PUBLISH in, the same bytes out, no Python object per message.

Most of a broker's traffic is the simplest kind: a QoS 0, non-retained PUBLISH
on a topic whose subscribers are all connected, with no per-subscriber
properties. For those the received packet is what every MQTT 3.1.1
subscriber gets, byte for byte (MQTT 5.0 subscribers get it with an empty
property length added), so the lane

- scans every complete packet of a read through a C pointer;
- looks the topic up in the router's *plan* cache (bytes -> Plan: the
  connections to write to and the peer workers to forward to), reusing the
  previous packet's plan while the topic repeats;
- appends the packet to each subscriber's output buffer (written once per
  loop iteration by the worker's tick) and to one buffer per peer worker,
  which leaves as a single bus item per read: ``[client id, version, first
  message id, packets]``;
- records the message in the REST history rings as one shared tuple.

Shared subscriptions are planned too: a group's slot lists its local
members and the peers that have members; each message goes to one
candidate, round robin, and a peer chosen for a group gets the packet with
the group named in its bus item (MQTT 5.0 §4.8.2).

With ``[acl] enabled`` a plan leaves out every subscriber that may not read
its topic (plans are dropped when the rules change), and a publisher's
packet is taken only when its write permission on the topic is already
known (a cached decision); the general path decides the first one.

A plan is *ok* only when nothing about the delivery needs the general path:
no no-local, subscription identifier, topic alias or
maximum packet size on a subscriber, every subscriber connected and live
(CONNACK sent), no session moving between workers, no dead peer. The router
drops every plan when any of that may have changed (Router.invalidate). The
lane stops at the first packet it can't take (any other packet, QoS 1/2,
retain, properties, an incomplete packet, a topic without an ok plan) and
returns its offset: the general path (Parser + handlers) does the rest of
the read, so the order of a connection's packets is kept.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.string cimport memcmp, memcpy


cpdef bint is_compiled():
    return cython.compiled


MAX_GROUPS = 8  # shared groups one topic may match and still be planned


cdef class GroupSlot:
    """One shared group (``$share/name/filter``) matching a plan's topic."""

    cdef public tuple key       # (name, filter)
    cdef public list local      # [(connection, command ring, client id, is v5)] members here
    cdef public list peers      # peer workers with members
    cdef public Py_ssize_t next     # round robin over [here] + peers
    cdef public Py_ssize_t member   # round robin over the local members
    cdef Py_ssize_t stamp, ref      # index of key in the current bus item's group list

    def __init__(self, tuple key):
        self.key = key
        self.local = []
        self.peers = []
        self.next = 0
        self.member = 0
        self.stamp = -1
        self.ref = 0


cdef class Plan:
    """What one topic's QoS 0 message needs: local targets by version, peers, groups."""

    cdef public object topic    # str
    cdef public bint ok         # False: the general path delivers this topic
    cdef public list v4         # [(connection, command ring, client id)] MQTT 3.1 / 3.1.1
    cdef public list v5         # the same for MQTT 5.0 subscribers
    cdef public list peers      # peer worker indexes with a matching (non-shared) route
    cdef public list groups     # [GroupSlot]
    cdef public dict local_groups   # (name, filter) -> GroupSlot with local members

    def __init__(self, topic):
        self.topic = topic
        self.ok = False
        self.v4 = []
        self.v5 = []
        self.peers = []
        self.groups = []
        self.local_groups = {}

    def group(self, tuple key):
        """The slot for a group, made on first use."""
        for slot in self.groups:
            if (<GroupSlot>slot).key == key:
                return slot
        slot = GroupSlot(key)
        self.groups.append(slot)
        return slot

    def __repr__(self):
        return (f"Plan({self.topic!r}, ok={self.ok}, v4={len(self.v4)}, v5={len(self.v5)}, "
                f"peers={self.peers})")


cdef struct PeerBuf:
    char* data
    Py_ssize_t len
    Py_ssize_t cap


cdef inline Py_ssize_t _scan(const unsigned char* p, Py_ssize_t pos, Py_ssize_t n, bint v5,
                             Py_ssize_t maxp, Py_ssize_t* hdr_out, Py_ssize_t* tl_out,
                             Py_ssize_t* poff_out) noexcept nogil:
    """The size of the fast-lane PUBLISH at pos (QoS 0, no DUP, no retain, a topic,
    no v5 properties, complete, within maxp), or 0 when it isn't one."""
    cdef Py_ssize_t i = pos + 1, rl = 0, total, tl, poff
    cdef unsigned int c, shift = 0
    if p[pos] != 0x30:
        return 0
    while True:
        if i >= n:
            return 0
        c = p[i]
        i += 1
        rl |= <Py_ssize_t>(c & 127) << shift
        if not c & 128:
            break
        shift += 7
        if shift == 28:
            return 0
    total = i - pos + rl
    if total > maxp or total > n - pos or rl < 2:
        return 0
    tl = (<Py_ssize_t>p[i] << 8) | p[i + 1]
    if tl == 0 or 2 + tl > rl:
        return 0
    poff = i + 2 + tl
    if v5:
        if poff >= pos + total or p[poff] != 0:
            return 0
        poff += 1
    hdr_out[0] = i - pos
    tl_out[0] = tl
    poff_out[0] = poff - pos
    return total


cdef inline Py_ssize_t _u16(const unsigned char* s) noexcept nogil:
    return (<Py_ssize_t>s[0] << 8) | s[1]


cdef bytes _reform(bytes pkt, Py_ssize_t hdr, Py_ssize_t tl, Py_ssize_t poff, bint to5):
    """The packet in the other version's form: v5 has a property length (0) after the topic."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(pkt)
    cdef Py_ssize_t total = PyBytes_GET_SIZE(pkt)
    cdef Py_ssize_t tend = hdr + 2 + tl, plen = total - poff
    cdef Py_ssize_t rl = (tend - hdr) + (1 if to5 else 0) + plen
    cdef Py_ssize_t vl = 1 if rl < 128 else 2 if rl < 16384 else 3 if rl < 2097152 else 4
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 1 + vl + rl)
    cdef unsigned char* q = <unsigned char*>PyBytes_AS_STRING(out)
    cdef Py_ssize_t v = rl
    q[0] = 0x30
    q += 1
    while True:
        if v >= 128:
            q[0] = (v & 127) | 128
            v >>= 7
            q += 1
        else:
            q[0] = v
            q += 1
            break
    memcpy(q, s + hdr, tend - hdr)
    q += tend - hdr
    if to5:
        q[0] = 0
        q += 1
    memcpy(q, s + poff, plen)
    return out


cdef class Lane:
    """One per worker; see the module docstring."""

    cdef public dict plans
    cdef object make_plan
    cdef object worker
    cdef object stats
    cdef object mark_dirty
    cdef object event_ring
    cdef set dirty_events
    cdef set dirty_commands
    cdef object cluster
    cdef object bus
    cdef public object slow_forwarded   # (cid, mid, topic, payload, normal, groups) -> None
    cdef Py_ssize_t max_packet
    cdef PeerBuf* bufs
    cdef int nbufs
    cdef unsigned char* normal          # per peer, for the message at hand
    cdef unsigned char* ngroups
    cdef unsigned short* grefs          # nbufs x MAX_GROUPS
    cdef list gkeys                     # group keys named by this read's bus items
    cdef Py_ssize_t call
    cdef public Py_ssize_t taken         # messages the lane carried (for tests and $SYS)

    def __cinit__(self):
        self.bufs = NULL
        self.normal = NULL
        self.ngroups = NULL
        self.grefs = NULL
        self.nbufs = 0

    def __init__(self, worker, int nworkers, Py_ssize_t max_packet):
        router = worker.router
        history = worker.history
        self.worker = worker
        self.plans = router.plans
        self.make_plan = router.make_plan
        self.stats = worker.stats
        self.mark_dirty = worker.mark_dirty
        self.event_ring = history.event_ring
        self.dirty_events = history.dirty_events
        self.dirty_commands = history.dirty_commands
        self.cluster = worker.cluster
        self.bus = worker.cluster.bus if worker.cluster is not None else None
        self.max_packet = max_packet
        self.slow_forwarded = None
        self.taken = 0
        self.gkeys = []
        self.call = 0
        nworkers = max(nworkers, 1)
        self.bufs = <PeerBuf*>PyMem_Malloc(nworkers * sizeof(PeerBuf))
        self.normal = <unsigned char*>PyMem_Malloc(nworkers)
        self.ngroups = <unsigned char*>PyMem_Malloc(nworkers)
        self.grefs = <unsigned short*>PyMem_Malloc(nworkers * MAX_GROUPS * sizeof(unsigned short))
        if self.bufs == NULL or self.normal == NULL or self.ngroups == NULL or self.grefs == NULL:
            raise MemoryError()
        self.nbufs = nworkers
        for i in range(nworkers):
            self.bufs[i].data = NULL
            self.bufs[i].len = 0
            self.bufs[i].cap = 0
            self.normal[i] = 0
            self.ngroups[i] = 0

    def __dealloc__(self):
        if self.bufs != NULL:
            for i in range(self.nbufs):
                PyMem_Free(self.bufs[i].data)
            PyMem_Free(self.bufs)
        PyMem_Free(self.normal)
        PyMem_Free(self.ngroups)
        PyMem_Free(self.grefs)

    # -- from a client ------------------------------------------------------------------
    def feed(self, conn, bytes data not None):
        """Deliver the leading fast-lane packets of ``data``; return where the
        general path must go on (len(data) when the lane took everything)."""
        session = conn.session
        if session is None or conn.held is not None:
            return 0
        cdef int version = conn.version
        cdef bint v5 = version == 5
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t pos = 0, total, hdr = 0, tl = 0, poff = 0, last_tl = -1
        cdef Py_ssize_t count = 0, sent = 0, dropped = 0, fwd = 0
        cdef const unsigned char* t
        cdef const unsigned char* last_t = NULL
        cdef Plan plan = None
        cdef GroupSlot slot
        cdef bytes key, pkt
        cdef tuple entry
        cdef object ring = None, obj, wall, topic = None
        cdef int peer
        cdef Py_ssize_t c, nlocal
        # The publisher's ACL (None when [acl] is off): checked once per topic change;
        # a topic not yet known writable goes to the general path, which decides.
        cdef object acl = session.acl
        wall = self.worker.wall
        self.call += 1
        while pos < n:
            total = _scan(p, pos, n, v5, self.max_packet, &hdr, &tl, &poff)
            if total == 0:
                break
            t = p + pos + hdr + 2
            if plan is None or tl != last_tl or memcmp(t, last_t, tl) != 0:
                plan = self._plan(t, tl)
                if plan is None or not plan.ok:
                    break
                if acl is not None and not acl.known_writable(plan.topic):
                    plan = None
                    break
                last_t = t
                last_tl = tl
                topic = plan.topic
            pkt = PyBytes_FromStringAndSize(<const char*>p + pos, total)
            entry = (topic, pkt, poff, wall)
            if ring is None:
                ring = self.event_ring(session.client_id)
            ring.append(entry)
            self._deliver(plan, pkt, v5, hdr, tl, poff, entry, &sent, &dropped)
            if plan.groups:
                for obj in plan.groups:
                    slot = <GroupSlot>obj
                    nlocal = 1 if slot.local else 0
                    c = slot.next % (nlocal + len(slot.peers))
                    slot.next += 1
                    if c < nlocal:
                        self._give_member(slot, pkt, v5, hdr, tl, poff, entry, &sent, &dropped)
                    else:
                        peer = slot.peers[c - nlocal]
                        if slot.stamp != self.call:
                            slot.stamp = self.call
                            slot.ref = len(self.gkeys)
                            self.gkeys.append(slot.key)
                        self.grefs[peer * MAX_GROUPS + self.ngroups[peer]] = <unsigned short>slot.ref
                        self.ngroups[peer] += 1
            if plan.peers:
                for obj in plan.peers:
                    self.normal[<int>obj] = 1
            if plan.peers or plan.groups:
                fwd += self._buffer_all(count, p + pos, total)
            count += 1
            pos += total
        if count:
            self.taken += count
            self.dirty_events.add(session.client_id)
            stats = self.stats
            stats.msgs_received += count
            if sent:
                stats.msgs_sent += sent
            if dropped:
                stats.dropped += dropped
            if fwd:
                stats.forwarded += fwd
                self._forward(session.client_id, version, count)
        return pos

    cdef Plan _plan(self, const unsigned char* t, Py_ssize_t tl):
        """The cached plan for a topic, made on a miss; None for an invalid name."""
        cdef bytes key = PyBytes_FromStringAndSize(<const char*>t, tl)
        obj = self.plans.get(key)
        if obj is None:
            obj = self.make_plan(key)
        return <Plan>obj

    cdef int _deliver(self, Plan plan, bytes pkt, bint v5, Py_ssize_t hdr, Py_ssize_t tl,
                      Py_ssize_t poff, tuple entry, Py_ssize_t* sent,
                      Py_ssize_t* dropped) except -1:
        cdef bytes other
        if plan.v4:
            other = _reform(pkt, hdr, tl, poff, False) if v5 else pkt
            for target in plan.v4:
                self._give(<tuple>target, other, entry, sent, dropped)
        if plan.v5:
            other = pkt if v5 else _reform(pkt, hdr, tl, poff, True)
            for target in plan.v5:
                self._give(<tuple>target, other, entry, sent, dropped)
        return 0

    cdef int _give_member(self, GroupSlot slot, bytes pkt, bint v5, Py_ssize_t hdr,
                          Py_ssize_t tl, Py_ssize_t poff, tuple entry, Py_ssize_t* sent,
                          Py_ssize_t* dropped) except -1:
        """One member of a local group gets the message: the next one, round robin,
        that is keeping up (a congested member is skipped while another is not)."""
        cdef list members = slot.local
        cdef Py_ssize_t k, m = len(members)
        cdef tuple target = None
        for k in range(m):
            target = <tuple>members[slot.member % m]
            slot.member += 1
            if not target[0].congested:
                break
        want5 = target[3]
        if want5 == v5:
            self._give(target, pkt, entry, sent, dropped)
        else:
            self._give(target, _reform(pkt, hdr, tl, poff, not v5), entry, sent, dropped)
        return 0

    cdef inline int _give(self, tuple target, bytes pkt, tuple entry, Py_ssize_t* sent,
                          Py_ssize_t* dropped) except -1:
        cdef list out
        ring = target[1]
        ring.append(entry)
        if len(ring) == 1:
            self.dirty_commands.add(target[2])
        conn = target[0]
        if conn.closing:
            return 0
        if conn.congested:  # a slow reader: QoS 0 to it is dropped, not buffered
            dropped[0] += 1
            return 0
        out = <list>conn.out
        if not out:
            self.mark_dirty(conn)
        out.append(pkt)
        sent[0] += 1
        return 0

    cdef Py_ssize_t _buffer_all(self, Py_ssize_t index, const unsigned char* s,
                                Py_ssize_t n) except -1:
        """Append the message to each peer's buffer that gets it, as
        [u32 index][u8 normal][u8 n groups][n x u16 group ref][packet];
        return how many peers get it."""
        cdef PeerBuf* b
        cdef Py_ssize_t need, cap, copies = 0
        cdef char* q
        cdef int peer, g, ng
        for peer in range(self.nbufs):
            ng = self.ngroups[peer]
            if not self.normal[peer] and not ng:
                continue
            b = &self.bufs[peer]
            need = b.len + 6 + 2 * ng + n
            if need > b.cap:
                cap = max(need, b.cap * 2, 4096)
                q = <char*>PyMem_Realloc(b.data, cap)
                if q == NULL:
                    raise MemoryError()
                b.data = q
                b.cap = cap
            q = b.data + b.len
            q[0] = (index >> 24) & 255
            q[1] = (index >> 16) & 255
            q[2] = (index >> 8) & 255
            q[3] = index & 255
            q[4] = self.normal[peer]
            q[5] = ng
            q += 6
            for g in range(ng):
                q[0] = self.grefs[peer * MAX_GROUPS + g] >> 8
                q[1] = self.grefs[peer * MAX_GROUPS + g] & 255
                q += 2
            memcpy(q, s, n)
            b.len = need
            self.normal[peer] = 0
            self.ngroups[peer] = 0
            copies += 1
        return copies

    cdef int _forward(self, object cid, int version, Py_ssize_t count) except -1:
        """One bus item per peer for this read; message i of the read gets id mid0 + i."""
        cdef PeerBuf* b
        cdef int i
        mid0 = self.cluster.new_mids(count)
        gkeys = self.gkeys
        if gkeys:
            self.gkeys = []
        for i in range(self.nbufs):
            b = &self.bufs[i]
            if b.len:
                self.bus.queue_item(i, [cid, version, mid0,
                                        PyBytes_FromStringAndSize(b.data, b.len), gkeys])
                b.len = 0
                if b.cap > 1 << 20:  # don't keep a huge buffer after a burst
                    PyMem_Free(b.data)
                    b.data = NULL
                    b.cap = 0
        return 0

    # -- from a peer worker --------------------------------------------------------------
    def deliver_forwarded(self, object cid, int version, object mid0, bytes blob not None,
                          list gkeys not None):
        """Deliver a peer's fast-lane item (see _forward) to this worker's subscribers.

        Topics whose plan here is not ok, and groups without a member here now, go
        through ``slow_forwarded`` one message at a time."""
        cdef bint v5 = version == 5
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(blob)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(blob)
        cdef Py_ssize_t pos = 0, total, hdr = 0, tl = 0, poff = 0, last_tl = -1, index
        cdef Py_ssize_t sent = 0, dropped = 0, g, ng, gstart
        cdef bint normal
        cdef const unsigned char* t
        cdef const unsigned char* last_t = NULL
        cdef Plan plan = None
        cdef bytes key, pkt
        cdef tuple entry
        cdef list keys = [tuple(k) for k in gkeys]
        cdef list slow_groups
        cdef object obj, wall = self.worker.wall, topic = None
        while pos + 6 < n:
            index = ((<Py_ssize_t>p[pos] << 24) | (<Py_ssize_t>p[pos + 1] << 16)
                     | (<Py_ssize_t>p[pos + 2] << 8) | p[pos + 3])
            normal = p[pos + 4]
            ng = p[pos + 5]
            pos += 6
            if pos + 2 * ng > n:
                raise ValueError("malformed fast-lane item from a peer")
            gstart = pos
            pos += 2 * ng
            total = _scan(p, pos, n, v5, n, &hdr, &tl, &poff)
            if total == 0:
                raise ValueError("malformed fast-lane item from a peer")
            t = p + pos + hdr + 2
            if plan is None or tl != last_tl or memcmp(t, last_t, tl) != 0:
                plan = self._plan(t, tl)
                if plan is None:
                    raise ValueError("invalid topic in a fast-lane item from a peer")
                last_t = t
                last_tl = tl
                topic = plan.topic
            pkt = PyBytes_FromStringAndSize(<const char*>p + pos, total)
            entry = (topic, pkt, poff, wall)
            slow_groups = None
            if plan.ok:
                if normal:
                    self._deliver(plan, pkt, v5, hdr, tl, poff, entry, &sent, &dropped)
                for g in range(ng):
                    gkey = keys[_u16(p + gstart + 2 * g)]
                    obj = plan.local_groups.get(gkey)
                    if obj is not None:
                        self._give_member(<GroupSlot>obj, pkt, v5, hdr, tl, poff, entry,
                                          &sent, &dropped)
                    else:
                        if slow_groups is None:
                            slow_groups = []
                        slow_groups.append(gkey)
                if slow_groups is not None:
                    self.slow_forwarded(cid, mid0 + index, topic, pkt[poff:], False, slow_groups)
            else:
                slow_groups = [keys[_u16(p + gstart + 2 * g)] for g in range(ng)]
                self.slow_forwarded(cid, mid0 + index, topic, pkt[poff:], normal, slow_groups)
            pos += total
        if sent:
            self.stats.msgs_sent += sent
        if dropped:
            self.stats.dropped += dropped
