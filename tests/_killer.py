"""A scheduler plugin that SIGKILLs a worker at a chosen moment of a computation."""

from __future__ import annotations

import os
import signal
import threading

from dask.utils import key_split
from distributed.diagnostics.plugin import SchedulerPlugin


class WorkerKiller(SchedulerPlugin):
    """SIGKILL a worker once ``count`` tasks whose name starts with ``prefix`` reach ``state``.

    ``victim="holder"`` kills the worker holding the task's result,
    ``"running"`` the one running it (with ``state="processing"``), and
    ``"other"`` a worker not running it. With ``delay``, the kill happens that
    many seconds later from a timer thread, and ``killed_in_state`` records the
    task's state at that moment. ``pids`` maps worker addresses to process ids
    (``client.run(os.getpid)``).
    """

    name = "daskmask-worker-killer"

    def __init__(self, prefix, count, pids, state="memory", victim="holder", delay=0.0):
        self.prefix, self.count, self.pids = prefix, count, pids
        self.state, self.victim, self.delay = state, victim, delay
        self.seen, self.killed, self.killed_in_state = 0, None, None

    async def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        if self.killed or finish != self.state or not key_split(key).startswith(self.prefix):
            return
        self.seen += 1
        if self.seen < self.count:
            return
        task = self.scheduler.tasks[key]
        running = task.processing_on.address if task.processing_on else None
        if self.victim == "holder":
            address = next(iter(task.who_has)).address
        elif self.victim == "running":
            address = running
        else:
            address = next(a for a in self.pids if a != running)
        self.killed = address

        def kill():
            self.killed_in_state = task.state
            os.kill(self.pids[address], signal.SIGKILL)

        if self.delay:
            threading.Timer(self.delay, kill).start()
        else:
            kill()
