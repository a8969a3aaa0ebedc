#!/usr/bin/env python3
"""woci: keep an OCI user-principal session token (UPST) alive from your own OpenID provider.

    woci [woci options] [oci arguments...]

For the OCI CLI profile in use, woci makes sure the session token is valid, then runs
``oci --profile <P> --auth security_token <oci arguments>``:

1. The UPST is valid for more than 60 more seconds: nothing to do.
2. A refresh token is stored: refresh grant at the provider, then exchange of the new access
   token for a UPST at OCI's token-exchange endpoint. No browser.
3. Otherwise (or when the provider refuses the refresh token): Authorization Code + PKCE in the
   browser, with the callback on http://127.0.0.1:<redirect_port><redirect_path>; then the
   exchange. When nobody can sign in (--non-interactive, CI, the daemon, the auto-refresh
   thread), woci says what to run instead and exits 1.

Files, in ~/.oci/sessions/<profile>/ (mode 0700), every one mode 0600 and written atomically:
``token`` (the UPST, no trailing newline), ``oci_api_key.pem`` and ``oci_api_key_public.pem``
(the RSA session key), ``refresh_token`` (plain, or AES-256-GCM encrypted JSON),
``woci.lock`` (the per-profile lock), and the daemon's ``woci_refresh.pid``,
``woci_daemon.state`` and ``woci_daemon.log``. The OCI config profile is updated in place
(key_file, security_token_file, fingerprint, tenancy, region); nothing else in it changes.

Exit codes: 0 success; 1 runtime failure (sign-in, refresh, exchange, file write); 2 usage or
configuration error, or an unreadable refresh token; 127 oci not found; 130 interrupted;
anything else is oci's own exit code. The contract is SPEC.md; this file implements it.
"""

from __future__ import annotations

import base64
import configparser
import dataclasses
import errno
import fcntl
import getpass
import hashlib
import html
import json
import logging
import os
import random
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

# requests, jwt and cryptography are imported inside the few functions that talk to the network
# or handle keys: a run whose session is still valid must not pay for importing them.

__version__ = "0.1.0"

# --------------------------------------------------------------------------------------------
# 1. Constants and errors
# --------------------------------------------------------------------------------------------

LOG = logging.getLogger("woci")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_OCI_NOT_FOUND = 127
EXIT_INTERRUPTED = 130

# A UPST with less life than this left is renewed before oci runs: oci needs time to use it.
EXPIRY_MARGIN_SECONDS = 60
DEFAULT_SCOPE = "openid offline_access"
DEFAULT_REDIRECT_PORT = 8181
DEFAULT_REDIRECT_PATH = "/callback"
DEFAULT_LOGIN_TIMEOUT = 300
DEFAULT_REFRESH_SAFETY_WINDOW = 600
DEFAULT_LOG_LEVEL = "WARNING"
DEFAULT_PROFILE = "DEFAULT"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# (connect, read) seconds for every HTTP call.
HTTP_TIMEOUT = (5.0, 30.0)
HTTP_ATTEMPTS = 4
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 8.0
RETRY_AFTER_MAX_SECONDS = 30.0
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# Beyond this, a clock difference with the provider or OCI is worth telling the user about:
# OCI refuses signed requests from a skewed clock.
CLOCK_SKEW_TOLERANCE_SECONDS = 60

# A process waiting for the profile lock may be behind a browser sign-in, which can take
# login_timeout; this much more covers the exchange that follows it.
LOCK_GRACE_SECONDS = 30
LOCK_POLL_SECONDS = 0.1

# The background wakes at least this often: a suspended laptop's sleep is not time passed.
BACKGROUND_MAX_SLEEP_SECONDS = 60
BACKGROUND_RETRY_FIRST_SECONDS = 5
BACKGROUND_RETRY_MAX_SECONDS = 60
DAEMON_LOG_MAX_BYTES = 4 * 1024 * 1024
DAEMON_START_TIMEOUT_SECONDS = 15
DAEMON_STOP_TIMEOUT_SECONDS = 10
# Every attempt of one renewal's HTTP calls, with backoff: the most a renewal can take.
DAEMON_RENEWAL_STOP_TIMEOUT_SECONDS = 2 * HTTP_ATTEMPTS * (HTTP_TIMEOUT[0] + HTTP_TIMEOUT[1]) + 30

RSA_KEY_BITS = 2048
PBKDF2_ITERATIONS = 600_000
PBKDF2_MIN_ITERATIONS = 200_000
ENCRYPTED_FORMAT = "woci-refresh-token"
ENCRYPTED_VERSION = 1
KDF_NAME = "pbkdf2-hmac-sha256"
CIPHER_NAME = "aes-256-gcm"
# Authenticated with the ciphertext so a file cannot be replayed as another format.
ENCRYPTION_AAD = b"woci-refresh-token-v1"

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
UPST_TOKEN_TYPE = "urn:oci:token-type:oci-upst"

SESSIONS_FOLDER = "sessions"
TOKEN_FILE = "token"
KEY_FILE = "oci_api_key.pem"
PUBLIC_KEY_FILE = "oci_api_key_public.pem"
REFRESH_TOKEN_FILE = "refresh_token"
LOCK_FILE = "woci.lock"
PID_FILE = "woci_refresh.pid"
DAEMON_STATE_FILE = "woci_daemon.state"
DAEMON_LOG_FILE = "woci_daemon.log"
MANAGER_INI_NAME = "woci_manager.ini"
COMMON_SECTION = "COMMON"
# configparser treats its default section as a base for all others; the manager INI's
# [DEFAULT] is an ordinary section (the one for profile DEFAULT), so the base gets a name
# no one uses.
UNUSED_DEFAULT_SECTION = "\x00woci-no-default-section"

OCI_PASSTHROUGH_OPTIONS = {
    "--profile": "profile",
    "--config-file": "config_file",
    "--region": "region",
    "--auth": "auth",
}


# oci's global options that take a value (oci-cli 3.95): their values are not command words.
OCI_VALUE_OPTIONS = frozenset({
    *OCI_PASSTHROUGH_OPTIONS, "--cli-rc-file", "--defaults-file", "--opc-request-id",
    "--opc-client-request-id", "--request-id", "--endpoint", "--connection-timeout",
    "--federation-endpoint", "--read-timeout", "--cert-bundle", "--output", "--query",
    "--auth-purpose", "--generate-param-json-input", "--proxy", "--max-retries",
    "--enable-propagation",
})


class WociError(Exception):
    """A failure the user can act on: one line of text and the exit code it maps to."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: Optional[int] = None):
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


class AuthError(WociError):
    """Sign-in, refresh or the provider failed."""


class GrantRefused(AuthError):
    """The provider refused a grant (invalid_grant): only a new sign-in helps."""


class SignInNeeded(AuthError):
    """A browser sign-in is needed but nobody can answer it here."""


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


def jwt_claims_unverified(token: str) -> dict:
    """The payload of a JWT, not verified: only the issuer's key could, and oci does the same.

    Written by hand because PyJWT imports cryptography, which the fast path must not load.
    """
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise ValueError("not a JWT (expected three dot-separated parts)")
    try:
        claims = json.loads(b64url_decode(parts[1]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("not a JWT (the payload is not base64url JSON)") from exc
    if not isinstance(claims, dict):
        raise ValueError("not a JWT (the payload is not a JSON object)")
    return claims


def jwt_expiry(token: str) -> int:
    exp = jwt_claims_unverified(token).get("exp")
    # The OCI CLI insists on an integer exp; a token it cannot use is no session.
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise ValueError("the token has no integer 'exp' claim")
    return exp


def parse_bool(text: str) -> bool:
    """configparser's rules: true/false, yes/no, on/off, 1/0 (any case)."""
    try:
        return configparser.ConfigParser.BOOLEAN_STATES[text.strip().lower()]
    except KeyError:
        raise ValueError(f"{text!r} is not a boolean (use true/false, yes/no, on/off or 1/0)")


def env_flag_is_true(value: Optional[str]) -> bool:
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
    digest = hashlib.md5(der).hexdigest()  # noqa: S324 - OCI's fingerprint format, not security
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def pkce_pair() -> Tuple[str, str]:
    """A PKCE code verifier (RFC 7636: 43-128 unreserved characters) and its S256 challenge."""
    verifier = secrets.token_urlsafe(64)
    challenge = b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())
    return verifier, challenge


def add_query(url: str, params: Mapping[str, str]) -> str:
    """The URL with params appended to whatever query it already has."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def clock_skew_seconds(server_date: Optional[str], now: float) -> Optional[float]:
    """How far the local clock is from a server's Date header, or None if it says nothing."""
    if not server_date:
        return None
    from email.utils import parsedate_to_datetime  # deferred: only failures need it

    try:
        return now - parsedate_to_datetime(server_date).timestamp()
    except (TypeError, ValueError):
        return None


def clock_skew_note(skew: Optional[float], where: str) -> str:
    if skew is None or abs(skew) <= CLOCK_SKEW_TOLERANCE_SECONDS:
        return ""
    direction = "ahead of" if skew > 0 else "behind"
    return (f" (this machine's clock is {abs(skew):.0f} s {direction} {where}'s; "
            "OCI refuses requests from a skewed clock: fix the clock)")


