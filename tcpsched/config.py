"""Settings as frozen attrs values, and the flag and environment parsing that builds them.

Every process gets one settings object at its entry point and passes it down; nothing reads
flags or the environment anywhere else. Every flag has a default that works on loopback.
`UsageParser` raises `ConfigError` instead of exiting, so the console can reuse the parsers and
the entry points can print one line and exit 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import attrs

from tcpsched.core.backpressure import MAX_PENDING_DEFAULT
from tcpsched.core.capabilities import parse_allow_call
from tcpsched.core.dispatch import POLICIES
from tcpsched.core.limits import ARRAY_ITEMS_MAX, FRAME_BYTES_MAX, MAP_ITEMS_MAX
from tcpsched.core.prefetch import PREFETCH_MAX
from tcpsched.core.printable import worker_problem
from tcpsched.errors import ConfigError
from tcpsched.output import write_all

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7001
DEFAULT_COORDINATORS = (f"{DEFAULT_HOST}:{DEFAULT_PORT}",)
FSYNC_POLICIES = ("always", "batch", "never")
LOG_LEVELS = ("debug", "info", "warning", "error")
ENV_COORDINATORS = "TCPSCHED_COORDINATORS"
ENV_TOKEN = "TCPSCHED_TOKEN"
ENV_TOKEN_FILE = "TCPSCHED_TOKEN_FILE"
ISOLATIONS = ("process", "thread")  # runtime/executor.py: how a worker runs Python callables
MEMORY_MIB_MIN = 64  # below this an interpreter with msgpack loaded cannot even start a call


class UsageParser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line) instead of printing usage and exiting, and
    writes help and --version whole even to a slow or closed pipe (`tcpsched.output`)."""

    def error(self, message: str) -> NoReturn:
        # "argument --timeout: must be ..." reads better as "--timeout must be ...".
        message = re.sub(r"^argument (--[\w-]+): (must )", r"\1 \2", message)
        raise ConfigError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status:
            raise ConfigError(message or f"{self.prog}: error")
        raise SystemExit(status)

    def _print_message(self, message: str, file: Any = None) -> None:
        from tcpsched.output import EXIT_BROKEN_PIPE, OutputError, ReaderGone, silence_stdout

        if not message:
            return
        try:
            write_all(message, file if file is not None else sys.stderr)
        except ReaderGone:
            silence_stdout()
            raise SystemExit(EXIT_BROKEN_PIPE) from None
        except OutputError as exc:
            raise ConfigError(str(exc)) from None


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout (the exit codes) and ends every flag's help with its default,
    unless the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, [], argparse.SUPPRESS)
                or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def version_text() -> str:
    """`--version`: the installed distribution's version, else the package's."""
    from importlib import metadata

    try:
        return f"tcpsched {metadata.version('tcpsched')}"
    except metadata.PackageNotFoundError:
        from tcpsched import __version__

        return f"tcpsched {__version__}"


SETTINGS_EPILOG = f"""settings come from, strongest first: flags; the --config file (TOML:
every flag is a key, without its dashes, '-' or '_' alike, e.g. heartbeat_interval = 0.5;
repeatable flags take a list); ${ENV_COORDINATORS}, ${ENV_TOKEN}, ${ENV_TOKEN_FILE}; the
defaults shown above. Exit codes: 0 ok, 2 usage or configuration error, 4 authentication refused."""


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="FILE.toml",
                        help="read settings from a TOML file; flags override it "
                        "(default: none)")


def _config_action(parser: argparse.ArgumentParser, key: str) -> argparse.Action | None:
    """The flag a config-file key names: `heartbeat_interval` or `heartbeat-interval`."""
    wanted = "--" + key.replace("_", "-")
    for action in parser._actions:
        if wanted in action.option_strings and action.help is not argparse.SUPPRESS \
                and wanted not in ("--help", "--config", "--version"):
            return action
    return None


