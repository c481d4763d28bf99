"""The gate: proves who a request is and applies the limits that follow from it. The thin trio
part of auth beside the sans-IO snapshot (directory.py) and buckets (buckets.py).

It keeps the snapshot fresh: it polls the store's revision every POLL seconds (one tiny read
in a worker thread) and, with Redis, also reloads at once when the store announces a change.
A key id it has never seen triggers one immediate reload (at most one every RELOAD_GAP
seconds, shared by every request waiting), so a key works the moment `keys create` returns.
When the store cannot be read the last snapshot keeps serving and one warning is logged;
a key the snapshot does not know is then refused with 503 (the store is down), not 401.
Failed attempts are counted per client address: over `auth.failed_attempts` an address gets
429 for anything that would cost more than the in-memory check (see `authenticate`).

Every refusal, and with `auth.audit: "all"` every decision, is one line on the
`wire_gateway.audit` logger: principal (never a secret), project, server, tool, decision,
reason and client address.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from wire_gateway.auth import keys
from wire_gateway.auth.backends import CHANGED_EVENT, KINDS, Backend, BackendError, open_backend
from wire_gateway.auth.buckets import Buckets
from wire_gateway.auth.directory import NO_CREDENTIALS, UNKNOWN_KEY, Principal, Refusal, Snapshot
from wire_gateway.auth.jwks import JwksError, fetch_jwks
from wire_gateway.auth.tokens import NeedKeys, TokenVerifier
from wire_gateway.config import AuthSettings, Config
from wire_gateway.telemetry.metrics import METRICS

log = logging.getLogger("wire_gateway.auth")
audit_log = logging.getLogger("wire_gateway.audit")

POLL = 0.25
PROVEN_MAX = 10_000
RELOAD_GAP = 0.1
LAST_USED_EVERY = 30.0


def credential_of(headers: list[tuple[str, str]]) -> str | None:
    """The caller's credential: `Authorization: Bearer X`, or (clients configured the Enkrypt
    way) `X-API-Key: X` / `apikey: X`. Header names arrive lower-cased."""
    for name, value in headers:
        if name == "authorization":
            if value.startswith("Bearer "):          # the usual spelling, without the general parse
                token = value[7:].strip()
                if token and " " not in token:
                    return token
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name in ("x-api-key", "apikey") and value.strip():
            return value.strip()
    return None


class Gate:
    def __init__(self, settings: AuthSettings, open_backend: Callable[[], Backend]) -> None:
        self.settings = settings
        self._open = open_backend
        self._backend: Backend | None = None
        self.snapshot = Snapshot({}, -1)
        self.store_down = False
        self._wake = trio.Event()
        self._reloaded = trio.Event()
        self._last_reload = -1e9
        self._failures = Buckets(*settings.failed_attempts)
        self._limits: dict[tuple[float, int], Buckets] = {}
        self._used: set[str] = set()          # keys used since the last flush (their `wg_<id>`)
        self._keys_on = settings.keys
        self._audit_all = settings.audit == "all"
        # Keys proven against the current snapshot (and until when), and each principal's budgets:
        # both rebuilt after every reload, so a revocation or a new limit applies from the next one.
        self._proven: dict[str, tuple[Principal, float | None]] = {}
        self._budget_memo: dict[str, list[tuple[str, float, int, str]]] = {}   # principal + project
        # With Redis, rate limits are one budget for every gateway: the front sets this to the
        # store's `take_token` (one round trip per request that has a limit).
        self.shared_bucket: Callable[[str, float, int], Awaitable[float | None]] | None = None
        self.tokens: TokenVerifier | None = None
        self._jwks_fetch: trio.Event | None = None
        self._jwks_at = -1e9

    # ---- keeping the snapshot fresh ------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await self._reload()
        task_status.started()
        flushed = trio.current_time()
        while True:
            with trio.move_on_after(POLL):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                backend = await self._backend_now()
                revision = await trio.to_thread.run_sync(backend.revision)
                if revision != self.snapshot.revision:
                    await self._reload()
                if trio.current_time() - flushed >= LAST_USED_EVERY:
                    flushed = trio.current_time()
                    await self._flush_last_used()
            except BackendError as exc:
                self._went_down(exc)

    def on_store_event(self, event: str) -> None:
        """The store's listener (Redis pub/sub): another process changed the tenancy records."""
        if event == CHANGED_EVENT:
            self._wake.set()

    async def _backend_now(self) -> Backend:
        if self._backend is None:
            self._backend = await trio.to_thread.run_sync(self._open)
        return self._backend

    async def _reload(self) -> None:
        self._last_reload = trio.current_time()
        try:
            backend = await self._backend_now()

            def load() -> Snapshot:
                revision = backend.revision()
                return Snapshot({kind: backend.all(kind) for kind in KINDS}, revision)
            self.snapshot = await trio.to_thread.run_sync(load)
            self._proven = {}
            self._budget_memo = {}
            if self.store_down:
                log.info("auth: the store at %s is readable again", backend.where)
            self.store_down = False
        except BackendError as exc:
            self._went_down(exc)
        finally:
            self._reloaded.set()
            self._reloaded = trio.Event()

    def _went_down(self, exc: BackendError) -> None:
        if not self.store_down:
            log.warning("auth: %s; serving the keys known until now (new keys are refused with 503 "
                        "until the store is back)", exc)
        self.store_down = True

    async def _reload_for_unknown(self) -> None:
        """One reload for a key id the snapshot lacks; concurrent callers share it."""
        waited = trio.current_time() - self._last_reload
        if waited < RELOAD_GAP:
            with trio.move_on_after(RELOAD_GAP - waited + POLL):
                await self._reloaded.wait()
            return
        await self._reload()

    async def _flush_last_used(self) -> None:
        used, self._used = self._used, set()
        if not used or self._backend is None:
            return
        backend = self._backend
        when = time.time()

        def write() -> None:
            items = []
            for shown in used:
                key_id = shown[len(keys.PREFIX):]
                record = backend.get("key", key_id)
                if record is not None and (record.get("last_used") or 0) < when:
                    items.append(("key", key_id, {**record, "last_used": when}))
            if items:
                backend.put(items)
        await trio.to_thread.run_sync(write)

    # ---- per request ---------------------------------------------------------------------------

    # ---- tokens (auth.mode jwt) -------------------------------------------------------------------

    def enable_tokens(self, base: str, servers: list[str]) -> None:
        """Once the front knows its own URL: the audiences a token may name are the gateway and each
        of its MCP endpoints."""
        jwt = self.settings.jwt
        assert jwt is not None
        self.tokens = TokenVerifier(jwt, {base, base + "/mcp", *(f"{base}/mcp/{n}" for n in servers)})

    async def _token(self, credential: str, address: str) -> Principal | Refusal:
        assert self.tokens is not None
        got = self.tokens.verify(credential, time.time(), self.snapshot)
        if isinstance(got, NeedKeys):
            if self._blocked(address):
                return UNKNOWN_KEY
            await self._refresh_keys()
            got = self.tokens.verify(credential, time.time(), self.snapshot)
        if isinstance(got, NeedKeys):
            if self.tokens.keys is None:
                return Refusal(503, "the issuer's signing keys cannot be fetched; try again shortly", None, 5.0)
            return Refusal(401, f"the token is signed by a key the issuer does not publish (kid {got.kid!r})")
        return got

    async def _refresh_keys(self) -> None:
        """Fetch the JWKS, at most once per jwks_refresh_min; concurrent callers share a fetch."""
        jwt = self.settings.jwt
        assert jwt is not None and self.tokens is not None
        if self._jwks_fetch is not None:
            await self._jwks_fetch.wait()
            return
        if trio.current_time() - self._jwks_at < jwt.jwks_refresh_min and self.tokens.keys is not None:
            return
        self._jwks_fetch = done = trio.Event()
        self._jwks_at = trio.current_time()
        try:
            self.tokens.install(await fetch_jwks(jwt.issuer, jwt.jwks_url))
            log.info("auth: fetched the signing keys of %s", jwt.issuer)
        except JwksError as exc:
            log.warning("auth: %s", exc)
        finally:
            self._jwks_fetch = None
            done.set()

    def proven(self, credential: str) -> Principal | None:
        """The fast path of `authenticate` for the usual request: a key already proven against this
        snapshot, unexpired, with no rate limit to count. None: take the whole path."""
        got = self._proven.get(credential)
        if got is None or (got[1] is not None and got[1] <= time.time()) or self._budgets(got[0]) \
                or self._audit_all:
            return None
        self._used.add(got[0].id)
        return got[0]

    async def authenticate(self, credential: str | None, address: str) -> Principal | Refusal:
        """Who this is, or why not. Rate limits on failures (per address) and on the principal apply."""
        if self.tokens is not None and credential is not None and not credential.startswith(keys.PREFIX):
            return await self._limited(self._decide(await self._token(credential, address), address,
                                                     local_limit=self.shared_bucket is None), address)
        result = self._check(credential)
        if result is UNKNOWN_KEY and credential is not None and not self._blocked(address):
            key_id = keys.key_id_of(credential)
            if key_id is not None and not self.snapshot.knows(key_id):
                await self._reload_for_unknown()        # a key made since the last reload
                result = self._check(credential)
                if result is UNKNOWN_KEY and self.store_down:
                    result = Refusal(503, "the key store is unreachable; try again shortly", None, 5.0)
        return await self._limited(self._decide(result, address, local_limit=self.shared_bucket is None), address)

    async def _limited(self, got: Principal | Refusal, address: str) -> Principal | Refusal:
        """The shared (Redis) rate limit, for a caller `_decide` let in."""
        if isinstance(got, Principal) and self.shared_bucket is not None:
            for name, rate, burst, whose in self._budgets(got):
                wait = await self.shared_bucket("ratelimit:" + name, rate, burst)
                if wait is None:         # Redis is unreachable: count here meanwhile
                    wait = self._buckets(rate, burst).take(name, trio.current_time())
                if wait:
                    return self.refuse(Refusal(429, f"rate limit of {whose} exceeded", None, wait), got, address)
        return got

    def check_now(self, credential: str | None, address: str) -> Principal | Refusal:
        """`authenticate` without waiting: against the snapshot as it is (the stdio front, which
        made its first check with `authenticate`)."""
        return self._decide(self._check(credential), address)

    def _check(self, credential: str | None) -> Principal | Refusal:
        if credential is None:
            return NO_CREDENTIALS
        if not self._keys_on:
            return UNKNOWN_KEY
        now = time.time()
        proven = self._proven.get(credential)      # a key proven since the last reload: no digest again
        if proven is not None and (proven[1] is None or proven[1] > now):
            return proven[0]
        got = self.snapshot.check_key(credential, now)
        if isinstance(got, Principal):
            if len(self._proven) >= PROVEN_MAX:
                self._proven.clear()
            self._proven[credential] = (got, self.snapshot.keys[got.id[len(keys.PREFIX):]].expires)
        return got

    def _blocked(self, address: str) -> float:
        return self._failures.wait(address, trio.current_time())

    def _decide(self, result: Principal | Refusal, address: str, local_limit: bool = True) -> Principal | Refusal:
        if isinstance(result, Refusal):
            now = trio.current_time()
            blocked = self._failures.wait(address, now) if result is not NO_CREDENTIALS else 0.0
            if blocked:
                # An address over its failure budget gets only the cheap check: no reload for an
                # unknown key id, no token verification. A good key from it (a user behind the
                # same NAT as whoever is guessing) still works.
                result = Refusal(429, "too many failed authentications from this address", None, blocked)
            elif result.status == 401 and result is not NO_CREDENTIALS:
                self._failures.take(address, now)
            return self.refuse(result, None, address)
        budgets = self._budgets(result) if local_limit else ()
        if budgets:
            now = trio.current_time()
            for name, rate, burst, whose in budgets:      # all must have a token, or none is taken
                wait = self._buckets(rate, burst).wait(name, now)
                if wait:
                    return self.refuse(Refusal(429, f"rate limit of {whose} exceeded", None, wait), result, address)
            for name, rate, burst, _ in budgets:
                self._buckets(rate, burst).take(name, now)
        if result.kind == "key":
            self._used.add(result.id)         # "last used" is the time of the next flush (every 30 s)
        if self.settings.audit == "all":
            self.audit("allowed", result, None, None, "authenticated", address)
        return result

    def _budgets(self, principal: Principal) -> list[tuple[str, float, int, str]]:
        """The token buckets a request of `principal` draws from: (bucket, rate, burst, whose) for
        its key (the project's per-key limit, else the config's default) and its whole project."""
        memo_key = principal.id + "\0" + principal.project.name   # a token's subject may act for several
        memo = self._budget_memo.get(memo_key)
        if memo is not None:
            return memo
        if len(self._budget_memo) >= PROVEN_MAX:
            self._budget_memo.clear()
        out: list[tuple[str, float, int, str]] = []
        self._budget_memo[memo_key] = out
        rl = principal.project.rate_limit
        per_key = (rl.rate, rl.burst) if rl is not None else self.settings.rate_limit
        if per_key is not None:
            out.append(("key:" + principal.id, *per_key, principal.id))
        pl = principal.project.project_limit
        if pl is not None:
            out.append(("project:" + principal.project.name, pl.rate, pl.burst, f"project {principal.project.name!r}"))
        return out

    def _buckets(self, rate: float, burst: int) -> Buckets:
        """Buckets are kept per (rate, burst): each limit counts its own names."""
        buckets = self._limits.get((rate, burst))
        if buckets is None:
            buckets = self._limits[(rate, burst)] = Buckets(rate, burst)
        return buckets

    def refuse(self, refusal: Refusal, principal: Principal | None, address: str,
                server: str | None = None, tool: str | None = None) -> Refusal:
        if METRICS.on:
            _count(refusal, principal)
        self.audit("refused", principal, server, tool, refusal.reason, address, refusal.who)
        return refusal

    def forbid(self, principal: Principal, server: str, tool: str | None, reason: str, address: str) -> Refusal:
        """A proven caller asking for what its project does not include: 403, audited."""
        return self.refuse(Refusal(403, reason, "insufficient_scope"), principal, address, server, tool)

    def audit(self, decision: str, principal: Principal | None, server: str | None, tool: str | None,
              reason: str, address: str, who: str | None = None) -> None:
        audit_log.info("auth %s: principal=%s project=%s server=%s tool=%s reason=%r address=%s", decision,
                       principal.id if principal else who or "-", principal.project.name if principal else "-",
                       server or "-", tool or "-", reason, address)


def _count(refusal: Refusal, principal: Principal | None) -> None:
    """Every refusal passes `Gate.refuse`: counted there by a reason of few values (the refusal's
    own text names keys and principals), a rate limit by the project it was the limit of."""
    status = refusal.status
    if status == 429 and principal is not None:
        METRICS.rate_limited.inc((principal.project.name,))
        return
    if status == 401:
        reason = "no_credentials" if refusal is NO_CREDENTIALS else "invalid_credentials"
    else:
        reason = {403: "forbidden", 429: "address_blocked"}.get(status, "unavailable")
    METRICS.auth_failures.inc((reason,))


def gate_for(config: Config) -> Gate:
    """The gate for a config whose auth is on: its records in Redis when the store is Redis,
    else in the SQLite file beside the config."""
    from wire_gateway.config.loader import expand

    store = config.store
    url = expand(store.url, dict(os.environ), "store.url") if store.backend == "redis" else ""
    return Gate(config.auth, lambda: open_backend(config.auth.file, store.backend, url, store.prefix))
