"""`.env.example` documents exactly the settings that `shared.settings.Settings` reads."""

from __future__ import annotations

import re
from pathlib import Path

from shared.settings import Settings

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"

# `NAME=value` or a commented-out `# NAME=` / `#NAME=value` line. Prose comments never match:
# they do not start with an upper-case identifier immediately followed by `=`.
_ASSIGNMENT = re.compile(r"^\s*(?:#\s*)?(?:export\s+)?([A-Z][A-Z0-9_]*)\s*=")


def _aliases() -> set[str]:
    aliases = set()
    for name, field in Settings.model_fields.items():
        assert field.alias, f"Settings.{name} has no env alias"
        aliases.add(field.alias)
    return aliases


def _names_in_example() -> list[str]:
    return [m.group(1) for line in ENV_EXAMPLE.read_text().splitlines() if (m := _ASSIGNMENT.match(line))]


def test_env_example_lists_every_setting() -> None:
    missing = _aliases() - set(_names_in_example())
    assert not missing, f".env.example lacks: {sorted(missing)}"


def test_env_example_has_no_unknown_names() -> None:
    unknown = set(_names_in_example()) - _aliases()
    assert not unknown, f".env.example names settings that Settings does not read: {sorted(unknown)}"


def test_env_example_lists_each_setting_once() -> None:
    names = _names_in_example()
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f".env.example repeats: {duplicates}"


def test_env_example_loads_as_settings() -> None:
    """The active (uncommented) lines are valid values that reproduce the built-in defaults."""
    from_file = Settings(_env_file=ENV_EXAMPLE)
    defaults = Settings(_env_file=None)
    for name in Settings.model_fields:
        assert getattr(from_file, name) == getattr(defaults, name), name
