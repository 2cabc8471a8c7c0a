"""Celery's own integration tests, run plain and with every task a ReliableTask.

    .venv/bin/python -m tests.compat.run_celery_suite            # the CI selection
    .venv/bin/python -m tests.compat.run_celery_suite --all      # all of t/integration
    .venv/bin/python -m tests.compat.run_celery_suite --celery 5.5   # in a venv with 5.5.x

Fetches the sdist of the installed Celery with pip (cached in ``.compat/``, git-ignored;
Celery's tests are never copied into this repository), unpacks its ``t/``, and runs the
selection twice against a private ``redis-server`` on a free port (broker, result
backend and our store): plain, then with ``task_cls="celery_reliable:ReliableTask"``
through Celery's ``celery_parameters`` fixture (``reliable_compat_plugin.py``). It
exits non-zero when a test that passes plain does not pass with ReliableTask and
``allowed.txt`` does not list it. See docs/compatibility.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.compat.compare import COLUMNS, counts, differences, load_allowed, unused

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CACHE = ROOT / ".compat"
ALLOWED = HERE / "allowed.txt"
RELIABLE_TASK = "celery_reliable:ReliableTask"

#: What CI runs: bounded to fit .ci/run (docs/compatibility.md has the timings).
#: All of test_tasks.py but one stamping test that waits a minute on purpose, and the
#: canvas classes that take seconds; the chain, group and chord classes (about 20 min
#: with their timeouts) are left to ``--all`` or to test ids given after ``--``.
SELECTION = (
    "t/integration/test_tasks.py",
    "--deselect",
    "t/integration/test_tasks.py::test_tasks::test_revoked_by_headers_complex_canvas",
    "t/integration/test_canvas.py::test_link_error",
    "t/integration/test_canvas.py::test_signature_serialization",
    "t/integration/test_canvas.py::test_xmap_xstarmap",
)
#: Test dependencies of Celery's suite (its requirements/test*.txt pin them), by module:
#: rerunfailures runs its ``flaky`` marks; the others are installed when the suite
#: imports them (Celery 5.5 imports pytest_subtests, which 5.7 left for pytest 9's own).
TEST_DEPENDENCIES = {"pytest_rerunfailures": "pytest-rerunfailures"}
IMPORTED_DEPENDENCIES = {"pydantic": "pydantic", "pytest_subtests": "pytest-subtests"}


def _log(message: str) -> None:
    print(f"[compat] {message}", flush=True)


def _pip(python: str, *args: str) -> None:
    subprocess.run([python, "-m", "pip", "-q", *args], check=True)


def fetch_tests(version: str, cache: Path) -> Path:
    """The unpacked ``t/`` (and the pytest configuration beside it) of Celery
    ``version``'s sdist, downloaded once."""
    tree = cache / f"celery-{version}"
    if (tree / "t" / "integration" / "conftest.py").is_file():
        return tree
    sdists = cache / "sdist"
    archive = sdists / f"celery-{version}.tar.gz"
    if not archive.is_file():
        _log(f"downloading the sdist of celery {version}")
        _pip(sys.executable, "download", "--no-binary", ":all:", "--no-deps",
             f"celery=={version}", "-d", str(sdists))
    staging = cache / f".celery-{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    top = f"celery-{version}/"
    with tarfile.open(archive) as sdist:
        # Only the tests and the pytest configuration: the sdist's own celery/ package
        # must not shadow the installed one the tests are meant to run against.
        members = [
            member for member in sdist.getmembers()
            if member.name.startswith(top + "t/") or member.name == top + "pyproject.toml"
        ]
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        sdist.extractall(staging, members=members, **safe)  # type: ignore[arg-type]
    (staging / top).rename(tree)
    staging.rmdir()
    return tree


def ensure_test_dependencies(tree: Path) -> None:
    suite = "\n".join(path.read_text() for path in (tree / "t").rglob("*.py"))
    wanted = dict(TEST_DEPENDENCIES)
    wanted.update({module: pkg for module, pkg in IMPORTED_DEPENDENCIES.items()
                   if f"import {module}" in suite or f"from {module}" in suite})
    missing = [pkg for module, pkg in wanted.items() if importlib.util.find_spec(module) is None]
    if missing:
        _log(f"installing Celery's test dependencies: {' '.join(missing)}")
        _pip(sys.executable, "install", *missing)


