"""The agent loop: boot, heartbeat, converge to the desired state, terminate cleanly.

One main thread owns the runtime and the containers; a long-poll thread only hands newer
desired states over (and wakes the main thread), and one worker thread does the slow things
(boot checks, image pulls) so heartbeats never stop while they run. After any change the agent
reports at once instead of waiting for the next heartbeat.
"""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Union

from campfleet.agent import __version__, shipkey
from campfleet.agent.client import MuxClient, MuxRejected, MuxUnreachable
from campfleet.agent.config import AgentConfig
from campfleet.agent.content import sync_content
from campfleet.agent.imds import FileIdentity, Imds, ImdsFailure
from campfleet.agent.runtime import Runtime, RuntimeFailure, health_ok
from campfleet.agent.volume import EbsVolumes, LocalVolumes, VolumeFailure
from campfleet.protocol import (
    FORGED,
    ILLEGAL,
    READY,
    UNATTESTED,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
    Desired,
    Report,
    ShipState,
    key_fingerprint,
)

log = logging.getLogger("campfleet.agent")

# Registry states after which the only report a ship may send is `terminated`.
STAND_DOWN = (ShipState.LOST.value, ShipState.TERMINATED.value)
_STATE_VALUES = frozenset(s.value for s in ShipState)
# Auto Scaling target lifecycle states (IMDS autoscaling/target-lifecycle-state).
WARMED = "Warmed:"  # Warmed:Stopped, Warmed:Running, Warmed:Hibernated
IN_SERVICE = "InService"
EXIT_TERMINATED_BEFORE = 3  # the unit file's RestartPreventExitStatus: do not restart a dead ship
TERMINATED_MARKER = "terminated"
# CompleteLifecycleAction: tries and backoff (base doubling to cap, jitter 0.5-1.5x); the
# hooks' heartbeat timeout (300 s) leaves room for all of them.
LIFECYCLE_ATTEMPTS = 5
LIFECYCLE_BACKOFF_BASE = 1.0
LIFECYCLE_BACKOFF_CAP = 16.0


@dataclass
class Container:
    spec: ContainerSpec
    generation: int  # desired generation it was started for
    state: ContainerState = ContainerState.STARTING
    error: str = ""
    digest: str = ""
    started: float = 0.0
    next_check: float = 0.0
    interval: float = 0.01
    pull: Optional[Future] = None  # image pull in progress (docker)


def check_cap(waited: float) -> float:
    """Longest pause between health checks of a starting container: 0.25 s for a quick start,
    then a twentieth of the wait so far (a slow start is noticed at most ~5 % late), up to 2 s.
    A room of containers starting at once on one loaded host (campfleet local, benchmarks)
    must not spend its CPU on polling them."""
    return min(2.0, max(0.25, waited / 20))


class Backoff:
    """Exponential backoff with jitter for an unreachable mux, capped at the heartbeat: a ship
    that stays silent longer than lost_after heartbeats is marked lost, and lost is final."""

    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def next(self) -> float:
        self.failures += 1
        return min(self.cap, self.base * 2 ** min(self.failures - 1, 10)) * random.uniform(0.5, 1.5)

    def reset(self) -> None:
        self.failures = 0


