"""Property-based fuzzing of the HTTP API against its own OpenAPI schema (schemathesis).

Every operation the app publishes (completions, chat, models, health, metrics) gets requests drawn
from the schema, valid and invalid ("positive" and "negative" generation, schemathesis's coverage
and fuzzing phases), and no response may be a 5xx: what a caller gets wrong is a 4xx. A streamed
200 must also end in [DONE] with no error event (a failure after the status line is sent).

Two schemas are fuzzed:

* the published one, as it is: unbounded integers, free strings;
* the same with the limits the server enforces at run time but does not publish (max_tokens up to
  serve.max_tokens, token ids in [0, real vocabulary), prompts that fit the KV cache) and with real
  media for image and audio parts. Drawn from the published schema alone, nearly every valid
  completion breaks one of those limits (a 400) and no image or audio part decodes, so the engine,
  the logprobs and the codecs would hardly be reached.

The requests go to a live uvicorn server over a small random-init model, as in test_api.py: the
app's lifespan compiles the engine and starts the scheduler (the in-process ASGI transport would
not run it, and the scheduler hands tokens to the event loop that ran the lifespan). Generation is
derandomized, so a run is reproducible; a failure prints a curl command that reproduces it.

The schema is loaded at collection time (`published_schema`), not from the live server through
`schemathesis.pytest.from_fixture`: that loader sets `Function._nodeid`, which pytest 9.2 no
longer has ("AttributeError: 'Function' object has no attribute '_nodeid'").

About a quarter of the schema-valid requests are still 400s: schemathesis spells some integers as whole
floats (`"n": 4.0`, an integer to JSON Schema), which the strict request models refuse.
"""

import base64
import copy
import io
import types

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from PIL import Image
from schemathesis.checks import not_a_server_error

from parallel.sharding import make_mesh
from serving.api import make_app
from serving.server import make_server
from tests.serving_helpers import (REAL_VOCAB, SERVE_CFG, data_url, png_bytes, replace_serve, served_model,
                                   serving_live, wav_bytes)

# Cheap generations: at most 64 tokens (one picture's worth of the test codec's image codes, so
# `modalities: ["image"]` is served; more is a 400) and at most 32 choices queued per request (more
# is refused). The server's own timeout (a 504) is far past any honest request to this model, and the
# client's past the server's, so a hang fails the test instead of stalling it.
FUZZ_CFG = replace_serve(SERVE_CFG, max_tokens=64, max_queue=32, request_timeout_s=30)
CLIENT_TIMEOUT_S = 45
EXAMPLES = 100  # per operation, in the fuzzing phase (the coverage phase adds its boundary cases)

CONFIG = schemathesis.Config.from_dict({
    # Valid bodies reach the engine, invalid ones the validation. Strings may hold any code point,
    # lone surrogates included ("\ud800" is valid JSON); the default, utf-8, leaves them out.
    "generation": {"mode": "all", "codec": "unicode_escape"},
    "request-timeout": CLIENT_TIMEOUT_S,
    "max-stream-events": 10_000,  # a whole stream (at most 32 choices of 64 tokens here), not the first 20 events
    "cache": {"enabled": False},  # nothing written into the checkout
    "output": {"sanitization": {"enabled": False}},  # else "max_tokens" prints as "[Filtered]", as if a secret
})
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                HealthCheck.data_too_large])


def published_schema() -> dict:
    """The app's OpenAPI document. Its routes and request models do not depend on the server the app
    wraps, so a stand-in builds it at collection time without compiling an engine; the `base_url`
    fixture checks that the live server publishes the same document."""
    return make_app(types.SimpleNamespace(metrics=None)).openapi()


def _integers(node: dict):
    """The integer schemas inside `node` (through anyOf / oneOf / array items)."""
    if node.get("type") == "integer":
        yield node
    for sub in [*node.get("anyOf", ()), *node.get("oneOf", ()), *([node["items"]] if "items" in node else ())]:
        yield from _integers(sub)


def _id_lists(node: dict):
    """The arrays of integers inside `node`: a prompt's token-id lists."""
    if node.get("type") == "array" and node.get("items", {}).get("type") == "integer":
        yield node
    for sub in [*node.get("anyOf", ()), *node.get("oneOf", ()), *([node["items"]] if "items" in node else ())]:
        yield from _id_lists(sub)


