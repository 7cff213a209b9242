# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Ingest's fast path (``records._Batch.fast``) over a whole batch, compiled.

Per line it takes exactly the lines ``_Batch.fast`` takes and builds the same binary COPY row
(``records._Batch.row``), writing it straight into one growing buffer: the checks, the hex of
the hash, the filter columns and the row's framing are C here, where in Python they were
most of a record's parsing CPU (the JSON itself stays ``read_fields``', msgspec's decoder,
and the SHA-256 OpenSSL's through ``hashlib``). Any line it does not take goes to
``slow(line, line_no)`` (``records._slow``: the size bound and ``_Batch.general``), which
returns the row or the refusal that names what is wrong; the batch stops at the first
refusal. ``tests/controlplane/evidence/test_records.py`` runs its hostile inputs through
this and the Python path and compares them.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_FromLongLong
from cpython.unicode cimport PyUnicode_GET_LENGTH
from libc.math cimport nearbyint
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy


cdef extern from "Python.h":
    object PyMemoryView_FromMemory(char* mem, Py_ssize_t size, int flags)
    int PyBUF_READ
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) except NULL
    Py_ssize_t PyUnicode_FindChar(object unicode, Py_UCS4 ch, Py_ssize_t start, Py_ssize_t end, int direction) except -2
    bint PyUnicode_IS_ASCII(object o)
    void* PyUnicode_DATA(object o)


cdef const char* HASH_MEMBER_START = b',"hash":"'
cdef Py_ssize_t HASH_AT = 9
cdef Py_ssize_t HASH_MEMBER_BYTES = 9 + 64 + 2
cdef const char* HEX = b"0123456789abcdef"
cdef int64_t INT64_MAX = 9223372036854775807
cdef int64_t DAY_US = 86400000000


cdef struct Buf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap
    # False while ``data`` is the caller's (``parse_packed``'s ``out``); outgrown, the rows
    # move to memory of its own.
    bint owned


cdef int grow(Buf* buf, Py_ssize_t more) except -1:
    cdef Py_ssize_t cap
    cdef char* data
    if buf.size + more <= buf.cap:
        return 0
    cap = max(buf.cap * 2, buf.size + more, 65536)
    if buf.owned:
        data = <char*>realloc(buf.data, cap)
    else:
        data = <char*>malloc(cap)
        if data != NULL and buf.size:
            memcpy(data, buf.data, buf.size)
    if data == NULL:
        raise MemoryError()
    buf.data = data
    buf.cap = cap
    buf.owned = True
    return 0


cdef inline void put_i32(Buf* buf, int64_t value):
    cdef uint8_t* p = <uint8_t*>(buf.data + buf.size)
    p[0] = (value >> 24) & 0xFF
    p[1] = (value >> 16) & 0xFF
    p[2] = (value >> 8) & 0xFF
    p[3] = value & 0xFF
    buf.size += 4


cdef inline void put_i64(Buf* buf, int64_t value):
    cdef uint8_t* p = <uint8_t*>(buf.data + buf.size)
    cdef int i
    for i in range(8):
        p[i] = (value >> (56 - 8 * i)) & 0xFF
    buf.size += 8


cdef inline void put(Buf* buf, const char* data, Py_ssize_t n):
    memcpy(buf.data + buf.size, data, n)
    buf.size += n


cdef bint all_ascii(const char* p, Py_ssize_t n):
    cdef Py_ssize_t i = 0
    cdef uint64_t word
    while i + 8 <= n:
        memcpy(&word, p + i, 8)
        if word & 0x8080808080808080ULL:
            return False
        i += 8
    while i < n:
        if <uint8_t>p[i] & 0x80:
            return False
        i += 1
    return True


cdef inline int unhex(int c):
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    return -1


