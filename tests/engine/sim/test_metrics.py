from engine.sim.metrics import weighted_percentile


def test_a_weighted_percentile_is_the_smallest_value_reaching_the_share() -> None:
    values, weights = [0.3, 0.1, 0.2], [1, 6, 3]  # 10 intervals: 6 x 0.1, 3 x 0.2, 1 x 0.3
    assert weighted_percentile(values, weights, 50) == 0.1
    assert weighted_percentile(values, weights, 60) == 0.1
    assert weighted_percentile(values, weights, 61) == 0.2
    assert weighted_percentile(values, weights, 90) == 0.2
    assert weighted_percentile(values, weights, 91) == 0.3
    assert weighted_percentile(values, weights, 100) == 0.3


def test_weightless_values_do_not_count() -> None:
    assert weighted_percentile([0.5, 0.1], [0, 2], 99) == 0.1
    assert weighted_percentile([], [], 50) == 0.0
    assert weighted_percentile([0.5], [0], 50) == 0.0
