"""opacus' private names, behind one module (tested against opacus 1.6)."""

from __future__ import annotations

from collections.abc import Sequence

from opacus import GradSampleModule
from opacus.accountants import RDPAccountant


def remove_hooks(wrapped: GradSampleModule) -> None:
    """Detach a private model's per-sample-gradient hooks and attributes from the module it wraps
    (``GradSampleModule._close``; opacus has no public way to undo ``make_private``)."""
    wrapped._close()


def rdp_accountant(history: Sequence[tuple[float, float, int]]) -> RDPAccountant:
    """An RDP accountant that has seen ``history`` ((noise multiplier, sample rate, steps) per entry): opacus' own
    accountants are fed by its optimiser's hook, so the list is set directly (``RDPAccountant.history``)."""
    accountant = RDPAccountant()
    accountant.history = [tuple(h) for h in history]
    return accountant
