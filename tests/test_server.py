"""`pylut serve` driven by the official openai client over loopback: chat and completions,
streamed and not, n choices of one prompt evaluation, /v1/models, 8 concurrent clients
answered exactly as when alone, bad
requests answered 4xx (OpenAI-shaped) without hurting the server, and the API key.
The server runs as a subprocess on a free 127.0.0.1 port, on a tiny model with a real vocab."""
import http.client
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai", reason="the openai client is in the test extra (pip install openai)")

from server_process import HOST, Server  # noqa: E402


@pytest.fixture(scope="module")
def server(chat_model_file, tmp_path_factory):
    s = Server(chat_model_file, tmp_path_factory.mktemp("run"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def bi_server(chat_model_file, tmp_path_factory):
    """A server whose logits do not depend on what shares a step: a choice of n samples
    exactly what a single request with its seed does."""
    s = Server(chat_model_file, tmp_path_factory.mktemp("run-bi"), "--batch-invariant")
    yield s
    s.stop()


HI = [{"role": "user", "content": "Hello, who are you?"}]


def test_models_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["tiny-qwen2-q8_0.gguf"]
    status, body = server.request("GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_chat_plain_and_streamed_agree(server):
    c = server.client()
    r = c.chat.completions.create(model="tiny", messages=HI, max_tokens=12, temperature=0)
    text = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant" and text
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 0
    pieces, usage = [], None
    for ch in c.chat.completions.create(model="tiny", messages=HI, max_tokens=12, temperature=0, stream=True,
                                        stream_options={"include_usage": True}):
        if ch.choices and ch.choices[0].delta.content:
            pieces.append(ch.choices[0].delta.content)
        usage = ch.usage or usage
    assert "".join(pieces) == text
    assert usage.completion_tokens == r.usage.completion_tokens


def test_completions_text_tokens_and_stream(server):
    c = server.client()
    r = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=8, temperature=0, stream=True))
    assert streamed == r.choices[0].text
    r2 = c.completions.create(model="tiny", prompt=[9707, 11, 1879], max_tokens=4, temperature=0, seed=1,
                              extra_body={"top_k": 5, "min_p": 0.1, "repeat_penalty": 1.2})
    assert r2.usage.prompt_tokens == 3


def test_raw_sse_framing(server):
    status, body = server.request("POST", "/v1/completions",
                                  {"prompt": "Hi", "max_tokens": 3, "temperature": 0, "stream": True})
    assert status == 200
    events = body.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for e in events[:-2]:
        assert e.startswith("data: ") and json.loads(e[6:])["object"] == "text_completion"


def _ask(c, i):
    if i % 2:
        kw = {"model": "tiny", "messages": [{"role": "user", "content": f"Question number {i}?"}],
              "max_tokens": 16, "temperature": 0}
        if i % 4 == 1:
            return "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stream=True, **kw))
        return c.chat.completions.create(**kw).choices[0].message.content
    return c.completions.create(model="tiny", prompt=f"Story {i}: the", max_tokens=16, temperature=0).choices[0].text


def test_concurrent_clients_get_the_answers_they_get_alone(server):
    c = server.client()
    alone = [_ask(c, i) for i in range(8)]
    assert len(set(alone)) > 1  # the prompts differ, so a mix-up would show
    clients = [server.client() for _ in range(8)]
    with ThreadPoolExecutor(8) as ex:
        futures = [ex.submit(_ask, clients[i], i) for i in range(8)]
        together = [f.result(timeout=120) for f in futures]
    assert together == alone


def test_a_repeated_system_prompt_is_not_evaluated_again(server):
    system = {"role": "system", "content": "You answer in one short sentence, politely and carefully. " * 4}

    def ask(question):
        status, raw = server.request("POST", "/v1/chat/completions", {
            "messages": [system, {"role": "user", "content": question}], "max_tokens": 4, "temperature": 0})
        assert status == 200, raw
        return json.loads(raw)["usage"]
    first = ask("What is the capital of France?")
    second = ask("And the capital of Spain?")
    # the second request goes to the idle slot whose cache holds the system prompt
    assert second["prompt_tokens_details"]["cached_tokens"] >= first["prompt_tokens"] // 2
    assert second["prompt_tokens_details"]["cached_tokens"] < second["prompt_tokens"]


def _step_tokens(server):
    status, raw = server.request("GET", "/metrics")
    assert status == 200
    line = next(x for x in raw.decode().splitlines() if x.startswith("pylut_step_tokens_total "))
    return int(float(line.split()[1]))


HOT = {"temperature": 2.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}  # the tiny model is sharply peaked


def test_n_choices_share_one_prompt_evaluation(bi_server):
    server = bi_server
    prompt = "Choices share this prompt: the river, the garden and the winter morning"
    before = _step_tokens(server)
    c = server.client()
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=24, n=3, seed=5,
                             extra_body={"ignore_eos": True, **HOT})
    steps = _step_tokens(server) - before
    texts = [ch.text for ch in sorted(r.choices, key=lambda ch: ch.index)]
    assert [ch.index for ch in r.choices] == [0, 1, 2] and len(set(texts)) == 3
    assert r.usage.completion_tokens == 72
    evaluated = r.usage.prompt_tokens - r.usage.prompt_tokens_details.cached_tokens
    # the prompt ran once; each choice then steps its tokens but the last
    assert steps == evaluated + 3 * 23
    for i, text in enumerate(texts):  # choice i is the single completion with seed 5 + i
        one = c.completions.create(model="tiny", prompt=prompt, max_tokens=24, seed=5 + i,
                                   extra_body={"ignore_eos": True, **HOT})
        assert one.choices[0].text == text
    streamed = ["", "", ""]
    for ch in c.completions.create(model="tiny", prompt=prompt, max_tokens=24, n=3, seed=5, stream=True,
                                   extra_body={"ignore_eos": True, **HOT}):
        streamed[ch.choices[0].index] += ch.choices[0].text
    assert streamed == texts


