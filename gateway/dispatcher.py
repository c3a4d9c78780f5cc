"""The dispatcher: takes due jobs from the store by lease and hands them to partner adapters.

Each job is one call to a partner (submit a case, pass on a supplement or a withdrawal). The
adapter's outcome decides what is written: the case moves on (success), the job is rescheduled
durably with backoff (retryable), or it is dead-lettered with its reason (permanent, or the retry
budget is spent) and the case becomes ``failed``. A short in-call retry (tenacity) absorbs a
blip without a round trip through the store; the store carries the long retry.

Concurrency is bounded per partner: the dispatcher never claims more jobs for a partner than it
has free call slots, so leased jobs do not wait behind a slow partner while their lease runs out.
One claim round takes at most ``gateway.dispatch_batch`` jobs, shared out among the partners in
turn, so one store round stays short however many partners have free slots.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_result,
    stop_after_attempt,
    wait_random_exponential,
)

from adapters.sdk import (
    Accepted,
    Adapter,
    AdapterContext,
    CanonicalCase,
    MaskingFilter,
    Outcome,
    Retryable,
)
from gateway import logs
from gateway.clock import Clock
from gateway.config import RetryPolicy
from gateway.ids import new_id
from gateway.lifecycle import Status
from gateway.privacy import masked, sensitive_values
from gateway.retry import Circuit, backoff
from gateway.service import CaseService, canonical
from gateway.store.base import (
    CaseRecord,
    Enqueue,
    FinishJob,
    JobRecord,
    NewJob,
    Op,
    OpResult,
    Store,
    Transition,
    TransitionResult,
)
from gateway.supervisor import Signal

log = logging.getLogger(__name__)
_NOT_HANDED_OVER = frozenset({Status.RECEIVED, Status.FAILED})


@dataclass
class PartnerSlot:
    """Live state of one partner as the dispatcher sees it."""

    adapter: Adapter
    ctx: AdapterContext
    concurrency: int
    mask: MaskingFilter = field(default_factory=MaskingFilter)
    inflight: int = 0
    circuit: Circuit = field(default_factory=Circuit)


class Dispatcher:
    def __init__(
        self,
        *,
        store: Store,
        service: CaseService,
        partners: Mapping[str, PartnerSlot],
        clock: Clock,
        retry: RetryPolicy,
        lease: float,
        owner: str,
        poll_interval: float = 0.5,
        batch: int = 64,
        on_outcome: Any = None,
    ) -> None:
        self.store = store
        self.service = service
        self.partners = partners
        self.clock = clock
        self.retry = retry
        self.lease = lease
        self.owner = owner
        self.poll_interval = poll_interval
        self.batch = batch
        self.signal = Signal()
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_outcome = on_outcome or (lambda region, kind: None)

    def wake(self) -> None:
        self.signal.set()

    async def run(self) -> None:
        try:
            while True:
                if not await self._claim():
                    await self.signal.wait(self.poll_interval, LINGER)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _claim(self) -> bool:
        """Claim and start one round of jobs; True if a partner's quota was filled, so more may
        be waiting for it and the next round goes at once."""
        now = self.clock.now()
        free = {
            region: slot.concurrency - slot.inflight
            for region, slot in self.partners.items()
            if slot.circuit.allows(now)  # a paused partner's jobs are not claimed (the store)
        }
        quotas = share(free, self.batch)
        if not quotas:
            return False
        jobs = await self.store.claim_jobs(self.owner, now, self.lease, quotas)
        if not jobs:
            return False
        cases = await self.store.cases([j.case_id for j in jobs])
        for job in jobs:
            slot = self.partners[job.region]
            slot.inflight += 1
            task = asyncio.create_task(self._run_job(job, cases.get(job.case_id), slot))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        claimed = Counter(j.region for j in jobs)
        return any(claimed[region] >= quota for region, quota in quotas.items())

    async def _run_job(self, job: JobRecord, case: CaseRecord | None, slot: PartnerSlot) -> None:
        try:
            try:
                ops = await self._process(job, case, slot)
            finally:
                # The slot bounds calls in flight to the partner; the write that follows holds
                # the job's lease, not the partner's capacity.
                slot.inflight -= 1
                self.signal.set()
            results = await self.store.write(ops, self.clock.now())
            if any(isinstance(op, Transition) for op in ops):
                self.service.wake.deliver()
            await self._compensate(job, ops, results)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("dispatch job %s failed unexpectedly (%s); its lease will expire",
                      job.job_id, logs.failure(exc))  # fmt: skip

    async def _process(
        self, job: JobRecord, case: CaseRecord | None, slot: PartnerSlot
    ) -> list[Op]:
        if case is None or (job.kind == "submit" and case.status.value in _NOTHING_TO_SEND):
            return [FinishJob(job.job_id, "done", error="case no longer needs sending")]
        canonical = await self._canonical(case)
        sensitive = self._sensitive(case)
        with slot.mask.masking(sensitive):
            outcome = await self._call(job, canonical, slot)
        now = self.clock.now()
        self._on_outcome(job.region, type(outcome).__name__.lower())
        if isinstance(outcome, Accepted):
            slot.circuit.success()
            return self._accepted(job, case, outcome, now)
        # An adapter's reason goes to logs, the job, partner health and the failed event: should
        # it quote a partner answer that repeats the case's personal data, that is masked.
        why = masked(outcome.reason, sensitive)
        if isinstance(outcome, Retryable):
            slot.circuit.failure(now, why)
            if job.attempts + 1 < self.retry.max_attempts:
                delay = max(
                    backoff(job.attempts, self.retry.base_seconds, self.retry.cap_seconds),
                    min(outcome.retry_after or 0.0, self.retry.cap_seconds),
                )
                return [FinishJob(job.job_id, "retry", now + delay, why)]
            reason = f"retry budget spent after {job.attempts + 1} attempts: {why}"
        else:
            slot.circuit.success()  # the partner answered; it is the request it refused
            reason = f"permanent: {why}"
        log.warning("dead-lettering %s job %s of case %s: %s", job.kind, job.job_id,
                    job.case_id, reason)  # fmt: skip
        ops: list[Op] = [FinishJob(job.job_id, "dead", now, reason)]
        if job.kind == "submit":
            ops.append(self._transition(job, case, Status.FAILED, now, {"reason": reason}))
        return ops

    async def _compensate(self, job: JobRecord, ops: list[Op], results: list[OpResult]) -> None:
        """The partner took a case that was withdrawn while the call was in flight: the
        ``dispatched`` transition was refused, so tell the partner of the withdrawal."""
        for op, result in zip(ops, results, strict=True):
            if (
                isinstance(op, Transition)
                and op.status is Status.DISPATCHED
                and isinstance(result, TransitionResult)
                and not result.applied
                and result.case is not None
                and result.case.status is Status.WITHDRAWN
            ):
                notice = NewJob("withdraw", job.region, {"reason": "withdrawn by the origin"})
                await self.store.write([Enqueue(op.case_id, notice)], self.clock.now())
                self.signal.set()

    def _accepted(
        self, job: JobRecord, case: CaseRecord, outcome: Accepted, now: float
    ) -> list[Op]:
        ops: list[Op] = [FinishJob(job.job_id, "done", now)]
        if job.kind == "submit":
            t = self._transition(job, case, Status.DISPATCHED, now, {})
            # Only a case not yet handed over becomes dispatched: the partner's own report
            # may have overtaken this answer and moved the case on already.
            ops.append(replace(t, partner_ref=outcome.partner_ref, only_from=_NOT_HANDED_OVER))
        ops.extend(
            self.service.update_transition(job.region, u, {}, now, case)
            for u in outcome.updates
            if u.status != Status.DISPATCHED.value
        )
        return ops

    def _transition(
        self, job: JobRecord, case: CaseRecord, status: Status, now: float, data: dict[str, Any]
    ) -> Transition:
        """The gateway's own transition for a job: for a multi-site case, only on its leg."""
        leg = job.data.get("leg")
        return Transition(
            leg=leg if isinstance(leg, int) else None,
            case_id=case.case_id,
            status=status,
            event_id=new_id(now, "E"),
            at=now,
            source="gateway",
            data=data,
        )

    async def _call(self, job: JobRecord, case: CanonicalCase, slot: PartnerSlot) -> Outcome:
        """One quick second try for a blip (not when the partner named its own delay)."""
        outcome: Outcome = Retryable("not called")
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(2),
                wait=wait_random_exponential(multiplier=0.05, max=0.5),
                retry=retry_if_result(lambda o: isinstance(o, Retryable) and o.retry_after is None),
            ):
                with attempt:
                    outcome = await self._call_once(job, case, slot)
                attempt.retry_state.set_result(outcome)
        except RetryError:
            pass  # both tries were retryable: ``outcome`` holds the last one
        return outcome

    async def _call_once(self, job: JobRecord, case: CanonicalCase, slot: PartnerSlot) -> Outcome:
        try:
            async with asyncio.timeout(slot.ctx.timeout + 1):
                if job.kind == "submit":
                    return await slot.adapter.submit(case, slot.ctx)
                if job.kind == "supplement":
                    return await slot.adapter.supplement(case, job.data, slot.ctx)
                return await slot.adapter.withdraw(case, str(job.data.get("reason", "")), slot.ctx)
        except TimeoutError:
            return Retryable("adapter call timed out")
        except Exception as exc:  # an adapter bug must not kill the worker or lose the job
            log.error("adapter %s raised %s on job %s", slot.adapter.kind,
                      type(exc).__name__, job.job_id)  # fmt: skip
            return Retryable(f"adapter error: {type(exc).__name__}")

    def _sensitive(self, case: CaseRecord) -> set[str]:
        item = self.service.contracts.items.get(case.item_code)
        version = item.version(case.contract_version) if item else None
        paths = version.sensitive_fields if version else []
        return sensitive_values(case.applicant, case.payload, paths)

    async def _canonical(self, case: CaseRecord) -> CanonicalCase:
        attachments = []
        for a in case.attachments:
            content = await self.store.get_blob(a["sha256"])
            item = dict(a)
            if content is not None:
                item["content_base64"] = base64.b64encode(content).decode()
            attachments.append(item)
        return canonical(case, attachments)


def share(free: Mapping[str, int], budget: int) -> dict[str, int]:
    """Split ``budget`` claims among the partners by their free slots, one each in turn, so a
    partner with many free slots cannot take a whole round; partners with none are left out."""
    out = dict.fromkeys((r for r, n in free.items() if n > 0), 0)
    while budget > 0:
        took = False
        for region in out:
            if budget > 0 and out[region] < free[region]:
                out[region] += 1
                budget -= 1
                took = True
        if not took:
            break
    return out


LINGER = 0.005  # seconds to let work gather after a wake-up
_NOTHING_TO_SEND = frozenset({"completed", "rejected", "withdrawn"})
