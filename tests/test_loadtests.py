"""loadtests/ checked without running a benchmark: the scripts run, the plot draws, RESULTS.md names real commands.

Every shell script parses (``bash -n``) and the ones meant to be run are executable; plot_results.py turns the
data file into a PNG and refuses a broken one with a message; transports.sh turns compare.sh's lines into the
data file plot_results.py reads; the table at the top of RESULTS.md names only commands that exist;
serve_for_bench.sh serves the gateway on granian as well as on uvicorn; the one-command scripts refuse bad
arguments with a message. No figure is asserted: figures depend on the machine.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.procs import Upstream, free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
LOAD = ROOT / "loadtests"
SCRIPTS = sorted(LOAD.glob("*.sh"))
# Sourced by the others (no "#!" line), so not run on their own.
LIBRARIES = {"bench_lib.sh", "bench_config.sh"}


def test_the_shell_scripts_are_the_expected_ones() -> None:
    """The checks below have something to check (a glob that matched nothing would pass them all)."""
    names = {p.name for p in SCRIPTS}
    assert {"serve_for_bench.sh", "transports.sh", "locust.sh", "serve_lean_granian.sh"} <= names
    assert LIBRARIES <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_shell_script_parses(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{script.name}: {result.stderr}"


@pytest.mark.parametrize("script", [p for p in SCRIPTS if p.name not in LIBRARIES], ids=lambda p: p.name)
def test_every_runnable_script_is_executable_with_a_bash_line(script: Path) -> None:
    assert script.read_text(encoding="utf-8").startswith("#!/usr/bin/env bash\n"), f"{script.name}: no #! line"
    assert script.stat().st_mode & stat.S_IXUSR, f"{script.name} is not executable (chmod +x, and commit the mode)"


@pytest.mark.parametrize("library", sorted(LIBRARIES))
def test_the_sourced_libraries_have_no_bash_line(library: str) -> None:
    assert not (LOAD / library).read_text(encoding="utf-8").startswith("#!"), f"{library} is sourced, not run"


# --- plot_results.py ------------------------------------------------------------------------------------------


def _plot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(LOAD / "plot_results.py"), *args], capture_output=True, text=True,
                          timeout=120)


def test_plot_results_turns_the_data_file_into_a_png(tmp_path: Path) -> None:
    out = tmp_path / "figures" / "results.png"
    result = _plot("--data", str(LOAD / "results.csv"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), "not a PNG"  # the PNG signature (RFC 2083, section 3.1)
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # the IHDR chunk
    assert (width, height) == (1200, 450)  # figsize (12, 4.5) at dpi 100: both panels drawn on one canvas


def test_results_md_shows_a_committed_png_and_its_data_file_holds_every_transport() -> None:
    """RESULTS.md shows results.png, which is a PNG, and results.csv has the gateway and the lean peer on both
    servers. (Whether the picture was redrawn after the last measurement is not checked: run plot_results.py
    after transports.sh -o.)"""
    png, data = LOAD / "results.png", LOAD / "results.csv"
    assert png.read_bytes().startswith(b"\x89PNG")
    with data.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["contender"], r["server"]) for r in rows} >= {("gateway", "uvicorn"), ("gateway", "granian"),
                                                             ("lean", "uvicorn"), ("lean", "granian")}
    assert "results.png" in (LOAD / "RESULTS.md").read_text(encoding="utf-8")


def test_plot_results_names_a_missing_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("contender,server,rps\ngateway,uvicorn,100\n")
    result = _plot("--data", str(bad), "--out", str(tmp_path / "x.png"))
    assert result.returncode == 2
    assert "missing column(s) p50_ms, p99_ms" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_plot_results_names_the_line_of_a_figure_that_is_not_a_number(tmp_path: Path) -> None:
    good = (LOAD / "results.csv").read_text().splitlines()
    fields = good[1].split(",")
    fields[2] = "fast"  # rps
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([good[0], *good[1:], ",".join(fields)]) + "\n")
    result = _plot("--data", str(bad), "--out", str(tmp_path / "x.png"))
    assert result.returncode == 2
    assert f"line {len(good) + 1}: rps is 'fast', not a number" in result.stderr


# --- transports.sh ----------------------------------------------------------------------------------------------

# A stand-in for ../shared/bench/compare.sh: the real one needs nginx, wrk and minutes of load. It prints the
# real one's line format, with figures that depend on the contender and the gateway command, so the test can
# tell which line went where.
FAKE_COMPARE = r"""#!/usr/bin/env bash
while getopts "d:c:r:g:n:" o; do case $o in g) GW=$OPTARG;; n) NAMES=$OPTARG;; *) ;; esac; done
echo "direct upstream, no proxy: 1000 rps"
case $GW in
  *GW_SERVER=granian*) gw="rps=300 p50=3.00ms p99=900.00us";;
  *lean_granian*) gw="rps=400 p50=2.50ms p99=8.00ms";;
  *) gw="rps=200 p50=4.00ms p99=1.2s";;
