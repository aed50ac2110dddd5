// vlaforge UI: one page per hash (#datasets, #evals, #runs, #rollout, #teleop, #jobs); no build step.
const TOKEN = new URLSearchParams(location.search).get("token");
const main = document.getElementById("main");
const UI = (window.vlaforgeUI = { loop: null });

function withToken(url) {
  return TOKEN ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN) : url;
}
async function api(url, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(withToken(url), opts);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || data.detail || r.statusText);
  return data;
}
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v); else el.setAttribute(k, v);
  }
  for (const c of children.flat()) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}
function showError(e) { main.prepend(h("div", { class: "card", style: "color:#b00" }, String(e.message || e))); }
const q = (p) => encodeURIComponent(p);
function stopLoop() { if (UI.loop) { clearInterval(UI.loop); UI.loop = null; } }

// ---- datasets --------------------------------------------------------------------------------------
async function pageDatasets() {
  const list = await api("/api/list");
  const left = h("div", { class: "card" }, h("h3", {}, "Datasets"));
  const ul = h("ul", { class: "list", id: "dataset-list" });
  list.datasets.forEach((d) => ul.append(h("li", { "data-path": d.path, onclick: () => openDataset(d.path) }, `${d.path} `, h("span", { class: "muted" }, d.format))));
  if (!list.datasets.length) ul.append(h("li", {}, h("span", { class: "muted" }, "no datasets under " + list.root)));
  left.append(ul);
  main.append(h("div", { class: "cols" }, left, h("div", { id: "dataset-view", style: "flex:1" })));
}
async function openDataset(path) {
  const s = await api("/api/dataset?path=" + q(path));
  const view = document.getElementById("dataset-view");
  view.innerHTML = "";
  const eps = h("table", { id: "episode-table" }, h("tr", {}, h("th", {}, "episode"), h("th", {}, "frames"), h("th", {}, "task")));
  s.episodes.forEach((e) => eps.append(h("tr", { class: "episode-row", style: "cursor:pointer", onclick: () => openEpisode(s, e.index) }, h("td", {}, e.index), h("td", {}, e.length), h("td", {}, e.task))));
  const stats = h("table", {}, h("tr", {}, h("th", {}, "feature"), h("th", {}, "mean"), h("th", {}, "std"), h("th", {}, "min"), h("th", {}, "max")));
  for (const [k, v] of Object.entries(s.stats)) {
    const f = (x) => (Array.isArray(x) ? x.map((y) => Number(y).toFixed(3)).join(" ") : "");
    stats.append(h("tr", {}, h("td", {}, k), h("td", {}, f(v.mean)), h("td", {}, f(v.std)), h("td", {}, f(v.min)), h("td", {}, f(v.max))));
  }
  view.append(
    h("div", { class: "card" }, h("h3", {}, path), h("div", { class: "muted" }, `${s.format}: ${s.num_episodes} episodes, ${s.num_frames} frames, ${s.fps} fps, cameras ${s.cameras.join(", ")}`),
      h("h4", {}, "Tasks"), h("ul", {}, s.tasks.map((t) => h("li", {}, t))), h("h4", {}, "Statistics"), stats),
    h("div", { class: "cols" }, h("div", { class: "card" }, h("h4", {}, "Episodes"), eps), h("div", { id: "episode-view" })));
}
async function openEpisode(s, ep) {
  const e = await api(`/api/episode?path=${q(s.path)}&ep=${ep}`);
  const view = document.getElementById("episode-view");
  view.innerHTML = "";
  const cam = s.cameras[0];
  const actionPlot = linePlot(`episode ${ep}: action`, columns(e.action, s.action_names));
  actionPlot.id = "plot-action";
  const statePlot = linePlot(`episode ${ep}: state`, columns(e.state, s.state_names));
  statePlot.id = "plot-state";
  const flags = h("div", { class: "muted", id: "episode-flags" });
  const setFrame = (i) => {
    i = Math.max(0, Math.min(e.length - 1, i));
    actionPlot.setCursor(i); statePlot.setCursor(i);
    const f = e.flags || {};
    const who = f["complementary_info.is_intervention"] ? (f["complementary_info.is_intervention"][i] ? "human" : "policy") : "";
    flags.textContent = `frame ${i}/${e.length}` + (who ? `  driver: ${who}` : "") + (f["next.success"] && f["next.success"][i] ? "  success" : "");
  };
  let media;
  if (e.videos[cam]) {
    const v = e.videos[cam];
    media = h("video", { id: "episode-video", src: withToken(v.url), width: 320, height: 320, muted: "", controls: "", playsinline: "" });
    media.muted = true;
    const start = v.from, end = v.from + e.length / e.fps;
    media.addEventListener("loadedmetadata", () => { media.currentTime = start; });
    media.addEventListener("timeupdate", () => {
      if (media.currentTime >= end) { media.pause(); media.currentTime = start; }
      setFrame(Math.floor((media.currentTime - start) * e.fps + 1e-6));
    });
    media.dataset.from = start;
  } else {
    media = h("img", { id: "episode-frame", class: "frame", style: "width:320px;height:320px" });
    let i = 0;
    const show = () => { media.src = withToken(`/api/frame?path=${q(s.path)}&ep=${ep}&i=${i}&camera=${q(cam)}`); setFrame(i); };
    show();
    media.play = () => { stopLoop(); UI.loop = setInterval(() => { i = (i + 1) % e.length; show(); }, 1000 / e.fps); };
  }
  view.append(h("div", { class: "cols" }, h("div", { class: "card" }, h("h4", {}, `Episode ${ep}`), media, h("div", {}, h("button", { onclick: () => media.play() }, "play")), flags),
    h("div", { class: "card" }, actionPlot, h("br"), statePlot)));
  setFrame(0);
}

