"""Standard Webhooks signatures: the specification's test vector, rotation, tolerance, hostile headers."""

from __future__ import annotations

import time

import pytest
import redis

from config import Config
from config import ConfigError
from config import signing_keys
from receiver import create_app
from receiver import signatures
from tests.helpers import WEBHOOK
from tests.helpers import new_uuid
from tests.helpers import success
from tests.helpers import wrapped
from workers.queues import DELIVERY_STREAM

# The test vector published with the specification's reference libraries.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

OLD_SECRET = "whsec_" + "b2xkLXNpZ25pbmcta2V5LW9mLXRoZS1zZW5kZXItMDAx"  # 33 bytes
NEW_SECRET = "whsec_" + "bmV3LXNpZ25pbmcta2V5LW9mLXRoZS1zZW5kZXItMDAy"
OTHER_SECRET = "whsec_" + "c29tZW9uZS1lbHNlcy1rZXktbm90LWNvbmZpZ3VyZWQ="


def headers_for(secret: str, body: bytes, msg_id: str = "msg_1", at: int | None = None) -> dict[str, str]:
    at = int(time.time()) if at is None else at
    (key,) = signing_keys(secret)
    signature = signatures.sign(key, msg_id, at, body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(at), "webhook-signature": signature}


def test_sign_matches_the_specification_vector():
    (key,) = signing_keys(VECTOR_SECRET)
    assert signatures.sign(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    assert signing_keys(VECTOR_SECRET.removeprefix("whsec_")) == (key,), "the prefix is optional"


def test_verify_accepts_the_specification_vector_within_tolerance():
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TIMESTAMP),
               "webhook-signature": VECTOR_SIGNATURE}
    keys = signing_keys(VECTOR_SECRET)
    signatures.verify(keys, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP + 299)
    signatures.verify(keys, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP - 299)
    with pytest.raises(signatures.SignatureError, match="300 s"):
        signatures.verify(keys, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP + 301)
    with pytest.raises(signatures.SignatureError, match="300 s"):
        signatures.verify(keys, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP - 301)
    with pytest.raises(signatures.SignatureError, match="no valid"):
        signatures.verify(keys, headers, VECTOR_BODY + b" ", now=VECTOR_TIMESTAMP)


def test_several_signatures_and_several_secrets_allow_rotation():
    body = b'{"a": 1}'
    old, new = headers_for(OLD_SECRET, body), headers_for(NEW_SECRET, body)
    both = {**new, "webhook-signature": f"v1a,AAAA v2,{old['webhook-signature'][3:]} " + new["webhook-signature"]}
    signatures.verify(signing_keys(NEW_SECRET), both, body)
    signatures.verify(signing_keys(f"{OLD_SECRET},{NEW_SECRET}"), old, body)
    with pytest.raises(signatures.SignatureError):
        signatures.verify(signing_keys(NEW_SECRET), old, body)


@pytest.mark.parametrize("change, fragment", [
    ({"webhook-id": None}, "missing signature headers: webhook-id"),
    ({"webhook-timestamp": None, "webhook-signature": ""}, "webhook-timestamp, webhook-signature"),
    ({"webhook-timestamp": "1e9"}, "integer"),
    ({"webhook-timestamp": "-5"}, "integer"),
    ({"webhook-timestamp": "9" * 40}, "integer"),
    ({"webhook-timestamp": "٣"}, "integer"),
    ({"webhook-signature": "garbage"}, "no valid"),
    ({"webhook-signature": "v1,@@@@"}, "no valid"),
    ({"webhook-signature": "v1,"}, "no valid"),
    ({"webhook-signature": ", , v1 v1,,,"}, "no valid"),
    ({"webhook-signature": "v1,AAAA " * 10_000}, "no valid"),
    ({"webhook-id": "msg_2"}, "no valid"),
    ({"webhook-id": "msg_\u20ac"}, "latin-1"),
])
def test_bad_headers_are_refused_naming_the_problem(change, fragment):
    body = b'{"a": 1}'
    headers = {**headers_for(NEW_SECRET, body), **change}
    headers = {k: v for k, v in headers.items() if v is not None}
    with pytest.raises(signatures.SignatureError, match=fragment) as err:
        signatures.verify(signing_keys(NEW_SECRET), headers, body)
    assert NEW_SECRET.removeprefix("whsec_") not in str(err.value)