cdef bint hex64(object value, uint8_t* out):
    """``value`` is a str of 64 lowercase hex digits: its 32 bytes into ``out``."""
    cdef const uint8_t* s
    cdef int hi, lo, i
    if type(value) is not str or PyUnicode_GET_LENGTH(value) != 64 or not PyUnicode_IS_ASCII(value):
        return False
    s = <const uint8_t*>PyUnicode_DATA(value)
    for i in range(32):
        hi = unhex(s[2 * i])
        lo = unhex(s[2 * i + 1])
        if hi < 0 or lo < 0:
            return False
        out[i] = (hi << 4) | lo
    return True


cdef object text_field(object value, Py_ssize_t limit, object general_text):
    """A filter column's value as ``records._str`` encodes it (None: its Python form, for
    a value over ``limit`` characters or with NUL; an empty one for None)."""
    if value is None:
        return b""
    if PyUnicode_GET_LENGTH(value) > limit or PyUnicode_FindChar(value, 0, 0, PyUnicode_GET_LENGTH(value), 1) != -1:
        return general_text(value, limit)[4:]
    return value


cdef int put_text(Buf* buf, object value) except -1:
    """``value`` (str or bytes, from ``text_field``) with its length."""
    cdef Py_ssize_t n
    cdef const char* data
    if type(value) is bytes:
        n = PyBytes_GET_SIZE(value)
        data = PyBytes_AS_STRING(value)
    else:
        data = PyUnicode_AsUTF8AndSize(value, &n)
    grow(buf, 4 + n)
    put_i32(buf, n)
    put(buf, data, n)
    return 0


def parse(
    batch,
    list lines,
    read_fields,
    sha256,
    slow,
    general_text,
    tuple limits,
):
    """``records.parse_lines``' columns for ``lines``: (seqs, hashes, prev_hashes, rows, ends,
    days, refused, spends). ``limits``: (MAX_RECORD_BYTES, KEY_ID_CHARS, NAME_CHARS,
    RESULT_CHARS, TS_MIN, TS_MAX, MAX_AHEAD_S, PG_EPOCH_US, ID_CHARS)."""
    cdef Buf buf
    buf.data = NULL
    buf.size = 0
    buf.cap = 0
    buf.owned = True
    try:
        out = _parse(batch, len(lines), lines, NULL, NULL, &buf, read_fields, sha256, slow, general_text, limits)
        out[3] = PyBytes_FromStringAndSize(buf.data, buf.size) if buf.size else b""
    finally:
        if buf.owned:
            free(buf.data)
    return tuple(out)


def packed_size(list lines):
    """The bytes ``pack`` writes for ``lines``."""
    cdef Py_ssize_t total = 8 * len(lines)
    cdef object line
    for line in lines:
        total += len(line)
    return total


def pack(list lines, unsigned char[::1] out):
    """``lines`` into ``out`` as ``parse_packed`` reads them: their ends (int64, this
    machine's byte order, from the end of that table), then the lines one after the other;
    the bytes written. ``out`` must hold ``packed_size(lines)``."""
    cdef Py_ssize_t count = len(lines), at = 8 * count, n, i = 0
    cdef object line
    cdef const unsigned char[::1] view
    if packed_size(lines) > out.shape[0]:
        raise ValueError("out is smaller than packed_size(lines)")
    for line in lines:
        view = line
        n = view.shape[0]
        if n:
            memcpy(&out[at], &view[0], n)
        at += n
        (<int64_t*>&out[8 * i])[0] = at - 8 * count
        i += 1
    return at


