"""A simulated WhatsApp API instance (the WAHA subset of the contract), for demos and tests.

HTTP API (every response carries ``X-Sim-Instance: NAME``; with an api key every path but
``/ping`` and ``/health`` needs ``X-Api-Key`` or ``?x-api-key=``, else 401):

- ``GET /ping`` ``{"message":"pong"}``; ``GET /health``.
- ``GET /api/sessions[?all=true]``; ``POST /api/sessions`` ``{"name","start"}`` (201, 422 if
  it exists); ``GET|DELETE /api/sessions/{s}`` (404 if unknown);
  ``POST /api/sessions/{s}/start|stop|restart|logout`` (201; start creates unknown sessions,
  auth being in shared storage); deprecated ``POST /api/sessions/start|stop|logout`` ``{name}``.
- ``POST /api/sendText`` ``{"session","chatId","text"}``: 201 when WORKING, 404 unknown here,
  422 not WORKING (a STARTING session is awaited up to ``send_wait`` s first, as WAHA does).
- ``GET /api/{s}/auth/qr[?format=raw]``, ``GET /api/screenshot?session=s``: tiny PNGs/JSON.
- ``GET /api/files/{s}/{id}?bytes=N`` (default 4 MiB, any session name): streamed in 64 KiB
  chunks, byte ``i`` is ``i % 251`` (``router.sim.media.pattern``).
- ``GET /ws?session=s|*[&events=a,b]``: every message sent is echoed back unchanged; events
  arrive as the webhook JSON object (``"id": "evt_..."``, ``"event"``, ``"session"``...).
- Anything else: 200 echo ``{"instance","method","path","query","body","body_size",
  "body_sha256","body_truncated","headers"}`` (the api key is never echoed).
- Control: ``POST /sim/incoming`` ``{"session","from","text"}`` emits ``message``;
  ``POST /sim/events`` ``{"session","event","payload"}`` emits any event;
  ``POST /sim/sessions/{s}/status`` ``{"status"}`` forces a status; ``GET /sim/stats``;
  ``POST /sim/reset[?sessions=true]``.

Status changes emit ``session.status`` (payload ``{"status","statuses"}``). Events go to the
WebSocket subscribers and, with a webhook URL, to a background sender (ordered, 3 retries,
bounded queue dropping the oldest) signed with HMAC-SHA512 when a key is set.
"""

from router.sim.app import bound_port, create_sim_app, serve_sim
from router.sim.main import main

__all__ = ["bound_port", "create_sim_app", "main", "serve_sim"]