def _config_value(action: argparse.Action, key: str, value: Any, where: str) -> Any:
    """A config-file value as the flag's parsed value; ConfigError naming the key if its type
    or range is wrong (the same checks as the flag's)."""
    flag = action.option_strings[0]
    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false (like {flag}), not "
                              f"{type(value).__name__} {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [_config_scalar(action, key, item, where) for item in items]
    if isinstance(value, list) and action.metavar and "," in str(action.metavar):
        if not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{where}: {key} must be a list of strings")
        value = ",".join(value)
    return _config_scalar(action, key, value, where)


def _config_scalar(action: argparse.Action, key: str, value: Any, where: str) -> Any:
    converter = action.type
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{where}: {key} must be "
                          f"{'a number' if converter is not None else 'a string'}, not "
                          f"{type(value).__name__} {value!r}")
    if converter is None and not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, not {type(value).__name__} "
                          f"{value!r}")
    text = str(value)
    try:
        parsed = converter(text) if callable(converter) else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from None
    if action.choices is not None and parsed not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"{where}: {key} must be one of {choices}, not {value!r}")
    return parsed


def read_config_file(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """The settings of a TOML file as {dest: parsed value}, checked like the flags.

    Unknown keys are an error naming the key: a misspelt setting silently ignored would run a
    cluster with a default nobody chose."""
    import tomllib

    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        action = _config_action(parser, key)
        if action is None:
            raise ConfigError(f"{path}: unknown key {key!r} (keys are the flags of {parser.prog} "
                              "without their dashes, see --help)")
        if isinstance(value, dict):
            raise ConfigError(f"{path}: {key} must be a value, not a table")
        values[action.dest] = _config_value(action, key, value, path)
    return values


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None
                      ) -> argparse.Namespace:
    """Parse `argv`, with a `--config` file's settings as the defaults, so that flags override
    the file and the file overrides the built-in defaults (and the environment, which is read
    only for settings still unset: see parse_coordinators and read_token)."""
    args = parser.parse_args(argv)
    if args.config is None:
        return args
    values = read_config_file(parser, args.config)
    appended = {action.dest for action in parser._actions
                if isinstance(action, argparse._AppendAction)}
    # A repeatable flag given on the command line replaces the file's list, not extends it.
    parser.set_defaults(**{k: v for k, v in values.items() if k not in appended})
    args = parser.parse_args(argv)
    for dest in appended & values.keys():
        if not getattr(args, dest):
            setattr(args, dest, values[dest])
    return args


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _host_problem(host: str) -> str | None:
    """Why `host` is neither an IP address nor a DNS name, or None."""
    try:
        ipaddress.ip_address(host.partition("%")[0])  # a v6 literal may carry a zone
        return None
    except ValueError:
        pass
    if "://" in host or "/" in host:
        return f"host {host!r} looks like a URL: give HOST:PORT, without a scheme or path"
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return (f"host {host!r} is not a host name or IP address (letters, digits, '-' and "
                "'.' only; separate several addresses with commas)")
    return None


def parse_address(text: str) -> tuple[str, int]:
    """'host:port' (or '[v6]:port') into a pair, or ConfigError."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ConfigError(f"address {text!r} must look like HOST:PORT")
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"address {text!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"address {text!r}: port must be within 0-65535")
    problem = _host_problem(host)
    if problem is not None:
        raise ConfigError(f"address {text!r}: {problem}")
    return host, number


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True only for addresses that cannot be reached from another machine."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name: it may resolve anywhere, so it is not trusted as local
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def parse_coordinators(text: str | None) -> tuple[str, ...]:
    """Addresses from a flag, else $TCPSCHED_COORDINATORS, else 127.0.0.1:7001.

    A bad address is a usage error naming where it came from, found here rather than as a
    name lookup failure ("no coordinator reachable") once the connection is tried."""
    source = "--coordinators"
    if text is None:
        text = os.environ.get(ENV_COORDINATORS) or None
        source = f"${ENV_COORDINATORS}"
    if text is None:
        return DEFAULT_COORDINATORS
    addresses = tuple(a.strip() for a in text.split(",") if a.strip())
    if not addresses:
        raise ConfigError(f"{source}: no coordinator address given")
    for address in addresses:
        try:
            parse_address(address)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return addresses


def read_token(token_file: str | None) -> bytes | None:
    """The shared token from --token-file, $TCPSCHED_TOKEN or $TCPSCHED_TOKEN_FILE, if any."""
    path = token_file or os.environ.get(ENV_TOKEN_FILE) or None
    if token_file is None and os.environ.get(ENV_TOKEN):
        token = os.environ[ENV_TOKEN].strip().encode()
        if not token:
            raise ConfigError(f"${ENV_TOKEN} is blank")
        return token
    if path is None:
        return None
    try:
        token = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


@attrs.frozen
class TlsSettings:
    """Paths for TLS (see runtime/tls.py). A listener with a CA requires client certificates."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None

    @property
    def enabled(self) -> bool:
        return self.cert is not None or self.ca is not None

    @property
    def authenticates_dialers(self) -> bool:
        """On a listener: only holders of a certificate signed by the CA get in."""
        return self.cert is not None and self.ca is not None


