// The JSON API client: CSRF header on changes, errors as ApiError, sign-out on 401.

let csrfToken = null;
const signedOutListeners = [];

/** An error body from the API: `{"error": code, "message": text, "details": {...}}`. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `the server returned HTTP ${status}`);
    this.status = status;
    this.code = body.error || "http_error";
    this.details = body.details || {};
  }
}

export function setCsrfToken(token) {
  csrfToken = token;
}

/** Call `listener(error)` whenever the API returns 401 not_signed_in, for example after the session expired. */
export function onSignedOut(listener) {
  signedOutListeners.push(listener);
}

/** Send a request and return the decoded JSON body; throw ApiError on an error status. */
export async function callApi(method, path, body) {
  const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  if (csrfToken && method !== "GET") options.headers["X-CSRF-Token"] = csrfToken;

  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new ApiError(0, { error: "network_error",
                            message: "Text Manager could not be reached: check your connection and try again" });
  }
  const data = await decode(response);
  if (response.ok) return data;

  const error = new ApiError(response.status, data);
  if (response.status === 401 && error.code === "not_signed_in") {
    csrfToken = null;
    for (const listener of signedOutListeners) listener(error);
  }
  throw error;
}

async function decode(response) {
  const text = await response.text();
  if (!text) return {};
  try {
    return JSON.parse(text);
  } catch (error) {
    return { error: "invalid_response", message: `the server returned HTTP ${response.status} without a JSON body` };
  }
}
