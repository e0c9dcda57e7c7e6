"""timing.machine_info / cpu_info: what a benchmark record says of the CPU it ran on."""

from __future__ import annotations

import builtins
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import timing  # noqa: E402
import torch  # noqa: E402

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu avx2 fma avx512f avx512dq avx512_bf16 avx512_vnni

processor\t: 1
model name\t: Some Other CPU
flags\t\t: fpu
"""


def _fake_open(text):
    real_open = builtins.open

    def fake(path, *args, **kwargs):
        if str(path) == "/proc/cpuinfo":
            if text is None:
                raise FileNotFoundError(path)
            return io.StringIO(text)
        return real_open(path, *args, **kwargs)
    return fake


def test_cpu_info_reads_the_first_processor_and_the_flags_of_note(monkeypatch):
    monkeypatch.setattr(builtins, "open", _fake_open(CPUINFO))
    assert timing.cpu_info() == {"cpu": "AMD EPYC", "cpu_family": "26", "cpu_model": "2", "cpu_stepping": "1",
                                 "cpu_flags": ["avx2", "avx512f", "avx512_bf16", "avx512_vnni"]}


def test_cpu_info_is_empty_without_proc_cpuinfo(monkeypatch):
    monkeypatch.setattr(builtins, "open", _fake_open(None))
    assert timing.cpu_info() == {}


def test_machine_info_names_torch_and_the_cpu(monkeypatch):
    monkeypatch.setattr(builtins, "open", _fake_open(CPUINFO))
    info = timing.machine_info("cpu")
    assert info["torch"] == torch.__version__
    assert info["cpu_family"] == "26" and "avx512_bf16" in info["cpu_flags"]
    assert "gpu" not in info
