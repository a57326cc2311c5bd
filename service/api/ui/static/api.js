// The console's one door to the service: every call goes to this origin, with the key from
// sessionStorage (gone when the tab closes; never in a URL, a cookie or localStorage).

const KEY_ITEM = "face-service.api-key";

export const session = {
  key: () => sessionStorage.getItem(KEY_ITEM),
  signIn: (key) => sessionStorage.setItem(KEY_ITEM, key),
  signOut: () => sessionStorage.removeItem(KEY_ITEM),
};

// The signed-in key (GET /v1/keys/me): enroll, edit and delete controls exist only when it may.
export const caller = { id: null, canEnroll: false };

// An API refusal: the problem body's status, code, detail and field errors (RFC 7807).
export class ApiProblem extends Error {
  constructor(status, body) {
    super(body.detail || `HTTP ${status}`);
    this.status = status;
    this.code = String(body.type || "").split(/[/:#]/).pop(); // the type URI ends with the stable code
    this.errors = Array.isArray(body.errors) ? body.errors : [];
  }
}

async function call(method, path, { json, form, query } = {}) {
  const headers = { "X-API-Key": session.key() || "" };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // FormData: the browser writes the multipart boundary
  }
  const url = query ? `${path}?${new URLSearchParams(query)}` : path;
  const response = await fetch(url, { method, headers, body });
  if (!response.ok) {
    const problem = await response.json().catch(() => ({}));
    throw new ApiProblem(response.status, problem);
  }
  return response;
}

export const api = {
  get: async (path, query) => (await call("GET", path, { query })).json(),
  post: async (path, json) => (await call("POST", path, { json })).json(),
  patch: async (path, json) => (await call("PATCH", path, { json })).json(),
  upload: async (path, form) => (await call("POST", path, { form })).json(),
  remove: (path) => call("DELETE", path),
  // An image answer as a blob: URL for <img> (an <img src> could not send the key).
  imageUrl: async (path) => URL.createObjectURL(await (await call("GET", path)).blob()),
};

// Object URLs made for the current view, released when the view changes.
const viewUrls = [];

export function track(url) {
  viewUrls.push(url);
  return url;
}

export function releaseViewUrls() {
  viewUrls.splice(0).forEach((url) => URL.revokeObjectURL(url));
}