def wire_state(state: ShipState, accepted: Optional[ShipState]) -> ShipState:
    """The state to report for `state` when the mux last accepted `accepted`. A ship the
    registry does not hold yet (its first report never arrived, or the registry is new) must
    pass booting -> available before running. (Shared with the fleet simulator.)"""
    if state in READY:
        if accepted is None:
            return ShipState.BOOTING
        if accepted is ShipState.BOOTING and state is ShipState.RUNNING:
            return ShipState.AVAILABLE
    return state


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        runtime: Runtime,
        volumes: Union[LocalVolumes, EbsVolumes],
        imds: Optional[Imds] = None,
    ) -> None:
        self.cfg = cfg
        self.runtime = runtime
        self.volumes = volumes
        self.imds = imds  # AWS mode: identity, lifecycle state
        if imds is not None:
            cfg.ship_id, cfg.zone, cfg.address = imds.identity()
        # What the ship attests with: IMDS's signed identity document (files in local mode).
        self.identity: Union[Imds, FileIdentity, None] = imds
        if imds is None and cfg.identity_dir is not None:
            self.identity = FileIdentity(cfg.identity_dir)
        self.key_path = cfg.state_dir / shipkey.KEY_FILE
        # A report slower than two heartbeats is late anyway; do not stall the loop longer.
        self.client = MuxClient(
            cfg.mux_url,
            cfg.ship_id,
            shipkey.load(self.key_path, cfg.ship_id),
            timeout=min(10.0, max(2.0, 2 * cfg.heartbeat)),
        )
        self._attest_due = 0.0
        self._attest_backoff = Backoff(min(0.25, cfg.heartbeat), max(30.0, cfg.heartbeat))
        self.containers: Dict[str, Container] = {}
        self.booting = True
        self.failure = ""  # ship-level failure: the ship is failed for good
        self.terminated = False
        self.mounted: Optional[str] = None
        self.volume_path: Optional[Path] = None
        self.volume_wait_since: Optional[float] = None
        self.desired: Optional[Desired] = None
        self.applied = 0
        self.converged = True
        self.known_generation = -1
        self.pulled: Set[str] = set()
        self.accepted: Optional[ShipState] = None  # the last state the mux accepted from us
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-worker")
        self._report_due = 0.0
        self._report_backoff = Backoff(min(0.25, cfg.heartbeat), cfg.heartbeat)

    # -- state --------------------------------------------------------------------------------

    def state(self) -> ShipState:
        if self.terminated:
            return ShipState.TERMINATED
        if self.failure:
            return ShipState.FAILED
        if self.booting:
            return ShipState.BOOTING
        return ShipState.RUNNING if self.containers else ShipState.AVAILABLE

    def report(self) -> Report:
        statuses = [
            ContainerStatus(c.spec.name, c.spec.image, c.digest, c.state, c.spec.port, c.error)
            for c in self.containers.values()
        ]
        return Report(
            ship_id=self.cfg.ship_id,
            zone=self.cfg.zone,
            address=self.cfg.address,
            port_base=self.cfg.port_base,
            state=self.wire_state(),
            containers=statuses,
            volume=self.mounted,
            error=self.failure,
            agent_version=__version__,
            generation=self.applied,
        )

    def wire_state(self) -> ShipState:
        return wire_state(self.state(), self.accepted)

    def ensure_key(self) -> bool:
        """Attest (once a key is missing) and keep the key; False while this ship has none."""
        if self.client.key is not None:
            return True
        if time.monotonic() < self._attest_due:
            return False
        try:
            if self.identity is None:
                raise ImdsFailure("no identity source (IMDS, or --identity-dir in local mode)")
            document, signature = self.identity.identity_document()
            key = self.client.attest(document, signature)
        except (ImdsFailure, MuxUnreachable, MuxRejected) as exc:
            delay = self._attest_backoff.next()
            log.error("attestation failed (%s); retrying in %.1f s", exc, delay)
            self._attest_due = time.monotonic() + delay
            return False
        self._attest_backoff.reset()
        try:
            shipkey.save(self.key_path, self.cfg.ship_id, key)
        except OSError as exc:  # the key still works until the agent restarts
            log.error("could not keep the ship key in %s: %s", self.key_path, exc)
        log.info("attested: this ship's key is %s", key_fingerprint(key))
        return True

    def drop_key(self, reason: str) -> None:
        """The mux holds no key for us, or another one: attest again at the next report."""
        log.warning("the mux does not accept this ship's key (%s): attesting again", reason)
        self.client.key = None
        shipkey.forget(self.key_path)
        self._attest_due = 0.0

    def send_report(self) -> bool:
        report = self.report()
        if not self.ensure_key():
            self._report_due = max(self._attest_due, time.monotonic() + 0.1)
            return False
        try:
            desired = self.client.report(report)
        except MuxUnreachable as exc:
            delay = self._report_backoff.next()
            log.warning("mux unreachable (%s); retrying in %.1f s", exc, delay)
            self._report_due = time.monotonic() + delay
            return False
        except MuxRejected as exc:
            log.error("report refused: %s", exc)
            self._report_due = time.monotonic() + self.cfg.heartbeat
            if exc.kind in (UNATTESTED, FORGED):
                self.drop_key(exc.reason)
                self._report_due = 0.0
            elif exc.kind == ILLEGAL and exc.ship_state in STAND_DOWN and not self.terminated:
                # The mux gave this ship up (its attendee was moved): stop using their volume.
                log.error("the mux holds this ship as %s: standing down", exc.ship_state)
                self.request_stop()
            elif exc.kind == ILLEGAL and exc.ship_state in _STATE_VALUES:
                # Learn what the registry holds; retry at once if that changes what we send.
                held = ShipState(exc.ship_state)
                self.accepted = None if held is ShipState.PENDING else held
                if self.wire_state() is not report.state:
                    self._report_due = 0.0
            return False
        self._report_backoff.reset()
        self.accepted = report.state
        # Sent a stepping-stone state (booting/available): send the real one at once.
        stepping = report.state is not self.state()
        self._report_due = 0.0 if stepping else time.monotonic() + self.cfg.heartbeat
        self.offer(desired)
        return True

    def offer(self, desired: Desired, polled: Optional[int] = None) -> None:
        """Take a desired state from any thread; only a newer generation replaces the current.

        Except: a long-poll sent with generation `polled` (what the agent knew, so the registry
        had it) answered with an older one proves the mux's registry went back (a new or
        restored file); that answer is then the truth, else the ship would ignore every order
        until the generations caught up, and poll in a tight loop meanwhile.
        """
        with self._lock:
            if desired.generation <= self.known_generation:
                stale = polled is None or desired.generation >= polled
                if stale or self.known_generation != polled:
                    return
                log.warning(
                    "the mux's desired generation went back from %d to %d (new registry?): "
                    "following it",
                    polled,
                    desired.generation,
                )
            self.known_generation = desired.generation
            self.desired = desired
            self.converged = False
        self._wake.set()

    # -- threads ------------------------------------------------------------------------------

    def _poll_loop(self) -> None:
        backoff = Backoff(min(0.25, self.cfg.heartbeat), self.cfg.heartbeat)
        while not self._stop.is_set():
            try:
                known = max(self.known_generation, 0)
                self.offer(self.client.poll(known, self.cfg.poll_timeout), polled=known)
                if backoff.failures:  # the mux is back: tell it what this ship is right now
                    self._report_due = 0.0
                    self._wake.set()
                backoff.reset()
            except MuxUnreachable:
                self._stop.wait(backoff.next())
            except MuxRejected as exc:
                if exc.kind == UNATTESTED:  # the main thread attests; poll once it has a key
                    self._stop.wait(min(0.1, self.cfg.heartbeat))
                    continue
                log.error("long-poll refused: %s", exc)
                self._stop.wait(self.cfg.heartbeat)

    def request_stop(self, *_: object) -> None:
        self._stop.set()
        self._wake.set()

    def _on_signal(self, *_: object) -> None:
        """SIGTERM/SIGINT. A handler runs between two bytecodes of the main thread, which may be
        inside one of the Events' locks (non-reentrant): setting them here could deadlock."""
        threading.Thread(target=self.request_stop, name="agent-signal", daemon=True).start()

    # -- boot ---------------------------------------------------------------------------------

    def boot(self) -> None:
        """Runs on the worker thread; raises with the reason the ship cannot serve."""
        self.runtime.check()
        self.runtime.cleanup()
        images = list(
            dict.fromkeys(self.cfg.images + ([self.cfg.probe.image] if self.cfg.probe else []))
        )
        for image in images:
            self._pull(image)
        if self.cfg.probe:
            self._probe(self.cfg.probe)

    def _probe(self, spec: ContainerSpec) -> None:
        """Start the image once and wait for its own health check: a broken init script shows
        up here, as this ship's failure, before any attendee is sent to it."""
        workdir = self.cfg.state_dir / "scratch" / "boot-probe"
        workdir.mkdir(parents=True, exist_ok=True)
        self.runtime.prepare(workdir)
        probe = ContainerSpec(
            "boot-probe", spec.image, spec.cmd, spec.env, spec.port, spec.health_path
        )
        self.runtime.start(probe, workdir)
        try:
            deadline = time.monotonic() + self.cfg.start_timeout
            while not health_ok(self.cfg.address, probe.port, probe.health_path):
                gone = self.runtime.exited(probe.name)
                if gone:
                    raise RuntimeFailure(f"boot probe of {probe.image}: {gone}")
                if time.monotonic() > deadline or self._stop.is_set():
                    raise RuntimeFailure(
                        f"boot probe of {probe.image}: no answer on :{probe.port}"
                        f"{probe.health_path} within {self.cfg.start_timeout:g} s"
                    )
                time.sleep(0.1)
        finally:
            self.runtime.stop(probe.name)

    # -- converge -----------------------------------------------------------------------------

    def converge(self, desired: Desired) -> bool:
        """Move towards `desired`; True once everything it asks for has been started."""
        target_volume = None if desired.drain else desired.volume
        specs = {} if desired.drain else {c.name: c for c in desired.containers}
        if self.mounted != target_volume:
            self.stop_all()
            if self.mounted:
                self.volumes.unmount(self.mounted)
                self.mounted = self.volume_path = None
            if target_volume:
                path = self.volumes.mount(target_volume, may_format=desired.may_format)
                if path is None:
                    now = time.monotonic()
                    self.volume_wait_since = self.volume_wait_since or now
                    if now - self.volume_wait_since > self.cfg.volume_timeout:
                        raise VolumeFailure(
                            f"home volume {target_volume} not attached within "
                            f"{self.cfg.volume_timeout:g} s"
                        )
                    return False
                self.mounted, self.volume_path = target_volume, path
        self.volume_wait_since = None
        for name in list(self.containers):
            c = self.containers[name]
            # A failed container is retried when the mux sends a new generation.
            stale = c.state == ContainerState.FAILED and c.generation < desired.generation
            if name not in specs or c.spec != specs[name] or stale:
                self.stop_container(name)
        for name, spec in specs.items():
            if name not in self.containers:
                self.start_container(spec, desired.generation)
        self.applied = desired.generation
        return True

    def workdir(self, name: str) -> Path:
        path = self.volume_path or self.cfg.state_dir / "scratch" / (name or "default")
        path.mkdir(parents=True, exist_ok=True)
        self.runtime.prepare(path)  # before content lands: its files take the volume's owner
        return path

    def start_container(self, spec: ContainerSpec, generation: int) -> None:
        c = Container(spec=spec, generation=generation, started=time.monotonic())
        self.containers[spec.name] = c
        if not self.runtime.needs_pull or spec.image in self.pulled:
            self._launch(c)
            return
        c.pull = self._worker.submit(self._pull, spec.image)
        c.pull.add_done_callback(lambda _f: self._wake.set())

    def _pull(self, image: str) -> None:
        """Once per image and agent, on the worker thread: pull it and copy its tutorial
        content out (both slow with Docker), so an attendee's start does not wait."""
        self.runtime.pull(image)
        self.runtime.content(image, self.cfg.state_dir / "content")
        self.pulled.add(image)

    def _launch(self, c: Container) -> None:
        try:
            workdir = self.workdir(c.spec.name)
            content = self.runtime.content(c.spec.image, self.cfg.state_dir / "content")
            if content is not None:
                result = sync_content(content, workdir)
                log.info(
                    "content of %s: %d copied, %d kept",
                    c.spec.image,
                    len(result.copied),
                    len(result.kept),
                )
            self.runtime.start(c.spec, workdir)
            c.digest = self.runtime.digest(c.spec)
        except (RuntimeFailure, OSError) as exc:
            c.state, c.error = ContainerState.FAILED, str(exc)
            log.error("container %r failed to start: %s", c.spec.name, exc)
        c.started = c.next_check = time.monotonic()

    def stop_container(self, name: str) -> None:
        c = self.containers.pop(name)
        if c.pull is None:  # else it never started
            self._stop_quietly(name)

    def _stop_quietly(self, name: str) -> None:
        try:
            self.runtime.stop(name)
        except RuntimeFailure as exc:
            log.error("stopping %r: %s", name, exc)

    def stop_all(self) -> None:
        for name in list(self.containers):
            self.stop_container(name)

    def refresh(self) -> bool:
        """Health-check starting containers, notice dead ones; True when anything changed."""
        changed = False
        now = time.monotonic()
        for c in self.containers.values():
            if c.pull is not None:
                if not c.pull.done():
                    continue
                error, c.pull = c.pull.exception(), None
                if error is not None:
                    c.state, c.error = ContainerState.FAILED, f"pull {c.spec.image}: {error}"
                    changed = True
                    continue
                self._launch(c)
                changed = True
            if c.state == ContainerState.FAILED or now < c.next_check:
                continue
            gone = self.runtime.exited(c.spec.name)
            if gone:
                c.state, c.error = ContainerState.FAILED, gone
                log.error("container %r: %s", c.spec.name, gone)
                changed = True
            elif c.state == ContainerState.STARTING:
                if health_ok(self.cfg.address, c.spec.port, c.spec.health_path):
                    c.state, changed = ContainerState.RUNNING, True
                elif now - c.started > self.cfg.start_timeout:
                    c.state, changed = ContainerState.FAILED, True
                    c.error = (
                        f"health check GET :{c.spec.port}{c.spec.health_path} did not pass "
                        f"within {self.cfg.start_timeout:g} s"
                    )
                    self._stop_quietly(c.spec.name)
                else:
                    c.interval = min(c.interval * 1.5, check_cap(now - c.started))
            if c.state == ContainerState.RUNNING:
                c.interval = self.cfg.heartbeat
            c.next_check = now + c.interval
        return changed

    def next_wake(self) -> float:
        times = [self._report_due]
        times += [
            c.next_check
            for c in self.containers.values()
            if c.state != ContainerState.FAILED and c.pull is None
        ]
        if not self.converged:
            times.append(time.monotonic() + 0.2)
        return max(0.0, min(times) - time.monotonic())

    # -- main ---------------------------------------------------------------------------------

    def run(self) -> int:
        marker = self.cfg.state_dir / TERMINATED_MARKER
        if marker.exists():
            log.error("this ship was terminated before (%s exists); not starting again", marker)
            return EXIT_TERMINATED_BEFORE
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        state = self._target_state()
        if state is not None and state.startswith(WARMED):
            return self.warm_up(state)
        return self.serve()

    def _target_state(self) -> Optional[str]:
        """Auto Scaling's target lifecycle state (AWS only; None locally or when unknown)."""
        if self.imds is None:
            return None
        try:
            return self.imds.lifecycle_state()
        except ImdsFailure as exc:
            log.warning("lifecycle state unknown: %s", exc)
            return None

    def warm_up(self, state: str) -> int:
        """Launched into a warm pool: prepare, tell AWS, report nothing, wait to be stopped.

        The images are pulled now so that leaving the pool costs a start, not a download.
        The mux never hears of this ship until it leaves the pool and boots again (a stopped
        ship that had reported would turn `lost`). A stop (SIGTERM) ends the agent without the
        terminated marker and without a report: the next boot serves as a new ship. A pool
        that keeps ships running moves them in service without a reboot: then serve at once.
        """
        log.info("launched into the warm pool (%s): preparing, not reporting", state)
        try:
            self.runtime.check()
            for image in dict.fromkeys(self.cfg.images):
                self._pull(image)
        except Exception as exc:  # the boot out of the pool pulls again and reports failures
            log.error("warm-up: %s", exc)
        self.complete_lifecycle_action(self.cfg.launch_hook_name)
        while not self._stop.wait(self.cfg.heartbeat):
            state = self._target_state() or state
            if state == IN_SERVICE:
                log.info("moved in service from the warm pool without a reboot")
                return self.serve()
        log.info("stopped in the warm pool; the next boot serves")
        self._worker.shutdown(wait=False)
        return 0

    def serve(self) -> int:
        """Boot, report and converge until terminated (or stopped by a signal)."""
        log.info(
            "ship %s (%s, %s) booting; mux %s",
            self.cfg.ship_id,
            self.cfg.zone,
            self.cfg.address,
            self.cfg.mux_url,
        )
        self.send_report()
        boot = self._worker.submit(self.boot)
        boot.add_done_callback(lambda _f: self._wake.set())
        threading.Thread(target=self._poll_loop, name="agent-poll", daemon=True).start()
        next_lifecycle = 0.0
        while not self._stop.is_set():
            changed = False
            if self.booting and boot.done():
                self.booting, changed = False, True
                if boot.exception() is not None:
                    self.failure = f"boot failed: {boot.exception()}"
                    log.error("%s", self.failure)
                else:
                    log.info("boot done: available")
                    if self.imds is not None and self.cfg.launch_hook_name:
                        # Out of the warm pool (or launched straight in): in service now.
                        self._worker.submit(
                            self.complete_lifecycle_action, self.cfg.launch_hook_name
                        )
            with self._lock:
                desired, converged = self.desired, self.converged
            if desired is not None and desired.terminate:
                break
            if desired is not None and not converged and not self.booting and not self.failure:
                try:
                    done = self.converge(desired)
                except (VolumeFailure, RuntimeFailure, OSError) as exc:
                    self.failure = str(exc)
                    log.error("ship failed: %s", exc)
                    done = True
                with self._lock:
                    if self.desired is desired:
                        self.converged = done
                changed = True
            changed = self.refresh() or changed
            if self.imds is not None and time.monotonic() >= next_lifecycle:
                next_lifecycle = time.monotonic() + self.cfg.heartbeat
                if self._lifecycle_terminating():
                    break
            if changed or time.monotonic() >= self._report_due:
                self.send_report()
            self._wake.wait(self.next_wake())
            self._wake.clear()
        self.terminate()
        return 0

    def _lifecycle_terminating(self) -> bool:
        try:
            state = self.imds.lifecycle_state() if self.imds else None
        except ImdsFailure as exc:
            log.warning("lifecycle state unknown: %s", exc)
            return False
        if state == "Terminated":
            log.info("Auto Scaling is terminating this instance (Terminating:Wait)")
            return True
        return False

    def terminate(self) -> None:
        """Stop containers, flush and unmount, report terminated, let AWS continue."""
        self._stop.set()
        self.stop_all()
        if self.mounted:
            try:
                self.volumes.unmount(self.mounted)
            except VolumeFailure as exc:
                log.error("unmount: %s", exc)
            self.mounted = self.volume_path = None
        self.terminated = True
        (self.cfg.state_dir / TERMINATED_MARKER).write_text(time.ctime() + "\n")
        for attempt in range(3):
            if self.send_report():
                break
            time.sleep(0.5 * (attempt + 1))
        if self.imds is not None:
            self.complete_lifecycle_action()
        self._worker.shutdown(wait=False)
        log.info("terminated")

    def complete_lifecycle_action(self, hook_name: Optional[str] = None) -> bool:
        """CONTINUE a lifecycle hook (the termination hook unless another is named); True once
        AWS took it."""
        hook_name = self.cfg.lifecycle_hook_name if hook_name is None else hook_name
        if not (self.cfg.ship_group_name and hook_name):
            log.warning("shipGroupName/lifecycle hook name not configured: not completing it")
            return False
        argv: List[str] = [
            "aws", "autoscaling", "complete-lifecycle-action",
            "--lifecycle-hook-name", hook_name,
            "--auto-scaling-group-name", self.cfg.ship_group_name,
            "--instance-id", self.cfg.ship_id,
            "--lifecycle-action-result", "CONTINUE",
        ]  # fmt: skip
        if self.cfg.region:
            argv += ["--region", self.cfg.region]
        return complete_with_retry(argv)


