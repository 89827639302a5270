"""An OpenAI-compatible HTTP server on the standard library (http.server), so `pylut serve`
needs nothing beyond numpy:

    POST /v1/chat/completions   POST /v1/completions   (stream: true -> server-sent events)
    GET  /v1/models   GET /health   GET /metrics (Prometheus text)   POST /tokenize

Up to N requests run at once, each in a slot with its own session of the model, whose
scheduler steps them together; the rest wait in a bounded FIFO queue, and past it get a
503 with Retry-After (pylut.app.slots). The threads of ThreadingHTTPServer only parse
requests and write answers: a streaming client that stops reading is dropped after the
write timeout, its session closed, without slowing anyone else. Errors use OpenAI's shape,
{"error": {"message", "type", "param", "code"}}, so clients surface them as usual.
The server logs through logging.getLogger("pylut.server"); it never prints by itself.
"""
import json
import logging
import math
import queue
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .slots import Job, Metrics, RequestError, Slots, default_parallel

log = logging.getLogger("pylut.server")

MAX_BODY = 1 << 20
# a body over the limit is read and dropped up to this size so the client sees the 413
# instead of a reset connection; beyond it the connection is simply closed
DRAIN_LIMIT = 16 << 20
REQUEST_TIMEOUT_S = 600.0  # a request's wall time, queue included
WRITE_TIMEOUT_S = 30.0     # a streaming client that takes no bytes this long is dropped
# bytes the kernel may hold for a streaming client (its default grows to megabytes, which a
# client that stopped reading would fill before the write timeout even starts counting)
STREAM_SNDBUF = 64 << 10
POLL_S = 0.25              # how often a waiting request thread checks that its client is still there
MAX_N = 16                 # choices a request may ask for (each one a sequence of its own in the steps)


# ---------------------------------------------------------------- request validation

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bad(message, param=None, code=None):
    return RequestError(400, message, param, code)


def _is_finite(v):
    return _is_num(v) and math.isfinite(v)


# field -> (check, description, range check or None, the range in words)
_SAMPLING = {
    "temperature": (_is_finite, "a number", lambda v: 0 <= v <= 2, "between 0 and 2"),
    "top_p": (_is_finite, "a number", lambda v: 0 < v <= 1, "in (0, 1]"),
    "top_k": (_is_int, "an integer", lambda v: 0 <= v < 2**31, "in 0..2147483647 (0: off)"),
    "min_p": (_is_finite, "a number", lambda v: 0 <= v <= 1, "in [0, 1]"),
    "repeat_penalty": (_is_finite, "a number", lambda v: 0 < v <= 1e6, "in (0, 1e6]"),
    "repeat_last_n": (_is_int, "an integer", lambda v: 0 <= v < 2**31, "in 0..2147483647"),
    "seed": (_is_int, "an integer", lambda v: 0 <= v < 2**64, "in 0..2^64-1"),
}


