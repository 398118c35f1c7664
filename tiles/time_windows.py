"""Time ranges from ``--start/--end`` or ``--year``, fanned out into calendar windows.

Decisions:
- Dates are ISO ``YYYY-MM-DD``; ``end`` is exclusive (the card's ``TemporalSpec.range``).
- A range that starts before Sentinel-2 SR availability (2017-03-28 for ``S2_SR_HARMONIZED``) is refused,
  not clipped: an empty composite would waste Earth Engine quota, and silent clipping would change
  what the user asked for. The message gives the first valid start.
- A range that ends after today is refused (today's data are incomplete); end == today is the latest allowed.
- ``monthly``/``quarterly``/``yearly`` windows are calendar aligned (months; quarters starting Jan/Apr/Jul/Oct;
  years). The first and last windows are clipped to the range, so a range that does not start or end on
  a calendar boundary yields partial first/last windows. ``none`` keeps the range as one window.
"""
from __future__ import annotations

import datetime as dt
from typing import List, Optional

from tiles.errors import InputError
from tiles.records import TimeWindow

S2_SR_HARMONIZED_START = dt.date(2017, 3, 28)
CADENCES = ("none", "monthly", "quarterly", "yearly")
_MONTHS_PER_STEP = {"monthly": 1, "quarterly": 3, "yearly": 12}


def parse_date(text: str, option: str = "date") -> dt.date:
    """Parse ``YYYY-MM-DD``; ``option`` names the flag in the error message."""
    try:
        if len(text.strip()) != 10:
            raise ValueError("wrong length")
        return dt.date.fromisoformat(text.strip())
    except (ValueError, AttributeError, TypeError):
        raise InputError(f"{option} {text!r} is not a valid date: expected YYYY-MM-DD, e.g. 2021-06-01") from None


def time_range(start: Optional[str | dt.date] = None, end: Optional[str | dt.date] = None,
               year: Optional[int | str] = None, *, earliest: dt.date = S2_SR_HARMONIZED_START,
               today: Optional[dt.date] = None) -> TimeWindow:
    """The validated range [start, end) from either ``start`` + ``end`` or ``year``."""
    if year is not None and (start is not None or end is not None):
        raise InputError("give either --year or --start/--end, not both")
    if year is not None:
        try:
            year_int = int(year)
        except (TypeError, ValueError):
            raise InputError(f"--year {year!r} is not a year: expected e.g. 2021") from None
        if not 1 <= year_int <= 9998:
            raise InputError(f"--year {year!r} is not a year: expected e.g. 2021")
        first, last = dt.date(year_int, 1, 1), dt.date(year_int + 1, 1, 1)
    elif start is None or end is None:
        raise InputError("a time range is required: give --start YYYY-MM-DD and --end YYYY-MM-DD (end exclusive) "
                         "or --year YYYY")
    else:
        first = start if isinstance(start, dt.date) else parse_date(start, "--start")
        last = end if isinstance(end, dt.date) else parse_date(end, "--end")
    if last <= first:
        raise InputError(f"--end {last} must be after --start {first} (end is exclusive: for one day "
                         f"use --end {first + dt.timedelta(days=1)})")
    if first < earliest:
        raise InputError(f"start {first} is before Sentinel-2 surface reflectance is available ({earliest}); "
                         f"use --start {earliest} or later")
    today = today or dt.date.today()
    if last > today:
        raise InputError(f"end {last} is in the future (today is {today}; end is exclusive, so the latest "
                         f"allowed end is --end {today})")
    return TimeWindow(first, last)


def _add_months(day: dt.date, months: int) -> dt.date:
    index = day.year * 12 + (day.month - 1) + months
    return dt.date(index // 12, index % 12 + 1, 1)


def split_windows(window: TimeWindow, cadence: Optional[str] = "none") -> List[TimeWindow]:
    """Fan a range out into calendar-aligned windows (first/last clipped to the range)."""
    cadence = cadence or "none"
    if cadence not in CADENCES:
        raise InputError(f"--windows {cadence!r} is not one of {', '.join(CADENCES)}")
    if cadence == "none":
        return [window]
    step = _MONTHS_PER_STEP[cadence]
    # First calendar boundary after start: the start of the next step-aligned period.
    period_start_month = ((window.start.month - 1) // step) * step  # 0-based month of the period start
    boundary = _add_months(dt.date(window.start.year, period_start_month + 1, 1), step)
    windows, current = [], window.start
    while current < window.end:
        nxt = min(boundary, window.end)
        windows.append(TimeWindow(current, nxt))
        current, boundary = nxt, _add_months(boundary, step)
    return windows


def parse_windows(start: Optional[str] = None, end: Optional[str] = None, year: Optional[int | str] = None,
                  cadence: Optional[str] = "none", *, earliest: dt.date = S2_SR_HARMONIZED_START,
                  today: Optional[dt.date] = None) -> List[TimeWindow]:
    """CLI entry point: validated range fanned out into windows."""
    return split_windows(time_range(start, end, year, earliest=earliest, today=today), cadence)