def complete_with_retry(
    argv: List[str],
    attempts: int = LIFECYCLE_ATTEMPTS,
    backoff: Optional[Backoff] = None,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Run `aws autoscaling complete-lifecycle-action` until it succeeds, at most `attempts`
    times with exponential backoff and jitter between tries (about 1, 2, 4, 8 s: well inside
    the hook's heartbeat timeout). A throttled or transiently failing call (Throttling, an
    endpoint or credentials briefly unreachable, awscli's own retries used up) would otherwise
    leave the instance waiting in Pending:Wait or Terminating:Wait until the hook times out;
    500 ships terminating at once is when throttling happens. A ValidationError (no such hook,
    no lifecycle action waiting for this instance) cannot get better and is not retried."""
    backoff = backoff or Backoff(LIFECYCLE_BACKOFF_BASE, LIFECYCLE_BACKOFF_CAP)
    for attempt in range(1, attempts + 1):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            why = str(exc)
        else:
            if done.returncode == 0:
                if attempt > 1:
                    log.info("complete-lifecycle-action succeeded on attempt %d", attempt)
                return True
            why = done.stderr.strip()[-500:] or f"exit {done.returncode}"
            if "(ValidationError)" in why:
                log.error("complete-lifecycle-action refused: %s", why)
                return False
        if attempt == attempts:
            log.error("complete-lifecycle-action failed %d times; last: %s", attempts, why)
            return False
        delay = backoff.next()
        log.warning(
            "complete-lifecycle-action failed (attempt %d of %d): %s; retrying in %.1f s",
            attempt, attempts, why, delay,
        )  # fmt: skip
        sleep(delay)
    return False