def parse_common(body, max_tokens_limit, default_max_tokens):
    """(max_tokens, stop, stream, n, sampling kwargs) from an OpenAI request body."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    sampling = {}
    for name, (check, what, rng, rng_text) in _SAMPLING.items():
        v = body.get(name)
        if v is None:
            continue
        if not check(v):
            raise _bad(f"'{name}' must be {what}, got {json.dumps(v)[:50]}", name)
        if rng is not None and not rng(v):
            raise _bad(f"'{name}' must be {rng_text}, got {json.dumps(v)[:50]}", name)
        sampling[name] = v
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is None:
        max_tokens = default_max_tokens
    elif not _is_int(max_tokens) or max_tokens < 1:
        raise _bad(f"'max_tokens' must be a positive integer, got {json.dumps(max_tokens)[:50]}", "max_tokens")
    elif max_tokens > max_tokens_limit:
        raise _bad(f"'max_tokens' is {max_tokens}; this server allows at most {max_tokens_limit}", "max_tokens")
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            raise _bad("'stop' must be a non-empty string or a list of up to 4 of them", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")
    n = body.get("n", 1)
    if n is None:
        n = 1
    if not _is_int(n) or not 1 <= n <= MAX_N:
        raise _bad(f"'n' must be an integer in 1..{MAX_N}, got {json.dumps(n)[:50]}", "n")
    return max_tokens, stop, stream, n, sampling


def parse_messages(body):
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad(f"messages[{i}] must be an object with a string 'role'", "messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text parts can be read here
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise _bad(f"messages[{i}].content: only text parts are supported", "messages")
                texts.append(part["text"])
            content = "".join(texts)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise _bad(f"messages[{i}].content must be a string or an array of text parts", "messages")
        out.append({"role": m["role"], "content": content})
    return out


def parse_prompt(body):
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        if not prompt:
            raise _bad("'prompt' is empty", "prompt")
        return prompt
    if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        if not all(0 <= t < 2**31 for t in prompt):
            raise _bad("'prompt' token ids must be in 0..vocab-1", "prompt")
        return prompt
    raise _bad("'prompt' must be a non-empty string or array of token ids (batches are not supported)", "prompt")


def _no_constant(name):
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


class _ClientGone(Exception):
    """The client hung up (or stalled past the write timeout): nothing more to answer."""


# ---------------------------------------------------------------- the server

class PylutServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must not keep the process alive at shutdown
    request_queue_size = 64  # listen backlog: a burst of clients queues instead of being refused

    def __init__(self, addr, model, api_key=None, max_tokens_limit=4096, max_body=MAX_BODY, parallel=None,
                 queue_limit=None, request_timeout=REQUEST_TIMEOUT_S, write_timeout=WRITE_TIMEOUT_S):
        self.model = model
        self.api_key = api_key
        self.max_tokens_limit = max_tokens_limit
        self.max_body = max_body
        self.request_timeout = float(request_timeout)
        self.write_timeout = float(write_timeout)
        self.created = int(time.time())
        if parallel is None:
            parallel, _ = default_parallel(model)
        if queue_limit is None:
            queue_limit = max(16, 4 * parallel)
        self.metrics = Metrics()
        self.slots = Slots(model, parallel, queue_limit, self.metrics)
        try:
            super().__init__(addr, Handler)
        except BaseException:
            self.slots.close()
            raise

    def server_close(self):
        super().server_close()
        self.slots.close()


# path -> (method, handler method name)
ROUTES = {"/health": ("GET", "_health"), "/metrics": ("GET", "_metrics"), "/v1/models": ("GET", "_models"),
          "/v1/chat/completions": ("POST", "_chat"), "/v1/completions": ("POST", "_completions"),
          "/tokenize": ("POST", "_tokenize")}


class Handler(BaseHTTPRequestHandler):
    server_version = "pylut"
    protocol_version = "HTTP/1.1"  # keep-alive for the openai client's connection pool
    timeout = 60  # seconds a client may take to send its request

    def log_message(self, fmt, *args):
        log.info("%s %s", self.address_string(), fmt % args)

    # ------------------------------------------------------------ responses

    def _send_bytes(self, status, data, content_type, close=False, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _send_json(self, status, obj, close=False, headers=None):
        self._send_bytes(status, json.dumps(obj).encode(), "application/json", close, headers)

    def _send_error(self, err: RequestError, close=False):
        self._send_json(err.status, err.body(), close=close, headers=err.headers)

    # ------------------------------------------------------------ routing

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_OPTIONS(self):
        self._dispatch("OPTIONS")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS

    def _dispatch(self, method):
        try:
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            route = ROUTES.get(path)
            if route is None:
                # the body of an unknown request is not read: close so it is not parsed as a request
                raise RequestError(404, f"no route {method} {path}", code="not_found")
            if path != "/health" and self.server.api_key is not None:
                auth = self.headers.get("Authorization", "")
                if auth != f"Bearer {self.server.api_key}":
                    self._drain_body()
                    raise RequestError(401, "invalid or missing API key (Authorization: Bearer KEY)",
                                       code="invalid_api_key", etype="authentication_error")
            if method != route[0]:
                self._drain_body()
                raise RequestError(405, f"{path} takes {route[0]}, not {method}", code="method_not_allowed")
            getattr(self, route[1])()
        except RequestError as e:
            self._send_error(e, close=e.status in (404, 411, 413))
        except (OSError, _ClientGone) as e:  # the client hung up or stalled: nothing to answer
            log.info("%s: connection dropped (%s)", self.address_string(), e or type(e).__name__)
            self.close_connection = True
        except Exception:  # a bug must cost one request, never the server
            log.exception("internal error on %s", self.path)
            try:
                # the details are in the server's log; a client learns nothing of the internals
                self._send_error(RequestError(500, "internal server error", etype="server_error"),
                                 close=True)
            except OSError:
                self.close_connection = True

    def _drain_body(self):
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = 0
        if 0 < n <= self.server.max_body:
            self.rfile.read(n)
        elif n:
            self.close_connection = True

    def _read_json(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise RequestError(411, "chunked request bodies are not supported; send Content-Length",
                               code="length_required")
        length = self.headers.get("Content-Length")
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except (TypeError, ValueError):
            raise RequestError(411, "a Content-Length header is required", code="length_required") from None
        if n > self.server.max_body:
            if n <= DRAIN_LIMIT:
                left = n
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 16))
                    if not chunk:
                        break
                    left -= len(chunk)
            raise RequestError(413, f"request body is {n} bytes; the limit is {self.server.max_body}",
                               code="request_too_large")
        raw = self.rfile.read(n)
        try:
            return json.loads(raw, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise _bad(f"request body is not valid JSON: {e}", code="invalid_json") from None

    # ------------------------------------------------------------ endpoints

    def _health(self):
        self._send_json(200, dict({"status": "ok", "model": self.server.model.name}, **self.server.slots.snapshot()))

    def _metrics(self):
        text = prometheus_text(self.server)
        self._send_bytes(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")

    def _models(self):
        m = self.server.model
        self._send_json(200, {"object": "list", "data": [
            {"id": m.name, "object": "model", "created": self.server.created, "owned_by": "pylut"}]})

    def _tokenize(self):
        # llama-server's endpoint: {"content": str, "add_special": bool} -> {"tokens": [...]}
        body = self._read_json()
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str):
            raise _bad("'content' must be a string", "content")
        add_special = body.get("add_special", False)
        if not isinstance(add_special, bool):
            raise _bad("'add_special' must be a boolean", "add_special")
        self._send_json(200, {"tokens": self.server.model.tokenize(content, add_bos=add_special)})

    def _chat(self):
        body = self._read_json()
        max_tokens, stop, stream, n, sampling = parse_common(body, self.server.max_tokens_limit,
                                                             self.server.max_tokens_limit)
        messages = parse_messages(body)
        call = dict(messages=messages, max_tokens=max_tokens, stop=stop, n=n, **sampling)
        self._run(Job("chat", call, self._deadline(), self._chat_prefix(messages)), stream, body)

    def _completions(self):
        body = self._read_json()
        max_tokens, stop, stream, n, sampling = parse_common(body, self.server.max_tokens_limit, 16)
        prompt = parse_prompt(body)
        ignore_eos = body.get("ignore_eos", False)  # llama-server's: generate max_tokens whatever comes
        if not isinstance(ignore_eos, bool):
            raise _bad("'ignore_eos' must be a boolean", "ignore_eos")
        call = dict(prompt=prompt, max_tokens=max_tokens, stop=stop, ignore_eos=ignore_eos, n=n, **sampling)
        prefix = prompt if isinstance(prompt, list) else self._tokens_or_none(prompt)
        self._run(Job("completion", call, self._deadline(), prefix), stream, body)

    def _deadline(self):
        return time.monotonic() + self.server.request_timeout

    def _tokens_or_none(self, text, **kw):
        """The prompt's tokens, only to pick the slot whose cache holds most of them."""
        try:
            return self.server.model.tokenize(text, **kw)
        except (ValueError, TypeError):
            return None

    def _chat_prefix(self, messages):
        model = self.server.model
        try:
            prompt = model.chat_template.render(messages, add_generation_prompt=True)
        except (ValueError, TypeError):
            return None
        add_bos = model.tokenizer.add_bos and not prompt.startswith(model.chat_template.bos or "\0")
        return self._tokens_or_none(prompt, add_bos=add_bos, special=True)

    # ------------------------------------------------------------ running a request

    def _run(self, job, stream, body):
        self.server.slots.submit(job)  # a full queue raises the 503
        self._peer_checked = time.monotonic()
        try:
            # wait for the first event that holds text or the end, so a prompt that cannot
            # run (too long for the context...) is still answered with a 400
            head = []
            while True:
                kind, value = self._next_event(job)
                if kind == "error":
                    raise value
                if kind == "end":
                    break
                head.append(value)
                if _has_text_or_end(value):
                    break
            if stream:
                self._stream(job, head, (kind, value), body)
            else:
                self._send_json(200, self._assemble(job, head, (kind, value)))
        finally:
            job.cancel.set()  # whatever happened here, the worker stops at its next event

    def _next_event(self, job):
        """The worker's next event; every POLL_S, checks that the client is still there."""
        while True:
            now = time.monotonic()
            if now >= self._peer_checked + POLL_S:
                self._peer_checked = now
                if self._peer_gone():
                    raise _ClientGone("the client closed the connection")
                if now > job.deadline + 30:  # the worker ends by its deadline: a stuck one
                    raise RequestError(504, "the request timed out", code="timeout", etype="server_error")
            try:
                return job.events.get(timeout=POLL_S)
            except queue.Empty:
                pass

    def _peer_gone(self):
        """True when the client has closed its end (readable, with nothing to read)."""
        sock = self.connection
        before = sock.gettimeout()
        sock.settimeout(0)  # a peek that never waits
        try:
            return sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            sock.settimeout(before)

    def _assemble(self, job, chunks, last_event):
        """The non-streamed answer from the worker's chunks and usage."""
        kind, value = last_event  # (a chunk in last_event is already the last of chunks)
        while kind == "chunk":
            kind, value = self._next_event(job)
            if kind == "chunk":
                chunks.append(value)
        if kind == "error":
            raise value
        first = chunks[0]
        n = job.call.get("n", 1)
        texts, reasons = [""] * n, [None] * n
        for c in chunks:  # each chunk carries one choice's piece (n > 1: interleaved)
            ch = c["choices"][0]
            i = ch["index"]
            texts[i] += (ch.get("delta") or {}).get("content", "") if job.kind == "chat" else ch["text"]
            reasons[i] = ch.get("finish_reason") or reasons[i]
        if job.kind == "chat":
            choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                        "finish_reason": reasons[i]} for i in range(n)]
            obj = "chat.completion"
        else:
            choices = [{"text": texts[i], "index": i, "logprobs": None, "finish_reason": reasons[i]}
                       for i in range(n)]
            obj = "text_completion"
        return {"id": first["id"], "object": obj, "created": first["created"], "model": first["model"],
                "choices": choices, "usage": value}

    def _write_event(self, obj):
        self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def _stream(self, job, head, last_event, body):
        # from here on every write is bounded: a client that takes no bytes for the write
        # timeout raises socket.timeout, and job.cancel (set by _run) frees its slot
        self.connection.settimeout(self.server.write_timeout)
        try:  # a bounded send buffer: a client that stops reading blocks our writes soon
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
        except OSError:
            pass
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        # no Content-Length: the end of the stream is the end of the connection
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        last = None
        for chunk in head:
            last = chunk
            self._write_event(dict(chunk, usage=None) if include_usage else chunk)
        kind, value = last_event
        while kind == "chunk":
            kind, value = self._next_event(job)
            if kind == "chunk":
                last = value
                self._write_event(dict(value, usage=None) if include_usage else value)
        if kind == "error":  # after the headers: report in the stream
            self._write_event(value.body())
        elif include_usage and last is not None:
            self._write_event(dict(last, choices=[], usage=value))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _has_text_or_end(chunk):
    ch = chunk["choices"][0]
    return bool(ch.get("finish_reason") or ch.get("text") or (ch.get("delta") or {}).get("content"))


