import pytest

from runs.selectors import percentile


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([], 0.5, None),
        ([7], 0.5, 7),
        ([7], 0.95, 7),
        ([40, 10, 30, 20], 0.5, 20),  # the lower middle value: half are at or below it
        ([10, 20, 30], 0.5, 20),
        ([30, 10], 0.5, 10),
        (list(range(1, 101)), 0.95, 95),
        (list(range(1, 21)), 0.95, 19),
        (list(range(1, 20)), 0.95, 19),
    ],
)
def test_percentile_is_the_nearest_rank(values, fraction, expected):
    assert percentile(values, fraction) == expected
