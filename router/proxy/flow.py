"""Flow control of a client connection: why it stopped reading, what its deadline means.

Shared by the connection (which owns the socket) and the exchange (which asks it to pause
or to expect more body): plain ints, tested and combined as bits on the hot path.
"""

from __future__ import annotations

from typing import Final

# Reasons to stop reading from a client, as bits: reading resumes only when none is left.
PAUSE_PIPELINE: Final = 1  # a request is queued behind the one being answered
PAUSE_BACKPRESSURE: Final = 2  # the instance does not take the body as fast as the client sends it
PAUSE_PREBUFFER: Final = 4  # body bytes pile up while the upstream connection is being set up

# What the connection's deadline means.
DL_NONE: Final = 0
DL_HEADERS: Final = 1  # a request head is being read
DL_IDLE: Final = 2  # keep-alive: waiting for the next request
DL_ACTIVE: Final = 3  # a request is being answered (limits.upstream_timeout)
DL_BODY: Final = 4  # reading a request body: the client must keep sending

# Body bytes held while an upstream connection is being set up.
PREBUFFER_LIMIT: Final = 256 * 1024
