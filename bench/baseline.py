"""``--baseline REF``: the worker of an earlier commit, measured beside the current one.

``git archive REF`` extracts that commit's tree into the run's temp dir (removed with it;
nothing to clean up in git). Its worker runs as ``python -m worker run`` with the current
worker's environment plus ``PYTHONPATH`` on the extracted tree and ``PYTHONSAFEPATH=1``
(``-m`` would otherwise put the working directory, this checkout, first on ``sys.path``). Before
anything is measured, one probe checks that ``import worker`` really loads the extracted
package and that its ``run`` command starts.

Whatever stops it (a ref a shallow clone lacks, no git, a probe that fails) is a reason for
the report, never a failure of the whole bench: ``extract`` raises ``BaselineUnavailable``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from bench.contenders import WORKER, Contender

PROBE = "import worker; print(worker.__file__)"


class BaselineUnavailable(Exception):
    """Why the earlier worker cannot be measured in this run."""


@dataclass(frozen=True)
class Baseline:
    ref: str
    commit: str
    subject: str
    contender: Contender

    def describe(self) -> str:
        """The report's "before:" line."""
        return (
            f'the worker of commit {self.commit[:7]} ("{self.subject}", `git archive '
            f"{self.ref}`): the rows *{self.contender.label}* and the pacing cells of worker "
            f"*{self.contender.version}*"
        )


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BaselineUnavailable(f"git {args[0]}: {exc}") from None
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no message"])[0]
        raise BaselineUnavailable(f"git {args[0]} failed: {first}")
    return done.stdout.strip()


def extract(ref: str, repo: Path, workdir: Path) -> Baseline:
    """Extract ``ref``'s tree under ``workdir`` and return its worker as a contender."""
    try:
        commit = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except BaselineUnavailable:
        raise BaselineUnavailable(
            f"{ref!r} is not a commit in {repo} (a shallow clone? `git fetch --unshallow`)"
        ) from None
    subject = _git(repo, "log", "-1", "--format=%s", commit)
    short = commit[:7]
    source = workdir / f"before-{short}"
    source.mkdir()
    try:
        archive = subprocess.run(
            ["git", "-C", str(repo), "archive", commit], capture_output=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BaselineUnavailable(f"git archive: {exc}") from None
    if archive.returncode != 0:
        raise BaselineUnavailable(f"git archive failed: {archive.stderr.decode()[:200]}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout), mode="r:") as tar:
        tar.extractall(source, filter="data")
    contender = Contender(
        "worker-before",
        f"scx-forwarder before ({short})",
        WORKER.role,
        WORKER.argv,
        source=source,
        version=f"before ({short})",
    )
    _probe(contender, source, repo)
    return Baseline(ref, commit, subject, contender)


def _probe(contender: Contender, source: Path, cwd: Path) -> None:
    """Refuse the baseline unless its environment imports the extracted package and its
    ``run`` command starts (``--help``: the CLI and what it imports load)."""
    env = contender.checkout_env()
    loaded = _python(["-c", PROBE], env, cwd)
    if not Path(loaded).resolve().is_relative_to(source.resolve()):
        raise BaselineUnavailable(
            f"with PYTHONPATH={source}, `import worker` loads {loaded}, not the extracted package"
        )
    _python(["-m", "worker", "run", "--help"], env, cwd)


def _python(args: list[str], env: dict[str, str], cwd: Path) -> str:
    try:
        done = subprocess.run(
            [sys.executable, *args],
            env=os.environ | env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BaselineUnavailable(f"python {' '.join(args)}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise BaselineUnavailable(f"python {' '.join(args)} failed: {last}")
    return done.stdout.strip()
