"""The peers of the drain benchmark, installed from the registries (PyPI) into virtualenvs of their
own under benchmarks/.peers/ (outside eventbatch's dependencies), started as processes on
loopback pointed at `eventbatch mock-upstream`, and always stopped after.

- **OGX** (the open-source OpenAI-compatible server formerly called llama-stack): runs batches
  itself through its own /v1/batches. Needs Python >= 3.12 (found under pyenv). Configured with a
  `remote::openai` inference provider whose base URL is the mock, the `inline::reference` batches
  provider with `max_concurrent_requests_per_batch` = the benchmark's concurrency, and the local
  files provider + sqlite stores (as in its `starter` distribution) in a scratch folder.
- **LiteLLM proxy** (`litellm[proxy]`): a gateway in pass-through mode; a model_list entry maps
  `gpt-4o-mini` to `openai/gpt-4o-mini` with `api_base` = the mock; no database, telemetry off,
  the bundled model cost map (no fetch at start). The plain script sends to it.

Portkey's gateway (npm `@portkey-ai/gateway`) installs, but its start script listens on every
interface with no option to bind loopback only, so it is not run here.

A peer that cannot be installed or started raises `Unavailable`; the benchmark reports it as
"unavailable: <reason>" instead of failing.

    python -m benchmarks.peers install        # create / update the virtualenvs
    python -m benchmarks.peers versions
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent / ".peers"

# Pinned so that figures are reproducible; override to try another release.
OGX_SPEC = os.environ.get("BENCH_OGX_SPEC", "ogx==1.5.0")
LITELLM_SPEC = os.environ.get("BENCH_LITELLM_SPEC", "litellm[proxy]==1.108.7")

OGX_MODEL_PREFIX = "openai/"   # OGX names the models of its `openai` provider `openai/<model>`


class Unavailable(Exception):
    """A peer that cannot be installed or started here; str() is the reason."""


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines()
                 if x.strip() and not x.startswith("WARNING: Location")]
    except OSError:
        return ""
    return " | ".join(x.strip() for x in lines[-n:])[-400:]


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment for a peer: none of ours (EVENTBATCH_*), no provider keys, no proxies."""
    drop = ("EVENTBATCH_", "OPENAI_", "LITELLM_", "OGX_", "LLAMA_STACK", "VIRTUAL_ENV", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(k, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def python312() -> str | None:
    """A Python 3.12 interpreter: pyenv's, else one on PATH."""
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))
    if found:
        return found[-1]
    try:
        out = subprocess.run(["pyenv", "which", "python3.12"], capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return shutil.which("python3.12")


def ensure_venv(name: str, python: str | None, specs: list[str], timeout: float = 900) -> Path:
    """benchmarks/.peers/<name>, a virtualenv holding `specs`; installed once, again when specs change."""
    if not python:
        raise Unavailable(f"no interpreter for {name}")
    venv = PEERS_DIR / name
    marker = venv / ".installed"
    want = json.dumps({"python": python, "specs": specs})
    if marker.exists() and marker.read_text() == want and (venv / "bin" / "python").exists():
        return venv
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    log = PEERS_DIR / f"{name}-install.log"
    print(f"[peers] installing {' '.join(specs)} into {venv} (log: {log})", file=sys.stderr, flush=True)
    try:
        with open(log, "w") as f:
            if not (venv / "bin" / "python").exists():
                subprocess.run([python, "-m", "venv", str(venv)], stdout=f, stderr=subprocess.STDOUT,
                               check=True, timeout=300)
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                            *specs], stdout=f, stderr=subprocess.STDOUT, check=True, timeout=timeout,
                           env=_clean_env())
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"installing {' '.join(specs)} failed ({e.__class__.__name__}): {_tail(log)}") from e
    marker.write_text(want)
    return venv


def installed_version(venv: Path, dist: str) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          f"import importlib.metadata as m; print(m.version({dist!r}))"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip() or "?"


def _wait_ready(check, proc: subprocess.Popen, log: Path, what: str, timeout: float) -> None:
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"{what} exited with {proc.returncode} at start: {_tail(log)}")
        try:
            if check():
                return
        except (OSError, ValueError) as e:
            last = str(e)
        time.sleep(0.25)
    raise Unavailable(f"{what} not ready after {timeout:.0f}s ({last}): {_tail(log)}")


