"""The model client against the openai SDK it replaced: the same faults, the same behaviour.

Chat completions are one aiohttp POST (bot/agent/llm.py) with the SDK's retry policy. The
SDK, a test dependency only, is the reference: each scripted fault runs against both, set
up as the client used the SDK until then, and they must make the same requests, wait the
same time between them and end the same way. The jitter is pinned and the computed waits
are recorded (then skipped) on both sides; the timing tests let real waits pass.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
import pytest
from openai import _base_client
from pydantic import SecretStr

from bot.agent import llm as llm_module
from bot.agent.llm import LLM, MAX_RETRIES, LLMCallError, endpoint_url, split_basic_auth
from bot.config import LLMSettings
from tests.fakes.llm_server import FakeLLM, closed_port_url

API_KEY = "sk-canary-0123456789abcdef"
JITTER = 0.5  # random() on both sides: 12.5 % off each backoff
MESSAGES = [{"role": "user", "content": "Grüße, what time is it? ✓"}]
TOOLS = [
    {
        "type": "function",
        "function": {"name": "current_time", "description": "d", "parameters": {"type": "object"}},
    }
]

Script = Callable[[FakeLLM], None]


def settings(base_url: str, **changes: Any) -> LLMSettings:
    values: dict[str, Any] = {
        "base_url": base_url,
        "api_key": SecretStr(API_KEY),
        "model": "test-model",
        "timeout_s": 10,
    }
    return LLMSettings(**(values | changes))


def sdk_client(llm_settings: LLMSettings) -> openai.AsyncOpenAI:
    """The SDK client exactly as bot/agent/llm.py made it while it used the SDK."""
    url, basic = split_basic_auth(endpoint_url(llm_settings))
    return openai.AsyncOpenAI(
        base_url=url,
        api_key=llm_settings.api_key.get_secret_value() or "not-needed",
        timeout=llm_settings.timeout_s,
        max_retries=MAX_RETRIES,
        http_client=openai.DefaultAioHttpClient(timeout=llm_settings.timeout_s),
        default_headers={"Authorization": basic} if basic else None,
    )


def payload(llm_settings: LLMSettings) -> dict[str, Any]:
    """The body LLM.complete(MESSAGES, TOOLS) sends."""
    body: dict[str, Any] = {"model": llm_settings.model, "messages": MESSAGES, "tools": TOOLS}
    if llm_settings.max_tokens is not None:
        body["max_tokens"] = llm_settings.max_tokens
    return body


@dataclass
class Run:
    """How one client fared: its waits between attempts and how the call ended."""

    waits: list[float]
    outcome: str  # "ok", "HTTP <status>" or "connection"


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[float]]:
    """Pins the jitter on both sides and records every computed wait, which is then
    skipped (both sleep 0 s) so a fault costs no wall-clock time."""
    recorded: dict[str, list[float]] = {"sdk": [], "ours": []}
    monkeypatch.setattr(_base_client, "random", lambda: JITTER)
    monkeypatch.setattr(llm_module, "random", lambda: JITTER)
    sdk_delay = _base_client.BaseClient._calculate_retry_timeout
    our_delay = llm_module.retry_delay

    def sdk_recorded(self: Any, *args: Any, **kwargs: Any) -> float:
        recorded["sdk"].append(sdk_delay(self, *args, **kwargs))
        return 0.0

    def ours_recorded(*args: Any, **kwargs: Any) -> float:
        recorded["ours"].append(our_delay(*args, **kwargs))
        return 0.0

    monkeypatch.setattr(_base_client.BaseClient, "_calculate_retry_timeout", sdk_recorded)
    monkeypatch.setattr(llm_module, "retry_delay", ours_recorded)
    return recorded


async def call_sdk(llm_settings: LLMSettings) -> str:
    client = sdk_client(llm_settings)
    try:
        # As the client called it: the raw response, its body parsed by parse_completion.
        response = await client.post(
            "/chat/completions", body=payload(llm_settings), cast_to=httpx2.Response
        )
        await response.aread()
    except openai.APIStatusError as exc:
        return f"HTTP {exc.status_code}"
    except openai.APIConnectionError:  # and its APITimeoutError
        return "connection"
    finally:
        await client.close()
    return "ok"


async def call_ours(llm_settings: LLMSettings) -> str:
    client = LLM(llm_settings)
    try:
        await client.complete(MESSAGES, TOOLS)
    except LLMCallError as exc:
        status = re.search(r"\(HTTP (\d+)\)", exc.reason)
        if status:
            return f"HTTP {status[1]}"
        return "connection" if exc.kind == "unavailable" else exc.kind
    finally:
        await client.aclose()
    return "ok"


async def against_both(
    script: Script, waits: dict[str, list[float]], **changes: Any
) -> tuple[tuple[Run, int], tuple[Run, int]]:
    """Each client against a fake of its own, scripted the same; (run, requests) each."""
    results = []
    for side, call in (("sdk", call_sdk), ("ours", call_ours)):
        async with FakeLLM(api_key=API_KEY) as fake:
            script(fake)
            outcome = await call(settings(fake.base_url, **changes))
            results.append((Run(waits[side], outcome), len(fake.requests)))
    return results[0], results[1]


def _times(count: int, status: int, headers: dict[str, str] | None = None) -> Script:
    def script(fake: FakeLLM) -> None:
        for _ in range(count):
            fake.raw(status, {"error": "scripted"}, headers)

    return script


def _in(seconds: float) -> str:
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


# Backoff with the jitter pinned: 0.5 s, then 1 s, each 12.5 % less.
FIRST, SECOND = 0.5 * (1 - 0.25 * JITTER), 1.0 * (1 - 0.25 * JITTER)


@pytest.mark.parametrize(
    ("script", "requests", "expected_waits", "outcome"),
    [
        pytest.param(_times(1, 500), 2, [FIRST], "ok", id="500_then_200"),
        pytest.param(_times(2, 502), 3, [FIRST, SECOND], "ok", id="502_twice_then_200"),
        pytest.param(_times(5, 503), 3, [FIRST, SECOND], "HTTP 503", id="503_persistent"),
        pytest.param(_times(1, 429, {"retry-after": "1"}), 2, [1.0], "ok", id="429_retry_after_1"),
        pytest.param(
            _times(1, 429, {"retry-after-ms": "250", "retry-after": "3"}),
            2,
            [0.25],
            "ok",
            id="retry_after_ms_first",
        ),
        pytest.param(
            _times(1, 429, {"retry-after": "90"}), 2, [90.0], "ok", id="retry_after_90_honoured"
        ),
        pytest.param(
            _times(1, 429, {"retry-after": "120"}), 2, [120.0], "ok", id="retry_after_120_honoured"
        ),
        pytest.param(
            _times(1, 429, {"retry-after": "121"}), 1, [], "HTTP 429", id="retry_after_121_no_retry"
        ),
        pytest.param(
            _times(1, 429, {"retry-after": "600"}), 1, [], "HTTP 429", id="retry_after_600_no_retry"
        ),
        pytest.param(
            _times(1, 429, {"retry-after": "1e999"}), 1, [], "HTTP 429", id="retry_after_overflow"
        ),
        pytest.param(_times(1, 429, {"retry-after": "0"}), 2, [FIRST], "ok", id="retry_after_0"),
        pytest.param(_times(1, 429, {"retry-after": "-5"}), 2, [FIRST], "ok", id="negative"),
        pytest.param(_times(1, 429, {"retry-after": "inf"}), 2, [FIRST], "ok", id="inf_written"),
        pytest.param(_times(1, 429, {"retry-after": "nan"}), 2, [FIRST], "ok", id="nan"),
        pytest.param(_times(1, 429, {"retry-after": "soon"}), 2, [FIRST], "ok", id="garbage"),
        pytest.param(
            _times(1, 429, {"retry-after-ms": "x", "retry-after": "2"}),
            2,
            [2.0],
            "ok",
            id="bad_ms_then_seconds",
        ),
        pytest.param(_times(1, 408), 2, [FIRST], "ok", id="408"),
        pytest.param(_times(1, 409), 2, [FIRST], "ok", id="409"),
        pytest.param(_times(1, 400), 1, [], "HTTP 400", id="400_no_retry"),
        pytest.param(_times(1, 401), 1, [], "HTTP 401", id="401_no_retry"),
        pytest.param(_times(1, 404), 1, [], "HTTP 404", id="404_no_retry"),
        pytest.param(
            _times(1, 500, {"x-should-retry": "false"}), 1, [], "HTTP 500", id="500_told_not_to"
        ),
        pytest.param(
            _times(1, 400, {"x-should-retry": "true"}), 2, [FIRST], "ok", id="400_told_to"
        ),
        pytest.param(
            _times(1, 400, {"x-should-retry": "true", "retry-after": "600"}),
            1,
            [],
            "HTTP 400",
            id="told_to_but_too_long",
        ),
        pytest.param(_times(1, 302, {"x-should-retry": "false"}), 1, [], "HTTP 302", id="302"),
        pytest.param(lambda f: f.drop(), 2, [FIRST], "ok", id="connection_lost_once"),
        pytest.param(
            lambda f: [f.drop() for _ in range(3)],
            3,
            [FIRST, SECOND],
            "connection",
            id="connection_lost_always",
        ),
    ],
)
async def test_same_requests_waits_and_outcome_as_the_sdk(
    waits: dict[str, list[float]],
    script: Script,
    requests: int,
    expected_waits: list[float],
    outcome: str,
) -> None:
    (sdk, sdk_requests), (ours, our_requests) = await against_both(script, waits)
    assert (sdk.outcome, sdk_requests) == (outcome, requests)  # the reference, as described
    assert (ours.outcome, our_requests) == (sdk.outcome, sdk_requests)
    assert ours.waits == pytest.approx(sdk.waits) == expected_waits


async def test_a_retry_after_date_is_honoured_as_the_sdk_does(
    waits: dict[str, list[float]],
) -> None:
    (sdk, sdk_requests), (ours, our_requests) = await against_both(
        _times(1, 503, {"retry-after": _in(30)}), waits
    )
    assert (ours.outcome, our_requests) == (sdk.outcome, sdk_requests) == ("ok", 2)
    assert ours.waits == pytest.approx(sdk.waits, abs=1.5)
    assert 28 <= ours.waits[0] <= 31  # whole seconds in the date: the rest of this one off


async def test_a_refused_connection_is_retried_as_the_sdk_does(
    waits: dict[str, list[float]],
) -> None:
    url = closed_port_url()
    sdk = await call_sdk(settings(url))
    ours = await call_ours(settings(url))
    assert ours == sdk == "connection"
    assert waits["ours"] == pytest.approx(waits["sdk"]) == [FIRST, SECOND]


@pytest.mark.parametrize(
    ("flavor", "credentials", "key", "max_tokens"),
    [
        pytest.param("openai", "", API_KEY, None, id="openai_bearer"),
        pytest.param("openwebui", "", API_KEY, 300, id="openwebui_api_prefix"),
        pytest.param("openai", "", "", None, id="no_key"),
        pytest.param("openwebui", "alice:p%40ss%20w@", "", None, id="basic_auth_from_the_url"),
    ],
)
async def test_same_path_headers_and_body_as_the_sdk(
    flavor: str, credentials: str, key: str, max_tokens: int | None
) -> None:
    sent = []
    for call in (call_sdk, call_ours):
        async with FakeLLM() as fake:
            base = fake.server_url if flavor == "openwebui" else fake.base_url
            base = base.replace("://", f"://{credentials}")
            llm_settings = settings(
                base, flavor=flavor, api_key=SecretStr(key), max_tokens=max_tokens
            )
            assert await call(llm_settings) == "ok"
            (request,) = fake.requests
            headers = {
                name: request.headers.get(name)
                for name in ("Authorization", "Content-Type", "Accept")
            }
            sent.append((request.method, request.path, headers, request.raw))
    assert sent[1] == sent[0]
    method, path, headers, raw = sent[1]
    assert (method, path) == (
        "POST",
        "/api/chat/completions" if flavor == "openwebui" else "/v1/chat/completions",
    )
    if credentials:  # the password is sent only as Basic auth, never in the URL
        assert headers["Authorization"] == "Basic YWxpY2U6cEBzcyB3"  # alice:p@ss w
    else:
        assert headers["Authorization"] == f"Bearer {key or 'not-needed'}"
    assert "Grüße" in raw  # UTF-8, not \u escapes, as the SDK sends it


async def test_the_proxy_from_the_environment_is_used_as_the_sdk_uses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    async with FakeLLM() as proxy:  # a forward proxy gets the absolute URL: it answers
        monkeypatch.setenv("http_proxy", proxy.server_url)
        for call in (call_sdk, call_ours):
            assert await call(settings("http://model.invalid/v1")) == "ok"
        assert [(r.path, r.headers["Host"]) for r in proxy.requests] == [
            ("/v1/chat/completions", "model.invalid")
        ] * 2
        monkeypatch.setenv("no_proxy", "127.0.0.1")  # the model itself, directly
        async with FakeLLM() as model:
            monkeypatch.setenv("http_proxy", closed_port_url().removesuffix("/v1"))
            for call in (call_sdk, call_ours):
                assert await call(settings(model.base_url)) == "ok"
            assert len(model.requests) == 2


# -- real waits ------------------------------------------------------------------------


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FakeLLM, FakeLLM]]:
    async with FakeLLM() as for_sdk, FakeLLM() as for_ours:
        yield for_sdk, for_ours


def _gaps(fake: FakeLLM) -> list[float]:
    times = [request.at for request in fake.requests]
    return [later - earlier for earlier, later in itertools.pairwise(times)]


@pytest.mark.timing
@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        pytest.param({}, 0.35, 1.0, id="500_backoff"),  # 0.375-0.5 s
        pytest.param({"retry-after": "1"}, 0.95, 1.6, id="retry_after_1"),
    ],
)
async def test_the_real_wait_is_the_sdks(
    pair: tuple[FakeLLM, FakeLLM], headers: dict[str, str], low: float, high: float
) -> None:
    for fake in pair:
        fake.raw(500, {"error": "scripted"}, headers)
    for_sdk, for_ours = pair
    outcomes = await asyncio.gather(
        call_sdk(settings(for_sdk.base_url)), call_ours(settings(for_ours.base_url))
    )
    assert list(outcomes) == ["ok", "ok"]
    for fake in pair:
        (gap,) = _gaps(fake)
        assert low <= gap <= high