def test_non_utf8_body_is_verified_as_bytes():
    body = b'{"a": "\xff\xfe"}'
    signatures.verify(signing_keys(NEW_SECRET), headers_for(NEW_SECRET, body), body)


@pytest.mark.parametrize("value, fragment", [
    ("whsec_not base64!", "secret 1 is not whsec_"),
    ("whsec_c2hvcnQ=", "secret 1 is shorter than 24 bytes"),
    (f"{NEW_SECRET},whsec_%%%", "secret 2"),
])
def test_bad_signing_secrets_stop_the_start_without_echoing_them(value, fragment):
    env = {"APP_ENV": "development", "WEBHOOK_TOKENS": "w", "READ_TOKENS": "r", "SUBMIT_TOKENS": "s",
           "WEBHOOK_SIGNING_SECRETS": value}
    with pytest.raises(ConfigError, match=fragment) as err:
        Config.from_env(env)
    assert value.split(",")[-1].removeprefix("whsec_") not in str(err.value)


def test_secrets_stay_out_of_the_config_repr():
    env = {"APP_ENV": "development", "WEBHOOK_TOKENS": "w", "READ_TOKENS": "r", "SUBMIT_TOKENS": "s",
           "WEBHOOK_SIGNING_SECRETS": NEW_SECRET, "WEBHOOK_SIGNATURE_TOLERANCE_SECONDS": "60", "METRICS_TOKENS": "m1"}
    config = Config.from_env(env)
    assert config.webhook_signature_tolerance_seconds == 60 and config.metrics_tokens == ("m1",)
    assert "webhook_signing_keys" not in repr(config) and "m1" not in repr(config)


@pytest.fixture
def signed_client(config):
    env = {"APP_ENV": "development", "REDIS_URL": config.redis_url, "DATABASE_URL": config.database_url,
           "WEBHOOK_TOKENS": "hook-new", "READ_TOKENS": "r", "SUBMIT_TOKENS": "s",
           "WEBHOOK_SIGNING_SECRETS": f"{OLD_SECRET}, {NEW_SECRET}", "WEBHOOK_SIGNATURE_TOLERANCE_SECONDS": "120"}
    app = create_app(Config.from_env(env), kind="intake")
    yield app.test_client()
    app.extensions["redis"].close()


def post_signed(client, body: bytes, headers: dict, token: str = "hook-new"):
    return client.post(f"{WEBHOOK}?token={token}", data=body, content_type="application/json", headers=headers)


def test_signed_webhook_is_queued_with_its_webhook_id(signed_client, config):
    body = wrapped(success(new_uuid()))
    response = post_signed(signed_client, body, headers_for(OLD_SECRET, body, msg_id="msg_rotation_1"))
    assert response.status_code == 202
    (_, fields), = redis.Redis.from_url(config.redis_url).xrange(DELIVERY_STREAM)
    assert fields[b"wid"] == b"msg_rotation_1" and fields[b"body"] == body


@pytest.mark.parametrize("case, fragment", [
    ("unsigned", "missing signature headers"),
    ("stale", "more than 120 s"),
    ("future", "more than 120 s"),
    ("other secret", "no valid v1 signature"),
    ("tampered body", "no valid v1 signature"),
])
def test_bad_signature_is_401_naming_what_is_wrong_and_nothing_queued(signed_client, config, case, fragment):
    body = wrapped(success(new_uuid()))
    now = int(time.time())
    headers = {  # a minute past the 120 s tolerance: a slow run must not bring the time back inside it
        "unsigned": {},
        "stale": headers_for(NEW_SECRET, body, at=now - 180),
        "future": headers_for(NEW_SECRET, body, at=now + 180),
        "other secret": headers_for(OTHER_SECRET, body),
        "tampered body": headers_for(NEW_SECRET, body + b" "),
    }[case]
    response = post_signed(signed_client, body, headers)
    assert response.status_code == 401
    assert response.json["error"]["message"].startswith("invalid signature: ")
    assert fragment in response.json["error"]["message"]
    assert redis.Redis.from_url(config.redis_url).xlen(DELIVERY_STREAM) == 0