def retry_delay(attempt: int, retry_after: Optional[str], jitter: Callable[[], float]) -> float:
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
    seconds = int(seconds)
    if abs(seconds) < 120:
        return f"{seconds} s"
    if abs(seconds) < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def format_timestamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


# --------------------------------------------------------------------------------------------
# 3. Command line and settings
# --------------------------------------------------------------------------------------------


class OptionSpec(NamedTuple):
    flag: str
    key: str          # the INI key and the Settings field
    kind: str         # how the value is checked: text, url, port, seconds, bool, level, flag
    group: str
    help: str
    in_ini: bool = True


OPTIONS: Tuple[OptionSpec, ...] = (
    OptionSpec("--manager-config", "manager_config", "text", "Configuration",
               "The manager INI file. Default: env WOCI_MANAGER_CONFIG, else woci_manager.ini "
               "beside the OCI config file, else ~/.oci/woci_manager.ini. Taken wherever it "
               "stands on the command line.", in_ini=False),
    OptionSpec("--authz-base-url", "authz_base_url", "url", "Identity provider",
               "The provider's full authorization endpoint URL. Required."),
    OptionSpec("--token-url", "token_url", "url", "Identity provider",
               "The provider's token endpoint (authorization_code and refresh_token grants). "
               "Required."),
    OptionSpec("--auth-client-id", "auth_client_id", "text", "Identity provider",
               "The client registered at the provider. Required."),
    OptionSpec("--auth-client-secret", "auth_client_secret", "text", "Identity provider",
               "That client's secret, sent with HTTP Basic. Default: none (a public client "
               "using PKCE only)."),
    OptionSpec("--scope", "scope", "text", "Identity provider",
               f"Scopes to ask for. Default: '{DEFAULT_SCOPE}'."),
    OptionSpec("--redirect-port", "redirect_port", "port", "Identity provider",
               f"Port of the sign-in callback on 127.0.0.1. Default: {DEFAULT_REDIRECT_PORT}."),
    OptionSpec("--login-timeout", "login_timeout", "seconds", "Identity provider",
               f"How long a browser sign-in may take, in seconds. Default: "
               f"{DEFAULT_LOGIN_TIMEOUT}."),
    OptionSpec("--non-interactive", "interactive", "flag", "Identity provider",
               "Never open a browser: when a sign-in is needed, say so and exit 1. Also when "
               "env CI is true or the INI says interactive = false."),
    OptionSpec("--token-exchange-url", "token_exchange_url", "url", "OCI token exchange",
               "OCI's token-exchange endpoint. Default: the token URL."),
    OptionSpec("--client-id", "client_id", "text", "OCI token exchange",
               "The OCI token-exchange client. Required."),
    OptionSpec("--client-secret", "client_secret", "text", "OCI token exchange",
               "Its secret (the exchange uses HTTP Basic). Required."),
    OptionSpec("--refresh-token-passphrase-env", "refresh_token_passphrase_env", "text",
               "Refresh token encryption",
               "Encrypt the stored refresh token with the passphrase in this environment "
               "variable."),
    OptionSpec("--refresh-token-passphrase-prompt", "refresh_token_passphrase_prompt", "flag",
               "Refresh token encryption",
               "Encrypt the stored refresh token with a passphrase asked on the terminal "
               "(wins over the environment variable)."),
    OptionSpec("--auto-refresh", "auto_refresh", "flag", "Background refresh",
               "Keep the session fresh from a thread for as long as oci (or --exec's command) "
               "runs."),
    OptionSpec("--refresh-safety-window", "refresh_safety_window", "seconds",
               "Background refresh",
               f"Renew this many seconds before the session token expires. Default: "
               f"{DEFAULT_REFRESH_SAFETY_WINDOW}."),
    OptionSpec("--log-level", "log_level", "level", "Output",
               f"One of {', '.join(LOG_LEVELS)}. Default: {DEFAULT_LOG_LEVEL}. Logs go to "
               "stderr and never hold tokens or secrets."),
)
INI_ONLY_KEYS = {
    "redirect_path": "text",
    "region": "text",
    "prompt": "text",
    "encrypt_refresh_token": "bool",
}
MODE_FLAGS = {
    "--daemon": "daemon",
    "--daemon-status": "daemon_status",
    "--stop-daemon": "stop_daemon",
    "-h": "help",
    "--help": "help",
    "--version": "version",
}
OPTIONS_BY_FLAG = {spec.flag: spec for spec in OPTIONS}
INI_KINDS = {**{spec.key: ("bool" if spec.kind == "flag" else spec.kind)
                for spec in OPTIONS if spec.in_ini}, **INI_ONLY_KEYS}
REQUIRED_KEYS = ("authz_base_url", "token_url", "auth_client_id", "client_id", "client_secret")
SECRET_KEYS = ("auth_client_secret", "client_secret")


@dataclasses.dataclass(frozen=True)
class CommandLine:
    """argv split between woci and oci (SPEC section 2)."""

    woci: Dict[str, object]            # woci option key -> raw value (str) or True for flags
    oci_args: List[str]                # passed to oci unchanged, in order
    oci_options: Dict[str, str]        # --profile/--config-file/--region/--auth, read anywhere
    # run, exec, daemon, daemon_status, stop_daemon, help or version
    mode: str = "run"
    exec_argv: Tuple[str, ...] = ()


def _option_value(argv: List[str], index: int, name: str, inline: Optional[str]) -> Tuple[str, int]:
    """The value of option argv[index] and the index after it."""
    if inline is not None:
        return inline, index + 1
    if index + 1 >= len(argv):
        raise ConfigError(f"{name} needs a value")
    return argv[index + 1], index + 2


def split_command_line(argv: List[str]) -> CommandLine:
    """Split argv into woci's options and oci's arguments.

    woci's options stand before the oci command; from the first argument that is none of them
    (nor one of the four OCI options woci reads, nor a value), everything belongs to oci,
    because oci commands have options named like woci's (`--scope`, `--client-id`). Two
    exceptions keep kubeconfig exec entries short: --manager-config is taken anywhere, and
    --profile/--config-file/--region/--auth are read anywhere (and still passed to oci).
    """
    woci: Dict[str, object] = {}
    oci_args: List[str] = []
    oci_options: Dict[str, str] = {}
    mode = "run"
    exec_argv: Tuple[str, ...] = ()
    in_oci = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, has_inline, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        inline_value = inline if has_inline else None
        if name == "--manager-config":
            woci["manager_config"], i = _option_value(argv, i, name, inline_value)
        elif name in OCI_PASSTHROUGH_OPTIONS:
            value, nxt = _option_value(argv, i, name, inline_value)
            oci_options[OCI_PASSTHROUGH_OPTIONS[name]] = value
            oci_args.extend(argv[i:nxt])
            i = nxt
        elif in_oci:
            oci_args.append(arg)
            i += 1
        elif arg == "--":
            in_oci = True
            i += 1
        elif arg == "--exec":
            rest = argv[i + 1:]
            if rest[:1] == ["--"]:
                rest = rest[1:]
            if not rest:
                raise ConfigError("--exec needs a command: woci --exec -- CMD [ARGS...]")
            mode, exec_argv = "exec", tuple(rest)
            break
        elif name in MODE_FLAGS:
            if has_inline:
                raise ConfigError(f"{name} takes no value")
            if mode != "run":
                raise ConfigError(f"{name} cannot be combined with --{mode.replace('_', '-')}")
            mode = MODE_FLAGS[name]
            i += 1
        elif name in OPTIONS_BY_FLAG:
            spec = OPTIONS_BY_FLAG[name]
            if spec.kind == "flag":
                if has_inline:
                    raise ConfigError(f"{name} takes no value")
                woci[spec.key] = True
                i += 1
            else:
                woci[spec.key], i = _option_value(argv, i, name, inline_value)
        else:
            in_oci = True
            oci_args.append(arg)
            i += 1
    return CommandLine(woci, oci_args, oci_options, mode, exec_argv)


def oci_action(oci_args: List[str]) -> str:
    """What the oci arguments ask of woci: none, authenticate, refresh, or run."""
    command = oci_command_words(oci_args)
    if not command and all(a.partition("=")[0] in OCI_VALUE_OPTIONS for a in oci_args
                           if a.startswith("-")):
        return "none"   # only --profile and friends: nothing for oci to do
    if command[:2] == ["session", "authenticate"]:
        return "authenticate"
    if command[:2] == ["session", "refresh"]:
        return "refresh"
    return "run"


def oci_command_words(oci_args: List[str]) -> List[str]:
    """The oci command's words (`session refresh`), past oci's global options and values."""
    words: List[str] = []
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