esac
for name in ${NAMES//,/ }; do case $name in
  nginx) f="rps=5000 p50=400.00us p99=700.00us";; raw) f="rps=6000 p50=300.00us p99=1.00ms";;
  lean) f="rps=250 p50=4.50ms p99=12.00ms";; gateway) f=$gw;; esac
  set -- $f; printf "round 1  %-8s %-13s %-12s %-12s non2xx=0 errors=none\n" "$name" "$1" "$2" "$3"
done
"""


def test_transports_sh_writes_the_medians_plot_results_reads(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "compare.sh").write_text(FAKE_COMPARE)
    (bench / "compare.sh").chmod(0o755)
    out = tmp_path / "results.csv"
    result = subprocess.run([str(LOAD / "transports.sh"), "-d", "1", "-r", "2", "-o", str(out)],
                            env={**os.environ, "GW_BENCH_DIR": str(bench)}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    with out.open(newline="") as fh:
        rows = {(r["contender"], r["server"]): r for r in csv.DictReader(fh)}
    assert set(rows) == {("nginx", "nginx"), ("raw", "uvloop"), ("lean", "uvicorn"), ("gateway", "uvicorn"),
                         ("gateway", "granian"), ("lean", "granian")}
    assert rows["gateway", "granian"]["rps"] == "300"
    assert rows["gateway", "granian"]["p99_ms"] == "0.90"  # 900.00us
    assert rows["gateway", "uvicorn"]["p99_ms"] == "1200.00"  # 1.2s
    assert rows["lean", "granian"]["p50_ms"] == "2.50"
    assert rows["lean", "uvicorn"]["rounds"] == "6"  # in every compare.sh call: 3 a round, 2 rounds
    assert rows["nginx", "nginx"]["p50_ms"] == "0.40"
    assert "gateway(granian) / gateway(uvicorn) = 1.50" in result.stdout
    # Against the lean peer (250 rps in every call) of the same compare.sh call.
    assert [rows[k]["vs_lean_same_call"] for k in (("gateway", "uvicorn"), ("gateway", "granian"),
                                                   ("lean", "granian"), ("nginx", "nginx"), ("lean", "uvicorn"))] \
        == ["0.80", "1.20", "1.60", "20.00", "1.00"]
    assert "gateway(raw) " not in result.stdout and "gateway(uvicorn) / raw(uvloop) = 0.03" in result.stdout
    assert "load average before" in result.stdout
    drawn = _plot("--data", str(out), "--out", str(tmp_path / "r.png"))
    assert drawn.returncode == 0, drawn.stderr


def test_transports_sh_stops_with_a_message_when_compare_sh_fails(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "compare.sh").write_text("#!/usr/bin/env bash\necho 'compare.sh: nginx did not start'; exit 2\n")
    (bench / "compare.sh").chmod(0o755)
    out = tmp_path / "results.csv"
    result = subprocess.run([str(LOAD / "transports.sh"), "-d", "1", "-r", "1", "-o", str(out)],
                            env={**os.environ, "GW_BENCH_DIR": str(bench)}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert "compare.sh: nginx did not start" in result.stdout
    assert "compare.sh failed (its message is above); nothing written" in result.stderr
    assert not out.exists()


# --- RESULTS.md -----------------------------------------------------------------------------------------------


def _current_table() -> list[list[str]]:
    """The rows of the first table in RESULTS.md (under its first heading after the title), cells stripped."""
    text = (LOAD / "RESULTS.md").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.startswith("|")]
    table: list[list[str]] = []
    for line in text.splitlines()[text.splitlines().index(lines[0]):]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    return table


def _harness_dir() -> Path | None:
    for candidate in (ROOT.parent / "shared" / "bench", ROOT.parents[1] / "shared" / "bench"):
        if candidate.is_dir():
            return candidate
    return None


def test_results_md_opens_with_one_table_of_benchmark_command_value_target() -> None:
    header, rule, *rows = _current_table()
    assert [h.lower() for h in header] == ["benchmark", "command", "last measured", "target"]
    assert set(rule[0]) <= set("-:")
    assert len(rows) >= 8
    for row in rows:
        assert len(row) == 4 and all(row), f"an empty cell in {row}"


def test_every_command_in_the_results_table_exists() -> None:
    """Each row names at least one script, and every script, module or harness file it names is there."""
    _, _, *rows = _current_table()
    harness = _harness_dir()
    for name, command_cell, *_ in rows:
        commands = re.findall(r"`([^`]+)`", command_cell)
        assert commands, f"{name}: no command in backquotes"
        scripts = []
        for command in commands:
            words = [w for token in shlex.split(command) for w in token.split()]
            for word in words:
                if word.startswith("../shared/bench/"):
                    if harness is not None:  # outside the repository: checked where it is installed
                        assert (harness / word.removeprefix("../shared/bench/")).is_file(), f"{name}: {word}"
                    scripts.append(word)
                elif re.fullmatch(r"[\w./-]+\.(sh|py)", word):
                    assert (ROOT / word).is_file(), f"{name}: {command!r} names {word}, which does not exist"
                    scripts.append(word)
            if words[:2] == [".venv/bin/python", "-m"]:
                assert (ROOT / (words[2].replace(".", "/") + ".py")).is_file(), f"{name}: no module {words[2]}"
        assert scripts, f"{name}: {commands} name no script"


def test_the_results_table_check_catches_a_missing_script(tmp_path: Path) -> None:
    """The check above can fail: a command naming a script that is not there is found by the same pattern."""
    words = shlex.split("loadtests/no_such_bench.sh -d 8")
    named = [w for w in words if re.fullmatch(r"[\w./-]+\.(sh|py)", w)]
    assert named == ["loadtests/no_such_bench.sh"] and not (ROOT / named[0]).exists()


# --- the one-command scripts ------------------------------------------------------------------------------------


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_serve_for_bench_serves_the_gateway_on_either_server(server: str, tmp_path: Path) -> None:
    """GW_SERVER picks the server; both run the same app and config: a key passes, no key gets the JSON 401."""
    upstream = Upstream(tmp_path)
    port, key_file = free_port(), tmp_path / "key"
    env = {**os.environ, "GW_SERVER": server, "GW_PORT": str(port), "GW_UPSTREAM": upstream.url,
           "GW_KEY_FILE": str(key_file), "GW_PYTHON": sys.executable}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([str(LOAD / "serve_for_bench.sh")], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_port(port, proc, timeout=60)
        key = key_file.read_text().strip()
        ok = httpx.get(f"http://127.0.0.1:{port}/v1/servers", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert ok.status_code == 200, ok.text
        assert ok.headers["x-ratelimit-limit"] == "10000000"  # the bench tier: checked, never reached
        assert upstream.records()[-1]["target"] == "/v1/servers"
        denied = httpx.get(f"http://127.0.0.1:{port}/v1/servers", timeout=10)
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "authentication_required"
        assert key not in (tmp_path / "serve.log").read_text(errors="replace")
    finally:
        _stop_group(proc)
        log.close()
        upstream.stop()
    assert proc.returncode is not None
    leftovers = [p for p in Path("/tmp").glob("gw-bench.*") if str(port) in _config_of(p)]
    assert leftovers == [], f"serve_for_bench.sh left {leftovers}"


def _config_of(work: Path) -> str:
    try:
        return (work / "config.yaml").read_text()
    except OSError:
        return ""


def test_serve_for_bench_refuses_an_unknown_server() -> None:
    env = {**os.environ, "GW_SERVER": "gunicorn", "GW_PORT": "1", "GW_UPSTREAM": "http://127.0.0.1:1",
           "GW_KEY_FILE": "/nonexistent/key"}
    started = time.monotonic()
    result = subprocess.run([str(LOAD / "serve_for_bench.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "GW_SERVER must be uvicorn or granian, not gunicorn" in result.stderr
    assert time.monotonic() - started < 5, "refused only after setting up the store"


@pytest.mark.parametrize(("args", "message"), [
    (["-u", "0"], "-u must be 1 to 500 users, not 0"),
    (["-u", "5000"], "-u must be 1 to 500 users, not 5000"),
    (["-t", "3600"], "-t must be 1 to 600 seconds, not 3600"),
    (["-t", "10m"], "-u and -t take whole numbers"),
])
def test_locust_sh_keeps_users_and_time_bounded(args: list[str], message: str) -> None:
    result = subprocess.run([str(LOAD / "locust.sh"), *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr
    assert not any(p.name.startswith("gw-locust.") for p in Path("/tmp").iterdir()), "a refused run left files"


def test_the_soak_makes_its_keys_with_the_products_own_create_key(tmp_path: Path) -> None:
    """soak_memory.py's key loader against today's create_key: three distinct keys written (mode 600) and each
    found in the real SQLite store by its hash, with the bench tier (a changed signature once broke the 5-minute
    soak only after it had started)."""
    import asyncio
    import importlib.util

    spec = importlib.util.spec_from_file_location("soak_memory", LOAD / "soak_memory.py")
    assert spec is not None and spec.loader is not None
    soak_memory = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(LOAD))  # it imports harness.py from beside it
    try:
        spec.loader.exec_module(soak_memory)
    finally:
        sys.path.remove(str(LOAD))

    from gateway.config.settings import load_settings
    from gateway.keys.backends import open_store
    from gateway.keys.hashing import load_pepper
    from gateway.keys.record import KeyRecord

    config = soak_memory.write_config(tmp_path, free_port(), "http://127.0.0.1:9")
    keys_file = tmp_path / "keys.txt"
    asyncio.run(soak_memory.make_keys(config, 3, keys_file))
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    values = keys_file.read_text().split()
    assert len(set(values)) == 3

    async def records() -> list[KeyRecord | None]:
        settings = load_settings(config, environ={})
        pepper, _ = load_pepper(settings)
        store = open_store(settings)
        try:
            return [await store.get_by_hash(pepper.hash(v)) for v in values]
        finally:
            await store.close()

    found = asyncio.run(records())
    assert all(r is not None and r.rate_limit_tier == "bench" for r in found)
