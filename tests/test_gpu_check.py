"""benchmarks/gpu_check.py runs on a CPU (`--device cpu`): its parity check and a throughput row per method."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_cpu(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--track", "smoke",
           "--methods", "sasrec,tiger,gryphon", "--steps", "2", "--valid-users", "16"]
    env = {**os.environ, "HARNESS_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "parity CPU vs device" in done.stdout and "- ok" in done.stdout
    table = [line.split() for line in done.stdout.splitlines() if len(line.split()) == 7]
    rows = [row for row in table if row[0] in ("sasrec", "tiger", "gryphon")]
    assert [r[0] for r in rows] == ["sasrec", "tiger", "gryphon"]
    assert all(float(r[3]) > 0 and float(r[-1]) > 0 for r in rows)  # step ms and validation users/s measured
