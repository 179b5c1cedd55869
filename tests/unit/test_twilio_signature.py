"""Twilio's own signature example (from its security docs) validates with our helper."""

from shared import twilio_auth

# https://www.twilio.com/docs/usage/security#validating-requests
DOC_TOKEN = "12345"
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675310",
    "Digits": "1234",
    "From": "+14158675310",
    "To": "+18005551212",
}
DOC_SIGNATURE = "GvWf1cFY/Q7PnoempGyD5oXAezc="  # the value the docs give (HMAC-SHA1, base64)


def test_docs_example_signature_validates() -> None:
    assert twilio_auth.sign(DOC_TOKEN, DOC_URL, DOC_PARAMS) == DOC_SIGNATURE
    assert twilio_auth.is_valid(DOC_TOKEN, DOC_URL, DOC_PARAMS, DOC_SIGNATURE)


def test_tampered_params_or_token_fail() -> None:
    good = twilio_auth.sign(DOC_TOKEN, DOC_URL, DOC_PARAMS)
    assert not twilio_auth.is_valid(DOC_TOKEN, DOC_URL, {**DOC_PARAMS, "Digits": "9999"}, good)
    assert not twilio_auth.is_valid("other", DOC_URL, DOC_PARAMS, good)
    assert not twilio_auth.is_valid(DOC_TOKEN, DOC_URL, DOC_PARAMS, None)


def test_trailing_slash_difference_is_tolerated() -> None:
    url = "https://relayx.example/twilio/status/abc"
    signature = twilio_auth.sign(DOC_TOKEN, url + "/", {"CallStatus": "ringing"})
    assert twilio_auth.is_valid(DOC_TOKEN, url, {"CallStatus": "ringing"}, signature)
