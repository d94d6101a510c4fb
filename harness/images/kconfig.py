"""Kernel config fragments and the check that every required option stuck.

Kconfig silently drops an option whose dependencies are not met; a
kernel built that way would boot and then fail a scenario for a reason far
from its cause. So the build checks every line of the required fragments
against the final .config and fails naming the first option that did not stick.
"""

import re

from harness.base.errors import HarnessError

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")

#: The value of an option that is not set (absent or "# ... is not set").
UNSET = "n"


def parse(text: str) -> dict[str, str]:
    """A .config or fragment as {option: value}; unset options map to "n"."""
    options: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if m := _SET.match(line):
            options[m.group(1)] = m.group(2)
        elif m := _UNSET.match(line):
            options[m.group(1)] = UNSET
        elif line and not line.startswith("#"):
            raise HarnessError(f"line {lineno} is not a kconfig assignment: {raw!r}",
                               stage="kernel config")
    return options


def mismatches(required: dict[str, str], final: dict[str, str]) -> list[tuple[str, str, str]]:
    """(option, wanted, got) for every required option whose final value differs."""
    out = []
    for option, wanted in required.items():
        got = final.get(option, UNSET)
        if got != wanted:
            out.append((option, wanted, got))
    return out


def check(required: dict[str, str], final: dict[str, str], variant: str) -> None:
    bad = mismatches(required, final)
    if bad:
        option, wanted, got = bad[0]
        others = ", ".join(b[0] for b in bad[1:])
        more = f" (and {len(bad) - 1} more: {others})" if others else ""
        raise HarnessError(
            f"{option} did not stick in kernel variant {variant!r}: wanted {wanted}, "
            f"the final .config has {got}{more}; check its 'depends on' in Kconfig",
            stage="kernel config")


#: Options the harness's own builds set for their own sake (no modules to install, the
#: config kept in the image, debugfs), not because a scenario needs them: a kernel
#: image brought by the user is not held to them.
BUILD_POLICY = frozenset({"CONFIG_MODULES", "CONFIG_IKCONFIG", "CONFIG_IKCONFIG_PROC",
                          "CONFIG_DEBUG_FS"})


def lacking(required: dict[str, str], final: dict[str, str]) -> list[str]:
    """What a given kernel lacks of what the scenarios need, one phrase per option."""
    return [f"{option} (is {got}, needs {wanted})"
            for option, wanted, got in mismatches(required, final)
            if option not in BUILD_POLICY]
