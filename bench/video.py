"""(j) video: the camera codec on frames the simulators render, against sending and reading them raw.

Scenes: gym-pusht's 96x96 camera over a scripted circling push, and the MuJoCo Panda pick-cube's front and
wrist cameras at 224x224 over episodes of the scripted operator (shadows and anti-aliasing off, as the
image-observation sims run; frames at the 10 Hz control rate, so more motion per frame than a 30 Hz camera).
Each episode gets its own encoder, as on a robot, so every episode pays for its opening keyframe.

Rows per scene and codec: wire bytes per camera frame vs the raw frame; mean PSNR vs the 35 dB target; encode
time per frame at the edge vs ``ndarray.tobytes`` of the same frame (what sending raw costs); decode frames/s
on one core vs raw reads (``np.frombuffer`` + copy of the stored bytes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from bench.common import HIGHER, LOWER, Result
from protocol.video import CODECS, CameraDecoder, CameraEncoder, Packet, psnr

PSNR_TARGET_DB = 35.0
FPS = 10.0  # both sims step at 10 Hz

Episodes = list[np.ndarray]  # one (frames, H, W, 3) uint8 array per episode


def pusht_frames(steps: int) -> dict[str, Episodes]:
    """gym-pusht's 96x96 pixels while the pusher circles the T and pushes it around."""
    from hal.sim import SIM_TASKS

    env = SIM_TASKS["pusht"].make_env()
    try:
        observation, _ = env.reset(seed=0)
        frames = [observation["pixels"]]
        for t in range(steps - 1):
            angle = t / 15
            target = np.array([256 + 120 * np.cos(angle), 256 + 120 * np.sin(angle)], np.float32)
            observation, *_ = env.step(target)
            frames.append(observation["pixels"])
    finally:
        env.close()
    return {"pusht 96x96": [np.stack(frames).astype(np.uint8)]}


def panda_frames(steps: int, size: int = 224) -> dict[str, Episodes]:
    """The Panda's front and wrist cameras while the scripted operator picks the cube, episode after episode."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import mujoco

    from edge.operator import PickCubeExpert
    from hal.sim import SIM_TASKS

    task = SIM_TASKS["panda_pick_cube"]
    env = task.make_env()
    model, data = env.unwrapped.model, env.unwrapped.data
    model.vis.global_.offwidth = model.vis.global_.offheight = size
    model.vis.quality.offsamples = 0  # no anti-aliasing
    renderer = mujoco.Renderer(model, size, size)
    cameras = {"front": "front", "wrist": "handcam_rgb"}
    episodes: dict[str, Episodes] = {name: [] for name in cameras}
    current: dict[str, list[np.ndarray]] = {name: [] for name in cameras}
    expert = PickCubeExpert()
    np.random.seed(0)  # gym_hil places the cube with numpy's global generator
    try:
        observation, _ = env.reset(seed=0)
        for step in range(steps):
            for name, camera in cameras.items():
                renderer.update_scene(data, camera=camera)
                renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
                current[name].append(renderer.render().copy())
            observation, _, terminated, truncated, _ = env.step(expert.act(task.observe(observation)))
            if terminated or truncated or step == steps - 1:
                for name in cameras:
                    episodes[name].append(np.stack(current[name]))
                    current[name].clear()
                observation, _ = env.reset()
    finally:
        renderer.close()
        env.close()
    return {f"panda {name} {size}x{size}": eps for name, eps in episodes.items()}


def _encode(codec: str, episodes: Episodes) -> tuple[list[list[Packet]], float]:
    """Packets per episode, and the mean encode time per frame in seconds."""
    out, spent, frames = [], 0.0, 0
    for episode in episodes:
        height, width = episode.shape[1:3]
        encoder = CameraEncoder(codec, width, height, FPS)
        packets: list[Packet] = []
        for frame in episode:
            started = time.perf_counter()
            packets += encoder.encode(frame)
            spent += time.perf_counter() - started
        packets += encoder.flush()
        out.append(packets)
        frames += len(episode)
    return out, spent / frames


def _tobytes_s(episodes: Episodes) -> float:
    frames = [frame for episode in episodes for frame in episode]
    started = time.perf_counter()
    for frame in frames:
        frame.tobytes()
    return (time.perf_counter() - started) / len(frames)


def _raw_read_fps(episodes: Episodes) -> float:
    stored = [frame.tobytes() for episode in episodes for frame in episode]
    shape = episodes[0].shape[1:]
    started = time.perf_counter()
    for data in stored:
        np.frombuffer(data, np.uint8).reshape(shape).copy()
    return len(stored) / (time.perf_counter() - started)


def _decode(codec: str, episodes: Episodes, streams: list[list[Packet]]) -> tuple[list[np.ndarray], float]:
    """Decoded frames of every episode and the frames/s of decoding them (to RGB arrays)."""
    height, width = episodes[0].shape[1:3]
    decoded: list[np.ndarray] = []
    started = time.perf_counter()
    for packets in streams:
        decoded += CameraDecoder(codec, width, height).decode(packets)
    return decoded, len(decoded) / (time.perf_counter() - started)


def measure_scene(scene: str, episodes: Episodes, say: Callable[[str], None] = print) -> list[Result]:
    frames = np.concatenate(episodes)
    raw_bytes = frames[0].nbytes
    tobytes_ms = _tobytes_s(episodes) * 1e3
    raw_fps = _raw_read_fps(episodes)
    results = []
    for codec in CODECS:
        streams, encode_s = _encode(codec, episodes)
        decoded, decode_fps = _decode(codec, episodes, streams)
        wire = sum(len(p.data) for packets in streams for p in packets) / len(frames)
        quality = [psnr(a, b) for a, b in zip(frames, decoded, strict=True)]
        mean_db, worst_db = float(np.mean(quality)), float(np.min(quality))
        say(
            f"video {scene} {codec}: {wire / raw_bytes:.4f} of raw bytes, {mean_db:.1f} dB mean "
            f"({worst_db:.1f} worst), "
            f"encode {encode_s * 1e3:.2f} ms/frame, decode {decode_fps:,.0f} frames/s ({len(frames)} frames)"
        )
        name = f"(j) {scene} {codec}"
        results += [
            Result(f"{name} wire bytes/frame", wire, "B", raw_bytes, f"{LOWER}; vs the raw frame; target <= 0.05"),
            Result(f"{name} PSNR", mean_db, "dB", PSNR_TARGET_DB, f"{HIGHER}; mean, worst {worst_db:.1f} dB; vs 35 dB"),
            Result(f"{name} encode", encode_s * 1e3, "ms/frame", tobytes_ms, f"{LOWER}; vs ndarray.tobytes"),
            Result(f"{name} decode", decode_fps, "frames/s", raw_fps, f"{HIGHER}; one core, vs raw reads"),
        ]
    return results


def measure(panda_steps: int = 120, pusht_steps: int = 200, say: Callable[[str], None] = print) -> list[Result]:
    scenes = {**pusht_frames(pusht_steps), **panda_frames(panda_steps)}
    say(f"video: rendered {', '.join(f'{sum(len(e) for e in eps)} {name}' for name, eps in scenes.items())}")
    return [result for scene, episodes in scenes.items() for result in measure_scene(scene, episodes, say)]
