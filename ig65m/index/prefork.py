"""Pre-fork workers: N processes serving one listening socket, under a small master process.

Why not gunicorn: its threaded worker hands every new connection to a pool thread that waits up to
5 s for the first byte, so a few dozen idle connections stall every other client (40 idle sockets
held a request 50 s in a trial). Each worker here runs waitress, whose event loop keeps idle
connections off the threads; the master only forks, forwards signals and restarts a dead worker.
The master loads the index before forking, so the workers share its memory-mapped pages and its
metadata arrays (copy-on-write, never written): N workers hold one copy.
"""

import gc
import os
import signal
import sys
import time

from ig65m.index.middleware import write_line

STOP_GRACE = 10.0  # seconds a worker has to exit after SIGTERM before it is killed
RESTART_DELAY = 1.0


def _child(target):
    """Run `target()` in a forked child and leave with its exit status, never returning."""
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # not the master's; never fatal (the worker sets its own)
    code = 0
    try:
        target()
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 0
    except BaseException:  # a bug: say it, and let the master start another worker
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class Master:
    """Forks `count` workers running `target(slot)`, slot 0 to count - 1; SIGTERM/SIGINT stop them
    all, SIGHUP is passed on to every worker, a worker that dies is replaced in its slot, after
    `on_exit(slot)`."""

    def __init__(self, count, target, before_restart=None, on_exit=None):
        self.count = count
        self.target = target
        self.before_restart = before_restart
        self.on_exit = on_exit
        self.children = {}  # pid -> slot
        self.stopping = False

    def spawn(self, slot):
        pid = os.fork()
        if pid == 0:
            _child(lambda: self.target(slot))
        self.children[pid] = slot

    def signal_children(self, number):
        for pid in list(self.children):
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass

    def _stop(self, signum, frame):
        self.stopping = True
        self.deadline = time.monotonic() + STOP_GRACE
        self.signal_children(signal.SIGTERM)

    def run(self):
        """Serve until stopped; returns once every worker has exited."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, lambda signum, frame: self.signal_children(signal.SIGHUP))
        gc.freeze()  # what the master loaded stays shared: no collector pass writes to it
        for slot in range(self.count):
            self.spawn(slot)
        while self.children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                time.sleep(0.1)
                if self.stopping and time.monotonic() > self.deadline:
                    self.signal_children(signal.SIGKILL)
                continue
            slot = self.children.pop(pid)
            if self.on_exit is not None:
                self.on_exit(slot)
            if not self.stopping:
                write_line(f"worker {pid} exited ({_describe(status)}); starting another")
                time.sleep(RESTART_DELAY)
                if self.before_restart is not None:
                    self.before_restart()
                if not self.stopping:
                    self.spawn(slot)


def _describe(status):
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"status {os.WEXITSTATUS(status)}"
