"""Test-wide settings: one torch thread, so small-tensor tests run at the same speed however loaded the machine is;
and ``preloaded_python``, processes of their own for the tests that need one (signals, kills, a script run as
written) without each paying the seconds a fresh interpreter takes to import torch, scikit-learn and matplotlib."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

# What the commands of aevb import, imported once by the server; a module left out is imported by each child.
PRELOAD = ["numpy", "torch", "torch._dynamo", "scipy", "sklearn.datasets", "sklearn.manifold", "sklearn.metrics",
           "aevb.cli", "aevb.fitting", "aevb.plotting", "aevb.evaluation", "aevb.runs", "aevb.trainer",
           "aevb.models.fa", "aevb.models.vae", "aevb.models.cvae", "aevb.models.gmvae", "aevb.models.vrnn",
           "aevb.experiments.fa", "aevb.experiments.vae", "aevb.experiments.gmvae", "aevb.experiments.vrnn"]

# The server: imports PRELOAD, then forks one child per request, which runs `python ARGS` (-c CODE, -m MODULE or a
# script) as a fresh interpreter would: its own stdin (/dev/null), stdout and stderr (files), working directory,
# sys.argv, sys.path[0] and __main__ module, and at its end non-daemon threads joined, atexit functions run and
# the exit code of its SystemExit (an uncaught KeyboardInterrupt kills it with SIGINT, as Python does).
SERVER = r'''
import atexit, importlib, json, os, runpy, signal, sys, threading, time, traceback, types

for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception:
        pass
# Ctrl-C raises KeyboardInterrupt in the children, as in a Python started from a terminal, even when pytest itself
# runs in the background of a shell without job control, which starts it (and so this server) ignoring SIGINT.
signal.signal(signal.SIGINT, signal.default_int_handler)
requests, replies = sys.stdin, sys.stdout


def reply(message):
    replies.write(json.dumps(message) + "\n")
    replies.flush()  # nothing left in the buffer for a child to inherit


def child(request):
    os.chdir(request["cwd"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = sys.__stdin__ = open(0, closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
    args = request["args"]
    code = 0
    try:
        if args[0] == "-c":
            sys.argv, sys.path[0] = ["-c", *args[2:]], ""
            main = types.ModuleType("__main__")
            sys.modules["__main__"] = main
            exec(compile(args[1], "<string>", "exec"), main.__dict__)
        elif args[0] == "-m":
            sys.argv, sys.path[0] = ["-m", *args[2:]], os.getcwd()
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv, sys.path[0] = list(args), os.path.dirname(os.path.abspath(args[0]))
            runpy.run_path(args[0], run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()
    finally:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    if code == -signal.SIGINT:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


returncodes = {}


def returncode(pid, block):
    if pid not in returncodes:
        done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        if done:
            returncodes[pid] = os.waitstatus_to_exitcode(status)
    return returncodes.get(pid)


for line in requests:
    request = json.loads(line)
    if request["op"] == "start":
        pid = os.fork()
        if pid == 0:
            try:
                child(request)
            finally:
                os._exit(255)
        reply({"pid": pid})
    elif request["op"] == "poll":
        reply({"returncode": returncode(request["pid"], block=False)})
    elif request["op"] == "wait":
        deadline = time.monotonic() + (request["timeout"] if request["timeout"] is not None else float("inf"))
        while returncode(request["pid"], block=False) is None and time.monotonic() < deadline:
            time.sleep(0.005)
        reply({"returncode": returncode(request["pid"], block=False)})
'''


class Child:
    """A process of the server's, used as a ``subprocess.Popen``: pid, poll, wait, kill; stdout and stderr are read
    from its files once it has ended."""

    def __init__(self, server: PreloadedPython, args: list[str], pid: int, stdout: Path, stderr: Path) -> None:
        self.server, self.args, self.pid = server, args, pid
        self.stdout_path, self.stderr_path = stdout, stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.request(op="poll", pid=self.pid)["returncode"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self.server.request(op="wait", pid=self.pid, timeout=timeout)["returncode"]
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="backslashreplace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="backslashreplace")


class PreloadedPython:
    """``python ARGS`` in a process of its own, forked from a server that has imported ``PRELOAD``: ``run`` as
    ``subprocess.run(capture_output=True, text=True)``, ``start`` as ``subprocess.Popen``. The server starts when a
    collected test asks for it, so that its imports overlap the tests before."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="aevb-preloaded-python-"))
        self.server_err = open(self.folder / "server.err", "w")
        self.server = subprocess.Popen([sys.executable, "-c", SERVER, *PRELOAD], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=self.server_err, text=True)
        self.count = 0

    def request(self, **request) -> dict:
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        line = self.server.stdout.readline()
        if not line:
            raise RuntimeError(f"the preloaded Python server ended: {(self.folder / 'server.err').read_text()[-2000:]}")
        return json.loads(line)

    def start(self, args: list, cwd: Path | str | None = None) -> Child:
        self.count += 1
        stdout, stderr = self.folder / f"{self.count}.out", self.folder / f"{self.count}.err"
        args = [str(a) for a in args]
        pid = self.request(op="start", args=args, cwd=str(cwd or os.getcwd()), stdout=str(stdout),
                           stderr=str(stderr))["pid"]
        return Child(self, args, pid, stdout, stderr)

    def run(self, args: list, cwd: Path | str | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
        child = self.start(args, cwd)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise
        return subprocess.CompletedProcess(child.args, child.returncode, child.stdout, child.stderr)

    def close(self) -> None:
        self.server.kill()  # it holds nothing to keep: no need to wait for its interpreter to shut down
        self.server.wait()
        self.server_err.close()
        shutil.rmtree(self.folder, ignore_errors=True)


PRELOADED: list[PreloadedPython] = []


def pytest_collection_modifyitems(items) -> None:
    if any("preloaded_python" in getattr(item, "fixturenames", ()) for item in items):
        PRELOADED.append(PreloadedPython())


def pytest_sessionfinish() -> None:
    while PRELOADED:
        PRELOADED.pop().close()


@pytest.fixture(scope="session")
def preloaded_python() -> PreloadedPython:
    if not PRELOADED:  # not collected with the tests, e.g. asked for by a fixture's fixture: start it now
        PRELOADED.append(PreloadedPython())
    return PRELOADED[0]
