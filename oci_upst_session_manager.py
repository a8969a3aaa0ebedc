#!/usr/bin/env python3
"""woci: keep an OCI user-principal session token (UPST) alive from your own OpenID provider.

    woci [woci options] [oci arguments...]

For the OCI CLI profile in use, woci makes sure the session token is valid, then runs
``oci --profile <P> --auth security_token <oci arguments>``:

1. The UPST is valid for more than 60 more seconds: nothing to do.
2. A refresh token is stored: refresh grant at the provider, then exchange of the new access
   token for a UPST at OCI's token-exchange endpoint. No browser.
3. Otherwise (or when the provider refuses the refresh token): a sign-in, then the exchange.
   login_flow chooses how: `browser` (Authorization Code + PKCE in the browser, with the
   callback on http://127.0.0.1:<redirect_port><redirect_path>), `device` (RFC 8628: a code
   to enter at the provider on any device), or `manual` (the URL on stderr, the address the
   browser ends on pasted back on stdin). When nobody can sign in (--non-interactive, CI, the
   daemon, the auto-refresh thread), woci says what to run instead and exits 1.

With `issuer` set, the provider's endpoints come from its OpenID discovery document, read only
when a renewal needs them and cached for a day in the session folder (``discovery.json``).

Files, in ~/.oci/sessions/<profile>/ (mode 0700), every one mode 0600 and written atomically:
``token`` (the UPST, no trailing newline), ``oci_api_key.pem`` and ``oci_api_key_public.pem``
(the RSA session key), ``refresh_token`` (plain, or AES-256-GCM encrypted JSON; with
refresh_token_storage = keyring the token is in the OS keyring and ``refresh_token.keyring``
names its item), ``woci.lock`` (the per-profile lock), ``discovery.json`` (the provider's
endpoints), and the daemon's ``woci_refresh.pid``, ``woci_daemon.state`` and
``woci_daemon.log``; in ~/.oci/sessions/ one ``.oci-config-<hash>.lock`` per OCI config file.
The OCI config profile is updated in place (key_file, security_token_file, fingerprint,
tenancy, region); nothing else in it changes.

woci splits its own argv (section 3) instead of handing it to argparse: oci's commands have
options named like woci's (``--scope``, ``--client-id``, ``--status``), and from the first
oci word on everything must reach oci unchanged. argparse only formats the help.

Sections, each reading only from those above it:
 1. Constants and errors: every limit and file name; WociError and its kinds.
 2. Pure helpers: base64url, JWT claims, PKCE, backoff, clock skew, formatting, logging.
 3. Command line and settings: the option table, the argv splitter, Settings.
 4. Storage: session paths, atomic writes, locks, the session and refresh tokens, the OCI
    config file and the profile woci keeps in it.
 5. The fast path: a valid session answered from two small files, without the imports the
    rest needs; the OKE credential cache it answers kubectl from.
 6. HTTP and OpenID Connect: one form POST (and one JSON GET) with retries, discovery, the
    grants, the sign-in flows (browser, device code, pasted URL).
 7. Token exchange: the session key and the UPST.
 8. The session: ensure_session(), the renewal ladder.
 9. Background refresh: the renewer, the auto-refresh thread, the daemon.
10. Session tools: --status, --logout and --doctor, each step or check a small function.
11. Running oci (or --exec's command).
12. Command line interface: help, one function per mode, main().

Exit codes: 0 success; 1 runtime failure (sign-in, refresh, exchange, file write); 2 usage or
configuration error, or an unreadable refresh token; 127 oci not found; 130 interrupted;
anything else is oci's own exit code. The contract kept beside the project (SPEC.md) says
the same in full.
"""

from __future__ import annotations

# Only what a run with a valid session needs is imported here. It runs at every oci call
# (kubectl calls it per request), so everything else - requests, jwt, cryptography, logging,
# configparser, subprocess, threading, signal, tempfile, hashlib and the rest - is imported
# by the function that needs it, when a renewal, a sign-in or a tool needs it. For the same
# reason paths are strings joined with os.path: pathlib alone costs such a run 3 ms.
import base64
import collections
import enum
import errno
import json
import os
import sys
import time

TYPE_CHECKING = False   # true only for type checkers: these names appear in annotations only
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    import configparser
    import subprocess
    import threading

__version__ = "0.1.0"

# --------------------------------------------------------------------------------------------
# 1. Constants and errors
# --------------------------------------------------------------------------------------------

def log():
    """woci's logger. logging is imported on the first message: a run with a valid session
    logs nothing and must not pay for it."""
    import logging

    return logging.getLogger("woci")


EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_OCI_NOT_FOUND = 127
EXIT_INTERRUPTED = 130

# A UPST with less life than this left is renewed before oci runs: oci needs time to use it.
EXPIRY_MARGIN_SECONDS = 60
# A cached OKE credential with less life than this is not handed to kubectl.
OKE_CACHE_MARGIN_SECONDS = 30
DEFAULT_SCOPE = "openid offline_access"
DEFAULT_REDIRECT_PORT = 8181
DEFAULT_REDIRECT_PATH = "/callback"
DEFAULT_LOGIN_TIMEOUT = 300
DEFAULT_REFRESH_SAFETY_WINDOW = 600
# No sign-in waits, and no UPST lives, longer; threading and select refuse waits of ~1e10 s.
SETTING_SECONDS_MAX = 24 * 3600
DEFAULT_LOG_LEVEL = "WARNING"
DEFAULT_PROFILE = "DEFAULT"
# configparser's booleans (ConfigParser.BOOLEAN_STATES), here so reading one costs no import.
BOOLEAN_WORDS = {"1": True, "yes": True, "true": True, "on": True,
                 "0": False, "no": False, "false": False, "off": False}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOGIN_FLOWS = ("browser", "device", "manual")
DEFAULT_LOGIN_FLOW = "browser"

# (connect, read) seconds for every HTTP call.
HTTP_TIMEOUT = (5.0, 30.0)
HTTP_ATTEMPTS = 4
# The timeouts bound each wait for a byte; these bound one whole answer. No answer woci
# wants (a token, a discovery document) comes near the size.
HTTP_ANSWER_MAX_SECONDS = HTTP_TIMEOUT[0] + HTTP_TIMEOUT[1]
HTTP_ANSWER_MAX_BYTES = 1024 * 1024
# A body is read in pieces of at most this, so the deadline is seen between them.
HTTP_READ_PIECE_BYTES = 16 * 1024
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 8.0
RETRY_AFTER_MAX_SECONDS = 30.0
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# Beyond this, a clock difference with the provider or OCI is worth telling the user about:
# OCI refuses signed requests from a skewed clock.
CLOCK_SKEW_TOLERANCE_SECONDS = 60
# OCI refuses a signed request whose Date is more than 5 minutes off: --doctor fails there.
CLOCK_SKEW_FAIL_SECONDS = 300
# --doctor's probes: one attempt each, no retries, so a dead endpoint is reported quickly.
PROBE_TIMEOUT = (3.0, 5.0)
OCI_VERSION_TIMEOUT_SECONDS = 30

# A process waiting for the profile lock may be behind a browser sign-in, which can take
# login_timeout; this much more covers the exchange that follows it.
LOCK_GRACE_SECONDS = 30
LOCK_POLL_SECONDS = 0.1
# The OCI config lock is held only for a read-change-write of one small file.
CONFIG_LOCK_TIMEOUT_SECONDS = 10

# The background wakes at least this often: a suspended laptop's sleep is not time passed.
BACKGROUND_MAX_SLEEP_SECONDS = 60
BACKGROUND_RETRY_FIRST_SECONDS = 5
BACKGROUND_RETRY_MAX_SECONDS = 60
DAEMON_LOG_MAX_BYTES = 4 * 1024 * 1024
DAEMON_START_TIMEOUT_SECONDS = 15
DAEMON_STOP_TIMEOUT_SECONDS = 10
# Every attempt of one renewal's HTTP calls, with backoff: the most a renewal can take. The
# auto-refresh thread and the daemon are given this long to finish one before they are left.
RENEWAL_MAX_SECONDS = 2 * HTTP_ATTEMPTS * (HTTP_TIMEOUT[0] + HTTP_TIMEOUT[1]) + 30

RSA_KEY_BITS = 2048
PBKDF2_ITERATIONS = 600_000
# Outside these bounds a file is damaged: a huge count would hang (or crash) the KDF.
PBKDF2_MIN_ITERATIONS = 200_000
PBKDF2_MAX_ITERATIONS = 10_000_000
ENCRYPTED_FORMAT = "woci-refresh-token"
ENCRYPTED_VERSION = 1
KDF_NAME = "pbkdf2-hmac-sha256"
CIPHER_NAME = "aes-256-gcm"
# Authenticated with the ciphertext so a file cannot be replayed as another format.
ENCRYPTION_AAD = b"woci-refresh-token-v1"

# A UPST lives at most an hour; an exp further ahead than this is nonsense, not a session.
UPST_MAX_LIFETIME_SECONDS = 24 * 3600

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
UPST_TOKEN_TYPE = "urn:oci:token-type:oci-upst"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# Form fields that carry a secret: a server that quotes its request back in an error must
# not make woci print them. Shorter values are not searched for (they would mangle words).
SECRET_FORM_FIELDS = frozenset({"code", "code_verifier", "refresh_token", "subject_token",
                                "device_code", "token", "client_secret"})
REDACTION_MIN_CHARS = 4
# The endpoint settings woci sends secrets to (or the user, in the browser, the password):
# plain http to another machine draws a warning.
SECRET_BEARING_ENDPOINTS = ("authz_base_url", "token_url", "token_exchange_url",
                            "device_authorization_url", "revocation_url")

# RFC 8628: poll every `interval` seconds (5 when the provider names none), 5 more after each
# slow_down.
DEVICE_DEFAULT_INTERVAL_SECONDS = 5
DEVICE_SLOW_DOWN_SECONDS = 5
# A longer interval asked for would leave no poll within login_timeout; slow_down still works.
DEVICE_MAX_INTERVAL_SECONDS = 60
# A shorter one would hammer the token endpoint with the device code.
DEVICE_MIN_INTERVAL_SECONDS = 1
# A pasted sign-in answer is one line: the address the browser was sent to, or the code.
PASTED_LINE_MAX_BYTES = 16 * 1024

# OpenID Connect Discovery 1.0: the document's place under the issuer, and how long a copy
# is used without asking (fresh), or when asking fails (stale).
DISCOVERY_PATH = "/.well-known/openid-configuration"
DISCOVERY_FRESH_SECONDS = 24 * 3600
DISCOVERY_STALE_MAX_SECONDS = 7 * 24 * 3600

SESSIONS_FOLDER = "sessions"
TOKEN_FILE = "token"
KEY_FILE = "oci_api_key.pem"
PUBLIC_KEY_FILE = "oci_api_key_public.pem"
REFRESH_TOKEN_FILE = "refresh_token"
# Beside where the file would be when the refresh token is in the OS keyring: which item holds
# it (never the token), so --status and --logout find it without opening the keyring.
KEYRING_MARKER_FILE = "refresh_token.keyring"
KEYRING_SERVICE = "woci"
REFRESH_TOKEN_STORAGES = ("file", "keyring")
LOCK_FILE = "woci.lock"
DISCOVERY_FILE = "discovery.json"
# One lock per OCI config file, in the sessions folder: never a stray file beside the config.
CONFIG_LOCK_PREFIX = ".oci-config-"
PID_FILE = "woci_refresh.pid"
DAEMON_STATE_FILE = "woci_daemon.state"
DAEMON_LOG_FILE = "woci_daemon.log"
# The OKE credential cache: woci's own folder, deleted whole by a sign-in and --logout.
CREDENTIAL_CACHE_FOLDER = "exec-credentials"
MANAGER_INI_NAME = "woci_manager.ini"
COMMON_SECTION = "COMMON"
# No file woci reads comes near this size; a bigger one is not what woci or oci wrote (a link
# to a log, or to /dev/zero, which never ends).
FILE_MAX_BYTES = 4 * 1024 * 1024
# A write takes milliseconds: a temporary file of woci's this old was left by a killed woci.
STALE_TEMP_FILE_SECONDS = 600
# configparser treats its default section as a base for all others; the manager INI's
# [DEFAULT] is an ordinary section (the one for profile DEFAULT), so the base gets a name
# no one uses.
UNUSED_DEFAULT_SECTION = "\x00woci-no-default-section"

class WociError(Exception):
    """A failure the user can act on: one line of text and the exit code it maps to."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(WociError):
    exit_code = EXIT_USAGE


class StorageError(WociError):
    """A session file could not be written or read."""


class RefreshTokenError(WociError):
    """The stored refresh token cannot be read or decrypted: the user must act."""

    exit_code = EXIT_USAGE


class WrongPassphrase(RefreshTokenError):
    """The encrypted refresh token does not open with the passphrase given."""


class AuthError(WociError):
    """Sign-in, refresh or the provider failed."""


class GrantRefused(AuthError):
    """The provider refused a grant (invalid_grant): only a new sign-in helps."""


class SignInNeeded(AuthError):
    """A browser sign-in is needed but nobody can answer it here."""


class CallbackPortBusy(AuthError):
    """The sign-in callback's port is taken by another program."""


class DiscoveryError(WociError):
    """The provider's discovery document could not be read, or is not the issuer's."""


class HttpError(WociError):
    """An endpoint could not be reached or answered with something that is not OAuth JSON."""


class OAuthError(WociError):
    """An endpoint answered with an OAuth error object."""

    def __init__(self, message: str, error: str, status: int):
        super().__init__(message)
        self.error = error
        self.status = status


class ExchangeError(WociError):
    """OCI's token exchange refused the access token or answered nonsense."""


class DaemonError(WociError):
    pass


# --------------------------------------------------------------------------------------------
# 2. Pure helpers
# --------------------------------------------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_json(data: bytes | str) -> object:
    """json.loads for what comes from files and servers: JSON nested too deeply for the parser
    (RecursionError) is damage like any other, a ValueError."""
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def jwt_claims_unverified(token: str) -> dict:
    """The payload of a JWT, not verified: only the issuer's key could, and oci does the same.

    Written by hand because PyJWT imports cryptography, which the fast path must not load.
    """
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise ValueError("not a JWT (expected three dot-separated parts)")
    try:
        claims = parse_json(b64url_decode(parts[1]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("not a JWT (the payload is not base64url JSON)") from exc
    if not isinstance(claims, dict):
        raise ValueError("not a JWT (the payload is not a JSON object)")
    return claims


def epoch_or_none(value: object) -> float | None:
    """A time from a file or a server as a float, or None when it is no number a clock can
    be compared with (a bool, NaN, infinity, an integer beyond a float's range)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        epoch = float(value)
    except OverflowError:
        return None
    return epoch if abs(epoch) != float("inf") and epoch == epoch else None


def jwt_expiry(token: str) -> int:
    exp = jwt_claims_unverified(token).get("exp")
    # The OCI CLI insists on an integer exp; a token it cannot use is no session.
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise ValueError("the token has no integer 'exp' claim")
    if epoch_or_none(exp) is None:   # exp - now would raise OverflowError
        raise ValueError("the token's integer 'exp' claim is too large to be a time")
    return exp


def parse_bool(text: str) -> bool:
    """configparser's rules: true/false, yes/no, on/off, 1/0 (any case)."""
    try:
        return BOOLEAN_WORDS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"{text!r} is not a boolean (use true/false, yes/no, on/off or 1/0)")


def env_flag_is_true(value: str | None) -> bool:
    if value is None:
        return False
    try:
        return parse_bool(value)
    except ValueError:
        # CI systems set CI to odd things ("Jenkins"); any non-empty, non-false value counts.
        return bool(value.strip())


def pem_body_der(pem: bytes) -> bytes:
    """The DER inside a PEM block, without importing cryptography."""
    lines = [line.strip() for line in pem.decode("ascii").splitlines()]
    body = [line for line in lines if line and not line.startswith("-----")]
    return base64.b64decode("".join(body), validate=True)


def md5_fingerprint(der: bytes) -> str:
    """The key fingerprint as `oci setup` writes it: MD5 of the DER, colon-separated hex."""
    import hashlib

    digest = hashlib.md5(der).hexdigest()  # noqa: S324 - OCI's fingerprint format, not security
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier (RFC 7636: 43-128 unreserved characters) and its S256 challenge."""
    import hashlib
    import secrets

    verifier = secrets.token_urlsafe(64)
    challenge = b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())
    return verifier, challenge


def add_query(url: str, params: Mapping[str, str]) -> str:
    """The URL with params appended to whatever query it already has."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def is_http_url(text: str) -> bool:
    """http:// or https:// and a host. Not urllib.parse: it imports ipaddress, which would
    cost every run that checks its settings 1.5 ms; requests parses the URL in full when a
    renewal uses it."""
    scheme, separator, rest = text.partition("://")
    return bool(separator) and scheme.lower() in ("http", "https") and \
        rest[:1] not in ("", "/", "?", "#")


def shown(value: object, limit: int = 120) -> str:
    """A value from a server or a file, for one line of text: quoted, control characters
    escaped, and cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def is_one_word(text: str) -> bool:
    """Printable, with no white space at all: safe on one line of a terminal, and in a file
    that holds the text alone."""
    return text.isprintable() and not any(ch.isspace() for ch in text)


def plain_text(value: object, limit: int = 300) -> str:
    """A server's own words (an error_description) for one line of text: white space runs
    made one space, control characters (a terminal's escape sequences) made '?', cut short."""
    text = " ".join(str(value).split())
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[:limit] + "..."


def stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):   # closed
        return False


def clock_skew_seconds(server_date: str | None, now: float) -> float | None:
    """How far the local clock is from a server's Date header, or None if it says nothing."""
    if not server_date:
        return None
    from email.utils import parsedate_to_datetime  # deferred: only failures need it

    try:
        return now - parsedate_to_datetime(server_date).timestamp()
    except (TypeError, ValueError):
        return None


def clock_skew_note(skew: float | None, where: str) -> str:
    if skew is None or abs(skew) <= CLOCK_SKEW_TOLERANCE_SECONDS:
        return ""
    direction = "ahead of" if skew > 0 else "behind"
    return (f" (this machine's clock is {abs(skew):.0f} s {direction} {where}'s; "
            "OCI refuses requests from a skewed clock: fix the clock)")


def retry_delay(attempt: int, retry_after: str | None, jitter: Callable[[], float]) -> float:
    """Exponential backoff with jitter; a server's Retry-After wins when it asks for longer."""
    delay = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * (2 ** attempt)) * (0.5 + jitter())
    if retry_after:
        try:
            asked = float(retry_after)
        except ValueError:
            asked = -(clock_skew_seconds(retry_after, time.time()) or 0.0)
        delay = max(delay, min(asked, RETRY_AFTER_MAX_SECONDS))
    return max(0.0, delay)


def format_duration(seconds: float) -> str:
    try:
        seconds = int(seconds)
    except (OverflowError, ValueError, TypeError):
        return f"{seconds!r} s"
    if abs(seconds) < 120:
        return f"{seconds} s"
    if abs(seconds) < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def format_timestamp(epoch: float) -> str:
    """Local time for people; total, because epochs come from files and servers."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))
    except (OverflowError, OSError, ValueError, TypeError):
        return f"epoch {epoch!r} (not a date)"


def iso_utc(epoch: object) -> str | None:
    """ISO-8601 UTC (`2025-01-31T12:00:00Z`), or None for a number that is no date."""
    if not isinstance(epoch, (int, float)) or isinstance(epoch, bool):
        return None
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    except (OverflowError, OSError, ValueError):
        return None


def jwt_expiry_or_none(token: str) -> int | None:
    """The exp of a token that is a JWT; None for an opaque token (most refresh tokens)."""
    try:
        return jwt_expiry(token)
    except ValueError:
        return None


def mask_secret(value: str) -> str:
    """Enough of a secret to tell which one is set, never enough to use it."""
    if len(value) < 12:
        return f"*** ({len(value)} characters)"
    return f"{value[:2]}*** ({len(value)} characters)"


def redacted(text: str, secrets: list[str]) -> str:
    """text with every secret in it replaced by ***, the longest first (a secret holding
    another leaves nothing of either)."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= REDACTION_MIN_CHARS:
            text = text.replace(secret, "***")
    return text


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return one_line(exc)


def home_folder(environ: Mapping[str, str]) -> str:
    return environ.get("HOME") or os.path.expanduser("~")


def expand_home(path: str, environ: Mapping[str, str]) -> str:
    """~ and ~/... in the user's HOME (environ's, so tests and the daemon agree)."""
    if path == "~" or path.startswith("~/"):
        return os.path.join(home_folder(environ), path[2:]) if path[2:] else home_folder(environ)
    return path


def absolute(path: str) -> str:
    """path from the working folder, spelled as given otherwise (like Path.absolute(): no
    symlink or '..' resolved)."""
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


# --- reading a file: the one helper here that does I/O, as settings (3) read the INI with it --


def read_file_if_present(path: str, named: bool = False) -> bytes | None:
    """The file's bytes, None when it is absent; StorageError for anything that is not a
    regular file of at most FILE_MAX_BYTES. O_NONBLOCK: a FIFO in its place must not hold
    up the open. named: a path the user gave by flag or environment variable, which may also
    be a FIFO or a character device (`<(vault ...)`, /dev/null), read blocking up to the same
    cap; auto-discovered and session paths may not, as a FIFO there would hang every run."""
    import stat

    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if named else os.O_NONBLOCK)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {describe_os_error(exc)}") from exc
    kind = os.fstat(fd).st_mode
    streamed = named and (stat.S_ISFIFO(kind) or stat.S_ISCHR(kind))
    if not (stat.S_ISREG(kind) or streamed):
        os.close(fd)
        if stat.S_ISDIR(kind):
            raise StorageError(f"{path} is a folder, not a file")
        raise StorageError(f"{path} is not a regular file (a FIFO or a device?)")
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(FILE_MAX_BYTES + 1)
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {describe_os_error(exc)}") from exc
    if len(data) > FILE_MAX_BYTES:
        raise StorageError(f"{path} is larger than {FILE_MAX_BYTES // (1024 * 1024)} MiB, so it "
                           "is not a file woci or oci wrote")
    return data


def read_text_file(path: str, named: bool = False) -> str | None:
    """read_file_if_present as UTF-8 text with universal newlines, as open() in text mode
    reads it (configparser reads files that way)."""
    raw = read_file_if_present(path, named)
    if raw is None:
        return None
    return raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def configure_logging(level: str, daemon: bool = False) -> None:
    import logging

    fmt = "%(asctime)s woci[%(process)d]: %(levelname)s: %(message)s" if daemon else \
        "woci: %(levelname)s: %(message)s"
    logger = log()
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(level)


# --------------------------------------------------------------------------------------------
# 3. Command line and settings
# --------------------------------------------------------------------------------------------


class Mode(enum.Enum):
    """What this run of woci does; every mode but RUN and EXEC is chosen by one flag."""

    RUN = "run"
    EXEC = "exec"
    DAEMON = "daemon"
    DAEMON_STATUS = "daemon-status"
    STOP_DAEMON = "stop-daemon"
    STATUS = "status"
    LOGOUT = "logout"
    DOCTOR = "doctor"
    HELP = "help"
    VERSION = "version"


class OciAction(enum.Enum):
    """What the oci arguments ask of woci."""

    NONE = "none"                  # only --profile and friends: make sure, run nothing
    AUTHENTICATE = "authenticate"  # `session authenticate`: a fresh sign-in, oci not run
    REFRESH = "refresh"            # `session refresh`: a renewal now, oci not run
    RUN = "run"


class OptionSpec(collections.namedtuple(
        "OptionSpec", "flag key kind group help in_ini anywhere flag_sets secret env alias",
        defaults=(True, False, True, False, None, None))):
    """One of woci's options: how the splitter, the settings and the help treat it.

    key: the INI key and the Settings field; for a mode, its Mode value. kind: text, url,
    ports, seconds, level, choice, storage (a value); flag (none); mode; exec; oci. in_ini: it may stand in the
    manager INI. anywhere: taken wherever it stands, so kubeconfig entries stay short.
    flag_sets: the value the flag gives its key. secret: as a flag, visible to every local
    user in `ps`. env: an environment variable between the flag and the INI. alias: -h.
    """

    __slots__ = ()


CONFIGURATION = "Configuration"
PROVIDER = "Identity provider"
SIGN_IN = "Sign-in"
EXCHANGE = "OCI token exchange"
ENCRYPTION = "Refresh token encryption"
BACKGROUND = "Background refresh"
OUTPUT = "Output"
SESSION_TOOLS = "Session tools"
OCI_READ = "OCI options woci reads (and passes on to oci)"
MODES = "Modes"
SESSION_TOOLS = "Session tools"

OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("--manager-config", "manager_config", "text", CONFIGURATION,
               "The manager INI file. Default: env WOCI_MANAGER_CONFIG, else woci_manager.ini "
               "beside the OCI config file, else ~/.oci/woci_manager.ini. Taken wherever it "
               "stands on the command line.", in_ini=False, anywhere=True),
    OptionSpec("--issuer", "issuer", "url", PROVIDER,
               "The provider's issuer URL. woci then reads the endpoints from its "
               f"{DISCOVERY_PATH} (kept for a day in the session folder); URLs set "
               "explicitly win."),
    OptionSpec("--authz-base-url", "authz_base_url", "url", PROVIDER,
               "The provider's full authorization endpoint URL. Required unless --issuer is "
               "set."),
    OptionSpec("--token-url", "token_url", "url", PROVIDER,
               "The provider's token endpoint (authorization_code and refresh_token grants). "
               "Required unless --issuer is set."),
    OptionSpec("--auth-client-id", "auth_client_id", "text", PROVIDER,
               "The client registered at the provider. Required."),
    OptionSpec("--auth-client-secret", "auth_client_secret", "text", PROVIDER,
               "That client's secret, sent with HTTP Basic. Default: env "
               "WOCI_AUTH_CLIENT_SECRET, else none (a public client using PKCE only). As a "
               "flag it is visible to other local users: prefer the INI or the environment.",
               secret=True, env="WOCI_AUTH_CLIENT_SECRET"),
    OptionSpec("--scope", "scope", "text", PROVIDER,
               f"Scopes to ask for. Default: '{DEFAULT_SCOPE}'."),
    OptionSpec("--login-flow", "login_flow", "choice", SIGN_IN,
               "How to sign in when one is needed. browser: open the provider's page in a "
               "browser here, which comes back to 127.0.0.1. device: print a code to enter at "
               "the provider from any device (phone, laptop); for SSH, containers and cloud "
               "shells. manual: print the sign-in URL for any browser, then read from stdin "
               "the address that browser ends on, or the code. With no browser here (no "
               "--browser-command, no $BROWSER, and on Linux no DISPLAY or WAYLAND_DISPLAY) "
               f"and a terminal on stdin, browser becomes manual. Default: {DEFAULT_LOGIN_FLOW}."),
    OptionSpec("--browser-command", "browser_command", "text", SIGN_IN,
               "The program that opens the sign-in page, given the URL as its last argument "
               "(split like a shell would, run without one; its output goes to stderr), e.g. "
               "wslview, or a browser with a profile option. Default: $BROWSER, else the "
               "system's browser."),
    OptionSpec("--redirect-port", "redirect_port", "ports", SIGN_IN,
               "Port of the sign-in callback on 127.0.0.1, or a comma-separated list of ports "
               "registered at the provider: the first free one is used. Default: "
               f"{DEFAULT_REDIRECT_PORT}."),
    OptionSpec("--login-timeout", "login_timeout", "seconds", SIGN_IN,
               f"How long a sign-in may take, in seconds, at most {SETTING_SECONDS_MAX}. "
               f"Default: {DEFAULT_LOGIN_TIMEOUT}."),
    OptionSpec("--non-interactive", "interactive", "flag", SIGN_IN,
               "Never sign in: when a sign-in is needed, say so and exit 1. Also when env CI "
               "is true or the INI says interactive = false.", flag_sets=False),
    OptionSpec("--token-exchange-url", "token_exchange_url", "url", EXCHANGE,
               "OCI's token-exchange endpoint. Default: the token URL."),
    OptionSpec("--client-id", "client_id", "text", EXCHANGE,
               "The OCI token-exchange client. Required."),
    OptionSpec("--client-secret", "client_secret", "text", EXCHANGE,
               "Its secret (the exchange uses HTTP Basic). Required: the flag, env "
               "WOCI_CLIENT_SECRET or the INI. As a flag it is visible to other local users: "
               "prefer the INI or the environment.", secret=True, env="WOCI_CLIENT_SECRET"),
    OptionSpec("--refresh-token-passphrase-env", "refresh_token_passphrase_env", "text",
               ENCRYPTION,
               "Encrypt the stored refresh token with the passphrase in this environment "
               "variable."),
    OptionSpec("--refresh-token-passphrase-prompt", "refresh_token_passphrase_prompt", "flag",
               ENCRYPTION,
               "Encrypt the stored refresh token with a passphrase asked on the terminal "
               "(wins over the environment variable)."),
    OptionSpec("--auto-refresh", "auto_refresh", "flag", BACKGROUND,
               "Keep the session fresh from a thread for as long as oci (or --exec's command) "
               "runs."),
    OptionSpec("--refresh-safety-window", "refresh_safety_window", "seconds", BACKGROUND,
               f"Renew this many seconds before the session token expires, at most "
               f"{SETTING_SECONDS_MAX}. Default: {DEFAULT_REFRESH_SAFETY_WINDOW}."),
    OptionSpec("--log-level", "log_level", "level", OUTPUT,
               f"One of {', '.join(LOG_LEVELS)}. Default: {DEFAULT_LOG_LEVEL}. Logs go to "
               "stderr and never hold tokens or secrets."),
    OptionSpec("--profile", "profile", "oci", OCI_READ,
               "The OCI profile. Default: env OCI_CLI_PROFILE, else DEFAULT.", anywhere=True),
    OptionSpec("--config-file", "config_file", "oci", OCI_READ,
               "The OCI config file. Default: env OCI_CLI_CONFIG_FILE, else ~/.oci/config.",
               anywhere=True),
    OptionSpec("--region", "region", "oci", OCI_READ,
               "Written to the profile only if it has no region yet and the manager INI sets "
               "no region (the INI's region is always written).", anywhere=True),
    OptionSpec("--auth", "auth", "oci", OCI_READ, "Default: security_token.", anywhere=True),
    OptionSpec("--exec", "exec", "exec", MODES,
               "Run CMD instead of oci, with OCI_CLI_PROFILE, OCI_CLI_CONFIG_FILE and "
               "OCI_CLI_AUTH=security_token set (`--exec -- CMD [ARGS...]`)."),
    OptionSpec("--daemon", Mode.DAEMON.value, "mode", MODES,
               "Keep the session fresh from a background process; print its pid."),
    OptionSpec("--daemon-status", Mode.DAEMON_STATUS.value, "mode", MODES,
               "Report the daemon; exit 1 if none runs."),
    OptionSpec("--stop-daemon", Mode.STOP_DAEMON.value, "mode", MODES, "Stop the daemon."),
    OptionSpec("--status", Mode.STATUS.value, "mode", SESSION_TOOLS,
               "Show the session at a glance: the session token's subject, tenancy, expiry and "
               "time left, how the refresh token is stored, the daemon. No network, no lock, "
               "no provider settings needed: fit for a shell prompt. Exit 0 when the session "
               "is usable without a browser, else 1."),
    OptionSpec("--json", "json", "flag", SESSION_TOOLS,
               "With --status: one JSON object on stdout instead of text. Anywhere else it is "
               "a usage error (exit 2).", in_ini=False),
    OptionSpec("--logout", Mode.LOGOUT.value, "mode", SESSION_TOOLS,
               "End the session: stop the daemon, revoke the refresh token at the provider "
               "(revocation_url), delete the session token, keys, refresh token (or keyring "
               "item) and OKE credential cache, and remove security_token_file, key_file and "
               "fingerprint from the profile. A revocation that cannot be made is a warning."),
    OptionSpec("--doctor", Mode.DOCTOR.value, "mode", SESSION_TOOLS,
               "Find out why it does not work: one ok/warn/FAIL line per check (where each "
               "setting came from, secrets masked; the endpoints, called without credentials; "
               "the clock; oci; file modes; the session; the refresh token; the daemon). Exit "
               "1 if anything fails."),
    OptionSpec("--no-cache", "no_cache", "flag", SESSION_TOOLS,
               "Run oci for `ce cluster generate-token` even when the OKE credential cache has "
               "an answer, and refresh the cache with its answer.", in_ini=False),
    OptionSpec("--help", Mode.HELP.value, "mode", MODES, "Show this help.", alias="-h"),
    OptionSpec("--version", Mode.VERSION.value, "mode", MODES, "Show woci's version."),
)
INI_ONLY_KEYS = {
    "redirect_path": "text",
    "region": "text",
    "prompt": "text",
    "encrypt_refresh_token": "bool",
    "revocation_url": "url",
    "refresh_token_storage": "storage",
    "device_authorization_url": "url",
}
VALUE_KINDS = ("text", "url", "ports", "seconds", "level", "choice")
CHOICES = {"login_flow": LOGIN_FLOWS}
OPTIONS_BY_FLAG = {name: spec for spec in OPTIONS for name in (spec.flag, spec.alias) if name}
SETTING_OPTIONS = tuple(spec for spec in OPTIONS if spec.kind in (*VALUE_KINDS, "flag"))
FLAG_OF_KEY = {spec.key: spec.flag for spec in SETTING_OPTIONS}
INI_KINDS = {**{spec.key: ("bool" if spec.kind == "flag" else spec.kind)
                for spec in SETTING_OPTIONS if spec.in_ini}, **INI_ONLY_KEYS}
REQUIRED_KEYS = ("authz_base_url", "token_url", "auth_client_id", "client_id", "client_secret")
# With issuer set, discovery gives these; explicit values still win.
DISCOVERABLE_KEYS = ("authz_base_url", "token_url")
SECRET_KEYS = tuple(spec.key for spec in OPTIONS if spec.secret)
# The OCI options woci reads, by flag: their values also decide oci's command words.
OCI_PASSTHROUGH_OPTIONS = {spec.flag: spec.key for spec in OPTIONS if spec.kind == "oci"}
# oci's global options that take a value (oci-cli 3.95): their values are not command words.
OCI_VALUE_OPTIONS = frozenset({
    *OCI_PASSTHROUGH_OPTIONS, "--cli-rc-file", "--defaults-file", "--opc-request-id",
    "--opc-client-request-id", "--request-id", "--endpoint", "--connection-timeout",
    "--federation-endpoint", "--read-timeout", "--cert-bundle", "--output", "--query",
    "--auth-purpose", "--generate-param-json-input", "--proxy", "--max-retries",
    "--enable-propagation",
})


class CommandLine(collections.namedtuple("CommandLine", "woci oci_args oci_options mode exec_argv",
                                         defaults=(Mode.RUN, ()))):
    """argv split between woci and oci.

    woci: woci's option keys to their raw values (True for flags). oci_args: passed to oci
    unchanged, in order. oci_options: --profile/--config-file/--region/--auth, read anywhere.
    exec_argv: the command of --exec.
    """

    __slots__ = ()

    @property
    def secret_flags(self) -> list[str]:
        """The secrets given on the command line, by flag: every local user can read them."""
        return [spec.flag for spec in SETTING_OPTIONS if spec.secret and spec.key in self.woci]


def _option_value(argv: list[str], index: int, name: str, inline: str | None) -> tuple[str, int]:
    """The value of option argv[index] and the index after it."""
    if inline is not None:
        return inline, index + 1
    if index + 1 >= len(argv):
        raise ConfigError(f"{name} needs a value")
    return argv[index + 1], index + 2


def asks_for_help(argv: list[str]) -> bool:
    """--help (-h) among woci's own options, before `--`, --exec or the oci command (whose
    own --help is theirs): it wins over every other option and every mistake in them."""
    value_next = False
    for arg in argv:
        if value_next:   # `--scope --help` asks for a scope named --help
            value_next = False
            continue
        spec = OPTIONS_BY_FLAG.get(arg.partition("=")[0] if arg.startswith("--") else arg)
        if arg == "--" or spec is None or spec.kind == "exec":
            return False
        if spec.kind == "mode" and spec.key == Mode.HELP.value:
            return True
        value_next = spec.kind not in ("mode", "flag") and "=" not in arg
    return False


def split_command_line(argv: list[str]) -> CommandLine:
    """Split argv into woci's options and oci's arguments (asks_for_help decides first).

    woci's options stand before the oci command; from the first argument that is none of them
    (nor one of the four OCI options woci reads, nor a value), everything belongs to oci,
    because oci commands have options named like woci's (`--scope`, `--client-id`). Options
    marked `anywhere` in the table are read wherever they stand: --manager-config is taken,
    --profile/--config-file/--region/--auth are read and still passed to oci.
    """
    if asks_for_help(argv):
        return CommandLine({}, [], {}, Mode.HELP, ())
    woci: dict[str, object] = {}
    oci_args: list[str] = []
    oci_options: dict[str, str] = {}
    mode = Mode.RUN
    exec_argv: tuple[str, ...] = ()
    in_oci = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, has_inline, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        inline_value = inline if has_inline else None
        spec = OPTIONS_BY_FLAG.get(name)
        if spec is not None and spec.anywhere and spec.kind == "oci":
            value, nxt = _option_value(argv, i, name, inline_value)
            oci_options[spec.key] = value
            oci_args.extend(argv[i:nxt])
            i = nxt
        elif spec is not None and spec.anywhere:
            woci[spec.key], i = _option_value(argv, i, name, inline_value)
        elif in_oci:
            oci_args.append(arg)
            i += 1
        elif arg == "--":
            in_oci = True
            i += 1
        elif spec is None:
            in_oci = True
            oci_args.append(arg)
            i += 1
        elif spec.kind == "exec":
            if mode is not Mode.RUN:
                raise ConfigError(f"{name} cannot be combined with --{mode.value}")
            rest = argv[i + 1:]
            if rest[:1] == ["--"]:
                rest = rest[1:]
            if not rest:
                raise ConfigError("--exec needs a command: woci --exec -- CMD [ARGS...]")
            mode, exec_argv = Mode.EXEC, tuple(rest)
            break
        elif spec.kind in ("mode", "flag"):
            if has_inline:
                raise ConfigError(f"{name} takes no value")
            if spec.kind == "flag":
                woci[spec.key] = True
            elif mode is not Mode.RUN:
                raise ConfigError(f"{name} cannot be combined with --{mode.value}")
            else:
                mode = Mode(spec.key)
            i += 1
        else:
            woci[spec.key], i = _option_value(argv, i, name, inline_value)
    return CommandLine(woci, oci_args, oci_options, mode, exec_argv)


def check_option_combinations(cmd: CommandLine) -> None:
    """Rules between options that the splitter cannot see one option at a time."""
    if cmd.woci.get("json") and cmd.mode is not Mode.STATUS:
        raise ConfigError("--json works only with --status: woci --status --json")


def oci_command_words(oci_args: list[str]) -> list[str]:
    """The oci command's words (`session refresh`), past oci's global options and values."""
    words: list[str] = []
    skip = False
    for arg in oci_args:
        if skip:
            skip = False
        elif arg.partition("=")[0] in OCI_PASSTHROUGH_OPTIONS:
            skip = "=" not in arg   # read anywhere, so they may stand between the words
        elif arg.startswith("-"):
            skip = arg in OCI_VALUE_OPTIONS   # `--opt=value` carries its value along
            if words:
                break
        else:
            words.append(arg)
    return words


def oci_action(oci_args: list[str]) -> OciAction:
    """What the oci arguments ask of woci."""
    command = oci_command_words(oci_args)
    if not command and all(a.partition("=")[0] in OCI_VALUE_OPTIONS for a in oci_args
                           if a.startswith("-")):
        return OciAction.NONE
    if command[:2] == ["session", "authenticate"]:
        return OciAction.AUTHENTICATE
    if command[:2] == ["session", "refresh"]:
        return OciAction.REFRESH
    return OciAction.RUN


def _has_option(args: list[str], name: str) -> bool:
    return any(arg == name or arg.startswith(name + "=") for arg in args)


def build_oci_argv(oci_args: list[str], profile: str) -> list[str]:
    argv = ["oci"]
    if not _has_option(oci_args, "--profile"):
        argv += ["--profile", profile]
    if not _has_option(oci_args, "--auth"):
        argv += ["--auth", "security_token"]
    return argv + list(oci_args)


def scrubbed_environment(environ: Mapping[str, str], passphrase_env: str | None
                         ) -> dict[str, str]:
    """The environment for oci or --exec's command: without the secrets woci was given
    through it (WOCI_*_SECRET and the refresh-token passphrase variable)."""
    secret_variables = {spec.env for spec in SETTING_OPTIONS if spec.secret and spec.env}
    if passphrase_env:
        secret_variables.add(passphrase_env)
    return {name: value for name, value in environ.items() if name not in secret_variables}


SETTINGS_WITHOUT_DEFAULT = (
    "profile", "oci_config_file", "manager_config_file", "authz_base_url", "token_url",
    "token_exchange_url", "auth_client_id", "client_id", "client_secret",
)
SETTINGS_DEFAULTS = {
    "auth_client_secret": None,
    "scope": DEFAULT_SCOPE,
    "redirect_port": DEFAULT_REDIRECT_PORT,   # the first of redirect_ports
    "redirect_path": DEFAULT_REDIRECT_PATH,
    "region": None,           # from the INI: always written to the profile
    "cli_region": None,       # from --region: written only if the profile has none
    "prompt": None,
    "login_timeout": DEFAULT_LOGIN_TIMEOUT,
    "interactive": True,
    "refresh_token_passphrase_env": None,
    "refresh_token_passphrase_prompt": False,
    "encrypt_refresh_token": False,
    "refresh_token_storage": "file",   # or "keyring"
    "revocation_url": None,           # RFC 7009, for --logout
    "auto_refresh": False,
    "refresh_safety_window": DEFAULT_REFRESH_SAFETY_WINDOW,
    "log_level": DEFAULT_LOG_LEVEL,
    "ca_bundle": None,        # env OCI_CLI_CERT_BUNDLE, as the OCI CLI reads it
    "issuer": None,
    "device_authorization_url": None,
    "login_flow": DEFAULT_LOGIN_FLOW,
    "browser_command": None,
    "redirect_ports": (),     # every port registered, in order; () = redirect_port
}


class Settings(collections.namedtuple("Settings",
                                      SETTINGS_WITHOUT_DEFAULT + tuple(SETTINGS_DEFAULTS),
                                      defaults=tuple(SETTINGS_DEFAULTS.values()))):
    """Everything a run needs to know; made by build_settings(), never changed after but
    for the endpoints resolve_endpoints() fills in from discovery (None until then, and only
    with issuer set)."""

    __slots__ = ()

    @property
    def redirect_uri(self) -> str:
        return self.redirect_uri_for(self.redirect_port)

    def redirect_uri_for(self, port: int) -> str:
        return f"http://127.0.0.1:{port}{self.redirect_path}"

    @property
    def callback_ports(self) -> tuple[int, ...]:
        return self.redirect_ports or (self.redirect_port,)

    @property
    def encryption_wanted(self) -> bool:
        return bool(self.refresh_token_passphrase_prompt or self.refresh_token_passphrase_env
                    or self.encrypt_refresh_token)


def resolve_profile(cmd: CommandLine, environ: Mapping[str, str]) -> str:
    profile = cmd.oci_options.get("profile") or environ.get("OCI_CLI_PROFILE") or DEFAULT_PROFILE
    # A control character (a line break) would also split the profile's section header.
    if "/" in profile or profile in (".", "..") or not profile.isprintable():
        raise ConfigError(f"profile name {profile!r} cannot be a folder name (or an OCI config "
                          "section): no '/', no control characters")
    return profile


def resolve_oci_config_file(cmd: CommandLine, environ: Mapping[str, str]) -> str:
    path = cmd.oci_options.get("config_file") or environ.get("OCI_CLI_CONFIG_FILE")
    if path:   # absolute: the daemon works from /
        return absolute(expand_home(path, environ))
    return os.path.join(home_folder(environ), ".oci", "config")


def manager_config_candidates(cmd: CommandLine, environ: Mapping[str, str],
                              oci_config_file: str) -> tuple[list[str], bool]:
    """Where to look for the manager INI, and whether the path was given explicitly."""
    explicit = cmd.woci.get("manager_config") or environ.get("WOCI_MANAGER_CONFIG")
    if explicit:
        return [expand_home(str(explicit), environ)], True
    return [os.path.join(os.path.dirname(oci_config_file), MANAGER_INI_NAME),
            os.path.join(home_folder(environ), ".oci", MANAGER_INI_NAME)], False


def parse_manager_ini(text: str, source: str) -> configparser.ConfigParser:
    import configparser

    parser = configparser.ConfigParser(default_section=UNUSED_DEFAULT_SECTION,
                                       interpolation=None)
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise ConfigError(f"manager config {source} is not valid INI: {one_line(exc)}") from exc
    return parser


def load_manager_ini(candidates: list[str], explicit: bool
                     ) -> tuple[str | None, configparser.ConfigParser | None]:
    for path in candidates:
        try:
            text = read_text_file(path, named=explicit)
        except StorageError as exc:   # its message names the path already
            if explicit:
                raise ConfigError(f"manager config: {exc}") from exc
            log().warning("manager config: %s; going on without it", exc)
            continue
        except UnicodeDecodeError as exc:
            if explicit:
                raise ConfigError(f"cannot read manager config {path}: {one_line(exc)}") from exc
            log().warning("cannot read manager config %s (%s); going on without it", path,
                          one_line(exc))
            continue
        if text is None:
            if explicit:
                raise ConfigError(f"manager config {path} does not exist")
            continue
        return path, parse_manager_ini(text, str(path))
    return None, None


def ini_values(parser: configparser.ConfigParser | None, profile: str) -> dict[str, str]:
    """[COMMON] overlaid with the profile's own section."""
    values: dict[str, str] = {}
    if parser is None:
        return values
    for section in (COMMON_SECTION, profile):
        if parser.has_section(section):
            values.update(parser.items(section))
    return values


def _convert(key: str, kind: str, raw: object, where: str) -> object:
    if kind == "flag":
        return bool(raw)
    text = str(raw).strip()
    if kind == "bool":
        try:
            return parse_bool(text)
        except ValueError as exc:
            raise ConfigError(f"{key} in {where}: {exc}") from exc
    if kind == "url":
        if not is_http_url(text):
            raise ConfigError(f"{key} in {where} must be an http(s) URL, not {text!r}")
        return text
    if kind == "port":
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
            raise ConfigError(f"{key} in {where} must be a port number 1-65535, not {text!r}")
        return int(text)
    if kind == "ports":
        items = [item.strip() for item in text.split(",")]
        if len(items) > 1 and not all(items):
            raise ConfigError(f"{key} in {where} must be a port number 1-65535 or a "
                              f"comma-separated list of them, not {text!r}")
        ports = [_convert(key, "port", item, where) for item in items]
        return tuple(dict.fromkeys(ports))   # in order, each once
    if kind == "choice":
        if text.lower() not in CHOICES[key]:
            raise ConfigError(f"{key} in {where} must be one of {', '.join(CHOICES[key])}, "
                              f"not {text!r}")
        return text.lower()
    if kind == "seconds":
        try:
            seconds = float(text)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds <= SETTING_SECONDS_MAX:   # NaN too
            raise ConfigError(f"{key} in {where} must be a positive number of seconds, at most "
                              f"{SETTING_SECONDS_MAX}, not {text!r}")
        return seconds
    if kind == "storage":
        if text.lower() not in REFRESH_TOKEN_STORAGES:
            raise ConfigError(f"{key} in {where} must be one of "
                              f"{', '.join(REFRESH_TOKEN_STORAGES)}, not {text!r}")
        return text.lower()
    if kind == "level":
        if text.upper() not in LOG_LEVELS:
            raise ConfigError(f"{key} in {where} must be one of {', '.join(LOG_LEVELS)}, "
                              f"not {text!r}")
        return text.upper()
    return text


def build_settings(cmd: CommandLine, environ: Mapping[str, str],
                   manager_ini: configparser.ConfigParser | None,
                   manager_path: str | None,
                   required: tuple[str, ...] = REQUIRED_KEYS,
                   ini: Mapping[str, str] | None = None) -> Settings:
    """Settings from flag > environment (secrets) > INI [profile] > INI [COMMON] > defaults.

    The session tools pass required=() and get "" for what is missing: --logout and --doctor
    need only some settings, and say what they could not do without the others. The fast
    path passes the INI's values as ini, read without configparser.
    """
    profile = resolve_profile(cmd, environ)
    ini = ini_values(manager_ini, profile) if ini is None else ini
    ini_where = f"{manager_path} [{profile}] or [{COMMON_SECTION}]" if manager_path else "INI"
    unknown = sorted(set(ini) - set(INI_KINDS))
    if unknown:
        log().warning("ignoring unknown key(s) in %s: %s", manager_path, ", ".join(unknown))

    values: dict[str, object] = {}
    for key, kind in INI_KINDS.items():
        if key in ini and ini[key].strip() != "":
            values[key] = _convert(key, kind, ini[key], ini_where)
    for spec in SETTING_OPTIONS:
        if spec.env and environ.get(spec.env):
            values[spec.key] = _convert(spec.key, spec.kind, environ[spec.env], spec.env)
        if spec.key in cmd.woci:
            values[spec.key] = spec.flag_sets if spec.kind == "flag" else \
                _convert(spec.key, spec.kind, cmd.woci[spec.key], spec.flag)

    discovered = DISCOVERABLE_KEYS if values.get("issuer") else ()
    missing = [key for key in required if not values.get(key) and key not in discovered]
    if missing:
        where = manager_path or "~/.oci/woci_manager.ini"
        flags = ", ".join(f"{key} ({FLAG_OF_KEY[key]})" for key in missing)
        instead = (" (or issuer, which gives both through discovery)"
                   if set(DISCOVERABLE_KEYS) & set(missing) else "")
        raise ConfigError(f"missing settings: {flags}; set them{instead} in [{profile}] or "
                          f"[{COMMON_SECTION}] of {where}, or pass the flags")
    if (values.get("login_flow") == "device" and not values.get("device_authorization_url")
            and not values.get("issuer")):
        raise ConfigError(f"login_flow = device needs device_authorization_url (or issuer, "
                          f"whose discovery gives it); set it in [{profile}] or "
                          f"[{COMMON_SECTION}] of {manager_path or '~/.oci/woci_manager.ini'}")
    ports = values.pop("redirect_port", None)
    if ports:
        values["redirect_port"], values["redirect_ports"] = ports[0], ports
    redirect_path = str(values.get("redirect_path", DEFAULT_REDIRECT_PATH))
    # The callback compares the request's path with it: a query, a fragment or white space
    # in it would match no browser's request.
    if not redirect_path.startswith("/") or not redirect_path.isprintable() or \
            any(ch in redirect_path for ch in "?# "):
        raise ConfigError(f"redirect_path in {ini_where} must start with '/', and hold no "
                          f"'?', '#' or white space, not {redirect_path!r}")
    # Any source saying "not interactive" wins: an INI saying true must not make CI wait.
    interactive = bool(values.pop("interactive", True)) and not env_flag_is_true(
        environ.get("CI"))
    for key in discovered:
        values.setdefault(key, None)   # resolve_endpoints fills them in
    for key in REQUIRED_KEYS:
        values.setdefault(key, "")     # only the session tools (required=()) get here
    values.setdefault("token_exchange_url", values["token_url"])
    for name, region in (("region", values.get("region")),
                         ("--region", cmd.oci_options.get("region"))):
        if isinstance(region, str) and not region.isprintable():
            raise ConfigError(f"{name} {region!r} holds a line break or a control character; "
                              "it is written to the OCI config as one line")
    fields = set(Settings._fields)
    return Settings(
        profile=profile,
        oci_config_file=resolve_oci_config_file(cmd, environ),
        manager_config_file=manager_path,
        cli_region=cmd.oci_options.get("region"),
        interactive=interactive,
        ca_bundle=environ.get("OCI_CLI_CERT_BUNDLE") or None,
        **{k: v for k, v in values.items() if k in fields},
    )


class SettingSource(collections.namedtuple("SettingSource", "key value source problem")):
    """Where one setting's value comes from, as --doctor reports it: the text given (None
    when not set), its source (the flag, the variable, "<ini> [section]", "default", "not
    set") and why the value is unusable, if it is."""

    __slots__ = ()


def secret_flag_warning(flag: str) -> str:
    return (f"{flag} on the command line is visible to every user of this machine (ps); put "
            f"it in the manager INI (mode 0600) or env {OPTIONS_BY_FLAG[flag].env} instead")


