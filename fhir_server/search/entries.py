"""The search-index model shared by every store (see docs/adr/0002-search-index.md).

At write time each resource is reduced to typed entries, one per value of each
search parameter. Stores materialise them natively (side tables in SQLite,
embedded arrays in MongoDB) and never query the resource JSON itself.

Conventions every producer and store relies on:

* dates are closed ranges ``[low, high]`` of integer microseconds since
  1970-01-01T00:00:00Z; a value is widened to its precision ("2020" covers the whole
  year), values without a time zone are read as UTC, open period ends use
  :data:`DATE_MIN` / :data:`DATE_MAX`;
* strings are kept twice: ``normalized`` (case-folded, accents stripped, whitespace
  collapsed) for the default starts-with / ``:contains`` match, and ``exact``;
* numbers and quantities are closed ranges ``[low, high]`` from their precision
  (``1.5`` covers 1.45 .. 1.55), as floats;
* token modifiers that need a different key are stored under a derived parameter
  name: ``identifier:of-type`` (system/code of ``Identifier.type``, code
  ``"<type code>|<value>"``) and ``<reference param>:identifier`` (the logical
  ``Reference.identifier``), so stores need no special columns for them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DATE_MIN = -62135596800_000000  # 0001-01-01T00:00:00Z
DATE_MAX = 253402300799_999999  # 9999-12-31T23:59:59.999999Z


@dataclass(frozen=True)
class TokenEntry:
    param: str
    system: str | None
    code: str | None
    text: str | None = None  # normalised display / CodeableConcept.text, for :text


@dataclass(frozen=True)
class StringEntry:
    param: str
    normalized: str
    exact: str


@dataclass(frozen=True)
class DateEntry:
    param: str
    low: int
    high: int


@dataclass(frozen=True)
class NumberEntry:
    param: str
    low: float
    high: float


@dataclass(frozen=True)
class QuantityEntry:
    param: str
    low: float
    high: float
    system: str | None
    code: str | None  # unit code (or the unit text when no code is given)
    canonical_code: str | None = None  # UCUM canonical unit when convertible
    canonical_low: float | None = None
    canonical_high: float | None = None


@dataclass(frozen=True)
class ReferenceEntry:
    param: str
    target_type: str | None  # resource type for a local reference
    target_id: str | None
    url: str | None = None  # absolute or canonical URL when the target is not local
    version: str | None = None


@dataclass(frozen=True)
class UriEntry:
    param: str
    uri: str


@dataclass(frozen=True)
class CompositeEntry:
    """One combination of component values, e.g. Observation code-value-quantity."""

    param: str
    components: tuple  # one entry per SearchParameter.component, in order


@dataclass
class IndexEntries:
    """Everything a store indexes for one resource version."""

    tokens: list[TokenEntry] = field(default_factory=list)
    strings: list[StringEntry] = field(default_factory=list)
    dates: list[DateEntry] = field(default_factory=list)
    numbers: list[NumberEntry] = field(default_factory=list)
    quantities: list[QuantityEntry] = field(default_factory=list)
    references: list[ReferenceEntry] = field(default_factory=list)
    uris: list[UriEntry] = field(default_factory=list)
    composites: list[CompositeEntry] = field(default_factory=list)

    def params(self) -> set[str]:
        """Names of the parameters that have at least one value (``:missing`` uses it)."""
        out: set[str] = set()
        for bucket in (self.tokens, self.strings, self.dates, self.numbers, self.quantities,
                       self.references, self.uris, self.composites):
            out.update(e.param for e in bucket)
        return out


# the buckets of IndexEntries, each with its entry type, in the order of their fields (and of the SQLite columns)
BUCKETS = (("tokens", TokenEntry), ("strings", StringEntry), ("dates", DateEntry), ("numbers", NumberEntry),
           ("quantities", QuantityEntry), ("references", ReferenceEntry), ("uris", UriEntry))


class PackedIndex:
    """:class:`IndexEntries` as plain tuples of field values, to send between processes.

    Why: the bulk import prepares resources in worker processes and sends their index entries to the
    process that writes them; unpickling ten entry objects costs that process ~35 µs per care item,
    ten tuples ~4 µs, and the writing process is the import's bottleneck. A store that knows this class
    inserts the tuples as they are (SQLite); for every other use the entries are rebuilt on first access
    (attributes and methods of :class:`IndexEntries` are delegated). Composite entries stay objects.
    """

    __slots__ = ("packed", "_entries")

    def __init__(self, packed: tuple):
        self.packed = packed  # one tuple of row tuples per BUCKETS item, then the composite entries
        self._entries: IndexEntries | None = None

    @classmethod
    def of(cls, index: "IndexEntries | PackedIndex") -> "PackedIndex":
        if isinstance(index, PackedIndex):
            return index
        rows = [tuple(tuple(entry.__dict__.values()) for entry in getattr(index, name)) for name, _ in BUCKETS]
        return cls((*rows, tuple(index.composites)))

    @property
    def composites(self) -> list[CompositeEntry]:
        """The composite entries (kept as objects), without rebuilding the others."""
        return list(self.packed[len(BUCKETS)])

    def unpacked(self) -> IndexEntries:
        if self._entries is None:
            buckets = [[kind(*row) for row in rows] for (_, kind), rows in zip(BUCKETS, self.packed)]
            self._entries = IndexEntries(*buckets, list(self.packed[len(BUCKETS)]))
        return self._entries

    def __getattr__(self, name: str):
        return getattr(self.unpacked(), name)

    def __reduce__(self) -> tuple:
        return PackedIndex, (self.packed,)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedIndex):
            other = other.unpacked()
        return self.unpacked() == other
