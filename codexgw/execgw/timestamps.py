"""
RFC 3339 timestamps for JSON bodies (C{exec-gateway.md} §3).

Two spellings, both in UTC with C{Z}:
 - L{format_timestamp}: fractional seconds with up to 6 digits, trailing zeros removed, omitted when
   zero (C{2026-05-19T10:11:12.5Z}) — every JSON timestamp except the SDK's C{last_seen};
 - L{format_timestamp_seconds}: whole seconds (C{2026-05-19T10:11:12Z}) — the SDK's C{last_seen}.

Decisions where the spec is silent:
 - A naive C{datetime} is refused with C{ValueError}: its zone is unknown, and guessing (local time or
   UTC) would silently shift what clients see. The store hands out timezone-aware datetimes (§8.1).
 - The whole-second spelling truncates the fraction (like Go's C{time.RFC3339}), so it never shows a
   moment later than the one recorded.
"""

from __future__ import annotations

from datetime import UTC, datetime


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware")
    return moment.astimezone(UTC)


def _whole_seconds(utc: datetime) -> str:
    # Spelled out rather than strftime("%Y"): strftime does not zero-pad years below 1000 everywhere.
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
    )


def format_timestamp(moment: datetime) -> str:
    """
    Format C{moment} as RFC 3339 UTC with the shortest exact fraction, e.g. C{2026-05-19T10:11:12.5Z}.

    @param moment: a timezone-aware datetime, in any zone.
    @raise ValueError: when C{moment} is naive.
    """
    utc = _utc(moment)
    text = _whole_seconds(utc)
    if utc.microsecond:
        text += "." + f"{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def format_timestamp_seconds(moment: datetime) -> str:
    """
    Format C{moment} as RFC 3339 UTC in whole seconds (fraction truncated), e.g. C{2026-05-19T10:11:12Z}.

    @param moment: a timezone-aware datetime, in any zone.
    @raise ValueError: when C{moment} is naive.
    """
    return _whole_seconds(_utc(moment)) + "Z"