// ---- evaluations -----------------------------------------------------------------------------------
function wilson(k, n, z = 1.96) {
  if (!n) return [0, 1];
  const p = k / n, d = 1 + (z * z) / n, c = (p + (z * z) / (2 * n)) / d, m = (z * Math.sqrt((p * (1 - p)) / n + (z * z) / (4 * n * n))) / d;
  return [Math.max(0, c - m), Math.min(1, c + m)];
}
async function pageEvals() {
  const list = await api("/api/list");
  const ul = h("ul", { class: "list", id: "eval-list" });
  list.evals.forEach((d) => ul.append(h("li", {}, h("label", {}, h("input", { type: "checkbox", value: d.path, class: "eval-pick" }), ` ${d.path} `, h("span", { class: "muted" }, d.policy || "")))));
  if (!list.evals.length) ul.append(h("li", {}, h("span", { class: "muted" }, "no eval_info.json under " + list.root)));
  const btn = h("button", { id: "eval-compare", onclick: () => compareEvals([...document.querySelectorAll(".eval-pick:checked")].map((c) => c.value)) }, "show side by side");
  main.append(h("div", { class: "cols" }, h("div", { class: "card" }, h("h3", {}, "Evaluations"), ul, btn), h("div", { id: "eval-view", class: "cols" })));
}
async function compareEvals(paths) {
  const view = document.getElementById("eval-view");
  view.innerHTML = "";
  const infos = await Promise.all(paths.map((p) => api("/api/eval?path=" + q(p))));
  const tasks = [...new Set(infos.flatMap((i) => i.tasks))];
  const table = h("table", { id: "eval-table" }, h("tr", {}, h("th", {}, "task"), infos.map((i) => h("th", {}, i.path))));
  for (const t of tasks) {
    table.append(h("tr", {}, h("td", {}, t), infos.map((i) => {
      const a = (i.aggregates.per_task || {})[t];
      if (!a) return h("td", {}, "-");
      const [lo, hi] = a.ci_low !== undefined ? [a.ci_low, a.ci_high] : wilson(a.successes, a.n);
      return h("td", { class: "rate", "data-task": t }, `${(100 * a.rate).toFixed(0)}% [${(100 * lo).toFixed(0)}, ${(100 * hi).toFixed(0)}] (${a.successes}/${a.n})`);
    })));
  }
  view.append(h("div", { class: "card" }, h("h3", {}, "Per-task success (95% Wilson intervals)"), table));
  for (const i of infos) {
    const vids = i.episodes.filter((e) => e.video).slice(0, 6).map((e) =>
      h("div", {}, h("div", { class: "muted" }, `${e.task} seed ${e.seed}: ${e.success ? "success" : "failure"}`), h("video", { src: withToken(`/api/file?path=${q(i.path + "/" + e.video)}`), width: 200, controls: "", muted: "" })));
    view.append(h("div", { class: "card" }, h("h4", {}, i.path), h("div", { class: "muted" }, `policy ${i.policy}, ${i.date}`),
      h("details", {}, h("summary", {}, "protocol"), h("pre", {}, JSON.stringify(i.protocol, null, 1))), h("div", { class: "cols" }, vids)));
  }
}

