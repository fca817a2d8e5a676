// A job's page: its status, progress, streamed text, files, result or error, and the event log, kept live
// by an EventSource. What was shown is kept in sessionStorage, so a reload resumes after the last event
// seen (Last-Event-ID) instead of replaying the stream; a bookmark or a new tab replays it from the start.
import { ApiError, apiKey, getJson, jobPath, postJson } from "./api.js";
import { tree } from "./tree.js";
import { KeyedEventSource } from "./stream.js";

const $ = (id) => document.getElementById(id);
const STORE_LIMIT = 2000; // events kept for a reload; a longer job replays its stream instead
const TERMINAL = new Set(["done", "error"]);
const LABEL = { started: "running", queued: "queued", finished: "done", failed: "failed", canceled: "canceled" };
const IMAGE = /\.(png|jpe?g|gif|webp|svg|avif)(\?|$)/i;

function storeKey(jobId) {
  return `factory.job.${jobId}`;
}

export function rememberToken(jobId, token) {
  if (token) sessionStorage.setItem(`${storeKey(jobId)}.token`, token);
}

function tokenOf(jobId) {
  return sessionStorage.getItem(`${storeKey(jobId)}.token`);
}

async function keyedBlob(url) {
  const response = await fetch(url, { headers: { Authorization: `Bearer ${apiKey()}` } });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return URL.createObjectURL(await response.blob());
}

// A file URL the page can open: with the job's token when it has one (links and images send no header).
function withToken(url, jobId) {
  const token = tokenOf(jobId);
  if (!token) return url;
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}

