"""
Tests for L{codexgw.execgw.timestamps}: RFC 3339 UTC timestamps of C{exec-gateway.md} §3.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from codexgw.execgw.timestamps import format_timestamp, format_timestamp_seconds

MOMENT = datetime(2026, 5, 19, 10, 11, 12, tzinfo=UTC)
FRACTIONAL = r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,5}[1-9])?Z\Z"


class FormatTests(SynchronousTestCase):
    """
    L{format_timestamp}: shortest exact fraction; L{format_timestamp_seconds}: whole seconds.
    """

    def test_specExamples(self) -> None:
        """
        The examples of §3.
        """
        self.assertEqual(format_timestamp(MOMENT.replace(microsecond=500000)), "2026-05-19T10:11:12.5Z")
        self.assertEqual(format_timestamp_seconds(MOMENT), "2026-05-19T10:11:12Z")

    def test_fractions(self) -> None:
        """
        Up to six digits, trailing zeros removed, none when zero.
        """
        for microsecond, text in (
            (0, "2026-05-19T10:11:12Z"),
            (1, "2026-05-19T10:11:12.000001Z"),
            (120000, "2026-05-19T10:11:12.12Z"),
            (123450, "2026-05-19T10:11:12.12345Z"),
            (999999, "2026-05-19T10:11:12.999999Z"),
        ):
            with self.subTest(microsecond=microsecond):
                self.assertEqual(format_timestamp(MOMENT.replace(microsecond=microsecond)), text)

    def test_secondsTruncate(self) -> None:
        """
        The whole-second form drops the fraction rather than rounding up.
        """
        self.assertEqual(
            format_timestamp_seconds(MOMENT.replace(microsecond=999999)), "2026-05-19T10:11:12Z"
        )

    def test_otherZones(self) -> None:
        """
        A moment in another zone is converted to UTC.
        """
        paris = timezone(timedelta(hours=2))
        moment = datetime(2026, 5, 19, 12, 11, 12, 250000, tzinfo=paris)
        self.assertEqual(format_timestamp(moment), "2026-05-19T10:11:12.25Z")
        self.assertEqual(format_timestamp_seconds(moment), "2026-05-19T10:11:12Z")

    def test_naiveRefused(self) -> None:
        """
        A naive datetime is refused: its zone is unknown.
        """
        naive = datetime(2026, 5, 19, 10, 11, 12)
        self.assertRaises(ValueError, format_timestamp, naive)
        self.assertRaises(ValueError, format_timestamp_seconds, naive)

    def test_smallYears(self) -> None:
        """
        Years are always four digits.
        """
        self.assertEqual(
            format_timestamp(datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)), "0999-01-02T03:04:05Z"
        )

    @given(moment=st.datetimes(timezones=st.just(UTC)))
    def test_roundTrip(self, moment: datetime) -> None:
        """
        The text has the documented shape and parses back to the same instant; the whole-second form
        parses back to the instant without its microseconds.
        """
        text = format_timestamp(moment)
        self.assertRegex(text, FRACTIONAL)
        self.assertEqual(datetime.fromisoformat(text), moment)
        seconds = format_timestamp_seconds(moment)
        self.assertRegex(seconds, r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")
        self.assertEqual(datetime.fromisoformat(seconds), moment.replace(microsecond=0))
