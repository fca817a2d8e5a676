// The console's shell: the catalog (prefabs, versions, functions), the call form, the job page at
// /jobs/<id>/view, the live jobs list and the overview. Plain ES modules, no build step.
import { ApiError, apiKey, getJson, jobPath, postJson, setApiKey, upload } from "./api.js";
import { CallForm } from "./form.js";
import { JobView, rememberToken } from "./job.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const LABEL = { started: "running", queued: "queued", finished: "done", failed: "failed", canceled: "canceled" };

const state = { prefabs: [], manifests: new Map(), workers: [], current: null, form: null, job: null };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function show(section) {
  for (const id of ["home", "call", "job"]) $(id).hidden = id !== section;
}

// --- catalog -------------------------------------------------------------------------------------

function versionsOf(prefab) {
  if (Array.isArray(prefab.versions) && prefab.versions.length) return prefab.versions;
  const state = prefab.status === "broken" ? "failed" : "ready";
  return [{ version: prefab.version || "?", state, reason: (prefab.problems || []).join("; ") }];
}

function renderCatalog() {
  const box = $("prefabs");
  if (!state.prefabs.length) {
    box.replaceChildren(el("p", { className: "muted", text: "No prefab is served. Add one under prefabs/ (factory new NAME)." }));
    return;
  }
  box.replaceChildren(...state.prefabs.map((prefab) => {
    const versions = el("ul", { className: "versions" }, ...versionsOf(prefab).map((v) => el("li", {},
      el("span", { text: `v${v.version}` }), el("span", { className: `badge ${v.state}`, text: v.state }),
      v.reason ? el("span", { className: "reason", text: v.reason }) : null)));
    const manifest = state.manifests.get(prefab.id);
    const functions = (manifest ? manifest.functions : []).map((fn) => {
      const button = el("button", { className: "fn", type: "button", "data-fn": `${prefab.id}/${fn.name}` },
        fn.name, " ", el("small", { text: fn.streaming ? "stream" : "result" }));
      button.addEventListener("click", () => navigate(`/#${encodeURIComponent(prefab.id)}/${encodeURIComponent(fn.name)}`));
      return button;
    });
    return el("div", { className: "prefab" },
      el("div", { className: "prefab-name", text: prefab.name || prefab.id || prefab.path }), versions, ...functions);
  }));
  markCurrentFunction();
}

async function loadCatalog() {
  try {
    const answer = await getJson("/prefabs");
    state.prefabs = answer.prefabs;
    await Promise.all(state.prefabs.filter((p) => p.status !== "broken" && p.id).map(async (p) => {
      state.manifests.set(p.id, await getJson(`/prefabs/${encodeURIComponent(p.id)}`));
    }));
    renderCatalog();
  } catch (error) {
    $("prefabs").replaceChildren(el("p", { className: "alert", text: describe(error) }));
  }
}

function markCurrentFunction() {
  const current = state.current ? `${state.current.prefab}/${state.current.fn.name}` : "";
  for (const button of document.querySelectorAll(".fn")) {
    button.setAttribute("aria-current", String(button.dataset.fn === current));
  }
}

// --- the call form -------------------------------------------------------------------------------

function secretsBox(fn) {
  const declared = fn.secrets || [];
  if (!declared.length) return null;
  const alive = state.workers;
  const items = declared.map((secret) => {
    const having = alive.filter((w) => (w.secrets || []).includes(secret.name)).length;
    const configured = alive.length > 0 && having === alive.length;
    const note = alive.length === 0 ? "no worker is running to tell"
      : configured ? "configured" : having ? `configured on ${having} of ${alive.length} workers` : "not configured";
    return el("li", {}, el("code", { text: secret.name }), secret.required === false ? " (optional)" : " (required)", " — ",
      el("span", { className: configured ? "secret-ok" : "secret-missing", text: note }),
      secret.description ? el("div", { className: "muted", text: secret.description }) : null,
      !configured && secret.instructions ? el("div", { className: "muted", text: secret.instructions }) : null);
  });
  return el("div", { className: "secrets" }, el("strong", { text: "Secrets" }),
    el("p", { className: "muted", text: "Set as environment variables of the workers." }), el("ul", {}, ...items));
}

function openFunction(prefabId, name) {
  const manifest = state.manifests.get(prefabId);
  const fn = manifest && manifest.functions.find((f) => f.name === name);
  if (!fn) {
    show("home");
    return;
  }
  state.current = { prefab: prefabId, version: manifest.version, fn };
  $("fn-title").textContent = fn.name;
  $("fn-meta").textContent = `${manifest.name || manifest.id} · v${manifest.version} · ${fn.streaming ? "streams its events" : "returns a result"}`;
  $("fn-desc").textContent = fn.description || "";
  $("fn-secrets").replaceChildren(secretsBox(fn) || "");
  state.form = new CallForm($("fields"), fn);
  $("form-error").hidden = true;
  $("run").disabled = false;
  document.title = `${fn.name} · prefab-factory`;
  show("call");
  markCurrentFunction();
}

function describe(error) {
  return error instanceof ApiError ? `${error.code}: ${error.message}` : String(error.message || error);
}

