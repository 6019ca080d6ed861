"""`ddit-export serve` as systemd, Docker and Kubernetes stop it: SIGTERM drains the accepted requests, stops Ray,
leaves no process of the service's tree running, and exits 0."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.serve", reason="the serve tests need Ray Serve: pip install -e '.[dev]' (includes serve)")
psutil = pytest.importorskip("psutil")

from ddit_export.client import Client, ServiceError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(pid: int) -> list:
    """The process, its descendants, and every process of its session (Ray's daemons included)."""
    root = psutil.Process(pid)
    procs = {p.pid: p for p in [root, *root.children(recursive=True)]}
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == pid:
                procs.setdefault(p.pid, p)
        except (OSError, psutil.Error):
            pass
    return list(procs.values())


def test_sigterm_drains_and_leaves_nothing_running(flux_mini_bundle, tmp_path):
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "serve", str(flux_mini_bundle), "--port",
                             str(port), "--threads", "1", "--num-cpus", "2", "--grace-period", "120"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    tree = []
    try:
        client = Client(f"http://127.0.0.1:{port}", timeout=240, retries=0)
        client.wait_ready(timeout=240)
        result = {}

        def slow():  # about 6 s of fine steps on a quiet machine: still running when SIGTERM comes
            try:
                result["ok"] = client.generate_raw({"n": 4, "steps": 200, "schedule": ",".join(["1"] * 200)})
            except Exception as e:  # noqa: BLE001
                result["error"] = e

        t = threading.Thread(target=slow, daemon=True)
        t.start()
        time.sleep(2)
        tree = _tree(proc.pid)
        assert any("raylet" in " ".join(p.cmdline()) for p in tree)  # the tree really holds Ray's processes
        proc.send_signal(signal.SIGTERM)
        t.join(240)
        assert not t.is_alive()
        assert "ok" in result, f"the accepted request was not drained: {result.get('error')!r}"
        with pytest.raises(ServiceError):  # refused while draining (503) or nothing listens any more
            client.generate_raw({"steps": 2})
        assert proc.wait(timeout=240) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        gone, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, [(p.pid, p.name()) for p in alive]
        assert "draining" in (tmp_path / "serve.log").read_text()
    finally:  # whatever failed: nothing this test started stays behind
        for p in tree + (_tree(proc.pid) if proc.poll() is None else []):
            try:
                p.kill()
            except psutil.Error:
                pass
        proc.wait(30)
        log.close()
