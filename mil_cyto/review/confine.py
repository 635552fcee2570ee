"""The runs root: the one folder the review app may open runs from.

The server's command line fixes it (``--runs-root DIR``, or the ``--run RUN`` folder alone);
whatever the browser sends (a path typed in the sidebar, a ``?run=`` query parameter) is
checked here: ``..`` parts, absolute paths and symlinks that lead outside the root are
refused with a :class:`~mil_cyto.errors.MilCytoError` saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath

from mil_cyto.errors import MilCytoError
from mil_cyto.review.runs import is_run


@dataclass(frozen=True)
class RunsRoot:
    """A resolved folder (symlinks followed) below which runs may be opened."""

    path: Path

    @classmethod
    def open(cls, path: Path) -> RunsRoot:
        """The root as given on the server's command line, resolved.

        Raises:
            MilCytoError: ``path`` is not a folder.
        """
        resolved = Path(path).expanduser().resolve()
        if not resolved.is_dir():
            raise MilCytoError(
                f"runs root {path} is not a folder; start the app with --runs-root DIR "
                "(a folder holding training runs) or --run RUN"
            )
        return cls(resolved)

    def contains(self, path: Path) -> bool:
        """True when ``path`` (symlinks followed) is the root or lies below it."""
        return Path(path).resolve().is_relative_to(self.path)

    def resolve(self, requested: str | PurePath) -> Path:
        """The run folder a browser asked for, as a path inside the root.

        ``requested`` is relative to the root ("." or "" is the root itself). An absolute
        path is accepted only when it lies inside the root; ``..`` parts are refused
        outright, and so is a path whose real location (after symlinks) is outside.

        Raises:
            MilCytoError: the path leaves the root, or is not a finished run.
        """
        text = str(requested).strip()
        pure = PurePath(text or ".")
        if ".." in pure.parts:
            raise MilCytoError(
                f"{text!r} refused: '..' may not be used; runs can only be opened below "
                f"the runs root {self.path}"
            )
        candidate = pure if pure.is_absolute() else self.path / pure
        real = Path(candidate).resolve()
        if not real.is_relative_to(self.path):
            why = "a symlink that leads" if not pure.is_absolute() else "a path"
            raise MilCytoError(
                f"{text!r} refused: {why} outside the runs root {self.path}; the server's "
                "--runs-root fixes which runs can be opened"
            )
        if not is_run(real):
            raise MilCytoError(
                f"{text!r} is not a finished run below {self.path} (it needs metrics.json, "
                "predictions.csv, attention.h5 and config.json); pick one from the list"
            )
        return real

    def runs(self, max_depth: int = 3) -> list[Path]:
        """Finished runs at or below the root (at most ``max_depth`` levels down), as real
        paths sorted by path; folders and symlinks whose real place is outside are skipped
        (never listed, never searched)."""
        found: set[Path] = set()
        frontier = [self.path]
        for _ in range(max_depth + 1):
            nxt: list[Path] = []
            for folder in frontier:
                if is_run(folder):
                    found.add(folder)
                    continue
                try:
                    children = sorted(folder.iterdir())
                except OSError:
                    continue
                for child in children:
                    real = child.resolve()
                    if (
                        not child.name.startswith(".")
                        and real.is_dir()
                        and real.is_relative_to(self.path)
                    ):
                        nxt.append(real)
            frontier = nxt
        return sorted(found)

    def label(self, run: Path) -> str:
        """A run's path relative to the root ("." for the root itself)."""
        return str(Path(run).resolve().relative_to(self.path))