def add_tls_flags(parser: argparse.ArgumentParser | Any, default: Any = None) -> None:
    """The TLS flags; `default` is argparse.SUPPRESS where they repeat after a command."""
    parser.add_argument("--tls-cert", default=default, metavar="PEM",
                        help="this process's TLS certificate, PEM (may hold the key too) "
                        "(default: no TLS)")
    parser.add_argument("--tls-key", default=default, metavar="PEM",
                        help="its private key, PEM (default: in --tls-cert)")
    parser.add_argument("--tls-ca", default=default, metavar="PEM",
                        help="CA that signs the cluster's certificates, PEM; on a listener it "
                        "makes TLS mutual (default: the system's CAs)")


def tls_from_args(args: Any) -> TlsSettings:
    tls = TlsSettings(cert=args.tls_cert, key=args.tls_key, ca=args.tls_ca)
    if tls.key is not None and tls.cert is None:
        raise ConfigError("--tls-key needs --tls-cert")
    return tls


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 0")
    return value


@attrs.frozen
class CoordinatorSettings:
    node_id: int = 1
    listen: tuple[str, int] = (DEFAULT_HOST, DEFAULT_PORT)
    peers: tuple[tuple[int, str], ...] = ()
    data_dir: Path = Path("tcpsched-data/c1")
    policy: str = "round-robin"
    fsync: str = "always"
    heartbeat_interval_s: float = 0.5
    heartbeat_timeout_s: float = 2.0
    token: bytes | None = None
    log_level: str = "info"
    keep_finished: int = 100_000
    keep_finished_for_s: float | None = None
    keep_output_bytes: int = 256 * 1024 * 1024
    repair: bool = False  # keep the good prefix of a corrupt journal (not merely torn at its end)
    compact_bytes: int = 64 * 1024 * 1024  # compact once the journal segment passes this...
    compact_records: int = 500_000  # ...or holds this many records
    poison_workers_max: int = 3
    max_pending: int = MAX_PENDING_DEFAULT
    breaker_failures: int = 3
    breaker_cooldown_s: float = 30.0
    breaker_cooldown_max_s: float = 600.0
    retry_base_s: float = 1.0
    retry_cap_s: float = 60.0
    frame_bytes_max: int = FRAME_BYTES_MAX
    handshake_timeout_s: float = 5.0
    unauthenticated_max: int = 64
    unauthenticated_per_source_max: int = 32
    output_bytes_max: int = 64 * 1024 * 1024
    array_items_max: int = ARRAY_ITEMS_MAX
    map_items_max: int = MAP_ITEMS_MAX
    idle_timeout_s: float = 60.0  # 0: never close idle connections
    seed: int | None = None
    tls: TlsSettings = TlsSettings()
    election_timeout_s: float = 1.0  # a follower that hears no leader this long elects
    hold_down_s: float = 3.0  # a higher id follows, caught up, this long before taking over
    peer_heartbeat_s: float = 0.1  # the leader's beat to its followers
    http: tuple[str, int] | None = None  # the dashboard, REST API and /metrics (runtime/http)
    peer_http: tuple[tuple[int, str], ...] = ()  # peers' HTTP addresses (a follower redirects)

    @property
    def address(self) -> str:
        return format_address(*self.listen)


