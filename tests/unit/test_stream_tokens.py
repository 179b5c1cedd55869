"""Browser stream tokens: bound to one call, expiring, unforgeable without the secret."""

from shared import stream_tokens


def test_token_names_its_call() -> None:
    token = stream_tokens.issue("secret", "call-1", now=1000)
    assert stream_tokens.verify("secret", token, now=1010) == "call-1"


def test_expired_forged_or_malformed_tokens_fail() -> None:
    token = stream_tokens.issue("secret", "call-1", now=1000)
    assert stream_tokens.verify("secret", token, now=1000 + stream_tokens.TOKEN_TTL_S + 1) is None
    assert stream_tokens.verify("other", token, now=1010) is None
    assert stream_tokens.verify("secret", token.replace("call-1", "call-2"), now=1010) is None
    for bad in (None, "", "a.b", "a.b.c.d", "call.notdigits.mac"):
        assert stream_tokens.verify("secret", bad, now=1010) is None
