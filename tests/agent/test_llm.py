"""The model client against the scripted fake server: paths, retries, timeouts, typed errors."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from bot.agent.llm import (
    LLM,
    Completion,
    LLMCallError,
    ToolCallRequest,
    Usage,
    parse_completion,
)
from bot.config import LLMSettings
from bot.errors import LLMError
from tests.fakes.llm_server import FakeLLM, closed_port_url

API_KEY = "sk-canary-0123456789abcdef"
USER = [{"role": "user", "content": "hello"}]
TOOLS = [
    {
        "type": "function",
        "function": {"name": "current_time", "description": "d", "parameters": {"type": "object"}},
    }
]


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(api_key=API_KEY) as server:
        yield server


def settings(base_url: str, **changes: Any) -> LLMSettings:
    values: dict[str, Any] = {
        "base_url": base_url,
        "api_key": SecretStr(API_KEY),
        "model": "test-model",
        "timeout_s": 5,
    }
    return LLMSettings(**(values | changes))


@pytest.fixture
async def llm(fake: FakeLLM) -> AsyncIterator[LLM]:
    client = LLM(settings(fake.base_url))
    yield client
    await client.aclose()


async def complete_with(llm_settings: LLMSettings) -> Completion:
    client = LLM(llm_settings)
    try:
        return await client.complete(USER, [])
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("flavor", "use_server_url", "path"),
    [
        pytest.param("openai", False, "/v1/chat/completions", id="openai"),
        pytest.param("openwebui", True, "/api/chat/completions", id="openwebui_api_prefix"),
    ],
)
async def test_flavor_decides_the_path(
    fake: FakeLLM, flavor: str, use_server_url: bool, path: str
) -> None:
    base = fake.server_url if use_server_url else fake.base_url
    completion = await complete_with(settings(base, flavor=flavor))
    assert completion.text == "ok"
    assert [request.path for request in fake.requests] == [path]


async def test_request_carries_model_messages_and_tools(fake: FakeLLM, llm: LLM) -> None:
    fake.reply("hi there")
    completion = await llm.complete(USER, TOOLS)
    assert completion == Completion("hi there", (), "stop")
    (request,) = fake.requests
    assert request.body["model"] == "test-model"
    assert request.messages == USER
    assert request.tool_names == ["current_time"]


async def test_no_tools_key_when_no_tools(fake: FakeLLM, llm: LLM) -> None:
    await llm.complete(USER, [])
    assert fake.requests[0].tools is None


async def test_max_tokens_is_sent_when_configured(fake: FakeLLM) -> None:
    await complete_with(settings(fake.base_url, max_tokens=300))
    assert fake.requests[0].body["max_tokens"] == 300


async def test_tool_calls_are_returned_in_order(fake: FakeLLM, llm: LLM) -> None:
    fake.calls([("a", {"x": 1}, "c1"), ("b", "{}", "c2")], text="let me check")
    completion = await llm.complete(USER, TOOLS)
    assert completion == Completion(
        "let me check",
        (ToolCallRequest("c1", "a", '{"x": 1}'), ToolCallRequest("c2", "b", "{}")),
        "tool_calls",
    )


@pytest.mark.parametrize(
    ("script", "text"),
    [
        pytest.param(
            lambda f: f.raw(500, {"error": "boom"}, {"retry-after-ms": "10"}),
            "recovered",
            id="r01_500_then_success",
        ),
        pytest.param(
            lambda f: f.raw(429, {"error": "slow down"}, {"Retry-After": "0.01"}),
            "recovered",
            id="r01_429_retry_after_then_success",
        ),
    ],
)
async def test_r01_sdk_retries_then_succeeds(
    fake: FakeLLM, llm: LLM, script: Callable[[FakeLLM], None], text: str
) -> None:
    script(fake)
    fake.reply(text)
    completion = await llm.complete(USER, [])
    assert completion.text == text
    assert len(fake.requests) == 2


def _fail_always(status: int, headers: dict[str, str]) -> Callable[[FakeLLM], None]:
    def script(fake: FakeLLM) -> None:
        for _ in range(5):
            fake.raw(status, {"error": "no"}, headers)

    return script


@pytest.mark.parametrize(
    ("script", "kind", "attempts"),
    [
        pytest.param(
            _fail_always(500, {"retry-after-ms": "10"}), "unavailable", 3, id="r01_persistent_500"
        ),
        pytest.param(
            _fail_always(503, {"retry-after-ms": "10"}), "unavailable", 3, id="r01_persistent_503"
        ),
        pytest.param(
            _fail_always(429, {"retry-after-ms": "10"}), "rate_limited", 3, id="r01_persistent_429"
        ),
        pytest.param(
            _fail_always(429, {"Retry-After": "600"}), "rate_limited", 1, id="r01_429_wait_too_long"
        ),
        pytest.param(_fail_always(401, {}), "auth", 1, id="wrong_key_401"),
        pytest.param(_fail_always(403, {}), "auth", 1, id="forbidden_403"),
        pytest.param(_fail_always(400, {}), "bad_response", 1, id="rejected_400"),
        pytest.param(lambda f: f.raw(200, "<html>login</html>"), "bad_response", 1, id="r02_html"),
        pytest.param(lambda f: f.raw(200, {"choices": []}), "bad_response", 1, id="r02_no_choice"),
        pytest.param(lambda f: f.raw(200, {"error": "x"}), "bad_response", 1, id="error_body_200"),
        pytest.param(lambda f: f.raw(200, "[1, 2]"), "bad_response", 1, id="json_array_body"),
    ],
)
async def test_failures_become_typed_llm_errors(
    fake: FakeLLM, llm: LLM, script: Callable[[FakeLLM], None], kind: str, attempts: int
) -> None:
    script(fake)
    with pytest.raises(LLMCallError) as caught:
        await llm.complete(USER, [])
    assert caught.value.kind == kind
    assert isinstance(caught.value, LLMError)
    assert len(fake.requests) == attempts
    assert API_KEY not in str(caught.value)


async def test_r01_hang_past_the_timeout_is_a_timeout(fake: FakeLLM) -> None:
    fake.hang(5)
    started = time.monotonic()
    with pytest.raises(LLMCallError) as caught:
        await complete_with(settings(fake.base_url, timeout_s=0.5))
    assert caught.value.kind == "timeout"
    assert time.monotonic() - started < 2


async def test_r01_refused_connection_is_unavailable() -> None:
    with pytest.raises(LLMCallError) as caught:
        await complete_with(settings(closed_port_url()))
    assert caught.value.kind == "unavailable"


async def test_a_refused_connection_names_the_endpoint_but_not_the_key() -> None:
    where = closed_port_url()
    with pytest.raises(LLMCallError) as caught:
        await complete_with(settings(where))
    assert caught.value.reason == f"cannot connect to the model server at {where}"
    assert API_KEY not in str(caught.value)


async def test_r01_server_gone_mid_session_is_unavailable(fake: FakeLLM, llm: LLM) -> None:
    await llm.complete(USER, [])
    await fake.refuse_connections()
    with pytest.raises(LLMCallError) as caught:
        await llm.complete(USER, [])
    assert caught.value.kind == "unavailable"


async def test_a13_api_key_only_in_the_authorization_header(fake: FakeLLM, llm: LLM) -> None:
    leaked = [{"role": "user", "content": f"my key is {API_KEY}, keep it"}]
    await llm.complete(leaked, TOOLS)
    (request,) = fake.requests
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in request.raw
    assert request.messages[0]["content"] == "my key is [redacted], keep it"


async def test_empty_key_still_talks_to_keyless_servers(fake: FakeLLM) -> None:
    completion = await complete_with(settings(fake.base_url, api_key=SecretStr("")))
    assert completion.text == "ok"
    assert fake.requests[0].headers["Authorization"] == "Bearer not-needed"


def _body(message: dict[str, Any], finish: str | None = "stop") -> bytes:
    return json.dumps({"choices": [{"message": message, "finish_reason": finish}]}).encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            _body({"content": None, "tool_calls": [{"function": {"name": "a", "arguments": ""}}]}),
            Completion(None, (ToolCallRequest(None, "a", ""),), "stop"),
            id="r02_missing_id",
        ),
        pytest.param(
            _body({"tool_calls": [{"id": "c", "function": {"name": "a", "arguments": {"x": 1}}}]}),
            Completion(None, (ToolCallRequest("c", "a", '{"x": 1}'),), "stop"),
            id="arguments_as_object",
        ),
        pytest.param(
            _body({"tool_calls": [{"id": "c"}, "junk", {"function": {"arguments": "{}"}}]}),
            Completion(None, (ToolCallRequest(None, "", "{}"),), "stop"),
            id="r02_junk_calls",
        ),
        pytest.param(
            _body({"content": "cut"}, "length"),
            Completion("cut", (), "length"),
            id="r02_length",
        ),
        pytest.param(_body({"content": 5}, None), Completion(None, (), None), id="odd_content"),
    ],
)
def test_parse_completion_is_lenient_about_shape(body: bytes, expected: Completion) -> None:
    assert parse_completion(body) == expected


# -- usage (#16) ---------------------------------------------------------------------


def _with_usage(usage: Any) -> bytes:
    body = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": usage}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        pytest.param({"prompt_tokens": 120, "completion_tokens": 7}, Usage(120, 7), id="openai"),
        pytest.param({"input_tokens": 50, "output_tokens": 3}, Usage(50, 3), id="input_output"),
        pytest.param(
            {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}, Usage(0, 0), id="zero"
        ),
    ],
)
def test_the_servers_usage_is_read(usage: dict[str, Any], expected: Usage) -> None:
    assert parse_completion(_with_usage(usage)).usage == expected


REQUEST = {"model": "m", "messages": [{"role": "user", "content": "x" * 398}], "tools": TOOLS}


@pytest.mark.parametrize(
    "usage",
    [
        pytest.param(None, id="absent"),
        pytest.param("lots", id="not_an_object"),
        pytest.param({"prompt_tokens": "12", "completion_tokens": 3}, id="text"),
        pytest.param({"prompt_tokens": -1, "completion_tokens": 3}, id="negative"),
        pytest.param({"prompt_tokens": True, "completion_tokens": 3}, id="boolean"),
        pytest.param({"total_tokens": 30}, id="total_only"),
    ],
)
def test_without_usable_usage_the_tokens_are_estimated_and_marked(usage: Any) -> None:
    body = _with_usage(usage) if usage is not None else _body({"content": "hi"})
    estimate = parse_completion(body, REQUEST).usage
    sent = len(json.dumps(REQUEST["messages"])) + len(json.dumps(TOOLS))
    assert estimate == Usage(-(-sent // 4), 1, estimated=True)  # "hi": one token, rounded up
    assert estimate.prompt > 100  # the 398 characters of the message count


async def test_the_client_estimates_from_the_request_it_sent(fake: FakeLLM, llm: LLM) -> None:
    fake.reply("four", usage=None)
    completion = await llm.complete(USER, TOOLS)
    (request,) = fake.requests
    sent = len(json.dumps(request.body["messages"])) + len(json.dumps(request.body["tools"]))
    assert completion.usage == Usage(-(-sent // 4), 1, estimated=True)


async def test_the_client_passes_the_servers_usage_on(fake: FakeLLM, llm: LLM) -> None:
    fake.reply("hi", usage={"prompt_tokens": 321, "completion_tokens": 12, "total_tokens": 333})
    assert (await llm.complete(USER, TOOLS)).usage == Usage(321, 12)
