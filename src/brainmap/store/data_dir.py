"""Bringing data set folders into the data directory a server owns, all or nothing.

``brainmap load`` registers files by their path inside the data directory, and ``brainmap serve`` serves only
files inside it. A data set folder given from elsewhere is therefore copied (hard-linked where the file system
allows: no bytes are duplicated) to ``DATA_DIR/{product}/{data set id}/``, without what is not a result: the
virtual microscope's ``truth/``, hidden files and temporaries.

:class:`FolderImport` stages every copy in a hidden folder beside its target, then swaps them all into place
(keeping what was there) just before the database is written; :meth:`FolderImport.rollback` puts the old
folders back if the load fails, :meth:`FolderImport.commit` deletes them once it has succeeded.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["EXCLUDED_FOLDERS", "FolderImport", "dataset_target", "is_inside"]

#: Folders of a data set that are never copied nor registered (the virtual microscope's ground truth).
EXCLUDED_FOLDERS = frozenset({"truth"})


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, by name (a symbolic link inside ``folder`` counts as
    inside: the server, which follows links, refuses to serve one that leads out)."""
    return Path(os.path.abspath(path)).is_relative_to(folder.resolve())


def dataset_target(data_dir: Path, product: str, data_set_id: int) -> Path:
    """Where a data set's folder lives in the data directory: ``DATA_DIR/{product}/{id}``."""
    return data_dir / product / str(int(data_set_id))


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith((".tmp", ".part", ".lock"))


def _link_or_copy(source: str, target: str) -> None:
    """Hard-link ``source`` at ``target``; copy it where linking is not possible (another file system)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@dataclass
class FolderImport:
    """Copies of data set folders into the data directory, staged, then swapped in as one step."""

    staged: list[tuple[Path, Path]] = field(default_factory=list)  # (staging folder, target)
    backups: list[tuple[Path, Path]] = field(default_factory=list)  # (backup folder, target)
    placed: list[Path] = field(default_factory=list)

    def stage(self, source: Path, target: Path) -> None:
        """Copy ``source`` (a data set folder) to a hidden staging folder beside ``target``."""
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.incoming-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)

        def ignore(folder: str, names: list[str]) -> set[str]:
            top = Path(folder).resolve() == source.resolve()
            return {n for n in names if _ignored(n) or (top and n in EXCLUDED_FOLDERS)}

        shutil.copytree(source, staging, ignore=ignore, copy_function=_link_or_copy)
        self.staged.append((staging, target))

    def swap_in(self) -> None:
        """Move every staged folder onto its target; an existing target is kept aside until :meth:`commit`."""
        for staging, target in self.staged:
            if target.exists():
                backup = target.with_name(f".{target.name}.previous-{os.getpid()}")
                shutil.rmtree(backup, ignore_errors=True)
                os.replace(target, backup)
                self.backups.append((backup, target))
            os.replace(staging, target)
            self.placed.append(target)
        self.staged.clear()

    def rollback(self) -> None:
        """Undo: remove what was placed or staged, put the kept folders back."""
        for staging, _ in self.staged:
            shutil.rmtree(staging, ignore_errors=True)
        for target in self.placed:
            shutil.rmtree(target, ignore_errors=True)
        for backup, target in self.backups:
            os.replace(backup, target)
        self.staged.clear()
        self.placed.clear()
        self.backups.clear()

    def commit(self) -> None:
        """Delete the kept folders: the load succeeded."""
        for backup, _ in self.backups:
            shutil.rmtree(backup, ignore_errors=True)
        self.backups.clear()
        self.placed.clear()