def parse_packed(
    batch,
    const unsigned char[::1] data,
    Py_ssize_t count,
    unsigned char[::1] out,
    read_fields,
    sha256,
    slow,
    general_text,
    tuple limits,
):
    """``parse`` of the ``count`` lines ``pack`` wrote to ``data``, each read where it lies;
    the rows are written to ``out``. As ``parse``'s answer, but with the rows' length in
    ``out`` instead of the rows, or the rows themselves (bytes) if they outgrew it."""
    cdef Py_ssize_t table = 8 * count, i, last = 0, end
    cdef const int64_t* ends
    cdef Buf buf
    if count < 0 or table > data.shape[0]:
        raise ValueError("data holds fewer line ends than count")
    ends = <const int64_t*>&data[0] if count else NULL
    for i in range(count):  # written by ``pack`` in this process's parent; still, never read past
        end = ends[i]
        if end < last or end > data.shape[0] - table:
            raise ValueError("data's line ends are out of order or past its end")
        last = end
    buf.data = <char*>&out[0] if out.shape[0] else NULL
    buf.size = 0
    buf.cap = out.shape[0]
    buf.owned = False
    try:
        result = _parse(
            batch, count, None, <const char*>&data[0] + table if count else NULL, ends, &buf,
            read_fields, sha256, slow, general_text, limits,
        )
        result[3] = PyBytes_FromStringAndSize(buf.data, buf.size) if buf.owned else buf.size
    finally:
        if buf.owned:
            free(buf.data)
    return tuple(result)