def coordinator_parser() -> UsageParser:
    p = UsageParser(prog="python -m tcpsched.coordinator",
                    description="Run a tcpsched coordinator.", formatter_class=HelpFormatter,
                    epilog=SETTINGS_EPILOG)
    add_config_flag(p)
    p.add_argument("--id", type=_positive_int, default=1, help="this coordinator's id")
    p.add_argument("--listen", default=f"{DEFAULT_HOST}:{DEFAULT_PORT}", metavar="HOST:PORT",
                   help="address to serve workers, clients and peers on (a non-loopback "
                   "address needs a token)")
    p.add_argument("--peer", action="append", default=[], metavar="ID@HOST:PORT",
                   help="another coordinator of the group (repeatable; every member lists "
                   "all the others; default: none, a cluster of one)")
    p.add_argument("--election-timeout", type=_positive_float, default=1.0, metavar="S",
                   help="a follower that hears no leader for S seconds starts an election; a "
                   "leader that hears no majority that long steps down")
    p.add_argument("--hold-down", type=_non_negative_float, default=3.0, metavar="S",
                   help="a coordinator with a higher id than the leader takes over only "
                   "after following it, caught up, for S seconds")
    p.add_argument("--peer-heartbeat", type=_positive_float, default=0.1, metavar="S",
                   help="seconds between the leader's beats to its followers")
    p.add_argument("--data-dir", default=None,
                   help="journal and snapshot directory (default: ./tcpsched-data/cID)")
    p.add_argument("--policy", choices=POLICIES, default="round-robin",
                   help="how the leader picks a worker for a job")
    p.add_argument("--fsync", choices=FSYNC_POLICIES, default="always",
                   help="when the journal is synced to disk: before every acknowledgement, "
                   "in batches, or never")
    p.add_argument("--heartbeat-interval", type=_positive_float, default=0.5, metavar="S",
                   help="seconds between a worker's heartbeats (told to workers when they "
                   "register)")
    p.add_argument("--heartbeat-timeout", type=_positive_float, default=2.0, metavar="S",
                   help="seconds of silence after which a worker is dead and its jobs run "
                   "elsewhere, more than --heartbeat-interval")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="file holding the cluster's shared token (default: $TCPSCHED_TOKEN, "
                   "else $TCPSCHED_TOKEN_FILE, else no token: loopback only)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="log verbosity")
    p.add_argument("--keep-finished", type=_positive_int, default=100_000, metavar="N",
                   help="finished jobs kept in memory and snapshots")
    p.add_argument("--keep-finished-for", type=_positive_float, default=None, metavar="S",
                   help="forget finished jobs older than S seconds (default: no age limit)")
    p.add_argument("--keep-output", type=_positive_int, default=256 * 1024 * 1024,
                   metavar="BYTES", help="bytes of stdout + stderr kept by finished jobs in "
                   "all; the oldest finished jobs are forgotten past it")
    p.add_argument("--poison-workers", type=_positive_int, default=3, metavar="N",
                   help="fail a job after it lost N workers")
    p.add_argument("--max-pending", type=_positive_int, default=MAX_PENDING_DEFAULT,
                   metavar="N", help="pending jobs the leader holds at most; past it a submit "
                   "is refused whole with 'queue full' (clients back off and resend; the CLI "
                   "exits 6) (default: 1000000, about 2 GiB of leader memory)")
    p.add_argument("--breaker-failures", type=_positive_int, default=3, metavar="N",
                   help="trip a worker (give it no jobs) after N failed attempts in a row on "
                   "it while one of those jobs' function or command succeeded elsewhere")
    p.add_argument("--breaker-cooldown", type=_positive_float, default=30.0, metavar="S",
                   help="seconds a tripped worker gets no jobs before one probe job tests "
                   "it (success closes it, failure trips it again for twice as long)")
    p.add_argument("--breaker-cooldown-max", type=_positive_float, default=600.0, metavar="S",
                   help="longest cool-down of a worker that keeps failing its probe")
    p.add_argument("--retry-base", type=_positive_float, default=1.0, metavar="S",
                   help="seconds before the first retry of a failed job (doubled per retry, "
                   "with jitter)")
    p.add_argument("--retry-cap", type=_positive_float, default=60.0, metavar="S",
                   help="longest wait in seconds between retries")
    p.add_argument("--max-frame", type=_positive_int, default=FRAME_BYTES_MAX, metavar="BYTES",
                   help="largest frame accepted, in bytes")
    p.add_argument("--max-array-items", type=_positive_int, default=ARRAY_ITEMS_MAX, metavar="N",
                   help="longest msgpack array accepted from an authenticated peer")
    p.add_argument("--max-map-items", type=_positive_int, default=MAP_ITEMS_MAX, metavar="N",
                   help="largest msgpack map accepted from an authenticated peer")
    p.add_argument("--handshake-timeout", type=_positive_float, default=5.0, metavar="S",
                   help="close a connection that has not authenticated after S seconds")
    p.add_argument("--max-unauthenticated", type=_positive_int, default=64, metavar="N",
                   help="connections in their handshake (TLS included) at once; past it, the "
                   "oldest is closed to admit a new one")
    p.add_argument("--max-unauthenticated-per-source", type=_positive_int, default=32,
                   metavar="N", help="of those, from one source address; past it, that "
                   "address's oldest is closed")
    p.add_argument("--idle-timeout", type=_non_negative_float, default=60.0, metavar="S",
                   help="close a worker silent for S seconds, a client with no request "
                   "in flight and no message for S seconds, or a peer that reads none of "
                   "our output for S seconds; 0: only the last, after 30 seconds")
    p.add_argument("--max-output-buffer", type=_positive_int, default=64 * 1024 * 1024,
                   metavar="BYTES", help="disconnect a peer that leaves more bytes unread")
    p.add_argument("--http", default=None, metavar="HOST:PORT",
                   help="serve the dashboard, the REST API and /metrics here (same rules as "
                   "--listen: a non-loopback address needs a token or mutual TLS; default: off)")
    p.add_argument("--peer-http", action="append", default=[], metavar="ID@HOST:PORT",
                   help="a peer's --http address, where a follower redirects HTTP clients "
                   "(repeatable; default: the peer's --peer host at this coordinator's "
                   "--http port offset)")
    add_tls_flags(p)
    p.add_argument("--check", action="store_true",
                   help="verify --data-dir offline, print what it holds, exit 0 if sound")
    p.add_argument("--repair", action="store_true",
                   help="start even if the journal is corrupt (not merely torn at its end), "
                   "keeping the records before the bad one (the rest is moved aside)")
    p.add_argument("--compact-bytes", type=_positive_int, default=64 * 1024 * 1024,
                   metavar="BYTES", help="compact once the journal segment passes this size")
    p.add_argument("--compact-records", type=_positive_int, default=500_000, metavar="N",
                   help="compact once the journal segment holds N records")
    p.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)
    return p


