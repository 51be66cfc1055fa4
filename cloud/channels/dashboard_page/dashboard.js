// The fleetloop dashboard: one websocket to the cloud carries the live fleet, the learning curves, the episode
// browser and the operator's commands. Everything a device or the store says is put in the page as text (never as
// HTML): robot names and tasks come from devices.
"use strict";

const ACTIONS = [
  ["pause", "Pause"], ["resume", "Resume"], ["drain", "Drain"], ["stop", "Stop"],
  ["estop", "E-stop"], ["release", "Release"],
];
// An emergency stop goes at once; these ask first (the server refuses them unconfirmed).
const CONFIRM = { stop: "takes its task away", release: "lets it move again after its emergency stop" };
const SVG = "http://www.w3.org/2000/svg";
let socket = null;
let retry = true;  // false once the cloud refused the credential: signing in again would be refused too
let datasets = [];

const $ = (id) => document.getElementById(id);
const el = (tag, text, attrs = {}) => {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = String(text);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
};
const svg = (tag, attrs) => {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
};
const say = (text) => { $("message").textContent = text; };

function signIn(operator, token) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/dashboard/ws`);
  socket.onopen = () => socket.send(JSON.stringify({ type: "hello", operator, token }));
  socket.onmessage = (event) => handle(JSON.parse(event.data), operator, token);
  socket.onclose = (event) => {
    $("status").textContent = `disconnected${event.reason ? ": " + event.reason : ""}`;
    if (retry && !$("board").hidden) setTimeout(() => signIn(operator, token), 2000);
  };
}

function handle(message, operator, token) {
  if (message.type === "welcome") {
    sessionStorage.setItem("fleetloop-operator", JSON.stringify({ operator, token }));
    $("login").hidden = true;
    $("board").hidden = false;
    $("status").textContent = `signed in as ${message.operator}`;
  } else if (message.type === "fleet") {
    renderFleet(message.fleet);
    renderCurves(message.curves);
    renderRollouts(message.rollouts || {});
    renderDatasets(Object.keys(message.curves));
  } else if (message.type === "episodes") {
    renderEpisodes(message.dataset, message.episodes);
  } else if (message.type === "episode") {
    renderEpisode(message.episode);
  } else if (message.type === "done") {
    say(message.message);
  } else if (message.type === "error") {
    if (message.field.startsWith("hello.")) retry = false;
    if ($("board").hidden) $("login-error").textContent = `${message.field}: ${message.message}`;
    else say(`refused: ${message.field}: ${message.message}`);
  }
}

function command(action, robot) {
  let confirmed = false;
  if (CONFIRM[action]) {
    confirmed = window.confirm(`${action} ${robot}? This ${CONFIRM[action]}.`);
    if (!confirmed) return;
  }
  socket.send(JSON.stringify({ type: "command", action, robot, confirmed }));
}

function renderFleet(rows) {
  const body = $("fleet").querySelector("tbody");
  body.replaceChildren();
  for (const row of rows) {
    const tr = el("tr", undefined, { "data-robot": row.id });
    const name = el("td");
    name.append(el("a", row.id, { href: row.takeover, title: "take over this robot" }));
    const state = el("td");
    state.append(el("span", row.state, { class: `state ${row.state}` }));
    const backlog = row.backlog_steps ? `${row.backlog_steps} steps, ${row.backlog_oldest_s} s old` : "none";
    const cells = [
      name, state, el("td", row.task || "-"),
      el("td", row.policy ? `${row.policy} v${row.version}` : "-"),
      el("td", row.steps_per_s.toFixed(1)),
      el("td", `${(100 * row.intervention_rate).toFixed(1)}%`),
      el("td", backlog), el("td", row.canary || "-"),
    ];
    const actions = el("td");
    const box = el("div", undefined, { class: "actions" });
    for (const [action, label] of ACTIONS) {
      const button = el("button", label, { "data-action": action, class: action === "estop" ? "danger" : "" });
      button.onclick = () => command(action, row.id);
      box.append(button);
    }
    actions.append(box);
    tr.append(...cells, actions);
    body.append(tr);
  }
  if (!rows.length) body.append(el("tr")).append(el("td", "No robot is connected.", { colspan: 9 }));
}

function renderCurves(all) {
  const box = $("curves");
  const names = Object.keys(all).filter((name) => all[name].versions.length || Object.keys(all[name].losses).length);
  if (!names.length) return;
  box.replaceChildren();
  for (const name of names) {
    const curves = { [name]: all[name].versions };
    const card = el("div", undefined, { class: "curve", "data-policy": name });
    card.append(el("h3", name));
    const losses = all[name].losses;
    if (!curves[name].length) {
      card.append(el("p", "No finished episodes under a version yet.", { class: "legend" }), lossChart(losses));
      box.append(card);
      continue;
    }
    const key = el("p", undefined, { class: "legend" });
    key.append(el("span", "\u25CF autonomous success", { style: "color:#1f8a4c" }), "   ",
      el("span", "\u25CF share of steps a person drove", { style: "color:#d9822b" }));
    card.append(key, chart(curves[name]));
    const last = curves[name][curves[name].length - 1];
    card.append(el("p", `v${last.version}: ${last.successes} of ${last.episodes} episodes succeeded alone ` +
      `(${(100 * last.success).toFixed(0)}%, 95% interval ${(100 * last.success_low).toFixed(0)}-` +
      `${(100 * last.success_high).toFixed(0)}%); a person drove ${(100 * last.intervention_rate).toFixed(1)}% ` +
      "of its steps.", { class: "legend" }));
    card.append(lossChart(losses));
    box.append(card);
  }
}

function chart(points) {
  const width = 480, height = 220, left = 40, right = 12, top = 12, bottom = 30;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  const versions = points.map((p) => p.version);
  const lo = Math.min(...versions), hi = Math.max(...versions);
  const x = (v) => left + (hi === lo ? (width - left - right) / 2 : (v - lo) / (hi - lo) * (width - left - right));
  const y = (r) => top + (1 - r) * (height - top - bottom);
  for (const r of [0, 0.5, 1]) {
    root.append(svg("line", { x1: left, x2: width - right, y1: y(r), y2: y(r), stroke: "#d9dee6" }));
    const label = svg("text", { x: 4, y: y(r) + 4, "font-size": 11, fill: "#5d6675" });
    label.textContent = `${100 * r}%`;
    root.append(label);
  }
  for (const v of versions) {
    const label = svg("text", { x: x(v) - 8, y: height - 10, "font-size": 11, fill: "#5d6675" });
    label.textContent = `v${v}`;
    root.append(label);
  }
  const series = [
    ["success", "#1f8a4c"], ["intervention_rate", "#d9822b"],
  ];
  for (const [key, color] of series) {
    const low = key === "success" ? "success_low" : "intervention_low";
    const high = key === "success" ? "success_high" : "intervention_high";
    const band = points.map((p) => `${x(p.version)},${y(p[high])}`)
      .concat(points.slice().reverse().map((p) => `${x(p.version)},${y(p[low])}`));
    root.append(svg("polygon", { points: band.join(" "), fill: color, "fill-opacity": 0.15 }));
    root.append(svg("polyline", {
      points: points.map((p) => `${x(p.version)},${y(p[key])}`).join(" "),
      fill: "none", stroke: color, "stroke-width": 2.5, "data-series": key,
    }));
    for (const p of points) {
      root.append(svg("circle", {
        cx: x(p.version), cy: y(p[key]), r: 4, fill: color, "data-series": key, "data-version": p.version,
        "data-value": p[key],
      }));
    }
  }
  return root;
}

function counts(c) {
  return c && c.episodes ? `${c.autonomous} of ${c.episodes} episodes alone, ${c.intervened} taken over` : "no episodes";
}

function decide(policy, version, decision) {
  const question =
    decision === "rollback"
      ? `Roll back ${policy} v${version}? Its robots go back to the version before it.`
      : `Promote ${policy} v${version}? Every robot on ${policy} gets it.`;
  const confirmed = window.confirm(question);
  if (!confirmed) return;
  socket.send(JSON.stringify({ type: "rollout", policy, version, decision, confirmed }));
}

function lossChart(losses) {
  const tags = Object.keys(losses);
  const box = el("div", undefined, { class: "losses" });
  if (!tags.length) {
    box.append(el("p", "Training loss: none logged yet (the learner writes it to TensorBoard, --track tensorboard).",
      { class: "legend" }));
    return box;
  }
  const width = 480, height = 140, left = 48, right = 12, top = 10, bottom = 24;
  const colors = ["#2f6fde", "#8e44ad", "#c0392b", "#16a085"];
  const all = tags.flatMap((t) => losses[t]);
  const steps = all.map((p) => p[0]), values = all.map((p) => p[1]);
  const [s0, s1] = [Math.min(...steps), Math.max(...steps)], [v0, v1] = [Math.min(...values), Math.max(...values)];
  const x = (s) => left + (s1 === s0 ? 0.5 : (s - s0) / (s1 - s0)) * (width - left - right);
  const y = (v) => top + (v1 === v0 ? 0.5 : (v1 - v) / (v1 - v0)) * (height - top - bottom);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "data-chart": "loss" });
  for (const v of [v0, v1]) {
    const label = svg("text", { x: 2, y: y(v) + 4, "font-size": 10, fill: "#5d6675" });
    label.textContent = v.toPrecision(3);
    root.append(label);
  }
  const stepLabel = svg("text", { x: width - 160, y: height - 6, "font-size": 10, fill: "#5d6675" });
  stepLabel.textContent = `gradient steps ${s0}-${s1}`;
  root.append(stepLabel);
  tags.forEach((tag, i) => {
    const points = losses[tag].map((p) => `${x(p[0])},${y(p[1])}`).join(" ");
    root.append(svg("polyline", { points, fill: "none", stroke: colors[i % colors.length], "stroke-width": 1.8,
      "data-series": tag }));
  });
  box.append(el("p", `training ${tags.join(", ")}`, { class: "legend" }), root);
  return box;
}

function renderRollouts(rollouts) {
  const names = Object.keys(rollouts);
  if (!names.length) return;
  const box = $("rollouts");
  box.replaceChildren();
  for (const name of names) {
    const card = el("div", undefined, { "data-rollouts": name });
    card.append(el("h3", `${name}: every robot runs v${rollouts[name].incumbent}`));
    for (const r of rollouts[name].records) {
      const item = el("div", undefined, { class: "rollout", "data-version": r.version, "data-state": r.state });
      const against = r.incumbent ? ` against v${r.incumbent}` : "";
      // The state as a coloured pill, as the fleet's: a canary amber, promoted green, rolled back red.
      const title = el("p", `v${r.version}${against}: `);
      title.append(el("span", r.state, { class: `state ${r.state.replace(" ", "-")}` }));
      if (r.decided_by) title.append(` (${r.decided_by})`);
      item.append(title);
      if (r.canary_robots.length) item.append(el("p", `canary robots: ${r.canary_robots.join(", ")}`, { class: "legend" }));
      item.append(el("p", `canary: ${counts(r.canary_counts)}; incumbent: ${counts(r.incumbent_counts)}`,
        { class: "legend" }));
      if (r.reason) item.append(el("p", r.reason, { class: "legend" }));
      if (r.open) {
        const box2 = el("div", undefined, { class: "actions" });
        const promote = el("button", "Promote", { "data-decision": "promote" });
        promote.onclick = () => decide(name, r.version, "promote");
        const back = el("button", "Roll back", { "data-decision": "rollback", class: "danger" });
        back.onclick = () => decide(name, r.version, "rollback");
        box2.append(promote, back);
        item.append(box2);
      }
      card.append(item);
    }
    box.append(card);
  }
}

function renderDatasets(names) {
  if (names.join() === datasets.join()) return;
  datasets = names;
  const select = $("dataset");
  select.replaceChildren(el("option", "choose a dataset", { value: "" }), ...names.map((n) => el("option", n, { value: n })));
}

function renderEpisodes(dataset, episodes) {
  const body = $("episodes-list").querySelector("tbody");
  body.replaceChildren();
  for (const e of episodes) {
    const tr = el("tr", undefined, { "data-episode": e.id });
    tr.append(el("td", e.id), el("td", e.robot), el("td", `v${e.version}`), el("td", e.steps),
      el("td", e.interventions), el("td", e.outcome));
    tr.onclick = () => socket.send(JSON.stringify({ type: "episode", dataset, id: e.id }));
    body.append(tr);
  }
}

function renderEpisode(e) {
  const box = $("episode");
  box.replaceChildren(el("h3", `${e.id}: ${e.outcome}, ${e.steps} steps, ${e.interventions} driven by a person`));
  for (const [camera, frames] of Object.entries(e.frames)) {
    box.append(el("p", camera, { class: "legend" }));
    const strip = el("div", undefined, { class: "frames" });
    for (const frame of frames) strip.append(el("img", undefined, { src: frame, alt: camera }));
    box.append(strip);
  }
  box.append(el("p", "actions (each dimension a line); shaded: a person drove", { class: "legend" }));
  box.append(actionChart(e.actions, e.intervention));
}

function actionChart(actions, intervention) {
  const width = 480, height = 160, pad = 8;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  if (!actions.length) return root;
  const flat = actions.flat();
  const lo = Math.min(...flat), hi = Math.max(...flat);
  const x = (i) => pad + (actions.length === 1 ? 0 : i / (actions.length - 1)) * (width - 2 * pad);
  const y = (v) => pad + (hi === lo ? 0.5 : (hi - v) / (hi - lo)) * (height - 2 * pad);
  intervention.forEach((driven, i) => {
    if (driven) root.append(svg("rect", { x: x(i) - 1, y: 0, width: 3, height, fill: "#d9822b", "fill-opacity": 0.2 }));
  });
  const colors = ["#2f6fde", "#1f8a4c", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d"];
  for (let d = 0; d < actions[0].length; d++) {
    const points = actions.map((a, i) => `${x(i)},${y(a[d])}`).join(" ");
    root.append(svg("polyline", { points, fill: "none", stroke: colors[d % colors.length], "stroke-width": 1.5 }));
  }
  return root;
}

$("login-form").onsubmit = (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  retry = true;
  signIn($("operator").value.trim(), $("token").value.trim());
};
$("dataset").onchange = () => {
  const dataset = $("dataset").value;
  if (dataset) socket.send(JSON.stringify({ type: "episodes", dataset }));
};
const saved = sessionStorage.getItem("fleetloop-operator");
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get("operator") && fragment.get("token")) {
  history.replaceState(null, "", location.pathname);  // the token leaves the address bar
  signIn(fragment.get("operator"), fragment.get("token"));
} else if (saved) {
  const { operator, token } = JSON.parse(saved);
  signIn(operator, token);
}
window.fleetloopDashboard = { ready: true };  // for tests: the page's handlers are in place
