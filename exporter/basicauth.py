"""Basic auth and the request rate limit of a web config, built to hold under a flood.

bcrypt is slow on purpose (cost 10 ≈ 70 ms, cost 12 ≈ 280 ms), so three rules keep a flood of wrong passwords from
locking out the scraper whose password is right:

- verified credentials are cached (a keyed hash of user and password, never the password), so a scraper pays bcrypt
  once per start or users reload; wrong ones are cached too, so a repeated guess costs nothing;
- checks run on one worker thread (bcrypt releases the GIL: the event loop keeps serving), taken round-robin across
  source addresses, with a per-source token bucket and a bound on what each source may have waiting: a flood from
  one address delays another address's check by at most one bcrypt, and is itself answered 429 past its budget;
- every uncached check runs bcrypt exactly once: against the user's own hash, or, for a name that does not exist,
  against a dummy hash at the users' most common cost (exporter-toolkit uses a fixed cost-10 dummy). So a wrong
  name takes as long as a wrong password for most users, and no user pays for another's cost: one cost-18 user
  no longer makes every cold login of the cost-10 users take the cost-18 time (15 s, past Prometheus' scrape
  timeout). What timing still tells: that a name whose cost differs from the most common one exists — the
  toolkit's trade-off too, and the price of not making everyone pay the slowest cost.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import bcrypt

POSITIVE_CACHE_SIZE: Final = 256
NEGATIVE_CACHE_SIZE: Final = 4096
SOURCE_RATE: Final = 4.0  # uncached checks per second per source address...
SOURCE_BURST: Final = 8.0  # ...after a burst of this many
SOURCE_PENDING: Final = 4  # checks one source may have waiting for the worker
MAX_SOURCES: Final = 4096  # source buckets remembered (least recently used are forgotten)
ALLOWED: Final = 0
UNAUTHORIZED: Final = 401
TOO_MANY: Final = 429
_BCRYPT_ALPHABET: Final = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def parse_basic(header: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) from an Authorization header value, or None when it is not well-formed Basic auth."""
    if not header or len(header) > 4096:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    if not sep:
        return None
    return user, password


def bcrypt_cost(hashed: bytes) -> int:
    return int(hashed[4:6])


def typical_cost(hashes: Iterable[bytes]) -> int:
    """The most common bcrypt cost among `hashes` (the lowest of equally common ones): what an unknown name pays."""
    counts = Counter(bcrypt_cost(h) for h in hashes)
    return min(counts, key=lambda cost: (-counts[cost], cost))


def dummy_hash(cost: int) -> bytes:
    """A well-formed bcrypt hash of the given cost that no password matches; made without hashing anything."""
    salt = bcrypt.gensalt(rounds=cost)
    return salt + "".join(secrets.choice(_BCRYPT_ALPHABET) for _ in range(31)).encode()


class TokenBucket:
    """`rate` events per second after a burst of `burst`; starts full (as golang.org/x/time/rate does)."""

    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes (see the module docstring for the rules)."""

    def __init__(
        self,
        users: Mapping[str, bytes],
        clock: Callable[[], float] = time.monotonic,
        *,
        source_rate: float = SOURCE_RATE,
        source_burst: float = SOURCE_BURST,
        source_pending: int = SOURCE_PENDING,
    ) -> None:
        self._users = users
        self._clock = clock
        self._source_rate = source_rate
        self._source_burst = source_burst
        self._source_pending = source_pending
        self._dummy = dummy_hash(typical_cost(users.values())) if users else b""
        # Cache keys are keyed hashes of user:password; the key lives only in this process.
        self._key = secrets.token_bytes(32)
        self._ok: OrderedDict[bytes, None] = OrderedDict()
        self._bad: OrderedDict[bytes, None] = OrderedDict()
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._queues: OrderedDict[str, deque[tuple[bytes, bytes, bytes]]] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[int]] = {}
        self._running = False
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None
        self.bcrypt_checks = 0
        self.refused_over_budget = 0

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def check(self, authorization: str | None, source: str = "") -> int | asyncio.Future[int]:
        """ALLOWED, UNAUTHORIZED or TOO_MANY now, or a future of one when bcrypt has to run."""
        if not self._users:
            return ALLOWED
        credentials = parse_basic(authorization)
        if credentials is None:
            return UNAUTHORIZED
        user, password = credentials
        digest = hmac.new(self._key, user + b"\x00" + password, hashlib.sha256).digest()
        if digest in self._ok:
            self._ok.move_to_end(digest)
            return ALLOWED
        if digest in self._bad:
            return UNAUTHORIZED
        pending = self._inflight.get(digest)
        if pending is not None:
            return pending  # the same credentials are being checked already: share the answer
        queue = self._queues.get(source)
        if (queue is not None and len(queue) >= self._source_pending) or not self._bucket(source).allow():
            self.refused_over_budget += 1
            return TOO_MANY
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        if queue is None:
            queue = self._queues[source] = deque()
        queue.append((digest, user, password))
        self._next()
        return future

    def _bucket(self, source: str) -> TokenBucket:
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = TokenBucket(self._source_rate, self._source_burst, self._clock)
            if len(self._buckets) > MAX_SOURCES:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
        return bucket

    def _next(self) -> None:
        """Start the next check: the oldest of the source that has waited longest (round-robin by source)."""
        if self._running or self._closed or not self._queues:
            return
        source, queue = next(iter(self._queues.items()))
        digest, user, password = queue.popleft()
        del self._queues[source]
        if queue:
            self._queues[source] = queue  # to the back of the rotation
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bcrypt")
        self._running = True
        self.bcrypt_checks += 1
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._executor, self.verify, user, password)
        work.add_done_callback(lambda done: self._finished(digest, done))

    def _finished(self, digest: bytes, done: asyncio.Future[bool]) -> None:
        self._running = False
        ok = not done.cancelled() and done.exception() is None and done.result()
        cache = self._ok if ok else self._bad
        cache[digest] = None
        if len(cache) > (POSITIVE_CACHE_SIZE if ok else NEGATIVE_CACHE_SIZE):
            cache.popitem(last=False)
        future = self._inflight.pop(digest, None)
        if future is not None and not future.done():
            future.set_result(ALLOWED if ok else UNAUTHORIZED)
        self._next()

    def verify(self, user: bytes, password: bytes) -> bool:
        """The bcrypt comparison itself, the same work whether or not the user exists (runs on the worker)."""
        try:
            name = user.decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        hashed = self._users.get(name)
        try:
            matched = bcrypt.checkpw(password, hashed if hashed is not None else self._dummy)
        except ValueError:  # e.g. a password over bcrypt's 72 bytes
            matched = False
        return matched and hashed is not None

    def close(self) -> None:
        """Retire this user set (a reload replaced it): checks still waiting are answered 401, none start."""
        self._closed = True
        self._queues.clear()
        for future in self._inflight.values():
            if not future.done():
                future.set_result(UNAUTHORIZED)
        self._inflight.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
