"""``sft-agent check``: reach every receiver the config sends to, as the agent would, and say how it went.

For each ``http`` action of each route: a TCP connection, the TLS handshake with the route's
client identity and CA (hostname verification as the route says), the negotiated version,
the server's certificate (subject, days left) and our own (days left), then an ``OPTIONS``
(or ``HEAD``) request to the URL with the action's headers. An answer from 200 to 499,
other than 401 and 403, means the receiver is up and took our identity; 401, 403, 5xx or
no answer is a failure, as is an expired certificate; one expiring within ``warn_days`` is
a warning. Every step is bounded by one deadline per URL. One line per URL, then a summary.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TextIO
from urllib.parse import urlsplit

from cryptography import x509

from sft_agent.push import USER_AGENT
from sft_agent.settings import AgentSettings, HttpAction, RouteSettings, TlsSettings
from sft_agent.tls import TlsConfigError, certificate_not_after, client_context, days_until

ProbeMethod = Literal["OPTIONS", "HEAD"]
_MAX_ANSWER_BODY = 64 * 1024
_PARALLEL = 8


@dataclass(frozen=True)
class CheckOptions:
    """How hard to try and what counts as soon: ``--timeout``, ``--warn-days``, ``--method``."""

    timeout: float = 10.0
    warn_days: float = 14.0
    method: ProbeMethod = "OPTIONS"


@dataclass
class UrlReport:
    """What one check of one URL found: facts, warnings, failures; ``config_problem`` when a
    certificate or key file of the route cannot be used (exit 2, as an invalid config)."""

    route: str
    url: str
    facts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    config_problem: bool = False

    @property
    def status(self) -> Literal["ok", "warn", "fail"]:
        """``fail`` if anything failed, else ``warn`` if anything warned, else ``ok``."""
        return "fail" if self.failures else "warn" if self.warnings else "ok"

    def line(self) -> str:
        """``ok|WARN|FAIL  route  url  facts — problems``: one line for a person or a grep."""
        label = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[self.status]
        text = f"{label}  {self.route}  {self.url}"
        if self.facts:
            text += "  " + "; ".join(self.facts)
        problems = self.failures + self.warnings
        if problems:
            text += " — " + "; ".join(problems)
        return text


def shown_url(url: str) -> str:
    """The URL without its query string (it may hold a token), as the agent logs it."""
    parts = urlsplit(url)
    return f"https://{parts.netloc}{parts.path or '/'}"


def _expiry(what: str, not_after: datetime, *, now: datetime) -> str:
    days = days_until(not_after, now=now)
    when = not_after.date().isoformat()
    if days < 0:
        return f"{what} expired {when} ({-days:.0f} days ago)"
    return f"{what} expires {when} ({days:.0f} days)"


def _describe_certificate(der: bytes | None) -> tuple[str, datetime] | None:
    """``server certificate <subject>`` and its expiry, or None if there is none or it is unreadable."""
    if not der:
        return None
    try:
        certificate = x509.load_der_x509_certificate(der)
        subject = certificate.subject.rfc4514_string() or "(empty subject)"
    except ValueError:
        return None
    return f"server certificate {subject}", certificate.not_valid_after_utc


def _alert_hint(exc: ssl.SSLError) -> str:
    reason = str(exc.reason or exc)
    if "ALERT" in reason.upper():
        return (
            f"the receiver ended TLS with {reason}: it does not accept our client certificate "
            "(not signed by a CA it trusts, expired, or not for client use)"
        )
    return f"TLS error {reason}"


@dataclass(eq=False)
class _UrlCheck:
    """One URL checked in steps — connect, handshake, probe — each given what is left of one
    ``timeout``; what each step finds goes into ``report``."""

    action: HttpAction
    tls: TlsSettings
    context: ssl.SSLContext
    client_not_after: datetime
    options: CheckOptions
    now: datetime
    report: UrlReport
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        parts = urlsplit(self.action.url)
        path = parts.path or "/"
        self.host = parts.hostname or ""
        self.port = parts.port or 443
        self.request_target = f"{path}?{parts.query}" if parts.query else path
        self._end = self.clock() + self.options.timeout

    def left(self) -> float:
        """Seconds left; at least a millisecond, so a timeout still fires rather than blocking."""
        return max(0.001, self._end - self.clock())

    def judge_expiry(self, what: str, not_after: datetime) -> None:
        """A fact, and a failure once expired or a warning within ``warn_days``."""
        self.report.facts.append(_expiry(what, not_after, now=self.now))
        days = days_until(not_after, now=self.now)
        warn_days = self.options.warn_days
        if days < 0:
            self.report.failures.append(f"the {what} has expired")
        elif days < warn_days:
            self.report.warnings.append(
                f"the {what} expires in {days:.0f} days (under --warn-days {warn_days:g})"
            )

    def run(self) -> None:
        """Every step, as far as the previous one got; our certificate is judged in any case."""
        report, timeout = self.report, self.options.timeout
        try:
            raw = socket.create_connection((self.host, self.port), timeout=self.left())
        except socket.gaierror as exc:
            report.failures.append(f"connect: cannot resolve {self.host}: {exc.strerror}")
        except TimeoutError:
            report.failures.append(f"connect: no answer within {timeout:g}s")
        except OSError as exc:
            report.failures.append(f"connect: {(exc.strerror or str(exc)).lower()}")
        else:
            with raw:
                self.handshake_and_probe(raw)
        if not any(fact.startswith("client certificate") for fact in report.facts):
            self.judge_expiry("client certificate", self.client_not_after)

    def handshake_and_probe(self, raw: socket.socket) -> None:
        """The TLS handshake on ``raw`` and, if it completes, the HTTP probe over it."""
        report, timeout = self.report, self.options.timeout
        raw.settimeout(self.left())
        try:
            secure = self.context.wrap_socket(raw, server_hostname=self.host)
        except ssl.SSLCertVerificationError as exc:
            report.failures.append(f"TLS: the server's certificate is not accepted: {exc.verify_message}")
            self.describe_unverified()
            return
        except ssl.SSLError as exc:
            report.failures.append(f"TLS handshake failed: {_alert_hint(exc)}")
            return
        except TimeoutError:
            report.failures.append(f"TLS: no handshake within {timeout:g}s")
            return
        except OSError as exc:
            report.failures.append(f"TLS handshake: connection closed ({exc.strerror or exc})")
            return
        with secure:
            report.facts.append(secure.version() or "TLS")
            described = _describe_certificate(secure.getpeercert(binary_form=True))
            if described is None:
                report.failures.append("the server's certificate cannot be read")
            else:
                self.judge_expiry(*described)
            self.judge_expiry("client certificate", self.client_not_after)
            self.probe(secure)

    def describe_unverified(self) -> None:
        """Fetch the certificate the server presents, without verifying it, to say which one it is."""
        try:
            context = client_context(self.tls)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            with (
                socket.create_connection((self.host, self.port), timeout=self.left()) as raw,
                context.wrap_socket(raw, server_hostname=self.host) as secure,
            ):
                der = secure.getpeercert(binary_form=True)
        except (OSError, TlsConfigError):  # ssl.SSLError included: nothing more to say
            return
        described = _describe_certificate(der)
        if described is not None:
            self.report.facts.append(_expiry(*described, now=self.now))

    def probe(self, secure: ssl.SSLSocket) -> None:
        """``OPTIONS`` (or ``HEAD``) over the handshake just made, with the action's headers."""
        report, method, timeout = self.report, self.options.method, self.options.timeout
        connection = http.client.HTTPSConnection(
            self.host, self.port, timeout=self.left(), context=self.context
        )
        connection.sock = secure  # the request goes over the handshake above
        started = time.monotonic()
        try:
            secure.settimeout(self.left())
            connection.putrequest(method, self.request_target, skip_accept_encoding=True)
            for key, value in [
                *self.action.headers,
                *((key, secret.reveal()) for key, secret in self.action.secret_headers),
                ("User-Agent", USER_AGENT),
            ]:
                connection.putheader(key, value)
            connection.endheaders()
            response = connection.getresponse()
            if method != "HEAD":
                response.read(_MAX_ANSWER_BODY)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError, http.client.RemoteDisconnected):
            # TLS 1.3: the server checks our certificate after our side of the handshake is done.
            report.failures.append(
                "no HTTP answer: the receiver closed the connection (did it refuse our client certificate?)"
            )
            return
        except ssl.SSLError as exc:
            report.failures.append(f"no HTTP answer: {_alert_hint(exc)}")
            return
        except TimeoutError:
            report.failures.append(f"no HTTP answer within {timeout:g}s")
            return
        except (OSError, http.client.HTTPException) as exc:
            report.failures.append(f"no HTTP answer: {type(exc).__name__}: {exc}")
            return
        finally:
            connection.sock = None  # closed by the caller, with the handshake it belongs to
        status = response.status
        report.facts.append(f"{method} {status} ({(time.monotonic() - started) * 1000:.0f} ms)")
        if status in (401, 403):
            report.failures.append(f"the receiver answered {status}: it does not accept our identity")
        elif status >= 500:
            report.failures.append(f"the receiver answered {status}: it is up but failing")
        elif status < 200:
            report.failures.append(f"the receiver answered {status}: not an answer to a request")


