// Calls to the maskserve API from the page, with the API key (if one is set for this tab) as
// "Authorization: Bearer ...", and what to tell the user when a call fails.

export const KEY_STORAGE = "maskserve.apiKey";

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

export class ApiError extends Error {
  constructor(status, type, message, retryAfter) {
    super(message);
    this.status = status;
    this.type = type;
    this.retryAfter = retryAfter;
  }
}

export async function api(path, init = {}) {
  let response;
  try {
    response = await fetch(path, { ...init, headers: { ...authHeaders(), ...(init.headers || {}) } });
  } catch (error) {
    throw new ApiError(0, "network", error.message || String(error), null);
  }
  const text = await response.text();
  if (response.ok) return { response, text };
  let type = "http_error";
  let message = text.trim() || response.statusText;
  try {
    const body = JSON.parse(text);
    if (body && body.error) ({ type, message } = body.error);
  } catch (_) {
    // not our JSON error body (a proxy's page, say): show its text as it is
  }
  const retryAfter = response.headers.get("Retry-After");
  throw new ApiError(response.status, type, message, retryAfter === null ? null : Number(retryAfter));
}

// One sentence per status (and error type) that says what happened and what to do;
// `uploaded` is the size of the file sent, in bytes.
export function explain(error, uploaded = 0) {
  const { status, type, message } = error;
  if (status === 0) {
    const big = uploaded > 1e6;
    return `Could not reach the server (${message}).` +
      (big ? " Large uploads over the server's limit can be cut off before its 413 answer arrives." : "");
  }
  if (status === 401) return `This server needs an API key: enter it under "API key" at the top. (${message})`;
  if (status === 403) return `The API key was refused: ${message}`;
  if (status === 400) return `The server could not read this image (${type}): ${message}`;
  if (status === 406) return `The server cannot answer in the requested format: ${message}`;
  if (status === 408) return `The upload took too long to arrive (408): ${message}. Try again on a faster connection.`;
  if (status === 413 && type === "image_too_large") return `Image too large (413): it has more pixels than this server accepts. ${message}`;
  if (status === 413) return `File too large (413): this server accepts smaller uploads. ${message}`;
  if (status === 415) return `Unsupported file type (415): ${message}`;
  if (status === 422) return `The request was refused (422): ${message}`;
  if (status === 429 || (status === 503 && type === "overloaded")) {
    const wait = Number.isFinite(error.retryAfter) ? ` Retry in ${error.retryAfter} s.` : "";
    return `The server is busy (${status} ${type}).${wait} ${message}`;
  }
  if (status === 503 && type === "not_ready") return `The model is still loading (503): ${message}. Try again shortly.`;
  if (status === 503 && type === "draining") return `The server is shutting down (503): ${message}`;
  if (status === 504) return `The request waited too long and was dropped (504): ${message}`;
  if (status === 500) return `The server failed on this request (500 ${type}): ${message}`;
  return `HTTP ${status} (${type}): ${message}`;
}
