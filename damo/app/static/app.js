// DaMO demo page: pick or upload a video, ask, show the answer, its spans and the timeline.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { video: null, examples: [], limits: { max_upload_mb: Infinity } };

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function api(path, options) {
  const res = await fetch(path, options);
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) throw new Error((body && body.error) || `${res.status} ${res.statusText}`);
  return body;
}

function useVideo(id, url, queries) {
  state.video = id;
  const player = $("player");
  player.src = url;
  player.load();
  const list = $("suggestions");
  list.innerHTML = "";
  for (const q of queries || []) {
    const o = document.createElement("option");
    o.value = q;
    list.appendChild(o);
  }
  if (queries && queries.length && !$("query").value) $("query").placeholder = queries[0];
}

async function loadExamples() {
  const select = $("example");
  try {
    state.examples = await api("/api/examples");
  } catch (e) {
    showError(`could not list the examples: ${e.message}`);
    return;
  }
  select.innerHTML = "";
  for (const ex of state.examples) {
    const o = document.createElement("option");
    o.value = ex.id;
    o.textContent = ex.name;
    select.appendChild(o);
  }
  if (state.examples.length) pickExample();
}

function pickExample() {
  const ex = state.examples.find((e) => e.id === $("example").value);
  if (ex) {
    $("upload-status").textContent = "";
    useVideo(ex.id, ex.url, ex.queries);
  }
}

async function upload() {
  const file = $("file").files[0];
  if (!file) return;
  showError("");
  const mb = file.size / 1048576;
  if (mb > state.limits.max_upload_mb) {
    showError(`${file.name} is ${mb.toFixed(1)} MB; this server accepts at most ${state.limits.max_upload_mb} MB`);
    return;
  }
  $("upload-status").textContent = `uploading ${file.name} (${(file.size / 1048576).toFixed(1)} MB)...`;
  $("ask").disabled = true;
  try {
    const v = await api("/api/upload", {
      method: "POST", body: file,
      headers: { "Content-Type": "application/octet-stream", "X-Filename": encodeURIComponent(file.name) },
    });
    $("upload-status").textContent = `${v.name}: ${v.duration.toFixed(1)} s`;
    $("upload-status").dataset.video = v.id;
    useVideo(v.id, v.url, []);
  } catch (e) {
    $("upload-status").textContent = "";
    showError(e.message);
  } finally {
    $("ask").disabled = false;
  }
}

function seek(span, button) {
  const player = $("player");
  for (const b of document.querySelectorAll("#spans button")) b.classList.remove("playing");
  button.classList.add("playing");
  player.currentTime = span.start;
  const stop = () => {
    if (player.currentTime >= span.end) { player.pause(); player.removeEventListener("timeupdate", stop); }
  };
  player.addEventListener("timeupdate", stop);
  player.play().catch(() => {});  // autoplay rules may refuse; the player still shows the span's start
}

function showResult(r) {
  $("answer").textContent = r.answer || "(the model gave no answer text)";
  $("warning").textContent = r.warning || "";   // a procedural-only model asked about a real video
  $("warning").hidden = !r.warning;
  const spans = $("spans");
  spans.innerHTML = "";
  r.spans.forEach((s, i) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "span";
    b.dataset.start = s.start;
    b.dataset.end = s.end;
    b.textContent = `${s.start.toFixed(1)} - ${s.end.toFixed(1)} s  (score ${s.score.toFixed(2)})`;
    b.addEventListener("click", () => seek(s, b));
    li.appendChild(b);
    spans.appendChild(li);
  });
  if (!r.spans.length) spans.innerHTML = "<li>no span: the answer holds no evidence</li>";
  $("duration").textContent = `video length ${r.duration.toFixed(1)} s`;
  $("result").hidden = false;
  if (r.timeline) {
    $("timeline").src = r.timeline;
    $("timeline-note").textContent = "frames, each evidence token's score per frame, predicted spans";
  } else {
    $("timeline").removeAttribute("src");
    $("timeline-note").textContent = r.note || "";
  }
  $("timeline-box").hidden = false;
}

async function ask() {
  showError("");
  const query = $("query").value.trim() || $("query").placeholder;
  if (!state.video) { showError("choose an example or upload a video first"); return; }
  $("ask").disabled = true;
  $("ask").textContent = "Thinking...";
  try {
    showResult(await api("/api/ground", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ video: state.video, query }),
    }));
  } catch (e) {
    showError(e.message);
  } finally {
    $("ask").disabled = false;
    $("ask").textContent = "Ask";
  }
}

$("example").addEventListener("change", pickExample);
$("file").addEventListener("change", upload);
$("ask").addEventListener("click", ask);
$("query").addEventListener("keydown", (e) => { if (e.key === "Enter") ask(); });
$("player").addEventListener("error", () => {
  if (state.video) $("upload-status").textContent += " (this browser cannot play the file; answers still work)";
});
api("/api/limits").then((l) => { state.limits = l; }).catch(() => {});
loadExamples();
