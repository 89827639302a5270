"""A `pylut serve` subprocess on a free 127.0.0.1 port, for the server tests."""
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def _free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model, tmp, *extra):
        self.port = _free_port()
        self.log = open(tmp / f"server-{self.port}.log", "w+b")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYLUT_CACHE_DIR=str(tmp / "cache"), PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", "pylut", "serve", str(model), "--host", HOST,
                                      "--port", str(self.port), "--threads", "1", "--max-tokens-limit", "64",
                                      *extra], stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.output()}")
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer /health in 60 s: {self.output()}")

    def output(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def request(self, method, path, body=None, headers=None, timeout=30):
        status, _, data = self.request_full(method, path, body, headers, timeout)
        return status, data

    def request_full(self, method, path, body=None, headers=None, timeout=30):
        """(status, headers as a dict, body)."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def health(self):
        status, body = self.request("GET", "/health")
        assert status == 200, body
        return json.loads(body)

    def client(self, key="sk-test"):
        import openai
        return openai.OpenAI(base_url=f"http://{HOST}:{self.port}/v1", api_key=key, max_retries=0, timeout=30)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()
