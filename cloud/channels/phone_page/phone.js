// fleetloop phone page: pairs with the cloud, records camera + 6-DoF pose + gripper (the identity pose, and
// "pose": false in the hello, where WebXR immersive-ar is missing; frames from the XR session's own camera when
// it offers raw camera access, else from getUserMedia), streams steps (docs/phone-protocol.md),
// keeps unacked steps in IndexedDB and resends them after a reconnect, and draws the current phone policy's
// predicted trajectory (visual foresight) over the camera view. What it is doing is said in one sentence (#sentence);
// the developer's details (#status) sit folded below.
"use strict";
(() => {
  const params = new URLSearchParams(location.search);
  const RATE_HZ = Math.min(30, Math.max(1, Number(params.get("rate")) || 10)); // steps per second
  const FRAME_WIDTH = Number(params.get("width")) || 320; // frames are downscaled to this width before JPEG
  const FORESIGHT_MS = 500;
  const XR_CHECK_MS = 3000; // longest wait for WebXR's answer before the hello goes out without pose tracking
  const $ = (id) => document.getElementById(id);
  const state = {
    ws: null, connected: false, phoneId: "", xrSupported: false, xrActive: false, poseTracked: null,
    pose: [0, 0, 0, 0, 0, 0, 1], poseSamples: [], projection: null,
    episode: null, seq: 0, pendingEncodes: [], stepsSent: 0, stepsAcked: 0, lastAck: "", lastError: "",
    foresightWaiting: false, foresightVersion: null, foresightPoints: [], foresightDrawn: 0, retryMs: 500,
    connections: 0, stopRetries: 0, busy: false, stepsKept: 0, lastEpisode: null,
    foresightOnScreen: [],
  };
  window.fleetloopPhone = state; // for inspection (and the end-to-end test)

  // ---- identity and credential -------------------------------------------------------------------------------
  state.phoneId = localStorage.getItem("fleetloop.phone_id") ||
    ("web-" + Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join(""));
  localStorage.setItem("fleetloop.phone_id", state.phoneId);

  // ---- IndexedDB: every step stays here until its episode's ack ------------------------------------------------
  const dbReady = new Promise((resolve, reject) => {
    const open = indexedDB.open("fleetloop-phone", 1);
    open.onupgradeneeded = () => {
      const db = open.result;
      db.createObjectStore("episodes", { keyPath: "episode_id" });
      const steps = db.createObjectStore("steps", { keyPath: ["episode_id", "seq"] });
      steps.createIndex("episode", "episode_id");
    };
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error);
  });
  async function tx(stores, mode, work) {
    const db = await dbReady;
    return new Promise((resolve, reject) => {
      const t = db.transaction(stores, mode);
      let result;
      t.oncomplete = () => resolve(result);
      t.onerror = () => reject(t.error);
      result = work(t);
    });
  }
  const req = (r) => new Promise((resolve, reject) => { r.onsuccess = () => resolve(r.result); r.onerror = () => reject(r.error); });
  const putEpisode = (e) => tx(["episodes"], "readwrite", (t) => t.objectStore("episodes").put(e));
  const putStep = (s) => tx(["steps"], "readwrite", (t) => t.objectStore("steps").put(s));
  async function dropEpisode(id) {
    await tx(["episodes", "steps"], "readwrite", (t) => {
      t.objectStore("episodes").delete(id);
      t.objectStore("steps").delete(IDBKeyRange.bound([id, 0], [id, Infinity]));
    });
    await countKept();
  }
  async function countKept() {
    // How many steps wait on this phone for the cloud's ack: what the status sentence says is left to send.
    const db = await dbReady;
    state.stepsKept = await req(db.transaction("steps").objectStore("steps").count());
  }
  async function allEpisodes() {
    const db = await dbReady;
    return req(db.transaction("episodes").objectStore("episodes").getAll());
  }
  async function stepsOf(id) {
    const db = await dbReady;
    return req(db.transaction("steps").objectStore("steps").index("episode").getAll(id));
  }

  // ---- the websocket -----------------------------------------------------------------------------------------
  function send(message) {
    if (!state.ws || !state.connected) return; // kept in IndexedDB: resent after the next welcome
    const binary = message instanceof ArrayBuffer || ArrayBuffer.isView(message);
    state.ws.send(binary || typeof message === "string" ? message : JSON.stringify(message));
  }
  function frame(header, jpeg) {
    const head = new TextEncoder().encode(JSON.stringify(header));
    const out = new Uint8Array(4 + head.length + jpeg.byteLength);
    new DataView(out.buffer).setUint32(0, head.length, false);
    out.set(head, 4);
    out.set(new Uint8Array(jpeg), 4 + head.length);
    return out.buffer;
  }
  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws`);
    ws.binaryType = "arraybuffer";
    state.ws = ws;
    ws.onopen = async () => {
      await xrChecked; // the hello says whether this page tracks its pose: only known once WebXR has answered
      if (state.ws !== ws || ws.readyState !== WebSocket.OPEN) return; // closed (or replaced) meanwhile
      const token = localStorage.getItem("fleetloop.token");
      state.poseTracked = state.xrSupported; // false: every step carries the identity pose
      const hello = { type: "hello", phone_id: state.phoneId,
        capabilities: { camera: true, pose: state.poseTracked, gripper: true, rate_hz: RATE_HZ } };
      if (token) hello.token = token; else hello.pair = params.get("pair") || "";
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (event) => onMessage(JSON.parse(event.data));
    ws.onclose = () => {
      state.connected = false;
      state.foresightWaiting = false;
      render();
      setTimeout(connect, state.retryMs);
      state.retryMs = Math.min(5000, state.retryMs * 2);
    };
  }
  async function onMessage(m) {
    if (m.type === "welcome") {
      if (m.token) localStorage.setItem("fleetloop.token", m.token); // paired: our own credential from now on
      state.connected = true;
      state.retryMs = 500;
      state.connections++;
      state.image = m.image;
      state.lastError = "";
      await resendUnacked(m.open_episodes || []);
    } else if (m.type === "ack") {
      state.lastAck = m.episode_id;
      if (state.lastEpisode && state.lastEpisode.episode_id === m.episode_id) state.lastEpisode.acked = true;
      state.stepsAcked += m.next_seq;
      await dropEpisode(m.episode_id); // durable in the cloud: the phone may forget it
    } else if (m.type === "discarded") {
      await dropEpisode(m.episode_id);
    } else if (m.type === "foresight") {
      state.foresightWaiting = false;
      state.foresightVersion = m.version;
      state.foresightPoints = m.points || [];
      state.foresightPose = state.foresightRequestPose;
    } else if (m.type === "error") {
      state.lastError = `${m.field}: ${m.message}`;
      if (m.field.startsWith("foresight")) state.foresightWaiting = false;
      if (m.field === "hello.token") localStorage.removeItem("fleetloop.token"); // revoked: pair again
      if (m.field === "stop.num_steps" && state.stopRetries++ < 5) setTimeout(() => resendUnacked([]), 500); // resend
    }
    render();
  }
  async function resendUnacked(openInCloud) {
    // Every episode not acked yet goes again: start, its steps, and stop when it was stopped. The cloud keeps a
    // (episode_id, seq) once, so a resend is always safe; openInCloud only says what the cloud still holds.
    for (const episode of await allEpisodes()) {
      send({ type: "start", episode_id: episode.episode_id, task: episode.task });
      for (const step of await stepsOf(episode.episode_id)) send(step.frame);
      if (episode.num_steps) send({ type: "stop", episode_id: episode.episode_id, num_steps: episode.num_steps, success: false });
    }
    state.openInCloud = openInCloud;
  }

  // ---- WebXR pose -------------------------------------------------------------------------------------------
  async function checkXR() {
    // Sets state.xrSupported (immersive-ar) before the first hello goes out (see connect); never rejects, and
    // gives up after XR_CHECK_MS (some browsers leave isSessionSupported pending): no pose tracking then.
    if (!navigator.xr || !navigator.xr.isSessionSupported) {
      $("xr").textContent = "WebXR: not available in this browser: recording camera and gripper with an identity pose";
      $("xr").className = "warn";
      return;
    }
    try {
      const timeout = new Promise((resolve) => setTimeout(() => resolve(false), XR_CHECK_MS));
      state.xrSupported = (await Promise.race([navigator.xr.isSessionSupported("immersive-ar"), timeout])) === true;
    } catch (e) {
      state.xrSupported = false;
    }
    $("xr").textContent = state.xrSupported ? "WebXR: immersive-ar supported (pose starts with recording)"
      : "WebXR: immersive-ar is NOT supported on this device: recording camera and gripper with an identity pose";
    $("xr").className = state.xrSupported ? "" : "warn";
  }
  async function startXR() {
    if (!state.xrSupported || state.xrActive) return;
    try {
      const session = await navigator.xr.requestSession("immersive-ar",
        { optionalFeatures: ["local", "dom-overlay", "camera-access"], domOverlay: { root: document.body } });
      const gl = document.createElement("canvas").getContext("webgl", { xrCompatible: true });
      if (window.XRWebGLLayer) session.updateRenderState({ baseLayer: new XRWebGLLayer(session, gl) });
      if (window.XRWebGLBinding && gl) { xrCamera.binding = new XRWebGLBinding(session, gl); xrCamera.gl = gl; }
      const space = await session.requestReferenceSpace("local");
      state.xrActive = true;
      const onFrame = (time, xrFrame) => {
        const viewer = xrFrame.getViewerPose(space);
        if (viewer) {
          const p = viewer.transform.position, o = viewer.transform.orientation;
          state.pose = [p.x, p.y, p.z, o.x, o.y, o.z, o.w];
          const view = viewer.views && viewer.views[0];
          if (view) state.projection = view.projectionMatrix;
          state.poseSamples.push(performance.now());
          // The camera image is only valid inside this callback: captures waiting for it are served here.
          state.xrCameraSeen = Boolean(view && view.camera && xrCamera.binding);
          if (state.xrCameraSeen && xrCamera.waiting.length) {
            const shot = { image: readXRCamera(view.camera), pose: unitPose(), t: performance.now() };
            xrCamera.waiting.splice(0).forEach((resolve) => resolve(shot.image ? shot : null));
          }
        }
        session.requestAnimationFrame(onFrame);
      };
      session.requestAnimationFrame(onFrame);
      session.addEventListener && session.addEventListener("end", () => { state.xrActive = false; });
    } catch (e) {
      $("xr").textContent = `WebXR: could not start an immersive-ar session (${e}): identity pose`;
      $("xr").className = "warn";
    }
  }
  function poseHz() {
    const now = performance.now();
    state.poseSamples = state.poseSamples.filter((t) => now - t < 1000);
    return state.poseSamples.length;
  }
  function unitPose() {
    const q = state.pose.slice(3), n = Math.hypot(...q) || 1;
    return [...state.pose.slice(0, 3), ...q.map((v) => v / n)];
  }

  // ---- camera -----------------------------------------------------------------------------------------------
  const video = $("video");
  const canvas = document.createElement("canvas");
  async function startCamera() {
    try {
      video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
      await video.play();
    } catch (e) {
      state.lastError = `camera: ${e}`;
    }
  }
  // Inside an immersive-ar session the camera belongs to the AR runtime and getUserMedia may get nothing: frames
  // then come from the session itself (WebXR raw camera access, "camera-access"), read during an XR frame.
  const xrCamera = { binding: null, gl: null, framebuffer: null, waiting: [] };
  function readXRCamera(camera) {
    const gl = xrCamera.gl, texture = xrCamera.binding.getCameraImage(camera);
    if (!texture) return null;
    const w = camera.width, h = camera.height, pixels = new Uint8ClampedArray(w * h * 4);
    xrCamera.framebuffer = xrCamera.framebuffer || gl.createFramebuffer();
    gl.bindFramebuffer(gl.FRAMEBUFFER, xrCamera.framebuffer);
    gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, texture, 0);
    gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, pixels); // rows in the texture's order: first is top
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    const image = document.createElement("canvas");
    image.width = w; image.height = h;
    image.getContext("2d").putImageData(new ImageData(pixels, w, h), 0, 0);
    return image;
  }
  function capture() {
    // {image, pose, t}: the frame with the pose it was taken at, or null when there is no frame yet.
    if (state.xrActive && state.xrCameraSeen) {
      state.cameraSource = "XR session";
      return new Promise((resolve) => {
        xrCamera.waiting.push(resolve);
        setTimeout(() => resolve(null), 500); // the session stopped producing frames: no frame this time
      });
    }
    if (!video.videoWidth) return Promise.resolve(null);
    state.cameraSource = "getUserMedia";
    return Promise.resolve({ image: video, pose: unitPose(), t: performance.now() });
  }
  function encodeJpeg(image) {
    const width = image.videoWidth || image.width, height = image.videoHeight || image.height;
    canvas.width = FRAME_WIDTH;
    canvas.height = Math.round(FRAME_WIDTH * height / width);
    canvas.getContext("2d").drawImage(image, 0, 0, canvas.width, canvas.height);
    return new Promise((resolve) => canvas.toBlob((b) => b.arrayBuffer().then(resolve), "image/jpeg", 0.8));
  }
  const gripper = () => Number($("gripper").value);

  // ---- recording --------------------------------------------------------------------------------------------
  async function recordStep() {
    const episode = state.episode;
    if (!episode || state.capturing) return; // one capture at a time: seqs follow capture order
    state.capturing = true;
    let shot;
    try { shot = await capture(); } finally { state.capturing = false; }
    if (!shot || state.episode !== episode) return; // no frame yet, or the episode ended meanwhile
    const seq = state.seq++;
    const header = { type: "step", episode_id: episode.episode_id, seq,
      t_mono_ns: Math.round(shot.t * 1e6), pose: shot.pose, gripper: gripper() };
    const done = encodeJpeg(shot.image).then(async (jpeg) => {
      const data = frame(header, jpeg);
      await putStep({ episode_id: episode.episode_id, seq, frame: data }); // kept until the ack
      state.stepsKept++;
      send(data);
      state.stepsSent++;
    });
    state.pendingEncodes.push(done);
    await done;
  }
  async function start() {
    if (state.episode || state.busy) return;
    state.busy = true; // no second Start while WebXR starts
    render();
    try {
      await startXR();
      const episode = { episode_id: crypto.randomUUID(), task: $("task").value || "phone-demo", num_steps: 0 };
      await putEpisode(episode);
      state.episode = episode;
      state.seq = 0;
      state.pendingEncodes = [];
      send({ type: "start", episode_id: episode.episode_id, task: episode.task });
      state.timer = setInterval(recordStep, 1000 / RATE_HZ);
    } finally {
      state.busy = false;
      render();
    }
  }
  async function finish(discard) {
    const episode = state.episode;
    if (!episode || state.busy) return;
    state.busy = true; // Stop and Discard stay off while the last steps are written
    clearInterval(state.timer);
    state.episode = null;
    render();
    try {
      await Promise.all(state.pendingEncodes);
      const outcome = discard ? "discarded" : state.seq === 0 ? "empty" : "stopped";
      state.lastEpisode = { episode_id: episode.episode_id, steps: state.seq, outcome, acked: false };
      if (outcome !== "stopped") {
        send({ type: "discard", episode_id: episode.episode_id });
        await dropEpisode(episode.episode_id);
      } else {
        episode.num_steps = state.seq;
        await putEpisode(episode);
        send({ type: "stop", episode_id: episode.episode_id, num_steps: state.seq, success: false });
      }
    } finally {
      state.busy = false;
      render();
    }
  }

  // ---- visual foresight ---------------------------------------------------------------------------------------
  async function requestForesight() {
    if (!state.connected || state.foresightWaiting) return;
    state.foresightWaiting = true;
    const shot = await capture();
    if (!shot) { state.foresightWaiting = false; return; }
    state.foresightRequestPose = shot.pose;
    const jpeg = await encodeJpeg(shot.image);
    send(frame({ type: "foresight", pose: shot.pose, gripper: gripper() }, jpeg));
  }
  function project(point, pose, w, h) {
    // world -> camera (the pose is the camera's in the world; the camera looks down -z, +y up), then the view's
    // projection matrix (column-major) or a 60 degree pinhole.
    const [tx, ty, tz, qx, qy, qz, qw] = pose;
    const d = [point[0] - tx, point[1] - ty, point[2] - tz];
    // rotate d by the conjugate quaternion
    const [x, y, z] = rotate([-qx, -qy, -qz, qw], d);
    if (z >= -1e-3) return null; // behind the camera
    let nx, ny;
    const m = state.projection;
    if (m && m.length === 16) {
      const cx = m[0] * x + m[4] * y + m[8] * z + m[12], cy = m[1] * x + m[5] * y + m[9] * z + m[13];
      const cw = m[3] * x + m[7] * y + m[11] * z + m[15];
      nx = cx / cw; ny = cy / cw;
    } else {
      const f = 1 / Math.tan(Math.PI / 6);
      nx = (f * h / w) * x / -z; ny = f * y / -z;
    }
    return [(nx + 1) / 2 * w, (1 - ny) / 2 * h];
  }
  function rotate(q, v) {
    const [qx, qy, qz, qw] = q;
    const tx = 2 * (qy * v[2] - qz * v[1]), ty = 2 * (qz * v[0] - qx * v[2]), tz = 2 * (qx * v[1] - qy * v[0]);
    return [v[0] + qw * tx + (qy * tz - qz * ty), v[1] + qw * ty + (qz * tx - qx * tz), v[2] + qw * tz + (qx * ty - qy * tx)];
  }
  function fitView() {
    // The view box takes the camera's aspect, so the video fills it exactly; the overlay covers the box and draws
    // at the box's size in device pixels, so its points sit on the picture however wide the screen is.
    if (video.videoWidth && video.videoHeight) {
      document.documentElement.style.setProperty("--aspect", (video.videoWidth / video.videoHeight).toFixed(4));
    }
    const overlay = $("overlay"), box = overlay.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
    const w = Math.round(box.width * dpr), h = Math.round(box.height * dpr);
    if (w > 0 && h > 0 && (overlay.width !== w || overlay.height !== h)) { overlay.width = w; overlay.height = h; }
  }
  function drawOverlay() {
    fitView();
    const overlay = $("overlay"), ctx = overlay.getContext("2d"), w = overlay.width, h = overlay.height;
    ctx.clearRect(0, 0, w, h);
    const pose = state.foresightPose || unitPose();
    const pixels = state.foresightPoints.map((p) => project(p, pose, w, h)).filter(Boolean);
    const scale = Math.max(1, w / 320); // lines and dots keep their size relative to the picture
    ctx.strokeStyle = ctx.fillStyle = "#ff00ff";
    ctx.lineWidth = 3 * scale;
    ctx.beginPath();
    pixels.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.stroke();
    for (const [x, y] of pixels) { ctx.beginPath(); ctx.arc(x, y, 7 * scale, 0, 2 * Math.PI); ctx.fill(); }
    state.foresightDrawn = pixels.length;
    state.foresightOnScreen = pixels.map(([x, y]) => [x / w, y / h]); // where on the picture, 0..1 across and down
  }

  // ---- status -----------------------------------------------------------------------------------------------
  const steps = (n) => `${n} step${n === 1 ? "" : "s"}`;
  function sentence() {
    // What is happening, in the words of the person holding the phone: recording, saved, or kept here to send.
    const kept = state.stepsKept, last = state.lastEpisode;
    const keptHere = `steps kept on this phone, ${kept} to send`;
    if (state.episode) {
      const head = `recording, ${steps(state.seq)}`;
      return state.connected ? `${head}, sending to the cloud` : `${head}, not connected: ${keptHere}`;
    }
    if (state.busy) return "starting...";
    if (!state.connected) {
      if (kept) return `not connected: ${keptHere}`;
      return state.connections ? "not connected: trying again, nothing to send" : "connecting to the cloud...";
    }
    if (last && last.outcome === "stopped") {
      if (!kept) return `stopped: ${steps(last.steps)}, all saved`;
      if (!last.acked) return `stopped: ${steps(last.steps)}, saving (${kept} waiting for the cloud)`;
    }
    if (kept) return `ready; ${steps(kept)} from earlier still waiting for the cloud`;
    if (last && last.outcome === "discarded") return `discarded ${steps(last.steps)}: nothing saved, ready for the next`;
    return "ready: press Start to record a demonstration";
  }
  function render() {
    $("start").disabled = Boolean(state.episode) || state.busy; // start() waits for IndexedDB itself
    $("stop").disabled = $("discard").disabled = !state.episode || state.busy;
    const said = sentence();
    if ($("sentence").textContent !== said) $("sentence").textContent = said;
    $("sentence").className = state.episode ? "recording" : "";
    $("problem").hidden = !state.lastError;
    $("problem").textContent = state.lastError ? `problem: ${state.lastError}` : "";
    const v = state.foresightVersion;
    $("foresight").textContent = v === null ? "foresight: waiting for the cloud"
      : v === 0 ? "foresight: no phone policy published yet"
      : `foresight: policy phone v${v}, ${state.foresightPoints.length} predicted point(s), ${state.foresightDrawn} in view`;
    const p = state.pose.map((x) => x.toFixed(3)).join(" ");
    $("status").textContent = [
      `phone ${state.phoneId}: ${state.connected ? "connected" : "not connected"} (${localStorage.getItem("fleetloop.token") ? "paired" : "not paired"})`,
      state.episode ? `recording episode ${state.episode.episode_id}: ${state.seq} steps` : "idle",
      `steps recorded ${state.stepsSent}, acked ${state.stepsAcked}${state.lastAck ? ` (last ack ${state.lastAck})` : ""}`,
      `pose ${state.xrActive ? "WebXR" : "identity"} ${poseHz()} Hz: ${p}`,
      `camera: ${state.cameraSource || "no frame yet"}`,
      state.lastError ? `error: ${state.lastError}` : "",
    ].filter(Boolean).join("\n");
  }

  $("gripper").oninput = () => { $("gripper-value").textContent = gripper().toFixed(3) + " m"; };
  $("start").onclick = start;
  $("stop").onclick = () => finish(false);
  $("discard").onclick = () => finish(true);
  const xrChecked = checkXR().catch(() => { state.xrSupported = false; }); // awaited by every hello
  video.addEventListener("loadedmetadata", fitView);
  video.addEventListener("resize", fitView);
  countKept().then(render, (e) => { state.lastError = `storage on this phone: ${e}`; render(); });
  startCamera();
  connect();
  setInterval(() => { drawOverlay(); render(); }, 100);
  setInterval(requestForesight, FORESIGHT_MS);
})();