def test_the_url_token_is_checked_before_the_signature(signed_client):
    body = wrapped(success(new_uuid()))
    response = post_signed(signed_client, body, headers_for(NEW_SECRET, body), token="wrong")
    assert response.status_code == 401 and response.json["error"]["message"] == "missing or invalid token"


def test_unsigned_senders_still_get_their_webhook_id_recorded(client, config):
    body = wrapped(success(new_uuid()))
    response = client.post(f"{WEBHOOK}?token=hook-new", data=body, content_type="application/json",
                           headers={"webhook-id": "evt_42"})
    assert response.status_code == 202
    (_, fields), = redis.Redis.from_url(config.redis_url).xrange(DELIVERY_STREAM)
    assert fields[b"wid"] == b"evt_42"


def as_svix(headers: dict[str, str]) -> dict[str, str]:
    """The same signature headers under the names Svix-based senders use."""
    return {name.replace("webhook-", "svix-"): value for name, value in headers.items()}


def test_svix_header_names_verify_like_the_specification_names():
    headers = {"svix-id": VECTOR_ID, "svix-timestamp": str(VECTOR_TIMESTAMP), "svix-signature": VECTOR_SIGNATURE}
    keys = signing_keys(VECTOR_SECRET)
    signatures.verify(keys, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP)
    with pytest.raises(signatures.SignatureError, match="no valid v1 signature in svix-signature"):
        signatures.verify(keys, headers, VECTOR_BODY + b" ", now=VECTOR_TIMESTAMP)
    with pytest.raises(signatures.SignatureError, match="svix-timestamp is more than 300 s"):
        signatures.verify(keys, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP + 301)
    with pytest.raises(signatures.SignatureError, match="missing signature headers: svix-signature"):
        signatures.verify(keys, {**headers, "svix-signature": ""}, VECTOR_BODY, now=VECTOR_TIMESTAMP)


def test_both_sets_of_names_must_agree():
    body = b'{"a": 1}'
    spec = headers_for(NEW_SECRET, body)
    signatures.verify(signing_keys(NEW_SECRET), {**spec, **as_svix(spec)}, body)
    other = headers_for(NEW_SECRET, body, msg_id="msg_2")  # valid too, but another message
    mixed = [
        {**spec, **as_svix(other)},
        {**spec, "svix-signature": headers_for(OLD_SECRET, body)["webhook-signature"]},
        {"webhook-id": spec["webhook-id"], **as_svix({k: v for k, v in spec.items() if k != "webhook-id"})},
    ]
    for headers in mixed:
        with pytest.raises(signatures.SignatureError, match="both given and differ"):
            signatures.verify(signing_keys(f"{OLD_SECRET},{NEW_SECRET}"), headers, body)


def test_webhook_id_reads_either_name_and_trusts_neither_when_they_differ():
    cases = [
        ({"svix-id": "msg_svix_1"}, "msg_svix_1"),
        ({"webhook-id": "msg_1", "svix-id": "msg_1"}, "msg_1"),
        ({"webhook-id": "msg_1", "svix-id": "msg_2"}, None),
        ({"webhook-id": "", "svix-id": "msg_2"}, "msg_2"),
        ({"svix-id": "m" * 257}, None),
    ]
    assert [signatures.webhook_id(headers) for headers, _ in cases] == [expected for _, expected in cases]


def test_svix_signed_webhook_is_queued_with_its_svix_id(signed_client, config):
    body = wrapped(success(new_uuid()))
    response = post_signed(signed_client, body, as_svix(headers_for(NEW_SECRET, body, msg_id="msg_svix_7")))
    assert response.status_code == 202, response.json
    (_, fields), = redis.Redis.from_url(config.redis_url).xrange(DELIVERY_STREAM)
    assert fields[b"wid"] == b"msg_svix_7" and fields[b"body"] == body


def test_disagreeing_svix_and_webhook_headers_are_401_and_nothing_queued(signed_client, config):
    body = wrapped(success(new_uuid()))
    headers = {**headers_for(NEW_SECRET, body), **as_svix(headers_for(OLD_SECRET, body, msg_id="msg_other"))}
    response = post_signed(signed_client, body, headers)
    assert response.status_code == 401
    assert "both given and differ" in response.json["error"]["message"]
    assert redis.Redis.from_url(config.redis_url).xlen(DELIVERY_STREAM) == 0