// ---- training runs ---------------------------------------------------------------------------------
async function pageRuns() {
  const list = await api("/api/list");
  const ul = h("ul", { class: "list", id: "run-list" });
  list.runs.forEach((d) => ul.append(h("li", { onclick: () => openRun(d.path) }, d.path)));
  if (!list.runs.length) ul.append(h("li", {}, h("span", { class: "muted" }, "no metrics.jsonl under " + list.root)));
  main.append(h("div", { class: "cols" }, h("div", { class: "card" }, h("h3", {}, "Training runs"), ul), h("div", { id: "run-view" })));
}
async function openRun(path) {
  const rows = await api("/api/metrics?path=" + q(path));
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))].filter((k) => k !== "step" && rows.some((r) => typeof r[k] === "number"));
  const view = document.getElementById("run-view");
  view.innerHTML = "";
  const loss = keys.filter((k) => k.includes("loss"));
  const series = (ks) => Object.fromEntries(ks.map((k) => [k, rows.filter((r) => typeof r[k] === "number").map((r, i) => [r.step ?? i, r[k]])]));
  const plot = linePlot(`${path}: loss`, series(loss.length ? loss : keys.slice(0, 4)), { width: 640, height: 260 });
  plot.id = "plot-loss";
  view.append(h("div", { class: "card" }, plot));
  for (const k of keys.filter((k) => !loss.includes(k)).slice(0, 6)) view.append(h("div", { class: "card" }, linePlot(k, series([k]), { width: 420, height: 140 })));
}

// ---- live rollouts and teleoperation ---------------------------------------------------------------
const held = {};
const KEYS = { KeyA: ["x", -1], KeyD: ["x", 1], KeyW: ["y", 1], KeyS: ["y", -1], KeyR: ["z", 1], KeyF: ["z", -1], ArrowLeft: ["x", -1], ArrowRight: ["x", 1], ArrowUp: ["y", 1], ArrowDown: ["y", -1] };
let gripper = -1;
document.addEventListener("keydown", (ev) => {
  if (!UI.session || ev.target.tagName === "INPUT") return;
  if (KEYS[ev.code]) { held[ev.code] = true; ev.preventDefault(); }
  else if (ev.code === "Space") { gripper = -gripper; ev.preventDefault(); }
  else if (ev.code === "KeyT") act({ op: "take_over" }).then((st) => { if (st) gripper = st.gripper; });
  else if (ev.code === "KeyG") act({ op: "hand_back" });
  else if (ev.code === "KeyK") act({ op: "keep" });
  else if (ev.code === "KeyX") act({ op: "discard" });
});
document.addEventListener("keyup", (ev) => { delete held[ev.code]; });
function command() {
  const c = { x: 0, y: 0, z: 0, gripper };
  for (const code of Object.keys(held)) { const [a, s] = KEYS[code]; c[a] = s; }
  const pads = navigator.getGamepads ? [...navigator.getGamepads()].filter(Boolean) : [];
  if (pads.length) {  // left stick: x/y, right stick vertical: z, button 0: gripper closed
    const p = pads[0], dz = (v) => (Math.abs(v) > 0.15 ? v : 0);
    c.x = c.x || dz(p.axes[0] || 0); c.y = c.y || -dz(p.axes[1] || 0); c.z = c.z || -dz(p.axes[3] || 0);
    if (p.buttons[0] && p.buttons[0].pressed) c.gripper = 1;
  }
  return c;
}
function render(st) {
  UI.last = st;
  const img = document.getElementById("live-frame");
  if (img && st.frame) img.src = "data:image/jpeg;base64," + st.frame;
  const info = document.getElementById("live-status");
  if (info) {
    info.innerHTML = "";
    info.append(`${st.env}/${st.task} seed ${st.seed} "${st.instruction}" step ${st.steps}/${st.max_steps} speed ${st.speed} kept ${st.kept} `,
      h("span", { class: "badge " + (st.human ? "human" : "policy") }, st.human ? "operator" : "policy"), " ",
      st.success ? h("span", { class: "badge ok", id: "live-success" }, "success") : "", st.done ? " (episode over: keep or discard)" : "");
  }
  const box = document.getElementById("chunk-plot");
  if (box && st.chunk) { box.innerHTML = ""; box.append(linePlot("action chunk", columns(st.chunk, ["dx", "dy", "dz", "gripper"]), { width: 420, height: 160 })); }
}
async function act(body) {
  try { const st = await api("/api/session/act", body); render(st); return st; } catch (e) { showError(e); }
}
function sessionPage(kind) {
  const form = h("div", { class: "card" }, h("h3", {}, kind === "rollout" ? "Live rollout" : "Teleoperation"),
    kind === "rollout" ? h("div", {}, "policy ", h("input", { id: "f-policy", size: 30, placeholder: "runs/tiny/last" })) : "",
    h("div", {}, "env ", h("input", { id: "f-env", value: "metaworld", size: 10 }), " task ", h("input", { id: "f-task", value: "reach-v3", size: 14 }), " seed ", h("input", { id: "f-seed", value: "0", size: 5 })),
    h("div", {}, "record to ", h("input", { id: "f-out", value: kind === "teleop" ? "teleop/session" : "", size: 24, placeholder: "(nothing recorded)" }), " speed ", h("input", { id: "f-speed", value: "1.0", size: 4 })),
    h("button", { id: "session-start", onclick: () => startSession(kind) }, "start"),
    h("button", { id: "session-close", onclick: async () => { stopLoop(); const r = await api("/api/session/act", { op: "close" }); UI.session = null; UI.closed = r; document.getElementById("live-status").textContent = r.dataset ? "wrote " + r.dataset : "closed (nothing kept)"; } }, "finish"),
    h("div", { class: "muted" }, kind === "teleop" ? "keys: a/d x, w/s y, r/f z (arrows x/y), space gripper, k keep, x discard, t take over, g hand back; a gamepad's sticks when one is connected" : "t takes over (then drive with the teleop keys), g hands back; with a recording directory, k keeps the episode with every frame flagged policy or human"));
  main.append(h("div", { class: "cols" }, form, h("div", { class: "card" }, h("img", { id: "live-frame", class: "frame" }), h("div", { id: "live-status" })), h("div", { class: "card", id: "chunk-plot" })));
}
async function startSession(kind) {
  stopLoop();
  const v = (id) => (document.getElementById(id) || {}).value;
  const body = { env: v("f-env"), task: v("f-task"), seed: Number(v("f-seed") || 0) };
  body.speed = Number(v("f-speed") || 1);
  if (v("f-out")) body.out = v("f-out");
  if (kind === "rollout") body.policy = v("f-policy");
  try {
    const st = await api("/api/session/start", body);
    UI.session = kind; render(st);
    let busy = false;
    UI.loop = setInterval(async () => {  // one step per control period; a step still in flight is not doubled
      if (busy || !UI.last || UI.last.done) return;
      if (UI.session === "teleop" && UI.last.human && !Object.keys(held).length && !UI.stepIdle) return;
      busy = true;
      try { await act({ op: "step", cmd: command() }); } finally { busy = false; }
    }, Math.max(10, 1000 * st.period));
  } catch (e) { showError(e); }
}

