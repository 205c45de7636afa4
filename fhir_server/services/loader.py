"""Bulk loading for ``fhir-server load``: validated chunks written one store transaction each, resumable.

Each chunk is written in ONE store transaction through the normal write path
(validation included), which is several times faster than a transaction per
resource; when a resource of the chunk is refused, the chunk is written again one
resource at a time so that only the bad ones are rejected, with the reason. The
position reached is saved after every chunk in a small state file, so an
interrupted load started again with ``--resume`` continues where it stopped
instead of creating resources twice.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from fhir_server.access.gate import Principal
from fhir_server.model.outcome import FHIRError
from fhir_server.services.resources import ResourceService

Item = tuple[str, object]  # (where it came from, parsed resource or the parse error)


@dataclass
class LoadReport:
    loaded: int = 0
    skipped: int = 0  # already loaded by an earlier, interrupted run
    rejected: list[tuple[str, str]] = field(default_factory=list)


class LoadState:
    """The number of items already loaded from one exact list of input files."""

    def __init__(self, path: Path, inputs: list[Path]):
        self.path = path
        digest = hashlib.sha256()
        for item in inputs:
            stat = item.stat()
            digest.update(f"{item.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        self.key = digest.hexdigest()

    def done(self) -> int:
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return 0
        return int(state.get("done", 0)) if state.get("inputs") == self.key else 0

    def save(self, done: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"inputs": self.key, "done": done}))
        tmp.replace(self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Loader:
    def __init__(self, resources: ResourceService, principal: Principal):
        self.resources = resources
        self.principal = principal

    def load(self, items: Iterable[Item], *, chunk_size: int = 500, state: LoadState | None = None,
             progress: Callable[[LoadReport], None] = lambda report: None) -> LoadReport:
        report = LoadReport()
        start = state.done() if state else 0
        position = 0
        for chunk in chunks(items, chunk_size):
            if position + len(chunk) <= start:
                position += len(chunk)
                report.skipped += len(chunk)
                continue
            todo = chunk[max(0, start - position):]
            report.skipped += len(chunk) - len(todo)
            self._write_chunk(todo, report)
            position += len(chunk)
            if state:
                state.save(position)
            progress(report)
        if state:
            state.clear()
        return report

    def _write_chunk(self, chunk: list[Item], report: LoadReport) -> None:
        """Write the chunk in one transaction; if any resource fails (validation included, which the
        write path does), write them one by one so that only the bad ones are rejected."""
        valid = []
        for where, resource in chunk:
            try:
                valid.append((where, self._checked(resource)))
            except FHIRError as exc:
                report.rejected.append((where, describe(exc)))
        try:
            self.resources.atomic(lambda tx: [self._write(tx, resource) for _, resource in valid], what="load")
            report.loaded += len(valid)
        except FHIRError:
            for where, resource in valid:  # one of them clashes: fall back to one transaction each
                try:
                    self.resources.atomic(lambda tx: self._write(tx, resource), what=where)
                    report.loaded += 1
                except FHIRError as exc:
                    report.rejected.append((where, describe(exc)))

    def _checked(self, resource: object) -> dict:
        if isinstance(resource, Exception):
            raise FHIRError.of(400, "structure", str(resource))
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise FHIRError.of(400, "structure", "not a FHIR resource")
        self.resources.served(resource["resourceType"], "create")
        return resource

    def _write(self, tx, resource: dict) -> None:
        """Keep the resource's own id, so references between loaded files hold.

        Append-only types (no update interaction, e.g. AuditEvent) are created under
        their id once; loading them again leaves the stored one untouched.
        """
        rtype, rid = resource["resourceType"], resource.get("id")
        if not rid:
            self.resources.create_in(tx, self.principal, rtype, resource)
        elif "update" in self.resources.definitions.served[rtype].interactions:
            self.resources.update_in(tx, self.principal, rtype, rid, resource)
        elif tx.current(rtype, rid) is None:
            self.resources.create_in(tx, self.principal, rtype, resource, rid=rid)


def describe(error: FHIRError) -> str:
    return "; ".join(f"{issue.expression or ''} {issue.diagnostics}".strip() for issue in error.issues)
