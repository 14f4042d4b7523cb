"""Ban signals and stalled campaigns (pure): when the outbox should stop a session's queue
on its own, and when a campaign has stopped moving.

WhatsApp bans numbers that keep sending into a wall: a 429 or a body naming
``rate-overlimit`` says the number is being limited now, and ``outbox.pause_after_failures``
failed sends in a row say something is wrong with it; a session that goes FAILED or STOPPED
while it has sends queued has usually been logged out. Each pauses the session's queue
(``outbox_session_paused`` alert) until an operator resumes it. A running campaign with
messages left whose sent count has not moved for ``outbox.stall_alert`` raises
``outbox_campaign_stalled`` once (again only after it moved).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from router.outbox.outcome import Attempt, Verdict

DOWN = frozenset({"FAILED", "STOPPED"})


def after_attempt(streak: int, attempt: Attempt, verdict: Verdict, limit: int) -> tuple[int, str | None]:
    """The session's run of failed sends after this attempt, and why to pause it (or None)."""
    if attempt.status == 429 or attempt.rate_limited:
        return 0, "the instance answered 429 / rate-overlimit: WhatsApp is limiting this number"
    if verdict is Verdict.SENT:
        return 0, None
    if verdict is Verdict.WAIT:
        return streak, None  # the session was not ready: not a failed send
    streak += 1
    if streak >= limit:
        return 0, f"{streak} sends failed in a row"
    return streak, None


def status_pause(status: str | None) -> str | None:
    """Why a session's reported status pauses its queue, or None."""
    if status in DOWN:
        return f"the session went {status} with sends queued (logged out?)"
    return None


@dataclass
class StallWatch:
    """Per running campaign: its sent count and since when it stood still."""

    _seen: dict[str, tuple[int, float, bool]] = field(default_factory=dict)  # id -> (sent, since, told)

    def check(self, campaigns: list[tuple[str, int, bool]], now: float, after: float) -> list[str]:
        """``campaigns``: (id, sent, has messages left) of the running ones. The ids that
        just stalled (to alert once)."""
        out: list[str] = []
        current = {}
        for cid, sent, left in campaigns:
            if not left:
                continue
            prev = self._seen.get(cid)
            if prev is None or prev[0] != sent:
                current[cid] = (sent, now, False)
                continue
            told = prev[2]
            if not told and now - prev[1] >= after:
                out.append(cid)
                told = True
            current[cid] = (sent, prev[1], told)
        self._seen = current
        return out