def with_server_limits(doc: dict) -> dict:
    """`doc` with the run-time limits of FUZZ_CFG's server and valid media (see the module's docstring)."""
    doc = copy.deepcopy(doc)
    models = doc["components"]["schemas"]
    max_tokens, longest_prompt = FUZZ_CFG.serve.max_tokens, FUZZ_CFG.serve.max_cache_len - 1 - FUZZ_CFG.serve.max_tokens
    for model, field in (("CompletionRequest", "max_tokens"), ("ChatRequest", "max_tokens"),
                         ("ChatRequest", "max_completion_tokens")):
        bounded = list(_integers(models[model]["properties"][field]))
        assert bounded, f"{model}.{field} has no integer form to bound: the schema changed, update this test"
        for node in bounded:
            node["maximum"] = max_tokens
    id_lists = list(_id_lists(models["CompletionRequest"]["properties"]["prompt"]))
    assert id_lists, "CompletionRequest.prompt has no token-id list form: the schema changed, update this test"
    for node in id_lists:
        node["maxItems"] = longest_prompt  # <bos> + the ids + max_tokens fit the cache
        node["items"].update(minimum=0, maximum=REAL_VOCAB - 1)
    # A fuzzer cannot draw a PNG or a WAV: offer real ones (a JPEG and an 8 kHz WAV, resampled, take
    # other decoding paths). The published schema's free strings still reach the refusals.
    images = [png_bytes(), png_bytes((10, 200, 90), 48)]
    models["ImageURL"]["properties"]["url"]["enum"] = [*map(data_url, images), data_url(_jpeg_bytes(), "image/jpeg")]
    audio = models["InputAudio"]["properties"]
    audio["format"]["enum"] = ["wav"]
    audio["data"]["enum"] = [base64.b64encode(wav_bytes(0.5)).decode(), base64.b64encode(wav_bytes(0.3, 8000)).decode()]
    return doc


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 24), (30, 60, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


OPENAPI = published_schema()
published = schemathesis.openapi.from_dict(OPENAPI, config=CONFIG)
# The GET routes take no input: fuzzing them once, from the published schema, is enough.
within_limits = schemathesis.openapi.from_dict(with_server_limits(OPENAPI), config=CONFIG).include(method="POST")


@pytest.fixture(scope="module")
def base_url(vocab):
    """A live server's URL, configured as serve.py configures it, once its engine is compiled."""
    graphdef, state = served_model(FUZZ_CFG)
    with serving_live(make_server(FUZZ_CFG, vocab, graphdef, state, make_mesh(FUZZ_CFG.mesh))) as live:
        base = f"http://127.0.0.1:{live.port}"
        live.healthy()
        live_schema = requests.get(f"{base}/openapi.json", timeout=5).json()
        assert live_schema == OPENAPI, "the live server publishes another schema than the one fuzzed"
        yield base


def served_without_a_server_error(case, base_url: str) -> None:
    response = case.call_and_validate(base_url=base_url, checks=[not_a_server_error], timeout=CLIENT_TIMEOUT_S)
    content_type = (response.headers.get("content-type") or [""])[0]
    if response.status_code == 200 and content_type.startswith("text/event-stream") and not response.stream_cut_short:
        events = [line.removeprefix("data: ") for line in response.content.decode().split("\n\n") if line]
        failed = [event for event in events if event.startswith('{"error"')]
        assert not failed and events[-1] == "[DONE]", (
            f"the stream failed after its 200: {failed or events[-1:]}\n"
            f"reproduce with: {case.as_curl_command(base_url=base_url)}")


@pytest.mark.slow  # serves an engine and sends several hundred requests
@published.parametrize()
@FUZZ_SETTINGS
def test_no_request_from_the_published_schema_gets_a_server_error(case, base_url):
    served_without_a_server_error(case, base_url)


@pytest.mark.slow  # serves an engine and sends several hundred requests
@within_limits.parametrize()
@FUZZ_SETTINGS
def test_no_request_within_the_servers_limits_gets_a_server_error(case, base_url):
    served_without_a_server_error(case, base_url)
