"""What every benchmark here shares: machine facts, a served app on loopback, percentiles, the doc.

The benchmarks start the real server (``fhir-server serve`` under granian, in its own process
group, on 127.0.0.1 and a free port), so what they measure is what a client gets. All traffic
stays on loopback; every server is stopped at the end.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import platform
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
HOST = "127.0.0.1"  # all traffic stays on loopback
FHIR_JSON = "application/fhir+json"
STARTUP_TIMEOUT = 180.0


def machine_facts() -> dict:
    """The facts a reader needs to compare figures: cores, CPU, RAM, versions, commit, date."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(ram / 2**30, 1),
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "commit": commit,
            "platform": platform.platform()}


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Server:
    """``fhir-server serve --insecure-no-auth`` on loopback, in its own process group."""

    def __init__(self, store: Path, workers: int, threads: int, log_path: Path, extra: tuple[str, ...] = ()):
        self.store, self.workers, self.threads, self.log_path = store, workers, threads, log_path
        self.extra = extra
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        script = Path(sys.executable).parent / "fhir-server"
        base = [str(script)] if script.exists() else [sys.executable, "-m", "fhir_server.cli"]
        return base + ["serve", "--insecure-no-auth", "--host", HOST, "--port", str(self.port),
                       "--store", f"sqlite:///{self.store}", "--workers", str(self.workers),
                       "--threads", str(self.threads), *self.extra]

    def start(self) -> None:
        import requests
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.base}/metadata", timeout=5, headers={"Accept": FHIR_JSON}).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"/fhir/metadata did not answer within {STARTUP_TIMEOUT:.0f} s:\n{self.log_tail()}")

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}/fhir"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the server's own process group, started above
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()


def nearest_rank(values: list[float], q: float) -> float:
    """The q-th percentile by the nearest-rank method (no interpolation between samples)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def write_section(section: str, text: str) -> None:
    """Replace this benchmark's section of docs/benchmarks.md (re-read just before), leaving the others."""
    current = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    lines = current.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == section), None)
    if start is None:
        new = current.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "".join(lines[:start]) + text + ("\n" if end < len(lines) else "") + "".join(lines[end:])
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(new.rstrip("\n") + "\n")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat): to see what else ran."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_seconds() -> float:
    """CPU seconds of this process's children that have exited and been waited for (e.g. a closed Pool)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def group_cpu_by_pid(pgid: int) -> dict[int, float]:
    """{pid: user+system CPU seconds} of the live processes in the server's process group."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:  # fields[0] is field 3 (state): pgrp is field 5
            out[int(entry)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
    return out


def group_cpu_seconds(pgid: int) -> float:
    """User+system CPU seconds of the live processes of one process group (the server's)."""
    return sum(group_cpu_by_pid(pgid).values())