def present(tree: Path, selection: Sequence[str]) -> list[str]:
    """The selection less the test classes this Celery release does not have (5.5 has
    no ``test_xmap_xstarmap``): pytest refuses a run naming one."""
    kept = []
    for item in selection:
        path, _, name = item.partition("::")
        simple = name and not item.startswith("-") and "::" not in name
        if simple and f"class {name}" not in (tree / path).read_text():
            _log(f"not in this release: {item}")
            continue
        kept.append(item)
    return kept


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def private_redis(log_dir: Path) -> Iterator[int]:
    """A redis-server of this run alone, on a free port; stopped on exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    log = log_dir / f"redis-{port}.log"
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while not _answers(port):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server on port {port} did not start; see {log}")
            time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(7).startswith(b"+PONG")
    except OSError:
        return False


Results = dict[str, tuple[dict[str, dict[str, Any]], float]]


def run_suites(
    tree: Path, selection: Sequence[str], modes: Sequence[str], out_dir: Path,
    args: argparse.Namespace,
) -> Results:
    """One run of the selection per mode ("plain", "reliable"), side by side, each
    with a Redis of its own: the tests mostly wait on their worker, so running
    both at once costs little CPU and halves the wall time."""
    results: Results = {}
    with contextlib.ExitStack() as stack:
        running = {}
        for mode in modes:
            port = stack.enter_context(private_redis(out_dir))
            running[mode] = _start(tree, selection, mode, port, out_dir, args)
        for process, _ in running.values():
            stack.callback(_stop_group, process)
        for mode, (process, started) in running.items():
            left = None if args.budget is None else args.budget - (time.monotonic() - started)
            try:
                process.wait(None if left is None else max(left, 1))
            except subprocess.TimeoutExpired:
                _log(f"{mode}: over the budget of {args.budget:.0f} s, stopped")
                _stop_group(process)
            results[mode] = (_outcomes(out_dir, mode), time.monotonic() - started)
    return results


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """End the run's process group: pytest, and the prefork children of Celery's session
    worker, which outlive a pytest that was stopped (or a worker that did not shut down)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _start(
    tree: Path, selection: Sequence[str], mode: str, port: int, out_dir: Path,
    args: argparse.Namespace,
) -> tuple[subprocess.Popen[bytes], float]:
    outcomes = out_dir / f"{mode}.json"
    outcomes.unlink(missing_ok=True)
    log = out_dir / f"{mode}.log"
    url = f"redis://127.0.0.1:{port}"
    env = {
        **os.environ,
        "TEST_BROKER": f"{url}/0", "TEST_BACKEND": f"{url}/0",
        "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        "COMPAT_OUTCOMES": str(outcomes),
        "COMPAT_RERUNS": str(args.reruns), "COMPAT_TIMEOUT": str(args.timeout),
        "COMPAT_TASK_CLS": RELIABLE_TASK if mode == "reliable" else "",
        "COMPAT_STORE_URL": f"{url}/1",
    }
    command = [
        sys.executable, "-m", "pytest", "-p", "reliable_compat_plugin",
        "-p", "no:cacheprovider", "-q", "-rfE", "--durations=30",
        f"--timeout={args.timeout}", *args.pytest_args, *selection,
    ]
    shown = " ".join([*args.pytest_args, *selection])
    _log(f"{mode}: pytest {shown} (log: {log.relative_to(ROOT)})")
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=tree, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return process, time.monotonic()


def _outcomes(out_dir: Path, mode: str) -> dict[str, dict[str, Any]]:
    path = out_dir / f"{mode}.json"
    if not path.is_file():
        raise SystemExit(f"the {mode} run wrote no outcomes; see {out_dir / mode}.log")
    loaded: dict[str, dict[str, Any]] = json.loads(path.read_text())
    return loaded


