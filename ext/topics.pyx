# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Topic names, topic filters and the subscription trie (MQTT 5.0 §4.7, §4.8.2).

This is on the broker's hot path: every PUBLISH is matched here. Validation
scans each string once in C; the trie splits a topic once and walks it with
one dict lookup per level and per live branch, so the cost depends on the
topic's depth and the number of wildcard branches it meets, not on the number
of filters stored.

Keys and values stored in the trie are opaque: the broker uses client id ->
subscription options, or share group -> group object.
"""
from cpython.dict cimport PyDict_GetItem
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.ref cimport PyObject

cdef Py_ssize_t MAX_STRING = 65535          # UTF-8 encoded string limit, §1.5.4
cdef str SHARE_PREFIX = "$share/"           # §4.8.2
cdef Py_ssize_t SHARE_PREFIX_LEN = 7


# --------------------------------------------------------------------------
# Validation


cdef inline int _utf8_len(Py_UCS4 c):
    """Bytes of `c` in UTF-8, or -1 for what an MQTT string must not hold.

    U+0000 is forbidden in topics [MQTT-4.7.3-2] and surrogates can't be
    encoded at all [MQTT-1.5.4-1].
    """
    if c == 0:
        return -1
    if c < 0x80:
        return 1
    if c < 0x800:
        return 2
    if c < 0x10000:
        if 0xD800 <= c <= 0xDFFF:
            return -1
        return 3
    return 4


cdef Py_ssize_t _scan_filter(str s, Py_ssize_t start) except -2:
    """Check s[start:] as a plain (non-shared) filter.

    Returns the UTF-8 byte length of s[start:], or -1 when it is invalid:
    empty [MQTT-4.7.3-1], '#' not alone as the last level [MQTT-4.7.1-1],
    '+' not alone in its level [MQTT-4.7.1-2], or a forbidden character.
    """
    cdef Py_ssize_t n = len(s)
    cdef Py_ssize_t i, total = 0
    cdef int w
    cdef Py_UCS4 c, prev = u'/'
    cdef bint after_plus = False
    if start >= n:
        return -1
    for i in range(start, n):
        c = s[i]
        if after_plus and c != u'/':
            return -1
        after_plus = False
        if c == u'+':
            if prev != u'/':
                return -1
            after_plus = True
        elif c == u'#':
            # whole level, and the last character of the filter
            if prev != u'/' or i != n - 1:
                return -1
        w = _utf8_len(c)
        if w < 0:
            return -1
        total += w
        prev = c
    return total


cpdef bint valid_topic(str name) except -1:
    """True for a usable PUBLISH topic name.

    Non-empty [MQTT-4.7.3-1], no wildcard characters [MQTT-3.3.2-2], no
    U+0000 [MQTT-4.7.3-2], at most 65535 bytes of UTF-8 [MQTT-1.5.4].
    """
    cdef Py_ssize_t total = 0
    cdef int w
    cdef Py_UCS4 c
    if name is None:
        raise TypeError("topic name must be str, not None")
    if len(name) == 0:
        return False
    for c in name:
        if c == u'+' or c == u'#':
            return False
        w = _utf8_len(c)
        if w < 0:
            return False
        total += w
    return total <= MAX_STRING


cpdef bint valid_filter(str filt) except -1:
    """True for a usable SUBSCRIBE / UNSUBSCRIBE topic filter.

    Plain filters follow §4.7.1. A filter whose first level is `$share` is a
    shared subscription [MQTT-4.8.2-1]: `$share/{group}/{filter}` with a
    non-empty group holding no '+', '#' or '/' [MQTT-4.8.2-2] and a valid
    plain filter after it. `$share` elsewhere than the first level is an
    ordinary level.
    """
    cdef Py_ssize_t n, i, slash, total
    cdef int w
    cdef Py_UCS4 c
    if filt is None:
        raise TypeError("topic filter must be str, not None")
    n = len(filt)
    if filt.startswith(SHARE_PREFIX):
        slash = filt.find(u'/', SHARE_PREFIX_LEN)
        if slash <= SHARE_PREFIX_LEN:      # no filter part, or empty group
            return False
        total = SHARE_PREFIX_LEN + 1       # "$share/" and the '/' after group
        for i in range(SHARE_PREFIX_LEN, slash):
            c = filt[i]
            if c == u'+' or c == u'#':
                return False
            w = _utf8_len(c)
            if w < 0:
                return False
            total += w
        w = _scan_filter(filt, slash + 1)
        if w < 0:
            return False
        return total + w <= MAX_STRING
    if filt == u"$share":
        return False
    total = _scan_filter(filt, 0)
    return 0 <= total <= MAX_STRING


cpdef tuple parse_shared(str filt):
    """("group", "real/filter") for a shared filter, (None, filt) otherwise.

    Assumes valid_filter(filt) passed (§4.8.2).
    """
    cdef Py_ssize_t slash
    if filt.startswith(SHARE_PREFIX):
        slash = filt.find(u'/', SHARE_PREFIX_LEN)
        if slash > SHARE_PREFIX_LEN:
            return (filt[SHARE_PREFIX_LEN:slash], filt[slash + 1:])
    return (None, filt)


cpdef bint topic_matches(str filt, str topic) except -1:
    """Whether the plain filter `filt` matches the topic name `topic` (§4.7).

    '+' matches one whole level, '#' the parent level and any below it
    [MQTT-4.7.1-2]. A topic whose first level starts with '$' is not matched
    by a filter whose first level is a wildcard [MQTT-4.7.2-1]. Shared
    filters must be passed through parse_shared first.
    """
    cdef list f_levels, t_levels
    cdef Py_ssize_t i, nf, nt
    cdef str fl
    if filt is None or topic is None:
        raise TypeError("filter and topic must be str")
    f_levels = filt.split(u'/')
    t_levels = topic.split(u'/')
    nf = len(f_levels)
    nt = len(t_levels)
    if topic.startswith(u'$'):
        fl = <str>f_levels[0]
        if fl == u'+' or fl == u'#':
            return False
    for i in range(nf):
        fl = <str>f_levels[i]
        if fl == u'#':
            return True
        if i >= nt:
            return False
        if fl != u'+' and fl != <str>t_levels[i]:
            return False
    return nf == nt


# --------------------------------------------------------------------------
# The subscription trie


cdef class _Node:
    """One topic level of the trie.

    Exact levels live in `children`; '+' and '#' get their own slots so
    matching never hashes them. A '#' node is always a leaf [MQTT-4.7.1-1].
    """
    cdef dict children          # level (str) -> _Node, or None while empty
    cdef _Node plus             # child for a '+' level
    cdef _Node hash             # child for a '#' level
    cdef dict subs              # key -> value of the filter ending here, or None
    cdef str filter             # that filter, set while subs is


cdef inline bint _is_plus(str level):
    return len(level) == 1 and level[0] == u'+'


cdef inline bint _is_hash(str level):
    return len(level) == 1 and level[0] == u'#'


cdef inline _Node _new_node():
    return _Node.__new__(_Node)


cdef inline bint _empty(_Node node):
    """A node that holds nothing and can be pruned."""
    return (node.subs is None and node.plus is None and node.hash is None
            and node.children is None)


cdef _Node _find(_Node node, list levels, list path):
    """The node of the filter split into `levels`, or None.

    When `path` is a list, every node walked from the root is appended to it
    (for pruning on remove).
    """
    cdef str level
    cdef object child
    for level in levels:
        if path is not None:
            path.append(node)
        if _is_plus(level):
            node = node.plus
        elif _is_hash(level):
            node = node.hash
        elif node.children is None:
            return None
        else:
            child = node.children.get(level)
            if child is None:
                return None
            node = <_Node>child
        if node is None:
            return None
    return node


cdef class SubTrie:
    """Filters -> {key: value} of their subscriptions, matched by topic.

    Filters are plain filters (valid_filter, and not `$share/...`: give the
    real filter from parse_shared and use the group as the key). get() and
    match() return the trie's own subs dicts, not copies: values replaced by
    add() show through them, and the broker must not mutate them. A dict is
    dropped from the trie when its last key is removed (and a later add
    creates a new one), which bumps `generation`.
    """

    cdef _Node root
    cdef Py_ssize_t _count      # filters with at least one subscription
    cdef Py_ssize_t _nodes      # nodes below the root, for leak checks
    cdef readonly unsigned long long generation
    cdef PyObject **_bufs[2]    # scratch arrays of _collect
    cdef Py_ssize_t _cap

    def __cinit__(self):
        self._bufs[0] = NULL
        self._bufs[1] = NULL
        self._cap = 0
        self.root = _new_node()
        self._count = 0
        self._nodes = 0
        self.generation = 0

    def __dealloc__(self):
        PyMem_Free(self._bufs[0])
        PyMem_Free(self._bufs[1])

    def __len__(self):
        """Number of filters with at least one subscription."""
        return self._count

    def __contains__(self, filt):
        return isinstance(filt, str) and self.get(filt) is not None

    def node_count(self):
        """Nodes below the root; 0 once every subscription is removed."""
        return self._nodes

    cpdef bint add(self, str filt, object key, object value) except -1:
        """Set subs[filt][key] = value; True when `key` is new for `filt`.

        Raises ValueError for an invalid or shared filter: storing one would
        corrupt the wildcard slots or never match anything.
        """
        cdef _Node node, child
        cdef object found
        cdef str level
        cdef bint new
        if filt is None or not valid_filter(filt) or filt.startswith(SHARE_PREFIX):
            raise ValueError("not a plain topic filter: %r" % (filt,))
        node = self.root
        for level in filt.split(u'/'):
            if _is_plus(level):
                if node.plus is None:
                    node.plus = _new_node()
                    self._nodes += 1
                node = node.plus
            elif _is_hash(level):
                if node.hash is None:
                    node.hash = _new_node()
                    self._nodes += 1
                node = node.hash
            else:
                if node.children is None:
                    node.children = {}
                found = node.children.get(level)
                if found is None:
                    child = _new_node()
                    node.children[level] = child
                    self._nodes += 1
                    node = child
                else:
                    node = <_Node>found
        if node.subs is None:
            node.subs = {}
            node.filter = filt
            self._count += 1
        new = key not in node.subs
        node.subs[key] = value
        if new:
            self.generation += 1
        return new

    cpdef bint remove(self, str filt, object key) except -1:
        """Drop `key` from `filt`; True if it was there.

        Nodes left empty are pruned right away, so distinct filters that come
        and go don't leave nodes behind.
        """
        cdef list levels, path = []
        cdef _Node node, parent
        cdef Py_ssize_t i
        cdef str level
        if filt is None:
            return False
        levels = filt.split(u'/')
        node = _find(self.root, levels, path)
        if node is None or node.subs is None or key not in node.subs:
            return False
        del node.subs[key]
        self.generation += 1
        if node.subs:
            return True
        node.subs = None
        node.filter = None
        self._count -= 1
        i = len(levels) - 1
        while i >= 0 and _empty(node):
            parent = <_Node>path[i]
            level = <str>levels[i]
            if _is_plus(level):
                parent.plus = None
            elif _is_hash(level):
                parent.hash = None
            else:
                del parent.children[level]
                if not parent.children:
                    parent.children = None   # an emptied dict keeps its table
            self._nodes -= 1
            node = parent
            i -= 1
        return True

    cpdef dict get(self, str filt):
        """The subs dict of exactly `filt` (the trie's own), or None."""
        cdef _Node node
        if filt is None:
            return None
        node = _find(self.root, filt.split(u'/'), None)
        if node is None:
            return None
        return node.subs

    cdef int _reserve(self, Py_ssize_t need) except -1:
        """Grow both scratch buffers of _collect to hold `need` nodes."""
        cdef Py_ssize_t cap = self._cap * 2
        cdef PyObject **a
        cdef PyObject **b
        if need <= self._cap:
            return 0
        if cap < need:
            cap = need
        a = <PyObject **>PyMem_Realloc(self._bufs[0], cap * sizeof(PyObject *))
        if a == NULL:
            raise MemoryError()
        self._bufs[0] = a
        b = <PyObject **>PyMem_Realloc(self._bufs[1], cap * sizeof(PyObject *))
        if b == NULL:
            raise MemoryError()
        self._bufs[1] = b
        self._cap = cap
        return 0

    cdef int _collect(self, list levels, list out, bint names) except -1:
        """Append the subs (or filter strings) of every filter matching `levels`.

        Walks breadth-first, level by level, keeping the live nodes in two
        scratch arrays of borrowed pointers: no allocation per level, and the
        depth of a topic can't exhaust the C stack. Nothing in the walk runs
        Python code that could change the trie (dict keys are str; list
        appends allocate no GC-tracked object), so borrowing is safe. Each
        node is reached by one path only, hence each filter is reported at
        most once.
        """
        cdef Py_ssize_t i, j, ncur = 1, nnxt, n = len(levels)
        cdef bint dollar = (<str>levels[0]).startswith(u'$')
        cdef bint wild_ok
        cdef int which = 0
        cdef PyObject **cur
        cdef PyObject **nxt
        cdef _Node node, hit
        cdef object level
        cdef PyObject *child
        self._reserve(16)
        self._bufs[0][0] = <PyObject *>self.root
        for i in range(n):
            level = levels[i]
            # [MQTT-4.7.2-1]: no wildcard at the first level for '$' topics
            wild_ok = i != 0 or not dollar
            self._reserve(2 * ncur)
            cur = self._bufs[which]
            nxt = self._bufs[1 - which]
            nnxt = 0
            for j in range(ncur):
                node = <_Node>cur[j]
                if node.hash is not None and wild_ok:
                    hit = node.hash
                    if hit.subs is not None:
                        out.append(hit.filter if names else hit.subs)
                if node.children is not None:
                    child = PyDict_GetItem(node.children, level)
                    if child != NULL:
                        nxt[nnxt] = child
                        nnxt += 1
                if node.plus is not None and wild_ok:
                    nxt[nnxt] = <PyObject *>node.plus
                    nnxt += 1
            if nnxt == 0:
                return 0
            ncur = nnxt
            which = 1 - which
        cur = self._bufs[which]
        for j in range(ncur):
            node = <_Node>cur[j]
            if node.subs is not None:
                out.append(node.filter if names else node.subs)
            # 'sport/#' matches 'sport' too [MQTT-4.7.1-1]
            hit = node.hash
            if hit is not None and hit.subs is not None:
                out.append(hit.filter if names else hit.subs)
        return 0

    cpdef list match(self, str topic):
        """The subs dicts (the trie's own) of every filter matching `topic`."""
        cdef list out = []
        if topic is None:
            raise TypeError("topic must be str, not None")
        self._collect(topic.split(u'/'), out, False)
        return out

    cpdef list match_filters(self, str topic):
        """The filter strings matching `topic` (route table, tests)."""
        cdef list out = []
        if topic is None:
            raise TypeError("topic must be str, not None")
        self._collect(topic.split(u'/'), out, True)
        return out

    def filters(self):
        """All filters with at least one subscription, as a list."""
        cdef list out = [], stack = [self.root]
        cdef _Node node
        while stack:
            node = <_Node>stack.pop()
            if node.subs is not None:
                out.append(node.filter)
            if node.children is not None:
                stack.extend(node.children.values())
            if node.plus is not None:
                stack.append(node.plus)
            if node.hash is not None:
                stack.append(node.hash)
        return out

    def clear(self):
        """Drop every subscription (bumps `generation`)."""
        self.root = _new_node()
        self._count = 0
        self._nodes = 0
        self.generation += 1

    def __repr__(self):
        return "<SubTrie filters=%d nodes=%d generation=%d>" % (
            self._count, self._nodes, self.generation)


cdef class MatchCache:
    """topic -> SubTrie.match(topic), valid while the trie's generation holds.

    Any subscription change bumps the generation and empties the cache on the
    next lookup. When `maxsize` topics are cached the cache is emptied too:
    cheap, and a broker whose topics don't fit gains little from LRU order.
    The returned lists are shared between callers: don't mutate them.
    """

    cdef readonly SubTrie trie
    cdef readonly Py_ssize_t maxsize
    cdef dict cache
    cdef unsigned long long gen
    cdef readonly unsigned long long hits
    cdef readonly unsigned long long misses

    def __cinit__(self, SubTrie trie not None, Py_ssize_t maxsize=65536):
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.trie = trie
        self.cache = {}
        self.maxsize = maxsize
        self.gen = trie.generation
        self.hits = 0
        self.misses = 0

    cpdef list match(self, str topic):
        cdef PyObject *found
        cdef list result
        if self.gen != self.trie.generation:
            self.cache.clear()
            self.gen = self.trie.generation
        elif topic is not None:
            found = PyDict_GetItem(self.cache, topic)
            if found != NULL:
                self.hits += 1
                return <list>found
        result = self.trie.match(topic)
        self.misses += 1
        if len(self.cache) >= self.maxsize:
            self.cache.clear()
        self.cache[topic] = result
        return result

    def clear(self):
        self.cache.clear()

    def __len__(self):
        return len(self.cache)
