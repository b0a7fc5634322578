// The search page: a query image -> POST /search -> the top-K gallery thumbnails; optional POST /items.
"use strict";

const $ = (id) => document.getElementById(id);
let queryFile = null;

function showStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(isError));
}

async function askJson(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function showGalleryInfo() {
  try {
    const stats = await askJson("/stats");
    $("gallery-info").textContent = `${stats.items} images, ${stats.index_type} index, ${stats.dim}-d embeddings`;
  } catch (err) {
    $("gallery-info").textContent = `stats unavailable: ${err.message}`;
  }
}

// The predicted uncertainty of a model trained with --uncertainty True (null for other models).
function sigma2Text(sigma2) {
  return sigma2 === null || sigma2 === undefined ? "" : ` · σ² ${sigma2.toFixed(3)}`;
}

function matchElement(match) {
  const item = document.createElement("li");
  item.className = "match";
  item.dataset.id = match.id;
  item.dataset.label = match.label;
  const thumbnail = document.createElement("img");
  thumbnail.src = match.image_url;
  thumbnail.alt = `item ${match.id}`;
  thumbnail.title = match.path;
  const label = document.createElement("div");
  label.className = "label";
  label.textContent = match.label;
  label.title = "label";
  const details = document.createElement("div");
  details.className = "details";
  const similarity = document.createElement("span");
  similarity.className = "similarity";
  similarity.textContent = match.similarity.toFixed(3);
  similarity.title = "similarity (cosine)";
  const rank = document.createElement("span");
  rank.className = "rank";
  rank.textContent = `#${match.rank} · id ${match.id}` + sigma2Text(match.sigma2);
  details.append(similarity, rank);
  item.append(thumbnail, label, details);
  return item;
}

async function search() {
  if (!queryFile) return;
  const form = new FormData();
  form.append("file", queryFile);
  form.append("top_k", $("top-k").value || "10");
  if ($("threshold").value !== "") form.append("threshold", $("threshold").value);
  showStatus("searching…");
  document.body.dataset.state = "searching";
  try {
    const result = await askJson("/search", { method: "POST", body: form });
    $("results").replaceChildren(...result.matches.map(matchElement));
    $("no-match").hidden = !result.no_match;
    $("results-title").textContent = (result.no_match ? "Results" : `Top ${result.matches.length}`)
      + (result.sigma2 === null ? "" : ` (query σ² ${result.sigma2.toFixed(3)})`);
    showStatus("");
    document.body.dataset.state = "done";
  } catch (err) {
    $("results").replaceChildren();
    $("no-match").hidden = true;
    showStatus(err.message, true);
    document.body.dataset.state = "error";
  }
}

function useFile(file) {
  if (!file) return;
  queryFile = file;
  $("query-image").src = URL.createObjectURL(file);
  $("query-image").hidden = false;
  $("drop-hint").hidden = true;
  $("add-button").disabled = false;
  search();
}

async function addToGallery() {
  if (!queryFile) return;
  const form = new FormData();
  form.append("file", queryFile);
  form.append("label", $("add-label").value);
  showStatus("adding…");
  try {
    const item = await askJson("/items", {
      method: "POST", body: form, headers: { Authorization: `Bearer ${$("add-token").value}` },
    });
    await Promise.all([search(), showGalleryInfo()]);
    showStatus(`added as item ${item.id} with label ${item.label}`);
  } catch (err) {
    showStatus(`not added: ${err.message}`, true);
  }
}

$("query-file").addEventListener("change", (event) => useFile(event.target.files[0]));
$("top-k").addEventListener("change", search);
$("threshold").addEventListener("change", search);
$("add-button").addEventListener("click", addToGallery);
const dropZone = $("drop-zone");
dropZone.addEventListener("dragover", (event) => { event.preventDefault(); dropZone.classList.add("dragging"); });
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("dragging");
  useFile(event.dataTransfer.files[0]);
});
showGalleryInfo();
