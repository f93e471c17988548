import pytest

from engine.sim.capacity import RatePoint, geometric_scales, highest_rate, slo_throughput


def test_highest_rate_interpolates_to_the_first_miss() -> None:
    points = [RatePoint(1.0, 1.0), RatePoint(2.0, 0.95), RatePoint(4.0, 0.85), RatePoint(8.0, 0.2)]
    assert highest_rate(points, 0.9) == pytest.approx(3.0)
    assert highest_rate(points, 0.95) == 2.0
    assert highest_rate(points, 0.1) == 8.0  # every rate meets it
    assert highest_rate(points, 1.0) == 1.0


def test_a_miss_at_the_lowest_rate_gives_zero() -> None:
    assert highest_rate([RatePoint(1.0, 0.5), RatePoint(2.0, 0.9)], 0.9) == 0.0


def test_a_later_recovery_does_not_count() -> None:
    points = [RatePoint(1.0, 0.95), RatePoint(2.0, 0.8), RatePoint(3.0, 0.95)]
    assert highest_rate(points, 0.9) == pytest.approx(1.0 + 1 / 3)


def test_geometric_scales() -> None:
    assert geometric_scales(0.5, 2.0, 3) == pytest.approx([0.5, 1.0, 2.0])
    with pytest.raises(ValueError):
        geometric_scales(1.0, 1.0, 3)


def test_slo_throughput_is_the_most_requests_a_second_within_the_slos() -> None:
    points = [RatePoint(1.0, 1.0), RatePoint(2.0, 0.9), RatePoint(4.0, 0.5)]
    assert slo_throughput(points) == pytest.approx(2.0)
    assert slo_throughput([]) == 0.0