@dataclasses.dataclass(frozen=True)
class Settings:
    profile: str
    oci_config_file: Path
    manager_config_file: Optional[Path]
    authz_base_url: str
    token_url: str
    token_exchange_url: str
    auth_client_id: str
    client_id: str
    client_secret: str
    auth_client_secret: Optional[str] = None
    scope: str = DEFAULT_SCOPE
    redirect_port: int = DEFAULT_REDIRECT_PORT
    redirect_path: str = DEFAULT_REDIRECT_PATH
    region: Optional[str] = None          # from the INI: always written to the profile
    cli_region: Optional[str] = None      # from --region: written only if the profile has none
    prompt: Optional[str] = None
    login_timeout: float = DEFAULT_LOGIN_TIMEOUT
    interactive: bool = True
    refresh_token_passphrase_env: Optional[str] = None
    refresh_token_passphrase_prompt: bool = False
    encrypt_refresh_token: bool = False
    auto_refresh: bool = False
    refresh_safety_window: float = DEFAULT_REFRESH_SAFETY_WINDOW
    log_level: str = DEFAULT_LOG_LEVEL
    ca_bundle: Optional[str] = None       # env OCI_CLI_CERT_BUNDLE, as the OCI CLI reads it

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.redirect_port}{self.redirect_path}"

    @property
    def encryption_wanted(self) -> bool:
        return bool(self.refresh_token_passphrase_prompt or self.refresh_token_passphrase_env
                    or self.encrypt_refresh_token)


def _home(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("HOME") or Path.home())


def _expand(path: str, environ: Mapping[str, str]) -> Path:
    if path == "~" or path.startswith("~/"):
        return _home(environ) / path[2:]
    return Path(path)


def resolve_profile(cmd: CommandLine, environ: Mapping[str, str]) -> str:
    profile = cmd.oci_options.get("profile") or environ.get("OCI_CLI_PROFILE") or DEFAULT_PROFILE
    if "/" in profile or profile in (".", "..") or "\x00" in profile:
        raise ConfigError(f"profile name {profile!r} cannot be a folder name")
    return profile


def resolve_oci_config_file(cmd: CommandLine, environ: Mapping[str, str]) -> Path:
    path = cmd.oci_options.get("config_file") or environ.get("OCI_CLI_CONFIG_FILE")
    return _expand(path, environ) if path else _home(environ) / ".oci" / "config"


def manager_config_candidates(cmd: CommandLine, environ: Mapping[str, str],
                              oci_config_file: Path) -> Tuple[List[Path], bool]:
    """Where to look for the manager INI, and whether the path was given explicitly."""
    explicit = cmd.woci.get("manager_config") or environ.get("WOCI_MANAGER_CONFIG")
    if explicit:
        return [_expand(str(explicit), environ)], True
    return [oci_config_file.parent / MANAGER_INI_NAME,
            _home(environ) / ".oci" / MANAGER_INI_NAME], False


