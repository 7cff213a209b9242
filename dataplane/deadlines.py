"""How long a request may take when its caller sets no deadline.

A caller's own deadline (gRPC's, or the HTTP door's ``x-signalbox-timeout-ms``) always wins;
these are the node's defaults without one (``--default-timeout``, ``--stream-timeout``).
Either way the node ends the request itself, a little before the caller would give up
(``Pipeline._deadline``), so its answer carries the correlation id and the upstream is hung
up on.
"""

DEFAULT_DEADLINE_S = 60.0
"""Budget for a unary request (one answer, embeddings) whose caller set no deadline."""
DEFAULT_STREAM_DEADLINE_S = 600.0
"""Budget for a stream whose caller set no deadline: a long answer is what streams are for
(OpenAI's SDKs wait as long by default), while an upstream that drips forever still ends."""