def describe_settings(cmd: CommandLine, environ: Mapping[str, str],
                      manager_ini: configparser.ConfigParser | None,
                      manager_path: str | None) -> list[SettingSource]:
    """Every setting with the source that wins, in build_settings' order of precedence."""
    profile = resolve_profile(cmd, environ)
    specs = {spec.key: spec for spec in SETTING_OPTIONS}
    defaults = SETTINGS_DEFAULTS
    ini = ini_values(manager_ini, profile)
    described = []
    for key, kind in INI_KINDS.items():
        spec = specs.get(key)
        value: str | None = None
        source = "not set"
        if ini.get(key, "").strip():
            assert manager_ini is not None
            in_profile = manager_ini.has_option(profile, key) if \
                manager_ini.has_section(profile) else False
            value = ini[key]
            source = f"{manager_path} [{profile if in_profile else COMMON_SECTION}]"
        if spec is not None and spec.env and environ.get(spec.env):
            value, source = environ[spec.env], f"env {spec.env}"
        if spec is not None and spec.key in cmd.woci:
            raw = cmd.woci[spec.key]
            value = str(spec.flag_sets).lower() if spec.kind == "flag" else str(raw)
            source = spec.flag
        if key == "interactive" and env_flag_is_true(environ.get("CI")):
            value, source = "false", "env CI"
        problem = None
        if value is not None:
            try:
                _convert(key, kind, value, source)
            except ConfigError as exc:
                problem = str(exc)
        elif key == "token_exchange_url":
            source = "default: the token URL"
        elif defaults.get(key) is not None:
            default = defaults[key]
            value = str(default).lower() if isinstance(default, bool) else str(default)
            if isinstance(default, float) and default.is_integer():
                value = str(int(default))
            source = "default"
        described.append(SettingSource(key, value, source, problem))
    return described


def open_to_others(path: str) -> bool:
    """The file's group or other users may read or write it (False when it cannot be seen)."""
    try:
        return bool(os.stat(path).st_mode & 0o077)
    except OSError:
        return False


def warn_if_secrets_exposed(path: str | None, manager_ini: configparser.ConfigParser | None
                            ) -> None:
    if path is None or manager_ini is None:
        return
    holds_secret = any(manager_ini.has_option(section, key)
                       for section in manager_ini.sections() for key in SECRET_KEYS)
    if holds_secret and open_to_others(path):
        log().warning("%s holds a client secret but other users can read it; run: chmod 600 %s",
                    path, path)


# --------------------------------------------------------------------------------------------
# 4. Storage: session files, atomic writes, the profile lock, the refresh token, the OCI config
# --------------------------------------------------------------------------------------------


class SessionPaths(collections.namedtuple("SessionPaths", "folder")):
    """Where one profile's session files are."""

    __slots__ = ()

    @classmethod
    def for_profile(cls, profile: str, environ: Mapping[str, str]) -> "SessionPaths":
        return cls(os.path.join(home_folder(environ), ".oci", SESSIONS_FOLDER, profile))

    root = property(lambda self: os.path.dirname(self.folder))   # ~/.oci/sessions, all profiles'

    token = property(lambda self: os.path.join(self.folder, TOKEN_FILE))
    key = property(lambda self: os.path.join(self.folder, KEY_FILE))
    public_key = property(lambda self: os.path.join(self.folder, PUBLIC_KEY_FILE))
    refresh_token = property(lambda self: os.path.join(self.folder, REFRESH_TOKEN_FILE))
    keyring_marker = property(lambda self: os.path.join(self.folder, KEYRING_MARKER_FILE))
    lock = property(lambda self: os.path.join(self.folder, LOCK_FILE))
    discovery = property(lambda self: os.path.join(self.folder, DISCOVERY_FILE))
    pid = property(lambda self: os.path.join(self.folder, PID_FILE))
    daemon_state = property(lambda self: os.path.join(self.folder, DAEMON_STATE_FILE))
    daemon_log = property(lambda self: os.path.join(self.folder, DAEMON_LOG_FILE))
    credential_cache = property(lambda self: os.path.join(self.folder, CREDENTIAL_CACHE_FOLDER))


def ensure_private_folder(folder: str) -> None:
    """The folder, with any missing parents (~/.oci, sessions), made 0700 where woci makes them.

    A folder that exists already is the user's: its mode is never changed (a config file in
    ~/project, or /tmp with its sticky bit).
    """
    missing, candidate = [], folder
    while candidate and not os.path.exists(candidate):
        missing.append(candidate)
        candidate = os.path.dirname(candidate)   # ends at "/" (which exists) or "" (relative)
    try:
        for path in reversed(missing):
            os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create {folder}: {describe_os_error(exc)}") from exc


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_stale_temporary_file(entry: os.DirEntry, prefix: str, now: float) -> bool:
    return entry.name.startswith(prefix) and entry.name.endswith(".tmp") and \
        len(entry.name) == len(prefix) + 12 and entry.is_file(follow_symlinks=False) and \
        now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_FILE_SECONDS


def _remove_if_unlocked(path: str) -> None:
    """Unlink a temporary file no writer holds: atomic_write keeps an exclusive flock on its
    own until the rename, so age alone (a stopped woci, an NFS clock behind) takes none away
    from a writer still alive."""
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return   # a writer's, however old it looks
        os.unlink(path)
    finally:
        os.close(fd)


def _remove_stale_temporary_files(folder: str, name: str) -> None:
    """What atomic_write of name left when it was killed before its rename (a copy of a
    token, say): mkstemp's names, .<name>.<8 characters>.tmp, old and unlocked."""
    prefix, now = f".{name}.", time.time()
    try:
        stale = [entry.path for entry in os.scandir(folder)
                 if _is_stale_temporary_file(entry, prefix, now)]
    except OSError:
        return   # only tidying: the write itself decides
    for path in stale:
        try:
            _remove_if_unlocked(path)
        except OSError:
            pass


def _give_to_owner(fd: int, owner: tuple[int, int]) -> None:
    """Best effort: only root can give a file away, and some filesystems answer ENOSYS,
    EOPNOTSUPP or EINVAL to any chown; none of that is worth failing the write for."""
    info = os.fstat(fd)
    if (info.st_uid, info.st_gid) == owner:
        return
    try:
        os.fchown(fd, *owner)
    except OSError as exc:
        log().debug("cannot give the new file to %d:%d (%s); it stays %d:%d", *owner,
                    describe_os_error(exc), info.st_uid, info.st_gid)


def atomic_write(path: str, data: bytes, mode: int = 0o600,
                 owner: tuple[int, int] | None = None) -> None:
    """Write via a temporary file in the same folder, fsync, rename: readers see old or new.
    owner: (uid, gid) the new file is given, as the one it replaces had."""
    import fcntl
    import tempfile

    folder = os.path.dirname(path) or "."
    _remove_stale_temporary_files(folder, os.path.basename(path))

    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=folder)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {describe_os_error(exc)}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            # Held until the rename, closing the file: the stale-file cleaner skips it.
            fcntl.flock(fd, fcntl.LOCK_EX)
            # mkstemp creates 0600; set the final mode before any data is in the file.
            os.fchmod(fd, mode)
            if owner is not None:
                _give_to_owner(fd, owner)
            handle.write(data)
            handle.flush()
            os.fsync(fd)
            os.replace(tmp, path)
        _fsync_folder(folder)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StorageError(f"cannot write {path}: {describe_os_error(exc)}") from exc


def remove_if_present(path: str) -> bool:
    """Delete a file; False when it was not there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:   # a folder in its place, a read-only folder
        raise StorageError(f"cannot remove {path}: {describe_os_error(exc)}") from exc
    return True


def make_private(path: str, what: str) -> None:
    """A file of woci's that other users could open becomes 0600, with a warning: they may
    have read it already. A symlink is left alone: its target is not woci's."""
    if os.path.islink(path) or not open_to_others(path):
        return
    try:
        os.chmod(path, 0o600)
    except OSError as exc:
        log().warning("%s %s is open to other users and cannot be made private (%s); run: "
                      "chmod 600 %s", what, path, describe_os_error(exc), path)
        return
    log().warning("%s %s was open to other users; it is 0600 now", what, path)


class FileLock:
    """An exclusive flock on a lock file (never the data file), bounded wait.

    The OS frees it when the holder dies, so a killed woci never leaves a stale lock.
    """

    def __init__(self, path: str, timeout: float, busy_message: str,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.path, self.timeout, self.busy_message = path, timeout, busy_message
        self.clock, self.sleep = clock, sleep
        self.fd: int | None = None

    def __enter__(self) -> "FileLock":
        ensure_private_folder(os.path.dirname(self.path))
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open lock file {self.path}: "
                               f"{describe_os_error(exc)}") from exc
        import fcntl

        deadline = self.clock() + self.timeout
        logged = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise StorageError(f"cannot lock {self.path}: {exc.strerror}") from exc
            if self.clock() >= deadline:
                os.close(fd)
                raise WociError(f"{self.busy_message} for over {format_duration(self.timeout)}; "
                                f"gave up waiting for it (lock file {self.path})")
            if not logged:
                log().info("waiting: %s", self.busy_message)
                logged = True
            self.sleep(LOCK_POLL_SECONDS)
        self.fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def held_elsewhere(fd: int) -> bool:
    """True when another process holds an exclusive flock on fd's file; asking takes nothing
    that outlives the fd."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    return False


class ProfileLock(FileLock):
    """Held around read refresh token -> refresh -> exchange -> write, and around a sign-in,
    so parallel runs make one refresh and open one browser tab."""

    def __init__(self, path: str, timeout: float, profile: str, **seams):
        super().__init__(path, timeout, f"another woci has been renewing profile {profile}",
                         **seams)


class ConfigLock(FileLock):
    """Held only for a read-change-write of the OCI config, never across a network call.

    Every woci editing the same file (any profile, any daemon) takes the same lock: its name
    comes from the file's real path, and it lives among the sessions, not beside the config.
    """

    def __init__(self, sessions_root: str, config_file: str, **seams):
        import hashlib

        digest = hashlib.sha256(os.path.realpath(config_file).encode()).hexdigest()[:16]
        super().__init__(os.path.join(sessions_root, f"{CONFIG_LOCK_PREFIX}{digest}.lock"),
                         CONFIG_LOCK_TIMEOUT_SECONDS,
                         f"another woci has been writing {config_file}", **seams)


# --- the session token -----------------------------------------------------------------------


class TokenState(collections.namedtuple("TokenState", "token expires_at problem")):
    """The session token on disk: the token and its exp, or why an existing file is unusable."""

    __slots__ = ()


def read_session_token(paths: SessionPaths) -> TokenState:
    try:
        raw = read_file_if_present(paths.token)
    except StorageError as exc:
        return TokenState(None, None, str(exc))
    if raw is None:
        return TokenState(None, None, None)
    try:
        token = raw.decode("ascii")
        if token != token.strip():
            raise ValueError("it has surrounding white space, which oci rejects")
        return TokenState(token, jwt_expiry(token), None)
    except (UnicodeDecodeError, ValueError) as exc:
        reason = "not text" if isinstance(exc, UnicodeDecodeError) else str(exc)
        return TokenState(None, None, f"the session token {paths.token} is unusable ({reason})")


def session_is_fresh(state: TokenState, now: float, min_validity: float) -> bool:
    """Valid for longer than min_validity, and not absurdly long: a UPST lives an hour at
    most, so an exp more than a day ahead (a file someone wrote) is renewed, not trusted."""
    return state.expires_at is not None and \
        min_validity < state.expires_at - now <= UPST_MAX_LIFETIME_SECONDS


# --- the refresh token ------------------------------------------------------------------------


class PassphraseSource:
    """Where the refresh-token passphrase comes from; asked at most once per process.

    A prompt wins over the environment variable. The daemon keeps the
    passphrase only in this object's memory.
    """

    def __init__(self, settings: Settings, environ: Mapping[str, str],
                 ask: Callable[[str], str] | None = None,
                 stdin_is_tty: Callable[[], bool] = lambda: sys.stdin is not None
                 and sys.stdin.isatty()):
        self.settings, self.environ = settings, environ
        if ask is None:
            import getpass

            ask = getpass.getpass
        self.ask, self.stdin_is_tty = ask, stdin_is_tty
        self._cached: str | None = None

    @property
    def configured(self) -> bool:
        return self.settings.encryption_wanted

    def get(self, creating: bool = False) -> str:
        if self._cached is None:
            self._cached = self._obtain(creating)
        return self._cached

    def _obtain(self, creating: bool) -> str:
        settings = self.settings
        if settings.refresh_token_passphrase_prompt or not settings.refresh_token_passphrase_env:
            return self._prompt(creating)
        var = settings.refresh_token_passphrase_env
        value = self.environ.get(var)
        if not value:
            raise RefreshTokenError(f"environment variable {var} (refresh_token_passphrase_env) "
                                    "is not set or empty: it must hold the refresh-token "
                                    "passphrase")
        return value

    def _prompt(self, creating: bool) -> str:
        if not self.stdin_is_tty():
            raise RefreshTokenError(
                "the refresh-token passphrase must be typed on a terminal, and stdin is not one; "
                "set refresh_token_passphrase_env to take it from the environment instead")
        label = f"Passphrase for the refresh token of profile {self.settings.profile}: "
        passphrase = self.ask(label)
        if not passphrase:
            raise RefreshTokenError("an empty passphrase cannot protect the refresh token")
        if creating and self.ask("Repeat the passphrase: ") != passphrase:
            raise RefreshTokenError("the two passphrases differ; nothing was saved")
        return passphrase


def _derive_key(passphrase: str, salt: bytes, iterations: int) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=iterations)
    # surrogateescape: a variable whose bytes are not UTF-8 reaches Python as surrogates;
    # its own bytes are the passphrase.
    return kdf.derive(passphrase.encode("utf-8", "surrogateescape"))


def encrypt_refresh_token(token: str, passphrase: str,
                          iterations: int = PBKDF2_ITERATIONS) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt, nonce = os.urandom(16), os.urandom(12)
    key = _derive_key(passphrase, salt, iterations)
    ciphertext = AESGCM(key).encrypt(nonce, token.encode("utf-8"), ENCRYPTION_AAD)
    document = {
        "format": ENCRYPTED_FORMAT, "version": ENCRYPTED_VERSION, "kdf": KDF_NAME,
        "iterations": iterations, "cipher": CIPHER_NAME,
        "salt": base64.b64encode(salt).decode("ascii"),
        "nonce": base64.b64encode(nonce).decode("ascii"),
        "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
    }
    return json.dumps(document, indent=2).encode("utf-8")


def is_encrypted_document(raw: bytes) -> bool:
    return raw.lstrip()[:1] == b"{"


def decrypt_refresh_token(raw: bytes, passphrase: str, path: str) -> str:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    damaged = f"the encrypted refresh token {path} is damaged"
    try:
        document = parse_json(raw)
        if document.get("format") != ENCRYPTED_FORMAT:
            raise ValueError("it is not a woci refresh-token file")
        if document.get("version") != ENCRYPTED_VERSION or document.get("kdf") != KDF_NAME:
            raise ValueError(f"unknown version {document.get('version')!r} or KDF "
                             f"{document.get('kdf')!r} (written by a newer woci?)")
        iterations = document["iterations"]
        if not isinstance(iterations, int) or isinstance(iterations, bool) or \
                not PBKDF2_MIN_ITERATIONS <= iterations <= PBKDF2_MAX_ITERATIONS:
            raise ValueError(f"implausible iteration count {iterations!r}")
        salt, nonce, ciphertext = (base64.b64decode(document[k], validate=True)
                                   for k in ("salt", "nonce", "ciphertext"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RefreshTokenError(f"{damaged} ({one_line(exc)}); sign in again with "
                                "`woci session authenticate` to replace it") from exc
    try:
        plain = AESGCM(_derive_key(passphrase, salt, iterations)).decrypt(
            nonce, ciphertext, ENCRYPTION_AAD)
    except ValueError as exc:
        # A nonce of a length AES-GCM refuses: the file is damaged, whatever the passphrase,
        # and a sign-in replaces it; only a failed authentication can be the passphrase.
        raise RefreshTokenError(f"{damaged} ({one_line(exc)}); sign in again with "
                                "`woci session authenticate` to replace it") from exc
    except InvalidTag as exc:
        raise WrongPassphrase(f"cannot decrypt the refresh token {path}: wrong passphrase, "
                              "or the file was altered") from exc
    return plain.decode("utf-8")


class KeyringItem(collections.namedtuple("KeyringItem", "service username")):
    """The keyring item holding a refresh token: one per OCI config file and profile."""

    __slots__ = ()

    @classmethod
    def for_profile(cls, config_file: str, profile: str) -> "KeyringItem":
        return cls(KEYRING_SERVICE, f"{os.path.realpath(config_file)} [{profile}]")

    def write_marker(self, path: str) -> None:
        atomic_write(path, json.dumps({"service": self.service,
                                       "username": self.username}).encode("utf-8"))

    @classmethod
    def read_marker(cls, path: str) -> "KeyringItem" | None:
        try:
            document = parse_json(read_file_if_present(path) or b"null")
        except (StorageError, ValueError):
            return None
        # Only woci's own service: another program's item must never be read or deleted.
        if isinstance(document, dict) and document.get("service") == KEYRING_SERVICE and \
                isinstance(document.get("username"), str):
            return cls(document["service"], document["username"])
        return None


def open_keyring() -> tuple[object | None, str]:
    """The OS keyring's backend and its name, or None and why it cannot be used.

    keyring is an optional extra (woci[keyring]), imported only by keyring storage. Its fail
    and null backends are no keyring: the null one would silently drop the refresh token.
    """
    try:
        import keyring
    except ImportError:
        return None, "the keyring package is not installed (pip install 'woci[keyring]')"
    try:
        backend = keyring.get_keyring()
    except Exception as exc:  # a keyring configuration can fail in any backend's own way
        return None, f"the keyring cannot be opened ({type(exc).__name__}: {one_line(exc)})"
    name = f"{type(backend).__module__}.{type(backend).__name__}"
    if type(backend).__module__ in ("keyring.backends.fail", "keyring.backends.null"):
        return None, f"no usable keyring backend ({name})"
    return backend, name


def keyring_call(what: str, call: Callable[[], object], secret: str | None = None) -> object:
    """One keyring operation; whatever the backend raises becomes one StorageError line,
    without the secret being stored (a backend running a tool quotes its command line)."""
    try:
        return call()
    except Exception as exc:  # D-Bus, a locked collection, a file backend's OSError...
        said = redacted(one_line(exc), [secret] if secret else [])
        raise StorageError(f"cannot {what} the OS keyring: {type(exc).__name__}: "
                           f"{said[:200]}") from exc


def drop_keyring_item(marker: str, fallback: KeyringItem, backend) -> None:
    """Delete the item the marker names, then the marker; an item already gone is no error."""
    item = KeyringItem.read_marker(marker) or fallback
    if keyring_call("read", lambda: backend.get_password(item.service, item.username)):
        keyring_call("delete from", lambda: backend.delete_password(item.service, item.username))
    remove_if_present(marker)


def is_storable_refresh_token(token: str) -> bool:
    """A token the plain file holds and gives back as it was: printable ASCII, no white
    space (the file is the token alone)."""
    return bool(token) and token.isascii() and is_one_word(token)


def plain_refresh_token(raw: bytes) -> str | None:
    """The token a plain refresh token file holds, or None when it is damaged (empty, not
    ASCII, white space or control characters within)."""
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    return token if is_storable_refresh_token(token) else None


class RefreshTokenStore:
    """The refresh token on disk: plain text, or encrypted JSON when a passphrase is set.

    keyring_marker, when given, is where a keyring store would have left its marker: settle()
    then moves a token from the keyring back into the file (refresh_token_storage = file).
    """

    def __init__(self, path: str, passphrase: PassphraseSource,
                 keyring_marker: str | None = None, item: KeyringItem | None = None,
                 open_backend: Callable[[], tuple[object | None, str]] = open_keyring):
        self.path, self.passphrase = path, passphrase
        self.keyring_marker, self.item, self.open_backend = keyring_marker, item, open_backend

    def stored(self) -> bool:
        """A refresh token is here or in the keyring to be moved here; no keyring opened."""
        marker = self.keyring_marker
        return os.path.exists(self.path) or bool(marker and os.path.exists(marker))

    def settle(self) -> None:
        """Move a token left in the keyring into the file; called once under the profile lock.
        A file written while the keyring was unusable is newer than the keyring item."""
        marker = self.keyring_marker
        if marker is None or not os.path.exists(marker):
            return
        backend, why = self.open_backend()
        if backend is None:
            log().warning("the refresh token is in the OS keyring but %s; it stays there (set "
                        "refresh_token_storage = keyring to use it)", why)
            return
        item = KeyringItem.read_marker(marker) or self.item
        if item is None:
            remove_if_present(marker)
            return
        if not os.path.exists(self.path):
            token = keyring_call("read", lambda: backend.get_password(item.service,
                                                                      item.username))
            if isinstance(token, str) and token:
                self.save(token)
                log().info("moved the refresh token from the OS keyring to %s", self.path)
        drop_keyring_item(marker, item, backend)

    def load(self) -> str | None:
        try:
            raw = read_file_if_present(self.path)
        except StorageError as exc:
            # Like an undecryptable one: the user must act, so exit 2 (SPEC 9), not 1.
            raise RefreshTokenError(str(exc)) from exc
        if raw is None:
            return None
        if is_encrypted_document(raw):
            if not self.passphrase.configured:
                raise RefreshTokenError(
                    f"the refresh token {self.path} is encrypted and no passphrase is "
                    "configured: set refresh_token_passphrase_env or "
                    "refresh_token_passphrase_prompt")
            return decrypt_refresh_token(raw, self.passphrase.get(), self.path)
        token = plain_refresh_token(raw)
        if token is None:
            raise RefreshTokenError(f"the refresh token file {self.path} is damaged (empty or "
                                    "not text); sign in again with `woci session authenticate` "
                                    "to replace it")
        return token

    def can_hold(self, token: str) -> bool:
        """Whether load() would give token back as it was: the plain file holds the token
        alone, so no white space or control character; encrypted JSON holds any text."""
        return bool(token) and (self.passphrase.configured or is_storable_refresh_token(token))

    def forget(self) -> None:
        remove_if_present(self.path)

    def save(self, token: str) -> None:
        if self.passphrase.configured:
            creating = not self.holds_encrypted()
            data = encrypt_refresh_token(token, self.passphrase.get(creating=creating))
        else:
            data = token.encode("utf-8")
        atomic_write(self.path, data)

    def holds_encrypted(self) -> bool:
        """RefreshTokenError (exit 2) when the file cannot be read: asked first, the user
        would type a passphrase twice only to learn that."""
        try:
            raw = read_file_if_present(self.path)
        except StorageError as exc:
            raise RefreshTokenError(str(exc)) from exc
        return raw is not None and is_encrypted_document(raw)


class NoPassphrase:
    """The passphrase of a keyring store: none, the keyring protects the item."""

    configured = False

    def get(self, creating: bool = False) -> str:
        raise RefreshTokenError("a refresh token in the OS keyring has no passphrase")


class KeyringRefreshTokenStore:
    """The refresh token as one item in the OS keyring, with RefreshTokenStore's interface.

    A marker file in the session folder names the item (never the token), so --status and
    --logout know where the token is without opening the keyring. With no keyring package or
    no usable backend: one warning, then the file store does the work. When both hold a token
    the file is the newer one: every keyring save removes the file.
    """

    def __init__(self, item: KeyringItem, file_store: RefreshTokenStore, marker: str,
                 open_backend: Callable[[], tuple[object | None, str]] = open_keyring):
        self.item, self.file_store, self.marker = item, file_store, marker
        self.open_backend = open_backend
        self._opened = False
        self._backend: object | None = None

    def _keyring(self):
        """The backend, opened once; None (after one warning) when it cannot be used."""
        if not self._opened:
            self._opened = True
            self._backend, why = self.open_backend()
            if self._backend is None:
                log().warning("refresh_token_storage = keyring, but %s; keeping the refresh "
                            "token in %s", why, self.file_store.path)
        return self._backend

    @property
    def passphrase(self):
        return self.file_store.passphrase if self._keyring() is None else NoPassphrase()

    @property
    def path(self) -> str:
        """Where the token is, for messages: the file when the keyring cannot be used."""
        return self.file_store.path if self._keyring() is None else self.marker

    def stored(self) -> bool:
        return os.path.exists(self.marker) or os.path.exists(self.file_store.path)

    def settle(self) -> None:
        """Move a token from the file into the keyring; called once under the profile lock."""
        if self._keyring() is None or not os.path.exists(self.file_store.path):
            return
        token = self.file_store.load()
        if token is not None:
            self.save(token)
            log().info("moved the refresh token from %s to the OS keyring", self.file_store.path)

    def load(self) -> str | None:
        backend = self._keyring()
        if backend is None or os.path.exists(self.file_store.path):
            return self.file_store.load()
        if not os.path.exists(self.marker):
            return None
        item = KeyringItem.read_marker(self.marker) or self.item
        token = keyring_call("read", lambda: backend.get_password(item.service, item.username))
        if not isinstance(token, str) or not token:
            log().warning("the OS keyring holds no refresh token for %s (removed by hand?)",
                        item.username)
            return None
        return token

    def can_hold(self, token: str) -> bool:
        """A keyring item holds any text; the file does when the keyring cannot be used."""
        return self.file_store.can_hold(token) if self._keyring() is None else bool(token)

    def forget(self) -> None:
        backend = self._keyring()
        if backend is not None and os.path.exists(self.marker):
            drop_keyring_item(self.marker, self.item, backend)
        self.file_store.forget()

    def save(self, token: str) -> None:
        backend = self._keyring()
        if backend is None:
            self.file_store.save(token)
            return
        try:
            keyring_call("write to", lambda: backend.set_password(self.item.service,
                                                                  self.item.username, token),
                         secret=token)
        except StorageError as exc:
            # The token may be a just-rotated one: it must be kept somewhere.
            log().warning("%s; keeping the refresh token in %s", exc, self.file_store.path)
            if self.file_store.can_hold(token):
                self.file_store.save(token)
            else:
                self.forget()   # the stored one is spent: presenting it again is reuse
            return
        previous = KeyringItem.read_marker(self.marker)
        self.item.write_marker(self.marker)
        if previous is not None and previous != self.item:
            try:
                keyring_call("delete from",
                             lambda: backend.delete_password(previous.service, previous.username))
            except StorageError as exc:
                log().warning("%s (an old item of woci's)", exc)
        remove_if_present(self.file_store.path)

    def holds_encrypted(self) -> bool:
        return self._keyring() is None and self.file_store.holds_encrypted()


def refresh_token_store(settings: Settings, paths: SessionPaths, passphrase: PassphraseSource):
    """The store refresh_token_storage asks for: the file, or the OS keyring."""
    item = KeyringItem.for_profile(settings.oci_config_file, settings.profile)
    file_store = RefreshTokenStore(paths.refresh_token, passphrase, paths.keyring_marker, item)
    if settings.refresh_token_storage == "keyring":
        return KeyringRefreshTokenStore(item, file_store, paths.keyring_marker)
    return file_store


class StoredRefreshToken(collections.namedtuple("StoredRefreshToken",
                                                "storage expires_at damaged",
                                                defaults=(False,))):
    """How the refresh token is stored (file, encrypted-file, keyring, or None: none), and
    its exp when it is a JWT that woci can read without a secret."""

    __slots__ = ()


def stored_refresh_token(paths: SessionPaths) -> StoredRefreshToken:
    """How the refresh token is stored, from the files alone: no keyring, no passphrase."""
    try:
        raw = read_file_if_present(paths.refresh_token)
    except StorageError:
        return StoredRefreshToken("file", None, True)
    if raw is not None:
        if is_encrypted_document(raw):
            return StoredRefreshToken("encrypted-file", None)
        text = plain_refresh_token(raw)
        if text is None:
            return StoredRefreshToken("file", None, True)
        return StoredRefreshToken("file", jwt_expiry_or_none(text))
    if os.path.exists(paths.keyring_marker):
        return StoredRefreshToken("keyring", None)
    return StoredRefreshToken(None, None)


# --- the OCI config file ---------------------------------------------------------------------


def split_config_lines(text: str) -> list[str]:
    """The lines with their endings, split exactly where configparser reading a file splits
    (universal newlines: \\n, \\r\\n, \\r), and nowhere else: str.splitlines also breaks at
    U+0085, U+2028 and form feeds, and woci would then see sections that oci does not."""
    lines: list[str] = []
    start = 0
    for index, char in enumerate(text):
        if char == "\n" or (char == "\r" and text[index + 1:index + 2] != "\n"):
            lines.append(text[start:index + 1])
            start = index + 1
    if start < len(text):
        lines.append(text[start:])
    return lines


def read_oci_config(path: str) -> tuple[str | None, configparser.ConfigParser]:
    """The OCI config's text (None when absent) and its parse, refusing one oci could not read."""
    import configparser

    raw = read_file_if_present(path)
    parser = configparser.ConfigParser(interpolation=None)
    if raw is None:
        return None, parser
    try:
        text = raw.decode("utf-8")
        parser.read_file(split_config_lines(text), source=str(path))
    except (UnicodeDecodeError, configparser.Error) as exc:
        raise ConfigError(f"OCI config {path} is not valid INI: {one_line(exc)}; "
                          "fix it first, woci changes nothing in it") from exc
    return text, parser


