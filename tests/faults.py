"""Fault injection at the ports: each failure scenario as a deterministic test, on every backend.

A `FaultPlan` says which calls of which port method fail, and how; `FaultyQueue`, `FaultyStore`
and `FaultyArtifacts` wrap a real adapter (SQLite or AWS over moto's server) and consult the plan
on every call. Methods are named `port.method`: "queue.extend", "store.renew", "artifacts.put_file".

    plan = FaultPlan()
    plan.fail("queue.extend", throttled(), times=3)               # the next 3 calls are refused
    plan.fail("store.renew", timed_out(), on_calls=[2, 3])        # the 2nd and 3rd calls ever
    plan.lose_response("queue.send")                              # sent for real, then an error
    plan.delay("store.claim", seconds=2.0)                        # slow, then performed
    plan.fail_forever("artifacts.put_file", disk_full())          # a full disk
    gate = plan.hold("store.renew")                               # blocks until gate.release()
    backend = faulty_backend(open_local(config), plan)
    ...
    assert plan.outcomes("queue.extend") == [INJECTED, INJECTED, INJECTED, PASSED]

How a call is decided: the plan counts the calls of each method from 1 (every call, whether it
fails or not). The first rule of that method that matches the call applies, in the order the rules
were added: `on_calls` matches those call numbers; `times` matches the next `times` calls made
after the rule was added (those that pass its `where` test); `fail_forever` matches every call.
A call no rule matches goes to the adapter untouched. Every call is logged (`Call`) with its
outcome, so a test asserts on exactly what happened.

Outcomes: PASSED (the adapter answered), RAISED (the adapter itself raised), INJECTED (the plan
raised instead of calling the adapter: the request never arrived), LOST (the adapter performed the
call, then the plan raised: the response was lost, so the side effect is done but the caller saw
an error). When the adapter itself raises, its error is what the caller sees (RAISED), whatever
the plan says: there is no response to lose.

The plan is thread-safe (the heartbeat is a thread): rules are matched and the log is written under
a lock, never held while the adapter runs or a call waits.

Each wrapper subclasses its port protocol (so `isinstance(wrapper, JobQueue)` holds, and a type
checker agrees) and overrides every method the protocol declares with one that goes through the
plan. They are generated from `shared.ports`, so a method added to a port is wrapped and faultable
at once; any other attribute of the adapter passes through untouched. `artifacts.list` returns an iterator:
an error injected into it is raised by the call, not during the iteration.
"""

from __future__ import annotations

import errno
import functools
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from shared.errors import RetryableError
from shared.ports import ArtifactStore, Backend, JobQueue, JobStore

GATE_TIMEOUT_S = 60.0  # a held call that is never released fails the test instead of hanging it


def port_methods(protocol: type) -> list[str]:
    """The public methods a port protocol declares (its own, not those of `Protocol`)."""
    return sorted(name for name, value in vars(protocol).items() if not name.startswith("_") and callable(value))


PORTS: dict[str, type] = {"queue": JobQueue, "store": JobStore, "artifacts": ArtifactStore}


# --- the errors a test injects: fresh instances, so that no two failures share a traceback ---


def throttled(what: str = "request") -> RetryableError:
    """What an adapter raises when the service throttles it (SQS/DynamoDB/S3 throttling codes)."""
    return RetryableError(f"{what} throttled (injected)")


def timed_out(what: str = "request") -> RetryableError:
    """What an adapter raises when a request times out or the connection drops."""
    return RetryableError(f"{what} timed out (injected)")


