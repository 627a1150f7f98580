"""The GPU check behind scripts/gpu-check: CUDA tests + a quick GPU bench, one JSON line out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_TIMEOUT_S = 150
BENCH_TIMEOUT_S = 150


def _tail(text: str, n: int = 600) -> str:
    return text[-n:]


def _tests(python: str, out: Path) -> dict:
    junit = out / "junit.xml"
    cmd = [python, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", "tests"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TEST_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"rc": None, "error": f"timed out after {TEST_TIMEOUT_S} s"}
    result: dict = {"rc": proc.returncode}
    # pytest exits 5 when no test is selected; that is a failure here (the cuda marker vanished).
    if junit.is_file():
        suite = ET.parse(junit).getroot()
        suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
        total, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped = int(suite.get("skipped", 0))
        result.update(total=total, passed=total - failed - skipped, failed=failed, skipped=skipped)
    if proc.returncode != 0:
        result["output_tail"] = _tail(proc.stdout + proc.stderr)
    return result


def _bench(out: Path) -> dict:
    exe = ROOT / ".venv" / "bin" / "latentface"
    cmd = [str(exe) if exe.exists() else "latentface", "bench", "--json", "--quick"]
    cmd += ["--only", "encoder,detect,identify", "--work-dir", str(out / "bench")]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {BENCH_TIMEOUT_S} s"}
    if proc.returncode != 0:
        return {"rc": proc.returncode, "output_tail": _tail(proc.stdout + proc.stderr)}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"rc": proc.returncode, "error": "no JSON from the bench", "output_tail": _tail(proc.stdout)}


def main() -> int:
    start = time.perf_counter()
    import torch

    report: dict = {"cuda": torch.cuda.is_available(), "torch": torch.__version__}
    if not report["cuda"]:
        report["skipped"] = "no CUDA device: nothing to check (the CUDA tests skip on CPU)"
        print(json.dumps(report))
        return 0
    report["device"] = torch.cuda.get_device_name(0)
    report["bf16"] = torch.cuda.is_bf16_supported()
    os.environ.setdefault("LATENTFACE_OFFLINE", "1")
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        report["tests"] = _tests(python, Path(tmp))
        report["bench"] = _bench(Path(tmp))
    tests = report["tests"]
    bench_ok = not {"rc", "error"} & set(report["bench"])
    report["ok"] = tests.get("rc") == 0 and tests.get("passed", 0) > 0 and bench_ok
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
