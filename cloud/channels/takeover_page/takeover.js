// fleetloop takeover page: a robot's live view (cameras, state, the policy's intended action, who drives) and its
// controls. "Take over" drives it with the keyboard, a gamepad (Gamepad API) or a phone's 6-DoF pose (WebXR, with a
// clutch button); "hand back"; success / failure / re-record / scene ready. Protocol: docs/takeover-protocol.md.
// While this page drives it sends the current action every SEND_MS and on every change: the robot holds once its
// commands stop (the page closed, the link lost).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));
  const RATE_HZ = clamp(Number(params.get("rate")) || 5, 0.2, 30); // live views a second
  const IMAGE_SIDE = clamp(Number(params.get("side")) || 240, 16, 1024);
  const SEND_MS = 50;
  // Keys that move one action dimension each: [plus, minus]. Dimension 3 of a gripper arm: c closes, o opens.
  const KEY_PAIRS = [["ArrowUp", "ArrowDown"], ["ArrowLeft", "ArrowRight"], ["PageUp", "PageDown"], ["c", "o"],
    ["1", "2"], ["3", "4"], ["5", "6"], ["7", "8"]];
  const LABEL_KEYS = { s: "success", f: "failure", r: "rerecord", n: "scene_ready" };
  // Gamepad (standard mapping): left stick up/left -> dims 0/1, right stick up -> dim 2, A/B -> dim 3 plus/minus.
  const PAD_AXES = [[0, 1, -1], [1, 0, -1], [2, 3, -1]]; // [dimension, axis, sign]
  const PAD_BUTTONS = [[3, 0, 1]]; // [dimension, plus button, minus button]
  const DEADZONE = 0.15;
  const POSE_FULL_M = 0.05; // the phone moved this far from where the clutch was pressed: full speed
  const robotId = decodeURIComponent(location.pathname.split("/")[2] || "");
  const state = {
    robotId, ws: null, connected: false, who: "", session: "", robot: null, view: null, views: 0, driving: false,
    seq: 0, sent: 0, keys: new Set(), input: "keyboard", lastRefusal: "", lastError: "", retryMs: 500,
    stopped: false, pose: null, anchor: null, xrActive: false, lastAction: null,
  };
  window.fleetloopTakeover = state; // for inspection (and the end-to-end test)

  // ---- the websocket -----------------------------------------------------------------------------------------
  function connect() {
    const operator = localStorage.getItem("fleetloop.operator"), token = localStorage.getItem("fleetloop.operator_token");
    if (!operator || !token) { $("login").style.display = "block"; render(); return; }
    $("login").style.display = "none";
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/takeover/${encodeURIComponent(robotId)}/ws`);
    state.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: "hello", operator, token, rate_hz: RATE_HZ, image_side: IMAGE_SIDE }));
    ws.onmessage = (event) => onMessage(JSON.parse(event.data));
    ws.onclose = () => {
      state.connected = false;
      state.driving = false;
      render();
      if (!state.stopped) setTimeout(connect, state.retryMs);
      state.retryMs = Math.min(5000, state.retryMs * 2);
    };
  }
  function onMessage(m) {
    if (m.type === "welcome") {
      Object.assign(state, { connected: true, who: m.who, session: m.session, seq: 0, retryMs: 500, lastError: "" });
    } else if (m.type === "robot") {
      state.robot = m.connected ? m : null;
      renderLegend();
    } else if (m.type === "view") {
      state.view = m;
      state.views++;
      if (state.driving && m.controller && m.controller !== state.who) state.driving = false; // someone else drives
      renderView();
    } else if (m.type === "refused") {
      state.lastRefusal = m.reason;
      if (/takes? over|drives/.test(m.reason)) state.driving = false;
    } else if (m.type === "error") {
      state.lastError = `${m.field}: ${m.message}`;
      if (m.field.startsWith("hello.")) { // a wrong or revoked credential: sign in again
        state.stopped = true;
        localStorage.removeItem("fleetloop.operator_token");
        $("login").style.display = "block";
      }
    }
    render();
  }
  function send(signals, withAction) {
    if (!state.ws || !state.connected) return;
    const command = { type: "command", seq: ++state.seq, signals };
    if (withAction && state.robot) command.action = state.lastAction = currentAction();
    state.ws.send(JSON.stringify(command));
    state.sent++;
  }

  // ---- actions from the keyboard, a gamepad or the phone's pose --------------------------------------------------
  function limits() {
    const a = state.robot.action, n = a.shape.reduce((x, y) => x * y, 1);
    const lo = (i) => (a.low.length === n ? a.low[i] : a.low.length === 1 ? a.low[0] : -1);
    const hi = (i) => (a.high.length === n ? a.high[i] : a.high.length === 1 ? a.high[0] : 1);
    return Array.from({ length: n }, (_, i) => [lo(i), hi(i)]);
  }
  function fromDeflections(deflections) {
    // deflection -1..1 per dimension -> the action: the middle of the range, moved toward high or low by speed.
    const speed = Number($("speed").value);
    return limits().map(([lo, hi], i) => {
      const mid = (lo + hi) / 2, d = clamp((deflections[i] || 0) * speed, -1, 1);
      return d >= 0 ? mid + d * (hi - mid) : mid + d * (mid - lo);
    });
  }
  function keyboardDeflections() {
    return KEY_PAIRS.map(([plus, minus]) => (state.keys.has(plus) ? 1 : 0) - (state.keys.has(minus) ? 1 : 0));
  }
  function gamepadDeflections() {
    const pad = (navigator.getGamepads ? Array.from(navigator.getGamepads()) : []).find(Boolean);
    const out = [];
    if (!pad) return out;
    for (const [dim, axis, sign] of PAD_AXES) {
      const v = pad.axes[axis] || 0;
      out[dim] = Math.abs(v) < DEADZONE ? 0 : sign * v;
    }
    const pressed = (b) => Boolean(pad.buttons[b] && pad.buttons[b].pressed);
    for (const [dim, plus, minus] of PAD_BUTTONS) out[dim] = (pressed(plus) ? 1 : 0) - (pressed(minus) ? 1 : 0);
    return out;
  }
  function poseDeflections() {
    // While the clutch is held: the phone's offset from where it was pressed (WebXR local space: x right, y up,
    // z toward the person) as robot x forward (-z), y left (-x), z up (y); full speed at POSE_FULL_M.
    if (!state.pose || !state.anchor) return [];
    const d = [0, 1, 2].map((i) => (state.pose[i] - state.anchor[i]) / POSE_FULL_M);
    return [-d[2], -d[0], d[1]].map((v) => clamp(v, -1, 1));
  }
  function currentAction() {
    const deflect = { keyboard: keyboardDeflections, gamepad: gamepadDeflections, pose: poseDeflections }[state.input];
    return fromDeflections(deflect());
  }
  async function startPose() {
    if (!navigator.xr) { $("inputinfo").textContent = "WebXR is not available in this browser"; return; }
    try {
      const session = await navigator.xr.requestSession("immersive-ar", { optionalFeatures: ["local", "dom-overlay"], domOverlay: { root: document.body } });
      const gl = document.createElement("canvas").getContext("webgl", { xrCompatible: true });
      if (window.XRWebGLLayer) session.updateRenderState({ baseLayer: new XRWebGLLayer(session, gl) });
      const space = await session.requestReferenceSpace("local");
      state.xrActive = true;
      const onFrame = (time, frame) => {
        const viewer = frame.getViewerPose(space);
        if (viewer) state.pose = [viewer.transform.position.x, viewer.transform.position.y, viewer.transform.position.z];
        session.requestAnimationFrame(onFrame);
      };
      session.requestAnimationFrame(onFrame);
    } catch (e) {
      $("inputinfo").textContent = `WebXR: could not start an immersive-ar session (${e})`;
    }
  }

  // ---- controls ----------------------------------------------------------------------------------------------
  function takeOver() { state.driving = true; state.lastRefusal = ""; send(["take_over"], true); }
  function handBack() { state.driving = false; send(["hand_back"], false); }
  function label(name) { send([name], false); }
  const moveKey = (key) => KEY_PAIRS.some((pair) => pair.includes(key));
  document.addEventListener("keydown", (e) => {
    if (e.target && e.target.tagName === "INPUT") return;
    if (e.key === " ") { e.preventDefault(); if (!e.repeat) (state.driving ? handBack : takeOver)(); return; }
    if (moveKey(e.key)) {
      e.preventDefault();
      if (!state.keys.has(e.key)) { state.keys.add(e.key); if (state.driving) send([], true); }
    } else if (LABEL_KEYS[e.key] && !e.repeat) label(LABEL_KEYS[e.key]);
    render();
  });
  document.addEventListener("keyup", (e) => {
    if (state.keys.delete(e.key) && state.driving) send([], true);
  });
  window.addEventListener("blur", () => state.keys.clear()); // keys released while the page had no focus
  $("takeover").onclick = takeOver;
  $("handback").onclick = handBack;
  $("success").onclick = () => label("success");
  $("failure").onclick = () => label("failure");
  $("rerecord").onclick = () => label("rerecord");
  $("sceneready").onclick = () => label("scene_ready");
  $("speed").oninput = () => { $("speed-value").textContent = Number($("speed").value).toFixed(2); };
  $("input").onchange = () => { state.input = $("input").value; if (state.input === "pose") startPose(); render(); };
  $("clutch").onpointerdown = () => { state.anchor = state.pose && state.pose.slice(); };
  $("clutch").onpointerup = $("clutch").onpointerleave = () => { state.anchor = null; };
  $("signin").onclick = () => {
    localStorage.setItem("fleetloop.operator", $("operator").value.trim());
    localStorage.setItem("fleetloop.operator_token", $("token").value.trim());
    state.stopped = false;
    state.lastError = "";
    connect();
  };

  // ---- what the page shows -------------------------------------------------------------------------------------
  const fmt = (values) => (values ? values.slice(0, 24).map((x) => x.toFixed(3)).join(" ") + (values.length > 24 ? " ..." : "") : "none");
  function renderLegend() {
    if (!state.robot) { $("legend").textContent = ""; return; }
    const dims = limits().length;
    const keys = KEY_PAIRS.slice(0, dims).map(([p, m], i) => `dim ${i}: ${p} + / ${m} -`).join("\n");
    $("legend").textContent = `action: ${dims} values, limits ${limits().map(([l, h]) => `[${l}, ${h}]`).join(" ")}\n${keys}` +
      (dims > KEY_PAIRS.length ? `\ndims ${KEY_PAIRS.length}..${dims - 1}: no keys (neutral)` : "");
  }
  function renderView() {
    const v = state.view, box = $("cameras");
    for (const f of v.frames) {
      let img = document.getElementById(`camera-${f.camera}`);
      if (!img) { img = document.createElement("img"); img.id = `camera-${f.camera}`; img.alt = f.camera; box.appendChild(img); }
      img.src = `data:image/jpeg;base64,${f.jpeg}`;
    }
    $("state").textContent = [
      ...Object.entries(v.state).map(([name, values]) => `${name}: ${fmt(values)}`),
      `policy v${v.policy_version} intends: ${fmt(v.intended)}`,
      `applied: ${fmt(v.applied)}`,
    ].join("\n");
  }
  function render() {
    const v = state.view, mine = v && v.controller === state.who;
    const driver = !v ? "no live view yet" : mine ? `you drive ${robotId}` : v.controller ? `${v.controller} drives ${robotId}`
      : v.intended ? `the policy drives ${robotId}` : `nobody drives ${robotId}`;
    $("driver").textContent = driver + (v && v.note ? ` (holding: ${v.note})` : "");
    $("driver").className = mine ? "driving" : v && v.controller ? "other" : "";
    $("status").textContent = [
      `${state.connected ? "connected" : "not connected"} as ${state.who || localStorage.getItem("fleetloop.operator") || "?"}; robot ${robotId} ${state.robot ? `online (${state.robot.embodiment}, ${state.robot.control_hz} Hz, policy ${state.robot.policy || "none"})` : "not connected"}`,
      v ? `episode ${v.episode}, step ${v.step}; ${state.views} views` : "",
      `input ${state.input}${state.driving ? `, sending ${fmt(state.lastAction)}` : ""}; ${state.sent} commands sent`,
      state.lastRefusal ? `refused: ${state.lastRefusal}` : "",
      state.lastError ? `error: ${state.lastError}` : "",
    ].filter(Boolean).join("\n");
  }
  setInterval(() => { if (state.driving) send([], true); }, SEND_MS);
  setInterval(render, 250);
  connect();
})();