def parse_manager_ini(text: str, source: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(default_section=UNUSED_DEFAULT_SECTION,
                                       interpolation=None)
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise ConfigError(f"manager config {source} is not valid INI: {_one_line(exc)}") from exc
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def load_manager_ini(candidates: List[Path], explicit: bool
                     ) -> Tuple[Optional[Path], Optional[configparser.ConfigParser]]:
    for path in candidates:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if explicit:
                raise ConfigError(f"manager config {path} does not exist")
            continue
        except (OSError, UnicodeDecodeError) as exc:
            if explicit:
                raise ConfigError(f"cannot read manager config {path}: {_describe_os_error(exc)}")
            LOG.warning("cannot read manager config %s (%s); going on without it", path,
                        _describe_os_error(exc))
            continue
        return path, parse_manager_ini(text, str(path))
    return None, None


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _one_line(exc)


def ini_values(parser: Optional[configparser.ConfigParser], profile: str) -> Dict[str, str]:
    """[COMMON] overlaid with the profile's own section."""
    values: Dict[str, str] = {}
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
        parts = urllib.parse.urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{key} in {where} must be an http(s) URL, not {text!r}")
        return text
    if kind == "port":
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
            raise ConfigError(f"{key} in {where} must be a port number 1-65535, not {text!r}")
        return int(text)
    if kind == "seconds":
        try:
            seconds = float(text)
        except ValueError:
            seconds = -1.0
        if not seconds > 0 or seconds != seconds or seconds == float("inf"):
            raise ConfigError(f"{key} in {where} must be a positive number of seconds, "
                              f"not {text!r}")
        return seconds
    if kind == "level":
        if text.upper() not in LOG_LEVELS:
            raise ConfigError(f"{key} in {where} must be one of {', '.join(LOG_LEVELS)}, "
                              f"not {text!r}")
        return text.upper()
    return text


def build_settings(cmd: CommandLine, environ: Mapping[str, str],
                   manager_ini: Optional[configparser.ConfigParser],
                   manager_path: Optional[Path]) -> Settings:
    """Settings from flag > INI [profile] > INI [COMMON] > defaults (SPEC section 3)."""
    profile = resolve_profile(cmd, environ)
    ini = ini_values(manager_ini, profile)
    ini_where = f"{manager_path} [{profile}] or [{COMMON_SECTION}]" if manager_path else "INI"
    unknown = sorted(set(ini) - set(INI_KINDS))
    if unknown:
        LOG.warning("ignoring unknown key(s) in %s: %s", manager_path, ", ".join(unknown))

    values: Dict[str, object] = {}
    for key, kind in INI_KINDS.items():
        if key in ini and ini[key].strip() != "":
            values[key] = _convert(key, kind, ini[key], ini_where)
    for spec in OPTIONS:
        if spec.key in cmd.woci and spec.key != "manager_config":
            if spec.kind == "flag":
                # --non-interactive is the one flag that sets its key to false.
                values[spec.key] = spec.key != "interactive"
            else:
                values[spec.key] = _convert(spec.key, spec.kind, cmd.woci[spec.key], spec.flag)

    missing = [key for key in REQUIRED_KEYS if not values.get(key)]
    if missing:
        where = manager_path or "~/.oci/woci_manager.ini"
        flags = ", ".join(f"{key} (--{key.replace('_', '-')})" for key in missing)
        raise ConfigError(f"missing settings: {flags}; set them in [{profile}] or "
                          f"[{COMMON_SECTION}] of {where}, or pass the flags")
    redirect_path = str(values.get("redirect_path", DEFAULT_REDIRECT_PATH))
    if not redirect_path.startswith("/"):
        raise ConfigError(f"redirect_path in {ini_where} must start with '/', "
                          f"not {redirect_path!r}")
    # Any source saying "not interactive" wins: an INI saying true must not make CI wait.
    interactive = bool(values.pop("interactive", True)) and not env_flag_is_true(
        environ.get("CI"))
    values.setdefault("token_exchange_url", values["token_url"])
    fields = {f.name for f in dataclasses.fields(Settings)}
    return Settings(
        profile=profile,
        oci_config_file=resolve_oci_config_file(cmd, environ),
        manager_config_file=manager_path,
        cli_region=cmd.oci_options.get("region"),
        interactive=interactive,
        ca_bundle=environ.get("OCI_CLI_CERT_BUNDLE") or None,
        **{k: v for k, v in values.items() if k in fields},
    )


def warn_if_secrets_exposed(path: Optional[Path], manager_ini: Optional[configparser.ConfigParser]
                            ) -> None:
    if path is None or manager_ini is None:
        return
    holds_secret = any(manager_ini.has_option(section, key)
                       for section in manager_ini.sections() for key in SECRET_KEYS)
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if holds_secret and mode & 0o077:
        LOG.warning("%s holds a client secret but other users can read it; run: chmod 600 %s",
                    path, path)


# --------------------------------------------------------------------------------------------
# 4. Storage: session files, atomic writes, the profile lock, the refresh token, the OCI config
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SessionPaths:
    folder: Path

    @classmethod
    def for_profile(cls, profile: str, environ: Mapping[str, str]) -> "SessionPaths":
        return cls(_home(environ) / ".oci" / SESSIONS_FOLDER / profile)

    token = property(lambda self: self.folder / TOKEN_FILE)
    key = property(lambda self: self.folder / KEY_FILE)
    public_key = property(lambda self: self.folder / PUBLIC_KEY_FILE)
    refresh_token = property(lambda self: self.folder / REFRESH_TOKEN_FILE)
    lock = property(lambda self: self.folder / LOCK_FILE)
    pid = property(lambda self: self.folder / PID_FILE)
    daemon_state = property(lambda self: self.folder / DAEMON_STATE_FILE)
    daemon_log = property(lambda self: self.folder / DAEMON_LOG_FILE)


def ensure_private_folder(folder: Path) -> None:
    """The folder, mode 0700, with any missing parents (~/.oci, sessions) made 0700 too."""
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    try:
        for path in reversed(missing):
            path.mkdir(mode=0o700, exist_ok=True)
        if folder.stat().st_mode & 0o077:
            folder.chmod(0o700)
    except OSError as exc:
        raise StorageError(f"cannot create {folder}: {_describe_os_error(exc)}") from exc


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write via a temporary file in the same folder, fsync, rename: readers see old or new."""
    folder = path.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {_describe_os_error(exc)}") from exc
    try:
        # mkstemp creates 0600; set the final mode before any data is in the file.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_folder(folder)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StorageError(f"cannot write {path}: {_describe_os_error(exc)}") from exc


def _fsync_folder(folder: Path) -> None:
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


def read_file_if_present(path: Path) -> Optional[bytes]:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError as exc:
        raise StorageError(f"{path} is a folder, not a file") from exc
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {_describe_os_error(exc)}") from exc


class ProfileLock:
    """An exclusive flock on the profile's lock file, bounded wait; the OS frees it on death.

    Held around read refresh token -> refresh -> exchange -> write, and around a browser
    sign-in, so parallel runs make one refresh and open one browser tab.
    """

    def __init__(self, path: Path, timeout: float, profile: str,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.path, self.timeout, self.profile = path, timeout, profile
        self.clock, self.sleep = clock, sleep
        self.fd: Optional[int] = None

    def __enter__(self) -> "ProfileLock":
        ensure_private_folder(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open lock file {self.path}: "
                               f"{_describe_os_error(exc)}") from exc
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
                raise WociError(f"another woci has been renewing profile {self.profile} for "
                                f"over {format_duration(self.timeout)}; gave up waiting for it "
                                f"(lock file {self.path})")
            if not logged:
                LOG.info("waiting for another woci that is renewing profile %s", self.profile)
                logged = True
            self.sleep(LOCK_POLL_SECONDS)
        self.fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


# --- the session token -----------------------------------------------------------------------


class TokenState(NamedTuple):
    token: Optional[str]
    expires_at: Optional[int]
    problem: Optional[str]   # why an existing token file cannot be used


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
    return state.expires_at is not None and state.expires_at - now > min_validity


# --- the refresh token ------------------------------------------------------------------------


class PassphraseSource:
    """Where the refresh-token passphrase comes from; asked at most once per process.

    A prompt wins over the environment variable (SPEC section 7). The daemon keeps the
    passphrase only in this object's memory.
    """

    def __init__(self, settings: Settings, environ: Mapping[str, str],
                 ask: Callable[[str], str] = getpass.getpass,
                 stdin_is_tty: Callable[[], bool] = lambda: sys.stdin is not None
                 and sys.stdin.isatty()):
        self.settings, self.environ = settings, environ
        self.ask, self.stdin_is_tty = ask, stdin_is_tty
        self._cached: Optional[str] = None

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
    return kdf.derive(passphrase.encode("utf-8"))


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


def decrypt_refresh_token(raw: bytes, passphrase: str, path: Path) -> str:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    damaged = f"the encrypted refresh token {path} is damaged"
    try:
        document = json.loads(raw)
        if document.get("format") != ENCRYPTED_FORMAT:
            raise ValueError("it is not a woci refresh-token file")
        if document.get("version") != ENCRYPTED_VERSION or document.get("kdf") != KDF_NAME:
            raise ValueError(f"unknown version {document.get('version')!r} or KDF "
                             f"{document.get('kdf')!r} (written by a newer woci?)")
        iterations = document["iterations"]
        if not isinstance(iterations, int) or iterations < PBKDF2_MIN_ITERATIONS:
            raise ValueError(f"implausible iteration count {iterations!r}")
        salt, nonce, ciphertext = (base64.b64decode(document[k], validate=True)
                                   for k in ("salt", "nonce", "ciphertext"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RefreshTokenError(f"{damaged} ({_one_line(exc)}); sign in again with "
                                "`woci session authenticate` to replace it") from exc
    try:
        plain = AESGCM(_derive_key(passphrase, salt, iterations)).decrypt(
            nonce, ciphertext, ENCRYPTION_AAD)
    except (InvalidTag, ValueError) as exc:
        raise RefreshTokenError(f"cannot decrypt the refresh token {path}: wrong passphrase, "
                                "or the file was altered") from exc
    return plain.decode("utf-8")


class RefreshTokenStore:
    """The refresh token on disk: plain text, or encrypted JSON when a passphrase is set."""

    def __init__(self, path: Path, passphrase: PassphraseSource):
        self.path, self.passphrase = path, passphrase

    def load(self) -> Optional[str]:
        raw = read_file_if_present(self.path)
        if raw is None:
            return None
        if is_encrypted_document(raw):
            if not self.passphrase.configured:
                raise RefreshTokenError(
                    f"the refresh token {self.path} is encrypted and no passphrase is "
                    "configured: set refresh_token_passphrase_env or "
                    "refresh_token_passphrase_prompt")
            return decrypt_refresh_token(raw, self.passphrase.get(), self.path)
        try:
            token = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            token = ""
        if not token or any(ch.isspace() or not ch.isprintable() for ch in token):
            raise RefreshTokenError(f"the refresh token file {self.path} is damaged (empty or "
                                    "not text); sign in again with `woci session authenticate` "
                                    "to replace it")
        return token

    def save(self, token: str) -> None:
        if self.passphrase.configured:
            creating = not self.holds_encrypted()
            data = encrypt_refresh_token(token, self.passphrase.get(creating=creating))
        else:
            data = token.encode("utf-8")
        atomic_write(self.path, data)

    def holds_encrypted(self) -> bool:
        try:
            raw = read_file_if_present(self.path)
        except StorageError:
            return False
        return raw is not None and is_encrypted_document(raw)


# --- the OCI config file ---------------------------------------------------------------------


def read_oci_config(path: Path) -> Tuple[Optional[str], configparser.ConfigParser]:
    """The OCI config's text (None when absent) and its parse, refusing one oci could not read."""
    raw = read_file_if_present(path)
    parser = configparser.ConfigParser(interpolation=None)
    if raw is None:
        return None, parser
    try:
        text = raw.decode("utf-8")
        parser.read_string(text, source=str(path))
    except (UnicodeDecodeError, configparser.Error) as exc:
        raise ConfigError(f"OCI config {path} is not valid INI: {_one_line(exc)}; "
                          "fix it first, woci changes nothing in it") from exc
    return text, parser


def _profile_exists(config: configparser.ConfigParser, profile: str) -> bool:
    """configparser never lists DEFAULT as a section, but oci reads it like one."""
    return config.has_section(profile) or profile == DEFAULT_PROFILE


def _is_section_header(line: str) -> Optional[str]:
    if line[:1].isspace():
        return None   # an indented line continues a value, as configparser reads it
    # configparser's own pattern: `[dev]   # a comment` is section dev too.
    match = configparser.ConfigParser.SECTCRE.match(line.strip())
    return match.group("header") if match else None


def _key_of(line: str) -> Optional[str]:
    if not line.strip() or line[:1].isspace() or line.lstrip()[:1] in ("#", ";"):
        return None
    # configparser's rule: the key ends at the first '=' or ':', whichever comes first.
    cut = min((line.find(sep) for sep in ("=", ":") if sep in line), default=-1)
    return line[:cut].strip().lower() if cut >= 0 else None


def upsert_profile(text: Optional[str], profile: str, values: Mapping[str, str]) -> str:
    """The config text with the profile's keys set; every other byte stays as it was."""
    newline = "\r\n" if text and "\r\n" in text else "\n"
    lines = (text or "").splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if _is_section_header(line) == profile), None)
    if start is None:
        out = "".join(lines)
        if out and not out.endswith(("\n", "\r")):
            out += newline
        if out.strip():
            out += newline
        out += f"[{profile}]{newline}"
        out += "".join(f"{key}={value}{newline}" for key, value in values.items())
        return out

    end = next((i for i in range(start + 1, len(lines)) if _is_section_header(lines[i])),
               len(lines))
    section = lines[start + 1:end]
    pending = dict(values)
    kept: List[str] = []
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


def write_oci_config(path: Path, old_text: Optional[str], new_text: str) -> None:
    if old_text == new_text:
        return
    target = Path(os.path.realpath(path))
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o600
        ensure_private_folder(target.parent)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {_describe_os_error(exc)}") from exc
    atomic_write(target, new_text.encode("utf-8"), mode)


# --------------------------------------------------------------------------------------------
# 5. HTTP and OpenID Connect
# --------------------------------------------------------------------------------------------


class TokenResponse(NamedTuple):
    access_token: str
    refresh_token: Optional[str]


def _no_netrc(request):
    """An auth hook that adds nothing: with it set, requests never reads ~/.netrc."""
    return request


def post_form(url: str, form: Mapping[str, str], what: str,
              basic: Optional[Tuple[str, str]] = None,
              now: Callable[[], float] = time.time,
              sleep: Callable[[float], None] = time.sleep,
              jitter: Callable[[], float] = random.random,
              ca_bundle: Optional[str] = None) -> dict:
    """POST a form and return the JSON answer, retrying what a retry can fix.

    Timeouts, refused connections, 429 and 5xx are retried with exponential backoff and
    jitter (honouring Retry-After). An OAuth error object raises OAuthError; anything else
    that is not JSON raises HttpError naming the endpoint.
    """
    import requests

    # Without a bundle of its own, requests reads REQUESTS_CA_BUNDLE and proxies from env.
    tls = {"verify": ca_bundle} if ca_bundle else {}
    last_problem = ""
    skew: Optional[float] = None
    for attempt in range(HTTP_ATTEMPTS):
        if attempt:
            LOG.info("retrying %s (%s)", what, last_problem)
        try:
            with requests.Session() as session:
                response = session.post(
                    url, data=dict(form), timeout=HTTP_TIMEOUT,
                    headers={"Accept": "application/json"},
                    auth=basic if basic else _no_netrc, allow_redirects=False, **tls)
        except requests.exceptions.SSLError as exc:
            raise HttpError(f"TLS failure talking to the {what} at {url}: "
                            f"{_short_cause(exc)}") from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            last_problem = _short_cause(exc)
            retry_after = None
        except requests.exceptions.RequestException as exc:
            raise HttpError(f"cannot call the {what} at {url}: {_short_cause(exc)}") from exc
        else:
            skew = clock_skew_seconds(response.headers.get("Date"), now())
            LOG.debug("%s answered HTTP %s", what, response.status_code)
            if response.status_code not in RETRYABLE_STATUSES:
                return _parse_oauth_answer(response, url, what, skew)
            last_problem = f"HTTP {response.status_code}"
            retry_after = response.headers.get("Retry-After")
        if attempt + 1 < HTTP_ATTEMPTS:
            sleep(retry_delay(attempt, retry_after, jitter))
    raise HttpError(f"the {what} at {url} failed {HTTP_ATTEMPTS} times, last with "
                    f"{last_problem}; try again later" + clock_skew_note(skew, "the server"))


