// The factory's HTTP API as the console uses it: JSON in and out, the API key from this browser.
const KEY_STORE = "factory.apiKey";

export function apiKey() {
  return localStorage.getItem(KEY_STORE) || "";
}

export function setApiKey(value) {
  if (value) localStorage.setItem(KEY_STORE, value);
  else localStorage.removeItem(KEY_STORE);
}

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(`${code}: ${message}`);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

async function answer(response) {
  if (response.status === 204) return null;
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const error = (body && body.error) || {};
    throw new ApiError(response.status, error.code || `HTTP_${response.status}`, error.message || response.statusText,
                       error.details);
  }
  return body;
}

async function call(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(0, "CONNECTION_ERROR", `the gateway did not answer (${error.message})`);
  }
  return answer(response);
}

export const getJson = (path) => call("GET", path);
export const postJson = (path, body) => call("POST", path, body);

export async function upload(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  let response;
  try {
    response = await fetch("/files", { method: "POST", headers: headers(), body: form });
  } catch (error) {
    throw new ApiError(0, "CONNECTION_ERROR", `the upload of ${file.name} failed (${error.message})`);
  }
  return answer(response);
}

export function jobPath(jobId, rest = "") {
  return `/jobs/${encodeURIComponent(jobId)}${rest}`;
}
