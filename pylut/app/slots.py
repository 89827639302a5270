"""The server's engine room: N slots, each a conversation (a session) of the one model, fed
from a bounded FIFO queue of requests by N worker threads; the counters /metrics reports.

A request thread of the HTTP server only parses and writes: it hands a Job to Slots.submit
and reads the job's events (chunks, then the usage or an error). Workers run the generation
and put each chunk in the job's bounded event queue, so a client that stops reading stalls
only its own worker (which then asks the model for nothing: the model's scheduler steps the
sessions that are asking) until the write timeout drops it and cancels the job.

    slots = Slots(model, n_slots=4, queue_limit=16)
    job = Job("completion", {"prompt": "Hi", "max_tokens": 8}, deadline=time.monotonic() + 60)
    slots.submit(job)                  # RequestError(503) when the queue is full
    kind, value = job.events.get()     # ("chunk", dict) ... then ("end", usage) or ("error", RequestError)
"""
import collections
import logging
import os
import queue
import threading
import time

from .. import _core
from ..kernels import physical_cores
from ..session import common_prefix

log = logging.getLogger("pylut.server")

# chunks a worker may run ahead of its client's socket before it waits (and its session
# leaves the model's steps)
STREAM_AHEAD = 64
TPS_WINDOW_S = 10.0  # the tokens/s gauge counts the tokens of this last stretch of time