def check_url(
    route: RouteSettings, action: HttpAction, *, index: int, options: CheckOptions, now: datetime
) -> UrlReport:
    """Connect, shake hands and probe one action's URL as ``route``'s identity."""
    report = UrlReport(route=route.name, url=shown_url(action.url))
    tls = route.tls
    if tls is None:  # settings give every route with an http action its TLS section
        report.failures.append("no tls settings")
        report.config_problem = True
        return report
    try:
        context = client_context(tls, prefix=f"routes[{index}]({route.name}).tls")
        client_not_after = certificate_not_after(tls.client_cert)
    except (TlsConfigError, ValueError) as exc:
        report.failures.append(str(exc))
        report.config_problem = True
        return report
    _UrlCheck(
        action=action,
        tls=tls,
        context=context,
        client_not_after=client_not_after,
        options=options,
        now=now,
        report=report,
    ).run()
    return report


def planned(settings: AgentSettings) -> list[tuple[int, RouteSettings, HttpAction]]:
    """Every (route index, route, http action) of the config, in its order."""
    return [
        (index, route, action) for index, route in enumerate(settings.routes) for action in route.http_actions
    ]


def _check_safely(
    route: RouteSettings, action: HttpAction, *, index: int, options: CheckOptions, now: datetime
) -> UrlReport:
    try:
        return check_url(route, action, index=index, options=options, now=now)
    except Exception as exc:  # noqa: BLE001 - one URL's surprise must not hide the other URLs' lines
        report = UrlReport(route=route.name, url=shown_url(action.url))
        report.failures.append(f"check failed unexpectedly: {type(exc).__name__}: {exc}")
        return report


