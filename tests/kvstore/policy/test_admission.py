"""Admission decisions, exactly, call by call."""

from kvstore.policy.admission import (
    Admission,
    AdmitAll,
    FrequencyAdmission,
    FullBlocksOnly,
    Offer,
)
from tests.kvstore.policy.helpers import key


def offer(name: str, *, is_last: bool = False, is_full: bool = True) -> Offer:
    return Offer(key(name), 0, is_last, is_full)


def test_admit_all() -> None:
    assert AdmitAll().admit(offer("a", is_last=True, is_full=False)) is Admission.FAST


def test_frequency_admission_sends_first_sightings_down_and_repeats_up() -> None:
    policy = FrequencyAdmission(first_seen=Admission.SLOW, window_blocks=2)
    assert [policy.admit(offer(n)) for n in "aab"] == [
        Admission.SLOW,
        Admission.FAST,
        Admission.SLOW,
    ]
    policy.admit(offer("c"))  # the window holds 2 keys: a falls out
    assert policy.admit(offer("a")) is Admission.SLOW
    assert FrequencyAdmission(first_seen=Admission.SKIP).admit(offer("x")) is Admission.SKIP


def test_full_blocks_only_skips_a_partial_last_block() -> None:
    policy = FullBlocksOnly()
    assert policy.admit(offer("a")) is Admission.FAST
    assert policy.admit(offer("b", is_last=True)) is Admission.FAST
    assert policy.admit(offer("c", is_last=True, is_full=False)) is Admission.SKIP
