"""The edge agent: the fixed-rate control loop, wired to the policy runtime, an operator and the tunnel.

Each tick: swap in a ready policy, take the next action (the policy's, or the operator's when
they intervene), clamp it, apply it, and record the step with its provenance. Nothing on this
thread touches the network or disk.

A person as the operator (``PersonOperator``) is heard every tick: success and failure end the episode with their
label on its last step, re-record ends it as discarded (kept in the store, never trained on), and every step they
drive carries who they are. After each episode such a robot holds until the scene is reset (``edge.scene``).

A reward classifier (``tunnel.outcome_policy``) says success the same way: it judges the frames on its own thread
(``edge.outcome_worker``) and its verdict ends the episode, labelled by it, at the next step recorded.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from edge.camera_uplink import CameraUplink, UplinkCodecs, camera_columns
from edge.local_runtime import LocalPolicyRuntime
from edge.operator import Operator, PersonOperator, SaysWhoSaid, Signal
from edge.outcome import OutcomeJudgeConfig
from edge.outcome_worker import OutcomeWorker
from edge.recorder import Step, StepRecorder
from edge.remote_operator import CloudLinked
from edge.remote_runtime import RemotePolicyRuntime
from edge.runtime import PolicyRuntime, RollsBack
from edge.scene import SceneWait
from edge.spool import SpoolStore
from edge.tunnel_client import TunnelClient, TunnelConfig
from hal.config import CodeConfig
from hal.resource import Driver, EmergencyStoppable, ResourceInfo, Transition, clamp_action
from protocol import tunnel_pb2 as pb
from protocol.limits import WAITING_FOR_RESET, WAITING_FOR_VERSION
from protocol.sanitize import printable
from protocol.steps import MAX_ID_LENGTH

log = logging.getLogger("fleetloop.edge")


class EdgeConfig(CodeConfig):
    """How an edge runs: its link to the cloud, and what it does when the link or the spool cannot keep up."""

    config_name = "edge"

    tunnel: TunnelConfig
    task: str = ""  # the task it records under until the cloud assigns one; "" for the robot's embodiment
    # 0: keep working with the last policy through link outages (steps wait in the spool); > 0: hold still
    # once the cloud has been silent this long, for sites that want a supervised robot only.
    hold_on_link_loss_s: Annotated[float, Field(ge=0)] = 0.0
    # > 0 bounds the spool: once full the robot holds still (and records nothing) until acks make room;
    # unacked steps are never deleted.
    max_spool_bytes: Annotated[int, Field(ge=0)] = 0
    # How the outcome classifier (``tunnel.outcome_policy``) says success: P above a threshold, N frames in a row.
    outcome: OutcomeJudgeConfig = OutcomeJudgeConfig()
    # > 0: the synchronous schedule (collect, stop, train, push, resume), to compare with the asynchronous loop:
    # after this many episodes with one policy version the robot holds between episodes until a newer one arrives.
    episodes_per_version: Annotated[int, Field(ge=0)] = 0
    record_digest: bool = False  # keep a sha256 of every step produced (to check the store against)
    record_tick_periods: bool = False  # keep every tick's period in the stats (benchmarks)

    # The link by position too (``EdgeConfig(TunnelConfig(...), max_spool_bytes=...)``).
    def __init__(self, tunnel: TunnelConfig, **fields: Any) -> None:
        super().__init__(tunnel=tunnel, **fields)


@dataclass
class LoopStats:
    """What the control loop counted since it started (logged when it stops; ``--stats-file`` writes it)."""

    ticks: int = 0
    missed_deadlines: int = 0
    episodes: int = 0
    successes: int = 0
    discarded: int = 0  # episodes a person had re-recorded (counted in episodes too)
    intervention_steps: int = 0
    no_action_ticks: int = 0  # ticks held still because neither the policy nor an operator had an action
    spool_full_ticks: int = 0  # ticks held still because the spool reached --spool-max-mb
    tick_periods_s: list[float] = field(default_factory=list)


class EdgeAgent:
    """One robot's edge: the control loop over ``driver``, its steps spooled and streamed up the tunnel.

    ``operator``, when given, may take over from the policy at any tick (HG-DAgger's person). ``scene``: the wait
    between two episodes, for a robot whose scene a person sets up again (``edge.scene.scene_wait_for``)."""

    def __init__(
        self,
        config: EdgeConfig,
        resource: ResourceInfo,
        driver: Driver,
        spool: SpoolStore,
        operator: Operator | None = None,
        scene: SceneWait | None = None,
    ) -> None:
        self.scene = scene
        self._ending: pb.EpisodeLabel | None = None  # a person's verdict, for the next step recorded
        self._label: pb.EpisodeLabel | None = None  # the verdict the episode ended with
        self.config = config
        self.task = config.task or resource.capabilities.embodiment  # until the cloud assigns one
        self.resource = resource
        self.driver = driver
        self.operator = operator
        self.spool = spool
        self.stats = LoopStats()
        tunnel_config = config.tunnel
        if config.hold_on_link_loss_s:  # heartbeats often enough that a healthy but idle link never looks lost
            heartbeat_s = min(tunnel_config.heartbeat_s, config.hold_on_link_loss_s / 3)
            tunnel_config = tunnel_config.model_copy(update={"heartbeat_s": heartbeat_s})
        on_actions = None
        self.runtime: PolicyRuntime
        if tunnel_config.remote_inference:  # the policy runs in the cloud; the loop below is the same
            remote = RemotePolicyRuntime(
                1.0 / resource.capabilities.control_hz,
                send=lambda request: self.tunnel.send_infer(request),
                observation_dtypes={s.name: s.dtype for s in resource.capabilities.observation},
                on_swapped=self._on_swapped,
                policy_name=tunnel_config.policy_name,
            )
            self.runtime, on_actions = remote, remote.on_reply
        else:
            self.runtime = LocalPolicyRuntime(on_swapped=self._on_swapped, on_rejected=self._on_rejected)
        # Non-empty while this robot must hold still: until the cloud gives it a task, or while paused. Once it
        # has a task it keeps working through link outages (its steps wait in the spool).
        self._hold_reason = "waiting for a task from the cloud"
        self._estop = threading.Event()
        self._drive_lock = threading.Lock()  # an emergency stop from the tunnel thread never interleaves with apply
        self._held_for = ""  # why the robot holds still now; "" while it moves
        self._version_episodes = (0, 0)  # (version, episodes ended with it): the synchronous schedule's count
        linked = operator if isinstance(operator, CloudLinked) else None  # a takeover page's people
        self.outcome: OutcomeWorker | None = None  # the reward classifier that ends episodes it judges succeeded
        self._judged: dict[str, np.ndarray] | None = None  # the last observation handed to it
        if tunnel_config.outcome_policy:
            self.outcome = OutcomeWorker(
                resource.id,
                resource.capabilities.observation,
                config.outcome,
                on_applied=lambda name, version, size: self.tunnel.report_applied(name, version, size),
                on_rejected=self._on_rejected,
            )
        outcome = self.outcome
        codecs = UplinkCodecs(tunnel_config.uplink_codec, camera_columns(resource.capabilities))
        self.tunnel = TunnelClient(
            tunnel_config,
            resource,
            spool,
            on_policy=self.runtime.load,
            current_version=lambda: self.runtime.version,
            on_assignment=self._on_assignment,
            on_emergency_stop=self._on_emergency_stop,
            on_actions=on_actions,
            on_person=linked.on_cloud_message if linked is not None else None,
            on_outcome=outcome.load if outcome is not None else None,
            outcome_version=lambda: outcome.version if outcome is not None else 0,
            on_store_codecs=codecs.welcomed,
            on_rollback=self.runtime.roll_back_to if isinstance(self.runtime, RollsBack) else None,
        )
        if linked is not None:
            linked.attach(self.tunnel.send, lambda: self.runtime.version)
        self.recorder = StepRecorder(
            spool,
            on_spooled=self.tunnel.wake,
            max_spool_bytes=config.max_spool_bytes,
            digest=config.record_digest,
            cameras=CameraUplink(codecs, resource.capabilities.control_hz) if codecs.cameras else None,
        )
        self.stop_event = threading.Event()

    def _on_swapped(self, name: str, version: int) -> None:
        log.info("%s switched to policy %s v%d between two ticks", self.resource.id, name, version)
        self.tunnel.report_applied(name, version, self.runtime.update_bytes)

    def _on_rejected(self, name: str, version: int, reason: str, bad: bool) -> None:
        self.tunnel.report_rejected(name, version, reason, bad)

    def run(self, episodes: int = 0, duration_s: float = 0.0) -> LoopStats:
        """Runs the control loop until ``episodes`` episodes ended, ``duration_s`` passed, stop(), or the cloud
        refused this edge (``tunnel.refused``: a refusal that retrying cannot heal)."""
        self.tunnel.start()
        period = 1.0 / self.resource.capabilities.control_hz
        started = time.monotonic()
        try:
            observation = self._start_episode()
            next_tick = time.monotonic()
            last_tick = next_tick
            while not self.stop_event.is_set():
                if duration_s and time.monotonic() - started >= duration_s:
                    break
                if self.tunnel.refused is not None:
                    self._log_refusal(self.tunnel.refused)
                    break
                tick_start_ns = time.monotonic_ns()
                tick_start = tick_start_ns / 1e9
                if self.config.record_tick_periods:
                    self.stats.tick_periods_s.append(tick_start - last_tick)
                last_tick = tick_start
                self.runtime.begin_tick()
                self._listen_to_person()
                if self.scene is not None and self.scene.waiting:
                    if self._scene_is_ready(tick_start) and not self._must_hold():
                        observation = self._start_episode()
                elif not self._must_hold():
                    self._judge_outcome(observation)
                    transition = self._tick(observation, tick_start_ns, tick_start + 0.5 * period)
                    if transition is not None:
                        observation = transition.observation
                        if transition.done:
                            self._end_episode(transition.success)
                            if episodes and self.stats.episodes >= episodes:
                                break
                            if self.scene is not None:
                                self._hold(self.scene.begin(tick_start), logging.INFO)
                                self.tunnel.report_waiting(WAITING_FOR_RESET)
                            else:
                                observation = self._start_episode()
                next_tick = self._wait_for_next_tick(next_tick, period)
        finally:
            self.driver.hold()
        return self.stats

    def _log_refusal(self, refused: pb.Error) -> None:
        what = "its credential" if refused.code == "unauthenticated" else "its hello"
        log.error(
            "%s stops: the cloud refused %s (%s: %s); retrying cannot change that",
            self.resource.id,
            what,
            refused.field,
            refused.message,
        )

    def _must_hold(self) -> bool:
        """Holds the robot (saying why, once) when it must not move this tick."""
        silence_s = self.config.hold_on_link_loss_s
        if silence_s and not self._hold_reason and not self.tunnel.link_up(silence_s):
            self._hold(f"no word from the cloud for {silence_s:.1f} s (link lost)")
            return True
        if self._estop.is_set() or self._hold_reason:
            self._hold(self._hold_reason or "emergency stop")
            return True
        quota = self.config.episodes_per_version
        held, count = self._version_episodes
        if quota and count >= quota and self.runtime.version <= held:  # the synchronous schedule's wait
            self._hold(
                f"{quota} episodes with v{held} done; waiting for the learner's next version (synchronous schedule)",
                logging.INFO,
            )
            if self.tunnel.waiting_for != WAITING_FOR_VERSION:  # the fleet view shows it
                self.tunnel.report_waiting(WAITING_FOR_VERSION)
            return True
        if self.recorder.full:  # a flag the spool writer sets: no disk access here
            size_mb = self.recorder.max_spool_bytes / (1 << 20)
            self._hold(f"spool full ({size_mb:.3g} MB): robot holds until the cloud acks")
            self.stats.spool_full_ticks += 1
            return True
        return False

    def _tick(self, observation: dict[str, np.ndarray], tick_start_ns: int, deadline: float) -> Transition | None:
        """Takes the policy's or the operator's action and applies it; None when the robot held still instead."""
        policy_action, version = self.runtime.next_action(observation, deadline=deadline)
        action: np.ndarray | None = policy_action
        intervention = False
        if self.operator is not None:
            action, intervention = self.operator.decide(observation, policy_action, self._seq)
        if action is None:  # no policy yet, its answer came late, or the operator holds (it says why itself)
            self.stats.no_action_ticks += 1
            if self.runtime.version == 0 and self.operator is None:
                self._hold("no policy yet and no operator to drive it; it moves once the cloud sends one", logging.INFO)
            else:  # hold this tick only: no news for the log
                with self._drive_lock:
                    self.driver.hold()
            return None
        action = clamp_action(action, self.resource.capabilities.action)
        with self._drive_lock:
            if self._estop.is_set():  # it arrived during this tick: do not apply
                return None
            transition = self.driver.apply(action)
        if self._held_for:
            log.info("%s moves again", self.resource.id)
            self._held_for = ""
            if self.tunnel.waiting_for == WAITING_FOR_VERSION:
                self.tunnel.report_waiting("")
        if self._ending is not None:  # a person ended the episode: this step is its last, with their label
            self._label, self._ending = self._ending, None
            outcome = self._label.outcome
            success = transition.success if outcome == "discarded" else outcome == "success"
            transition = replace(transition, done=True, success=success)
        who = self.operator.who if intervention and isinstance(self.operator, PersonOperator) else ""
        self._record(observation, action, transition, intervention, version, tick_start_ns, who)
        return transition

    def _wait_for_next_tick(self, next_tick: float, period: float) -> float:
        next_tick += period
        now = time.monotonic()
        if now > next_tick:
            self.stats.missed_deadlines += 1
            return now  # resynchronise instead of bursting to catch up
        self.stop_event.wait(next_tick - now)
        return next_tick

    def _hold(self, reason: str, level: int = logging.WARNING) -> None:
        """Holds still; says so when the robot was moving or now holds for another reason."""
        if reason != self._held_for:
            with self._drive_lock:
                self.driver.hold()
            self._held_for = reason
            log.log(level, "%s holds still: %s", self.resource.id, reason)

    def _on_assignment(self, assignment) -> None:
        if not assignment.task:
            self._hold_reason = "the cloud has no task for it"
        elif assignment.paused:
            self._hold_reason = f"paused by the operator (task {assignment.task})"
        else:
            if self._hold_reason or assignment.task != self.task:
                log.info(
                    "%s assigned to task %s, policy %s%s",
                    self.resource.id,
                    assignment.task,
                    assignment.policy_name,
                    f": {assignment.instruction}" if assignment.instruction else "",
                )
            self._hold_reason = ""
            self.task = assignment.task

    def _on_emergency_stop(self, message) -> None:
        """Runs on the tunnel thread: reaches the driver now, not at the next tick."""
        if message.release:
            if isinstance(self.driver, EmergencyStoppable):
                self.driver.release_emergency_stop()
            self._estop.clear()
            log.warning("%s: emergency stop released (%s)", self.resource.id, printable(message.reason))
            return
        self._estop.set()
        if isinstance(self.driver, EmergencyStoppable):  # SafeDriver latches and holds from any thread
            self.driver.emergency_stop(message.reason)
        with self._drive_lock:
            self.driver.hold()
        self._held_for = "emergency stop"
        log.warning("%s: EMERGENCY STOP (%s); holding until released", self.resource.id, printable(message.reason))

    def _listen_to_person(self) -> None:
        """Drains a person operator's signals: labels for the episode, take over and hand back, scene ready."""
        if not isinstance(self.operator, PersonOperator):
            return
        rid = self.resource.id
        if isinstance(self.operator, SaysWhoSaid):
            said = self.operator.take_said()
        else:
            said = [(signal, self.operator.who) for signal in self.operator.take_signals()]
        for signal, who in said:
            who = who or f"person@{rid}"[:MAX_ID_LENGTH]  # a label is always someone's
            if signal == Signal.TAKE_OVER:
                log.info("%s: %s takes over", rid, who)
            elif signal == Signal.HAND_BACK and self.runtime.version == 0:
                log.info("%s: %s hands back, but there is no policy yet: their controls still drive", rid, who)
            elif signal == Signal.HAND_BACK:
                log.info("%s: %s hands back to the policy", rid, who)
            elif signal == Signal.SCENE_READY:
                if self.scene is not None and self.scene.waiting:
                    self.scene.person_said = who
            elif self.scene is not None and self.scene.waiting:
                log.info("%s: the episode already ended; %s's %s is not applied to it", rid, who, signal.value)
            else:
                outcome = {Signal.SUCCESS: "success", Signal.FAILURE: "failure"}.get(signal, "discarded")
                self._ending = pb.EpisodeLabel(outcome=outcome, by=who)

    def _judge_outcome(self, observation: dict[str, np.ndarray]) -> None:
        """Ends the episode at this tick's step when the outcome classifier said success on a frame of it (as a
        person's label does), and hands it this tick's frame; never waits for the classifier."""
        if self.outcome is None:
            return
        success = self.outcome.take_success(self._episode_id)
        if success is not None and self._ending is None:
            self._ending = pb.EpisodeLabel(outcome="success", by=success.by)
        if observation is not self._judged:  # a tick that held keeps its frame: one frame counts once
            self._judged = observation
            self.outcome.offer(self._episode_id, observation)

    def _scene_is_ready(self, now: float) -> bool:
        assert self.scene is not None
        known = self.scene.ready_because
        why = self.scene.check(now)
        if why and not known:
            log.info("%s: the scene is ready (%s); the next episode starts", self.resource.id, why)
        return bool(why)

    def _start_episode(self) -> dict[str, np.ndarray]:
        if self.scene is not None and self.scene.waiting:
            self.scene.finish()
        if self.tunnel.waiting_for:
            self.tunnel.report_waiting("")
        self._episode_id = uuid.uuid4().hex
        self._seq = 0
        self._episode_interventions = 0
        self._episode_version = self._episode_last_version = self.runtime.version
        self.runtime.reset()
        if self.operator is not None:
            self.operator.reset()
        return self.driver.reset()

    def _record(
        self, observation, action, transition, intervention: bool, version: int, tick_start_ns: int, who: str = ""
    ) -> None:
        columns = {
            f"obs.{spec.name}": np.asarray(observation[spec.name], dtype=spec.numpy_dtype)
            for spec in self.resource.capabilities.observation
        }
        columns.update(
            {
                "action": np.asarray(action, dtype=self.resource.capabilities.action.numpy_dtype),
                "reward": np.float32(transition.reward),
                "done": np.bool_(transition.done),
                "success": np.bool_(transition.success),
                "intervention": np.bool_(intervention),
                "policy_version": np.int64(version),
                "t_mono_ns": np.int64(tick_start_ns),
            }
        )
        label = self._label if transition.done else None
        self.recorder.record(Step(self._episode_id, self._seq, self.task, columns, who, label))
        if self._seq == 0:
            self._episode_version = version  # the version that drove its first step, not the one held at reset
        self._episode_last_version = version
        self._seq += 1
        self.stats.ticks += 1
        if intervention:
            self.stats.intervention_steps += 1
            self._episode_interventions += 1

    def _end_episode(self, success: bool) -> None:
        label, self._label = self._label, None
        self._count_for_schedule(self._episode_last_version)
        self.stats.episodes += 1
        discarded = label is not None and label.outcome == "discarded"
        self.stats.discarded += int(discarded)
        self.stats.successes += int(success and not discarded)
        outcome = "succeeded" if success else "failed"
        if discarded:
            outcome = f"was discarded ({label.by} asked to re-record it: kept, never trained on)"
        elif label is not None:
            outcome += f" ({label.by} says so)"
        who = (
            "on its own"
            if self._episode_interventions == 0
            else f"with the operator driving {self._episode_interventions} of {self._seq} steps"
        )
        first, last = self._episode_version, self._episode_last_version
        # A version swapped in mid-episode drove its end: say both, not only the one it started with.
        versions = f"v{last}" if first == last else f"v{first}, then v{last}"
        log.info(
            "%s episode %d %s after %d steps %s (policy %s)",
            self.resource.id,
            self.stats.episodes,
            outcome,
            self._seq,
            who,
            versions,
        )

    def _count_for_schedule(self, version: int) -> None:
        """The synchronous schedule's count: once ``episodes_per_version`` episodes ended with ``version``, the next
        one waits for a newer version (``_must_hold``)."""
        held, count = self._version_episodes
        self._version_episodes = (version, count + 1 if version == held else 1)

    def stop(self) -> None:
        self.stop_event.set()

    def close(self, drain_s: float = 10.0) -> int:
        """Stops recording, waits up to ``drain_s`` for the cloud to ack what is spooled; returns steps left."""
        self.recorder.close()
        deadline = time.monotonic() + drain_s
        while self.spool.counts()[0] and time.monotonic() < deadline and self.tunnel.refused is None:
            self.tunnel.wake()
            time.sleep(0.05)
        batches, steps = self.spool.counts()
        if steps:
            log.warning(
                "%s stops with %d steps not yet acked; they stay in the spool for the next start",
                self.resource.id,
                steps,
            )
        self.tunnel.stop()
        self.runtime.close()
        if self.outcome is not None:
            self.outcome.close()
        self.spool.close()
        self.driver.close()
        return steps
