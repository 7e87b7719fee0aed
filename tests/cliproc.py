"""`dfad-bench` as a real process without paying its imports each time. A server process (one per test process)
imports harness.cli once; each call forks a child from it that takes its own environment, working folder, argv and
stdin (/dev/null), writes stdout and stderr to files, runs `harness.cli.main` as the console script does, then the
atexit hooks, and exits with the command's status. A command costs its own work, not the ~2 s of importing torch.

Not for what needs a fresh interpreter: what a process imports, RNG states PyTorch draws per process, a process's
own peak memory, signals sent from outside (those tests start `python -m harness.cli`)."""
import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

SERVER = r'''
import atexit, json, os, sys, traceback
import torch
import harness.cli
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.environ.clear()
            os.environ.update(req["env"])
            os.chdir(req["cwd"])
            for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["out"], os.O_WRONLY | os.O_CREAT),
                                    (2, req["err"], os.O_WRONLY | os.O_CREAT)):
                f = os.open(path, flags)
                os.dup2(f, fd)
                os.close(f)
            sys.stdin = open(os.devnull)
            sys.argv = ["dfad-bench", *req["args"]]
            if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # what a fresh interpreter's torch takes at start
                torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
            code = harness.cli.main()
        except SystemExit as e:  # main() returns its status; sys.exit elsewhere as an interpreter takes it
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:
            traceback.print_exc()
        try:
            atexit._run_exitfuncs()  # what an interpreter's exit runs
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}), flush=True)
'''
_server: subprocess.Popen | None = None


def _start() -> subprocess.Popen:
    global _server
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True, cwd=Path(__file__).resolve().parent.parent)
        atexit.register(_server.stdin.close)  # the server ends at end of input
    return _server


def run(args, env=None, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """As subprocess.run([python, -m, harness.cli, *args], capture_output=True, text=True, ...): env is the whole
    environment (default: this process's), cwd the working folder."""
    args = [str(a) for a in args]
    server = _start()
    with tempfile.TemporaryDirectory(prefix="dfad-cli-") as t:
        out, err = Path(t) / "stdout", Path(t) / "stderr"
        req = {"args": args, "env": dict(os.environ if env is None else env), "cwd": str(cwd or Path.cwd()),
               "out": str(out), "err": str(err)}
        server.stdin.write(json.dumps(req) + "\n")
        server.stdin.flush()
        pid = json.loads(server.stdout.readline())["pid"]
        # the server reaps the child only after it ends, so its pid stays its own until the rc line arrives
        fired = []
        kill = threading.Timer(timeout, lambda: fired.append(os.kill(pid, signal.SIGKILL)))
        kill.start()
        rc = json.loads(server.stdout.readline())["rc"]
        kill.cancel()
        if fired:
            raise subprocess.TimeoutExpired(["dfad-bench", *args], timeout)
        return subprocess.CompletedProcess(["dfad-bench", *args], rc, out.read_text(), err.read_text())
