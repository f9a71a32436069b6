"""The terminal of a launch: one line per trial start and end, no library chatter, the leaderboard's best."""

from __future__ import annotations

import io
import re
import subprocess

from mlflow.tracking import MlflowClient
from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
from ray.tune.experiment import Trial

from tests.helpers import Workspace, runs_of
from trainables.console import PRINTER, Console

NOISE = (
    "TensorBoard",
    "litlogger",
    "study created in memory",
    "Creating initial MLflow database tables",
    "TPU available",
)


def test_launch_terminal_is_short_and_names_every_trial(
    shared_workspace: Workspace, cls_launch: subprocess.CompletedProcess
) -> None:
    out = cls_launch.stdout + cls_launch.stderr
    _, children = runs_of(MlflowClient(shared_workspace.tracking_uri), "whole_cls")
    names = [r.info.run_name for r in children]
    # Each trial starts and ends once on the terminal, under the name of its MLflow run ...
    for name in names:
        assert out.count(f"[trial] start {name}:") == 1, out[-3000:]
        assert out.count(f"[trial] end   {name}:") == 1, out[-3000:]
    # ... no routine chatter of Ray, Lightning, Optuna or MLflow, and no Ray status tables.
    assert not [word for word in NOISE if word in out]
    assert "Trial name" not in out and "│" not in out
    # The best objective the end lines report is the leaderboard's best.
    ended = [float(v) for v in re.findall(r"\[trial\] end .*?val/balanced_acc (\d\.\d+)", out)]
    best_line = re.search(r"best trial: \S+ val/balanced_acc=(\d\.\d+)", out)
    assert ended and best_line and max(ended) == float(best_line[1])
    assert len(out.splitlines()) < 40


# What a Ray worker printed when it exited with a daemon thread inside torch's ``.to()`` (captured on this
# machine, 2026-12-07: an actor whose thread looped ``tensor.to(torch.float64)`` ended by __ray_terminate__;
# the demo's masked_cls trial crashed the same way): Ray's TerminateHandler trace, the SIGABRT report and
# Python's faulthandler, each line as Ray's log monitor hands it to the driver.
TERMINATE_TRACE = """\
[2026-12-07 12:08:31,024 E 17943 18157] logging.cc:125: Stack trace:
 /work/main/.venv/lib/python3.11/site-packages/ray/_raylet.so(+0x1812b9a) [0x7fea4bc12b9a] ray::operator<<()
/work/main/.venv/lib/python3.11/site-packages/ray/_raylet.so(+0x181364c) [0x7fea4bc1364c] ray::RayLog::operator<< <>()
/work/main/.venv/lib/python3.11/site-packages/ray/_raylet.so(+0x1815c08) [0x7fea4bc15c08] ray::TerminateHandler()
/lib/x86_64-linux-gnu/libstdc++.so.6(+0xa8e1a) [0x7fea4a0a8e1a]
/lib/x86_64-linux-gnu/libstdc++.so.6(+0xa8e85) [0x7fea4a0a8e85]
/lib/x86_64-linux-gnu/libstdc++.so.6(__gxx_personality_v0+0x21c) [0x7fea4a0a873c] __gxx_personality_v0
/lib/x86_64-linux-gnu/libgcc_s.so.1(+0x16ab6) [0x7fea4c35eab6]
/lib/x86_64-linux-gnu/libgcc_s.so.1(_Unwind_ForcedUnwind+0x130) [0x7fea4c35f1b0] _Unwind_ForcedUnwind
/lib/x86_64-linux-gnu/libc.so.6(+0x91500) [0x7fea4c8af500]
/lib/x86_64-linux-gnu/libc.so.6(pthread_exit+0x36) [0x7fea4c8a8316] pthread_exit
/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0(+0x2a924c) [0x7fea4cca924c]
/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0(+0x24f969) [0x7fea4cc4f969] take_gil
/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0(PyEval_RestoreThread+0xe) [0x7fea4cc4fd4e] PyEval_RestoreThread
/work/main/.venv/lib/python3.11/site-packages/torch/lib/libtorch_python.so(+0x4bb052) [0x7fea008bb052] torch::autograd::THPVariable_to()
/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0(+0x164cef) [0x7fea4cb64cef] method_vectorcall_VARARGS_KEYWORDS
/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0(PyObject_Vectorcall+0x33) [0x7fea4cb58ba3] PyObject_Vectorcall
/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0(_PyEval_EvalFrameDefault+0x2e53) [0x7fea4cafd9c3] _PyEval_EvalFrameDefault
/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0(+0x250a40) [0x7fea4cc50a40] _PyEval_Vector
/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0(_PyEval_EvalFrameDefault+0x3598) [0x7fea4cafe108] _PyEval_EvalFrameDefault
/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0(+0x250a40) [0x7fea4cc50a40] _PyEval_Vector
/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0(+0x15b2ec) [0x7fea4cb5b2ec] method_vectorcall
/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0(+0x3143ae) [0x7fea4cd143ae] thread_run
/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0(+0x2a8f57) [0x7fea4cca8f57] pythread_wrapper
/lib/x86_64-linux-gnu/libc.so.6(+0x891f5) [0x7fea4c8a71f5]
/lib/x86_64-linux-gnu/libc.so.6(+0x1098ec) [0x7fea4c9278ec]

*** SIGABRT received at time=1796645311 on cpu 1 ***
PC: @     0x7fea4c8a8eec  (unknown)  (unknown)
    @     0x7fea4c85a050       9360  (unknown)
    @     0x55e2985e3400  (unknown)  (unknown)
[2026-12-07 12:08:31,032 E 17943 18157] logging.cc:474: *** SIGABRT received at time=1796645311 on cpu 1 ***
[2026-12-07 12:08:31,033 E 17943 18157] logging.cc:474: PC: @     0x7fea4c8a8eec  (unknown)  (unknown)
[2026-12-07 12:08:31,033 E 17943 18157] logging.cc:474:     @     0x7fea4c85a050       9360  (unknown)
[2026-12-07 12:08:31,054 E 17943 18157] logging.cc:474:     @     0x55e2985e3400  (unknown)  (unknown)
Fatal Python error: Aborted

Stack (most recent call first):
  File "/tmp/crash.py", line 12 in spin
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/threading.py", line 982 in run
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/threading.py", line 1045 in _bootstrap_inner
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/threading.py", line 1002 in _bootstrap

Extension modules: msgpack._cmsgpack, google._upb._message, psutil._psutil_linux, charset_normalizer.md, charset_normalizer.cd, requests.packages.charset_normalizer.md, requests.packages.chardet.md, requests.packages.charset_normalizer.cd, requests.packages.chardet.cd, yaml._yaml, ray._raylet, wcwidth._wcwidth_c, numpy._core._multiarray_umath, numpy.linalg._umath_linalg, torch._C, torch._C._dynamo.autograd_compiler, torch._C._dynamo.eval_frame, torch._C._dynamo.guards, torch._C._dynamo.utils, torch._C._fft, torch._C._linalg, torch._C._nested, torch._C._nn, torch._C._sparse, torch._C._special, cuda.bindings._internal.utils, cuda.bindings._internal.driver, cuda.bindings.cydriver, cuda.bindings.driver, cuda.bindings._internal.runtime_ptds, cuda.bindings._internal.runtime, cuda.bindings.cyruntime, cuda.bindings.runtime, pyarrow.lib, pyarrow._json (total: 35)
"""


