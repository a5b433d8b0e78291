"""Thread discipline (tagood.runtime.threads): the budget's precedence, the affinity mask, what configure() does to
torch / OpenMP / onnxruntime / the decode pool, and the CLI's --threads option."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagood.runtime import threads


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch):
    for k in (threads.ENV, "OMP_NUM_THREADS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setitem(threads._STATE, "threads", None)
    return monkeypatch


def test_default_is_the_affinity_mask(clean_env) -> None:
    assert threads.resolve() == len(os.sched_getaffinity(0)) == threads.affinity_cpus()


def test_precedence_option_then_tagood_threads_then_omp(clean_env) -> None:
    clean_env.setenv("OMP_NUM_THREADS", "3")
    assert threads.resolve() == 3
    clean_env.setenv(threads.ENV, "5")
    assert threads.resolve() == 5
    assert threads.resolve(7) == 7


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 512), nested=st.booleans())
def test_env_values_are_read(n: int, nested: bool) -> None:
    old = os.environ.get("OMP_NUM_THREADS"), os.environ.pop(threads.ENV, None)
    try:
        os.environ["OMP_NUM_THREADS"] = f"{n},1" if nested else str(n)  # OMP's list form: the first level is ours
        assert threads.resolve() == n
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)
        if old[0] is not None:
            os.environ["OMP_NUM_THREADS"] = old[0]
        if old[1] is not None:
            os.environ[threads.ENV] = old[1]


@pytest.mark.parametrize("bad", ["zero", "0", "-2", "1.5"])
def test_bad_env_value_names_the_variable(clean_env, bad: str) -> None:
    clean_env.setenv(threads.ENV, bad)
    with pytest.raises(ValueError, match=threads.ENV):
        threads.resolve()


def test_bad_option() -> None:
    with pytest.raises(ValueError, match="--threads"):
        threads.resolve(0)


def _run(code: str, env: dict[str, str] | None = None) -> str:
    e = {k: v for k, v in os.environ.items() if k not in (threads.ENV, "OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    r = subprocess.run([sys.executable, "-c", code], env={**e, **(env or {})}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_affinity_mask_limits_the_budget() -> None:
    """A process pinned to one CPU (taskset, SLURM --cpus-per-task) gets a budget of 1 and torch 1 thread."""
    cpu = min(os.sched_getaffinity(0))
    out = _run(f"import os; os.sched_setaffinity(0, {{{cpu}}}); from tagood.runtime import threads; threads.configure(); "
               "import torch; print(threads.budget(), torch.get_num_threads())")
    assert out == "1 1"


def test_configure_before_torch_sets_passive_wait_on_a_busy_machine_only() -> None:
    code = ("import os; from tagood.runtime import threads; threads.configure(2); import torch; "
            "print(torch.get_num_threads(), os.environ.get('OMP_WAIT_POLICY', 'default'), os.environ['TAGOOD_THREADS'])")
    assert _run(code, env={"TAGOOD_BUSY": "1"}) == "2 PASSIVE 2"
    assert _run(code, env={"TAGOOD_BUSY": "0"}) == "2 default 2"  # idle: OpenMP's spinning is faster


def test_user_wait_policy_is_kept() -> None:
    out = _run("import os; from tagood.runtime import threads; threads.configure(2); print(os.environ['OMP_WAIT_POLICY'])",
               env={"OMP_WAIT_POLICY": "ACTIVE", "TAGOOD_BUSY": "1"})
    assert out == "ACTIVE"


def test_others_busy_sees_other_processes_not_this_one() -> None:
    """Two spinning processes pinned to our CPUs count as >= 1 busy core; this process's own spinning does not."""
    import time

    spin = "import os; os.sched_setaffinity(0, {%s}); exec('while True: pass')"
    procs = [subprocess.Popen([sys.executable, "-c", spin % ", ".join(map(str, sorted(os.sched_getaffinity(0))))])
             for _ in range(2)]
    try:
        time.sleep(0.5)
        assert threads.others_busy(0.5) >= 1.0
    finally:
        for p in procs:
            p.kill()
            p.wait()
    cpus = set(os.sched_getaffinity(0))
    a = threads._proc_ticks(cpus)
    t = time.process_time()
    while time.process_time() - t < 0.4:  # this process's own CPU time advances 0.4 s (not wall time: under a
        pass  # parallel test run the process may be descheduled for part of any wall-clock window)
    b = threads._proc_ticks(cpus)
    assert a is not None and b is not None
    hz = os.sysconf("SC_CLK_TCK")
    assert (b[1] - a[1]) / hz >= 0.25  # counted as our own time, so subtracted from the machine's busy time


def test_busy_override(clean_env) -> None:
    clean_env.setenv("TAGOOD_BUSY", "1")
    assert threads.machine_busy()
    clean_env.setenv("TAGOOD_BUSY", "0")
    assert not threads.machine_busy()


def test_configure_after_torch_sets_torch_threads(clean_env) -> None:
    import torch

    old = torch.get_num_threads()
    try:
        assert threads.configure(1) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)


def test_pools_follow_the_budget(clean_env) -> None:
    """onnxruntime's default workers and the decode pool are capped by the budget, so neither multiplies it."""
    from tagood.backbones.onnx_engine import physical_cores

    clean_env.setitem(threads._STATE, "threads", 1)
    assert physical_cores() == 1
    assert threads.decode_workers() == 1
    clean_env.setitem(threads._STATE, "threads", 64)
    assert threads.decode_workers() == 8  # the pool's own cap
    assert physical_cores() <= threads.affinity_cpus()


def test_cli_threads_option_reaches_torch_and_onnx() -> None:
    """``tagood --threads 1 ...`` in a fresh process: torch and the Lite0 ONNX engine run single-threaded."""
    out = _run("import sys, torch\n"
               "from typer.testing import CliRunner\n"
               "from tagood.cli.main import app\n"
               "r = CliRunner().invoke(app, ['--threads', '1', 'methods'])\n"
               "assert r.exit_code == 0, r.output\n"
               "from tagood.backbones.onnx_engine import physical_cores\n"
               "print(torch.get_num_threads(), physical_cores())")
    assert out == "1 1"


def test_busy_probe_is_made_once_per_process(clean_env) -> None:
    """Every training of a run makes the same thread choice (so a run is deterministic): the first probe is kept."""
    clean_env.delenv("TAGOOD_BUSY", raising=False)
    clean_env.setitem(threads._BUSY, "probed", None)
    answers = iter([2.0, 0.0])
    clean_env.setattr(threads, "others_busy", lambda window=0.1: next(answers))
    assert threads.machine_busy() and threads.machine_busy()  # the second probe (idle) is never made
    clean_env.setitem(threads._BUSY, "probed", None)
    clean_env.setattr(threads, "others_busy", lambda window=0.1: 0.1)
    assert not threads.machine_busy()