class RequestError(Exception):
    """An answer other than 200, in OpenAI's error shape; headers go with it (Retry-After)."""

    def __init__(self, status, message, param=None, code=None, etype="invalid_request_error", headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.etype = status, message, param, code, etype
        self.headers = headers or {}

    def body(self):
        return {"error": {"message": self.message, "type": self.etype, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------- how many slots

def kv_bytes_per_slot(model) -> int:
    """KV bytes of one conversation that fills the model's context (the worst case a slot
    can grow to)."""
    cfg = model.loaded.config
    row = _core.kv_row_bytes(model.kv_type, cfg["head_dim"])
    return 2 * cfg["n_layers"] * cfg["n_kv_heads"] * model.n_ctx * row


def available_memory() -> int:
    """Bytes of memory the system could still give this process (0 when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def default_parallel(model):
    """(slots, why): decode reads the weights once per step for every sequence in it, so a
    few slots per core cost little compute; each slot may hold a full context of KV, so half
    the available memory bounds them."""
    cores = physical_cores()
    by_cores = min(16, max(4, 2 * cores))
    per_slot = kv_bytes_per_slot(model)
    avail = available_memory()
    by_memory = max(1, int(avail * 0.5 // per_slot)) if avail and per_slot else by_cores
    n = min(by_cores, by_memory)
    why = (f"{cores} cores -> {by_cores}; {avail / 2**30:.1f} GiB available, "
           f"{per_slot / 2**20:.1f} MiB KV per full slot -> {by_memory}")
    return n, why


# ---------------------------------------------------------------- one request

class Job:
    """A parsed request waiting for a slot, then running on one. kind: 'completion' or
    'chat'; call: the keywords of create_completion / create_chat_completion (without
    stream: workers always stream); prefix: the prompt's token ids when known, to pick the
    slot whose cache already holds the longest part of it."""

    def __init__(self, kind, call, deadline, prefix=None):
        self.kind, self.call, self.deadline, self.prefix = kind, call, deadline, prefix or []
        self.events = queue.Queue(maxsize=STREAM_AHEAD)
        self.cancel = threading.Event()  # set by the request thread: the client is gone
        self.queued_at = time.monotonic()
        self.outcome = None              # set by the worker: 'ok', 'error', 'dropped', 'timeout'


# ---------------------------------------------------------------- counters

class Metrics:
    """Monotonic counters and the recent token rate, read by /metrics and /health."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = collections.Counter()  # outcome -> count
        self.prompt_tokens = 0
        self.prompt_tokens_reused = 0
        self.gen_tokens = 0
        self.recent = collections.deque()      # (monotonic time, tokens generated then)
        self.started = time.monotonic()

    def count(self, outcome):
        with self.lock:
            self.requests[outcome] += 1

    def generated(self, n):
        if n <= 0:
            return
        now = time.monotonic()
        with self.lock:
            self.gen_tokens += n
            self.recent.append((now, n))

    def prompt(self, usage):
        with self.lock:
            self.prompt_tokens += usage.get("prompt_tokens", 0)
            self.prompt_tokens_reused += (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)

    def tokens_per_second(self):
        now = time.monotonic()
        with self.lock:
            while self.recent and self.recent[0][0] < now - TPS_WINDOW_S:
                self.recent.popleft()
            n = sum(k for _, k in self.recent)
        return n / max(1e-3, min(TPS_WINDOW_S, now - self.started))


# ---------------------------------------------------------------- the slots

class Slots:
    def __init__(self, model, n_slots, queue_limit, metrics=None):
        if n_slots < 1 or queue_limit < 0:
            raise ValueError(f"need at least one slot and a queue limit >= 0, got {n_slots}, {queue_limit}")
        self.model, self.n_slots, self.queue_limit = model, n_slots, queue_limit
        self.metrics = metrics or Metrics()
        self.cond = threading.Condition()
        self.waiting = collections.deque()  # FIFO of Jobs no worker has taken yet
        self.idle = [None] * n_slots        # sessions not running a request (None: open one when needed)
        self.busy = 0
        self.closed = False
        self.mean_request_s = 1.0           # for Retry-After
        self.workers = [threading.Thread(target=self._work, name=f"pylut-slot-{i}", daemon=True)
                        for i in range(n_slots)]
        for w in self.workers:
            w.start()

    # ------------------------------------------------------------ admission

    def submit(self, job):
        with self.cond:
            if self.closed:
                raise RequestError(503, "the server is shutting down", code="unavailable", etype="server_error")
            # jobs that will wait for a slot, this one included (free workers take the first ones)
            must_wait = len(self.waiting) + 1 - (self.n_slots - self.busy)
            if must_wait > self.queue_limit:
                wait = self.mean_request_s * (len(self.waiting) + 1) / self.n_slots
                self.metrics.count("rejected")
                raise RequestError(503, f"the server is busy ({self.n_slots} requests running, "
                                   f"{len(self.waiting)} queued); try again later", code="busy",
                                   etype="server_error", headers={"Retry-After": str(min(60, max(1, round(wait))))})
            self.waiting.append(job)
            self.cond.notify()

    def snapshot(self):
        with self.cond:
            return {"slots_total": self.n_slots, "slots_busy": self.busy,
                    "slots_idle": self.n_slots - self.busy, "queue": len(self.waiting),
                    "queue_limit": self.queue_limit}

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        for w in self.workers:
            w.join(5)
        for s in self.idle:
            if s is not None:
                s.close()

    # ------------------------------------------------------------ workers

    def _take(self):
        """The oldest job and the idle session whose cache holds most of its prompt."""
        with self.cond:
            while not self.waiting and not self.closed:
                self.cond.wait()
            if self.closed:
                return None, None
            job = self.waiting.popleft()
            best, best_n = 0, -1
            for i, s in enumerate(self.idle):
                n = common_prefix(s._cached, job.prefix) if s is not None else 0
                if n > best_n:
                    best, best_n = i, n
            session = self.idle.pop(best)
            self.busy += 1
        return job, session

    def _give_back(self, session, seconds):
        with self.cond:
            self.idle.append(session)
            self.busy -= 1
            self.mean_request_s = 0.8 * self.mean_request_s + 0.2 * seconds

    def _work(self):
        while True:
            job, session = self._take()
            if job is None:
                return
            t0 = time.monotonic()
            try:
                if session is None:
                    session = self.model.session()
                self._run(job, session)
            except Exception:  # a bug must cost one request, never a slot
                log.exception("slot worker failed")
                job.outcome = "error"
                _offer(job, ("error", RequestError(500, "internal server error", etype="server_error")))
            finally:
                if job.outcome in ("dropped", "error") and session is not None:
                    session.close()  # free its cache now; the slot opens a fresh one when needed
                    session = None
                self.metrics.count(job.outcome or "error")
                self._give_back(session, time.monotonic() - t0)

    def _run(self, job, session):
        if job.cancel.is_set():
            job.outcome = "dropped"
            return
        if time.monotonic() > job.deadline:
            job.outcome = "timeout"
            _offer(job, ("error", RequestError(503, "timed out waiting for a free slot; try again later",
                                               code="busy", etype="server_error",
                                               headers={"Retry-After": "1"})))
            return
        method = session.create_chat_completion if job.kind == "chat" else session.create_completion
        try:
            chunks = method(stream=True, **job.call)
        except (ValueError, TypeError) as e:
            job.outcome = "error"
            _offer(job, ("error", RequestError(400, str(e))))
            return
        counted = 0
        unfinished = {}  # choice index -> its last chunk, until its finish_reason comes (n > 1: several)
        try:
            for chunk in chunks:
                index = chunk["choices"][0].get("index", 0)
                unfinished[index] = chunk
                if _finished(chunk):
                    del unfinished[index]
                if not _is_role_chunk(chunk):  # stats are this request's only once it generates
                    n = session.stats["gen_tokens"]
                    self.metrics.generated(n - counted)
                    counted = n
                if job.cancel.is_set() or not _offer(job, ("chunk", chunk)):
                    job.outcome = "dropped"
                    return
                if time.monotonic() > job.deadline and unfinished:
                    job.outcome = "timeout"
                    for last in unfinished.values():
                        _offer(job, ("chunk", _cut(last)))
                    break
        except (ValueError, TypeError) as e:  # a prompt the model cannot run (over n_ctx, ...)
            job.outcome = "error"
            _offer(job, ("error", RequestError(400, str(e))))
            return
        finally:
            chunks.close()
        usage = session.usage()
        self.metrics.generated(usage.get("completion_tokens", 0) - counted)
        self.metrics.prompt(usage)
        job.outcome = job.outcome or "ok"
        _offer(job, ("end", usage))


def _offer(job, event):
    """Put an event for the request thread, waiting while its client is slow; False when the
    client is gone."""
    while True:
        try:
            job.events.put(event, timeout=0.25)
            return True
        except queue.Full:
            if job.cancel.is_set():
                return False


def _is_role_chunk(chunk):
    return "role" in (chunk["choices"][0].get("delta") or {})


def _finished(chunk):
    return chunk["choices"][0].get("finish_reason") is not None


def _cut(chunk):
    """The closing chunk of a generation stopped by the request's wall-time bound."""
    choice = dict(chunk["choices"][0], finish_reason="length")
    if "delta" in choice:
        choice["delta"] = {}
    else:
        choice["text"] = ""
    return dict(chunk, choices=[choice])