def test_chat_n_choices_plain_and_streamed(bi_server):
    server = bi_server
    c = server.client()
    kw = dict(model="tiny", messages=HI, max_tokens=8, n=2, seed=3, temperature=HOT["temperature"],
              extra_body={k: v for k, v in HOT.items() if k != "temperature"})
    r = c.chat.completions.create(**kw)
    assert [ch.index for ch in r.choices] == [0, 1]
    assert all(ch.message.role == "assistant" and ch.finish_reason in ("stop", "length") for ch in r.choices)
    roles, texts = [], ["", ""]
    for ch in c.chat.completions.create(stream=True, **kw):
        d = ch.choices[0]
        if d.delta.role:
            roles.append(d.index)
        texts[d.index] += d.delta.content or ""
    assert sorted(roles) == [0, 1]
    assert texts == [ch.message.content for ch in r.choices]


@pytest.mark.parametrize("body, param", [
    ('{"messages": [{"role": "user", "content": "hi"}', None),         # malformed JSON
    ('[1, 2]', None),                                                  # not an object
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages"),
    ({"messages": HI, "max_tokens": "5"}, "max_tokens"),
    ({"messages": HI, "max_tokens": 10**6}, "max_tokens"),             # over --max-tokens-limit
    ({"messages": HI, "temperature": True}, "temperature"),
    ({"messages": HI, "top_p": 0}, "top_p"),
    ({"messages": HI, "stream": "yes"}, "stream"),
    ({"messages": HI, "stop": [1]}, "stop"),
    ({"messages": HI, "n": 0}, "n"),
    ({"messages": HI, "n": 17}, "n"),
    ({"messages": HI, "n": "2"}, "n"),
    ({"messages": HI, "n": True}, "n"),
])
def test_bad_chat_requests_are_400(server, body, param):
    status, raw = server.request("POST", "/v1/chat/completions", body)
    assert status == 400
    err = json.loads(raw)["error"]
    assert err["type"] == "invalid_request_error" and err["message"] and err["param"] == param
    assert set(err) == {"message", "type", "param", "code"}


def test_bad_requests_leave_the_server_serving(server):
    assert server.request("POST", "/v1/completions", {"prompt": {"a": 1}})[0] == 400
    assert server.request("POST", "/v1/completions", {"prompt": "x" * 5000, "max_tokens": 4})[0] == 400  # > n_ctx
    assert server.request("POST", "/v1/completions", b"x" * (2 << 20))[0] == 413
    assert server.request("GET", "/v1/nothing")[0] == 404
    assert server.request("GET", "/v1/chat/completions")[0] == 405
    with pytest.raises(openai.BadRequestError):
        server.client().chat.completions.create(model="tiny", messages=[], max_tokens=2)
    # a client that hangs up mid-stream must release the model
    conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "Hi", "max_tokens": 64, "stream": True}))
    resp = conn.getresponse()
    resp.read(10)
    conn.close()
    r = server.client().chat.completions.create(model="tiny", messages=HI, max_tokens=4, temperature=0)
    assert r.choices[0].message.content


def test_api_key(chat_model_file, tmp_path):
    s = Server(chat_model_file, tmp_path, "--api-key", "s3cret")
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        status, raw = s.request("POST", "/v1/completions", {"prompt": "Hi"})
        assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
        assert s.request("GET", "/health")[0] == 200
        assert s.client("s3cret").completions.create(model="t", prompt="Hi", max_tokens=2).choices
    finally:
        s.stop()