def report(version: str, results: Results, allowed_path: Path) -> int:
    plain, plain_time = results["plain"]
    reliable, reliable_time = results["reliable"]
    allowed = load_allowed(allowed_path)
    found = differences(plain, reliable, allowed)
    header = f"{'Celery ' + version:<22}" + "".join(f"{c:>9}" for c in COLUMNS) + "     time"
    _log(header)
    for name, outcomes, seconds in (("plain", plain, plain_time),
                                    ("ReliableTask", reliable, reliable_time)):
        row = counts(outcomes)
        _log(f"{name:<22}" + "".join(f"{row[c]:>9}" for c in COLUMNS) + f"{seconds:>7.0f} s")
    new = [diff for diff in found if diff.allowed is None]
    _log(f"passing plain, not with ReliableTask: {len(found)} ({len(found) - len(new)} allowed)")
    for diff in found:
        if diff.allowed is not None:
            _log(f"  allowed  {diff.test}: {diff.allowed.reason}")
    for diff in new:
        first = diff.message.splitlines()[0] if diff.message else ""
        _log(f"  NEW      {diff.test} ({diff.reliable}): {first}")
    for rule in unused(allowed, found, plain):
        _log(f"  unused   {allowed_path.name}:{rule.line} {rule.pattern}: passes now; drop it?")
    if new:
        _log(f"FAIL: {len(new)} difference(s) not in {allowed_path.relative_to(ROOT)}")
        return 1
    _log("OK: ReliableTask passes what plain Celery passes, but for the allowed list")
    return 0


def _in_celery_venv(minor: str, argv: Sequence[str]) -> int:
    """Re-run this job in ``.compat/venv-celery<minor>`` with that Celery minor."""
    venv = CACHE / f"venv-celery{minor}"
    python = venv / "bin" / "python"
    major, _, low = minor.partition(".")
    if not python.is_file():
        _log(f"creating {venv.relative_to(ROOT)}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    upper = f"{major}.{int(low) + 1}"
    _pip(str(python), "install", "-e", f"{ROOT}[test]", f"celery[redis]>={minor},<{upper}")
    rest = [arg for arg in argv if arg != f"--celery={minor}"]
    if "--celery" in rest:
        at = rest.index("--celery")
        del rest[at:at + 2]
    return subprocess.run(
        [str(python), "-m", "tests.compat.run_celery_suite", *rest], cwd=ROOT, check=False
    ).returncode


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="run all of t/integration")
    parser.add_argument("--celery", metavar="MINOR",
                        help="run in .compat/venv-celeryMINOR with that Celery minor, e.g. 5.5")
    parser.add_argument("--timeout", type=int, default=60,
                        help="cap of every test's timeout in seconds (Celery marks 300)")
    parser.add_argument("--reruns", type=int, default=1,
                        help="cap of Celery's flaky reruns (it marks 5)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds one run may take in all before it is stopped")
    parser.add_argument("--only", choices=("plain", "reliable"),
                        help="one run, no comparison (outcomes in .compat/runs/)")
    parser.add_argument("--allowed", type=Path, default=ALLOWED)
    parser.add_argument("pytest_args", nargs="*",
                        help="after --: test ids replacing the selection, or pytest options")
    args = parser.parse_args(argv)
    # Stopped from outside (CI's end, kill): still stop the runs and their Redis servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.celery:
        return _in_celery_venv(args.celery, argv)
    version = importlib.metadata.version("celery")
    tree = fetch_tests(version, CACHE)
    ensure_test_dependencies(tree)
    selection: Sequence[str] = ["t/integration"] if args.all else present(tree, SELECTION)
    if any(not arg.startswith("-") for arg in args.pytest_args):
        selection = []  # test ids given after --
    out_dir = CACHE / "runs" / version
    out_dir.mkdir(parents=True, exist_ok=True)
    modes = [args.only] if args.only else ["plain", "reliable"]
    results = run_suites(tree, selection, modes, out_dir, args)
    if args.only:
        outcomes, seconds = results[args.only]
        _log(f"{args.only}: {counts(outcomes)} in {seconds:.0f} s")
        return 0
    return report(version, results, args.allowed)


if __name__ == "__main__":
    sys.exit(main())