cdef list _parse(
    batch,
    Py_ssize_t count,
    list lines,
    const char* packed,
    const int64_t* packed_ends,
    Buf* buf,
    read_fields,
    sha256,
    slow,
    general_text,
    tuple limits,
):
    """The loop of ``parse`` and ``parse_packed``: line ``i`` is ``lines[i]``, or (``lines``
    None) ``packed[packed_ends[i - 1]:packed_ends[i]]``. Rows go to ``buf``; the answer's
    rows are left for the caller to fill in."""
    cdef Py_ssize_t max_record = limits[0]
    cdef Py_ssize_t key_id_chars = limits[1]
    cdef Py_ssize_t name_chars = limits[2]
    cdef Py_ssize_t result_chars = limits[3]
    cdef double ts_min = limits[4]
    cdef double ts_max = limits[5]
    cdef double max_ahead = limits[6]
    cdef int64_t pg_epoch_us = limits[7]
    cdef Py_ssize_t id_chars = limits[8]
    cdef double received = batch.received
    cdef bytes head = batch.head
    cdef bytes node_field = batch.node_field
    cdef str chain_id = batch.chain_id
    cdef str node_id = batch.node_id

    cdef list seqs = [], hashes = [], prevs = [], ends = []
    cdef set days = set()
    cdef dict spends = {}
    cdef object refused = None

    cdef Py_ssize_t line_no = 0, n, start, i
    cdef const char* p
    cdef int64_t seq = 0, us = 0
    cdef uint8_t prev_raw[32]
    cdef uint8_t digest_raw[32]
    cdef object line, fields, parsed, digest, prev, row, spend, fields_source
    for i in range(count):
        line_no += 1
        if lines is not None:
            line = lines[i]
            if type(line) is not bytes:
                line = bytes(line)
            n = PyBytes_GET_SIZE(line)
            p = PyBytes_AS_STRING(line)
        else:
            start = packed_ends[i - 1] if i else 0
            n = packed_ends[i] - start
            p = packed + start
            line = None
        parsed = None
        if n <= max_record:
            fields_source = line
            if lines is None:
                # Read where it lies: msgspec copies what it keeps, and the view dies here.
                fields_source = PyMemoryView_FromMemory(<char*>p, n, PyBUF_READ)
            if n and p[n - 1] == 10:
                n -= 1
            start = n - HASH_MEMBER_BYTES
            fields = None
            if (
                start >= 1
                and memcmp(p + start, HASH_MEMBER_START, HASH_AT) == 0
                and p[n - 2] == 34 and p[n - 1] == 125
            ):
                # With its newline, if any: JSON's trailing whitespace, read alike, and no copy.
                if lines is None:
                    fields = read_fields(fields_source, all_ascii(p, n))
                else:
                    fields = read_fields(fields_source)
            fields_source = None
            if fields is not None:
                parsed = fast_row(
                    buf, fields, p, n, start, chain_id, node_id, received, head, node_field,
                    sha256, general_text, key_id_chars, name_chars, result_chars, ts_min, ts_max,
                    max_ahead, pg_epoch_us, id_chars, digest_raw, prev_raw, &seq, &us,
                )
        if parsed is None:
            if line is None:
                start = packed_ends[i - 1] if i else 0
                line = PyBytes_FromStringAndSize(packed + start, packed_ends[i] - start)
            parsed = slow(line, line_no)
            if not isinstance(parsed, tuple):
                refused = parsed
                break
            seq, digest, prev, us, row, spend = parsed
            grow(buf, PyBytes_GET_SIZE(row))
            put(buf, PyBytes_AS_STRING(row), PyBytes_GET_SIZE(row))
            if spend is not None:
                spends[len(seqs)] = (*spend, us)
            hashes.append(digest)
            prevs.append(prev)
        else:
            hashes.append(PyBytes_FromStringAndSize(<char*>digest_raw, 32))
            prevs.append(PyBytes_FromStringAndSize(<char*>prev_raw, 32))
            if parsed is not True:
                spends[len(seqs)] = (*parsed, us)
        seqs.append(PyLong_FromLongLong(seq))
        ends.append(buf.size)
        days.add(us // DAY_US if us >= 0 else -((-us + DAY_US - 1) // DAY_US))
    return [seqs, hashes, prevs, None, ends, days, refused, spends]


cdef object fast_row(
    Buf* buf,
    object fields,
    const char* p,
    Py_ssize_t n,
    Py_ssize_t start,
    str chain_id,
    str node_id,
    double received,
    bytes head,
    bytes node_field,
    object sha256,
    object general_text,
    Py_ssize_t key_id_chars,
    Py_ssize_t name_chars,
    Py_ssize_t result_chars,
    double ts_min,
    double ts_max,
    double max_ahead,
    int64_t pg_epoch_us,
    Py_ssize_t id_chars,
    uint8_t* digest_raw,
    uint8_t* prev_raw,
    int64_t* seq_out,
    int64_t* us_out,
):
    """The row of a line ``read_fields`` read (``fields``), appended to ``buf``; True, or the
    record's spend (tenant, key, nanos); None when ``_Batch.fast`` would not take it
    (nothing appended then)."""
    cdef int overflow = 0
    cdef int64_t seq, whole, us, nanos
    cdef double ts
    cdef Py_ssize_t i, rid_len
    cdef const char* rid
    cdef const uint8_t* d
    cdef char digest_hex[64]
    cdef char* hashed_data
    cdef object value, key, routing, served, outcome, cost, total, digest, hashed
    cdef object correlation_id, tenant_id, api_key_id, model, code
    cdef object spend = True

    value = fields.seq
    if type(value) is not int:
        return None
    seq = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow or seq < 1:
        return None
    ts = fields.ts
    if not (ts_min <= ts < ts_max):
        return None
    value = fields.record_id
    rid_len = PyUnicode_GET_LENGTH(value)
    if not (0 < rid_len <= key_id_chars) or PyUnicode_FindChar(value, 0, 0, rid_len, 1) != -1:
        return None
    rid = PyUnicode_AsUTF8AndSize(value, &rid_len)
    if fields.node_id != node_id:
        return None
    value = fields.chain_id
    if type(value) is not str or <str>value != chain_id:
        return None
    if not hex64(fields.prev_hash, prev_raw):
        return None
    # The hash over the line without its hash member, which must be the line's last one.
    hashed = PyBytes_FromStringAndSize(NULL, start + 1)
    hashed_data = PyBytes_AS_STRING(hashed)
    memcpy(hashed_data, p, start)
    hashed_data[start] = 125
    digest = sha256(hashed).digest()
    d = <const uint8_t*>PyBytes_AS_STRING(digest)
    for i in range(32):
        digest_raw[i] = d[i]
        digest_hex[2 * i] = HEX[d[i] >> 4]
        digest_hex[2 * i + 1] = HEX[d[i] & 15]
    if memcmp(p + start + HASH_AT, digest_hex, 64) != 0:
        return None
    value = fields.hash
    if (
        type(value) is not str
        or PyUnicode_GET_LENGTH(value) != 64
        or not PyUnicode_IS_ASCII(value)
        or memcmp(PyUnicode_DATA(value), digest_hex, 64) != 0
    ):
        return None

    routing = fields.routing
    served = routing.served_by if routing is not None else None
    outcome = fields.outcome
    correlation_id = text_field(fields.correlation_id, name_chars, general_text)
    tenant_id = text_field(fields.tenant_id, name_chars, general_text)
    api_key_id = text_field(fields.api_key_id, name_chars, general_text)
    model = text_field(served.model if served is not None else None, name_chars, general_text)
    code = text_field(outcome.code if outcome is not None else None, result_chars, general_text)

    cost = fields.cost
    total = cost.total_nanos if cost is not None else None
    if type(total) is int:
        nanos = PyLong_AsLongLongAndOverflow(total, &overflow)
        value = fields.tenant_id
        key = fields.api_key_id
        if (
            not overflow
            and nanos > 0
            and type(value) is str
            and PyUnicode_GET_LENGTH(value) == id_chars
            and (key is None or (type(key) is str and PyUnicode_GET_LENGTH(key) in (0, id_chars)))
        ):
            spend = (value, key or "", total)
        overflow = 0

    if ts > received + max_ahead:
        ts = received
    # As ``datetime.fromtimestamp`` rounds (the fraction alone, half to even).
    whole = <int64_t>ts
    us = whole * 1000000 + <int64_t>nearbyint((ts - whole) * 1e6)

    grow(buf, PyBytes_GET_SIZE(head) + 24 + 4 + rid_len + 72 + PyBytes_GET_SIZE(node_field) + 4 + n)
    put(buf, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head))
    put_i32(buf, 8)
    put_i64(buf, seq)
    put_i32(buf, 8)
    put_i64(buf, us - pg_epoch_us)
    put_i32(buf, rid_len)
    put(buf, rid, rid_len)
    put_i32(buf, 32)
    put(buf, <const char*>digest_raw, 32)
    put_i32(buf, 32)
    put(buf, <const char*>prev_raw, 32)
    put(buf, PyBytes_AS_STRING(node_field), PyBytes_GET_SIZE(node_field))
    put_text(buf, correlation_id)
    put_text(buf, tenant_id)
    put_text(buf, api_key_id)
    put_text(buf, model)
    put_text(buf, code)
    grow(buf, 4 + n)
    put_i32(buf, n)
    put(buf, p, n)
    seq_out[0] = seq
    us_out[0] = us
    return spend


