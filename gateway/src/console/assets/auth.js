// The console's credential. hearth serves the console's data (/console/api/*) only with the admin token or
// an API key whenever it has either configured: the page sends the admin token typed on the Admin page
// (kept for this tab only, in sessionStorage), else the API key of the chat settings (localStorage).

/** The credential to send, or "" when the user has given none. */
export function credential() {
  return (sessionStorage.getItem("hearth.admin") ?? "").trim() || (localStorage.getItem("hearth.chat.k") ?? "").trim();
}

/** `fetch` for /console/api/*, with the credential; a refusal becomes an error that says what to do. */
export async function consoleFetch(url, options = {}) {
  const headers = { ...(options.headers ?? {}) };
  const token = credential();
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(url, { ...options, headers });
  if (res.status === 401 || res.status === 403) {
    const body = await res.json().catch(() => ({}));
    const reason = body.error?.message ?? `HTTP ${res.status}`;
    throw new Error(`${reason} Enter the admin token on the Admin page, or an API key in the chat settings.`);
  }
  return res;
}

/** Tell the pages the credential changed, so they read again what was refused. */
export function credentialChanged() {
  window.dispatchEvent(new Event("hearth:credential"));
}
