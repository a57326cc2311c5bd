// The console's one door to the service: every call goes to this origin, with the key from
// sessionStorage (gone when the tab closes; never in a URL, a cookie or localStorage).

const KEY_ITEM = "face-service.api-key";
const COLLECTION_ITEM = "face-service.collection";

export const session = {
  key: () => sessionStorage.getItem(KEY_ITEM),
  signIn: (key) => sessionStorage.setItem(KEY_ITEM, key),
  signOut: () => {
    sessionStorage.removeItem(KEY_ITEM);
    sessionStorage.removeItem(COLLECTION_ITEM);
  },
  collection: () => sessionStorage.getItem(COLLECTION_ITEM),
  chooseCollection: (name) => sessionStorage.setItem(COLLECTION_ITEM, name),
};

// The signed-in key (GET /v1/keys/me): enroll, edit and delete controls exist only when it may.
// `collections` are the ones GET /v1/collections lists for it; `collection` is the one in use.
export const caller = { id: null, canEnroll: false, collections: [], collection: "default" };

// A gallery route's path for the collection in use: /v1/... for the default one (a key limited to
// default may use it as it is), /v1/collections/{name}/... for the others. Keys, info and the
// collection list are the service's and stay unprefixed. A call made after an await names the
// collection its view started with: the picker may have changed meanwhile.
export function gallery(path, name = caller.collection) {
  return name === "default" ? `/v1${path}` : `/v1/collections/${encodeURIComponent(name)}${path}`;
}

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