async function run(event) {
  event.preventDefault();
  const { current, form } = state;
  if (!current || !form) return;
  const collected = form.collect();
  if (!collected) return;
  const alert = $("form-error");
  alert.hidden = true;
  $("run").disabled = true;
  try {
    const files = {};
    for (const [group, chosen] of Object.entries(collected.files)) {
      files[group] = [];
      for (const file of chosen) files[group].push((await upload(file)).ref);
    }
    const body = { prefab_id: current.prefab, function_name: current.fn.name, inputs: collected.inputs };
    if (Object.keys(files).length) body.files = files;
    const accepted = await postJson("/invoke", body);
    rememberToken(accepted.job_id, accepted.token);
    navigate(`${jobPath(accepted.job_id)}/view`);
    refreshJobs();
  } catch (error) {
    const unplaced = error instanceof ApiError && error.status === 422 ? form.showProblems(error.details) : [describe(error)];
    if (unplaced.length) {
      alert.textContent = error instanceof ApiError && error.status === 422 && unplaced[0] !== describe(error)
        ? `${error.message}\n${unplaced.join("\n")}` : unplaced.join("\n");
      alert.hidden = false;
    }
  } finally {
    $("run").disabled = false;
  }
}

// --- jobs list and overview ----------------------------------------------------------------------

function when(job) {
  const created = new Date(job.created_at);
  let took = "";
  if (job.ended_at) took = ` · ${((new Date(job.ended_at) - new Date(job.started_at || job.created_at)) / 1000).toFixed(2)} s`;
  return `${created.toLocaleTimeString()}${took}`;
}

async function refreshJobs() {
  try {
    const { jobs } = await getJson("/jobs?limit=25");
    const open = state.job ? state.job.jobId : "";
    $("jobs").replaceChildren(...jobs.map((job) => {
      const link = el("a", { href: `${jobPath(job.job_id)}/view`, "data-job": job.job_id, "aria-current": String(job.job_id === open) },
        el("span", { className: "name", text: job.function_name }),
        el("span", { className: `badge ${job.status}`, text: LABEL[job.status] || job.status }),
        el("span", { className: "when", text: when(job) }));
      link.addEventListener("click", (e) => { e.preventDefault(); navigate(link.getAttribute("href")); });
      return el("li", {}, link);
    }));
    if (!jobs.length) $("jobs").replaceChildren(el("li", { className: "muted", text: "No jobs yet." }));
  } catch (error) {
    $("jobs").replaceChildren(el("li", { className: "alert", text: describe(error) }));
  }
}

async function refreshOverview() {
  try {
    const stats = await getJson("/stats");
    state.workers = stats.workers;
    const queued = stats.queues.reduce((sum, q) => sum + q.depth, 0);
    const figures = [["running", stats.running_jobs], ["queued", queued], ["done", stats.jobs_by_outcome.finished || 0],
      ["failed", stats.jobs_by_outcome.failed || 0], ["workers", stats.workers.length]];
    $("overview").replaceChildren(...figures.map(([name, value]) => el("div", {}, el("dt", { text: name }), el("dd", { text: String(value) }))));
  } catch {
    $("overview").replaceChildren();
  }
}

// --- routing -------------------------------------------------------------------------------------

function route() {
  const match = location.pathname.match(/^\/jobs\/([^/]+)\/view\/?$/);
  if (state.job && (!match || decodeURIComponent(match[1]) !== state.job.jobId)) {
    state.job.close();
    state.job = null;
  }
  if (match) {
    const jobId = decodeURIComponent(match[1]);
    show("job");
    document.title = `job ${jobId.slice(0, 8)} · prefab-factory`;
    if (!state.job) {
      state.job = new JobView(jobId, refreshJobs);
      state.job.open();
    }
    state.current = null;
    markCurrentFunction();
    return;
  }
  const fn = location.hash.match(/^#([^/]+)\/(.+)$/);
  if (fn) openFunction(decodeURIComponent(fn[1]), decodeURIComponent(fn[2]));
  else {
    state.current = null;
    show("home");
    markCurrentFunction();
  }
}

function navigate(url) {
  history.pushState(null, "", url);
  route();
  $("main").focus({ preventScroll: true });
  if (window.matchMedia("(max-width: 759px)").matches) $("main").scrollIntoView({ block: "start" });
}

async function start() {
  $("apikey").value = apiKey();
  $("apikey").addEventListener("change", () => {
    setApiKey($("apikey").value.trim());
    loadCatalog().then(route);
    refreshJobs();
  });
  $("form").addEventListener("submit", run);
  $("keyform").addEventListener("submit", (e) => { e.preventDefault(); $("apikey").dispatchEvent(new Event("change")); });
  document.querySelector("[data-nav]").addEventListener("click", (e) => { e.preventDefault(); navigate("/"); });
  window.addEventListener("popstate", route);
  window.addEventListener("hashchange", route);
  await Promise.all([loadCatalog(), refreshOverview()]);
  route();
  refreshJobs();
  setInterval(() => {
    if (document.visibilityState === "visible") {
      refreshJobs();
      refreshOverview();
    }
  }, POLL_MS);
}

start();
