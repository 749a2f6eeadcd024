"""qlite.core.usage: which processes are a qube's, and what they cost."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qlite.core import usage
from qlite.core.usage import CpuSampler, container_processes, qube_usage
from qlite.engines.base import ContainerInfo

CID = "f" * 64
OTHER = "e" * 64


def test_container_processes_by_kind(monkeypatch):
    table = [
        (10, "conmon", f"/usr/bin/conmon --api-version 1 -c {CID} -u {CID} -r /run/qlite-runsc"),
        (11, "exe", f"runsc-gofer --root=/run/runsc gofer --bundle=/x/overlay-containers/{CID}/userdata"),
        (12, "exe", f"runsc-sandbox --root=/run/runsc boot --bundle=/x/overlay-containers/{CID}/userdata {CID}"),
        (13, "runsc", f"runsc --root=/run/runsc wait {CID}"),
        (20, "conmon", f"/usr/bin/conmon -c {OTHER} -u {OTHER}"),
        (21, "bash", "bash"),
    ]
    children = {12: {14, 15}, 11: set(), 13: set()}
    monkeypatch.setattr(usage, "descendants", lambda pid: children.get(pid, set()))
    kinds = container_processes(CID, table)
    assert kinds == {"sandbox": {12}, "gofer": {11}, "stubs": {14, 15}, "other": {13}, "conmon": {10}}
    assert container_processes("", table) == {k: set() for k in usage.KINDS}


@pytest.fixture
def busy_process():
    """A CPU-bound process whose command line carries CID, like runsc's."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys\nwhile True: pass", CID])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_qube_usage_counts_memory_and_cpu_between_samples(busy_process):
    containers = {
        "work": ContainerInfo(id=CID, name="qlite-x-work", state="running", labels={}),
        "vault": ContainerInfo(id=OTHER, name="qlite-x-vault", state="exited", labels={}),
    }
    sampler = CpuSampler()
    first = qube_usage(None, sampler, containers)  # type: ignore[arg-type]  # ctx unused with containers
    assert set(first) == {"work"}
    assert first["work"].processes == 1 and first["work"].cpu_percent == 0.0
    assert first["work"].rss_mib > 1 and 0 < first["work"].pss_mib <= first["work"].rss_mib
    # A busy loop, measured since the previous sample. On a loaded machine it
    # may get little CPU in one short interval: sample again, boundedly.
    busiest = 0.0
    for _ in range(20):
        time.sleep(0.3)
        busiest = max(busiest, qube_usage(None, sampler, containers)["work"].cpu_percent)  # type: ignore[arg-type]
        if busiest > 20:
            break
    assert busiest > 20
    assert qube_usage(None, None, containers)["work"].cpu_percent == 0.0  # type: ignore[arg-type]


def test_the_bench_counts_with_the_same_functions(monkeypatch):
    path = Path(__file__).resolve().parents[2] / "bench" / "disposable.py"
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts bench/ on it
    spec = importlib.util.spec_from_file_location("bench_disposable_under_test", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    assert module.container_processes is usage.container_processes
    assert module.pss_mib is usage.pss_mib and module.process_table is usage.process_table