def profile_exists(config: configparser.ConfigParser, profile: str) -> bool:
    """configparser never lists DEFAULT as a section, but oci reads it like one."""
    return config.has_section(profile) or profile == DEFAULT_PROFILE


def _is_section_header(line: str) -> str | None:
    """The section a line opens, by configparser's rule (its SECTCRE, `\\[(?P<header>.+)\\]`,
    matched at the start of the stripped line): `[dev]   # a comment` opens dev too."""
    if line[:1].isspace():
        return None   # an indented line continues a value, as configparser reads it
    value = line.strip()
    end = value.rfind("]")
    return value[1:end] if value.startswith("[") and end > 1 else None


def _key_of(line: str) -> str | None:
    if not line.strip() or line[:1].isspace() or line.lstrip()[:1] in ("#", ";"):
        return None
    # configparser's rule: the key ends at the first '=' or ':', whichever comes first.
    cut = min((line.find(sep) for sep in ("=", ":") if sep in line), default=-1)
    return line[:cut].strip().lower() if cut >= 0 else None


def _section_bounds(lines: list[str], profile: str) -> tuple[int, int] | None:
    """The index of the profile's header line and of the line after its section, or None."""
    start = next((i for i, line in enumerate(lines) if _is_section_header(line) == profile), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if _is_section_header(lines[i])),
               len(lines))
    return start, end


def upsert_profile(text: str | None, profile: str, values: Mapping[str, str]) -> str:
    """The config text with the profile's keys set; every other byte stays as it was."""
    for what in (profile, *values.values()):
        if "\n" in what or "\r" in what:   # where configparser splits lines
            raise ConfigError(f"cannot write {what!r} to the OCI config of profile "
                              f"{profile!r}: it holds a line break")
    newline = "\r\n" if text and "\r\n" in text else "\n"
    lines = split_config_lines(text or "")
    bounds = _section_bounds(lines, profile)
    if bounds is None:
        out = "".join(lines)
        if out and not out.endswith(("\n", "\r")):
            out += newline
        if out.strip():
            out += newline
        out += f"[{profile}]{newline}"
        out += "".join(f"{key}={value}{newline}" for key, value in values.items())
        return out

    start, end = bounds
    section = lines[start + 1:end]
    pending = dict(values)
    kept: list[str] = []
    skipping_continuation = False
    for line in section:
        key = _key_of(line)
        if skipping_continuation and line[:1].isspace() and line.strip():
            continue  # the continuation lines of a value we replaced
        skipping_continuation = False
        if key in pending:
            ending = line[len(line.rstrip("\r\n")):] or newline
            kept.append(f"{key}={pending.pop(key)}{ending}")
            skipping_continuation = True
        else:
            kept.append(line)
    if pending:
        last_content = max((i for i, line in enumerate(kept) if line.strip()), default=-1)
        if last_content >= 0 and not kept[last_content].endswith(("\n", "\r")):
            kept[last_content] += newline
        additions = [f"{key}={value}{newline}" for key, value in pending.items()]
        kept[last_content + 1:last_content + 1] = additions
    return "".join(lines[:start + 1] + kept + lines[end:])


def remove_profile_keys(text: str, profile: str, keys: tuple[str, ...]) -> tuple[str, list[str]]:
    """The config text without these keys (and their continuation lines) in the profile's
    section, and the keys that were there; every other byte stays as it was."""
    lines = split_config_lines(text)
    bounds = _section_bounds(lines, profile)
    if bounds is None:
        return text, []
    start, end = bounds
    kept: list[str] = []
    removed: list[str] = []
    skipping_continuation = False
    for line in lines[start + 1:end]:
        if skipping_continuation and line[:1].isspace() and line.strip():
            continue
        skipping_continuation = False
        key = _key_of(line)
        if key in keys:
            if key not in removed:
                removed.append(key)
            skipping_continuation = True
        else:
            kept.append(line)
    return "".join(lines[:start + 1] + kept + lines[end:]), [k for k in keys if k in removed]


def write_oci_config(path: str, old_text: str | None, new_text: str) -> None:
    if old_text == new_text:
        return
    target = os.path.realpath(path)
    owner = None
    try:
        info = os.stat(target)
        # The user's file stays the user's, even written by a `sudo woci` that kept HOME.
        mode, owner = info.st_mode & 0o777, (info.st_uid, info.st_gid)
    except FileNotFoundError:
        mode = 0o600
        ensure_private_folder(os.path.dirname(target))
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {describe_os_error(exc)}") from exc
    atomic_write(target, new_text.encode("utf-8"), mode, owner)


# --- the OCI profile woci keeps: a pure policy, then one locked write ------------------------


def session_key_path(config: configparser.ConfigParser, profile: str, paths: SessionPaths,
                     environ: Mapping[str, str]) -> str:
    """The profile's own key_file when it lies in the session folder, else the session's."""
    if profile_exists(config, profile):
        configured = config.get(profile, "key_file", fallback=None)
        if configured:
            path = expand_home(configured, environ)
            if os.path.realpath(os.path.dirname(path)) == os.path.realpath(paths.folder):
                return path
    return paths.key


def profile_values(settings: Settings, paths: SessionPaths, config: configparser.ConfigParser,
                   key_path: str, upst: str, fingerprint: str | None) -> dict[str, str]:
    """What the profile must say for oci and the SDKs to use this session."""
    values = {"key_file": absolute(key_path), "security_token_file": absolute(paths.token)}
    if fingerprint:
        values["fingerprint"] = fingerprint
    tenant = jwt_claims_unverified(upst).get("tenant")
    if isinstance(tenant, str) and tenant:
        values["tenancy"] = tenant
    profile = settings.profile
    has_region = profile_exists(config, profile) and bool(
        config.get(profile, "region", fallback=None))
    # The INI's region is the profile's; a one-off --region must not change its default.
    if settings.region:
        values["region"] = settings.region
    elif settings.cli_region and not has_region:
        values["region"] = settings.cli_region
    return values


def points_at_session(values: Mapping[str, str], paths: SessionPaths,
                      environ: Mapping[str, str]) -> bool:
    """True when a profile's values name a key and this session's token file."""
    token_file = values.get("security_token_file", "")
    return bool(values.get("key_file")) and bool(token_file) and \
        expand_home(token_file, environ) == absolute(paths.token)


def profile_is_wired(config: configparser.ConfigParser, profile: str, paths: SessionPaths,
                     environ: Mapping[str, str]) -> bool:
    """True when the OCI profile already points at this session's token and has a key."""
    return profile_exists(config, profile) and points_at_session(config[profile], paths, environ)


def stored_key_fingerprint(paths: SessionPaths) -> str | None:
    """The fingerprint of the session's public key file, read without cryptography."""
    try:
        public_pem = read_file_if_present(paths.public_key)
        return md5_fingerprint(pem_body_der(public_pem)) if public_pem else None
    except (StorageError, ValueError):
        return None


def update_oci_profile(settings: Settings, paths: SessionPaths, environ: Mapping[str, str],
                       key_path: str, upst: str, fingerprint: str | None) -> None:
    """Point the profile at the session, applied to the file as it is now, under its lock:
    an edit another tool (or woci for another profile) made meanwhile is kept."""
    with ConfigLock(paths.root, settings.oci_config_file):
        text, config = read_oci_config(settings.oci_config_file)
        values = profile_values(settings, paths, config, key_path, upst, fingerprint)
        write_oci_config(settings.oci_config_file, text,
                         upsert_profile(text, settings.profile, values))


# What a session adds to a profile and --logout takes away again; tenancy and region stay.
SESSION_PROFILE_KEYS = ("security_token_file", "key_file", "fingerprint")


def forget_session_in_profile(config_file: str, profile: str, paths: SessionPaths,
                              environ: Mapping[str, str]) -> list[str]:
    """Remove SESSION_PROFILE_KEYS from the profile, under the config lock, when it points at
    this session (a profile with the user's own API key is not woci's); the keys removed."""
    folder = os.path.realpath(paths.folder)

    def in_session_folder(value: str) -> bool:
        return bool(value) and \
            os.path.realpath(os.path.dirname(expand_home(value, environ))) == folder

    def change(text: str | None, config: configparser.ConfigParser
               ) -> tuple[str | None, list[str]]:
        if text is None or not profile_exists(config, profile):
            return text, []
        pointing = [key for key in ("security_token_file", "key_file")
                    if in_session_folder(config.get(profile, key, fallback=""))]
        return remove_profile_keys(text, profile, SESSION_PROFILE_KEYS) if pointing else \
            (text, [])

    if not change(*read_oci_config(config_file))[1]:
        return []   # nothing to take away: no lock taken, no folder made for one
    with ConfigLock(paths.root, config_file):
        text, config = read_oci_config(config_file)
        new_text, removed = change(text, config)
        if removed and text is not None and new_text is not None:
            write_oci_config(config_file, text, new_text)
        return removed


# --------------------------------------------------------------------------------------------
# 5. The fast path: a valid session runs oci after reading two small files
# --------------------------------------------------------------------------------------------
# Everything here uses only what the top of the file imports. A run that cannot be answered
# here (a renewal is due, the profile is not wired, a mode or a tool) goes the full way,
# which reads the same files again with configparser and reports what is wrong.


def ini_sections(text: str, wanted: tuple[str, ...] | None) -> dict[str, dict[str, str]] | None:
    """The values of the wanted sections (None: all), split by the rules upsert_profile
    follows; None when the text holds anything this reader does not settle the way
    configparser would (a line that is no INI, a key before any section, a wanted section or
    key given twice, a value continued on more lines), so that the caller leaves the run to
    the full way."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    in_a_section = False
    for line in split_config_lines(text):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        header = _is_section_header(line)
        if header is not None:
            if header in sections:
                return None
            in_a_section = True
            current = sections.setdefault(header, {}) \
                if wanted is None or header in wanted else None
            continue
        if line[:1].isspace():
            if current is not None:
                return None   # a continued value: configparser joins the lines
            continue
        key = _key_of(line)
        if key is None or not in_a_section or (current is not None and key in current):
            return None
        if current is not None:
            cut = min(line.find(sep) for sep in ("=", ":") if sep in line)
            current[key] = line[cut + 1:].strip()
    return sections


def _read_text(path: str) -> str | None:
    try:
        return read_text_file(path)
    except (StorageError, UnicodeDecodeError):
        return None


def _fast_profile_points_here(config_file: str, profile: str, paths: SessionPaths,
                              environ: Mapping[str, str]) -> bool:
    """profile_is_wired without configparser: [DEFAULT] is every profile's base, as in oci."""
    text = _read_text(config_file)
    sections = ini_sections(text, (DEFAULT_PROFILE, profile)) if text is not None else None
    if sections is None or (profile not in sections and profile != DEFAULT_PROFILE):
        return False
    values = {**sections.get(DEFAULT_PROFILE, {}), **sections.get(profile, {})}
    return points_at_session(values, paths, environ)


def _holds_secret(text: str) -> bool:
    """A secret key in any section (or text this reader cannot settle): what the full way's
    chmod 600 warning looks for."""
    sections = ini_sections(text, None)
    return sections is None or any(key in SECRET_KEYS for values in sections.values()
                                   for key in values)


def _fast_settings(cmd: CommandLine, environ: Mapping[str, str], config_file: str,
                   profile: str) -> Settings | None:
    """build_settings on the manager INI as this section's reader sees it: the same checks,
    the same precedence; None for anything the full way should report (a file it cannot
    read, a key it does not know, a value it refuses, a setting missing, a secret in a file
    other users can read)."""
    candidates, explicit = manager_config_candidates(cmd, environ, config_file)
    path, values = None, {}
    for candidate in candidates:
        text = _read_text(candidate)
        if text is None and (explicit or os.path.exists(candidate)):
            return None   # the full way refuses it, or warns that it cannot read it
        if text is not None:
            sections = ini_sections(text, (COMMON_SECTION, profile))
            if sections is None:
                return None
            path = candidate
            values = {**sections.get(COMMON_SECTION, {}), **sections.get(profile, {})}
            break
    if set(values) - set(INI_KINDS):
        return None   # the full way warns about unknown keys
    if path is not None and open_to_others(path) and _holds_secret(text):
        return None   # the full way warns: run chmod 600
    try:
        return build_settings(cmd, environ, None, path, ini=values)
    except ConfigError:
        return None


# --- the OKE credential cache ----------------------------------------------------------------


def is_oke_token_request(oci_args: list[str]) -> bool:
    return oci_command_words(oci_args)[:3] == ["ce", "cluster", "generate-token"]


def credential_cache_key(config_file: str, profile: str, oci_args: list[str],
                         environ: Mapping[str, str]) -> list[str]:
    """What makes two kubectl calls the same: the config file, the profile, oci's arguments,
    and the OCI_CLI_* variables oci reads (OCI_CLI_REGION picks another cluster's region).
    Variables naming a secret are left out: the entry keeps its key in a file."""
    variables = sorted(f"{name}={value}" for name, value in environ.items()
                       if name.startswith("OCI_CLI_")
                       and not any(word in name for word in ("PASSPHRASE", "PASSWORD", "SECRET")))
    return [absolute(config_file), profile, *oci_args, "--environment", *variables]


def credential_cache_path(paths: SessionPaths, key: list[str]) -> str:
    # crc32 comes with base64 (binascii), where hashlib would load OpenSSL on every kubectl
    # call; the entry holds its whole key, so two keys with one crc are two misses, never
    # a wrong answer.
    import binascii

    digest = binascii.crc32(json.dumps(key).encode("utf-8"))
    return os.path.join(paths.credential_cache, f"{digest:08x}.json")


def cached_credential(paths: SessionPaths, key: list[str], now: float) -> bytes | None:
    """oci's stored answer for these arguments while it has more than 30 s left; None when
    there is none, it is about to expire, or the entry is unreadable in any way."""
    text = _read_text(credential_cache_path(paths, key))
    if text is None:
        return None
    try:
        entry = parse_json(text)
        expires_at, output = entry["expires_at"], entry["output"]
        if entry.get("key") != key or not isinstance(output, str):
            return None
        expires_at = epoch_or_none(expires_at)
        if expires_at is None or expires_at - now <= OKE_CACHE_MARGIN_SECONDS:
            return None
        return output.encode("utf-8")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeEncodeError):
        return None


# --- the decision ----------------------------------------------------------------------------


class FastAnswer(collections.namedtuple("FastAnswer", "oci_argv env output")):
    """What the fast path found to do: exec oci_argv with env, print output, or (both None)
    nothing at all."""

    __slots__ = ()


def fast_path(argv: list[str], environ: Mapping[str, str], now: float) -> FastAnswer | None:
    """The answer when the session is valid and nothing but oci is asked, else None.

    Whatever it cannot settle for certain (a bad argument, an unreadable file, a renewal
    due, an unwired profile, --auto-refresh, a secret on the command line that deserves its
    warning) is left to the full way.
    """
    try:
        cmd = split_command_line(argv)
        profile = resolve_profile(cmd, environ)
    except ConfigError:
        return None
    action = oci_action(cmd.oci_args)
    if cmd.mode is not Mode.RUN or cmd.secret_flags or cmd.woci.get("auto_refresh") or \
            action not in (OciAction.RUN, OciAction.NONE):
        return None
    paths = SessionPaths.for_profile(profile, environ)
    config_file = resolve_oci_config_file(cmd, environ)
    if is_oke_token_request(cmd.oci_args):
        if cmd.woci.get("no_cache"):
            return None
        output = cached_credential(paths, credential_cache_key(config_file, profile,
                                                                cmd.oci_args, environ), now)
        return FastAnswer(None, None, output) if output is not None else None
    if not session_is_fresh(read_session_token(paths), now, EXPIRY_MARGIN_SECONDS) or \
            not _fast_profile_points_here(config_file, profile, paths, environ):
        return None
    settings = _fast_settings(cmd, environ, config_file, profile)
    if settings is None or settings.auto_refresh:
        return None
    if action is OciAction.NONE:
        return FastAnswer(None, None, None)
    env = scrubbed_environment(environ, settings.refresh_token_passphrase_env)
    return FastAnswer(build_oci_argv(cmd.oci_args, profile), env, None)


def store_credential(paths: SessionPaths, key: list[str], output: bytes) -> None:
    """Keep oci's ExecCredential for later calls with the same arguments, until its
    status.expirationTimestamp; an answer without one is not kept."""
    import datetime

    try:
        text = output.decode("utf-8")
        stamp = parse_json(text)["status"]["expirationTimestamp"]
        moment = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log().info("not caching oci's answer: it has no readable expirationTimestamp (%s)",
                   type(exc).__name__)
        return
    entry = {"version": 1, "key": key, "expires_at": moment.timestamp(), "output": text}
    try:
        ensure_private_folder(paths.credential_cache)
        atomic_write(credential_cache_path(paths, key), json.dumps(entry).encode("utf-8"))
    except StorageError as exc:
        log().warning("cannot cache the OKE credential: %s", exc)


def clear_credential_cache(paths: SessionPaths) -> bool:
    """Forget every cached OKE credential of the profile (a new sign-in, a logout); True
    when there was a cache. A symlink (or a file) in its place is removed, never followed."""
    import shutil

    folder = paths.credential_cache
    try:
        if os.path.islink(folder) or not os.path.isdir(folder):
            os.unlink(folder)
        else:
            shutil.rmtree(folder)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError(f"cannot clear {paths.credential_cache}: "
                           f"{describe_os_error(exc)}") from exc


# --------------------------------------------------------------------------------------------
# 6. HTTP and OpenID Connect
# --------------------------------------------------------------------------------------------


class TokenResponse(collections.namedtuple("TokenResponse", "access_token refresh_token")):
    """A token endpoint's answer: the access token, and the refresh token if one came."""

    __slots__ = ()


def _no_netrc(request):
    """An auth hook that adds nothing: with it set, requests never reads ~/.netrc."""
    return request


def _short_cause(exc: BaseException) -> str:
    """The innermost reason of a requests failure, short enough for one line."""
    cause = exc
    while cause.__context__ is not None and cause.__context__ is not cause:
        cause = cause.__context__
    text = one_line(cause) or type(cause).__name__
    if "timed out" in text.lower():
        return "timed out"
    if "refused" in text.lower():
        return "connection refused"
    return text[:200]


def _parse_oauth_answer(response, body: bytes, url: str, what: str, skew: float | None,
                        any_success: bool = False, secrets: list[str] | None = None) -> dict:
    """The answer's JSON object. The server's words quoted in errors (and only they: never the
    URL or woci's own words) have the secrets sent taken out, before they are cut short (a
    secret cut in two would not be found)."""
    def said(value: object, limit: int) -> str:
        return plain_text(redacted(str(value), secrets or []), limit)

    note = clock_skew_note(skew, "the server")
    if 300 <= response.status_code < 400:
        # Never followed: a form holding a refresh token must not be sent on to elsewhere.
        where = said(response.headers.get("Location") or "nowhere", 200)
        raise HttpError(f"the {what} at {url} answered HTTP {response.status_code}, a "
                        f"redirect to {where}, which woci does not follow; set the URL it "
                        "points to, if it is right")
    if any_success and 200 <= response.status_code < 300:
        return {}   # RFC 7009: the body of a revocation's answer means nothing
    try:
        document = parse_json(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        ctype = said(response.headers.get("Content-Type", "no content type").split(";")[0], 80)
        raise HttpError(f"the {what} at {url} answered HTTP {response.status_code} with "
                        f"{ctype} instead of JSON; is the URL right?{note}")
    if response.status_code >= 400 or "error" in document:
        error = str(document.get("error") or f"HTTP {response.status_code}")
        description = said(document.get("error_description") or "", 300)
        detail = f"{said(error, 100)}: {description}" if description else said(error, 100)
        raise OAuthError(f"the {what} at {url} refused the request: {detail}{note}",
                         error, response.status_code)
    return document


def _sent_secrets(form: Mapping[str, str] | None, basic: tuple[str, str] | None) -> list[str]:
    """What a request carried that its answer must not quote to the user: the form's secret
    fields and the Basic password, as sent and URL-encoded, and the Basic credentials."""
    import urllib.parse

    values = [value for name, value in (form or {}).items() if name in SECRET_FORM_FIELDS]
    if basic:
        values.append(basic[1])
        values.append(base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode("ascii"))
    variants = (variant for value in values
                for variant in (value, urllib.parse.quote_plus(value), urllib.parse.quote(value)))
    return list(dict.fromkeys(variants))


def _too_slow(deadline: float) -> Exception:
    import requests

    return requests.exceptions.Timeout(f"no complete answer within {format_duration(deadline)}")


def _bound_next_wait(raw, left: float) -> None:
    """The next wait for a byte ends when the time left does (the read timeout is the socket's
    timeout, set by urllib3 again before every request on the connection)."""
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is not None:
        current = sock.gettimeout()
        sock.settimeout(left if current is None else min(left, current))


def _read_piece(raw) -> bytes:
    """What has come, up to a piece (read1, urllib3 2.3 and later); an older urllib3 has only
    read, which waits for the whole piece."""
    import requests
    import urllib3

    read = getattr(raw, "read1", None) or raw.read
    try:
        return read(HTTP_READ_PIECE_BYTES, decode_content=True)
    except urllib3.exceptions.ReadTimeoutError as exc:   # as requests' iter_content maps them
        raise requests.exceptions.ConnectionError(exc) from exc
    except urllib3.exceptions.SSLError as exc:
        raise requests.exceptions.SSLError(exc) from exc
    except urllib3.exceptions.DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from exc
    except urllib3.exceptions.ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc


def _read_body(response, ends_at: float, deadline: float, what: str, url: str) -> bytes:
    """The body, a piece at a time so that the deadline (ends_at, on time.monotonic) is seen
    between pieces, each wait bounded by the time left; at most HTTP_ANSWER_MAX_BYTES."""
    body = bytearray()
    while True:
        left = ends_at - time.monotonic()
        if left <= 0:
            raise _too_slow(deadline)
        _bound_next_wait(response.raw, left)
        try:
            piece = _read_piece(response.raw)
        except Exception:
            if time.monotonic() < ends_at:
                raise
            # The wait the time left bounded ran out. Raised outside this handler, so the
            # cause shown is the deadline, not a read timeout.
            piece = None
        if piece is None:
            raise _too_slow(deadline)
        if not piece:
            return bytes(body)
        body += piece
        if len(body) > HTTP_ANSWER_MAX_BYTES:
            raise HttpError(f"the {what} at {url} answered with more than "
                            f"{HTTP_ANSWER_MAX_BYTES} bytes; is the URL right?")


def _fetch(http, method: str, url: str, what: str, deadline: float,
           **request_args) -> tuple[object, bytes]:
    """One request and its whole answer (at most HTTP_ANSWER_MAX_BYTES) within deadline
    seconds. requests' read timeout bounds each wait for a byte, so a server or proxy that
    sends one now and then would hold woci for ever.

    The request runs in a thread, waited for until the deadline (Ctrl-C still ends the wait).
    The thread reads the body a piece at a time, each wait bounded by the time left, and
    closes the connection once the deadline has passed, so it ends with the deadline. Two
    cases it outlives: the headers, read by http.client, which woci cannot stop between lines
    (a server trickling them keeps the thread until a wait reaches the read timeout, or
    http.client's limit of 100 lines of 64 KiB is passed), and a body read by a urllib3
    older than 2.3, whose read waits for a whole piece.
    """
    import threading

    outcome: list = []
    ends_at = time.monotonic() + deadline

    def fetch() -> None:
        try:
            response = http.request(method, url, stream=True, **request_args)
            try:
                body = _read_body(response, ends_at, deadline, what, url)
            except BaseException:
                response.close()   # the connection too: nothing more is read from it
                raise
            outcome.append((response, body))
        except BaseException as exc:  # handed to the caller's thread, raised there
            outcome.append(exc)

    worker = threading.Thread(target=fetch, name="woci-http", daemon=True)
    worker.start()
    worker.join(deadline)
    if not outcome:
        raise _too_slow(deadline)
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def open_http():
    """One HTTP client for a renewal's calls: a grant and an exchange at one host (an OCI
    identity domain is both) then share a connection, and one TLS handshake."""
    import requests

    return requests.Session()


def _call_json(method: str, url: str, what: str, form: Mapping[str, str] | None,
               basic: tuple[str, str] | None, now: Callable[[], float],
               sleep: Callable[[float], None], jitter: Callable[[], float] | None,
               ca_bundle: str | None, any_success: bool = False, http=None) -> dict:
    import random

    import requests

    jitter = jitter or random.random
    own_client = http is None
    if own_client:
        http = open_http()
    # Without a bundle of its own, requests reads REQUESTS_CA_BUNDLE and proxies from env.
    tls = {"verify": ca_bundle} if ca_bundle else {}
    last_problem = ""
    skew: float | None = None
    # A server may quote the request in its answer (its body, its Authorization header):
    # whatever of the server's woci shows is shown without these.
    secrets = _sent_secrets(form, basic)
    try:
        for attempt in range(HTTP_ATTEMPTS):
            if attempt:
                log().info("retrying %s (%s)", what, last_problem)
            try:
                response, body = _fetch(
                    http, method, url, what, HTTP_ANSWER_MAX_SECONDS,
                    data=dict(form) if form is not None else None,
                    timeout=HTTP_TIMEOUT, headers={"Accept": "application/json"},
                    auth=basic if basic else _no_netrc, allow_redirects=False, **tls)
            except requests.exceptions.SSLError as exc:
                raise HttpError(f"TLS failure talking to the {what} at {url}: "
                                f"{redacted(_short_cause(exc), secrets)}") from exc
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                last_problem = redacted(_short_cause(exc), secrets)
                retry_after = None
            except requests.exceptions.RequestException as exc:
                raise HttpError(f"cannot call the {what} at {url}: "
                                f"{redacted(_short_cause(exc), secrets)}") from exc
            except UnicodeEncodeError:
                # requests encodes Basic credentials as Latin-1; its error would name the
                # character and its place in the secret.
                raise ConfigError(f"the client id or secret for the {what} at {url} holds a "
                                  "character HTTP Basic cannot carry (only Latin-1 ones); "
                                  "check the secret") from None
            else:
                skew = clock_skew_seconds(response.headers.get("Date"), now())
                log().debug("%s answered HTTP %s", what, response.status_code)
                if response.status_code not in RETRYABLE_STATUSES:
                    return _parse_oauth_answer(response, body, url, what, skew, any_success,
                                               secrets)
                last_problem = f"HTTP {response.status_code}"
                retry_after = response.headers.get("Retry-After")
            if attempt + 1 < HTTP_ATTEMPTS:
                # The retry on a new connection: behind a balancer that routes connections,
                # it may reach a server that works.
                http.close()
                sleep(retry_delay(attempt, retry_after, jitter))
    finally:
        if own_client:
            http.close()
    raise HttpError(f"the {what} at {url} failed {HTTP_ATTEMPTS} times, last with "
                    f"{last_problem}; try again later" + clock_skew_note(skew, "the server"))


def post_form(url: str, form: Mapping[str, str], what: str,
              basic: tuple[str, str] | None = None,
              now: Callable[[], float] = time.time,
              sleep: Callable[[float], None] = time.sleep,
              jitter: Callable[[], float] | None = None,
              ca_bundle: str | None = None, any_success: bool = False, http=None) -> dict:
    """POST a form and return the JSON answer, retrying what a retry can fix.

    Timeouts, refused connections, 429 and 5xx are retried with exponential backoff and
    jitter (honouring Retry-After). An OAuth error object raises OAuthError; anything else
    that is not JSON raises HttpError naming the endpoint. http: the renewal's open_http()
    client (None: one for this call).
    """
    return _call_json("POST", url, what, form, basic, now, sleep, jitter, ca_bundle,
                      any_success, http)


def get_json(url: str, what: str,
             now: Callable[[], float] = time.time,
             sleep: Callable[[float], None] = time.sleep,
             jitter: Callable[[], float] | None = None,
             ca_bundle: str | None = None, http=None) -> dict:
    """GET a JSON document (discovery), with post_form's timeouts, retries and TLS rules."""
    return _call_json("GET", url, what, None, None, now, sleep, jitter, ca_bundle, http=http)


def _client_auth(settings: Settings) -> tuple[str, str] | None:
    if settings.auth_client_secret:
        return settings.auth_client_id, settings.auth_client_secret
    return None


def _token_response(document: dict, url: str) -> TokenResponse:
    access_token = document.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise AuthError(f"the token endpoint at {url} answered without an access_token")
    refresh = document.get("refresh_token")
    if not isinstance(refresh, str) or not refresh:
        refresh = None
    return TokenResponse(access_token, refresh)


def redeem_code(settings: Settings, code: str, verifier: str,
                redirect_uri: str | None = None, http=None) -> TokenResponse:
    """The code grant; redirect_uri is the one the authorization request carried."""
    form = {"grant_type": "authorization_code", "code": code,
            "redirect_uri": redirect_uri or settings.redirect_uri,
            "client_id": settings.auth_client_id, "code_verifier": verifier}
    try:
        document = post_form(settings.token_url, form, "token endpoint", _client_auth(settings),
                             ca_bundle=settings.ca_bundle, http=http)
    except OAuthError as exc:
        raise AuthError(f"sign-in failed: {exc}") from exc
    return _token_response(document, settings.token_url)


def refresh_grant(settings: Settings, refresh_token: str, http=None) -> TokenResponse:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token,
            "client_id": settings.auth_client_id}
    try:
        document = post_form(settings.token_url, form, "token endpoint", _client_auth(settings),
                             ca_bundle=settings.ca_bundle, http=http)
    except OAuthError as exc:
        if exc.error == "invalid_grant":
            raise GrantRefused(f"the provider refused the stored refresh token ({exc.error})"
                               ) from exc
        raise AuthError(f"refresh failed: {exc}") from exc
    return _token_response(document, settings.token_url)