def parse_peer(text: str, flag: str = "--peer") -> tuple[int, str]:
    node, sep, address = text.partition("@")
    if not sep:
        raise ConfigError(f"{flag} {text!r} must look like ID@HOST:PORT")
    try:
        node_id = int(node)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: id {node!r} is not a number") from None
    parse_address(address)
    return node_id, address


def coordinator_settings(argv: Sequence[str] | None = None) -> tuple[CoordinatorSettings, Any]:
    args = parse_with_config(coordinator_parser(), argv)
    host, port = parse_address(args.listen)
    peers = tuple(parse_peer(p) for p in args.peer)
    ids = [node_id for node_id, _ in peers]
    if args.id in ids:
        raise ConfigError(f"--peer {args.id}@...: that is this coordinator's own --id")
    if len(set(ids)) != len(ids):
        raise ConfigError("--peer: each peer id may be given once")
    if args.peer_heartbeat * 3 > args.election_timeout:
        raise ConfigError("--election-timeout must be at least 3 times --peer-heartbeat")
    if args.heartbeat_timeout <= args.heartbeat_interval:
        raise ConfigError("--heartbeat-timeout must be greater than --heartbeat-interval")
    settings = CoordinatorSettings(
        node_id=args.id, listen=(host, port), peers=peers,
        election_timeout_s=args.election_timeout, hold_down_s=args.hold_down,
        peer_heartbeat_s=args.peer_heartbeat,
        data_dir=Path(args.data_dir or f"tcpsched-data/c{args.id}"), policy=args.policy,
        fsync=args.fsync, heartbeat_interval_s=args.heartbeat_interval,
        heartbeat_timeout_s=args.heartbeat_timeout, token=read_token(args.token_file),
        log_level=args.log_level, keep_finished=args.keep_finished,
        keep_finished_for_s=args.keep_finished_for, keep_output_bytes=args.keep_output,
        poison_workers_max=args.poison_workers, max_pending=args.max_pending,
        breaker_failures=args.breaker_failures, breaker_cooldown_s=args.breaker_cooldown,
        breaker_cooldown_max_s=max(args.breaker_cooldown_max, args.breaker_cooldown),
        retry_base_s=args.retry_base, retry_cap_s=args.retry_cap,
        frame_bytes_max=args.max_frame, array_items_max=args.max_array_items,
        map_items_max=args.max_map_items, handshake_timeout_s=args.handshake_timeout,
        unauthenticated_max=args.max_unauthenticated,
        unauthenticated_per_source_max=args.max_unauthenticated_per_source,
        idle_timeout_s=args.idle_timeout,
        output_bytes_max=args.max_output_buffer, tls=tls_from_args(args), seed=args.seed,
        repair=args.repair, compact_bytes=args.compact_bytes,
        compact_records=args.compact_records,
        http=parse_address(args.http) if args.http else None,
        peer_http=tuple(parse_peer(p, "--peer-http") for p in args.peer_http),
    )  # fmt: skip
    return settings, args


