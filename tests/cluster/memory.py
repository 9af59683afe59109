"""Memory of the cluster's processes, sampled while it works (the sizing figures of docs/production.rst).

:class:`MemorySampler` walks every component's process tree with ``psutil``. A running task is
the process a Celery worker forks for it (``setproctitle`` names it ``airflow worker -- <ti id>``);
its USS (memory no other process shares: what one more concurrent task costs, since the fork
shares the worker's pages) and RSS are kept per sample. Each component's tree is measured as the
sum of its processes' PSS (shared pages split between the processes sharing them, so a forked
pool is not counted once per child) and kept at its peak.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import psutil

from tests.cluster.celery_cluster import CeleryAirflowCluster

#: The title Airflow's task runner gives the process of a running task.
TASK_PROCESS_TITLE = "airflow worker -- "
MIB = 1024 * 1024


@dataclass
class MemorySampler:
    """Peak memory per component kind and the memory of every task process seen.

    :param cluster: the deployment whose processes are sampled.
    """

    cluster: CeleryAirflowCluster
    interval: float = 2.0
    component_pss: dict[str, int] = field(default_factory=dict)
    task_uss: list[int] = field(default_factory=list)
    task_rss: list[int] = field(default_factory=list)
    samples: int = 0
    _last: float = 0.0

    def sample(self) -> None:
        """Take one sample of every running component, at most one per ``interval`` seconds
        (processes that vanish meanwhile are skipped)."""
        if time.monotonic() - self._last < self.interval:
            return
        self._last = time.monotonic()
        self.samples += 1
        for name, process in list(self.cluster.processes.items()):
            kind = name.rsplit("-", 1)[0] if name[-1].isdigit() else name
            try:
                root = psutil.Process(process.popen.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            total = 0
            for member in tree:
                try:
                    if _is_task_process(member):
                        info = member.memory_full_info()
                        self.task_uss.append(int(info.uss))
                        self.task_rss.append(int(info.rss))
                        continue  # a task's memory is reported on its own, not as the worker's
                    total += int(member.memory_full_info().pss)
                except psutil.Error:
                    continue
            self.component_pss[kind] = max(self.component_pss.get(kind, 0), total)

    def figures(self) -> list[str]:
        """Readable lines: task processes (USS median and max, RSS max) and each component's peak PSS."""
        lines = []
        if self.task_uss:
            lines.append(
                f"memory of a running task (forked by the Celery worker): USS median "
                f"{statistics.median(self.task_uss) / MIB:.0f} MiB, max {max(self.task_uss) / MIB:.0f} MiB; "
                f"RSS max {max(self.task_rss) / MIB:.0f} MiB ({len(self.task_uss)} samples)"
            )
        peaks = ", ".join(f"{kind} {pss / MIB:.0f} MiB" for kind, pss in sorted(self.component_pss.items()))
        lines.append(
            f"peak memory per component (PSS of its process tree, tasks excluded, {self.samples} samples): {peaks}"
        )
        return lines


def _is_task_process(process: psutil.Process) -> bool:
    cmdline = process.cmdline()
    return bool(cmdline) and cmdline[0].startswith(TASK_PROCESS_TITLE)