# ---------------------------------------------------------------- /metrics

def prometheus_text(server) -> str:
    """The counters in Prometheus' text exposition format (llama-server's /metrics, renamed)."""
    m, snap = server.metrics, server.slots.snapshot()
    with m.lock:
        requests = dict(m.requests)
        prompt, reused, gen = m.prompt_tokens, m.prompt_tokens_reused, m.gen_tokens
    lines = []

    def metric(name, kind, help_text, samples):
        lines.append(f"# HELP pylut_{name} {help_text}")
        lines.append(f"# TYPE pylut_{name} {kind}")
        for labels, v in samples:
            lines.append(f"pylut_{name}{labels} {v:g}" if isinstance(v, float) else f"pylut_{name}{labels} {v}")
    metric("requests_total", "counter", "Requests that reached a slot or were turned away, by outcome.",
           [(f'{{outcome="{k}"}}', requests.get(k, 0)) for k in ("ok", "error", "dropped", "timeout", "rejected")])
    metric("prompt_tokens_total", "counter", "Prompt tokens of finished requests.", [("", prompt)])
    metric("prompt_tokens_reused_total", "counter", "Prompt tokens whose cache was reused, not evaluated.",
           [("", reused)])
    metric("tokens_generated_total", "counter", "Tokens generated.", [("", gen)])
    metric("tokens_per_second", "gauge", "Tokens generated per second over the last 10 s.",
           [("", float(m.tokens_per_second()))])
    metric("slots_total", "gauge", "Requests that may run at once (--parallel).", [("", snap["slots_total"])])
    metric("requests_processing", "gauge", "Requests running in a slot.", [("", snap["slots_busy"])])
    metric("requests_deferred", "gauge", "Requests waiting in the queue for a slot.", [("", snap["queue"])])
    metric("queue_limit", "gauge", "Requests that may wait; past it, 503.", [("", snap["queue_limit"])])
    sched = server.model.scheduler.info()
    metric("steps_total", "counter", "Batched forward steps run by the model's scheduler.", [("", sched["steps"])])
    metric("step_tokens_total", "counter", "Tokens those steps ran (prompt chunks and decodes).",
           [("", sched["tokens"])])
    metric("step_sequences_max", "gauge", "Most sequences stepped together in one step so far.",
           [("", sched["max_seqs"])])
    metric("step_busy_seconds_total", "counter", "Seconds spent running those steps.",
           [("", float(sched["busy_s"]))])
    metric("step_idle_seconds_total", "counter",
           "Seconds between steps while a request waited for one (the scheduler's own overhead).",
           [("", float(sched["idle_s"]))])
    kv = server.model.kv_stats()
    for key, help_text in (("sessions", "Open sessions (conversations holding a KV cache)."),
                           ("tokens_cached", "Tokens whose keys and values are cached, over every session."),
                           ("kv_bytes_used", "KV cache bytes holding tokens."),
                           ("kv_bytes_total", "KV cache bytes the open sessions take at n_ctx."),
                           ("kv_bytes_held", "KV cache bytes allocated now (a shared block counted once)."),
                           ("blocks_used", "KV cache blocks in use."),
                           ("blocks_total", "KV cache blocks in the pool.")):
        if key in kv:
            name = key if key.startswith("kv_") or key == "sessions" else "kv_" + key
            metric(name, "gauge", help_text, [("", int(kv[key]))])
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- entry points

def make_server(model, host="127.0.0.1", port=8080, api_key=None, max_tokens_limit=4096, max_body=MAX_BODY,
                **limits):
    """limits: parallel, queue_limit, request_timeout, write_timeout (PylutServer)."""
    return PylutServer((host, port), model, api_key=api_key, max_tokens_limit=max_tokens_limit,
                       max_body=max_body, **limits)


def serve(model, host="127.0.0.1", port=8080, api_key=None, max_tokens_limit=4096, max_body=MAX_BODY,
          on_ready=None, **limits):
    """Serve until KeyboardInterrupt. on_ready(server) is called once listening
    (server.server_address holds the port: port 0 picks a free one)."""
    httpd = make_server(model, host, port, api_key, max_tokens_limit, max_body, **limits)
    try:
        if on_ready is not None:
            on_ready(httpd)
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