def extend(list stack, list leaves, sha256):
    """``merkle.Tree.append`` of each of ``leaves`` (record hashes) in order, onto ``stack``
    (the tree's ``_stack``: (height, subtree root), tallest first), with RFC 9162's leaf and
    node hashes; the count of leaves appended."""
    cdef char leaf_buf[33]
    cdef char node_buf[65]
    cdef object leaf, digest, top, left
    cdef Py_ssize_t height
    leaf_buf[0] = 0
    node_buf[0] = 1
    for leaf in leaves:
        if type(leaf) is not bytes or PyBytes_GET_SIZE(leaf) != 32:
            raise ValueError("a leaf is a 32-byte record hash")
        memcpy(leaf_buf + 1, PyBytes_AS_STRING(leaf), 32)
        digest = sha256(PyBytes_FromStringAndSize(leaf_buf, 33)).digest()
        height = 0
        while stack:
            top = stack[len(stack) - 1]
            if <Py_ssize_t>top[0] != height:
                break
            left = top[1]
            if type(left) is not bytes or PyBytes_GET_SIZE(left) != 32:
                raise ValueError("a subtree root is 32 bytes")
            stack.pop()
            memcpy(node_buf + 1, PyBytes_AS_STRING(left), 32)
            memcpy(node_buf + 33, PyBytes_AS_STRING(digest), 32)
            digest = sha256(PyBytes_FromStringAndSize(node_buf, 65)).digest()
            height += 1
        stack.append((height, digest))
    return len(leaves)
