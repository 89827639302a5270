"""The server's slots (pylut.app.slots) over stand-in sessions whose generation the test
paces: FIFO order, the queue bound and its 503, a cancelled job's session closed, the wall
time bound, the slot whose cache holds the prompt chosen, the counters. No model, no HTTP."""
import threading
import time

import pytest

from pylut.app.slots import STREAM_AHEAD, Job, RequestError, Slots


class FakeSession:
    """Yields one completion chunk per token; each token waits for the test's gate."""

    def __init__(self, owner):
        self.owner, self._cached, self.closed = owner, [], False
        self.stats = {"gen_tokens": 0}

    def create_completion(self, prompt, max_tokens, stream, **kw):
        assert stream

        def chunks():
            self.stats["gen_tokens"] = 0
            self._cached = list(prompt)
            for i in range(max_tokens):
                self.owner.gate.wait()
                time.sleep(self.owner.delay)
                self.stats["gen_tokens"] += 1
                last = i == max_tokens - 1
                yield {"id": "x", "object": "text_completion", "created": 0, "model": "fake",
                       "choices": [{"text": f"{prompt[0]}.{i} ", "index": 0, "logprobs": None,
                                    "finish_reason": "length" if last else None}]}
        return chunks()

    def usage(self):
        return {"prompt_tokens": len(self._cached), "completion_tokens": self.stats["gen_tokens"],
                "total_tokens": len(self._cached) + self.stats["gen_tokens"]}

    def close(self):
        self.closed = True


class FakeModel:
    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.delay = 0.0  # seconds per token
        self.sessions = []

    def session(self):
        s = FakeSession(self)
        self.sessions.append(s)
        return s


def job(prompt, max_tokens=3, timeout=60):
    return Job("completion", {"prompt": prompt, "max_tokens": max_tokens}, time.monotonic() + timeout, prefix=prompt)


def drain(j, timeout=10):
    """Every event of a job up to its end or error."""
    out = []
    while True:
        kind, value = j.events.get(timeout=timeout)
        out.append((kind, value))
        if kind != "chunk":
            return out


def wait_for(cond, timeout=10):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def model():
    return FakeModel()


def test_jobs_run_and_report_usage(model):
    slots = Slots(model, n_slots=2, queue_limit=4)
    try:
        a, b = job([1, 2, 3]), job([7, 8])
        slots.submit(a)
        slots.submit(b)
        ea, eb = drain(a), drain(b)
        assert [v["choices"][0]["text"] for k, v in ea if k == "chunk"] == ["1.0 ", "1.1 ", "1.2 "]
        assert ea[-1] == ("end", {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6})
        assert eb[-1][0] == "end" and a.outcome == b.outcome == "ok"
        wait_for(lambda: slots.snapshot()["slots_busy"] == 0)
        assert slots.metrics.gen_tokens == 6 and slots.metrics.requests["ok"] == 2
    finally:
        slots.close()


def test_queue_bound_fifo_and_503(model):
    slots = Slots(model, n_slots=1, queue_limit=2)
    model.gate.clear()  # the running job holds its slot until the gate opens
    try:
        running, first, second = job([1]), job([2]), job([3])
        for j in (running, first, second):
            slots.submit(j)
        wait_for(lambda: slots.snapshot()["slots_busy"] == 1)
        assert slots.snapshot()["queue"] == 2
        with pytest.raises(RequestError) as e:
            slots.submit(job([4]))
        assert e.value.status == 503 and int(e.value.headers["Retry-After"]) >= 1
        assert slots.metrics.requests["rejected"] == 1
        model.gate.set()
        done = []
        for j in (running, first, second):
            drain(j)
            done.append(j)
        assert [j.outcome for j in done] == ["ok", "ok", "ok"]
    finally:
        model.gate.set()
        slots.close()


def test_a_free_slot_takes_a_job_without_counting_it_queued(model):
    slots = Slots(model, n_slots=2, queue_limit=0)
    model.gate.clear()
    try:
        a, b = job([1]), job([2])
        slots.submit(a)
        slots.submit(b)  # both slots free: neither waits, so queue 0 admits both
        with pytest.raises(RequestError):
            slots.submit(job([3]))
    finally:
        model.gate.set()
        slots.close()


def test_a_cancelled_job_stops_and_closes_its_session(model):
    slots = Slots(model, n_slots=1, queue_limit=1)
    try:
        j = job([5], max_tokens=10_000)
        slots.submit(j)
        # nobody reads: the worker runs STREAM_AHEAD chunks ahead, then waits
        wait_for(lambda: j.events.full())
        assert model.sessions[0].stats["gen_tokens"] <= STREAM_AHEAD + 1
        j.cancel.set()
        wait_for(lambda: slots.snapshot()["slots_busy"] == 0)
        assert j.outcome == "dropped" and model.sessions[0].closed
        assert slots.metrics.requests["dropped"] == 1
        k = job([6])
        slots.submit(k)  # the slot opens a fresh session
        assert drain(k)[-1][0] == "end" and len(model.sessions) == 2
    finally:
        slots.close()


def test_wall_time_bound_ends_with_length(model):
    slots = Slots(model, n_slots=1, queue_limit=1)
    model.delay = 0.001
    try:
        j = job([5], max_tokens=10_000, timeout=0.3)
        slots.submit(j)
        events = drain(j)
        chunks = [v for k, v in events if k == "chunk"]
        assert events[-1][0] == "end" and chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert j.outcome == "timeout" and len(chunks) < 10_000
        late = job([6], timeout=-1)  # its time ran out before it got a slot
        slots.submit(late)
        kind, err = drain(late)[-1]
        assert kind == "error" and err.status == 503
    finally:
        slots.close()


def test_the_slot_holding_the_prompt_is_chosen(model):
    slots = Slots(model, n_slots=3, queue_limit=3)
    try:
        for prompt in ([1, 2, 3, 4], [9, 9, 9, 9]):  # two slots get a cache each
            j = job(prompt, max_tokens=1)
            slots.submit(j)
            drain(j)
            wait_for(lambda: slots.snapshot()["slots_busy"] == 0)
        j = job([1, 2, 3, 4, 5, 6], max_tokens=1)
        slots.submit(j)
        drain(j)
        holders = [s for s in model.sessions if s._cached == [1, 2, 3, 4, 5, 6]]
        assert len(holders) == 1 and holders[0] is model.sessions[0]
    finally:
        slots.close()