def test_a_worker_crash_is_one_line_naming_its_trial_and_whether_its_results_are_kept() -> None:
    printed: list[dict] = []
    dispatcher.add_handler(PRINTER, printed.append)  # the driver's printer, as ray.init(log_to_driver=True) adds it
    try:
        out = io.StringIO()
        console = Console(metric="val/acc", mode="max", max_epochs=2, searched=["train.lr"], num_samples=2, out=out)
        console.setup()  # Tune calls it when the search starts
        done, running = (Trial("run_trial", config={"train.lr": lr}, stub=True) for lr in (0.01, 0.02))
        for trial, pid in ((done, 17943), (running, 17990)):
            console.on_trial_start(0, [done, running], trial)
            trial.update_last_result({"val/acc": 0.7, "pid": pid, "training_iteration": 2})  # as Tune does
            console.on_trial_result(0, [done, running], trial, trial.last_result)
        console.on_trial_complete(0, [done, running], done)
        trace = TERMINATE_TRACE.splitlines()
        # The report reaches the driver in batches; a line the worker printed before it is its own.
        batch = {"ip": "10.0.0.5", "pid": 17943, "is_err": True, "job": "01000000"}
        dispatcher.emit({**batch, "lines": ["a warning of the trial", *trace[:20]]})
        dispatcher.emit({**batch, "lines": trace[20:]})
        dispatcher.emit({**batch, "pid": 17990, "lines": trace})
        dispatcher.emit({**batch, "pid": 18000, "lines": ["a line of another worker"]})
    finally:
        dispatcher.remove_handler(PRINTER)
    # Ray's printer got every line but the reports: nothing of the ~45-line trace reaches the terminal.
    assert [b["lines"] for b in printed] == [["a warning of the trial"], ["a line of another worker"]]
    lines = [line for line in out.getvalue().splitlines() if "crashed" in line]
    name_done, name_running = (console._name(t) for t in (done, running))
    # One line per crashed worker: its trial, whether its results are kept, where the native trace is.
    assert len(lines) == 2
    assert lines[0].startswith(f"[trial] worker of {name_done} (pid 17943) crashed after its trial ended")
    assert "its results are kept" in lines[0] and "native trace is in" in lines[0]
    assert lines[1].startswith(f"[trial] worker of {name_running} (pid 17990) crashed while training")
    assert "the trial fails" in lines[1] and "worker-*-17990.err" in lines[1]
