"""Verify OCI request signatures and UPSTs the way OCI's services do.

The OCI CLI and SDK sign every request with a draft-cavage HTTP signature:

    Authorization: Signature algorithm="rsa-sha256",headers="date (request-target) host",
                   keyId="ST$<UPST>",signature="<base64>",version="1"

With session-token auth the keyId carries the UPST itself; the key that made the signature is
the session key whose public half the UPST holds in its `jwk` claim. A service therefore checks
two things: the UPST is genuine (signed by the identity service, not expired), and the request
was signed by the key the UPST names. Requests with a body must also sign their body headers,
and x-content-sha256 must be the body's digest, or a signed request could carry any body.

Everything here raises SignatureError with a reason precise enough to assert on in a test.
"""

import base64
import email.utils
import hashlib
import json
import time
from urllib.request import parse_http_list

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jwt.algorithms import RSAAlgorithm

# OCI accepts a request whose date is within 5 minutes of its own clock.
MAX_DATE_SKEW_SECONDS = 300
UPST_ISSUER = "authService.oracle.com"
UPST_AUDIENCE = "oci"
SECURITY_TOKEN_KEY_ID_PREFIX = "ST$"
BASE_SIGNED_HEADERS = ("date", "(request-target)", "host")
BODY_SIGNED_HEADERS = ("content-length", "content-type", "x-content-sha256")
# The SDK signs body headers for exactly these verbs, even when the body is empty.
BODY_METHODS = frozenset({"post", "put", "patch"})


class SignatureError(Exception):
    """A request or UPST that OCI would refuse; `reason` says why."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


# --- the Authorization header -------------------------------------------------------------


def parse_authorization(value):
    """Return the parameters of a `Signature ...` Authorization header as a dict."""
    if not value:
        raise SignatureError("no Authorization header")
    scheme, _, rest = value.partition(" ")
    if scheme != "Signature":
        raise SignatureError(f"Authorization scheme is {scheme!r}, not 'Signature'")
    params = {}
    for item in parse_http_list(rest):
        key, sep, val = item.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed Authorization parameter {item!r}")
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1]
        params[key] = val
    for required in ("algorithm", "headers", "keyId", "signature"):
        if required not in params:
            raise SignatureError(f"Authorization header has no {required!r} parameter")
    if params["algorithm"] != "rsa-sha256":
        raise SignatureError(f"algorithm is {params['algorithm']!r}, not 'rsa-sha256'")
    if params.get("version", "1") != "1":
        raise SignatureError(f"signature version is {params['version']!r}, not '1'")
    return params


def upst_from_key_id(key_id):
    """The UPST carried in a session-token keyId (`ST$<UPST>`)."""
    if not key_id.startswith(SECURITY_TOKEN_KEY_ID_PREFIX):
        raise SignatureError(f"keyId does not start with {SECURITY_TOKEN_KEY_ID_PREFIX!r}")
    token = key_id[len(SECURITY_TOKEN_KEY_ID_PREFIX):]
    if not token:
        raise SignatureError("keyId holds no security token")
    return token


# --- UPSTs --------------------------------------------------------------------------------


def verify_upst(token, public_key):
    """Verify a UPST (RS256, issuer, audience, not expired) and return its claims."""
    try:
        return jwt.decode(
            token,
            public_key,
            algorithms=["RS256"],
            audience=UPST_AUDIENCE,
            issuer=UPST_ISSUER,
            options={"require": ["exp", "iat", "sub", "jwk"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise SignatureError("UPST has expired") from exc
    except jwt.InvalidSignatureError as exc:
        raise SignatureError(
            "UPST signature does not verify with the identity service key"
        ) from exc
    except jwt.PyJWTError as exc:
        raise SignatureError(f"UPST is invalid: {exc}") from exc


def session_public_key(claims):
    """The session public key a UPST names in its `jwk` claim (a JSON string)."""
    try:
        key = RSAAlgorithm.from_jwk(claims["jwk"])
    except (KeyError, ValueError, TypeError, jwt.PyJWTError) as exc:
        raise SignatureError(f"UPST jwk claim is not an RSA JWK: {exc}") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignatureError("UPST jwk claim is not an RSA public key")
    return key


# --- the signed request -------------------------------------------------------------------


def _lower_headers(headers):
    # Accepts a dict, requests' CaseInsensitiveDict or http.server's email.message.Message.
    return {name.lower(): value for name, value in headers.items()}


def signing_string(signed_names, method, target, headers):
    """Rebuild the string the client signed: one `name: value` line per signed header."""
    lines = []
    for name in signed_names:
        if name == "(request-target)":
            lines.append(f"(request-target): {method.lower()} {target}")
        elif name in headers:
            lines.append(f"{name}: {headers[name]}")
        else:
            raise SignatureError(f"signed header {name!r} is missing from the request")
    return "\n".join(lines).encode("utf-8")


def check_date(value, now=None):
    """The request date must parse and be within MAX_DATE_SKEW_SECONDS of now."""
    if not value:
        raise SignatureError("request has no date header")
    try:
        sent = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError) as exc:
        raise SignatureError(f"date header {value!r} is not an HTTP date") from exc
    skew = (time.time() if now is None else now) - sent
    if abs(skew) > MAX_DATE_SKEW_SECONDS:
        raise SignatureError(
            f"date header is {abs(skew):.0f} s from server time (max {MAX_DATE_SKEW_SECONDS} s)"
        )


def body_digest(body):
    """x-content-sha256 as the SDK computes it: base64 of the SHA-256 of the body."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def check_body(headers, body):
    if headers.get("x-content-sha256") != body_digest(body):
        raise SignatureError("x-content-sha256 does not match the body")
    if headers.get("content-length") != str(len(body)):
        raise SignatureError("content-length does not match the body")


def required_signed_headers(method, body):
    if method.lower() in BODY_METHODS or body:
        return BASE_SIGNED_HEADERS + BODY_SIGNED_HEADERS
    return BASE_SIGNED_HEADERS


def verify_signature(params, method, target, headers, body, public_key, now=None):
    """Check one parsed signature against the request and the signer's public key."""
    headers = _lower_headers(headers)
    body = body or b""
    signed = params["headers"].lower().split()
    unsigned = [name for name in required_signed_headers(method, body) if name not in signed]
    if unsigned:
        raise SignatureError(f"required headers not signed: {' '.join(unsigned)}")
    message = signing_string(signed, method, target, headers)
    try:
        signature = base64.b64decode(params["signature"], validate=True)
        public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError("signature does not verify with the UPST's session key") from exc
    check_date(headers.get("date"), now)
    if "x-content-sha256" in signed:
        check_body(headers, body)


def verify_request(method, target, headers, body, upst_public_key, now=None):
    """Verify a session-token signed request as OCI does; return the UPST's claims.

    `target` is the path and query exactly as sent; `upst_public_key` is the identity
    service's (the emulator's) key that signs UPSTs.
    """
    params = parse_authorization(_lower_headers(headers).get("authorization"))
    claims = verify_upst(upst_from_key_id(params["keyId"]), upst_public_key)
    key = session_public_key(claims)
    verify_signature(params, method, target, headers, body, key, now)
    return claims


def jwk_json(public_key, kid):
    """A public key as the JSON-string JWK a UPST carries (what `session_public_key` reads)."""
    jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    jwk.update(kid=kid, alg="RS256", use="sig")
    return json.dumps(jwk, separators=(",", ":"))