# --- discovery -------------------------------------------------------------------------------

# Settings field and the discovery document's name for it. A field Settings lacks is skipped.
DISCOVERED_ENDPOINTS = (("authz_base_url", "authorization_endpoint"),
                        ("token_url", "token_endpoint"),
                        ("device_authorization_url", "device_authorization_endpoint"),
                        ("revocation_url", "revocation_endpoint"))


def discovery_url(issuer: str) -> str:
    # OpenID Connect Discovery 1.0, section 4: a terminating "/" is removed before appending.
    return issuer.rstrip("/") + DISCOVERY_PATH


def endpoint_fits_issuer(endpoint: str, issuer: str) -> bool:
    """An https issuer's endpoints are https too: an http:// one would carry its secrets (and
    in the browser the user's password) in clear text."""
    return not issuer.lower().startswith("https://") or endpoint.lower().startswith("https://")


def unparsable_url(url: str) -> str | None:
    """Why urlsplit cannot take url apart (an unclosed IPv6 bracket, a port out of range), or
    None. A discovered endpoint is checked when the document is read: found later, at the
    sign-in, the problem would be blamed on a setting the user never set."""
    import urllib.parse

    try:
        urllib.parse.urlsplit(url).port   # the port is checked only when it is asked for
    except ValueError as exc:
        return one_line(exc)
    return None


def discovered_endpoint_problem(value: object, issuer: str) -> str | None:
    """Why an endpoint a discovery document (or woci's copy of one) names cannot be used, or
    None: the document as fetched and the copy read later pass the same checks."""
    if not isinstance(value, str) or not is_http_url(value):
        return "not an http(s) URL"
    problem = unparsable_url(value)
    if problem:
        return plain_text(problem, 100)
    if not endpoint_fits_issuer(value, issuer):
        return ("not https, for an https issuer, so woci does not use it; if that is really "
                "meant, set the endpoints in the manager INI instead of issuer")
    return None


def discovery_endpoints(document: object, issuer: str, url: str) -> dict[str, str]:
    """The endpoints a discovery document names; DiscoveryError unless it is the issuer's own
    (section 4.3: its issuer must be exactly the one configured)."""
    if not isinstance(document, dict):
        raise DiscoveryError(f"the discovery document at {url} is not a JSON object")
    said = document.get("issuer")
    if said != issuer:
        who = f"is for issuer {shown(said)}" if said is not None else "names no issuer"
        raise DiscoveryError(f"the discovery document at {url} {who}, not the configured "
                             f"{issuer!r}; set issuer to exactly the provider's issuer")
    endpoints = {}
    for _, name in DISCOVERED_ENDPOINTS:
        value = document.get(name)
        if value is None:
            continue
        problem = discovered_endpoint_problem(value, issuer)
        if problem:
            raise DiscoveryError(f"the discovery document at {url} names an unusable {name} "
                                 f"({shown(value)}): {problem}")
        endpoints[name] = value
    return endpoints


class CachedDiscovery(collections.namedtuple("CachedDiscovery", "endpoints age")):
    """The endpoints kept from a discovery document, and how old the copy is."""

    __slots__ = ()


