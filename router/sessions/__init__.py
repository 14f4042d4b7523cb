"""Session-id extraction: which WhatsApp session a proxied request is about.

``SessionExtractor(config.sessions, config.profile).extract(...)`` runs on every request;
see its docstring for the NEEDS_BODY protocol.
"""

from router.sessions.common import NEEDS_BODY, Extracted, NeedsBody
from router.sessions.extractor import SESSION_HEADER, SessionExtractor
from router.sessions.waha import DEFAULT_SESSION

__all__ = [
    "DEFAULT_SESSION",
    "NEEDS_BODY",
    "SESSION_HEADER",
    "Extracted",
    "NeedsBody",
    "SessionExtractor",
]