# A worker's default lookahead cap (--prefetch): sixteen waiting assignments per slot. The
# leader fills only as many as cover a round trip of the worker's recent job times (about 5 ms
# of work: a result in, the next start record fsynced and, in a peer group, on a follower, the
# Assign out), none for jobs of 50 ms or more (core/prefetch.py). Measured on the loaded 2-core
# machine (2 workers x 1 slot, no-op calls): a fixed lookahead of 2 ran ~1,000 jobs/s, 16 ran
# ~2,000 with a third less leader CPU per job; 3 coordinators then cost ~30% instead of ~40%.
PREFETCH_PER_SLOT = 16


def default_prefetch(slots: int) -> int:
    return min(PREFETCH_PER_SLOT * slots, PREFETCH_MAX)


def _prefetch(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= PREFETCH_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} must be within [0, {PREFETCH_MAX}]")
    return value


@attrs.frozen
class WorkerSettings:
    coordinators: tuple[str, ...] = DEFAULT_COORDINATORS
    name: str = ""
    slots: int = 4
    prefetch: int = PREFETCH_PER_SLOT * 4  # default_prefetch(slots)
    tags: tuple[str, ...] = ()
    token: bytes | None = None
    drain_timeout_s: float = 30.0
    allow_shell: bool = True
    allow_call: tuple[str, ...] = ()  # empty: every callable is allowed
    log_level: str = "info"
    kill_grace_s: float = 2.0
    output_bytes_max: int = 1024 * 1024
    frame_bytes_max: int = FRAME_BYTES_MAX
    reconnect_base_s: float = 0.1
    reconnect_cap_s: float = 1.0  # well under the heartbeat timeout: a restarted coordinator
    # gives running jobs that long to come back with their worker before requeueing them
    tls: TlsSettings = TlsSettings()
    isolation: str = "process"  # how Python callables run: "process" or "thread"
    memory_mib: int | None = None  # per call process; None: no limit
    workdir: str | None = None  # where jobs run unless they give a cwd; None: our own cwd