def read_discovery_cache(path: str, issuer: str, now: float) -> CachedDiscovery | None:
    """The endpoints kept for issuer and their age; None when there is no usable copy (none,
    another issuer's, damaged, or dated in the future): it is only a copy."""
    try:
        raw = read_file_if_present(path)
        document = parse_json(raw) if raw is not None else None
    except (StorageError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("issuer") != issuer:
        return None
    fetched, endpoints = epoch_or_none(document.get("fetched_at")), document.get("endpoints")
    if fetched is None or not isinstance(endpoints, dict):
        return None
    if any(discovered_endpoint_problem(value, issuer) for value in endpoints.values()):
        return None
    age = now - fetched
    if age < -CLOCK_SKEW_TOLERANCE_SECONDS:
        return None
    return CachedDiscovery(endpoints, max(0.0, age))


def write_discovery_cache(path: str, issuer: str, endpoints: Mapping[str, str],
                          now: float) -> None:
    document = {"issuer": issuer, "fetched_at": now, "endpoints": dict(endpoints)}
    ensure_private_folder(os.path.dirname(path))
    atomic_write(path, json.dumps(document, indent=2).encode("utf-8"))


def discover(settings: Settings, path: str, now: Callable[[], float] = time.time,
             fetch: Callable[..., dict] = get_json, http=None) -> dict[str, str]:
    """The issuer's endpoints: the copy in path while it is less than a day old, else the
    document fetched now (and kept); when fetching fails, a copy up to a week old, with a
    warning."""
    issuer = settings.issuer
    assert issuer is not None
    cached = read_discovery_cache(path, issuer, now())
    if cached is not None and cached.age < DISCOVERY_FRESH_SECONDS:
        return cached.endpoints
    url = discovery_url(issuer)
    try:
        document = fetch(url, "discovery document", ca_bundle=settings.ca_bundle, http=http)
    except (HttpError, OAuthError) as exc:
        if cached is not None and cached.age < DISCOVERY_STALE_MAX_SECONDS:
            log().warning("using the copy of the discovery document from %s ago, as reading it "
                        "failed: %s", format_duration(cached.age), exc)
            return cached.endpoints
        old = (f" (the copy in {path} is {format_duration(cached.age)} old, too old to use)"
               if cached is not None else "")
        raise DiscoveryError(f"{exc}{old}") from exc
    endpoints = discovery_endpoints(document, issuer, url)
    try:
        write_discovery_cache(path, issuer, endpoints, now())
    except StorageError as exc:
        log().warning("cannot keep a copy of the discovery document: %s", exc)
    return endpoints


def endpoints_needed(settings: Settings, signing_in: bool) -> tuple[str, ...]:
    """The endpoint settings a renewal uses: the token endpoint, and the sign-in flow's."""
    if not signing_in:
        return ("token_url",)
    return ("token_url", "device_authorization_url" if settings.login_flow == "device"
            else "authz_base_url")


def in_clear_text_to_another_machine(url: str) -> bool:
    """http:// to a host that is not this machine: what is sent there crosses a network."""
    import ipaddress
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return False   # no request reaches it: the call that uses it says why
    if parts.scheme.lower() != "http":
        return False
    host = (parts.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def warn_of_clear_text(field: str, url: str) -> None:
    log().warning("%s %s is plain http to another machine: what woci (or you, in the browser) "
                  "sends there crosses the network in clear text; use its https URL", field, url)


def warn_of_clear_text_endpoints(settings: Settings) -> None:
    """One warning per plain-http endpoint on another machine (token_exchange_url defaults
    to token_url: one line for both)."""
    warned = set()
    for field in SECRET_BEARING_ENDPOINTS:
        url = getattr(settings, field)
        if url and url not in warned and in_clear_text_to_another_machine(url):
            warned.add(url)
            warn_of_clear_text(field, url)


def resolve_endpoints(settings: Settings, discovery_cache: str, signing_in: bool = True,
                      **seams) -> Settings:
    """The settings with every endpoint a renewal needs: explicit ones as they are, the others
    from discovery, read only when issuer is set and one of them is missing."""
    needed = endpoints_needed(settings, signing_in)
    if settings.issuer and not all(getattr(settings, field) for field in needed):
        if in_clear_text_to_another_machine(settings.issuer):
            log().warning("issuer %s is plain http to another machine: anyone on the network "
                          "can change the endpoints its discovery document names; use its "
                          "https URL", settings.issuer)
        endpoints = discover(settings, discovery_cache, **seams)
        fields = set(Settings._fields)
        settings = settings._replace(**{
            field: endpoints[name] for field, name in DISCOVERED_ENDPOINTS
            if field in fields and not getattr(settings, field) and name in endpoints})
        for field, name in DISCOVERED_ENDPOINTS:
            if field in needed and not getattr(settings, field):
                why = (" (the provider, or this client, may not offer the device flow)"
                       if field == "device_authorization_url" else "")
                raise ConfigError(f"the discovery document at {discovery_url(settings.issuer)} "
                                  f"names no {name}{why}; set {field} in the manager INI")
    if not settings.token_exchange_url:
        settings = settings._replace(token_exchange_url=settings.token_url)
    warn_of_clear_text_endpoints(settings)
    return settings


def revocation_endpoint(settings: Settings, discovery_cache: str | None = None) -> str | None:
    """Where --logout revokes the refresh token: the INI's revocation_url, else the issuer's
    revocation_endpoint from discovery (a failed discovery is a warning: None)."""
    if settings.revocation_url or not settings.issuer or discovery_cache is None:
        return settings.revocation_url or None
    try:
        return discover(settings, discovery_cache).get("revocation_endpoint")
    except WociError as exc:
        log().warning("%s", exc)
        return None


def revoke_refresh_token(settings: Settings, url: str, refresh_token: str) -> None:
    """RFC 7009: the provider ends the refresh token (and, at most providers, its grant)."""
    form = {"token": refresh_token, "token_type_hint": "refresh_token",
            "client_id": settings.auth_client_id}
    post_form(url, form, "revocation endpoint", _client_auth(settings),
              ca_bundle=settings.ca_bundle, any_success=True)


class Probe(collections.namedtuple("Probe", "status content_type oauth_error skew problem")):
    """What one credential-less request to an endpoint showed (--doctor): the HTTP status
    (None: no answer at all), the content type, the `error` of an OAuth JSON answer, this
    machine's clock minus the server's Date, and why there was no answer."""

    __slots__ = ()


def probe_endpoint(url: str, ca_bundle: str | None = None,
                   now: Callable[[], float] = time.time) -> Probe:
    """One POST of an empty form, no credentials, no retries: is anyone answering there?

    A token endpoint answers it with an OAuth error (invalid_request, invalid_client), which
    shows that it is reachable and speaks OAuth; nothing is spent and nothing is sent.
    """
    import requests

    tls = {"verify": ca_bundle} if ca_bundle else {}
    deadline = min(HTTP_ANSWER_MAX_SECONDS, sum(PROBE_TIMEOUT))
    try:
        with requests.Session() as session:
            response, body = _fetch(session, "POST", url, "endpoint", deadline, data={},
                                    timeout=PROBE_TIMEOUT, auth=_no_netrc,
                                    headers={"Accept": "application/json"},
                                    allow_redirects=False, **tls)
    except requests.exceptions.SSLError as exc:
        return Probe(None, "", None, None, f"TLS failure: {_short_cause(exc)}")
    except requests.exceptions.RequestException as exc:
        return Probe(None, "", None, None, _short_cause(exc))
    except HttpError as exc:
        return Probe(None, "", None, None, str(exc))
    try:
        document = parse_json(body)
    except ValueError:
        document = None
    error = document.get("error") if isinstance(document, dict) else None
    return Probe(response.status_code,   # the server's words, shown on one line each
                 plain_text(response.headers.get("Content-Type", "").split(";")[0].strip(), 80),
                 plain_text(error, 100) if error else None,
                 clock_skew_seconds(response.headers.get("Date"), now()), None)


# --- the browser sign-in ---------------------------------------------------------------------


class CallbackResult(collections.namedtuple("CallbackResult", "code error")):
    """The sign-in's answer at the callback: a code, or what went wrong."""

    __slots__ = ()


class AuthCode(collections.namedtuple("AuthCode", "code verifier redirect_uri")):
    """What a browser or manual sign-in yields: the code, the PKCE verifier, and the
    redirect_uri the authorization request carried (the code grant must repeat it)."""

    __slots__ = ()


CALLBACK_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>woci: {title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:34em;margin:4em auto;color:#222}}
h1{{font-size:1.4em}}</style></head>
<body><h1>{title}</h1><p>{message}</p></body></html>
"""


def callback_page(title: str, message: str) -> bytes:
    import html

    return CALLBACK_PAGE.format(title=html.escape(title), message=html.escape(message)).encode()


WRONG_STATE = ("This answer did not come from woci's sign-in (its state is wrong or missing), "
               "so woci ignored it. Finish the sign-in in the tab woci opened.")


def evaluate_callback(query: Mapping[str, list[str]], expected_state: str
                      ) -> CallbackResult | None:
    """What one request to the callback path means: None when it is not woci's answer.

    Any web page can make the browser send a request here; only the right state proves it
    came back from woci's own authorization request, so nothing else ends the sign-in.
    """
    import secrets

    state = (query.get("state") or [""])[0]
    if not secrets.compare_digest(state.encode(), expected_state.encode()):
        return None
    if query.get("error"):
        error = plain_text(query["error"][0], 100)
        description = plain_text((query.get("error_description") or [""])[0])
        return CallbackResult(None, f"the provider refused the sign-in: {error}"
                                    + (f": {description}" if description else ""))
    code = (query.get("code") or [""])[0]
    if not code:
        return CallbackResult(None, "the sign-in answer carried no authorization code")
    return CallbackResult(code, None)


def open_callback_server(port: int, path: str, state: str):
    """An HTTP server on 127.0.0.1:port whose first answer to path with the right state is
    the sign-in's result. Each connection has a thread of its own, so a client that sends a
    byte now and then cannot hold up the browser's answer or the deadline.

    http.server is imported here, not at the top: only a sign-in needs it, and importing it
    costs a run with a valid session a third of woci's start-up.
    """
    import http.server
    import threading
    import urllib.parse

    class CallbackServer(http.server.ThreadingHTTPServer):
        expected_path, expected_state = path, state
        daemon_threads = True
        block_on_close = False   # a dribbling client must not hold up the close
        result: CallbackResult | None = None

        def __init__(self, *args):
            super().__init__(*args)
            self.answered = threading.Event()
            self.taking = threading.Lock()
            self.forgeries_reported = threading.Event()

        def report_forgery(self) -> None:
            """Warn of the first request without the right state only: any local process can
            send them, and a line for each would scroll the sign-in URL out of sight."""
            if not self.forgeries_reported.is_set():
                self.forgeries_reported.set()
                log().warning("ignored a request to the sign-in callback that did not come "
                              "from this sign-in (wrong or missing state)")

        def take(self, result: CallbackResult) -> bool:
            """Keep the first result; two answers racing in two threads cannot both win."""
            with self.taking:
                if self.result is not None:
                    return False
                self.result = result
            self.answered.set()
            return True

        def handle_error(self, request, client_address) -> None:
            # Not socketserver's traceback on stderr, in the middle of the sign-in. A client
            # that resets or goes away (any local process can) is no news; anything else is
            # a fault in woci's handler, which may leave the sign-in waiting: said on one line.
            exc = sys.exc_info()[1] or Exception()
            if isinstance(exc, OSError):   # ConnectionError among them: resets, broken pipes
                log().debug("a connection to the sign-in callback failed: %s", one_line(exc))
            else:
                # The type only: the message of a fault may quote the request, its code too.
                log().warning("the sign-in callback could not handle a request (%s); if the "
                              "sign-in does not end, run woci again", type(exc).__name__)

    class CallbackHandler(http.server.BaseHTTPRequestHandler):
        server: CallbackServer
        # Browsers open idle preconnect sockets: their threads should not linger.
        timeout = 5.0

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            try:
                parts = urllib.parse.urlsplit(self.path)
            except ValueError:   # an unclosed IPv6 bracket: any local program can send one
                self._answer(400, callback_page("Bad request", "This is woci's sign-in "
                                                "callback."))
                return
            if parts.path != self.server.expected_path or self.server.answered.is_set():
                # favicon.ico and other strays: not our business, and not the end of the wait.
                self._answer(404, callback_page("Not found", "This is woci's sign-in callback."))
                return
            result = evaluate_callback(urllib.parse.parse_qs(parts.query),
                                       self.server.expected_state)
            if result is None or not self.server.take(result):
                self.server.report_forgery()
                self._answer(400, callback_page("Not woci's sign-in", WRONG_STATE))
            elif result.code:
                self._answer(200, callback_page("Signed in", "woci has what it needs. You can "
                                                "close this tab and go back to your terminal."))
            else:
                self._answer(400, callback_page("Sign-in failed", result.error or ""))

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's name
            # The request line holds the authorization code: never log it.
            log().debug("callback answered a request")

    try:
        return CallbackServer(("127.0.0.1", port), CallbackHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CallbackPortBusy(f"port {port} on 127.0.0.1 is in use, so the sign-in callback "
                                   "cannot listen there; close what uses it or set "
                                   "redirect_port") from exc
        raise AuthError(f"cannot listen on 127.0.0.1:{port} for the sign-in callback: "
                        f"{exc.strerror}") from exc


def wait_for_callback(server, timeout: float) -> CallbackResult:
    """Serve the callback until it has a result or timeout seconds pass, whatever clients do."""
    import threading

    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                               name="woci-callback", daemon=True)
    serving.start()
    try:
        answered = server.answered.wait(timeout)
    finally:
        server.shutdown()
    if not answered:
        raise AuthError(f"sign-in timed out after {format_duration(timeout)} waiting for "
                        "the browser to come back; run woci again (or raise login_timeout)")
    return server.result


def open_first_free_callback_server(ports: tuple[int, ...], path: str, state: str):
    """The callback server on the first of ports that is free, and that port."""
    busy = []
    for port in ports:
        try:
            return open_callback_server(port, path, state), port
        except CallbackPortBusy:
            if len(ports) == 1:
                raise
            log().info("port %d on 127.0.0.1 is in use; trying the next one", port)
            busy.append(port)
    raise CallbackPortBusy(f"ports {', '.join(map(str, busy))} on 127.0.0.1 are all in use, so "
                           "the sign-in callback cannot listen on any of them; close what uses "
                           "them, or add another port registered at the provider to "
                           "redirect_port")


def browser_command_argv(command: str) -> list[str]:
    """browser_command split as a shell would split it (no shell runs it)."""
    import shlex  # deferred: only a sign-in with a browser_command needs it

    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"browser_command {command!r} cannot be split into words: "
                          f"{exc}") from exc
    if not argv:
        raise ConfigError("browser_command is empty")
    return argv


def launch_browser(url: str, command: list[str] | None = None,
                   env: Mapping[str, str] | None = None) -> bool:
    """Open the URL from a helper process whose stdout is our stderr: command (browser_command)
    with the URL as its last argument, else Python's webbrowser, which honours $BROWSER. env
    is the helper's environment (woci's, without its secrets).

    stdout belongs to oci (kubectl parses it), and browser launchers print; some also wait
    for the browser to exit. A separate process keeps both away from woci, which may exec oci
    while the browser is still open.
    """
    import subprocess

    code = "import sys, webbrowser; sys.exit(0 if webbrowser.open(sys.argv[1]) else 1)"
    argv = [*command, url] if command else [sys.executable, "-c", code, url]
    try:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                         start_new_session=True, env=None if env is None else dict(env))
    except OSError as exc:
        what = f"browser_command {command[0]}" if command else "a browser"
        log().warning("cannot start %s: %s; open the URL above yourself", what,
                    exc.strerror or one_line(exc))
        return False
    return True


def authorization_url(settings: Settings, redirect_uri: str, state: str, challenge: str) -> str:
    params = {"response_type": "code", "client_id": settings.auth_client_id,
              "redirect_uri": redirect_uri, "scope": settings.scope, "state": state,
              "code_challenge": challenge, "code_challenge_method": "S256"}
    if settings.prompt:
        params["prompt"] = settings.prompt
    assert settings.authz_base_url is not None   # resolve_endpoints saw to it
    try:
        return add_query(settings.authz_base_url, params)
    except ValueError as exc:   # urlsplit: an unclosed IPv6 bracket, a host that is none
        raise ConfigError(f"authz_base_url {settings.authz_base_url!r} is not a usable URL: "
                          f"{exc}") from exc


def browser_sign_in(settings: Settings, open_browser: Callable[[str], bool] | None = None
                    ) -> AuthCode:
    """Authorization Code + PKCE in the browser, the callback on the first free port of
    redirect_port. open_browser defaults to browser_command, else Python's webbrowser."""
    import secrets
    import threading

    if open_browser is None:
        command = browser_command_argv(settings.browser_command) \
            if settings.browser_command else None
        env = scrubbed_environment(os.environ, settings.refresh_token_passphrase_env)
        open_browser = lambda url: launch_browser(url, command, env)  # noqa: E731
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(32)
    server, port = open_first_free_callback_server(settings.callback_ports,
                                                   settings.redirect_path, state)
    redirect_uri = settings.redirect_uri_for(port)
    url = authorization_url(settings, redirect_uri, state, challenge)
    try:
        print(f"woci: sign in for OCI profile {settings.profile} in your browser. If no browser "
              f"opens, visit:\n\n    {url}\n", file=sys.stderr, flush=True)
        # An injected opener may itself answer the callback: it must not block the wait.
        threading.Thread(target=open_browser, args=(url,), daemon=True).start()
        result = wait_for_callback(server, settings.login_timeout)
    finally:
        server.server_close()
    if result.error:
        raise AuthError(result.error)
    assert result.code is not None
    return AuthCode(result.code, verifier, redirect_uri)


def no_browser_here(settings: Settings, environ: Mapping[str, str],
                    platform: str = sys.platform) -> bool:
    """Plainly no browser to open: no browser_command, no $BROWSER, and on Linux no display
    (an SSH session, a container). Elsewhere the system opener is trusted."""
    return (not settings.browser_command and not environ.get("BROWSER")
            and platform.startswith("linux")
            and not environ.get("DISPLAY") and not environ.get("WAYLAND_DISPLAY"))


# --- the pasted sign-in (login_flow = manual) ------------------------------------------------


def read_pasted_line(timeout: float) -> str | None:
    """One line from stdin (a terminal or a pipe), without its newline; None at end of input,
    TimeoutError after timeout seconds. Read a byte at a time, so whatever follows the line
    is left for oci."""
    import select

    try:
        fd = sys.stdin.fileno() if sys.stdin is not None else -1
    except (OSError, ValueError):   # closed, or not a real file
        fd = -1
    if fd < 0:
        return None
    deadline = time.monotonic() + timeout
    data = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        try:
            ready, _, _ = select.select([fd], [], [], remaining)
            chunk = os.read(fd, 1) if ready else None
        except (OSError, ValueError):   # a terminal that went away
            return None
        if chunk is None:
            continue
        if chunk in (b"", b"\n"):
            return data.decode("utf-8", "replace") if data or chunk else None
        data += chunk
        if len(data) > PASTED_LINE_MAX_BYTES:
            raise AuthError(f"the pasted line is longer than {PASTED_LINE_MAX_BYTES} bytes; "
                            "paste only the address the browser was sent to, or the code")


PASTED_WRONG_STATE = ("the pasted address carries a wrong or missing state, so it is not the "
                      "answer to this sign-in (an older tab?); its code was not used and "
                      "nothing was saved; run woci again and paste the address the browser "
                      "ends on")


def parse_pasted_answer(text: str, expected_state: str) -> CallbackResult:
    """What a pasted line means: the address the browser was sent to (its state checked, as
    the callback checks it), or the bare authorization code."""
    import urllib.parse

    nonsense = CallbackResult(None, "what was pasted is neither the address the browser was "
                                    "sent to nor an authorization code; run woci again")
    text = text.strip().strip("\"'<>").strip()
    if "://" in text or text.startswith("/"):
        try:
            parts = urllib.parse.urlsplit(text)
        except ValueError:   # "http://[::1/..." and other addresses no browser was sent to
            return nonsense
        query = parts.query or parts.fragment
    elif text.startswith("?") or "=" in text:
        query = text.lstrip("?")
    else:
        code = urllib.parse.unquote(text)
        if not code or not is_one_word(code):
            return nonsense
        return CallbackResult(code, None)
    result = evaluate_callback(urllib.parse.parse_qs(query, keep_blank_values=True),
                               expected_state)
    return result if result is not None else CallbackResult(None, PASTED_WRONG_STATE)


def manual_sign_in(settings: Settings,
                   read_line: Callable[[float], str | None] = read_pasted_line,
                   now: Callable[[], float] = time.monotonic) -> AuthCode:
    """Authorization Code + PKCE with the browser anywhere: the URL on stderr, then one line
    on stdin, the address the browser ended on (nothing listens there) or the bare code."""
    import secrets

    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(32)
    redirect_uri = settings.redirect_uri   # nothing listens on it: the first registered port
    url = authorization_url(settings, redirect_uri, state, challenge)
    print(f"woci: sign in for OCI profile {settings.profile}: open this URL in a browser on any "
          f"machine:\n\n    {url}\n\nAfter you sign in, the browser is sent to {redirect_uri}?..."
          ", a page that will not load. Copy that whole address from the address bar (or just "
          "its code value) and paste it here:", file=sys.stderr, flush=True)
    deadline = now() + settings.login_timeout
    line = ""
    while not line.strip():
        try:
            pasted = read_line(max(0.0, deadline - now()))
        except TimeoutError:
            raise AuthError(f"sign-in timed out after {format_duration(settings.login_timeout)} "
                            "waiting for the address to be pasted; run woci again (or raise "
                            "login_timeout)") from None
        if pasted is None:
            raise AuthError("stdin ended before the sign-in answer was pasted; paste the "
                            "address the browser was sent to (or the code) on stdin")
        line = pasted
    result = parse_pasted_answer(line, state)
    if result.error:
        raise AuthError(result.error)
    assert result.code is not None
    return AuthCode(result.code, verifier, redirect_uri)


# --- the device flow (RFC 8628) --------------------------------------------------------------


class DeviceAuthorization(collections.namedtuple(
        "DeviceAuthorization", ("device_code user_code verification_uri "
                                "verification_uri_complete expires_in interval"))):
    """A device authorization answer (RFC 8628 section 3.2), checked and with defaults."""

    __slots__ = ()


def _seconds_or(value: object, default: float) -> float:
    """A positive, plausible number of seconds from a server, else default."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e7
    return float(value) if ok else default   # type: ignore[arg-type]


def _fit_for_terminal(value: object) -> bool:
    """Printable on one line as it is: no control characters (a server's escape sequences
    must not reach the user's terminal), no white space."""
    return isinstance(value, str) and 0 < len(value) <= 2048 and is_one_word(value)


def parse_device_authorization(document: dict, url: str, default_expiry: float
                               ) -> DeviceAuthorization:
    unusable = f"the device authorization endpoint at {url} answered without a usable"
    device_code = document.get("device_code")
    if not isinstance(device_code, str) or not device_code:
        raise AuthError(f"{unusable} device_code")
    user_code = document.get("user_code")
    if not _fit_for_terminal(user_code):
        raise AuthError(f"{unusable} user_code")
    # verification_url: the name in drafts of RFC 8628, still sent by some providers.
    uri = document.get("verification_uri") or document.get("verification_url")
    if not (_fit_for_terminal(uri) and is_http_url(uri)):   # type: ignore[arg-type]
        raise AuthError(f"{unusable} verification_uri")
    complete = document.get("verification_uri_complete")
    if not (_fit_for_terminal(complete) and is_http_url(complete)):   # type: ignore[arg-type]
        complete = None
    return DeviceAuthorization(device_code, user_code, uri, complete,  # type: ignore[arg-type]
                               _seconds_or(document.get("expires_in"), default_expiry),
                               min(DEVICE_MAX_INTERVAL_SECONDS,
                                   max(DEVICE_MIN_INTERVAL_SECONDS,
                                       _seconds_or(document.get("interval"),
                                                   DEVICE_DEFAULT_INTERVAL_SECONDS))))


def _device_grant_hint(settings: Settings, exc: OAuthError) -> str:
    if exc.error in ("unauthorized_client", "unsupported_grant_type", "invalid_client"):
        return (f" (is the device authorization grant enabled for client "
                f"{settings.auth_client_id} at the provider?)")
    return ""


def request_device_authorization(settings: Settings, http=None) -> DeviceAuthorization:
    url = settings.device_authorization_url
    assert url is not None   # build_settings or resolve_endpoints saw to it
    try:
        document = post_form(url, {"client_id": settings.auth_client_id,
                                   "scope": settings.scope},
                             "device authorization endpoint", _client_auth(settings),
                             ca_bundle=settings.ca_bundle, http=http)
    except OAuthError as exc:
        raise AuthError(f"the device sign-in could not start: {exc}"
                        f"{_device_grant_hint(settings, exc)}") from exc
    return parse_device_authorization(document, url, settings.login_timeout)


def show_device_code(settings: Settings, device: DeviceAuthorization, wait: float) -> None:
    lines = [f"woci: to sign in for OCI profile {settings.profile}, open this page in a browser "
             "on any device:", "", f"    {device.verification_uri}", "",
             f"and enter the code: {device.user_code}", ""]
    if device.verification_uri_complete:
        lines += ["Or open this link, which fills in the code:", "",
                  f"    {device.verification_uri_complete}", ""]
    lines.append(f"woci: waiting for the sign-in (at most {format_duration(wait)})...")
    print("\n".join(lines), file=sys.stderr, flush=True)


def device_sign_in(settings: Settings, now: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep, http=None) -> TokenResponse:
    """RFC 8628: the user code and where to enter it on stderr, then the token endpoint
    polled every interval (5 s more after each slow_down) until the sign-in is approved,
    denied, or its code expires; bounded by login_timeout. No browser is opened here."""
    device = request_device_authorization(settings, http)
    token_url = settings.token_url
    assert token_url is not None   # resolve_endpoints saw to it
    started = now()
    expires_at = started + device.expires_in
    deadline = min(expires_at, started + settings.login_timeout)
    show_device_code(settings, device, deadline - started)
    form = {"grant_type": DEVICE_CODE_GRANT, "device_code": device.device_code,
            "client_id": settings.auth_client_id}
    expired = AuthError("the code expired before the sign-in was approved at the provider; "
                        "run woci again")
    interval = device.interval
    while True:
        if now() + interval > deadline:   # the next poll would come too late
            if deadline >= expires_at:
                raise expired
            raise AuthError(f"sign-in timed out after {format_duration(settings.login_timeout)} "
                            "waiting for the sign-in to be approved at the provider; run woci "
                            "again (or raise login_timeout)")
        sleep(interval)
        try:
            document = post_form(token_url, form, "token endpoint", _client_auth(settings),
                                 ca_bundle=settings.ca_bundle, http=http)
        except OAuthError as exc:
            if exc.error == "authorization_pending":
                continue
            if exc.error == "slow_down":
                interval += DEVICE_SLOW_DOWN_SECONDS
                log().info("the provider asked to poll more slowly: every %s now",
                         format_duration(interval))
                continue
            if exc.error == "access_denied":
                raise AuthError("the sign-in was denied at the provider (access_denied); "
                                "nothing was saved") from exc
            if exc.error == "expired_token":
                raise expired from exc
            raise AuthError(f"sign-in failed: {exc}{_device_grant_hint(settings, exc)}"
                            ) from exc
        return _token_response(document, token_url)


# --------------------------------------------------------------------------------------------
# 7. Token exchange: the session key and the UPST
# --------------------------------------------------------------------------------------------


def load_private_key(path: str):
    from cryptography.hazmat.primitives import serialization

    raw = read_file_if_present(path)
    if raw is None:
        return None
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        log().warning("the session key %s is unusable (%s); making a new one", path,
                    one_line(exc) or type(exc).__name__)
        return None
    from cryptography.hazmat.primitives.asymmetric import rsa

    if not isinstance(key, rsa.RSAPrivateKey):
        log().warning("the session key %s is not an RSA key; making a new one", path)
        return None
    make_private(path, "the session key")   # renewals keep it: it must be private from now on
    return key


def new_private_key():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)


def private_key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_der(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def check_upst(upst: str, key, url: str, now: float) -> None:
    """Refuse a UPST that oci, or woci later, could not use safely: not printable ASCII, no
    integer exp or one more than a day ahead, or bound to another key than ours."""
    unusable = f"the OCI token exchange at {url} answered with an unusable token"
    if not (upst.isascii() and is_one_word(upst)):
        raise ExchangeError(f"{unusable} (it is not printable ASCII); nothing was saved")
    try:
        claims = jwt_claims_unverified(upst)
        exp = jwt_expiry(upst)
    except ValueError as exc:
        raise ExchangeError(f"{unusable} ({exc}); nothing was saved") from exc
    if exp > now + UPST_MAX_LIFETIME_SECONDS:
        raise ExchangeError(f"{unusable} (its exp lies more than a day ahead); nothing was saved")
    tenant = claims.get("tenant")
    if isinstance(tenant, str) and not tenant.isprintable():
        # It becomes the profile's tenancy line: a line break would write other lines.
        raise ExchangeError(f"{unusable} (its tenant claim holds a line break or a control "
                            "character); nothing was saved")
    jwk = claims.get("jwk")
    if jwk is None:
        return
    from jwt.algorithms import RSAAlgorithm

    try:
        bound = RSAAlgorithm.from_jwk(jwk if isinstance(jwk, str) else json.dumps(jwk))
        matches = bound.public_numbers() == key.public_key().public_numbers()
    except Exception as exc:  # PyJWT raises several types for a malformed JWK
        raise ExchangeError(f"the OCI token exchange at {url} answered with a token whose jwk "
                            f"claim is unreadable ({type(exc).__name__})") from exc
    if not matches:
        raise ExchangeError(f"the OCI token exchange at {url} answered with a token bound to "
                            "another key than the one woci sent; nothing was saved")


def request_upst(settings: Settings, access_token: str, key,
                 now: Callable[[], float] = time.time, http=None) -> str:
    """Exchange the provider's access token (never the ID token) for a UPST bound to key."""
    form = {"grant_type": TOKEN_EXCHANGE_GRANT, "requested_token_type": UPST_TOKEN_TYPE,
            "subject_token": access_token, "subject_token_type": "jwt",
            "public_key": base64.b64encode(public_key_der(key)).decode("ascii")}
    try:
        document = post_form(settings.token_exchange_url, form, "OCI token exchange",
                             (settings.client_id, settings.client_secret),
                             ca_bundle=settings.ca_bundle, http=http)
    except OAuthError as exc:
        raise ExchangeError(str(exc)) from exc
    upst = document.get("token")
    if not isinstance(upst, str) or not upst:
        raise ExchangeError(f"the OCI token exchange at {settings.token_exchange_url} answered "
                            "without a token")
    check_upst(upst, key, settings.token_exchange_url, now())
    return upst


# --------------------------------------------------------------------------------------------
# 8. The session: getting a valid UPST onto disk
# --------------------------------------------------------------------------------------------


class Renewal(enum.Enum):
    """How far ensure_session goes even when the session is still valid."""

    IF_NEEDED = "if-needed"
    REFRESH = "refresh"    # `session refresh`: renew now (a sign-in if the refresh token fails)
    SIGN_IN = "sign-in"    # `session authenticate`: a fresh sign-in


class Session(collections.namedtuple(
        "Session", ("settings environ paths refresh_tokens can_sign_in open_browser now "
                    "stdin_is_tty read_line"),
        defaults=(None, time.time, stdin_is_terminal, read_pasted_line))):
    """One profile's session and what may be done to renew it.

    can_sign_in is decided once, by whoever opens the session: false when the settings say
    nobody is there (--non-interactive, CI) and in the background (the daemon, the
    auto-refresh thread), where nobody could answer a browser. open_browser (None:
    browser_command or Python's webbrowser), now, stdin_is_tty and read_line are the seams
    tests replace.
    """

    __slots__ = ()

    @classmethod
    def open(cls, settings: Settings, environ: Mapping[str, str],
             passphrase: PassphraseSource | None = None, background: bool = False,
             **seams) -> "Session":
        paths = SessionPaths.for_profile(settings.profile, environ)
        store = refresh_token_store(settings, paths,
                                    passphrase or PassphraseSource(settings, environ))
        return cls(settings, environ, paths, store,
                   can_sign_in=settings.interactive and not background, **seams)

    def in_background(self) -> "Session":
        """The same session for a renewer that nobody watches: it never signs in."""
        return self._replace(can_sign_in=False)

    @property
    def passphrase(self) -> PassphraseSource:
        return self.refresh_tokens.passphrase


def sign_in_hint(settings: Settings, environ: Mapping[str, str]) -> str:
    """The one line of SignInNeeded. The command it names must reach the same files: an OCI
    config or a manager INI that a plain `woci` in a terminal would not find is named."""
    import shlex

    default_folder = os.path.join(home_folder(environ), ".oci")
    config, manager = str(settings.oci_config_file), settings.manager_config_file
    manager = str(manager) if manager else None
    where = ""
    if config != os.path.join(default_folder, "config"):
        where += f" --config-file {shlex.quote(config)}"
    if manager and manager not in (os.path.join(os.path.dirname(config), MANAGER_INI_NAME),
                                   os.path.join(default_folder, MANAGER_INI_NAME)):
        where += f" --manager-config {shlex.quote(manager)}"
    return (f"a sign-in is needed for OCI profile {settings.profile} and nobody can answer it "
            f"here; run `woci --profile {settings.profile} session authenticate{where}` in a "
            "terminal (add --login-flow device where no browser can reach this machine), then "
            "try again")


def _profile_points_here(session: Session) -> bool:
    try:
        _, config = read_oci_config(session.settings.oci_config_file)
    except WociError:
        return False
    return profile_is_wired(config, session.settings.profile, session.paths, session.environ)


def _point_profile_here(session: Session, token: str | None) -> None:
    """Point the profile at a session another woci just made, if it does not yet."""
    if not token or _profile_points_here(session):
        return
    _, config = read_oci_config(session.settings.oci_config_file)
    key_path = session_key_path(config, session.settings.profile, session.paths, session.environ)
    update_oci_profile(session.settings, session.paths, session.environ, key_path, token,
                       stored_key_fingerprint(session.paths))


def _prepare_refresh_token_storage(session: Session, refreshing: bool = True) -> None:
    """Obtain the passphrase before any grant: a refresh token is never spent when its
    successor could not be stored. An encrypted token is never silently replaced by a
    plain one, nor by one under a passphrase that does not open it."""
    store = session.refresh_tokens
    encrypted = store.holds_encrypted()
    if store.passphrase.configured:
        # Asked twice unless it opens an existing file: a typo would lock the user out.
        store.passphrase.get(creating=not encrypted)
        if encrypted and not refreshing:
            # The refresh would open the file with it; a sign-in must try too, or a mistyped
            # (so unconfirmed) passphrase would encrypt the new token. A damaged file is
            # what the sign-in replaces.
            try:
                store.load()
            except WrongPassphrase as exc:
                raise WrongPassphrase(f"{exc}; nothing was changed (to start over without "
                                      f"it: woci --profile {session.settings.profile} "
                                      "--logout)") from exc
            except RefreshTokenError:
                pass
    elif encrypted:
        raise RefreshTokenError(
            f"the refresh token {store.path} is encrypted and no passphrase is configured: "
            "set refresh_token_passphrase_env or refresh_token_passphrase_prompt (or run "
            f"`woci --profile {session.settings.profile} --logout` to start over unencrypted)")


def _refresh_grant_or_none(settings: Settings, refresh_token: str, http) -> TokenResponse | None:
    try:
        return refresh_grant(settings, refresh_token, http)
    except GrantRefused:
        return None


def keep_refresh_token(store, token: str) -> None:
    """Save a newly issued refresh token. One the store cannot give back as it was replaces
    the stored one with none: that one is spent (or another sign-in's), and presenting it
    again can make the provider revoke the whole family; the next renewal signs in."""
    if store.can_hold(token):
        store.save(token)
        return
    log().warning("the provider issued a refresh token the plain file %s cannot hold (white "
                  "space, control or non-ASCII characters; an encrypted or keyring store can); "
                  "the next renewal will need a sign-in", store.path)
    store.forget()


def _refresh(session: Session, http) -> TokenResponse | None:
    """The refresh grant with the stored token, its successor saved at once (before the
    exchange can fail); None when only a sign-in can help."""
    store = session.refresh_tokens
    presented = store.load()
    if presented is None:
        log().info("no refresh token stored for profile %s", session.settings.profile)
        return None
    # A provider that does not rotate never replaces the file: it must be private now.
    make_private(session.paths.refresh_token, "the refresh token")
    tokens = _refresh_grant_or_none(session.settings, presented, http)
    if tokens is None:
        again = store.load()
        if again is not None and again != presented:
            log().info("the refresh token was rotated by another process; retrying with it")
            presented, tokens = again, _refresh_grant_or_none(session.settings, again, http)
    if tokens is None:
        log().warning("the provider refused the stored refresh token; a new sign-in is needed")
        return None
    if tokens.refresh_token and tokens.refresh_token != presented:
        keep_refresh_token(store, tokens.refresh_token)
    log().info("renewing the session of profile %s without a browser", session.settings.profile)
    return tokens


def login_flow_here(session: Session) -> str:
    """The configured login_flow, but manual for browser when there is plainly no browser
    here and someone at a terminal can paste the answer."""
    settings = session.settings
    if (settings.login_flow == "browser" and session.stdin_is_tty()
            and no_browser_here(settings, session.environ)):
        print("woci: no browser here (no browser_command, no $BROWSER, no DISPLAY or "
              "WAYLAND_DISPLAY), so signing in with login_flow = manual; set login_flow = "
              "device, or browser_command, to choose", file=sys.stderr)
        return "manual"
    return settings.login_flow


def _sign_in(session: Session, http) -> TokenResponse:
    if not session.can_sign_in:
        raise SignInNeeded(sign_in_hint(session.settings, session.environ))
    settings = session.settings
    flow = login_flow_here(session)
    if flow == "device":
        tokens = device_sign_in(settings, http=http)
    else:
        grant = (manual_sign_in(settings, session.read_line) if flow == "manual"
                 else browser_sign_in(settings, session.open_browser))
        tokens = redeem_code(settings, grant.code, grant.verifier, grant.redirect_uri, http)
    if tokens.refresh_token:
        keep_refresh_token(session.refresh_tokens, tokens.refresh_token)
    else:
        log().warning("the provider issued no refresh token (was offline_access granted? "
                    "some providers want prompt = consent); the next renewal will need "
                    "the browser again")
    clear_credential_cache(session.paths)   # the credentials of whoever signed in before
    return tokens


def _complete(session: Session, config: configparser.ConfigParser, access_token: str,
              http) -> None:
    """Exchange the access token and write key, token and profile, in that order."""
    settings, paths = session.settings, session.paths
    ensure_private_folder(paths.folder)
    key_path = session_key_path(config, settings.profile, paths, session.environ)
    key = load_private_key(key_path)
    created = key is None
    if created:
        key = new_private_key()
    upst = request_upst(settings, access_token, key, session.now, http)
    iat = epoch_or_none(jwt_claims_unverified(upst).get("iat"))
    if iat is not None:
        note = clock_skew_note(session.now() - iat, "OCI")
        if note:
            log().warning("the new session token was issued at a time that%s", note)
    if created:
        atomic_write(key_path, private_key_pem(key))
    atomic_write(paths.public_key, public_key_pem(key))
    atomic_write(paths.token, upst.encode("ascii"))
    update_oci_profile(settings, paths, session.environ, key_path, upst,
                       md5_fingerprint(public_key_der(key)))


def ensure_session(session: Session, min_validity: float = EXPIRY_MARGIN_SECONDS,
                   renewal: Renewal = Renewal.IF_NEEDED) -> TokenState:
    """A session valid for min_validity more seconds. The ladder:

    1. The UPST is valid for longer than min_validity and the profile points at it: nothing
       to do (no lock, no network; requests and cryptography are not imported).
    2. Nobody can sign in and no refresh token is stored: SignInNeeded at once, without
       waiting for a lock another woci may hold for its own sign-in.
    3. Take the profile lock and look again: another woci may have renewed it meanwhile.
    4. Move the refresh token between file and keyring if refresh_token_storage changed.
       With issuer set and an endpoint missing, read the provider's discovery document (the
       copy kept in the session folder while it is fresh). Make sure a new refresh token
       could be stored (the passphrase, if one is configured) before any grant spends the
       old one.
    5. A refresh token is stored: refresh grant (a refused token is re-read once: another
       process may have rotated it), the rotated token saved at once.
    6. Otherwise, or when the provider refused it: a sign-in by login_flow (browser, device
       code, or pasted answer), or SignInNeeded when nobody can answer one.
    7. Exchange the access token for a UPST, write key, token and profile.
    """
    settings, paths = session.settings, session.paths
    if renewal is Renewal.IF_NEEDED:
        state = read_session_token(paths)
        if session_is_fresh(state, session.now(), min_validity) and _profile_points_here(session):
            return state
    if not session.can_sign_in and not session.refresh_tokens.stored():
        raise SignInNeeded(sign_in_hint(settings, session.environ))
    with ProfileLock(paths.lock, settings.login_timeout + LOCK_GRACE_SECONDS, settings.profile):
        state = read_session_token(paths)
        if renewal is Renewal.IF_NEEDED and session_is_fresh(state, session.now(), min_validity):
            _point_profile_here(session, state.token)
            return state
        if state.problem:
            log().warning("%s; getting a new one", state.problem)
        # An OCI config woci could not update must stop it before a refresh or a sign-in.
        _, config = read_oci_config(settings.oci_config_file)
        session.refresh_tokens.settle()   # file <-> keyring, as refresh_token_storage says
        with open_http() as http:
            session = session._replace(settings=resolve_endpoints(
                settings, paths.discovery, signing_in=session.can_sign_in, http=http))
            _prepare_refresh_token_storage(session, refreshing=renewal is not Renewal.SIGN_IN)
            tokens = None if renewal is Renewal.SIGN_IN else _refresh(session, http)
            if tokens is None:
                tokens = _sign_in(session, http)
            _complete(session, config, tokens.access_token, http)
        return read_session_token(paths)


# --------------------------------------------------------------------------------------------
# 9. Background refresh: the auto-refresh thread and the daemon
# --------------------------------------------------------------------------------------------

def renewal_lead(state: TokenState, safety_window: float) -> float:
    """How long before exp to renew: the safety window, but never earlier than two thirds
    into the token's life, so a short-lived UPST is not renewed over and over."""
    if not state.token or state.expires_at is None:
        return safety_window
    issued_at = epoch_or_none(jwt_claims_unverified(state.token).get("iat"))
    if issued_at is not None and state.expires_at > issued_at:
        return min(safety_window, (state.expires_at - issued_at) / 3)
    return safety_window


# Failures that waiting cannot fix: the background must stop and say what to do.
FATAL_IN_BACKGROUND = (SignInNeeded, RefreshTokenError, ConfigError)


class RenewalRecord(collections.namedtuple("RenewalRecord", "time ok message")):
    """The outcome of the background's last renewal, as --daemon-status shows it."""

    __slots__ = ()


class Renewer:
    """Renews a session before it expires; shared by the auto-refresh thread and the daemon.

    It reads the wall clock at every step instead of trusting how long it slept: a laptop
    that was suspended wakes past the renewal time and renews at once. It never signs in.
    """

    def __init__(self, session: Session, safety_window: float,
                 ensure: Callable[..., TokenState] = ensure_session):
        self.session = session.in_background()
        self.safety_window, self.ensure = safety_window, ensure
        self.now = session.now
        self.failures = 0
        self.last: RenewalRecord | None = None

    def read_token(self) -> TokenState:
        return read_session_token(self.session.paths)

    def step(self) -> float:
        """Renew if due; the seconds to wait before the next step. Raises FATAL_IN_BACKGROUND."""
        state = self.read_token()
        lead = renewal_lead(state, self.safety_window)
        if state.expires_at is None or state.expires_at - self.now() <= lead:
            try:
                state = self.ensure(self.session, min_validity=lead)
            except FATAL_IN_BACKGROUND:
                raise
            except WociError as exc:
                return self.back_off(str(exc))
            if self.next_due(state) <= self.now():
                # Judged by the new token's own lead (its life may differ from the old one's):
                # renewing again at once would spend a grant and an exchange in a loop.
                valid_until = "no time" if state.expires_at is None else \
                    format_timestamp(state.expires_at)
                return self.back_off(
                    f"the new session token is due for renewal again at once (valid until "
                    f"{valid_until}): it lives less than refresh_safety_window, or this "
                    "machine's clock is off")
            self.failures = 0
            valid_until = format_timestamp(state.expires_at or 0)
            self.last = RenewalRecord(self.now(), True, f"valid until {valid_until}")
            log().info("session of profile %s valid until %s", self.session.settings.profile,
                     valid_until)
        return max(0.0, min(self.next_due(state) - self.now(), BACKGROUND_MAX_SLEEP_SECONDS))

    def back_off(self, problem: str) -> float:
        """Record a failed renewal; the seconds to wait before the next try (doubling)."""
        self.failures += 1
        self.last = RenewalRecord(self.now(), False, problem)
        delay = min(BACKGROUND_RETRY_MAX_SECONDS,
                    BACKGROUND_RETRY_FIRST_SECONDS * 2 ** (self.failures - 1))
        log().warning("renewal failed, retrying in %s: %s", format_duration(delay), problem)
        return delay

    def next_due(self, state: TokenState) -> float:
        if state.expires_at is None:
            return self.now()
        return state.expires_at - renewal_lead(state, self.safety_window)


class AutoRefresher:
    """Keeps the session fresh in a thread while a wrapped command runs; stops on a fatal
    failure."""

    def __init__(self, renewer: Renewer):
        import threading

        self.renewer = renewer
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="woci-auto-refresh", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                wait = self.renewer.step()
            except WociError as exc:
                log().error("auto-refresh stopped: %s", exc)
                return
            self.stopping.wait(wait)

    def stop(self) -> None:
        """Let a renewal in flight finish: cut off, it could lose a rotated refresh token."""
        self.stopping.set()
        self.thread.join(timeout=RENEWAL_MAX_SECONDS)


# --- the daemon -------------------------------------------------------------------------------


# Failures a renewal child may report, by name; anything else arrives as a plain WociError.
CHILD_FAILURES = {cls.__name__: cls for cls in (SignInNeeded, RefreshTokenError, WrongPassphrase,
                                                ConfigError, AuthError, HttpError,
                                                ExchangeError, StorageError)}


def ensure_in_child(session: Session, min_validity: float = EXPIRY_MARGIN_SECONDS,
                    renewal: Renewal = Renewal.IF_NEEDED) -> TokenState:
    """ensure_session in a forked child that reports back through a pipe.

    The daemon lives for days and renews a few times an hour: doing each renewal in a child
    keeps requests, cryptography and their memory out of the long-lived process. The child
    shares the daemon's memory as it was, the passphrase included, and nothing else.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:   # whatever happens in here, this process ends at os._exit: never in main()
            os.close(read_fd)
            report = {"ok": True}
            try:
                ensure_session(session, min_validity, renewal)
            except WociError as exc:
                report = {"ok": False, "kind": type(exc).__name__, "message": str(exc),
                          "exit_code": exc.exit_code}
            except KeyboardInterrupt:
                report = {"ok": False, "kind": "WociError", "message": "interrupted",
                          "exit_code": EXIT_INTERRUPTED}
            except BaseException:  # the log is all a detached process has
                log().exception("the renewal crashed")
                report = {"ok": False, "kind": "WociError", "message": "the renewal crashed"}
            try:
                os.write(write_fd, json.dumps(report).encode())
            except OSError:
                pass   # the parent is gone (interrupted): nobody to tell
        finally:
            os._exit(EXIT_OK)
    os.close(write_fd)
    chunks = []
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            chunks.append(pipe.read())
    finally:
        # Interrupted or not, the renewal finishes (or stops on the same Ctrl-C) before this
        # process goes on: a child left behind could still be spending a refresh token.
        os.waitpid(pid, 0)
    try:
        report = parse_json(b"".join(chunks) or b"null")
        ok, kind, message = report["ok"], report.get("kind"), str(report.get("message"))
        exit_code = report.get("exit_code") if isinstance(report.get("exit_code"), int) else None
    except (ValueError, TypeError, KeyError):
        ok, kind, message, exit_code = False, None, "the renewal process ended without a word", None
    if not ok:
        raise CHILD_FAILURES.get(kind, WociError)(message, exit_code)
    return read_session_token(session.paths)



class PidFile:
    """The daemon's pid file, flock-ed by the daemon for its whole life.

    The lock, not the pid, says whether a daemon runs: a stale file whose pid was reused by
    another process is never mistaken for a live daemon.
    """

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Lock and write our pid; False if a live daemon holds it."""
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            # A --daemon-status may have removed the stale file we opened: lock the live one.
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            remove_if_present(self.path)
            os.close(self.fd)
            self.fd = None

    def _open(self) -> int | None:
        import stat

        try:
            # O_NONBLOCK: a FIFO in its place must not hold up the open.
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DaemonError(f"cannot read the daemon's pid file {self.path}: "
                              f"{describe_os_error(exc)}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise DaemonError(f"the daemon's pid file {self.path} is not a file; no woci daemon "
                              "made it: remove it by hand")
        return fd

    def holder(self) -> int | None:
        """The pid of the live daemon, or None when none holds the file. Changes nothing."""
        fd = self._open()
        if fd is None:
            return None
        try:
            if not held_elsewhere(fd):
                return None
            text = os.read(fd, 64).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        # Linux pids stay below 2**22; os.kill of a number beyond pid_t raises OverflowError.
        if not (text.isascii() and text.isdigit() and 0 < int(text) < 2 ** 31):
            raise DaemonError(f"a process holds the daemon's pid file {self.path} but the file "
                              "names no pid; find it with `fuser` and stop it by hand")
        return int(text)

    def remove_stale(self) -> bool:
        """Remove the file if no live daemon holds it (a killed daemon's); True if removed."""
        fd = self._open()
        if fd is None:
            return False
        try:
            if held_elsewhere(fd):
                return False
            log().warning("removing a stale pid file %s (its daemon is gone)", self.path)
            return remove_if_present(self.path)
        finally:
            os.close(fd)


class DaemonState(collections.namedtuple("DaemonState",
                                         "pid profile expires_at next_check last")):
    """What the daemon tells --daemon-status through its state file: written and read here.

    last is the RenewalRecord of the last renewal, or None before the first.
    """

    __slots__ = ()

    def write(self, path: str) -> None:
        last = self.last._asdict() if self.last else None
        document = {"pid": self.pid, "profile": self.profile, "expires_at": self.expires_at,
                    "next_renewal": self.next_check, "last_renewal": last}
        atomic_write(path, json.dumps(document).encode())

    @classmethod
    def read(cls, path: str) -> "DaemonState" | None:
        """The state, or None when the file is missing or holds anything unexpected."""
        try:
            document = parse_json(read_file_if_present(path) or b"null")
        except (StorageError, ValueError):
            return None
        if not isinstance(document, dict):
            return None

        def number(value: object) -> float | None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            return value if ok else None  # type: ignore[return-value]

        last = document.get("last_renewal")
        record = None
        if isinstance(last, dict) and number(last.get("time")) is not None:
            record = RenewalRecord(number(last["time"]), last.get("ok") is True,
                                   str(last.get("message") or ""))
        expires_at = document.get("expires_at")
        return cls(pid=document.get("pid") if isinstance(document.get("pid"), int) else 0,
                   profile=str(document.get("profile") or ""),
                   expires_at=expires_at if isinstance(number(expires_at), int) else None,
                   next_check=number(document.get("next_renewal")), last=record)


def write_daemon_state(paths: SessionPaths, renewer: Renewer, state: TokenState,
                       next_at: float) -> None:
    record = DaemonState(os.getpid(), renewer.session.settings.profile, state.expires_at,
                         next_at, renewer.last)
    try:
        record.write(paths.daemon_state)
    except StorageError as exc:
        log().warning("%s", exc)


# The steps of becoming a daemon, each its own: fork, setsid, fork, umask, chdir, stdio.

def _fork() -> bool:
    """True in the child."""
    return os.fork() == 0


def _start_new_session() -> None:
    os.setsid()   # no controlling terminal: a closed terminal's SIGHUP never reaches it


def _set_private_umask() -> None:
    os.umask(0o077)


def _leave_working_folder() -> None:
    os.chdir("/")   # never keep a user's folder (or its mount) busy


def _open_daemon_log(log_path: str) -> int:
    return os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)


def _redirect_stdio(log_path: str) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    log = _open_daemon_log(log_path)
    try:
        os.fchmod(log, 0o600)   # one left open to others (by hand, or before umask 077)
    except OSError:
        pass   # not ours to change
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def rotate_log_if_big(log_path: str) -> None:
    """Keep the daemon log bounded: past the limit it becomes .1 and a new one starts."""
    try:
        if os.stat(log_path).st_size <= DAEMON_LOG_MAX_BYTES:
            return
        os.replace(log_path, log_path + ".1")
    except OSError:
        return
    _redirect_stdio(log_path)


def daemon_loop(renewer: Renewer, paths: SessionPaths, stopping: threading.Event) -> int:
    """Renew until stopped (exit 0) or until the refresh token is refused (exit 1)."""
    while not stopping.is_set():
        rotate_log_if_big(paths.daemon_log)
        try:
            wait = renewer.step()
        except WociError as exc:
            log().error("daemon stopping: %s", exc)
            return EXIT_FAILURE
        write_daemon_state(paths, renewer, renewer.read_token(), renewer.now() + wait)
        stopping.wait(wait)
    log().info("daemon stopped by a signal")
    return EXIT_OK


def _report_to_parent(ready_fd: int, message: str) -> None:
    os.write(ready_fd, message.encode())
    os.close(ready_fd)


def _run_daemon(renewer: Renewer, paths: SessionPaths, ready_fd: int) -> int:
    """The detached grandchild: lock the pid file, tell the parent, renew until stopped."""
    import signal
    import threading

    settings = renewer.session.settings
    configure_logging("DEBUG" if settings.log_level == "DEBUG" else "INFO", daemon=True)
    pid_file = PidFile(paths.pid)
    if not pid_file.acquire():
        try:
            holder = pid_file.holder()
        except DaemonError:
            holder = None
        _report_to_parent(ready_fd, f"busy {holder or ''}")
        return EXIT_FAILURE
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stopping.set())
    _report_to_parent(ready_fd, f"ok {os.getpid()}")
    log().info("daemon started for profile %s (pid %d)", settings.profile, os.getpid())
    try:
        return daemon_loop(renewer, paths, stopping)
    finally:
        pid_file.release()


def _become_daemon(renewer: Renewer, paths: SessionPaths, ready_fd: int) -> None:
    """The first child: a new session, then a grandchild that can never regain a terminal."""
    code = EXIT_FAILURE
    try:
        _start_new_session()
        if not _fork():
            os._exit(EXIT_OK)
        _set_private_umask()
        _leave_working_folder()
        _redirect_stdio(paths.daemon_log)
        code = _run_daemon(renewer, paths, ready_fd)
    except BaseException:  # the log is all a detached process has
        log().exception("daemon crashed")
    finally:
        os._exit(code)


def _read_with_deadline(fd: int, timeout: float) -> str:
    import select

    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
        if not ready:
            break
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data.decode("ascii", "replace").strip()


def start_daemon(renewer: Renewer, paths: SessionPaths) -> int:
    """Double fork; the parent returns the daemon's pid once its pid file is locked."""
    try:   # here, not in the child: it has no terminal to say so on once it could tell
        os.close(_open_daemon_log(paths.daemon_log))
    except OSError as exc:
        raise DaemonError(f"cannot open the daemon log {paths.daemon_log}: "
                          f"{describe_os_error(exc)}") from exc
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    first_child = os.fork()
    if first_child == 0:
        os.close(read_fd)
        _become_daemon(renewer, paths, write_fd)
    os.close(write_fd)
    os.waitpid(first_child, 0)
    answer = _read_with_deadline(read_fd, DAEMON_START_TIMEOUT_SECONDS)
    os.close(read_fd)
    word, _, pid = answer.partition(" ")
    if word == "ok" and pid.isdigit():
        return int(pid)
    if word == "busy":
        raise DaemonError(f"a woci daemon already runs for profile "
                          f"{renewer.session.settings.profile} (pid {pid or 'unknown'})")
    raise DaemonError(f"the daemon did not start; see {paths.daemon_log}")


def daemon_status_report(paths: SessionPaths, profile: str, now: float) -> tuple[int, str]:
    pid_file = PidFile(paths.pid)
    stale = pid_file.remove_stale()
    pid = pid_file.holder()
    if pid is None:
        note = " (removed the stale pid file of a daemon that died)" if stale else ""
        return EXIT_FAILURE, f"no woci daemon runs for profile {profile}{note}\n"
    lines = [f"woci daemon for profile {profile}: running, pid {pid}"]
    token = read_session_token(paths)
    if token.expires_at is not None:
        lines.append(f"session token expires: {format_timestamp(token.expires_at)} "
                     f"(in {format_duration(token.expires_at - now)})")
    state = DaemonState.read(paths.daemon_state)
    last = state.last if state else None
    if last is not None:
        outcome = "ok" if last.ok else f"failed: {plain_text(last.message)}"   # a file's words
        lines.append(f"last renewal: {format_timestamp(last.time)}, {outcome}")
    else:
        lines.append("last renewal: none yet")
    if state is not None and state.next_check is not None:
        lines.append(f"next check: {format_timestamp(state.next_check)}")
    return EXIT_OK, "\n".join(lines) + "\n"


def _profile_lock_busy(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return held_elsewhere(fd)
    finally:
        os.close(fd)


def _signal_daemon(pid: int, signum: int) -> bool:
    """False when it is gone already (it may exit between the look-up and the signal)."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def stop_daemon(paths: SessionPaths, profile: str,
                sleep: Callable[[float], None] = time.sleep) -> int:
    import signal

    pid_file = PidFile(paths.pid)
    pid = pid_file.holder()
    if pid is None:
        pid_file.remove_stale()
        raise DaemonError(f"no woci daemon runs for profile {profile}", EXIT_FAILURE)
    if not _signal_daemon(pid, signal.SIGTERM):
        return pid

    def stopped() -> bool:
        try:
            return pid_file.holder() is None
        except DaemonError:
            return False

    deadline = time.monotonic() + DAEMON_STOP_TIMEOUT_SECONDS
    # A daemon in the middle of a renewal holds the profile lock: killing it then could lose
    # a rotated refresh token, so it gets as long as a renewal can take.
    renewal_deadline = time.monotonic() + RENEWAL_MAX_SECONDS
    while time.monotonic() < deadline or (time.monotonic() < renewal_deadline
                                          and _profile_lock_busy(paths.lock)):
        if stopped():
            return pid
        sleep(0.1)
    log().warning("daemon %d did not stop within %s; killing it", pid,
                format_duration(DAEMON_STOP_TIMEOUT_SECONDS))
    _signal_daemon(pid, signal.SIGKILL)
    deadline = time.monotonic() + DAEMON_STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline and not stopped():
        sleep(0.1)
    return pid


# --------------------------------------------------------------------------------------------
# 10. Session tools: --status, --logout, --doctor
# --------------------------------------------------------------------------------------------

# --- --status: the session at a glance, from the session folder alone ------------------------


class StatusReport(collections.namedtuple("StatusReport",
                                          "document token_problem daemon_problem")):
    """--status: the JSON object of the contract, exactly, and for the text only why the token
    file or the daemon's pid file is unusable."""

    __slots__ = ()


def daemon_holder(paths: SessionPaths) -> tuple[bool, int | None, str | None]:
    """(running, pid, problem) from the pid file's lock; changes nothing."""
    try:
        pid = PidFile(paths.pid).holder()
    except DaemonError as exc:
        return True, None, str(exc)
    return pid is not None, pid, None


def session_status(paths: SessionPaths, profile: str, now: float) -> StatusReport:
    """No network, no lock, no keyring, no passphrase, no settings: a shell prompt calls it."""
    state = read_session_token(paths)
    claims: dict = {}
    if state.token:
        try:
            claims = jwt_claims_unverified(state.token)
        except ValueError:
            claims = {}
    exp = state.expires_at
    subject, tenancy = claims.get("sub"), claims.get("tenant")
    refresh = stored_refresh_token(paths)
    running, pid, daemon_problem = daemon_holder(paths)
    document = {
        "profile": profile,
        "session": {
            "valid": exp is not None and exp > now,
            "exp": exp,
            "expires_at": iso_utc(exp),
            "seconds_left": int(exp - now) if exp is not None else None,
            "subject": subject if isinstance(subject, str) else None,
            "tenancy": tenancy if isinstance(tenancy, str) else None,
        },
        "refresh_token": {"stored": refresh.storage is not None and not refresh.damaged,
                          "storage": refresh.storage,
                          "expires_at": iso_utc(refresh.expires_at)},
        "daemon": {"running": running, "pid": pid},
    }
    return StatusReport(document, state.problem, daemon_problem)


def status_usable(report: StatusReport) -> bool:
    """Usable without a browser: a valid session token, or a refresh token to renew it."""
    return bool(report.document["session"]["valid"] or report.document["refresh_token"]["stored"])


def status_text(report: StatusReport, now: float) -> str:
    doc = report.document
    session, refresh, daemon = doc["session"], doc["refresh_token"], doc["daemon"]
    if report.token_problem:
        line = f"unusable ({report.token_problem})"
    elif session["exp"] is None:
        line = "none"
    else:
        when = session["expires_at"] or format_timestamp(session["exp"])
        left = session["seconds_left"]
        line = (f"valid until {when} ({format_duration(left)} left)" if session["valid"]
                else f"expired at {when} ({format_duration(-left)} ago)")
    stored = refresh["storage"] or "none"
    if refresh["storage"] and not refresh["stored"]:
        stored += " (damaged: it cannot be used; sign in again)"
    if refresh["expires_at"]:
        stored += f", expires {refresh['expires_at']}"
    if daemon["running"]:
        daemon_line = f"running, pid {daemon['pid']}" if daemon["pid"] else \
            f"unknown ({report.daemon_problem})"
    else:
        daemon_line = "not running"
    lines = [f"profile: {doc['profile']}", f"session: {line}"]
    if session["subject"]:   # the token's words: no escape sequence reaches the terminal
        lines.append(f"subject: {plain_text(session['subject'])}")
    if session["tenancy"]:
        lines.append(f"tenancy: {plain_text(session['tenancy'])}")
    lines += [f"refresh token: {stored}", f"daemon: {daemon_line}"]
    return "\n".join(lines) + "\n"


# --- --logout: end the session, here and at the provider --------------------------------------


def _stored_refresh_token_values(settings: Settings, paths: SessionPaths,
                                 environ: Mapping[str, str]) -> list[str]:
    """Every refresh token stored for the profile (file and keyring); a warning for each one
    that cannot be read, which then cannot be revoked."""
    tokens = []
    try:
        token = RefreshTokenStore(paths.refresh_token, PassphraseSource(settings, environ)).load()
        if token:
            tokens.append(token)
    except WociError as exc:
        log().warning("cannot revoke the refresh token: %s", exc)
    if os.path.exists(paths.keyring_marker):
        backend, why = open_keyring()
        item = KeyringItem.read_marker(paths.keyring_marker) or \
            KeyringItem.for_profile(settings.oci_config_file, settings.profile)
        if backend is None:
            log().warning("the refresh token is in the OS keyring but %s: it is neither revoked "
                        "nor deleted there", why)
        else:
            try:
                token = keyring_call("read", lambda: backend.get_password(item.service,
                                                                          item.username))
            except StorageError as exc:
                log().warning("cannot revoke the refresh token: %s", exc)
            else:
                if isinstance(token, str) and token and token not in tokens:
                    tokens.append(token)
    return tokens


def revoke_at_provider(settings: Settings, paths: SessionPaths, tokens: list[str]) -> bool:
    """Revoke each token (RFC 7009); False, after a warning, when any could not be."""
    url = revocation_endpoint(settings, paths.discovery)
    if url is None:
        log().warning("no revocation_url is configured, so the refresh token was not revoked at "
                    "the provider: it stays valid there until it expires")
        return False
    if in_clear_text_to_another_machine(url):   # it carries the refresh token and secret
        warn_of_clear_text("revocation_url", url)
    revoked = True
    for token in tokens:
        try:
            revoke_refresh_token(settings, url, token)
        except WociError as exc:
            log().warning("the refresh token was not revoked: %s", exc)
            revoked = False
    return revoked


def delete_session_files(paths: SessionPaths, key_path: str) -> list[str]:
    """Delete the session's credentials and the OKE credential cache; the names deleted."""
    deleted = []
    for path in dict.fromkeys((paths.token, key_path, paths.key, paths.public_key,
                               paths.refresh_token, paths.daemon_state)):
        if remove_if_present(path):
            deleted.append(os.path.basename(path))
    if clear_credential_cache(paths):
        deleted.append(f"{CREDENTIAL_CACHE_FOLDER}/")
    return deleted


def delete_keyring_item(settings: Settings, paths: SessionPaths) -> bool:
    """Delete the keyring item the marker names, and the marker; True when done."""
    if not os.path.exists(paths.keyring_marker):
        return False
    backend, why = open_keyring()
    if backend is None:
        return False   # said already by _stored_refresh_token_values
    try:
        drop_keyring_item(paths.keyring_marker,
                          KeyringItem.for_profile(settings.oci_config_file, settings.profile),
                          backend)
    except StorageError as exc:
        log().warning("%s; the keyring item is left", exc)
        return False
    return True


def logout(settings: Settings, environ: Mapping[str, str],
           stop: Callable[[SessionPaths, str], int] = stop_daemon) -> str:
    """Every step of --logout, in order; the one line saying what was done.

    The daemon is stopped first (it would renew again), then under the profile lock: the
    refresh token revoked, the files, keyring item and OKE cache deleted, the profile's
    session keys removed. A revocation that cannot be made is a warning, never a stop.
    """
    import configparser

    profile, paths = settings.profile, SessionPaths.for_profile(settings.profile, environ)
    done = []
    if os.path.isdir(paths.folder):
        if daemon_holder(paths)[0]:
            done.append(f"stopped the daemon (pid {stop(paths, profile)})")
        with ProfileLock(paths.lock, settings.login_timeout + LOCK_GRACE_SECONDS, profile):
            tokens = _stored_refresh_token_values(settings, paths, environ)
            if tokens and revoke_at_provider(settings, paths, tokens):
                done.append("revoked the refresh token at the provider")
            try:
                _, config = read_oci_config(settings.oci_config_file)
            except ConfigError as exc:
                log().warning("%s", exc)
                config = configparser.ConfigParser()
            deleted = delete_session_files(
                paths, session_key_path(config, profile, paths, environ))
            if delete_keyring_item(settings, paths):
                deleted.append("the keyring item")
            if deleted:
                done.append(f"deleted {', '.join(deleted)}")
    try:
        removed = forget_session_in_profile(settings.oci_config_file, profile, paths, environ)
    except ConfigError as exc:
        log().warning("%s; the profile was left as it is", exc)
        removed = []
    if removed:
        done.append(f"removed {', '.join(removed)} from [{profile}] in "
                    f"{settings.oci_config_file}")
    if not done:
        return f"nothing to do: no session is stored for profile {profile}\n"
    return f"logged out of profile {profile}: {'; '.join(done)}\n"


# --- --doctor: one line per check -------------------------------------------------------------

OK, WARN, FAIL = "ok", "warn", "FAIL"


class Check(collections.namedtuple("Check", "level message")):
    """One doctor line: OK, WARN or FAIL, and a message that says what to do when it is not
    OK; never a token or a secret."""

    __slots__ = ()


class DoctorContext(collections.namedtuple("DoctorContext", (
        "cmd environ profile paths oci_config_file manager_candidates manager_path "
        "manager_ini manager_problem settings settings_problem probes now"),
        defaults=(time.time,))):
    """What the checks look at: found once, each setting source kept, even broken ones
    (a *_problem says why one is missing); probes keeps each endpoint's answer by URL."""

    __slots__ = ()

    @classmethod
    def gather(cls, cmd: CommandLine, environ: Mapping[str, str]) -> "DoctorContext":
        profile = resolve_profile(cmd, environ)
        oci_config = resolve_oci_config_file(cmd, environ)
        candidates, explicit = manager_config_candidates(cmd, environ, oci_config)
        manager_problem = None
        try:
            path, ini = load_manager_ini(candidates, explicit)
        except ConfigError as exc:
            path, ini, manager_problem = None, None, str(exc)
        paths = SessionPaths.for_profile(profile, environ)
        settings, settings_problem = None, None
        try:
            settings = build_settings(cmd, environ, ini, path, required=())
        except ConfigError as exc:
            settings_problem = str(exc)
        if settings is not None and settings.issuer:
            try:
                settings = resolve_endpoints(settings, paths.discovery)
            except WociError:
                pass   # check_discovery says why
        return cls(cmd, environ, profile, paths, oci_config, candidates, path, ini,
                   manager_problem, settings, settings_problem, {})

    def probe(self, url: str) -> Probe:
        if url not in self.probes:
            ca_bundle = self.settings.ca_bundle if self.settings else None
            self.probes[url] = probe_endpoint(url, ca_bundle, self.now)
        return self.probes[url]


def check_manager_config(ctx: DoctorContext) -> Check:
    if ctx.manager_problem:
        # The check's own label says "manager config": the error need not say it again.
        problem = ctx.manager_problem.removeprefix("manager config").lstrip(": ")
        return Check(FAIL, f"manager config: {problem}; fix --manager-config or "
                           "WOCI_MANAGER_CONFIG")
    if ctx.manager_path is None:
        looked = " and ".join(dict.fromkeys(str(path) for path in ctx.manager_candidates))
        return Check(WARN, f"manager config: none found (looked for {looked}); put the "
                           "settings there (see woci_manager.ini.example)")
    return Check(OK, f"manager config: {ctx.manager_path}")


def check_settings(ctx: DoctorContext) -> list[Check]:
    """One line per setting: its value (a secret masked) and where it came from."""
    where = ctx.manager_path or ctx.manager_candidates[-1]
    checks = []
    for item in describe_settings(ctx.cmd, ctx.environ, ctx.manager_ini, ctx.manager_path):
        if item.problem:
            checks.append(Check(FAIL, f"{item.key}: {item.problem}"))
        elif item.value is None and item.key in DISCOVERABLE_KEYS and ctx.settings is not None \
                and ctx.settings.issuer:
            found = getattr(ctx.settings, item.key, None)
            checks.append(Check(OK, f"{item.key} = {found} (discovery)") if found else
                          Check(WARN, f"{item.key}: not set, and discovery gave none"))
        elif item.value is None and item.key in REQUIRED_KEYS:
            checks.append(Check(FAIL, f"{item.key}: not set; set it in [{ctx.profile}] or "
                                      f"[{COMMON_SECTION}] of {where}, or pass "
                                      f"{FLAG_OF_KEY[item.key]}"))
        elif item.value is None:
            note = "" if item.source == "not set" else f" ({item.source})"
            checks.append(Check(OK, f"{item.key}: not set{note}"))
        else:
            shown = mask_secret(item.value) if item.key in SECRET_KEYS else item.value
            checks.append(Check(OK, f"{item.key} = {shown} ({item.source})"))
            if item.key in SECRET_KEYS and item.source == FLAG_OF_KEY[item.key]:
                checks.append(Check(WARN, f"{item.key}: {secret_flag_warning(item.source)}"))
    if ctx.settings_problem and not any(check.level == FAIL for check in checks):
        checks.append(Check(FAIL, f"settings: {ctx.settings_problem}"))
    return checks


def check_discovery(ctx: DoctorContext) -> Check:
    settings = ctx.settings
    if settings is None or not settings.issuer:
        return Check(OK, "discovery: no issuer configured (the endpoints are set one by one)")
    try:
        endpoints = discover(settings, ctx.paths.discovery)
    except WociError as exc:
        return Check(FAIL, f"discovery: {exc}; check issuer (it must be exactly the "
                           "provider's) and the network")
    return Check(OK, f"discovery: {discovery_url(settings.issuer)} names "
                     f"{', '.join(sorted(endpoints)) or 'no endpoint woci uses'}")


def _endpoint_check(ctx: DoctorContext, what: str, key: str, url: str | None) -> Check:
    if not url:
        return Check(WARN, f"{what}: not checked ({key} is not set)")
    probe = ctx.probe(url)
    if probe.problem:
        return Check(FAIL, f"{what} {url}: {probe.problem}; check {key}, and the network "
                           "between here and there (proxy, VPN, firewall)")
    if probe.status is not None and probe.status >= 500:
        return Check(WARN, f"{what} {url}: answered HTTP {probe.status}; the server has a "
                           "problem, try again later")
    if probe.oauth_error:
        return Check(OK, f"{what} {url}: reachable (HTTP {probe.status} {probe.oauth_error} "
                         "to a request without credentials, as expected)")
    return Check(WARN, f"{what} {url}: answered HTTP {probe.status} "
                       f"{probe.content_type or 'without a content type'}, not an OAuth "
                       f"error; is {key} right?")


def check_token_endpoint(ctx: DoctorContext) -> Check:
    url = ctx.settings.token_url if ctx.settings else None
    return _endpoint_check(ctx, "token endpoint", "token_url", url)


def check_exchange_endpoint(ctx: DoctorContext) -> Check:
    url = ctx.settings.token_exchange_url if ctx.settings else None
    return _endpoint_check(ctx, "OCI token exchange", "token_exchange_url", url)


def check_revocation_endpoint(ctx: DoctorContext) -> Check:
    url = revocation_endpoint(ctx.settings, ctx.paths.discovery) if ctx.settings else None
    if url is None:
        return Check(WARN, "revocation endpoint: revocation_url is not set, so --logout "
                           "cannot revoke the refresh token at the provider; set it to the "
                           "provider's RFC 7009 endpoint")
    return _endpoint_check(ctx, "revocation endpoint", "revocation_url", url)


def check_clock(ctx: DoctorContext) -> Check:
    skews = [(url, probe.skew) for url, probe in ctx.probes.items() if probe.skew is not None]
    if not skews:
        return Check(WARN, "clock: not compared (no endpoint answered with a Date)")
    import urllib.parse

    url, skew = max(skews, key=lambda item: abs(item[1]))
    host = urllib.parse.urlsplit(url).netloc
    direction = "ahead of" if skew > 0 else "behind"
    if abs(skew) > CLOCK_SKEW_FAIL_SECONDS:
        return Check(FAIL, f"clock: this machine's clock is {abs(skew):.0f} s {direction} "
                           f"{host}'s; OCI refuses requests more than 5 min off: fix the "
                           "clock (enable NTP)")
    if abs(skew) > CLOCK_SKEW_TOLERANCE_SECONDS:
        return Check(WARN, f"clock: this machine's clock is {abs(skew):.0f} s {direction} "
                           f"{host}'s; fix the clock (enable NTP) before OCI refuses it")
    return Check(OK, f"clock: within {CLOCK_SKEW_TOLERANCE_SECONDS} s of the endpoints' "
                     f"(largest difference {abs(skew):.0f} s)")


def check_oci(ctx: DoctorContext) -> Check:
    import shutil
    import subprocess

    oci = shutil.which("oci", path=ctx.environ.get("PATH") or os.defpath)
    if oci is None:
        return Check(FAIL, "oci: not found on PATH; install the OCI CLI (pip install oci-cli)")
    env = scrubbed_environment(
        ctx.environ, ctx.settings.refresh_token_passphrase_env if ctx.settings else None)
    try:
        result = subprocess.run([oci, "--version"], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, errors="replace",
                                timeout=OCI_VERSION_TIMEOUT_SECONDS, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check(FAIL, f"oci: `{oci} --version` did not run: "
                           f"{describe_os_error(exc)}; reinstall the OCI CLI")
    if result.returncode != 0:
        said = (result.stderr.strip().splitlines() or [""])[-1][:200]
        return Check(FAIL, f"oci: `{oci} --version` exited {result.returncode} ({said}); "
                           "reinstall the OCI CLI")
    return Check(OK, f"oci: {result.stdout.strip()[:40]} ({oci})")


def _mode(path: str) -> int | None:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return None


def check_session_folder(ctx: DoctorContext) -> Check:
    import stat

    folder = ctx.paths.folder
    mode = _mode(folder)
    if mode is None:
        return Check(OK, f"session folder: {folder} does not exist yet (a sign-in makes it)")
    if not stat.S_ISDIR(mode):
        return Check(FAIL, f"session folder: {folder} is not a folder; move it away")
    if mode & 0o077:
        return Check(FAIL, f"session folder: {folder} is mode {stat.S_IMODE(mode):04o}, open "
                           f"to other users; run: chmod 700 {folder}")
    return Check(OK, f"session folder: {folder} (0700)")


def check_session_files(ctx: DoctorContext) -> Check:
    import stat

    paths = ctx.paths
    present, exposed = [], []
    for path in (paths.token, paths.key, paths.public_key, paths.refresh_token,
                 paths.keyring_marker, paths.pid, paths.daemon_state, paths.daemon_log):
        mode = _mode(path)
        if mode is None:
            continue
        present.append(path)
        if stat.S_ISLNK(mode):
            return Check(WARN, f"session files: {path} is a symbolic link, which oci warns "
                               "about; run woci --logout and sign in again")
        if mode & 0o077:
            exposed.append(str(path))
    if exposed:
        return Check(FAIL, f"session files open to other users: {', '.join(exposed)}; "
                           f"run: chmod 600 {' '.join(exposed)}")
    if not present:
        return Check(OK, "session files: none yet")
    return Check(OK, f"session files: {len(present)}, all private (0600)")


def check_manager_ini_mode(ctx: DoctorContext) -> Check:
    import stat

    path = ctx.manager_path
    mode = _mode(path) if path else None
    if path is None or mode is None:
        return Check(OK, "manager config mode: no file to check")
    ini = ctx.manager_ini
    holds_secret = ini is not None and any(ini.has_option(section, key)
                                           for section in ini.sections() for key in SECRET_KEYS)
    if mode & 0o077 and holds_secret:
        return Check(FAIL, f"manager config mode: {path} holds a client secret and is mode "
                           f"{stat.S_IMODE(mode):04o}, readable by others; run: chmod 600 {path}")
    if mode & 0o077:
        return Check(OK, f"manager config mode: {path} is {stat.S_IMODE(mode):04o} and holds "
                         "no secret")
    return Check(OK, f"manager config mode: {path} is {stat.S_IMODE(mode):04o}")


def check_oci_profile(ctx: DoctorContext) -> Check:
    path, profile = ctx.oci_config_file, ctx.profile
    try:
        text, config = read_oci_config(path)
    except WociError as exc:
        return Check(FAIL, f"OCI config: {exc}")
    if text is None:
        return Check(WARN, f"OCI config: {path} does not exist yet; a sign-in writes it")
    if not profile_exists(config, profile):
        return Check(WARN, f"OCI config: no profile [{profile}] in {path} yet; a sign-in "
                           "adds it")
    if not profile_is_wired(config, profile, ctx.paths, ctx.environ):
        return Check(WARN, f"OCI config: [{profile}] in {path} does not point at woci's "
                           f"session; run: woci --profile {profile} session refresh")
    region = config.get(profile, "region", fallback="")
    if not region:
        return Check(WARN, f"OCI config: [{profile}] in {path} has no region, which oci and "
                           "Terraform need; set region in the manager INI")
    return Check(OK, f"OCI config: [{profile}] in {path} uses the session, region {region}")


def check_session_token(ctx: DoctorContext) -> Check:
    state = read_session_token(ctx.paths)
    now = ctx.now()
    renew = ("the next woci run renews it without a browser"
             if stored_refresh_token(ctx.paths).storage else
             f"sign in: woci --profile {ctx.profile} session authenticate")
    if state.problem:
        return Check(WARN, f"session token: {state.problem}; {renew}")
    if state.expires_at is None:
        return Check(WARN, f"session token: none yet; {renew}")
    when = iso_utc(state.expires_at) or format_timestamp(state.expires_at)
    if state.expires_at <= now:
        return Check(WARN, f"session token: expired at {when}; {renew}")
    return Check(OK, f"session token: valid until {when} "
                     f"({format_duration(state.expires_at - now)} left)")


def check_refresh_token(ctx: DoctorContext) -> Check:
    """Looked at, never used: a refresh grant here would spend it."""
    stored = stored_refresh_token(ctx.paths)
    settings, profile = ctx.settings, ctx.profile
    wanted = settings.refresh_token_storage if settings else "file"
    moves = f"the next renewal moves it (or now: woci --profile {profile} session refresh)"
    if stored.storage is None:
        return Check(WARN, "refresh token: none stored, so the next renewal needs the browser "
                           "(sign in; the provider must grant offline_access)")
    if stored.storage == "keyring":
        backend, why = open_keyring()
        if backend is None:
            return Check(FAIL, f"refresh token: in the OS keyring but {why}; install "
                               "woci[keyring] and a backend, or sign in again")
        item = KeyringItem.read_marker(ctx.paths.keyring_marker) or \
            KeyringItem.for_profile(ctx.oci_config_file, profile)
        if not keyring_call("read", lambda: backend.get_password(item.service, item.username)):
            return Check(FAIL, f"refresh token: the OS keyring has no item {item.username!r}; "
                               f"sign in again: woci --profile {profile} session authenticate")
        if wanted != "keyring":
            return Check(WARN, f"refresh token: in the OS keyring, but refresh_token_storage "
                               f"= {wanted}; {moves}")
        return Check(OK, f"refresh token: in the OS keyring ({why})")
    if stored.expires_at is not None and stored.expires_at <= ctx.now():
        return Check(FAIL, f"refresh token: expired at {iso_utc(stored.expires_at)}; sign in "
                           f"again: woci --profile {profile} session authenticate")
    if stored.storage == "encrypted-file":
        if settings is None or not settings.encryption_wanted:
            return Check(FAIL, "refresh token: encrypted, but no passphrase is configured; set "
                               "refresh_token_passphrase_env or refresh_token_passphrase_prompt "
                               f"(or start over: woci --profile {profile} --logout)")
        var = settings.refresh_token_passphrase_env
        if var and not settings.refresh_token_passphrase_prompt:
            try:
                RefreshTokenStore(ctx.paths.refresh_token,
                                  PassphraseSource(settings, ctx.environ)).load()
            except RefreshTokenError as exc:
                return Check(FAIL, f"refresh token: {exc}")
            detail = f"opens with the passphrase in {var}"
        else:
            detail = "the passphrase is asked on the terminal"
    else:
        try:   # a plain file: its store never asks for the passphrase
            RefreshTokenStore(ctx.paths.refresh_token, NoPassphrase()).load()
        except RefreshTokenError as exc:
            return Check(FAIL, f"refresh token: {exc}")
        # the session-files check has said chmod 600 when others can read it
        detail = "plain text, open to other users" if open_to_others(ctx.paths.refresh_token) \
            else "plain text, readable only by you"
    if wanted == "keyring":
        return Check(WARN, f"refresh token: in {ctx.paths.refresh_token}, but "
                           f"refresh_token_storage = keyring; {moves}")
    expiry = f", expires {iso_utc(stored.expires_at)}" if stored.expires_at else ""
    return Check(OK, f"refresh token: {stored.storage} {ctx.paths.refresh_token} "
                     f"({detail}{expiry})")


def check_daemon(ctx: DoctorContext) -> Check:
    running, pid, problem = daemon_holder(ctx.paths)
    if problem:
        return Check(FAIL, f"daemon: {problem}")
    if not running:
        return Check(OK, "daemon: not running")
    state = DaemonState.read(ctx.paths.daemon_state)
    if state is not None and state.last is not None and not state.last.ok:
        return Check(WARN, f"daemon: running (pid {pid}) but its last renewal failed: "
                           f"{state.last.message[:300]}; see {ctx.paths.daemon_log}")
    return Check(OK, f"daemon: running (pid {pid})")


# In this order: the clock is compared with the answers of the endpoint checks before it.
DOCTOR_CHECKS = (check_manager_config, check_settings, check_discovery, check_token_endpoint,
                 check_exchange_endpoint, check_revocation_endpoint, check_clock, check_oci,
                 check_session_folder, check_session_files, check_manager_ini_mode,
                 check_oci_profile, check_session_token, check_refresh_token, check_daemon)


def run_doctor_checks(ctx: DoctorContext) -> list[Check]:
    """Every check; one that breaks is one FAIL line, and the others still run."""
    results: list[Check] = []
    for check in DOCTOR_CHECKS:
        try:
            outcome = check(ctx)
        except (WociError, OSError, ValueError) as exc:
            name = check.__name__.replace("check_", "").replace("_", " ")
            outcome = Check(FAIL, f"{name}: {one_line(exc)}")
        results.extend(outcome if isinstance(outcome, list) else [outcome])
    return results


def doctor_report(checks: list[Check]) -> str:
    return "".join(f"{check.level:<4} {check.message}\n" for check in checks)


# --------------------------------------------------------------------------------------------
# 11. Running oci (or --exec's command)
# --------------------------------------------------------------------------------------------


def flush_stdout() -> bool:
    """False when stdout's reader is gone (a pipe closed early, `| head`, `| true`). stdout
    then goes to /dev/null so that Python's own flush at exit cannot fail again; nobody is
    left to tell, so nothing is said. Only woci's own writes come here: a BrokenPipeError
    from anywhere else is a fault to show."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
        return True
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):   # a stdout that is no file
            pass
        return False


def write_stdout(data: str | bytes) -> bool:
    """Write and flush woci's own answer; False (quietly) when nobody reads it."""
    if sys.stdout is None:
        return False
    try:
        if isinstance(data, bytes):
            sys.stdout.buffer.write(data)
        else:
            sys.stdout.write(data)
    except BrokenPipeError:
        flush_stdout()   # what is still buffered fails too: it points stdout away
        return False
    return flush_stdout()


def child_environment(environ: Mapping[str, str], settings: Settings,
                      point_at_session: bool = False) -> dict[str, str]:
    """scrubbed_environment, and for --exec the variables that point oci at the session."""
    env = scrubbed_environment(environ, settings.refresh_token_passphrase_env)
    if point_at_session:
        env.update({"OCI_CLI_PROFILE": settings.profile,
                    "OCI_CLI_CONFIG_FILE": absolute(settings.oci_config_file),
                    "OCI_CLI_AUTH": "security_token"})
    return env


def exec_oci(argv: list[str], env: Mapping[str, str]) -> None:
    """Replace this process with oci: its exit code and signals become the caller's directly."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError as exc:
        raise WociError("oci not found on PATH; install the OCI CLI (pip install oci-cli)",
                        EXIT_OCI_NOT_FOUND) from exc
    except OSError as exc:
        raise WociError(f"cannot run {argv[0]}: {exc.strerror}") from exc



def _terminal_reaches_child() -> bool:
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def run_child(argv: list[str], env: Mapping[str, str], refresher: AutoRefresher | None,
              captured: bytearray | None = None) -> int:
    """Run argv as a child with signals forwarded; its exit code (128+N if killed by N).

    With captured, the child's stdout is collected there instead of reaching ours.
    """
    import signal
    import subprocess

    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    # Signals a terminal sends to its whole foreground process group: the child has them already.
    terminal = (signal.SIGINT, signal.SIGQUIT)
    sys.stdout.flush()
    children: list[subprocess.Popen] = []
    # Signals that arrive while the child is being started wait here for it.
    early: list[int] = []

    def forward(signum, _frame):
        if signum in terminal and _terminal_reaches_child():
            return
        if not children:
            early.append(signum)
            return
        try:
            children[0].send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in forwarded}
    try:
        try:
            children.append(subprocess.Popen(
                argv, env=dict(env), stdout=subprocess.PIPE if captured is not None else None))
        except FileNotFoundError as exc:
            raise WociError(f"{argv[0]} not found on PATH", EXIT_OCI_NOT_FOUND) from exc
        except OSError as exc:
            raise WociError(f"cannot run {argv[0]}: {exc.strerror}") from exc
        for signum in early:
            forward(signum, None)
        if refresher is not None:
            refresher.start()
        try:
            if captured is not None:
                captured += children[0].communicate()[0]
            code = children[0].wait()
        finally:
            if refresher is not None:
                refresher.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code if code >= 0 else 128 - code


# --------------------------------------------------------------------------------------------
# 12. Command line interface
# --------------------------------------------------------------------------------------------

EXAMPLES = """\
examples:
  woci --profile dev os ns get            sign in if needed, then run `oci os ns get`
  woci --profile dev session authenticate sign in again in the browser now
  woci --profile dev --login-flow device session authenticate
                                          sign in with a code, from a phone or laptop (SSH)
  woci --profile dev --login-flow manual session authenticate
                                          sign in in any browser, paste back where it ends
  woci --profile dev                      make sure the session is valid, run nothing
  woci --auto-refresh --exec -- ./job.sh  keep the session fresh while a long job runs
  woci --profile dev --status --json      the session at a glance (for a shell prompt)
  woci --profile dev --doctor             find out why it does not work
  woci --profile dev --logout             end the session here and at the provider

Everything after woci's own options goes to oci unchanged; see `oci --help`.
"""


def help_text() -> str:
    """The help, generated from the option table. argparse only formats it: woci splits its
    own argv (split_command_line) because oci's options share names with woci's."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="woci", usage="woci [woci options] [oci arguments...]",
        description="Keep an OCI session token (UPST) valid from your OpenID provider, then run "
                    "`oci --auth security_token` with your arguments.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for spec in OPTIONS:
        group = groups.setdefault(spec.group, parser.add_argument_group(spec.group))
        flags = [name for name in (spec.alias, spec.flag) if name]
        if spec.kind in ("flag", "mode"):
            group.add_argument(*flags, action="store_true", help=spec.help)
        else:
            metavar = "-- CMD" if spec.kind == "exec" else \
                "|".join(CHOICES[spec.key]) if spec.kind == "choice" else spec.key.upper()
            group.add_argument(*flags, metavar=metavar, help=spec.help)
    return parser.format_help()


def load_settings(cmd: CommandLine, environ: Mapping[str, str],
                  required: tuple[str, ...] = REQUIRED_KEYS) -> Settings:
    oci_config = resolve_oci_config_file(cmd, environ)
    candidates, explicit = manager_config_candidates(cmd, environ, oci_config)
    path, ini = load_manager_ini(candidates, explicit)
    return settings_from_ini(cmd, environ, path, ini, required)


def settings_from_ini(cmd: CommandLine, environ: Mapping[str, str], path: str | None,
                      ini: configparser.ConfigParser | None,
                      required: tuple[str, ...] = REQUIRED_KEYS) -> Settings:
    settings = build_settings(cmd, environ, ini, path, required)
    configure_logging(settings.log_level)
    warn_if_secrets_exposed(path, ini)
    for flag in cmd.secret_flags:
        log().warning("%s", secret_flag_warning(flag))
    return settings


def auto_refresher(session: Session) -> AutoRefresher | None:
    if not session.settings.auto_refresh:
        return None
    if session.passphrase.configured:
        session.passphrase.get()  # asked now: later the command owns the terminal
    return AutoRefresher(Renewer(session, session.settings.refresh_safety_window))


RENEWAL_FOR_ACTION = {OciAction.AUTHENTICATE: Renewal.SIGN_IN,
                      OciAction.REFRESH: Renewal.REFRESH}


def run_oke_token_request(cmd: CommandLine, session: Session, argv: list[str],
                          env: Mapping[str, str], refresher: AutoRefresher | None) -> int:
    """oci's ExecCredential passed on byte for byte, and kept for kubectl's next calls."""
    output = bytearray()
    code = run_child(argv, env, refresher, captured=output)
    delivered = write_stdout(bytes(output))
    if code == 0:
        settings = session.settings
        key = credential_cache_key(settings.oci_config_file, settings.profile, cmd.oci_args,
                                   session.environ)
        store_credential(session.paths, key, bytes(output))
    return code if delivered else code or EXIT_FAILURE   # kubectl got no credential


def run_oci_mode(cmd: CommandLine, settings: Settings, environ: Mapping[str, str]) -> int:
    session = Session.open(settings, environ)
    action = oci_action(cmd.oci_args)
    state = ensure_session(session, renewal=RENEWAL_FOR_ACTION.get(action, Renewal.IF_NEEDED))
    if action is OciAction.AUTHENTICATE:
        clear_credential_cache(session.paths)   # credentials of the old sign-in
    if action is not OciAction.RUN:
        if action is not OciAction.NONE:
            print(f"woci: the session of profile {settings.profile} is valid until "
                  f"{format_timestamp(state.expires_at or 0)}", file=sys.stderr)
        return EXIT_OK
    argv = build_oci_argv(cmd.oci_args, settings.profile)
    env = child_environment(environ, settings)
    refresher = auto_refresher(session)
    if is_oke_token_request(cmd.oci_args):
        return run_oke_token_request(cmd, session, argv, env, refresher)
    if refresher is None:
        exec_oci(argv, env)
    return run_child(argv, env, refresher)


def run_exec_mode(cmd: CommandLine, settings: Settings, environ: Mapping[str, str]) -> int:
    session = Session.open(settings, environ)
    ensure_session(session)
    return run_child(list(cmd.exec_argv), child_environment(environ, settings, True),
                     auto_refresher(session))


def run_daemon_mode(cmd: CommandLine, settings: Settings, environ: Mapping[str, str]) -> int:
    if cmd.secret_flags:
        # The daemon is a fork of this process: its /proc/PID/cmdline would show the secret
        # to every local user for as long as it runs.
        raise ConfigError(f"{', '.join(cmd.secret_flags)} cannot be used with --daemon: the "
                          "daemon would keep it visible in ps for its whole life; put it in "
                          "the manager INI (mode 0600) or the environment (WOCI_CLIENT_SECRET, "
                          "WOCI_AUTH_CLIENT_SECRET)")
    session = Session.open(settings, environ)
    paths = session.paths
    running = PidFile(paths.pid).holder() if os.path.isdir(paths.folder) else None
    if running is not None:
        raise DaemonError(f"a woci daemon already runs for profile {settings.profile} "
                          f"(pid {running})")
    if session.passphrase.configured:
        # Asked here, kept in the daemon's memory only (and its renewal children's).
        session.passphrase.get(creating=not session.refresh_tokens.holds_encrypted())
    # In a child too: this process becomes the daemon, which stays small.
    ensure_in_child(session)
    pid = start_daemon(Renewer(session, settings.refresh_safety_window,
                               ensure=ensure_in_child), paths)
    write_stdout(f"{pid}\n")   # lost with its reader: the daemon runs all the same, so exit 0
    print(f"woci: daemon for profile {settings.profile} started (pid {pid}); log: "
          f"{paths.daemon_log}", file=sys.stderr)
    return EXIT_OK


def run_daemon_control(cmd: CommandLine, environ: Mapping[str, str]) -> int:
    """--daemon-status and --stop-daemon need only the profile, not the provider settings."""
    profile = resolve_profile(cmd, environ)
    paths = SessionPaths.for_profile(profile, environ)
    if cmd.mode is Mode.DAEMON_STATUS:
        code, report = daemon_status_report(paths, profile, time.time())
        return code if write_stdout(report) else EXIT_FAILURE
    pid = stop_daemon(paths, profile)
    print(f"woci: stopped the daemon of profile {profile} (pid {pid})", file=sys.stderr)
    return EXIT_OK


def run_status_mode(cmd: CommandLine, environ: Mapping[str, str]) -> int:
    """--status needs only the profile: no settings, no network, no lock."""
    profile = resolve_profile(cmd, environ)
    now = time.time()
    report = session_status(SessionPaths.for_profile(profile, environ), profile, now)
    text = json.dumps(report.document) + "\n" if cmd.woci.get("json") else \
        status_text(report, now)
    return EXIT_OK if write_stdout(text) and status_usable(report) else EXIT_FAILURE


def run_logout_mode(cmd: CommandLine, environ: Mapping[str, str]) -> int:
    """--logout uses only the settings it needs: without them it cannot revoke, and says so.
    A manager INI named by --manager-config or WOCI_MANAGER_CONFIG must be usable, though
    (exit 2): it was meant, and it may hold the endpoint the revocation needs."""
    candidates, explicit = manager_config_candidates(cmd, environ,
                                                     resolve_oci_config_file(cmd, environ))
    # Read once: a manager INI given as <(vault ...) gives its text to the first read only.
    try:
        path, ini = load_manager_ini(candidates, explicit)
    except ConfigError as exc:
        if explicit:
            raise
        log().warning("%s; going on without the manager config", exc)
        path, ini = None, None
    try:
        settings = settings_from_ini(cmd, environ, path, ini, required=())
    except ConfigError as exc:
        log().warning("%s; going on without the manager config", exc)
        settings = build_settings(cmd, environ, None, None, required=())
    return EXIT_OK if write_stdout(logout(settings, environ)) else EXIT_FAILURE


def run_doctor_mode(cmd: CommandLine, environ: Mapping[str, str]) -> int:
    checks = run_doctor_checks(DoctorContext.gather(cmd, environ))
    delivered = write_stdout(doctor_report(checks))
    return EXIT_OK if delivered and not any(check.level == FAIL for check in checks) \
        else EXIT_FAILURE


def run(cmd: CommandLine, environ: Mapping[str, str]) -> int:
    if cmd.mode is Mode.HELP:
        return EXIT_OK if write_stdout(help_text()) else EXIT_FAILURE
    check_option_combinations(cmd)
    if cmd.mode is Mode.VERSION:
        return EXIT_OK if write_stdout(f"woci {__version__}\n") else EXIT_FAILURE
    if cmd.mode is Mode.STATUS:   # it logs nothing, and a shell prompt may run it every time
        return run_status_mode(cmd, environ)
    configure_logging(DEFAULT_LOG_LEVEL)
    if cmd.mode in (Mode.DAEMON_STATUS, Mode.STOP_DAEMON):
        return run_daemon_control(cmd, environ)
    if cmd.mode is Mode.DOCTOR:
        return run_doctor_mode(cmd, environ)
    if cmd.mode is Mode.LOGOUT:
        return run_logout_mode(cmd, environ)
    settings = load_settings(cmd, environ)
    if cmd.mode is Mode.EXEC:
        return run_exec_mode(cmd, settings, environ)
    if cmd.mode is Mode.DAEMON:
        return run_daemon_mode(cmd, settings, environ)
    return run_oci_mode(cmd, settings, environ)


def give_fast_answer(answer: FastAnswer) -> int:
    if answer.output is not None:
        return EXIT_OK if write_stdout(answer.output) else EXIT_FAILURE
    if answer.oci_argv is not None:
        exec_oci(answer.oci_argv, answer.env)
    return EXIT_OK


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """woci's whole run; the one place a WociError becomes an exit code."""
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    try:
        answer = fast_path(argv, environ, time.time())
        code = give_fast_answer(answer) if answer is not None else \
            run(split_command_line(argv), environ)
        # Anything still buffered: a reader gone shows here, not in Python's exit.
        return code if flush_stdout() else EXIT_FAILURE
    except WociError as exc:
        log().debug("failure details", exc_info=True)
        print(f"woci: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("woci: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