class _Peer:
    name = "peer"
    proc: subprocess.Popen | None = None
    _log = None

    def _start(self, args: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def close(self) -> None:
        """Stop the process (and anything it forked: it leads its own session)."""
        p = self.proc
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, 15)
            except ProcessLookupError:
                pass
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, 9)
                except ProcessLookupError:
                    pass
                p.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class OGX(_Peer):
    """`ogx run CONFIG --insecure` on 127.0.0.1, its inference pointed at the mock."""

    name = "ogx"

    @staticmethod
    def install() -> Path:
        return ensure_venv("ogx", python312(), [OGX_SPEC])

    def __init__(self, mock_url: str, concurrency: int, workdir: Path, start_timeout: float = 180):
        venv = self.install()
        self.version = installed_version(venv, "ogx")
        self.port = _free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "ogx-config.yaml"
        self.config_path.write_text(ogx_config(mock_url, concurrency, workdir, self.port))
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._start([str(venv / "bin" / "ogx"), "run", str(self.config_path), "--insecure", "--port", str(self.port)],
                    _clean_env(HOME=str(workdir), OGX_CONFIG_DIR=str(workdir / "ogx-home")), workdir,
                    workdir / f"ogx-{self.port}.log")
        try:
            _wait_ready(self._ready, self.proc, self.log_path, "ogx", start_timeout)
        except BaseException:
            self.close()
            raise

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/models", timeout=2) as r:
            ids = {m["id"] for m in json.load(r).get("data", [])}
        return f"{OGX_MODEL_PREFIX}gpt-4o-mini" in ids


def ogx_config(mock_url: str, concurrency: int, workdir: Path, port: int) -> str:
    """OGX's run config (version 2): only the batches, files and inference APIs; the stores as in its
    `starter` distribution (sqlite under workdir, inference store on)."""
    d = str(workdir)
    return f"""version: 2
distro_name: eventbatch-drain-peer
apis:
- batches
- files
- inference
providers:
  inference:
  - provider_id: openai
    provider_type: remote::openai
    config:
      api_key: sk-bench-not-a-real-key
      base_url: {mock_url}
  files:
  - provider_id: builtin-files
    provider_type: inline::localfs
    config:
      storage_dir: {d}/files
      metadata_store:
        table_name: files_metadata
        backend: sql_default
  batches:
  - provider_id: reference
    provider_type: inline::reference
    config:
      max_concurrent_requests_per_batch: {concurrency}
      sqlstore:
        table_name: batches
        backend: sql_default
storage:
  backends:
    kv_default:
      type: kv_sqlite
      db_path: {d}/kvstore.db
    sql_default:
      type: sql_sqlite
      db_path: {d}/sql_store.db
  stores:
    metadata:
      namespace: registry
      backend: kv_default
    inference:
      table_name: inference_store
      backend: sql_default
      max_write_queue_size: 10000
      num_writers: 4
    conversations:
      table_name: openai_conversations
      backend: sql_default
registered_resources:
  models: []
server:
  host: 127.0.0.1
  port: {port}
"""


class LiteLLM(_Peer):
    """`litellm --config ... --host 127.0.0.1 --port P`: pass-through to the mock, no database."""

    name = "litellm"

    @staticmethod
    def install() -> Path:
        return ensure_venv("litellm", sys.executable if sys.version_info >= (3, 10) else None, [LITELLM_SPEC])

    def __init__(self, mock_url: str, workdir: Path, start_timeout: float = 180, model: str = "gpt-4o-mini"):
        venv = self.install()
        self.version = installed_version(venv, "litellm")
        self.port = _free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        # LiteLLM refuses to start without a master key; a random one, sent by the client.
        self.key = "sk-" + secrets.token_hex(24)
        self.config_path = workdir / "litellm-config.yaml"
        self.config_path.write_text(litellm_config(mock_url, self.key, model))
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._start([str(venv / "bin" / "litellm"), "--config", str(self.config_path),
                     "--host", "127.0.0.1", "--port", str(self.port)],
                    _clean_env(HOME=str(workdir), LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False",
                               LITELLM_LOG="ERROR", DISABLE_SCHEMA_UPDATE="True"),
                    workdir, workdir / f"litellm-{self.port}.log")
        try:
            _wait_ready(self._ready, self.proc, self.log_path, "litellm", start_timeout)
        except BaseException:
            self.close()
            raise

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health/readiness", timeout=2) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False


def litellm_config(mock_url: str, master_key: str, model: str) -> str:
    return f"""model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {mock_url}
      api_key: sk-bench-not-a-real-key
litellm_settings:
  telemetry: false
general_settings:
  master_key: {master_key}
"""


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers")
    p.add_argument("what", choices=["install", "versions"])
    a = p.parse_args(argv)
    rc = 0
    for name, cls, dist in (("ogx", OGX, "ogx"), ("litellm", LiteLLM, "litellm")):
        try:
            venv = cls.install() if a.what == "install" else PEERS_DIR / name
            print(f"{name}: {installed_version(venv, dist) if (venv / 'bin' / 'python').exists() else 'not installed'}"
                  f"  ({venv})")
        except Unavailable as e:
            print(f"{name}: unavailable: {e}")
            rc = 1
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
