"""Model files shipped inside PyPI packages (the default voice, the default Whisper model).

The packages are located, never imported: they hold data, and finding the folder through the import
system's spec runs none of their code.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from shared.errors import ConfigurationError


def package_dir(name: str) -> Path | None:
    """The folder of an installed package, found without running its code; None when it is absent."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_file(package: str, relative: str, *, install_hint: str) -> Path:
    """`relative` inside `package`; ConfigurationError saying what to install when either is missing."""
    folder = package_dir(package)
    if folder is None:
        raise ConfigurationError(install_hint)
    path = folder / relative
    if not path.is_file():
        raise ConfigurationError(f"{package} is installed but incomplete: {path} is missing")
    return path