def _short_cause(exc: BaseException) -> str:
    """The innermost reason of a requests failure, short enough for one line."""
    cause = exc
    while cause.__context__ is not None and cause.__context__ is not cause:
        cause = cause.__context__
    text = _one_line(cause) or type(cause).__name__
    if "timed out" in text.lower():
        return "timed out"
    if "refused" in text.lower():
        return "connection refused"
    return text[:200]


def _parse_oauth_answer(response, url: str, what: str, skew: Optional[float]) -> dict:
    note = clock_skew_note(skew, "the server")
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        ctype = response.headers.get("Content-Type", "no content type").split(";")[0]
        raise HttpError(f"the {what} at {url} answered HTTP {response.status_code} with "
                        f"{ctype} instead of JSON; is the URL right?{note}")
    if response.status_code >= 400 or "error" in document:
        error = str(document.get("error") or f"HTTP {response.status_code}")
        description = str(document.get("error_description") or "").strip()
        detail = f"{error}: {description}" if description else error
        raise OAuthError(f"the {what} at {url} refused the request: {detail}{note}",
                         error, response.status_code)
    return document


def _client_auth(settings: Settings) -> Optional[Tuple[str, str]]:
    if settings.auth_client_secret:
        return settings.auth_client_id, settings.auth_client_secret
    return None


def _token_response(document: dict, url: str) -> TokenResponse:
    access_token = document.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise AuthError(f"the token endpoint at {url} answered without an access_token")
    refresh = document.get("refresh_token")
    return TokenResponse(access_token, refresh if isinstance(refresh, str) and refresh else None)


def redeem_code(settings: Settings, code: str, verifier: str) -> TokenResponse:
    form = {"grant_type": "authorization_code", "code": code,
            "redirect_uri": settings.redirect_uri, "client_id": settings.auth_client_id,
            "code_verifier": verifier}
    try:
        document = post_form(settings.token_url, form, "token endpoint", _client_auth(settings),
                             ca_bundle=settings.ca_bundle)
    except OAuthError as exc:
        raise AuthError(f"sign-in failed: {exc}") from exc
    return _token_response(document, settings.token_url)


def refresh_grant(settings: Settings, refresh_token: str) -> TokenResponse:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token,
            "client_id": settings.auth_client_id}
    try:
        document = post_form(settings.token_url, form, "token endpoint", _client_auth(settings),
                             ca_bundle=settings.ca_bundle)
    except OAuthError as exc:
        if exc.error == "invalid_grant":
            raise GrantRefused(f"the provider refused the stored refresh token ({exc.error})"
                               ) from exc
        raise AuthError(f"refresh failed: {exc}") from exc
    return _token_response(document, settings.token_url)


# --- the browser sign-in ---------------------------------------------------------------------


class CallbackResult(NamedTuple):
    code: Optional[str]
    error: Optional[str]


