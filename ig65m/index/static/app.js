"use strict";
// The search page: no framework, no build step. The bearer token (when the server wants one)
// lives in sessionStorage and travels only in the Authorization header; thumbnails and videos
// come through the short-lived signed URLs that search answers carry.

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("ig65m-token"), videos: [], clips: [] };

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", "Bearer " + state.token);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    askToken();
    throw new Error("this server needs a token");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function askToken() {
  sessionStorage.removeItem("ig65m-token");
  state.token = null;
  $("results").replaceChildren();
  if (!$("token-dialog").open) $("token-dialog").showModal();
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function seconds(value) {
  if (value === null || value === undefined) return "?";
  const minutes = Math.floor(value / 60);
  return `${minutes}:${(value - 60 * minutes).toFixed(1).padStart(4, "0")}`;
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

async function loadCollection() {
  const answer = await api("/videos");
  state.videos = answer.videos;
  const clips = answer.videos.reduce((sum, video) => sum + video.clips, 0);
  $("collection").textContent = `${answer.videos.length} videos, ${clips} clips` +
    (answer.uploads ? " · search by uploaded video is on" : " · uploads take features (.npy)");
  $("video-select").replaceChildren(...answer.videos.map((video) =>
    el("option", { value: video.video, textContent: `${video.name} (${seconds(video.duration)})` })));
  if (answer.videos.length) await pickVideo();
}

async function pickVideo() {
  const answer = await api(`/videos/${$("video-select").value}`);
  state.clips = answer.clips;
  const end = answer.duration || 0;
  for (const id of ["moment-range", "moment"]) $(id).max = end;
  setMoment(0);
}

function setMoment(value) {
  const moment = Number(value) || 0;
  $("moment").value = moment;
  $("moment-range").value = moment;
  const clip = state.clips.find((c) => c.start !== null && moment >= c.start && moment < c.end)
    || state.clips[state.clips.length - 1];
  if (!clip) return;
  $("clip-id").value = clip.id;
  $("query-thumb").src = clip.thumb;
  $("query-thumb").hidden = false;
}

function options() {
  const minScore = $("min-score").value;
  return { k: Math.round(Number($("k").value)) || 10, min_score: minScore === "" ? null : Number(minScore) };
}

async function run(search) {
  const buttons = document.querySelectorAll("form button");
  buttons.forEach((b) => { b.disabled = true; });
  setStatus("searching…");
  const started = performance.now();
  try {
    const answer = await search();
    render(answer.videos);
    const took = ((performance.now() - started) / 1000).toFixed(2);
    const spent = answer.query.seconds || {};
    const model = spent.extract === undefined ? ""
      : `, the model ${(spent.model_load + spent.extract).toFixed(2)} s of it`;
    setStatus(`${answer.videos.length} videos matched (query: ${answer.query.clips || 1} clips) in ${took} s${model}`);
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

function searchClip(event) {
  event.preventDefault();
  const id = Number($("clip-id").value);
  run(() => api("/search/clip", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ id, exclude_own: $("exclude-own").checked, ...options() }),
  }));
}

function searchUpload(event) {
  event.preventDefault();
  const file = $("upload-file").files[0];
  if (!file) { setStatus("choose a file first", true); return; }
  const form = new FormData();
  const isFeatures = file.name.toLowerCase().endsWith(".npy");
  form.append(isFeatures ? "features" : "video", file);
  const sidecar = $("upload-sidecar").files[0];
  if (isFeatures && sidecar) form.append("sidecar", sidecar);
  const { k, min_score: minScore } = options();
  form.append("k", k);
  if (minScore !== null) form.append("min_score", minScore);
  run(() => api("/search/video", { method: "POST", body: form }));
}

function render(videos) {
  $("results").replaceChildren(...videos.map((video, rank) => card(video, rank + 1)));
}

function card(video, rank) {
  const best = video.segments[0];
  const strip = el("div", { className: "strip" }, ...video.segments.slice(1).map((segment) => {
    const figure = el("figure", { title: `play from ${seconds(segment.best_start)}` },
      el("img", { src: segment.thumb, alt: "", loading: "lazy" }),
      el("figcaption", { textContent: seconds(segment.start) }));
    figure.addEventListener("click", (event) => { event.stopPropagation(); play(video, segment); });
    return figure;
  }));
  const votes = video.votes > 1 ? ` · ${video.votes} clips in order` : "";
  const node = el("article", { className: "card", tabIndex: 0 },
    el("img", { className: "main-thumb", src: best.thumb, alt: `${video.name} at ${seconds(best.start)}` }),
    el("div", { className: "body" },
      el("div", { className: "name" }, el("span", { className: "rank", textContent: `${rank}.` }), video.name),
      el("div", { className: "meta" },
        el("span", { textContent: `${seconds(best.start)} – ${seconds(best.end)}${votes}` }),
        el("span", { className: "score", textContent: video.score.toFixed(3) }))),
    strip);
  node.dataset.path = video.path;
  node.dataset.start = best.best_start;
  node.addEventListener("click", () => play(video, best));
  node.addEventListener("keydown", (event) => { if (event.key === "Enter") play(video, best); });
  return node;
}

function play(video, segment) {
  const player = $("player-video");
  const start = segment.best_start || 0;
  $("player").hidden = false;
  $("player-title").textContent = `${video.name} from ${seconds(start)}`;
  const seek = () => { player.currentTime = start; player.play().catch(() => {}); };
  if (player.dataset.src === video.media.split("?")[0] && player.readyState >= 1) {
    seek();
  } else {
    player.dataset.src = video.media.split("?")[0];
    player.addEventListener("loadedmetadata", seek, { once: true });
    player.src = video.media;
  }
  $("player").scrollIntoView({ behavior: "smooth" });
}

function showTab(name) {
  document.querySelectorAll(".tab").forEach((tab) => tab.classList.toggle("active", tab.dataset.tab === name));
  document.querySelectorAll(".tab-body").forEach((body) => { body.hidden = body.id !== name; });
}

function start() {
  document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", () => showTab(tab.dataset.tab)));
  $("video-select").addEventListener("change", () => pickVideo().catch((e) => setStatus(e.message, true)));
  $("moment-range").addEventListener("input", (event) => setMoment(event.target.value));
  $("moment").addEventListener("change", (event) => setMoment(event.target.value));
  $("from-collection").addEventListener("submit", searchClip);
  $("from-upload").addEventListener("submit", searchUpload);
  $("player-close").addEventListener("click", () => { $("player-video").pause(); $("player").hidden = true; });
  $("token-form").addEventListener("submit", () => {
    state.token = $("token-input").value;
    sessionStorage.setItem("ig65m-token", state.token);
    $("token-input").value = "";
    loadCollection().catch((e) => setStatus(e.message, true));
  });
  loadCollection().catch((e) => setStatus(e.message, true));
}

start();