def check_all(
    settings: AgentSettings, *, options: CheckOptions, now: datetime | None = None
) -> list[UrlReport]:
    """Check every http action's URL (a few at once); reports in the config's order."""
    moment = now or datetime.now(UTC)
    work = planned(settings)
    if not work:
        return []
    with ThreadPoolExecutor(max_workers=min(_PARALLEL, len(work)), thread_name_prefix="check") as pool:
        futures = [
            pool.submit(_check_safely, route, action, index=index, options=options, now=moment)
            for index, route, action in work
        ]
        return [future.result() for future in futures]


def summary(reports: Sequence[UrlReport], *, skipped: int = 0) -> str:
    """``N URLs checked: a ok, b warning(s), c failed`` (and routes without an http action)."""
    counts = {status: sum(1 for r in reports if r.status == status) for status in ("ok", "warn", "fail")}
    text = (
        f"{len(reports)} URL{'s' if len(reports) != 1 else ''} checked: {counts['ok']} ok, "
        f"{counts['warn']} warning{'s' if counts['warn'] != 1 else ''}, {counts['fail']} failed"
    )
    if skipped:
        text += f"; {skipped} route{'s' if skipped != 1 else ''} without an http action"
    return text


def run_check(settings: AgentSettings, *, options: CheckOptions, out: TextIO) -> int:
    """Print one line per URL and the summary; 0 all ok (warnings allowed), 1 a check failed,
    2 a certificate or key file cannot be used (a config problem)."""
    reports = check_all(settings, options=options)
    for report in reports:
        print(report.line(), file=out, flush=True)
    skipped = sum(1 for route in settings.routes if not route.http_actions)
    print(summary(reports, skipped=skipped), file=out, flush=True)
    if any(report.config_problem for report in reports):
        return 2
    return 1 if any(report.status == "fail" for report in reports) else 0
