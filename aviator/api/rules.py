"""Rule builders the spec's fields share, and the bounds they enforce.

Each returns a `Rule`: one CEL expression for the CRD (the API server rejects a bad
policy at admission) and the same check in Python (`holds`, for policies stored under
an older CRD), with one message for both.
"""

from __future__ import annotations

import re

from aviator.api.durations import DURATION_PATTERN, Duration
from aviator.api.schema import Rule

# No duration in a policy may be longer (an hour-long threshold or interval is a typo).
MAX_DURATION_TEXT = "1h"
MAX_DURATION = Duration.parse(MAX_DURATION_TEXT)
MAX_NAME_LENGTH = 63  # Service names and label values
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


def duration_bounds(field: str, minimum: Duration | None = None) -> Rule:
    """Greater than 0 (or at least `minimum`) and at most `MAX_DURATION`."""
    low = "duration(self) > duration('0s')"
    low_text = "greater than 0"
    if minimum is not None:
        low, low_text = f"duration(self) >= duration('{minimum}')", f"at least {minimum}"
    # The pattern guard keeps a malformed value to the pattern's own error instead of
    # adding a CEL evaluation error on top.
    return Rule(
        cel=(
            f"!self.matches(r'{DURATION_PATTERN}') || "
            f"({low} && duration(self) <= duration('{MAX_DURATION_TEXT}'))"
        ),
        message=f"{field} must be {low_text} and at most {MAX_DURATION_TEXT}",
        holds=lambda d: (d.ns > 0 if minimum is None else d >= minimum) and d <= MAX_DURATION,
    )


def not_empty(field: str) -> Rule:
    return Rule(cel="size(self) > 0", message=f"{field} must not be empty", holds=bool)


def service_name(field: str) -> Rule:
    label = re.compile(DNS1035_LABEL)
    return Rule(
        cel=f"size(self) == 0 || self.matches(r'{DNS1035_LABEL}')",
        message=(
            f"{field} must be a valid Service name: lowercase letters, digits and '-', "
            "starting with a letter and ending with a letter or digit"
        ),
        holds=lambda s: s == "" or label.fullmatch(s) is not None,
    )