def worker_parser() -> UsageParser:
    p = UsageParser(prog="python -m tcpsched.worker", description="Run a tcpsched worker.",
                    formatter_class=HelpFormatter, epilog=SETTINGS_EPILOG)
    add_config_flag(p)
    p.add_argument("--coordinators", default=None, metavar="HOST:PORT,...",
                   help="coordinator addresses, comma-separated (default: "
                   "$TCPSCHED_COORDINATORS, else 127.0.0.1:7001)")
    p.add_argument("--name", default=None, help="worker name (default: HOSTNAME-PID)")
    p.add_argument("--slots", type=_positive_int, default=4, metavar="N",
                   help="jobs run at once")
    p.add_argument("--prefetch", type=_prefetch, default=None, metavar="N",
                   help="at most this many jobs assigned beyond --slots, waiting here to start "
                   "the moment a slot frees (saves a coordinator round trip per job); the "
                   "leader fills as many as cover about 5 ms of this worker's recent job "
                   "times, none for jobs of 50 ms or more (0: none) (default: "
                   f"{PREFETCH_PER_SLOT} x --slots)")
    p.add_argument("--tags", default="", metavar="a,b",
                   help="comma-separated tags jobs may ask for (default: none)")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="file holding the cluster's shared token (default: $TCPSCHED_TOKEN, "
                   "else $TCPSCHED_TOKEN_FILE, else no token)")
    p.add_argument("--drain-timeout", type=_positive_float, default=30.0, metavar="S",
                   help="on SIGTERM, seconds running jobs get to finish before they are "
                   "handed back")
    p.add_argument("--no-shell", action="store_true",
                   help="refuse shell jobs (default: run them)")
    p.add_argument("--allow-call", action="append", default=[], metavar="ENTRY",
                   help="allow only these callables (repeatable): MODULE (or MODULE:) allows "
                   "MODULE[.SUB]:NAME for a top-level NAME defined in that module, not "
                   "starting with _, with no dotted path after the colon; MODULE:NAME allows "
                   "exactly that one (NAME may be dotted) (default: every callable)")
    p.add_argument("--kill-grace", type=_positive_float, default=2.0, metavar="S",
                   help="seconds between SIGTERM and SIGKILL on timeout or cancel")
    p.add_argument("--isolation", choices=ISOLATIONS, default="process",
                   help="how Python callables run: process (a pool of child processes, one "
                   "per slot, reused across jobs; a timeout or cancel kills the call) or "
                   "thread (inside the worker; a timed-out call keeps its slot until it "
                   "returns) (process)")
    p.add_argument("--max-memory", type=_memory_mib, default=None, metavar="MiB",
                   help="address-space limit of each call process in MiB (at least "
                   f"{MEMORY_MIB_MIN}); a call past it fails and its process is replaced; "
                   "process isolation only (no limit)")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="directory jobs run in unless they give --cwd; callables are imported "
                   "from it and PYTHONPATH; must exist (the worker's own directory)")
    add_tls_flags(p)
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="log verbosity")
    return p


def _memory_mib(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of MiB") from None
    if value < MEMORY_MIB_MIN:
        raise argparse.ArgumentTypeError(
            f"{text!r} MiB is too little: a Python process needs at least {MEMORY_MIB_MIN}")
    return value


def worker_settings(argv: Sequence[str] | None = None) -> WorkerSettings:
    args = parse_with_config(worker_parser(), argv)
    if args.max_memory is not None and args.isolation != "process":
        raise ConfigError("--max-memory limits call processes: it needs --isolation process")
    workdir = None
    if args.workdir is not None:
        workdir = os.path.abspath(args.workdir)
        if not os.path.isdir(workdir):
            raise ConfigError(f"--workdir {args.workdir}: no such directory")
    import socket

    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    tags = tuple(t.strip() for t in args.tags.split(",") if t.strip())
    # The coordinator checks the same rule when the worker registers; here it is one line
    # and exit 2 instead of a connection that is closed again and again.
    problem = worker_problem(name, tags)
    if problem is not None:
        flag = "--name" if problem.startswith("worker name") else "--tags"
        raise ConfigError(f"{flag}: {problem}")
    try:
        allow_call = tuple(dict.fromkeys(parse_allow_call(e) for e in args.allow_call))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return WorkerSettings(
        coordinators=parse_coordinators(args.coordinators), name=name, slots=args.slots,
        prefetch=default_prefetch(args.slots) if args.prefetch is None else args.prefetch,
        tags=tags, token=read_token(args.token_file),
        drain_timeout_s=args.drain_timeout,
        allow_shell=not args.no_shell, allow_call=allow_call,
        log_level=args.log_level, kill_grace_s=args.kill_grace, tls=tls_from_args(args),
        isolation=args.isolation, memory_mib=args.max_memory, workdir=workdir,
    )  # fmt: skip
