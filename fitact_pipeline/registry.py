"""One name -> one definition: the registry behind every swappable component.

Models, protections, number formats, fault-space target kinds and fault models each have one
``Registry``. Validation, config tests, the report's ordering and the docs' lists read the
registries, so a name is written down once, where its definition is.
"""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad config value; its message is one line that names the value and what is allowed."""


class Registry(Generic[T]):
    """An ordered ``name -> entry`` map; ``names()`` is the order reports and docs use (registration
    order unless a registry sorts its entries)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a toy component clean up with this)."""
        self._entries.pop(name, None)

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._entries[name]

    def check(self, path: str, value) -> T:
        """The entry of a config value, or a ConfigError naming the config path and the choices."""
        if not isinstance(value, str) or value not in self:
            raise ConfigError(f"{path}={value!r} is not allowed; choose one of: {', '.join(self.names())}")
        return self[value]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) in the order of names()."""
        return [(n, self._entries[n]) for n in self.names()]

    def index(self, name: str) -> int:
        """Position in the order of names() (unknown names sort last)."""
        names = self.names()
        return names.index(name) if name in names else len(names)
