// The review page: a reviewer's token (kept for this tab only), the
// latest results with a thumbnail of their source image and the AI
// finding, and accept / reject / correct controls that post a review.
// Everything from the server is shown as text, never as markup.
"use strict";

const tokenInput = document.getElementById("token");
const reviewerInput = document.getElementById("reviewer");
const cases = document.getElementById("cases");
const message = document.getElementById("message");

tokenInput.value = sessionStorage.getItem("vigie-token") || "";
reviewerInput.value = sessionStorage.getItem("vigie-reviewer") || "";

function headers() {
  return { Authorization: "Bearer " + tokenInput.value.trim() };
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error ? body.error.message : response.statusText;
  } catch (_) {
    return response.statusText;
  }
}

function describe(review) {
  let text = "Recorded: " + review.verdict;
  if (review.label) text += " (" + review.label + ")";
  text += " by " + review.reviewer + " at " + review.recorded_at + " (review " + review.id + ")";
  return text;
}

async function submit(entry, item, card, verdict) {
  const status = card.querySelector(".status");
  const body = { verdict: verdict, via: "page", result: item.result_sop_instance_uid };
  const reviewer = reviewerInput.value.trim();
  if (reviewer) body.reviewer = reviewer;
  const comment = card.querySelector("textarea").value.trim();
  if (comment) body.comment = comment;
  if (verdict === "correct") body.label = card.querySelector("select").value;
  const response = await fetch("/api/v1/jobs/" + entry.job_id + "/reviews", {
    method: "POST",
    headers: Object.assign({ "Content-Type": "application/json" }, headers()),
    body: JSON.stringify(body),
  });
  if (response.ok) {
    const review = await response.json();
    status.className = "status recorded";
    status.textContent = describe(review);
    card.dataset.reviewed = review.verdict;
  } else {
    status.className = "status error";
    status.textContent = "Not recorded (" + response.status + "): " + (await errorText(response));
  }
}

async function thumbnail(entry, item, img) {
  let url = "/api/v1/jobs/" + entry.job_id + "/thumbnail";
  if (item.source_sop_instance_uid) url += "?instance=" + encodeURIComponent(item.source_sop_instance_uid);
  const response = await fetch(url, { headers: headers() });
  if (response.ok) {
    img.src = URL.createObjectURL(await response.blob());
    img.dataset.loaded = "1";
  } else {
    img.alt = "no thumbnail: " + (await errorText(response));
  }
}

// One card per result object that carries a finding.
function card(entry, item) {
  const node = el("section", { class: "case", "data-job": String(entry.job_id), "data-result": item.result_sop_instance_uid });
  const img = el("img", { alt: "source image" });
  node.appendChild(img);
  const info = el("div", { class: "info" });
  const finding = item.finding;
  let text = "AI finding: ";
  if (finding && finding.decision) {
    text += finding.decision;
    if (typeof finding.probability === "number") text += " (p = " + finding.probability.toFixed(3) + ")";
  } else {
    text += "see the result object";
  }
  info.appendChild(el("div", { class: "finding" }, text));
  info.appendChild(el("div", {}, "Job " + entry.job_id + ", model " + entry.model + ", " + entry.updated_at));
  info.appendChild(el("div", { class: "uid" }, "Study " + entry.study_instance_uid));
  info.appendChild(el("div", { class: "uid" }, "Result " + item.result_sop_instance_uid));
  const controls = el("div", { class: "controls" });
  const accept = el("button", { class: "accept", type: "button" }, "Accept");
  const reject = el("button", { class: "reject", type: "button" }, "Reject");
  controls.append(accept, reject);
  const correctButton = el("button", { class: "correct", type: "button" }, "Correct to");
  const select = el("select", { "aria-label": "corrected finding" });
  for (const label of entry.labels || []) select.appendChild(el("option", { value: label }, label));
  if ((entry.labels || []).length > 0) controls.append(correctButton, select);
  info.appendChild(controls);
  info.appendChild(el("textarea", { placeholder: "comment (optional)", "aria-label": "comment" }));
  const status = el("div", { class: "status" });
  const counting = item.reviews.filter((r) => r.counts);
  if (counting.length > 0) status.textContent = describe(counting[counting.length - 1]);
  info.appendChild(status);
  node.appendChild(info);
  accept.addEventListener("click", () => submit(entry, item, node, "accept"));
  reject.addEventListener("click", () => submit(entry, item, node, "reject"));
  correctButton.addEventListener("click", () => submit(entry, item, node, "correct"));
  thumbnail(entry, item, img);
  return node;
}

async function load() {
  sessionStorage.setItem("vigie-token", tokenInput.value.trim());
  sessionStorage.setItem("vigie-reviewer", reviewerInput.value.trim());
  const job = new URLSearchParams(location.hash.slice(1)).get("job");
  const url = "/api/v1/review/worklist" + (job ? "?job=" + encodeURIComponent(job) : "");
  const response = await fetch(url, { headers: headers() });
  cases.replaceChildren();
  if (!response.ok) {
    message.textContent = "Cannot list results (" + response.status + "): " + (await errorText(response));
    return;
  }
  const entries = await response.json();
  let shown = 0;
  for (const entry of entries) {
    for (const item of entry.items) {
      cases.appendChild(card(entry, item));
      shown += 1;
    }
  }
  message.textContent = shown + " result(s)";
  document.body.dataset.loaded = String(shown);
}

document.getElementById("signin").addEventListener("click", load);
if (tokenInput.value) load();
