import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { authHeaders, setToken, tokenFor } from '../lib/api'
import { HostConnection } from './host'
import { FakeSocket, flush, makeEnv } from './testing'

/** A daemon whose REST answers 401 until `token` is sent as a Bearer header. */
function stubDaemon(token: string) {
  const seen: (string | null)[] = []
  vi.stubGlobal('fetch', async (_url: string, init: RequestInit) => {
    const auth = (init.headers as Record<string, string>).Authorization ?? null
    seen.push(auth)
    if (auth !== `Bearer ${token}`) {
      return new Response(JSON.stringify({ error: { code: 'unauthorized', message: 'a token is required' } }), {
        status: 401,
        headers: { 'content-type': 'application/json' },
      })
    }
    const body = String(_url).includes('/metrics') ? { metrics: [] } : { hostname: 'db1', ncpu: 2, interval_s: 1 }
    return new Response(JSON.stringify(body), { status: 200, headers: { 'content-type': 'application/json' } })
  })
  return seen
}

beforeEach(() => {
  FakeSocket.all = []
  sessionStorage.clear()
})
afterEach(() => vi.unstubAllGlobals())

describe('tokens per daemon', () => {
  it('keeps one token per origin in sessionStorage and sends it as a Bearer header', () => {
    setToken('http://db1:7470', 'tok-db1')
    expect(tokenFor('http://db1:7470/')).toBe('tok-db1')
    expect(tokenFor('http://db2:7470')).toBeNull()
    expect(authHeaders('http://db1:7470')).toEqual({ Authorization: 'Bearer tok-db1' })
    expect(authHeaders('')).toEqual({})
    setToken('http://db1:7470', null)
    expect(tokenFor('http://db1:7470')).toBeNull()
  })
})

describe('HostConnection sign-in', () => {
  it('asks for a token on 4401 instead of retrying, then signs in with the first message', async () => {
    const seen = stubDaemon('good-token')
    const { env, timers } = makeEnv(() => 1000)
    const conn = new HostConnection('http://db1:7470', 300, env)
    conn.start()
    await flush()
    const first = FakeSocket.all[0]
    first.accept()
    expect(first.sent).toEqual([]) // no token stored: nothing to send
    first.drop(4401, 'unauthorized: send {"type": "auth", "token": ...} first')
    expect(conn.needsToken.value).toMatch(/needs a token/)
    expect(conn.state.value).toBe('closed')
    expect(timers.length).toBe(0) // no reconnect loop counting failed attempts
    expect(seen[0]).toBeNull()

    conn.signIn(' good-token ')
    await flush()
    expect(conn.needsToken.value).toBeNull()
    const second = FakeSocket.all.at(-1)!
    second.accept()
    expect(second.sent[0]).toEqual({ type: 'auth', token: 'good-token' })
    expect(seen.at(-1)).toBe('Bearer good-token')
    expect(conn.info.value?.hostname).toBe('db1')
    conn.stop()
  })

  it('forgets a refused token and says it was refused', async () => {
    stubDaemon('good-token')
    setToken('http://db1:7470', 'old-token')
    const { env } = makeEnv(() => 1000)
    const conn = new HostConnection('http://db1:7470', 300, env)
    conn.start()
    await flush()
    expect(conn.needsToken.value).toMatch(/refused the token/)
    expect(tokenFor('http://db1:7470')).toBeNull()
    conn.stop()
  })
})