CALLBACK_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>woci: {title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:34em;margin:4em auto;color:#222}}
h1{{font-size:1.4em}}</style></head>
<body><h1>{title}</h1><p>{message}</p></body></html>
"""


def callback_page(title: str, message: str) -> bytes:
    return CALLBACK_PAGE.format(title=html.escape(title), message=html.escape(message)).encode()


def evaluate_callback(query: Mapping[str, List[str]], expected_state: str) -> CallbackResult:
    """What one request to the callback path means for the sign-in."""
    state = (query.get("state") or [""])[0]
    if not secrets.compare_digest(state.encode(), expected_state.encode()):
        return CallbackResult(None, "the sign-in answer carried the wrong state (it did not "
                                    "come from this sign-in); run woci again")
    if query.get("error"):
        error = query["error"][0]
        description = (query.get("error_description") or [""])[0]
        return CallbackResult(None, f"the provider refused the sign-in: {error}"
                                    + (f": {description}" if description else ""))
    code = (query.get("code") or [""])[0]
    if not code:
        return CallbackResult(None, "the sign-in answer carried no authorization code")
    return CallbackResult(code, None)


def open_callback_server(port: int, path: str, state: str):
    """An HTTP server on 127.0.0.1:port that turns the first request to path into a result.

    http.server is imported here, not at the top: only a sign-in needs it, and importing it
    costs a run with a valid session a third of woci's start-up.
    """
    import http.server

    class CallbackServer(http.server.HTTPServer):
        expected_path, expected_state = path, state
        result: Optional[CallbackResult] = None

    class CallbackHandler(http.server.BaseHTTPRequestHandler):
        server: CallbackServer
        # Browsers open idle preconnect sockets: one must not hold the wait past its deadline.
        timeout = 1.0

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            parts = urllib.parse.urlsplit(self.path)
            if parts.path != self.server.expected_path or self.server.result is not None:
                # favicon.ico and other strays: not our business, and not the end of the wait.
                self._answer(404, callback_page("Not found", "This is woci's sign-in callback."))
                return
            result = evaluate_callback(urllib.parse.parse_qs(parts.query),
                                       self.server.expected_state)
            self.server.result = result
            if result.code:
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
            LOG.debug("callback answered a request")

    try:
        return CallbackServer(("127.0.0.1", port), CallbackHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AuthError(f"port {port} on 127.0.0.1 is in use, so the sign-in callback cannot "
                            "listen there; close what uses it or set redirect_port") from exc
        raise AuthError(f"cannot listen on 127.0.0.1:{port} for the sign-in callback: "
                        f"{exc.strerror}") from exc


def wait_for_callback(server, timeout: float,
                      clock: Callable[[], float] = time.monotonic) -> CallbackResult:
    deadline = clock() + timeout
    while server.result is None:
        remaining = deadline - clock()
        if remaining <= 0:
            raise AuthError(f"sign-in timed out after {format_duration(timeout)} waiting for "
                            "the browser to come back; run woci again (or raise login_timeout)")
        server.timeout = min(remaining, 1.0)
        server.handle_request()
    return server.result


def launch_browser(url: str) -> bool:
    """Open the URL from a helper process whose stdout is our stderr.

    stdout belongs to oci (kubectl parses it), and browser launchers print; some also wait
    for the browser to exit. A separate process keeps both away from woci, which may exec oci
    while the browser is still open.
    """
    code = "import sys, webbrowser; sys.exit(0 if webbrowser.open(sys.argv[1]) else 1)"
    try:
        subprocess.Popen([sys.executable, "-c", code, url], stdin=subprocess.DEVNULL,
                         stdout=sys.stderr.fileno(), start_new_session=True)
    except OSError as exc:
        LOG.warning("cannot start a browser: %s", exc.strerror)
        return False
    return True


def browser_sign_in(settings: Settings, open_browser: Callable[[str], bool] = launch_browser
                    ) -> Tuple[str, str]:
    """Authorization Code + PKCE in the browser: the authorization code and the verifier."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(32)
    params = {"response_type": "code", "client_id": settings.auth_client_id,
              "redirect_uri": settings.redirect_uri, "scope": settings.scope, "state": state,
              "code_challenge": challenge, "code_challenge_method": "S256"}
    if settings.prompt:
        params["prompt"] = settings.prompt
    url = add_query(settings.authz_base_url, params)
    server = open_callback_server(settings.redirect_port, settings.redirect_path, state)
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
    return result.code, verifier


# --------------------------------------------------------------------------------------------
# 6. Token exchange: the session key and the UPST
# --------------------------------------------------------------------------------------------


def load_private_key(path: Path):
    from cryptography.hazmat.primitives import serialization

    raw = read_file_if_present(path)
    if raw is None:
        return None
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        LOG.warning("the session key %s is unusable (%s); making a new one", path,
                    _one_line(exc) or type(exc).__name__)
        return None
    from cryptography.hazmat.primitives.asymmetric import rsa

    if not isinstance(key, rsa.RSAPrivateKey):
        LOG.warning("the session key %s is not an RSA key; making a new one", path)
        return None
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


def request_upst(settings: Settings, access_token: str, key) -> str:
    """Exchange the provider's access token (never the ID token) for a UPST bound to key."""
    form = {"grant_type": TOKEN_EXCHANGE_GRANT, "requested_token_type": UPST_TOKEN_TYPE,
            "subject_token": access_token, "subject_token_type": "jwt",
            "public_key": base64.b64encode(public_key_der(key)).decode("ascii")}
    try:
        document = post_form(settings.token_exchange_url, form, "OCI token exchange",
                             (settings.client_id, settings.client_secret),
                             ca_bundle=settings.ca_bundle)
    except OAuthError as exc:
        raise ExchangeError(str(exc)) from exc
    upst = document.get("token")
    if not isinstance(upst, str) or not upst:
        raise ExchangeError(f"the OCI token exchange at {settings.token_exchange_url} answered "
                            "without a token")
    check_upst(upst, key, settings.token_exchange_url)
    return upst


def check_upst(upst: str, key, url: str) -> None:
    """Refuse a UPST oci could not use: no integer exp, or bound to another key than ours."""
    try:
        claims = jwt_claims_unverified(upst)
        jwt_expiry(upst)
    except ValueError as exc:
        raise ExchangeError(f"the OCI token exchange at {url} answered with an unusable "
                            f"token ({exc})") from exc
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


# --------------------------------------------------------------------------------------------
# 7. The session: getting a valid UPST onto disk
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SessionManager:
    """Keeps one profile's session valid. The ladder, in ensure():

    1. The UPST is valid for more than min_validity seconds: nothing to do (no lock taken,
       no network, requests and cryptography not imported).
    2. Take the profile lock and look again: another woci may have renewed it meanwhile.
    3. A refresh token is stored: refresh grant, save a rotated refresh token at once (before
       the exchange can fail), exchange, write key, token and config. If the provider refuses
       the refresh token, re-read it once: another process may have rotated it.
    4. A browser sign-in, unless nobody can answer one (not interactive, the daemon, the
       auto-refresh thread): then SignInNeeded says what to run.
    """

    settings: Settings
    environ: Mapping[str, str]
    passphrase: PassphraseSource
    can_sign_in: bool = True
    open_browser: Callable[[str], bool] = launch_browser
    now: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self.paths = SessionPaths.for_profile(self.settings.profile, self.environ)
        self.refresh_tokens = RefreshTokenStore(self.paths.refresh_token, self.passphrase)

    def read_token(self) -> TokenState:
        return read_session_token(self.paths)

    def ensure(self, min_validity: float = EXPIRY_MARGIN_SECONDS, force: str = "") -> TokenState:
        """A session valid for min_validity more seconds; force is '', 'refresh' or 'sign-in'."""
        if not force:
            state = self.read_token()
            if session_is_fresh(state, self.now(), min_validity) and self._profile_is_wired():
                return state
        if not (self.can_sign_in and self.settings.interactive) and \
                not self.paths.refresh_token.exists():
            # Nothing but a sign-in could help: do not wait for a lock held by someone else's.
            raise SignInNeeded(sign_in_hint(self.settings))
        lock_timeout = self.settings.login_timeout + LOCK_GRACE_SECONDS
        with ProfileLock(self.paths.lock, lock_timeout, self.settings.profile):
            state = self.read_token()
            if not force and session_is_fresh(state, self.now(), min_validity):
                self._wire_profile(state.token)
                return state
            if state.problem:
                LOG.warning("%s; getting a new one", state.problem)
            # An OCI config woci could not update must stop it before a refresh or a sign-in.
            read_oci_config(self.settings.oci_config_file)
            if force != "sign-in" and self._renew_with_refresh_token():
                return self.read_token()
            self._sign_in()
            return self.read_token()

    def _renew_with_refresh_token(self) -> bool:
        """True when the stored refresh token gave a new session; False when sign-in is due."""
        refresh_token = self.refresh_tokens.load()
        if refresh_token is None:
            LOG.info("no refresh token stored for profile %s", self.settings.profile)
            return False
        try:
            try:
                tokens = refresh_grant(self.settings, refresh_token)
            except GrantRefused:
                again = self.refresh_tokens.load()
                if again is None or again == refresh_token:
                    raise
                LOG.info("the refresh token was rotated by another process; retrying with it")
                tokens = refresh_grant(self.settings, again)
                refresh_token = again
        except GrantRefused:
            LOG.warning("the provider refused the stored refresh token; a new sign-in is needed")
            return False
        if tokens.refresh_token and tokens.refresh_token != refresh_token:
            self.refresh_tokens.save(tokens.refresh_token)
        self._complete(tokens.access_token)
        LOG.info("renewed the session of profile %s without a browser", self.settings.profile)
        return True

    def _sign_in(self) -> None:
        if not self.can_sign_in or not self.settings.interactive:
            raise SignInNeeded(sign_in_hint(self.settings))
        if self.passphrase.configured:
            # Ask before the browser opens: a sign-in must not be lost to a missing passphrase.
            # Asked twice unless it already opened the old file: a typo would lock the user out.
            self.passphrase.get(creating=True)
        code, verifier = browser_sign_in(self.settings, self.open_browser)
        tokens = redeem_code(self.settings, code, verifier)
        if tokens.refresh_token:
            self.refresh_tokens.save(tokens.refresh_token)
        else:
            LOG.warning("the provider issued no refresh token (was offline_access granted? "
                        "some providers want prompt = consent); the next renewal will need "
                        "the browser again")
        self._complete(tokens.access_token)

    def _complete(self, access_token: str) -> None:
        """Exchange the access token and write key, token and profile, in that order."""
        ensure_private_folder(self.paths.folder)
        text, config = read_oci_config(self.settings.oci_config_file)
        key_path = self._key_path(config)
        key = load_private_key(key_path)
        created = key is None
        if created:
            key = new_private_key()
        upst = request_upst(self.settings, access_token, key)
        iat = jwt_claims_unverified(upst).get("iat")
        if isinstance(iat, (int, float)):
            note = clock_skew_note(self.now() - iat, "OCI")
            if note:
                LOG.warning("the new session token was issued at a time that%s", note)
        if created:
            atomic_write(key_path, private_key_pem(key))
        atomic_write(self.paths.public_key, public_key_pem(key))
        atomic_write(self.paths.token, upst.encode("ascii"))
        self._write_profile(text, config, key_path, upst)

    def _key_path(self, config: configparser.ConfigParser) -> Path:
        """The profile's own key_file when it lies in the session folder, else ours."""
        section = self.settings.profile
        if _profile_exists(config, section):
            configured = config.get(section, "key_file", fallback=None)
            if configured:
                path = _expand(configured, self.environ)
                if path.parent.resolve() == self.paths.folder.resolve():
                    return path
        return self.paths.key

    def _profile_values(self, config: configparser.ConfigParser, key_path: Path,
                        upst: str) -> Dict[str, str]:
        values = {"key_file": str(key_path.absolute()),
                  "security_token_file": str(self.paths.token.absolute())}
        public_pem = read_file_if_present(self.paths.public_key)
        if public_pem:
            try:
                values["fingerprint"] = md5_fingerprint(pem_body_der(public_pem))
            except ValueError:
                pass
        tenant = jwt_claims_unverified(upst).get("tenant")
        if isinstance(tenant, str) and tenant:
            values["tenancy"] = tenant
        profile = self.settings.profile
        has_region = _profile_exists(config, profile) and bool(
            config.get(profile, "region", fallback=None))
        if self.settings.region:
            values["region"] = self.settings.region
        elif self.settings.cli_region and not has_region:
            values["region"] = self.settings.cli_region
        return values

    def _write_profile(self, text: Optional[str], config: configparser.ConfigParser,
                       key_path: Path, upst: str) -> None:
        values = self._profile_values(config, key_path, upst)
        write_oci_config(self.settings.oci_config_file, text,
                         upsert_profile(text, self.settings.profile, values))

    def _profile_is_wired(self) -> bool:
        """True when the OCI profile already points at this session's token (cheap check)."""
        try:
            _, config = read_oci_config(self.settings.oci_config_file)
        except WociError:
            return False
        section = self.settings.profile
        if not _profile_exists(config, section):
            return False
        token_file = config.get(section, "security_token_file", fallback="")
        return (bool(config.get(section, "key_file", fallback=""))
                and _expand(token_file, self.environ) == self.paths.token.absolute())

    def _wire_profile(self, token: Optional[str]) -> None:
        """Point the profile at a session another process just made, if it does not yet."""
        if token and not self._profile_is_wired():
            text, config = read_oci_config(self.settings.oci_config_file)
            self._write_profile(text, config, self._key_path(config), token)


def sign_in_hint(settings: Settings) -> str:
    return (f"a browser sign-in is needed for OCI profile {settings.profile} and nobody can "
            f"answer it here; run `woci --profile {settings.profile} session authenticate` in a "
            "terminal with a browser, then try again")


# --------------------------------------------------------------------------------------------
# 8. Background refresh: the auto-refresh thread and the daemon
# --------------------------------------------------------------------------------------------

def renewal_lead(state: TokenState, safety_window: float) -> float:
    """How long before exp to renew: the safety window, but never earlier than two thirds
    into the token's life, so a short-lived UPST is not renewed over and over."""
    if not state.token or state.expires_at is None:
        return safety_window
    issued_at = jwt_claims_unverified(state.token).get("iat")
    if isinstance(issued_at, (int, float)) and state.expires_at > issued_at:
        return min(safety_window, (state.expires_at - issued_at) / 3)
    return safety_window


# Failures that waiting cannot fix: the background must stop and say what to do.
FATAL_IN_BACKGROUND = (SignInNeeded, RefreshTokenError, ConfigError)


class Renewer:
    """Renews a session before it expires; shared by the auto-refresh thread and the daemon.

    It reads the wall clock at every step instead of trusting how long it slept: a laptop
    that was suspended wakes past the renewal time and renews at once.
    """

    def __init__(self, manager: "SessionManager", safety_window: float,
                 now: Callable[[], float] = time.time):
        self.manager = dataclasses.replace(manager, can_sign_in=False, now=now)
        self.safety_window, self.now = safety_window, now
        self.failures = 0
        self.last: Optional[Dict[str, object]] = None   # time, ok, message of the last renewal

    def step(self) -> float:
        """Renew if due; the seconds to wait before the next step. Raises FATAL_IN_BACKGROUND."""
        state = self.manager.read_token()
        lead = renewal_lead(state, self.safety_window)
        if state.expires_at is None or state.expires_at - self.now() <= lead:
            try:
                state = self.manager.ensure(min_validity=lead)
            except FATAL_IN_BACKGROUND:
                raise
            except WociError as exc:
                self.failures += 1
                self.last = {"time": self.now(), "ok": False, "message": str(exc)}
                delay = min(BACKGROUND_RETRY_MAX_SECONDS,
                            BACKGROUND_RETRY_FIRST_SECONDS * 2 ** (self.failures - 1))
                LOG.warning("renewal failed, retrying in %s: %s", format_duration(delay), exc)
                return delay
            self.failures = 0
            self.last = {"time": self.now(), "ok": True,
                         "message": f"valid until {format_timestamp(state.expires_at or 0)}"}
            LOG.info("session of profile %s valid until %s", self.manager.settings.profile,
                     format_timestamp(state.expires_at or 0))
        return max(0.0, min(self.next_due(state) - self.now(), BACKGROUND_MAX_SLEEP_SECONDS))

    def next_due(self, state: TokenState) -> float:
        if state.expires_at is None:
            return self.now()
        return state.expires_at - renewal_lead(state, self.safety_window)


class AutoRefreshThread(threading.Thread):
    """Keeps the session fresh while a wrapped command runs; stops on a fatal failure."""

    def __init__(self, renewer: Renewer):
        super().__init__(name="woci-auto-refresh", daemon=True)
        self.renewer = renewer
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                wait = self.renewer.step()
            except WociError as exc:
                LOG.error("auto-refresh stopped: %s", exc)
                return
            self.stopping.wait(wait)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=HTTP_TIMEOUT[0] + HTTP_TIMEOUT[1])


FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# Signals a terminal sends to its whole foreground process group: the child has them already.
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT)


def _terminal_reaches_child() -> bool:
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def run_child(argv: List[str], env: Mapping[str, str], refresher: Optional[AutoRefreshThread]
              ) -> int:
    """Run argv as a child with signals forwarded; its exit code (128+N if killed by N)."""
    sys.stdout.flush()
    try:
        child = subprocess.Popen(argv, env=dict(env))
    except FileNotFoundError as exc:
        raise WociError(f"{argv[0]} not found on PATH", EXIT_OCI_NOT_FOUND) from exc
    except OSError as exc:
        raise WociError(f"cannot run {argv[0]}: {exc.strerror}") from exc

    def forward(signum, _frame):
        if signum in TERMINAL_SIGNALS and _terminal_reaches_child():
            return
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    if refresher is not None:
        refresher.start()
    try:
        code = child.wait()
    finally:
        if refresher is not None:
            refresher.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code if code >= 0 else 128 - code


def child_environment(environ: Mapping[str, str], settings: Settings) -> Dict[str, str]:
    env = dict(environ)
    env.update({"OCI_CLI_PROFILE": settings.profile,
                "OCI_CLI_CONFIG_FILE": str(settings.oci_config_file.absolute()),
                "OCI_CLI_AUTH": "security_token"})
    return env


# --- the daemon -------------------------------------------------------------------------------


class PidFile:
    """The daemon's pid file, flock-ed by the daemon for its whole life.

    The lock, not the pid, says whether a daemon runs: a stale file whose pid was reused by
    another process is never mistaken for a live daemon.
    """

    def __init__(self, path: Path):
        self.path = path
        self.fd: Optional[int] = None

    def acquire(self) -> bool:
        """Lock and write our pid; False if a live daemon holds it."""
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
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            os.close(self.fd)
            self.fd = None

    def holder(self) -> Optional[int]:
        """The pid of the live daemon, or None (removing a stale file)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DaemonError(f"cannot read the daemon's pid file {self.path}: "
                              f"{_describe_os_error(exc)}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                text = os.read(fd, 64).decode("ascii", "replace").strip()
                return int(text) if text.isdigit() else -1
            LOG.warning("removing a stale pid file %s (its daemon is gone)", self.path)
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            return None
        finally:
            os.close(fd)


def _redirect_stdio(log_path: Path) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def rotate_log_if_big(log_path: Path) -> None:
    """Keep the daemon log bounded: past the limit it becomes .1 and a new one starts."""
    try:
        if log_path.stat().st_size <= DAEMON_LOG_MAX_BYTES:
            return
        os.replace(log_path, log_path.with_name(log_path.name + ".1"))
    except OSError:
        return
    _redirect_stdio(log_path)


def write_daemon_state(paths: SessionPaths, renewer: Renewer, state: TokenState,
                       next_at: float) -> None:
    document = {"pid": os.getpid(), "profile": renewer.manager.settings.profile,
                "expires_at": state.expires_at, "next_renewal": next_at,
                "last_renewal": renewer.last}
    try:
        atomic_write(paths.daemon_state, json.dumps(document).encode())
    except StorageError as exc:
        LOG.warning("%s", exc)


def daemon_loop(renewer: Renewer, paths: SessionPaths, stopping: threading.Event) -> int:
    """Renew until stopped (exit 0) or until the refresh token is refused (exit 1)."""
    while not stopping.is_set():
        rotate_log_if_big(paths.daemon_log)
        try:
            wait = renewer.step()
        except WociError as exc:
            LOG.error("daemon stopping: %s", exc)
            return EXIT_FAILURE
        state = renewer.manager.read_token()
        write_daemon_state(paths, renewer, state, renewer.now() + wait)
        stopping.wait(wait)
    LOG.info("daemon stopped by a signal")
    return EXIT_OK


def _daemon_child(renewer: Renewer, paths: SessionPaths, ready_fd: int) -> int:
    """The detached grandchild: lock the pid file, tell the parent, renew until stopped."""
    os.umask(0o077)
    os.chdir("/")
    _redirect_stdio(paths.daemon_log)
    configure_logging(renewer.manager.settings.log_level if renewer.manager.settings.log_level
                      == "DEBUG" else "INFO", daemon=True)
    pid_file = PidFile(paths.pid)
    if not pid_file.acquire():
        os.write(ready_fd, f"busy {pid_file.holder() or ''}".encode())
        os.close(ready_fd)
        return EXIT_FAILURE
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stopping.set())
    os.write(ready_fd, f"ok {os.getpid()}".encode())
    os.close(ready_fd)
    LOG.info("daemon started for profile %s (pid %d)", renewer.manager.settings.profile,
             os.getpid())
    try:
        return daemon_loop(renewer, paths, stopping)
    finally:
        pid_file.release()


def start_daemon(renewer: Renewer, paths: SessionPaths) -> int:
    """Double fork; the parent returns the daemon's pid once its pid file is locked."""
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    first = os.fork()
    if first == 0:
        os.close(read_fd)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        code = EXIT_FAILURE
        try:
            code = _daemon_child(renewer, paths, write_fd)
        except BaseException:  # the log is all a detached process has
            LOG.exception("daemon crashed")
        finally:
            os._exit(code)
    os.close(write_fd)
    os.waitpid(first, 0)
    answer = _read_with_deadline(read_fd, DAEMON_START_TIMEOUT_SECONDS)
    os.close(read_fd)
    word, _, pid = answer.partition(" ")
    if word == "ok" and pid.isdigit():
        return int(pid)
    if word == "busy":
        raise DaemonError(f"a woci daemon already runs for profile "
                          f"{renewer.manager.settings.profile} (pid {pid or 'unknown'})")
    raise DaemonError(f"the daemon did not start; see {paths.daemon_log}")


def _read_with_deadline(fd: int, timeout: float) -> str:
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


def daemon_status_report(paths: SessionPaths, profile: str, now: float) -> Tuple[int, str]:
    pid = PidFile(paths.pid).holder()
    if pid is None:
        return EXIT_FAILURE, f"no woci daemon runs for profile {profile}\n"
    lines = [f"woci daemon for profile {profile}: running, pid {pid}"]
    state: Dict[str, object] = {}
    raw = read_file_if_present(paths.daemon_state)
    if raw:
        try:
            state = json.loads(raw)
        except ValueError:
            state = {}
    token = read_session_token(paths)
    if token.expires_at is not None:
        lines.append(f"session token expires: {format_timestamp(token.expires_at)} "
                     f"(in {format_duration(token.expires_at - now)})")
    last = state.get("last_renewal")
    if isinstance(last, dict):
        outcome = "ok" if last.get("ok") else f"failed: {last.get('message')}"
        lines.append(f"last renewal: {format_timestamp(float(last.get('time') or 0))}, "
                     f"{outcome}")
    else:
        lines.append("last renewal: none yet")
    if isinstance(state.get("next_renewal"), (int, float)):
        lines.append(f"next check: {format_timestamp(float(state['next_renewal']))}")
    return EXIT_OK, "\n".join(lines) + "\n"