def disk_full() -> OSError:
    """A full disk, as the operating system reports it: `OSError: [Errno 28] No space left on device`."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- the plan ---


class CallOutcome(StrEnum):
    PASSED = "passed"  # the adapter answered
    RAISED = "raised"  # the adapter itself raised
    INJECTED = "injected"  # the plan raised instead of calling the adapter
    LOST = "lost"  # the adapter performed the call, then the plan raised


PASSED, RAISED, INJECTED, LOST = CallOutcome.PASSED, CallOutcome.RAISED, CallOutcome.INJECTED, CallOutcome.LOST


@dataclass(frozen=True)
class Call:
    """One call made through a wrapper. `number` counts the calls of `method` from 1, in the order
    they started; the log is in the order they ended. `error` is "Type: message" when one was raised."""

    method: str
    number: int
    outcome: CallOutcome
    error: str | None = None
    delay_s: float = 0.0


class Gate:
    """Holds a call until the test releases it: a deterministic interleaving of threads.

    `entered` is set when a held call arrives; the call then waits for `release()` (at most
    GATE_TIMEOUT_S, then it raises so that a forgotten gate fails the test instead of hanging it).
    """

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def wait_entered(self, timeout_s: float = GATE_TIMEOUT_S) -> None:
        if not self.entered.wait(timeout_s):
            raise AssertionError(f"no held call arrived within {timeout_s:.0f} s")

    def hold_call(self) -> None:
        self.entered.set()
        if not self._released.wait(GATE_TIMEOUT_S):
            raise RuntimeError(f"a held call was not released within {GATE_TIMEOUT_S:.0f} s")


Where = Callable[..., bool]  # called with the call's own arguments: does this rule apply to it?


@dataclass
class Rule:
    """One planned fault. Matching and counting happen under the plan's lock."""

    error: BaseException | None = None
    after: bool = False  # perform the call first, then raise (a lost response)
    delay_s: float = 0.0
    gate: Gate | None = None
    on_calls: frozenset[int] | None = None
    remaining: int | None = None  # calls left to match; None: every call (or those in on_calls)
    where: Where | None = None

    def applies_to(self, number: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Whether this rule decides call `number`; a `times` rule counts the call it takes."""
        if self.on_calls is not None and number not in self.on_calls:
            return False
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.where is not None and not self.where(*args, **kwargs):
            return False
        if self.remaining is not None:
            self.remaining -= 1
        return True


NO_FAULT = Rule()


@dataclass
class FaultPlan:
    """Which calls fail and how (see the module docstring). `sleep` is how `delay` waits."""

    sleep: Callable[[float], None] = time.sleep
    _rules: dict[str, list[Rule]] = field(default_factory=dict, init=False, repr=False)
    _counts: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _log: list[Call] = field(default_factory=list, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    # --- planning ---

    def fail(
        self,
        method: str,
        error: BaseException,
        *,
        times: int | None = None,
        on_calls: Iterable[int] | None = None,
        where: Where | None = None,
    ) -> None:
        """Raise `error` instead of calling the adapter, on the next `times` calls (default 1) or
        on the calls numbered `on_calls`."""
        self._add(method, Rule(error=error, where=where), times, on_calls)

    def fail_forever(self, method: str, error: BaseException, *, where: Where | None = None) -> None:
        """Raise `error` on every call from now on (until `clear`): a dead service, a full disk."""
        self._add(method, Rule(error=error, where=where), None, None, forever=True)

    def lose_response(
        self,
        method: str,
        error: BaseException | None = None,
        *,
        times: int | None = None,
        on_calls: Iterable[int] | None = None,
        where: Where | None = None,
    ) -> None:
        """Perform the call on the adapter, then raise (default: a timeout) as if the response were
        lost: the side effect is done, the caller believes it failed."""
        rule = Rule(error=error or timed_out(f"{method} response"), after=True, where=where)
        self._add(method, rule, times, on_calls)

    def delay(
        self,
        method: str,
        seconds: float,
        *,
        error: BaseException | None = None,
        times: int | None = None,
        on_calls: Iterable[int] | None = None,
        where: Where | None = None,
    ) -> None:
        """Wait `seconds` before the call; then perform it (a slow call) or, given `error`, raise
        it without performing it (a client-side timeout)."""
        self._add(method, Rule(error=error, delay_s=seconds, where=where), times, on_calls)

    def hold(
        self,
        method: str,
        *,
        times: int | None = None,
        on_calls: Iterable[int] | None = None,
        where: Where | None = None,
    ) -> Gate:
        """Make the matching calls wait until the returned gate is released, then perform them
        (one gate for all of them: once released, every later matching call goes straight on)."""
        gate = Gate()
        self._add(method, Rule(gate=gate, where=where), times, on_calls)
        return gate

    def clear(self, method: str | None = None) -> None:
        """Drop the rules of `method` (every method if None). Counts and the log are kept."""
        with self._lock:
            if method is None:
                self._rules.clear()
            else:
                self._rules.pop(check_method(method), None)

    def _add(
        self, method: str, rule: Rule, times: int | None, on_calls: Iterable[int] | None, forever: bool = False
    ) -> None:
        if times is not None and on_calls is not None:
            raise ValueError("give `times` or `on_calls`, not both")
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        rule.on_calls = frozenset(on_calls) if on_calls is not None else None
        if not forever and on_calls is None:
            rule.remaining = 1 if times is None else times
        with self._lock:
            self._rules.setdefault(check_method(method), []).append(rule)

    # --- what happened ---

    @property
    def log(self) -> list[Call]:
        """Every call made through the wrappers so far, in the order they ended."""
        with self._lock:
            return list(self._log)

    def calls(self, method: str) -> list[Call]:
        check_method(method)
        return [call for call in self.log if call.method == method]

    def outcomes(self, method: str) -> list[CallOutcome]:
        """The outcomes of `method`'s calls, in call-number order."""
        return [call.outcome for call in sorted(self.calls(method), key=lambda call: call.number)]

    def count(self, method: str) -> int:
        """How many calls of `method` have started."""
        with self._lock:
            return self._counts.get(check_method(method), 0)

    # --- a call ---

    def invoke(self, method: str, target: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call `target` (the adapter's method) as the plan says, and log the call."""
        number, rule = self._decide(method, args, kwargs)
        if rule.gate is not None:
            rule.gate.hold_call()
        if rule.delay_s:
            self.sleep(rule.delay_s)
        record = functools.partial(self._record, method, number, delay_s=rule.delay_s)
        if rule.error is not None and not rule.after:
            record(INJECTED, rule.error)
            raise rule.error.with_traceback(None)
        try:
            result = target(*args, **kwargs)
        except BaseException as exc:
            record(RAISED, exc)
            raise
        if rule.error is not None:
            record(LOST, rule.error)
            raise rule.error.with_traceback(None)
        record(PASSED)
        return result

    def _decide(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, Rule]:
        with self._lock:
            number = self._counts.get(method, 0) + 1
            self._counts[method] = number
            for rule in self._rules.get(method, []):
                if rule.applies_to(number, args, kwargs):
                    return number, rule
            return number, NO_FAULT

    def _record(
        self, method: str, number: int, outcome: CallOutcome, error: BaseException | None = None, delay_s: float = 0.0
    ) -> None:
        text = f"{type(error).__name__}: {error}" if error is not None else None
        with self._lock:
            self._log.append(Call(method, number, outcome, text, delay_s))


def check_method(method: str) -> str:
    """`method` if it names a method of a port ("queue.extend"); a typo is an error, never a no-op."""
    port, _, name = method.partition(".")
    if port not in PORTS:
        raise ValueError(f"{method!r}: the port must be one of {sorted(PORTS)}")
    if name not in port_methods(PORTS[port]):
        raise ValueError(f"{method!r}: {PORTS[port].__name__} has no method {name!r}")
    return method


# --- the wrappers ---


class _Faulty:
    """A port adapter seen through a fault plan. Subclasses name the port; `_wrap_port` gives them
    one method per method of the port protocol."""

    port = ""

    def __init__(self, inner: Any, plan: FaultPlan) -> None:
        self._inner = inner
        self._plan = plan

    @property
    def inner(self) -> Any:
        """The real adapter (for a step a test takes behind the plan's back)."""
        return self._inner

    def __getattr__(self, name: str) -> Any:
        # Only reached for what is not a port method: adapter attributes pass through untouched.
        inner = self.__dict__.get("_inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._inner!r})"


FaultyClass = TypeVar("FaultyClass", bound=type[_Faulty])


def _forward(port: str, name: str, declared: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(declared)  # the protocol's signature and docstring
    def method(self: _Faulty, *args: Any, **kwargs: Any) -> Any:
        return self._plan.invoke(f"{port}.{name}", getattr(self._inner, name), args, kwargs)

    return method


def _wrap_port(cls: FaultyClass) -> FaultyClass:
    protocol = PORTS[cls.port]
    for name in port_methods(protocol):
        setattr(cls, name, _forward(cls.port, name, getattr(protocol, name)))
    return cls


@_wrap_port
class FaultyQueue(_Faulty, JobQueue):
    """A JobQueue whose calls go through a FaultPlan ("queue.<method>")."""

    port = "queue"


@_wrap_port
class FaultyStore(_Faulty, JobStore):
    """A JobStore whose calls go through a FaultPlan ("store.<method>")."""

    port = "store"


@_wrap_port
class FaultyArtifacts(_Faulty, ArtifactStore):
    """An ArtifactStore whose calls go through a FaultPlan ("artifacts.<method>")."""

    port = "artifacts"


def faulty_backend(backend: Backend, plan: FaultPlan) -> Backend:
    """`backend` with each of its three ports wrapped by `plan` (one plan, one log for all)."""
    return Backend(
        queue=FaultyQueue(backend.queue, plan),
        store=FaultyStore(backend.store, plan),
        artifacts=FaultyArtifacts(backend.artifacts, plan),
        name=backend.name,
    )
