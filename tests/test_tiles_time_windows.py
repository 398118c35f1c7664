import datetime as dt

import pytest

from tiles import InputError, TimeWindow, parse_windows, split_windows, time_range

TODAY = dt.date(2024, 5, 15)
D = dt.date


def test_year_and_range():
    assert time_range(year=2021, today=TODAY) == TimeWindow(D(2021, 1, 1), D(2022, 1, 1))
    assert time_range("2020-06-01", "2020-07-01", today=TODAY) == TimeWindow(D(2020, 6, 1), D(2020, 7, 1))
    assert time_range("2024-01-01", "2024-05-15", today=TODAY).end == TODAY  # end exclusive: today allowed


@pytest.mark.parametrize("start, end, message", [
    ("2020-13-01", "2021-01-01", r"--start '2020-13-01' is not a valid date: expected YYYY-MM-DD"),
    ("2020-1-1", "2021-01-01", r"--start '2020-1-1' is not a valid date"),
    ("2020-01-01", "tomorrow", r"--end 'tomorrow' is not a valid date"),
    ("2020-06-01", "2020-06-01", r"--end 2020-06-01 must be after --start 2020-06-01 .*--end 2020-06-02"),
    ("2020-06-01", "2020-05-01", r"must be after --start"),
    ("2016-01-01", "2018-01-01", r"before Sentinel-2 surface reflectance is available \(2017-03-28\); "
                                 r"use --start 2017-03-28"),
    ("2024-01-01", "2024-06-01", r"end 2024-06-01 is in the future \(today is 2024-05-15.*--end 2024-05-15"),
])
def test_bad_ranges(start, end, message):
    with pytest.raises(InputError, match=message):
        time_range(start, end, today=TODAY)


def test_bad_combinations():
    with pytest.raises(InputError, match="either --year or --start/--end"):
        time_range("2020-01-01", "2021-01-01", year=2020, today=TODAY)
    with pytest.raises(InputError, match="a time range is required"):
        time_range(start="2020-01-01", today=TODAY)
    with pytest.raises(InputError, match="--year 'abc' is not a year"):
        time_range(year="abc", today=TODAY)
    with pytest.raises(InputError, match="in the future"):
        time_range(year=2024, today=TODAY)
    with pytest.raises(InputError, match="--windows 'weekly' is not one of none, monthly, quarterly, yearly"):
        parse_windows(year=2020, cadence="weekly", today=TODAY)


def test_future_uses_real_today():
    next_year = dt.date.today().year + 1
    with pytest.raises(InputError, match="is in the future"):
        time_range(year=next_year)


def test_monthly_partial_ends():
    windows = split_windows(TimeWindow(D(2020, 1, 15), D(2020, 3, 10)), "monthly")
    assert windows == [TimeWindow(D(2020, 1, 15), D(2020, 2, 1)), TimeWindow(D(2020, 2, 1), D(2020, 3, 1)),
                       TimeWindow(D(2020, 3, 1), D(2020, 3, 10))]


def test_monthly_across_year_end():
    windows = split_windows(TimeWindow(D(2020, 11, 1), D(2021, 2, 1)), "monthly")
    assert [w.key for w in windows] == ["2020-11-01_2020-12-01", "2020-12-01_2021-01-01", "2021-01-01_2021-02-01"]


def test_quarterly_calendar_aligned():
    windows = parse_windows("2020-02-10", "2021-01-01", cadence="quarterly", today=TODAY)
    assert [(w.start, w.end) for w in windows] == [
        (D(2020, 2, 10), D(2020, 4, 1)), (D(2020, 4, 1), D(2020, 7, 1)),
        (D(2020, 7, 1), D(2020, 10, 1)), (D(2020, 10, 1), D(2021, 1, 1))]


def test_yearly_and_none():
    windows = parse_windows("2018-07-01", "2020-03-01", cadence="yearly", today=TODAY)
    assert [(w.start, w.end) for w in windows] == [
        (D(2018, 7, 1), D(2019, 1, 1)), (D(2019, 1, 1), D(2020, 1, 1)), (D(2020, 1, 1), D(2020, 3, 1))]
    assert parse_windows(year=2019, today=TODAY) == [TimeWindow(D(2019, 1, 1), D(2020, 1, 1))]
    assert parse_windows(year=2019, cadence="yearly", today=TODAY) == [TimeWindow(D(2019, 1, 1), D(2020, 1, 1))]
    assert len(parse_windows(year=2019, cadence="monthly", today=TODAY)) == 12
