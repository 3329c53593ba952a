"""Redis storage: task history with secondary indexes, and the pending store that several
instances coordinate through, under one prefix.

Key layout, ``P`` being the prefix (``"taskflow"`` by default)::

    P:h:rec:<task_id>            string  one history record, as JSON
    P:h:ix:all                   zset    every history task id, scored by created_at (µs)
    P:h:ix:st:<status>           zset    the same, per status
    P:h:ix:fn:<func_name>        zset    per function
    P:h:ix:q:<queue>             zset    per queue
    P:h:ix:sf:<status>:<func>    zset    per status and function
    P:h:ix:tag:<key>=<value>     zset    per tag (key and value percent-encoded)
    P:h:ok                       zset    keyed tasks whose record is a success, by end_time (µs)
    P:p:tasks                    hash    pending store: task_id -> record JSON
    P:p:order                    zset    every pending task id, by created_at (µs)
    P:p:free                     zset    pending tasks nobody holds, by created_at (µs)
    P:p:lease                    zset    held pending tasks, by lease expiry (server ms)
    P:p:owner                    hash    held pending tasks: task_id -> owner
    P:p:cancel                   set     pending tasks whose cancellation was requested

Index members are task ids and scores are ``created_at`` in integer microseconds since the
epoch (exact in a double until the year 2255). Redis orders members of equal score by their
bytes, which for UTF-8 is the order of Python strings, so a reverse range walks history by
``(created_at, task_id)`` descending: exactly the keyset of :mod:`fastapi_taskflow._cursor`.
Needs Redis 6.2 or newer (``ZRANGE … BYSCORE REV``, ``ZMSCORE``). Transactions and scripts
span several keys, so the backend needs one server (a primary, with replicas if you
like), not Redis Cluster.

Modules: :mod:`.backend` (:class:`RedisBackend`), :mod:`.repository` (history queries),
:mod:`.coordinator` (multi-instance coordination), :mod:`.scripts` (the Lua scripts),
:mod:`._keys` (key names).
"""

from __future__ import annotations

from .backend import RedisBackend
from .coordinator import RedisCoordinator
from .repository import RedisHistoryRepository

__all__ = ["RedisBackend", "RedisCoordinator", "RedisHistoryRepository"]
