"""An OpenAI-compatible HTTP server on the standard library (http.server), so `pylut serve`
needs nothing beyond numpy:

    POST /v1/chat/completions   POST /v1/completions   (stream: true -> server-sent events)
    GET  /v1/models             GET  /health

One Model holds one KV cache, so requests take turns on it: a lock serializes them (a
streaming response holds it until its last event) while the threads of ThreadingHTTPServer
keep accepting and parsing the queued ones. Errors use OpenAI's shape,
{"error": {"message", "type", "param", "code"}}, so clients surface them as usual.
The server logs through logging.getLogger("pylut.server"); it never prints by itself.
"""
import json
import logging
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("pylut.server")

MAX_BODY = 1 << 20
# a body over the limit is read and dropped up to this size so the client sees the 413
# instead of a reset connection; beyond it the connection is simply closed
DRAIN_LIMIT = 16 << 20
QUEUE_TIMEOUT_S = 600.0


class RequestError(Exception):
    def __init__(self, status, message, param=None, code=None, etype="invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.etype = status, message, param, code, etype

    def body(self):
        return {"error": {"message": self.message, "type": self.etype, "param": self.param, "code": self.code}}


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
    """(max_tokens, stop, stream, sampling kwargs) from an OpenAI request body."""
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
    if n != 1 or isinstance(n, bool):
        raise _bad("only n=1 is supported", "n")
    return max_tokens, stop, stream, sampling


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


# ---------------------------------------------------------------- the server

class PylutServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must not keep the process alive at shutdown
    request_queue_size = 64  # listen backlog: a burst of clients queues instead of being refused

    def __init__(self, addr, model, api_key=None, max_tokens_limit=4096, max_body=MAX_BODY):
        self.model = model
        self.model_lock = threading.Lock()
        self.api_key = api_key
        self.max_tokens_limit = max_tokens_limit
        self.max_body = max_body
        self.created = int(time.time())
        super().__init__(addr, Handler)


# path -> (method, handler method name)
ROUTES = {"/health": ("GET", "_health"), "/v1/models": ("GET", "_models"),
          "/v1/chat/completions": ("POST", "_chat"), "/v1/completions": ("POST", "_completions")}


class Handler(BaseHTTPRequestHandler):
    server_version = "pylut"
    protocol_version = "HTTP/1.1"  # keep-alive for the openai client's connection pool
    timeout = 60  # seconds a client may take to send its request

    def log_message(self, fmt, *args):
        log.info("%s %s", self.address_string(), fmt % args)

    # ------------------------------------------------------------ responses

    def _send_json(self, status, obj, close=False):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, err: RequestError, close=False):
        self._send_json(err.status, err.body(), close=close)

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
        except OSError as e:  # the client hung up or stalled past `timeout`: nothing to answer
            log.info("%s: connection dropped (%s)", self.address_string(), e)
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
        self._send_json(200, {"status": "ok", "model": self.server.model.name})

    def _models(self):
        m = self.server.model
        self._send_json(200, {"object": "list", "data": [
            {"id": m.name, "object": "model", "created": self.server.created, "owned_by": "pylut"}]})

    def _chat(self):
        body = self._read_json()
        max_tokens, stop, stream, sampling = parse_common(body, self.server.max_tokens_limit,
                                                          self.server.max_tokens_limit)
        messages = parse_messages(body)
        self._run(lambda m: m.create_chat_completion(messages, max_tokens=max_tokens, stream=stream,
                                                     stop=stop, **sampling), stream, body)

    def _completions(self):
        body = self._read_json()
        max_tokens, stop, stream, sampling = parse_common(body, self.server.max_tokens_limit, 16)
        prompt = parse_prompt(body)
        self._run(lambda m: m.create_completion(prompt, max_tokens=max_tokens, stream=stream, stop=stop,
                                                **sampling), stream, body)

    def _run(self, call, stream, body):
        lock = self.server.model_lock
        if not lock.acquire(timeout=QUEUE_TIMEOUT_S):
            raise RequestError(503, "the server is busy; try again later", code="busy", etype="server_error")
        try:
            model = self.server.model
            try:
                result = call(model)
                if not stream:
                    self._send_json(200, result)
                    return
                # run until the first event that holds text or the end, so a prompt that
                # cannot run (too long for the context...) is still answered with a 400
                head = []
                for chunk in result:
                    head.append(chunk)
                    ch = chunk["choices"][0]
                    if ch.get("finish_reason") or ch.get("text") or ch.get("delta", {}).get("content"):
                        break
            except (ValueError, TypeError) as e:
                raise _bad(str(e)) from None
            self._stream(result, head, body, model)
        finally:
            lock.release()

    def _stream(self, chunks, head, body, model):
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
        try:
            for chunk in _chain(head, chunks):
                last = chunk
                if include_usage:
                    chunk["usage"] = None
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()
            if include_usage and last is not None:
                s = model.stats
                usage = {"prompt_tokens": s["prompt_tokens"], "completion_tokens": s["gen_tokens"],
                         "total_tokens": s["prompt_tokens"] + s["gen_tokens"]}
                self.wfile.write(b"data: " + json.dumps(dict(last, choices=[], usage=usage)).encode() + b"\n\n")
        except (ValueError, TypeError) as e:  # after the headers: report in the stream
            err = RequestError(400, str(e)).body()
            self.wfile.write(b"data: " + json.dumps(err).encode() + b"\n\n")
        finally:
            chunks.close()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _chain(head, rest):
    yield from head
    yield from rest


def make_server(model, host="127.0.0.1", port=8080, api_key=None, max_tokens_limit=4096, max_body=MAX_BODY):
    return PylutServer((host, port), model, api_key=api_key, max_tokens_limit=max_tokens_limit,
                       max_body=max_body)


def serve(model, host="127.0.0.1", port=8080, api_key=None, max_tokens_limit=4096, max_body=MAX_BODY,
          on_ready=None):
    """Serve until KeyboardInterrupt. on_ready(host, port) is called once listening (port 0
    picks a free port, so this is how the caller learns it)."""
    httpd = make_server(model, host, port, api_key, max_tokens_limit, max_body)
    try:
        if on_ready is not None:
            on_ready(*httpd.server_address[:2])
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