// ---- jobs ------------------------------------------------------------------------------------------
async function pageJobs() {
  const form = h("div", { class: "card" }, h("h3", {}, "Background jobs"),
    h("select", { id: "job-kind" }, ["collect", "train", "eval"].map((k) => h("option", { value: k }, k))), " ",
    h("input", { id: "job-args", size: 60, value: "--tasks reach-v3 --episodes 2 --out data/ui-collect --workers 0" }),
    h("button", { id: "job-start", onclick: async () => {
      try { const j = await api("/api/jobs", { kind: document.getElementById("job-kind").value, args: document.getElementById("job-args").value.trim().split(/\s+/).filter(Boolean) }); follow(j.id); refreshJobs(); } catch (e) { showError(e); }
    } }, "start"), h("ul", { class: "list", id: "job-list" }));
  main.append(h("div", { class: "cols" }, form, h("div", { class: "card" }, h("h4", { id: "job-title" }, "log"), h("pre", { class: "log", id: "job-log" }))));
  refreshJobs();
}
async function refreshJobs() {
  const ul = document.getElementById("job-list");
  if (!ul) return;
  const jobs = await api("/api/jobs");
  ul.innerHTML = "";
  jobs.forEach((j) => ul.append(h("li", { onclick: () => follow(j.id) }, `${j.id} `, h("span", { class: "badge" }, j.state))));
}
function follow(id) {
  stopLoop();
  let offset = 0;
  const pre = document.getElementById("job-log");
  pre.textContent = "";
  document.getElementById("job-title").textContent = id;
  const tick = async () => {
    const r = await api(`/api/jobs/${id}/log?offset=${offset}`);
    offset = r.offset;
    pre.textContent += r.text.replace(/\r(?!\n)/g, "\n");
    pre.scrollTop = pre.scrollHeight;
    pre.dataset.state = r.state;
    if (r.state !== "running" && !r.text) { stopLoop(); refreshJobs(); }  // finished and read to its end
  };
  tick();
  UI.loop = setInterval(tick, 1000);
}

// ---- routing ---------------------------------------------------------------------------------------
const PAGES = { datasets: pageDatasets, evals: pageEvals, runs: pageRuns, rollout: () => sessionPage("rollout"), teleop: () => sessionPage("teleop"), jobs: pageJobs };
async function route() {
  stopLoop();
  const name = (location.hash || "#datasets").slice(1).split("?")[0];
  main.innerHTML = "";
  document.querySelectorAll("header nav a").forEach((a) => a.classList.toggle("active", a.id === "nav-" + name));
  try { await (PAGES[name] || pageDatasets)(); } catch (e) { showError(e); }
  document.body.dataset.page = name;
}
UI.openDataset = openDataset; UI.openEpisode = openEpisode; UI.compareEvals = compareEvals; UI.openRun = openRun; UI.startSession = startSession; UI.act = act;
window.addEventListener("hashchange", route);
route();
