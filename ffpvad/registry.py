"""One small registry class for everything chosen by name on the command line.

Generators and discriminators (``ffpvad/models/``), flow estimators (``ffpvad/flow/``), semantic networks
(``ffpvad/models/semantic.py``), methods (``ffpvad/methods/``), dataset presets (``ffpvad/config.py``), dataset planners
(``ffpvad/data/preparation/``) each keep one :class:`Registry`.  A registry refuses a name given twice (two modules claiming one
name is a bug, never a silent overwrite), lists its names for ``--help`` and error messages, and turns an unknown
name into one :class:`~errors.UserError` line naming the flag and the valid names.  ``docs/extending.md`` shows how
to add an entry.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Generic, Iterator, TypeVar

from ffpvad.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind.

    ``kind`` is how the user selects an entry (``--model``, ``--flownet``, ...): it heads every error message.
    Entries may carry keyword metadata (``registry.info(name)``), e.g. the method a generator serves.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._info: dict[str, dict[str, Any]] = {}

    @classmethod
    def of(cls, kind: str, entries: dict[str, T]) -> "Registry[T]":
        """A registry holding ``entries`` (for tables of plain values, such as the dataset presets)."""
        registry: Registry[T] = cls(kind)
        for name, entry in entries.items():
            registry.register(name, entry)
        return registry

    def register(self, name: str, obj: T | None = None, **info: Any) -> Callable[[T], T]:
        """``@registry.register("name")`` on a builder or class, or ``registry.register("name", obj)``."""
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            self._info[name] = dict(info)
            return entry
        if obj is not None:
            add(obj)
        return add

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a throwaway entry clean up with this)."""
        self._entries.pop(name, None)
        self._info.pop(name, None)

    @contextmanager
    def replaced(self, name: str, obj: T) -> Iterator[None]:
        """``with registry.replaced(name, stub):`` the entry ``name`` is ``stub`` inside the block (tests stand in
        for a network whose weights are not on this machine), restored afterwards."""
        old = self.get(name)
        self._entries[name] = obj
        try:
            yield
        finally:
            self._entries[name] = old

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(f"unknown {self.kind} '{name}': valid names are {', '.join(self.names())}") from None

    def info(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._info[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