function text(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

export class JobView {
  constructor(jobId, onChange) {
    this.jobId = jobId;
    this.onChange = onChange;
    this.events = [];
    this.lastSeq = 0;
    this.source = null;
    this.job = null;
    this.ended = false;
    this.resumedFrom = 0;
  }

  async open() {
    this.reset();
    $("job-title").textContent = "job";
    $("job-id").textContent = `job ${this.jobId}`;
    try {
      this.job = await getJson(jobPath(this.jobId));
    } catch (error) {
      this.fail(error instanceof ApiError && error.status === 404 ? "NOT_FOUND" : error.code, error.message);
      return;
    }
    this.header();
    const saved = JSON.parse(sessionStorage.getItem(storeKey(this.jobId)) || "null");
    if (saved && Array.isArray(saved.events)) {
      for (const event of saved.events) this.apply(event.seq, event.event, false);
      this.resumedFrom = this.lastSeq;
    }
    if (this.ended) return;
    if (this.job.status !== "queued" && this.job.status !== "started" && this.lastSeq >= this.job.last_event_id) {
      this.ended = true; // everything is here already: no stream to open (it would answer 204)
      return;
    }
    this.connect();
  }

  reset() {
    for (const id of ["content", "files", "events", "result"]) $(id).replaceChildren();
    for (const id of ["progress", "content-box", "files-box", "result-box", "job-error", "cancel"]) $(id).hidden = true;
    $("event-count").textContent = "0";
    $("progress-fill").style.width = "0";
    $("progress-fill").classList.remove("indeterminate");
  }

  close() {
    if (this.source) this.source.close();
    this.source = null;
  }

  connect() {
    const params = new URLSearchParams();
    if (this.lastSeq) params.set("last_event_id", String(this.lastSeq));
    const token = tokenOf(this.jobId);
    if (token) params.set("token", token);
    const query = params.toString();
    const url = jobPath(this.jobId, `/events${query ? `?${query}` : ""}`);
    this.source = !token && apiKey() ? new KeyedEventSource(url, this.lastSeq) : new EventSource(url);
    this.source.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      const seq = Number(message.lastEventId) || this.lastSeq + 1;
      this.apply(seq, event, true);
    };
    this.source.onerror = () => {
      // The browser reconnects by itself with Last-Event-ID; stop only once the job has ended.
      if (this.ended) this.close();
    };
  }

  header() {
    const job = this.job;
    $("job-title").textContent = `${job.function_name}`;
    $("job-id").textContent = `${job.prefab_id}${job.version ? ` ${job.version}` : ""} · job ${job.job_id}`;
    this.status(job.status);
    this.times();
  }

  status(status) {
    const badge = $("job-status");
    const label = LABEL[status] || status;
    badge.textContent = label;
    badge.className = `badge ${status}`;
    const running = status === "queued" || status === "started";
    const cancel = $("cancel");
    cancel.hidden = !running;
    cancel.disabled = false;
    cancel.onclick = running ? () => this.cancel() : null;
  }

  times() {
    const job = this.job;
    if (!job) return;
    const parts = [`created ${new Date(job.created_at).toLocaleString()}`];
    if (job.ended_at) {
      const began = new Date(job.started_at || job.created_at);
      parts.push(`took ${((new Date(job.ended_at) - began) / 1000).toFixed(2)} s`);
    }
    if (job.worker) parts.push(`on ${job.worker}`);
    $("job-times").textContent = `· ${parts.join(" · ")}`;
  }

  async cancel() {
    $("cancel").disabled = true;
    try {
      this.job = await postJson(jobPath(this.jobId, "/cancel"));
      this.status(this.job.status);
    } catch (error) {
      $("cancel").disabled = false;
      this.fail(error.code, error.message);
    }
  }

  apply(seq, event, live) {
    if (seq <= this.lastSeq) return; // already shown: a resume never shows an event twice
    this.lastSeq = seq;
    this.events.push({ seq, event });
    this.log(seq, event);
    const data = event.data;
    if (event.type === "start" && this.job && this.job.status === "queued") this.status("started");
    if (event.type === "progress") this.progress(data);
    else if (event.type === "content") this.content(data);
    else if (event.type === "files") this.files(data);
    else if (event.type === "retry") this.retry(data);
    if (TERMINAL.has(event.type)) this.end(event);
    if (live) this.save();
  }

  log(seq, event) {
    const item = document.createElement("li");
    item.value = seq;
    item.dataset.seq = String(seq);
    const data = event.data === undefined ? "" : ` ${text(event.data)}`;
    item.textContent = `${event.type}${event.error_code ? ` ${event.error_code}` : ""}${data.slice(0, 500)}`;
    $("events").append(item);
    $("event-count").textContent = String(this.events.length);
  }

  progress(data) {
    $("progress").hidden = false;
    const fill = $("progress-fill");
    let pct = null;
    if (data && typeof data === "object") {
      if (typeof data.percentage === "number") pct = data.percentage;
      else if (typeof data.current === "number" && typeof data.total === "number" && data.total > 0) {
        pct = (100 * data.current) / data.total;
      }
    }
    const bar = fill.parentElement;
    if (pct === null) {
      fill.classList.add("indeterminate");
      bar.removeAttribute("aria-valuenow");
      $("progress-pct").textContent = "";
    } else {
      pct = Math.max(0, Math.min(100, pct));
      fill.classList.remove("indeterminate");
      fill.style.width = `${pct}%`;
      bar.setAttribute("aria-valuenow", String(Math.round(pct)));
      $("progress-pct").textContent = `${Math.round(pct)}%`;
    }
    const message = data && typeof data === "object"
      ? data.message || (typeof data.current === "number" && typeof data.total === "number"
        ? `${data.current} of ${data.total}` : "")
      : text(data);
    $("progress-msg").textContent = message || "";
  }

  content(data) {
    $("content-box").hidden = false;
    const box = $("content");
    const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    box.append(typeof data === "string" ? data : JSON.stringify(data));
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  files(data) {
    if (!data || typeof data !== "object") return;
    $("files-box").hidden = false;
    for (const [group, urls] of Object.entries(data)) {
      for (const url of Array.isArray(urls) ? urls : [urls]) {
        const item = document.createElement("li");
        const name = decodeURIComponent(String(url).split("?")[0].split("/").pop());
        const link = Object.assign(document.createElement("a"), { href: withToken(String(url), this.jobId), textContent: name });
        link.setAttribute("download", name);
        item.append(`${group}: `, link);
        const image = IMAGE.test(url) ? Object.assign(document.createElement("img"), { alt: name, loading: "lazy" }) : null;
        if (!tokenOf(this.jobId) && apiKey()) {
          // No job token in this tab: fetch with the key (a link or an image sends no header).
          const blob = keyedBlob(String(url));
          link.addEventListener("click", async (event) => {
            event.preventDefault();
            const target = Object.assign(document.createElement("a"), { href: await blob, download: name });
            target.click();
          });
          if (image) blob.then((src) => { image.src = src; }, () => {});
        } else if (image) image.src = link.href;
        if (image) item.append(image);
        $("files").append(item);
      }
    }
  }

  retry(data) {
    const info = data && typeof data === "object" ? data : {};
    $("progress-msg").textContent = `attempt ${info.attempt} of ${info.max_attempts} after ${info.error_code}`;
  }

  end(event) {
    this.ended = true;
    this.close();
    if (event.type === "done") {
      const box = $("result-box");
      if (event.data !== undefined && event.data !== null) {
        box.hidden = false;
        $("result").replaceChildren(tree(event.data));
      }
      if (!$("progress").hidden && $("progress-fill").classList.contains("indeterminate")) {
        $("progress-fill").classList.remove("indeterminate");
        $("progress-fill").style.width = "100%";
      }
    } else {
      this.fail(event.error_code || "ERROR", event.data);
    }
    this.refresh();
  }

  async refresh() {
    try {
      this.job = await getJson(jobPath(this.jobId));
    } catch {
      return;
    }
    this.header();
    if (this.onChange) this.onChange();
  }

  fail(code, data) {
    const box = $("job-error");
    box.hidden = false;
    let message = data;
    if (data && typeof data === "object") message = data.message || data.error || JSON.stringify(data);
    box.replaceChildren(Object.assign(document.createElement("strong"), { textContent: code }),
                        `: ${message === undefined ? "" : message}`);
  }

  save() {
    if (this.events.length > STORE_LIMIT) {
      sessionStorage.removeItem(storeKey(this.jobId));
      return;
    }
    try {
      sessionStorage.setItem(storeKey(this.jobId), JSON.stringify({ events: this.events }));
    } catch {
      sessionStorage.removeItem(storeKey(this.jobId)); // over the quota: a reload replays instead
    }
  }
}
