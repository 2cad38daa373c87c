"""A missing or too-old dependency is one line with the install command, never a traceback from deep inside."""

from __future__ import annotations

import re
from importlib import metadata

# Modules only an extra installs → that extra (the name a user passes to pip install 'dfprep[extra]').
EXTRA_OF_MODULE = {"skimage": "demo", "torch": "torch", "torchvision": "torch"}
_REQUIREMENT = re.compile(r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?"  # name[extras]
                          r"\s*>=\s*(?P<low>[0-9][0-9.]*)\s*(?:;(?P<marker>.*))?$")  # >=low ; marker
_EXTRA = re.compile(r"""extra\s*==\s*["'](?P<extra>[^"']+)["']""")


def release(version: str) -> tuple[int, ...]:
    """The numeric release part of a version (`17.0.1rc1` → (17, 0, 1)), for >= comparisons."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def lower_bounds(extra: str | None = None) -> dict[str, str]:
    """Distribution → lowest allowed version, from dfprep's installed metadata (base, plus one extra's)."""
    try:
        requirements = metadata.requires("dfprep") or []
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return {}
    bounds: dict[str, str] = {}
    for line in requirements:
        match = _REQUIREMENT.match(line)
        if not match:
            continue
        wanted = _EXTRA.search(match.group("marker") or "")
        if match.group("marker") and (not wanted or wanted.group("extra") != extra):
            continue
        bounds[match.group("name")] = match.group("low")
    return bounds


def dependency_problem(extra: str | None = None) -> str | None:
    """The first missing or too-old dependency as one line with the fix, or None when all are met."""
    for name, low in lower_bounds(extra).items():
        target = f"dfprep[{extra}]" if extra else "dfprep"
        fix = f"pip install '{target}'" if extra else f"pip install '{name}>={low}'"
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            return f"{name} is not installed ({target} needs {name}>={low}): {fix}"
        if release(installed) < release(low):
            return f"{name} {installed} is too old ({target} needs {name}>={low}): {fix}"
    return None


def missing_module_line(exc: ModuleNotFoundError) -> str:
    """One line for an import that failed: which extra to install, or which package to reinstall."""
    module = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra:
        return f"this command needs {module}, from an optional extra: pip install 'dfprep[{extra}]'"
    return f"module {module or '?'} is missing: reinstall dfprep's dependencies (pip install dfprep)"
