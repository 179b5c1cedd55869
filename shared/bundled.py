"""Model files shipped inside PyPI packages (the default voice, the default Whisper model).

The packages are located, never imported: they hold data, and finding the folder through the import
system's spec runs none of their code.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
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


def join_verified(parts: Sequence[Path], target: Path, sha256: str, fix: str) -> None:
    """Write `parts` one after another to `target`, which appears only once their joined SHA-256 is
    `sha256` (a temporary file renamed into place: an interrupted or mixed join never passes for the
    model). Models too big for one PyPI file ship as slices (the GGUFs, Whisper base); `fix` says how
    to get good ones when the hash is wrong.
    """
    with replaced_atomically(target) as tmp:
        digest = hashlib.sha256()
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(4 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != sha256:
            raise ConfigurationError(f"the joined model's SHA-256 is {digest.hexdigest()}, expected {sha256}: {fix}")


@contextlib.contextmanager
def replaced_atomically(target: Path) -> Iterator[Path]:
    """A temporary path beside `target` to write a model file to: renamed onto `target` (readable by
    all) when the block ends normally, removed when it raises, so a half-made file never passes for
    the model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def verified_stamp(path: Path, sha256: str) -> str:
    """What a `.verified` file records: the hash a file was checked at, with its size and mtime, so that
    a later start trusts it without re-hashing (any change of size or mtime re-checks it)."""
    st = path.stat()
    return json.dumps({"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