def _profile_lock_busy(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def stop_daemon(paths: SessionPaths, profile: str,
                sleep: Callable[[float], None] = time.sleep) -> int:
    pid_file = PidFile(paths.pid)
    pid = pid_file.holder()
    if pid is None or pid <= 0:
        raise DaemonError(f"no woci daemon runs for profile {profile}", EXIT_FAILURE)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + DAEMON_STOP_TIMEOUT_SECONDS
    # A daemon in the middle of a renewal holds the profile lock: killing it then could lose
    # a rotated refresh token, so it gets as long as its HTTP calls can take.
    renewal_deadline = time.monotonic() + DAEMON_RENEWAL_STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline or (time.monotonic() < renewal_deadline
                                          and _profile_lock_busy(paths.lock)):
        if PidFile(paths.pid).holder() is None:
            return pid
        sleep(0.1)
    LOG.warning("daemon %d did not stop within %s; killing it", pid,
                format_duration(DAEMON_STOP_TIMEOUT_SECONDS))
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + DAEMON_STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline and PidFile(paths.pid).holder() is not None:
        sleep(0.1)
    return pid

# --------------------------------------------------------------------------------------------
# 9. Running oci
# --------------------------------------------------------------------------------------------


def _has_option(args: List[str], name: str) -> bool:
    return any(arg == name or arg.startswith(name + "=") for arg in args)


def build_oci_argv(oci_args: List[str], profile: str) -> List[str]:
    argv = ["oci"]
    if not _has_option(oci_args, "--profile"):
        argv += ["--profile", profile]
    if not _has_option(oci_args, "--auth"):
        argv += ["--auth", "security_token"]
    return argv + list(oci_args)


def exec_oci(argv: List[str]) -> None:
    """Replace this process with oci: its exit code and signals become the caller's directly."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError as exc:
        raise WociError("oci not found on PATH; install the OCI CLI (pip install oci-cli)",
                        EXIT_OCI_NOT_FOUND) from exc
    except OSError as exc:
        raise WociError(f"cannot run {argv[0]}: {exc.strerror}") from exc


# --------------------------------------------------------------------------------------------
# 10. Command line interface
# --------------------------------------------------------------------------------------------

EXAMPLES = """\
examples:
  woci --profile dev os ns get            sign in if needed, then run `oci os ns get`
  woci --profile dev session authenticate sign in again in the browser now
  woci --profile dev                      make sure the session is valid, run nothing
  woci --auto-refresh --exec -- ./job.sh  keep the session fresh while a long job runs

Everything after woci's own options goes to oci unchanged; see `oci --help`.
"""


def help_text() -> str:
    import argparse

    parser = argparse.ArgumentParser(
        prog="woci", usage="woci [woci options] [oci arguments...]",
        description="Keep an OCI session token (UPST) valid from your OpenID provider, then run "
                    "`oci --auth security_token` with your arguments.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    groups: Dict[str, object] = {}
    for spec in OPTIONS:
        group = groups.setdefault(spec.group, parser.add_argument_group(spec.group))
        if spec.kind == "flag":
            group.add_argument(spec.flag, action="store_true", help=spec.help)  # type: ignore
        else:
            group.add_argument(spec.flag, metavar=spec.key.upper(), help=spec.help)  # type: ignore
    oci = parser.add_argument_group("OCI options woci reads (and passes on to oci)")
    oci.add_argument("--profile", help="The OCI profile. Default: env OCI_CLI_PROFILE, "
                                       "else DEFAULT.")
    oci.add_argument("--config-file", help="The OCI config file. Default: env "
                                           "OCI_CLI_CONFIG_FILE, else ~/.oci/config.")
    oci.add_argument("--region", help="Written to the profile only if it has no region yet.")
    oci.add_argument("--auth", help="Default: security_token.")
    modes = parser.add_argument_group("Modes")
    modes.add_argument("--exec", metavar="-- CMD", help="Run CMD instead of oci, with "
                       "OCI_CLI_PROFILE, OCI_CLI_CONFIG_FILE and OCI_CLI_AUTH=security_token set.")
    modes.add_argument("--daemon", action="store_true", help="Keep the session fresh from a "
                       "background process; print its pid.")
    modes.add_argument("--daemon-status", action="store_true", help="Report the daemon; exit 1 "
                       "if none runs.")
    modes.add_argument("--stop-daemon", action="store_true", help="Stop the daemon.")
    modes.add_argument("-h", "--help", action="store_true", help="Show this help.")
    modes.add_argument("--version", action="store_true", help="Show woci's version.")
    return parser.format_help()


def configure_logging(level: str, daemon: bool = False) -> None:
    fmt = "%(asctime)s woci[%(process)d]: %(levelname)s: %(message)s" if daemon else \
        "woci: %(levelname)s: %(message)s"
    for handler in list(LOG.handlers):
        LOG.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    LOG.addHandler(handler)
    LOG.propagate = False
    LOG.setLevel(level)


def load_settings(cmd: CommandLine, environ: Mapping[str, str]) -> Settings:
    oci_config = resolve_oci_config_file(cmd, environ)
    candidates, explicit = manager_config_candidates(cmd, environ, oci_config)
    path, ini = load_manager_ini(candidates, explicit)
    settings = build_settings(cmd, environ, ini, path)
    configure_logging(settings.log_level)
    warn_if_secrets_exposed(path, ini)
    return settings


def new_manager(settings: Settings, environ: Mapping[str, str]) -> SessionManager:
    return SessionManager(settings, environ, PassphraseSource(settings, environ))


def auto_refresher(manager: SessionManager) -> Optional[AutoRefreshThread]:
    if not manager.settings.auto_refresh:
        return None
    if manager.passphrase.configured:
        manager.passphrase.get()  # asked now: later the command owns the terminal
    return AutoRefreshThread(Renewer(manager, manager.settings.refresh_safety_window))


def run_oci_mode(cmd: CommandLine, settings: Settings, environ: Mapping[str, str]) -> int:
    manager = new_manager(settings, environ)
    action = oci_action(cmd.oci_args)
    force = {"authenticate": "sign-in", "refresh": "refresh"}.get(action, "")
    manager.ensure(force=force)
    if action in ("none", "authenticate", "refresh"):
        if action != "none":
            print(f"woci: the session of profile {settings.profile} is valid until "
                  f"{format_timestamp(manager.read_token().expires_at or 0)}", file=sys.stderr)
        return EXIT_OK
    argv = build_oci_argv(cmd.oci_args, settings.profile)
    refresher = auto_refresher(manager)
    if refresher is None:
        exec_oci(argv)
    return run_child(argv, environ, refresher)


def run_exec_mode(cmd: CommandLine, settings: Settings, environ: Mapping[str, str]) -> int:
    manager = new_manager(settings, environ)
    manager.ensure()
    return run_child(list(cmd.exec_argv), child_environment(environ, settings),
                     auto_refresher(manager))


def run_daemon_mode(settings: Settings, environ: Mapping[str, str]) -> int:
    manager = new_manager(settings, environ)
    paths = manager.paths
    running = PidFile(paths.pid).holder() if paths.folder.is_dir() else None
    if running is not None:
        raise DaemonError(f"a woci daemon already runs for profile {settings.profile} "
                          f"(pid {running})")
    manager.ensure()
    if manager.passphrase.configured:
        manager.passphrase.get()  # asked here, kept in the daemon's memory only
    pid = start_daemon(Renewer(manager, settings.refresh_safety_window), paths)
    print(pid)
    print(f"woci: daemon for profile {settings.profile} started (pid {pid}); log: "
          f"{paths.daemon_log}", file=sys.stderr)
    return EXIT_OK


def run_daemon_control(cmd: CommandLine, environ: Mapping[str, str]) -> int:
    """--daemon-status and --stop-daemon need only the profile, not the provider settings."""
    profile = resolve_profile(cmd, environ)
    paths = SessionPaths.for_profile(profile, environ)
    if cmd.mode == "daemon_status":
        code, report = daemon_status_report(paths, profile, time.time())
        sys.stdout.write(report)
        return code
    pid = stop_daemon(paths, profile)
    print(f"woci: stopped the daemon of profile {profile} (pid {pid})", file=sys.stderr)
    return EXIT_OK


def main(argv: Optional[List[str]] = None, environ: Optional[Mapping[str, str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    configure_logging(DEFAULT_LOG_LEVEL)
    try:
        cmd = split_command_line(argv)
        if cmd.mode == "help":
            sys.stdout.write(help_text())
            return EXIT_OK
        if cmd.mode == "version":
            print(f"woci {__version__}")
            return EXIT_OK
        if cmd.mode in ("daemon_status", "stop_daemon"):
            return run_daemon_control(cmd, environ)
        settings = load_settings(cmd, environ)
        if cmd.mode == "exec":
            return run_exec_mode(cmd, settings, environ)
        if cmd.mode == "daemon":
            return run_daemon_mode(settings, environ)
        return run_oci_mode(cmd, settings, environ)
    except WociError as exc:
        LOG.debug("failure details", exc_info=True)
        print(f"woci: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("woci: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
