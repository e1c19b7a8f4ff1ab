"""The campaign's and each car's states (the one place they are defined), and the per-VIN state machine.

Pure (no database, no clock), so every other part asks this module before it moves a car,
and the property tests can drive it with arbitrary sequences. The car's own reports are
ordered by ``StatusReport.progress`` in ingest; this module says whether the *kind* of move
is legal at all (an operator cannot declare a car remedied over the air, a timeout cannot
undo a remedy, a cancel cannot touch a car that has started installing).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from enum import StrEnum

from firmware_bundles.messages import ReportState


class VinState(StrEnum):
    """Where one car stands in one campaign (the server's view)."""

    PENDING = "pending"  # in the population; no report yet (notice not sent, or not acknowledged)
    NOTIFIED = "notified"
    DEFERRED = "deferred"  # preconditions not met or owner postponed (reason in ``detail``)
    CONSENTED = "consented"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    REBOOTING = "rebooting"
    REMEDIED = "remedied"  # signed report after the new software booted and passed its health check
    FAILED = "failed"  # with a reason code
    ROLLED_BACK = "rolled_back"
    TIMED_OUT = "timed_out"  # in progress longer than the campaign allows
    REMEDIED_AT_DEALER = "remedied_at_dealer"  # recorded by an operator, with evidence
    INSPECTED_NOT_NEEDED = "inspected_not_needed"  # recorded by an operator, with evidence
    UNREACHABLE = "unreachable"  # exported, stolen, scrapped, other (recorded by an operator)
    DECLINED = "declined"  # the owner declined a non-safety update
    WITHDRAWN = "withdrawn"  # the campaign was cancelled before this car started


class CampaignStatus(StrEnum):
    """Where a whole campaign stands."""

    ACTIVE = "active"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    COMPLETED = "completed"  # every car final: nothing left to notify, in flight or to retry


class CampaignKind(StrEnum):
    REMEDY = "remedy"  # the recall's own campaign
    ROLLBACK = "rollback"  # launched by a tripped gate: the rollback release to the wave's remedied cars


class Cause(StrEnum):
    """Who moves a car."""

    CAR = "car"  # a signed status report
    OPERATOR = "operator"  # dealer remedy, inspection, unreachable (through the API)
    TIMEOUT = "timeout"  # the scheduler: in progress too long
    CANCEL = "cancel"  # the campaign was cancelled
    RETRY = "retry"  # a new notice (new nonce) after a transient failure or an operator's retry


class UnreachableReason(StrEnum):
    EXPORTED = "exported"
    STOLEN = "stolen"
    SCRAPPED = "scrapped"
    OTHER = "other"


S = VinState
NOT_STARTED = frozenset({S.PENDING, S.NOTIFIED, S.DEFERRED, S.CONSENTED})
INSTALLING = frozenset({S.DOWNLOADING, S.VERIFYING, S.INSTALLING, S.REBOOTING})
IN_FLIGHT = NOT_STARTED | INSTALLING
SUCCESS = frozenset({S.REMEDIED, S.REMEDIED_AT_DEALER, S.INSPECTED_NOT_NEEDED})
ERRORS = frozenset({S.FAILED, S.ROLLED_BACK, S.TIMED_OUT})  # count against the error threshold
RETRYABLE = ERRORS
OPERATOR_OUTCOMES = frozenset({S.REMEDIED_AT_DEALER, S.INSPECTED_NOT_NEEDED, S.UNREACHABLE})
# Final unless an operator records something or a retry is issued.
SETTLED = SUCCESS | ERRORS | frozenset({S.UNREACHABLE, S.DECLINED, S.WITHDRAWN})
CAR_STATES = frozenset(VinState(s.value) for s in ReportState)


class StateWord(StrEnum):
    """What a car list's ``state`` filter takes: any :class:`VinState`, or a group word for several.

    One enum (not a union) so the API schema lists every word in one place and a wrong word's
    422 names them all; tests/ota_server/test_campaign_vehicles_errors.py keeps it equal to
    VinState plus the groups.
    """

    PENDING = "pending"
    NOTIFIED = "notified"
    DEFERRED = "deferred"
    CONSENTED = "consented"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    REBOOTING = "rebooting"
    REMEDIED = "remedied"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    TIMED_OUT = "timed_out"
    REMEDIED_AT_DEALER = "remedied_at_dealer"
    INSPECTED_NOT_NEEDED = "inspected_not_needed"
    UNREACHABLE = "unreachable"
    DECLINED = "declined"
    WITHDRAWN = "withdrawn"
    ERRORS = "errors"  # failed, rolled_back, timed_out: what a progress summary counts as failed


STATE_GROUPS: Mapping[StateWord, frozenset[VinState]] = {StateWord.ERRORS: ERRORS}


def expand_states(words: Iterable[StateWord]) -> frozenset[VinState]:
    """The states ``words`` name (a group word stands for each of its states)."""
    found: set[VinState] = set()
    for word in words:
        found |= STATE_GROUPS.get(word) or {VinState(word.value)}
    return frozenset(found)


# An operator's record of a car out of reach (stolen, exported, scrapped) stands: the car's own reports
# never move it (a stolen car that connects is not put back in the campaign).
_CAR_SOURCES = IN_FLIGHT | frozenset({S.TIMED_OUT})
# A car that truly started before the cancel reached it finishes and reports as usual.
_AFTER_WITHDRAWAL = INSTALLING | frozenset({S.REMEDIED, S.FAILED, S.ROLLED_BACK, S.WITHDRAWN})
_NEW_ATTEMPT_SOURCES = frozenset({S.FAILED, S.ROLLED_BACK, S.TIMED_OUT, S.DECLINED})


class IllegalTransition(ValueError):
    def __init__(self, src: VinState, dst: VinState, cause: Cause) -> None:
        super().__init__(f"a car in {src} cannot become {dst} by {cause}")
        self.src, self.dst, self.cause = src, dst, cause


def allowed(src: VinState, dst: VinState, cause: Cause, *, new_attempt: bool = False) -> bool:
    """Whether ``cause`` may move a car from ``src`` to ``dst``.

    ``new_attempt``: a car report of a higher attempt than the stored one (the car
    started over after a failure, with the nonce it holds).
    """
    if cause is Cause.CAR:
        if dst not in CAR_STATES:
            return False
        if src is S.WITHDRAWN:
            return dst in _AFTER_WITHDRAWAL
        if new_attempt and src in _NEW_ATTEMPT_SOURCES:
            return True
        if src is S.TIMED_OUT:  # it was alive after all: any later step, but not back to the start
            return dst not in NOT_STARTED
        return src in _CAR_SOURCES and src != dst
    if cause is Cause.OPERATOR:
        if dst is S.REMEDIED_AT_DEALER:
            return src not in (S.REMEDIED, S.REMEDIED_AT_DEALER)
        if dst is S.INSPECTED_NOT_NEEDED:
            return src not in SUCCESS
        if dst is S.UNREACHABLE:
            return src not in SUCCESS and src not in INSTALLING and src is not S.UNREACHABLE
        return False
    if cause is Cause.TIMEOUT:
        return dst is S.TIMED_OUT and src in IN_FLIGHT
    if cause is Cause.CANCEL:
        return dst is S.WITHDRAWN and src in NOT_STARTED
    if cause is Cause.RETRY:
        return dst is S.PENDING and src in RETRYABLE
    return False


def check(src: VinState, dst: VinState, cause: Cause, *, new_attempt: bool = False) -> VinState:
    """``dst`` if the move is legal; raise :class:`IllegalTransition` otherwise."""
    if not allowed(src, dst, cause, new_attempt=new_attempt):
        raise IllegalTransition(src, dst, cause)
    return dst


def counts(states: Iterable[str]) -> dict[str, int]:
    """One count per state (zeros included): the numbers always add up to the cars given."""
    tally = Counter(VinState(s) for s in states)
    return {state.value: tally.get(state, 0) for state in VinState}


def tally_errors(by_state: Mapping[str, int]) -> int:
    return sum(by_state.get(s.value, 0) for s in ERRORS)
