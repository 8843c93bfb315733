/** REST calls to a daemon, with its error answers turned into messages for people. */
import { DaemonError } from './protocol'

/** Normalise what a person typed ("host:7470", "http://host:7470/") into a base URL. */
export function normaliseBase(input: string): string {
  const text = input.trim().replace(/\/+$/, '')
  if (text === '' || text === 'self') return ''
  return /^https?:\/\//i.test(text) ? text : `http://${text}`
}

/** Is `base` another origin than this page's (so its allowed_origins matters)? */
export function isCrossOrigin(base: string): boolean {
  if (!base) return false
  try {
    return new URL(base).origin !== location.origin
  } catch {
    return true
  }
}

export function apiUrl(base: string, path: string): string {
  return base ? new URL(path, base + '/').toString() : path
}

export function streamUrl(base: string): string {
  const url = new URL('/api/v1/stream', base || location.href)
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:'
  return url.toString()
}

function originOf(base: string): string {
  try {
    return new URL(base).origin
  } catch {
    return base
  }
}

/** Why a daemon could not be reached, in terms a person can act on. */
export function unreachableMessage(base: string): string {
  const where = base || location.origin
  if (!isCrossOrigin(base)) return `Cannot reach the hostscope daemon at ${where}: is it running?`
  const mixed = location.protocol === 'https:' && base.startsWith('http:')
  return mixed
    ? `Cannot reach ${where}: this page is served over HTTPS and the browser blocks plain-HTTP daemons (mixed content). Serve that daemon over HTTPS.`
    : `Cannot reach ${where}. If a hostscope daemon is running there, the two daemons must trust each other: add "${location.origin}" to the allowed_origins of the daemon at ${where}, and "${originOf(base)}" to the allowed_origins of the daemon serving this page (which lets this page connect to it).`
}

/**
 * Tokens per daemon, in sessionStorage: this tab only, gone when it closes, never on disk
 * for other pages of the origin to find later (localStorage would keep an operator token
 * forever). The page's own daemon usually needs none: the `/?token=` link set an HttpOnly
 * cookie, which scripts cannot read at all. Other daemons get the token as a Bearer header
 * and in the websocket's first message (their cookie is not sent cross-origin).
 */
const TOKEN_KEY = 'hostscope.token:'

function tokenKey(base: string): string {
  return TOKEN_KEY + (base ? originOf(base) : location.origin)
}

export function tokenFor(base: string): string | null {
  try {
    return sessionStorage.getItem(tokenKey(base))
  } catch {
    return null
  }
}

export function setToken(base: string, token: string | null): void {
  try {
    if (token) sessionStorage.setItem(tokenKey(base), token)
    else sessionStorage.removeItem(tokenKey(base))
  } catch {
    /* storage disabled: the token lasts as long as nothing asks for it again */
  }
}

export function authHeaders(base: string): Record<string, string> {
  const token = tokenFor(base)
  return token ? { Authorization: `Bearer ${token}` } : {}
}

export async function getJson<T>(base: string, path: string, signal?: AbortSignal): Promise<T> {
  return requestJson<T>(base, path, { signal })
}

/** POST/DELETE with an optional JSON body; errors as for getJson. */
export async function sendJson<T>(base: string, method: 'POST' | 'DELETE', path: string, body?: unknown): Promise<T> {
  const init: RequestInit = { method }
  if (body !== undefined) init.body = JSON.stringify(body)
  return requestJson<T>(base, path, init, body !== undefined)
}

async function requestJson<T>(base: string, path: string, init: RequestInit, json = false): Promise<T> {
  let res: Response
  const headers: Record<string, string> = { Accept: 'application/json' }
  if (json) headers['Content-Type'] = 'application/json'
  try {
    res = await fetch(apiUrl(base, path), { ...init, headers: { ...headers, ...authHeaders(base) } })
  } catch (e) {
    if ((e as Error).name === 'AbortError') throw e
    throw new DaemonError('unreachable', unreachableMessage(base))
  }
  let body: unknown = null
  try {
    body = await res.json()
  } catch {
    body = null
  }
  if (!res.ok) {
    const err = (body as { error?: { code?: string; message?: string } } | null)?.error
    throw new DaemonError(
      err?.code ?? 'http_' + res.status,
      err?.message ? `${err.message} (HTTP ${res.status})` : `The daemon answered HTTP ${res.status} ${res.statusText}`,
      res.status,
    )
  }
  if (body === null) throw new DaemonError('bad_answer', `The daemon's answer to ${path} was not JSON`)
  return body as T
}
